"""Job: the demo prior's denoising table on the test crops, against the Gaussian prior's Wiener denoiser
(diractrap.train.compare_with_wiener) -> a CSV."""
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd
import torch

from diractrap.data import atomic_path
from diractrap.models import get_denoiser
from diractrap.train import compare_with_wiener

job, d = snakemake.params.job, snakemake.params.denoising
weights_dir = Path(snakemake.input.weights[0]).parent if snakemake.input.weights else None
torch.set_num_threads(snakemake.threads)
denoiser = get_denoiser(job["prior"], device=job["device"], root=weights_dir, download=False)
result = compare_with_wiener(denoiser, sigmas=d["sigmas"], seed=d["seed"])
table = pd.DataFrame({k: result[k] for k in ("sigma", "demo", "wiener", "noisy")}).assign(n_images=result["n_images"])
with atomic_path(snakemake.output[0]) as tmp:
    table.to_csv(tmp, index=False)
print(table.to_string())
