"""Figure 4: Algorithm 1's iterates in the paper's blocks (a run, pair and start each), from the initialisation to the
true signal (diractrap.figures.fig4)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np

from diractrap import figures

blocks = []
for block, problem, run in zip(snakemake.params.blocks, snakemake.input.problems, snakemake.input.runs):
    with np.load(problem) as z:
        blocks.append(dict(block, run=figures.load_run(run), x_true=z["x_true"], h_true=z["h_true"], y=z["y"]))
figures.save(figures.fig4(blocks), *snakemake.output)
