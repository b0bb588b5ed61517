"""Job: the cheapest potential settings that meet the sweep's error budget for one model -> the table of every
candidate (csv) and the choice the sweep chunks read (json) (diractrap.calibration.calibrate)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import json

import torch

from diractrap.calibration import ErrorBudget, Ladder, calibrate, load_measurements
from diractrap.data import atomic_path
from diractrap.datasets import class_labels, load_image_set
from diractrap.models import job_denoiser

job = snakemake.params.job
torch.set_num_threads(snakemake.threads)
images = load_image_set(snakemake.input.images)
items = job["items"]
denoiser = job_denoiser(job, snakemake.input.weights)
result = calibrate(denoiser, images.tensor(items).to(job["device"]), job["family"], job["thetas"], item_ids=items,
                   labels=class_labels(job["labels"], images.labels[items]), angle=job["angle"],
                   kernel_size=job["kernel_size"], boundary=job["boundary"], budget=ErrorBudget(**job["budget"]),
                   ladder=Ladder(**job["ladder"]), reference=job["reference"], batch_size=job["batch_size"],
                   measured=load_measurements(job["gpu_measurements"], job["prior"]), model=job["model"],
                   progress=True)
with atomic_path(snakemake.output.table) as tmp:
    result.table.to_csv(tmp, index=False)
with atomic_path(snakemake.output.choice) as tmp:
    tmp.write_text(json.dumps(result.record(), indent=1) + "\n")
print(result.table.to_string())
print("chosen:", result.choice)
