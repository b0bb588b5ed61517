"""Job: train the demo prior with EDM's loss on the demo training crops (diractrap.train.train_demo_prior); resumes
from the run directory's checkpoint. Copy demo_prior.{pt,json} into src/diractrap/assets/ to ship new weights."""
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import torch

from diractrap.train import train_demo_prior

torch.set_num_threads(snakemake.threads)
t = snakemake.params.train
train_demo_prior(Path(snakemake.output.weights).parent, steps=t["steps"], seed=t["seed"], P_uniform=t["P_uniform"],
                 resume=True, progress=True)
