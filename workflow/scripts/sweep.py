"""Job: q(h_theta * x) for one (model, family, chunk of images) -> a parquet table (diractrap.sweeps.sweep)."""
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import torch

from diractrap.data import atomic_path
from diractrap.datasets import class_labels, load_image_set
from diractrap.models import get_denoiser
from diractrap.sweeps import sweep

job = snakemake.params.job
weights_dir = Path(snakemake.input.weights[0]).parent if snakemake.input.weights else None
torch.set_num_threads(snakemake.threads)
images = load_image_set(snakemake.input.images)
items = job["items"]
denoiser = get_denoiser(job["prior"], device=job["device"], root=weights_dir, download=False,
                        sha256=job["sha256"])
table = sweep(denoiser, images.tensor(items).to(job["device"]), job["family"], job["thetas"], item_ids=items,
              names=[images.names[i] for i in items], labels=class_labels(job["labels"], images.labels[items]),
              angle=job["angle"], kernel_size=job["kernel_size"], boundary=job["boundary"],
              batch_size=job["batch_size"], model=job["model"], progress=True, **job["potential"])
with atomic_path(snakemake.output[0]) as tmp:
    table.to_parquet(tmp, index=False)
print(table[["image", "theta", "q", "stderr", "nfe"]].to_string())
