"""Job: the chunk tables of one model -> one parquet table, sorted, with no repeated key (diractrap.sweeps.merge)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from diractrap.data import atomic_path
from diractrap.sweeps import merge

table = merge(snakemake.input)
with atomic_path(snakemake.output[0]) as tmp:
    table.to_parquet(tmp, index=False)
print(f"{len(table)} rows from {len(snakemake.input)} chunks")
