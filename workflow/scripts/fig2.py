"""Figure 2: the four blur families for increasing theta (diractrap.figures.fig2), from the kernel table."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np

from diractrap import figures

with np.load(snakemake.input[0]) as z:
    gallery = {k: z[k] for k in z.files}
figures.save(figures.fig2(gallery), *snakemake.output)
