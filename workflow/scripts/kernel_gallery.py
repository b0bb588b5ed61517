"""Job: the kernels that Figure 2 draws, as a table (diractrap.figures.kernel_gallery)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np

from diractrap.data import atomic_path
from diractrap.figures import kernel_gallery

gallery = kernel_gallery(snakemake.params.families, snakemake.params.kernel_size)
with atomic_path(snakemake.output[0]) as tmp, open(tmp, "wb") as f:
    np.savez_compressed(f, **gallery)
print({k: v.shape for k, v in gallery.items()})
