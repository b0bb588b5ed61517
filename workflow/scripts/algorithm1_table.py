"""Job: the JSON summaries of every Algorithm 1 run -> one CSV table (one row per run, pair and start) and its
provenance sidecar (the full record behind each row's ``provenance`` key, written once)."""
import json
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from diractrap.data import atomic_path

files = [json.loads(open(path).read()) for path in snakemake.input]
rows = [row for f in files for row in f["rows"]]
records = {key: record for f in files for key, record in f["summary"]["provenance"].items()}
table = pd.DataFrame(rows).sort_values(["run", "pair", "start"], ignore_index=True)
missing = set(table["provenance"]) - set(records)
if missing:
    raise ValueError(f"rows name provenance keys with no record: {sorted(missing)}")
with atomic_path(snakemake.output.table) as tmp:
    table.to_csv(tmp, index=False)
with atomic_path(snakemake.output.provenance) as tmp:
    tmp.write_text(json.dumps(records, indent=1, sort_keys=True, default=str))
print(table[["run", "pair", "start", "family", "theta", "psnr", "kernel_error", "dirac_distance"]].to_string())
