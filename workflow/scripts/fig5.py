"""Figure 5: four pairs, rows x_bar, h_bar, y, x_hat, h_hat (diractrap.figures.fig5), from Algorithm 1's outputs."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np

from diractrap import figures

columns = []
for problem, run, title in zip(snakemake.input.problems, snakemake.input.runs, snakemake.params.titles):
    r = figures.load_run(run)
    with np.load(problem) as z:
        columns.append(dict(x_true=z["x_true"], h_true=z["h_true"], y=z["y"], x_hat=r["x"][0], h_hat=r["h"][0],
                            title=title))
figures.save(figures.fig5(columns), *snakemake.output)
