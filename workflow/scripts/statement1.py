"""Job: the Statement 1 table: Ly at (x_bar, h_bar), at (x_delta, delta) and at Algorithm 1's output, for every
pair, with q from the ODE potential (diractrap.deconv.statement1)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd
import torch

from diractrap.data import atomic_path
from diractrap.datasets import class_labels
from diractrap.problems import load_problem, load_result
from diractrap.statement1 import statement1
from diractrap.models import job_denoiser

job = snakemake.params.job
torch.set_num_threads(snakemake.threads)
probs = [load_problem(f) for f in snakemake.input.problems]
runs = [load_result(f) for f in snakemake.input.runs]
dev = job["device"]


def stack(arrays):
    return torch.stack([torch.as_tensor(a) for a in arrays]).float().to(dev)


denoiser = job_denoiser(job, snakemake.input.weights)
labels = class_labels(job["labels"], [p["label"] for p in probs])
res = statement1(denoiser, stack([p["y"] for p in probs]), stack([p["x_true"] for p in probs]),
                 stack([p["h_true"] for p in probs]), stack([r["x"][0] for r in runs]), stack([r["h"][0] for r in runs]),
                 sigma=job["sigma"], sigma_g=job["sigma_g"], n_iter_delta=job["n_iter_delta"], pad=job["pad"],
                 labels=None if labels is None else labels.to(dev), potential_options=job["potential"], progress=True)
pairs = pd.DataFrame(job["pairs"]).assign(pair=range(len(probs)), image_name=[p["image"] for p in probs],
                                          model=job["model"], run=job["run"], start=job["start"])
table = pd.concat([pairs, pd.DataFrame(res.rows)], axis=1)
with atomic_path(snakemake.output[0]) as tmp:
    table.to_csv(tmp, index=False)
print(table.to_string())
