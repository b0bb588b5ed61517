"""Job: download and verify one registered checkpoint (diractrap.models.fetch_checkpoint: .part file, atomic rename;
with no known hash, the file is loaded once and its hash recorded only if it loads as the architecture)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from diractrap.models import fetch_checkpoint

path, digest = fetch_checkpoint(snakemake.params.name, root=snakemake.params.root, progress=True)
print(f"{snakemake.params.name}: {path} sha256 {digest}")
