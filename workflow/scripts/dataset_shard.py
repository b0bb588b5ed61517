"""Job: download one parquet shard of a paper dataset at its pinned revision (diractrap.datasets.download_shard)."""
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from diractrap.datasets import download_shard

path = download_shard(snakemake.wildcards.shard, snakemake.params.root)
if Path(path).resolve() != Path(snakemake.output[0]).resolve():
    raise RuntimeError(f"shard {snakemake.wildcards.shard!r} is {path}, not {snakemake.output[0]}")
print(f"{snakemake.wildcards.shard}: {path}")
