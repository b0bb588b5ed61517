"""Job: the chunk tables of one model -> one parquet table, sorted, with no repeated key (diractrap.sweeps.merge);
fails, naming the chunks, if an audit broke the calibration's error budget (diractrap.calibration.check_audits)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import json

import pandas as pd

from diractrap.calibration import check_audits
from diractrap.data import atomic_path
from diractrap.sweeps import merge

audits = [dict(json.loads(open(p).read())["audit"] or {}, chunk=p) for p in snakemake.input.audits]
audits = [a for a in audits if "passes" in a]
with atomic_path(snakemake.output.audits) as tmp:
    pd.DataFrame(audits).to_csv(tmp, index=False)
check_audits(audits)
table = merge(snakemake.input.tables)
with atomic_path(snakemake.output.table) as tmp:
    table.to_parquet(tmp, index=False)
print(f"{len(table)} rows from {len(snakemake.input.tables)} chunks; {len(audits)} audits within the budget")
