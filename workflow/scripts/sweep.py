"""Job: q(h_theta * x) for one (model, family, chunk of images) -> a parquet table (diractrap.sweeps.sweep)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd
import torch

from diractrap.baselines import fit_baselines
from diractrap.data import atomic_path
from diractrap.datasets import class_labels, load_image_set
from diractrap.models import job_denoiser
from diractrap.priors import range_scale
from diractrap.sweeps import baseline_sweep, sweep

job = snakemake.params.job
torch.set_num_threads(snakemake.threads)
images = load_image_set(snakemake.input.images)
items = job["items"]
denoiser = job_denoiser(job, snakemake.input.weights)
table = sweep(denoiser, images.tensor(items).to(job["device"]), job["family"], job["thetas"], item_ids=items,
              names=[images.names[i] for i in items], labels=class_labels(job["labels"], images.labels[items]),
              angle=job["angle"], kernel_size=job["kernel_size"], boundary=job["boundary"],
              batch_size=job["batch_size"], model=job["model"], progress=True, **job["potential"])
if job["baselines"]:  # classical priors on the same images and kernels (closed forms, CPU, seconds)
    fit = load_image_set(snakemake.input.fit[0]).tensor()
    potentials = fit_baselines(fit, job["baselines"], sigma_min=denoiser.sigma_min / range_scale(denoiser.data_range))
    print({name: info for name, (_, info) in potentials.items()})
    base = baseline_sweep(potentials, images.tensor(items), job["family"], job["thetas"], model=job["model"],
                          item_ids=items, names=[images.names[i] for i in items],
                          labels=class_labels(job["labels"], images.labels[items]), angle=job["angle"],
                          kernel_size=job["kernel_size"], boundary=job["boundary"])
    table = pd.concat([table, base], ignore_index=True)
with atomic_path(snakemake.output[0]) as tmp:
    table.to_parquet(tmp, index=False)
print(table[["prior", "image", "theta", "q", "stderr", "nfe"]].to_string())
