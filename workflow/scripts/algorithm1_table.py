"""Job: the JSON summaries of every Algorithm 1 run -> one CSV table (one row per run, pair and start)."""
import json
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from diractrap.data import atomic_path

rows = [row for path in snakemake.input for row in json.loads(open(path).read())["rows"]]
table = pd.DataFrame(rows).sort_values(["run", "pair", "start"], ignore_index=True)
with atomic_path(snakemake.output[0]) as tmp:
    table.to_csv(tmp, index=False)
print(table[["run", "pair", "start", "family", "theta", "psnr", "kernel_error", "dirac_distance"]].to_string())
