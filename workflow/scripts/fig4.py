"""Figure 4: Algorithm 1's iterates from the wide and the small start, next to the truth (diractrap.figures.fig4)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np

from diractrap import figures

with np.load(snakemake.input.problem) as z:
    truth = {"x_true": z["x_true"], "h_true": z["h_true"]}
runs = {start: figures.load_run(path) for start, path in zip(("wide", "small"), snakemake.input.runs)}
figures.save(figures.fig4(truth, runs, snapshots=snakemake.params.snapshots), *snakemake.output)
