"""Figure 1: one image under Gaussian blur and its potentials (diractrap.figures.fig1), from the sweep table."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from diractrap import figures
from diractrap.datasets import load_image_set

p = snakemake.params.fig
fig = figures.fig1(pd.read_parquet(snakemake.input.table), load_image_set(snakemake.input.images), item=p["image"],
                   thetas=p["thetas"], family=p["family"], kernel_size=p["kernel_size"], boundary=p["boundary"],
                   angle=p["angle"], title=p["title"])
figures.save(fig, *snakemake.output)
