"""Job: download and verify one registered checkpoint (diractrap.models.fetch_checkpoint: mirrors first, .part file,
sha256 against the config's pin or the lock file, atomic rename; with no known hash, the file is loaded once and its
hash recorded only if it loads as the architecture)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from diractrap.models import fetch_checkpoint
from diractrap.models.download import DownloadError

job = snakemake.params.job
try:
    path, digest = fetch_checkpoint(job["name"], root=snakemake.params.root, sha256=job["sha256"], progress=True,
                                    mirrors=job["mirrors"], official=job["official"])
except DownloadError as err:  # one line naming the URL(s) and the file: no traceback to read through
    raise SystemExit(f"DownloadError: {err}") from None
print(f"{job['name']}: {path} sha256 {digest}")
