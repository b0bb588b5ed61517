"""Job: samples of the demo prior by EDM's Heun sampler (diractrap.train.edm_sampler) -> an .npz."""
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np
import torch

from diractrap.data import atomic_path
from diractrap.models import get_denoiser
from diractrap.train import edm_sampler

job, s = snakemake.params.job, snakemake.params.samples
weights_dir = Path(snakemake.input.weights[0]).parent if snakemake.input.weights else None
torch.set_num_threads(snakemake.threads)
denoiser = get_denoiser(job["prior"], device=job["device"], root=weights_dir, download=False)
x = edm_sampler(denoiser, s["count"], steps=s["steps"], seed=s["seed"], progress=True)
with atomic_path(snakemake.output[0]) as tmp, open(tmp, "wb") as f:
    np.savez_compressed(f, samples=x.cpu().numpy())
