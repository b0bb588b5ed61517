"""Job: q(h_theta * x) for one (model, family, chunk of images) -> a parquet table (diractrap.sweeps.sweep), and the
audit of its first image against the calibration's reference (diractrap.calibration.audit) -> a json record."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import json

import pandas as pd
import torch

from diractrap.baselines import fit_baselines
from diractrap.calibration import audit, read_calibration
from diractrap.data import atomic_path
from diractrap.datasets import class_labels, load_image_set
from diractrap.models import job_denoiser
from diractrap.priors import range_scale
from diractrap.sweeps import baseline_sweep, sweep

job = snakemake.params.job
torch.set_num_threads(snakemake.threads)
images = load_image_set(snakemake.input.images)
items, dev = job["items"], job["device"]
labels = class_labels(job["labels"], images.labels[items])
geometry = dict(angle=job["angle"], kernel_size=job["kernel_size"], boundary=job["boundary"])
denoiser = job_denoiser(job, snakemake.input.weights)
cal, settings = read_calibration(snakemake.input.calibration[0]) if snakemake.input.calibration else (None, "given")
options = cal["choice"] if cal else job["potential"]
table = sweep(denoiser, images.tensor(items).to(dev), job["family"], job["thetas"], item_ids=items,
              names=[images.names[i] for i in items], labels=labels, batch_size=job["batch_size"], model=job["model"],
              options=options, settings=settings, progress=True, **geometry)
record = dict(audit=None, reason="settings given in the config: no budget to audit against")
if cal:  # the chunk's first image again, at the reference's solver and precision with the same probes
    q = table.loc[table["item"] == items[0]].sort_values("theta")["q"].to_numpy()
    record = dict(audit=audit(denoiser, images.tensor(items[:1])[0].to(dev), q, job["family"], job["thetas"],
                              calibration=cal, item_id=items[0], label=None if labels is None else labels[:1],
                              **geometry), settings=settings)
    print("audit:", record["audit"])
if job["baselines"]:  # classical priors on the same images and kernels (closed forms, CPU, seconds)
    fit = load_image_set(snakemake.input.fit[0]).tensor()
    potentials = fit_baselines(fit, job["baselines"], sigma_min=denoiser.sigma_min / range_scale(denoiser.data_range))
    print({name: info for name, (_, info) in potentials.items()})
    base = baseline_sweep(potentials, images.tensor(items), job["family"], job["thetas"], model=job["model"],
                          item_ids=items, names=[images.names[i] for i in items], labels=labels, **geometry)
    table = pd.concat([table, base], ignore_index=True)
with atomic_path(snakemake.output.audit) as tmp:
    tmp.write_text(json.dumps(record, indent=1) + "\n")
with atomic_path(snakemake.output.table) as tmp:
    table.to_parquet(tmp, index=False)
print(table[["prior", "image", "theta", "q", "stderr", "nfe"]].to_string())
