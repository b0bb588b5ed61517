"""Job: the Theorem 1 diagnostics table (diractrap.theorem1.diagnose) on demo training and test crops, on the
demo prior's points reached from them by descent on q, and on the exact mixture's modes -> a CSV."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import pandas as pd
import torch

from diractrap.data import atomic_path, demo_images
from diractrap.kernels import kernel
from diractrap.mixture import demo_mixture
from diractrap.models import job_denoiser
from diractrap.theorem1 import descend_to_critical, diagnose

job, t1 = snakemake.params.job, snakemake.params.t1
net = t1["network"]
torch.set_num_threads(snakemake.threads)
den = job_denoiser(job, snakemake.input.weights)
K, theta = t1["kernel_size"], t1["theta"]
h = kernel("gaussian", theta, K)
x = torch.cat([demo_images("train", 32)[net["train_crops"]], demo_images("test", 32)[net["test_crops"]]])
what = [f"train crop {i}" for i in net["train_crops"]] + [f"test crop {i}" for i in net["test_crops"]]
sg = net["sigma_g"]
xd, hist = descend_to_critical(den, x, lr=sg**2, n_steps=net["descent_steps"], sigma_g=sg, progress=True)
rows = []
for pts, kind in ((x, "crop"), (xd, f"descent x <- D(x, {sg}), {net['descent_steps']} steps")):
    for r, w in zip(diagnose(den, pts, h, theta=theta, sigma_g=sg, n_lanczos=net["lanczos"]), what):
        rows.append(dict(r, prior=job["model"], point=kind, image=w))
crops = t1["crops"]
mix, ref = demo_mixture([crops["critical"], crops["other_mode"]], theta, K, w_mode=t1["mode_weight"],
                        fraction=t1["fraction"])
for r, i in zip(diagnose(mix, mix.centres, h.double(), theta=theta, n_lanczos=net["lanczos"]),
                [crops["critical"], crops["other_mode"]]):
    rows.append(dict(r, prior=f"mixture (s = {mix.s:.4f})", point="refined mode", image=f"test crop {i}"))
table = pd.DataFrame(rows).assign(theta=theta, kernel_size=K)
with atomic_path(snakemake.output[0]) as tmp:
    table.to_csv(tmp, index=False)
print(table.to_string())
