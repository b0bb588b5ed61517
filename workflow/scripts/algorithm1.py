"""Job: Algorithm 1 on one problem from one start -> snapshots (.npz) and a JSON summary (diractrap.deconv)."""
import json
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np
import torch

from diractrap.data import atomic_path
from diractrap.datasets import class_labels
from diractrap.deconv import Algorithm1Params, algorithm1, metrics, save_result, summary, table_rows
from diractrap.models import get_denoiser

job, pair, start = snakemake.params.job, snakemake.params.pair, snakemake.wildcards.start
weights_dir = Path(snakemake.input.weights[0]).parent if snakemake.input.weights else None
torch.set_num_threads(snakemake.threads)
with np.load(snakemake.input.problem) as z:
    prob = {k: z[k] for k in z.files}
x_true, h_true = torch.from_numpy(prob["x_true"])[None], torch.from_numpy(prob["h_true"])[None]
y = torch.from_numpy(prob["y"])[None].float().to(job["device"])
denoiser = get_denoiser(job["prior"], device=job["device"], root=weights_dir, download=False,
                        sha256=job["sha256"])
labels = class_labels(job["labels"], [int(prob["label"])])
res = algorithm1(denoiser, y, start, kernel_size=job["kernel_size"], params=Algorithm1Params(sigma=job["sigma"],
                 **job["algorithm1"]), labels=None if labels is None else labels.to(job["device"]),
                 snapshots=job["snapshots"], progress=True)
scores = metrics(res.x, res.h, x_true, h_true)
save_result(snakemake.output.run, res, x_true=prob["x_true"], h_true=prob["h_true"], y=prob["y"])
rows = table_rows(res, scores, pair=pair["pair"], start=start, image=str(prob["image"]), family=pair["family"],
                  theta=pair["theta"], angle=pair["angle"], model=job["model"])
with atomic_path(snakemake.output.summary) as tmp:
    tmp.write_text(json.dumps({"summary": summary(res, scores), "rows": rows}, indent=1, default=str))
print(json.dumps(rows[0], indent=1, default=str))
