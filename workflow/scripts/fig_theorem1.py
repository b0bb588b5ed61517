"""Figure theorem1: Ly along Statement 1's path for the critical and the non-critical truth, and the final kernels
of each start (diractrap.figures.fig_theorem1)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np
import pandas as pd

from diractrap import figures

with np.load(snakemake.input.kernels) as z:
    kernels = {k: z[k] for k in z.files}
fig = figures.fig_theorem1(pd.read_csv(snakemake.input.path), pd.read_csv(snakemake.input.runs), kernels)
figures.save(fig, *snakemake.output)
