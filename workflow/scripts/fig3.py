"""Figure 3: q(h_theta * x) against theta over images, one panel per model (diractrap.figures.fig3)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd

from diractrap import figures

panels = [(title, pd.read_parquet(path)) for title, path in zip(snakemake.params.titles, snakemake.input)]
fig = figures.fig3(panels, relative=snakemake.params.relative, band=tuple(snakemake.params.band))
figures.save(fig, *snakemake.output)
