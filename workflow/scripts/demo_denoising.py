"""Job: the demo prior's denoising table on the test crops, against the Gaussian prior's Wiener denoiser
(diractrap.train.compare_with_wiener) -> a CSV."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd
import torch

from diractrap.data import atomic_path
from diractrap.models import job_denoiser
from diractrap.train import compare_with_wiener

job, d = snakemake.params.job, snakemake.params.denoising
torch.set_num_threads(snakemake.threads)
denoiser = job_denoiser(job, snakemake.input.weights)
result = compare_with_wiener(denoiser, sigmas=d["sigmas"], seed=d["seed"])
table = pd.DataFrame({k: result[k] for k in ("sigma", "demo", "wiener", "noisy")}).assign(n_images=result["n_images"])
with atomic_path(snakemake.output[0]) as tmp:
    table.to_csv(tmp, index=False)
print(table.to_string())
