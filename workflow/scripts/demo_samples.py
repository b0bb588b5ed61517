"""Job: samples of the demo prior by EDM's Heun sampler (diractrap.train.edm_sampler) -> an .npz."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np
import torch

from diractrap.data import atomic_path
from diractrap.models import job_denoiser
from diractrap.train import edm_sampler

job, s = snakemake.params.job, snakemake.params.samples
torch.set_num_threads(snakemake.threads)
denoiser = job_denoiser(job, snakemake.input.weights)
x = edm_sampler(denoiser, s["count"], steps=s["steps"], seed=s["seed"], progress=True)
with atomic_path(snakemake.output[0]) as tmp, open(tmp, "wb") as f:
    np.savez_compressed(f, samples=x.cpu().numpy())
