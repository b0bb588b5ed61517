"""The demo prior's samples as a figure (diractrap.figures.samples_figure)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np

from diractrap import figures

with np.load(snakemake.input[0]) as z:
    figures.save(figures.samples_figure(z["samples"], title=snakemake.params.title), *snakemake.output)
