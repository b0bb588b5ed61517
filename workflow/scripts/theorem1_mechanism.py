"""Job: the mechanism experiment on the exact mixture prior (diractrap.theorem1.mechanism) -> path, runs and
Statement 1 tables (CSV) and the final kernels (npz)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

import numpy as np
import pandas as pd
import torch

from diractrap.data import atomic_path, demo_images
from diractrap.deconv import preset
from diractrap.mixture import demo_mixture
from diractrap.theorem1 import converged_params, mechanism

t1 = snakemake.params.t1
torch.set_num_threads(snakemake.threads)
K, theta, crops = t1["kernel_size"], t1["theta"], t1["crops"]
mix, ref = demo_mixture([crops["critical"], crops["other_mode"]], theta, K, w_mode=t1["mode_weight"],
                        fraction=t1["fraction"])
print(f"mixture s = {mix.s:.5f}, modes ||grad q|| = {ref.residual.tolist()} (relative {ref.relative.tolist()})")
truths = torch.cat([mix.centres[:1], demo_images("test", 32).double()[crops["held_out"] : crops["held_out"] + 1]])
c = t1["converged"]
algos = {"authors": preset("authors", n_ext=t1["n_ext"]),
         "converged": converged_params(mix, truths, K, n_ext=t1["n_ext"], n_in=c["n_in"], n_in_first=c["n_in_first"])}
out = mechanism(mix, truths, theta, K, algos, starts=tuple(t1["starts"]), seed=t1["seed"],
                gamma_x_delta=algos["converged"].gamma_x, progress=True)  # x_delta by the safe step 1 / (1 + s^2 L_q)
names = {0: "critical mode", 1: "held-out crop"}
settings = dict(s=mix.s, theta=theta, kernel_size=K, n_ext=t1["n_ext"], mode_residual=float(ref.residual.max()))
for key in ("path", "runs", "statement1"):
    table = pd.DataFrame(out[key]).assign(truth_name=lambda d: d["truth"].map(names), **settings)
    with atomic_path(snakemake.output[key]) as tmp:
        table.to_csv(tmp, index=False)
    print(table.to_string())
kern = out["kernels"]
with atomic_path(snakemake.output.kernels) as tmp:
    with open(tmp, "wb") as f:
        np.savez_compressed(f, h_true=kern["h_true"], starts=np.asarray(kern["starts"]),
                            algorithms=np.asarray(list(algos)), **{f"h_{a}": kern[a] for a in algos})
