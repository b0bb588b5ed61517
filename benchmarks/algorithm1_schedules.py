"""Does any kernel-step schedule send Algorithm 1's small start to the Dirac while the wide start stays at h_bar?

Runs Algorithm 1 (``deconv.run_pairs``) on the four pairs of config/demo.yaml (demo test crops at 48 x 48, K = 15,
sigma = 0.01, the config's inner steps and sigma_g) from both starts, for a grid of lipschitz kernel schedules
gamma_h,n = scale / L_h(x_n) * decay^(n / N_ext), and prints, per setting, the kernel error and the distance to the
Dirac (``metrics``: min over shifts of ||h - delta||) of each start on each pair at the last iteration.

``--prior gaussian``: the stationary Gaussian fitted to the 48 x 48 demo training crops. Its small-noise score is
exact (the gradient of the potential of N(m, S + sigma_g^2 I)), its x-steps converge, and Claim 1 holds for it in
closed form: the dynamics of Algorithm 1 on a prior with no modelling error, in seconds per setting.
``--prior demo``: the shipped demo network (about 4 minutes per 300 outer iterations on one thread).

"Near delta" below means a distance to the Dirac under 0.5 (more than about half of the mass on one pixel).

Usage: .venv/bin/python benchmarks/algorithm1_schedules.py [--prior gaussian|demo] [--grid N_EXT:SCALE:DECAY ...];
numbers go into BENCHMARKS.md ("deconv").
"""

import argparse
import dataclasses
import itertools
import os
import time

import torch
import yaml

from diractrap.data import demo_images
from diractrap.deconv import Algorithm1Params, initial_kernels, preset, run_pairs
from diractrap.problems import pair_kernel
from diractrap.priors import GaussianPrior
from diractrap.train import load_demo_prior

NEAR_DELTA = 0.5  # distance to the Dirac below which a kernel counts as "near delta"
# kernel steps below 2 / L_h (Algorithm1Params refuses larger ones; the runs at 3-100 / L_h in BENCHMARKS.md predate
# that bound)
GAUSSIAN_GRID = [f"{n}:{s}:{d}" for n, s, d in itertools.product((300, 1000, 3000), (0.3, 1, 1.9), (1, 0.1, 0.01))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--prior", choices=["gaussian", "demo"], default="gaussian")
    ap.add_argument("--run", default=None, help="the config's Algorithm 1 run whose inner steps are used (default: "
                    "its first run)")
    ap.add_argument("--grid", nargs="+", default=None, help="N_EXT:SCALE:DECAY settings (default: a 36-point grid)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(open(args.config))
    dc = cfg["deconv"]
    K, res = dc["kernel_size"], cfg["image_sets"][dc["images"]]["resolution"]
    spec = dict(dc["algorithm1"][args.run or dc["runs"][0]])
    base = dataclasses.asdict(preset(spec.pop("preset"), **spec, sigma=dc["sigma"]))
    X = demo_images(cfg["image_sets"][dc["images"]]["split"], res)
    x_true = X[[p["image"] for p in dc["pairs"]]]
    h_true = torch.stack([pair_kernel(p["family"], p["theta"], K, p.get("angle"), dtype=torch.float32)
                          for p in dc["pairs"]])
    if args.prior == "gaussian":
        den = GaussianPrior.fit(demo_images("train", res)).to(torch.float32)
    else:
        den = load_demo_prior()
    grid = args.grid or GAUSSIAN_GRID
    P = len(dc["pairs"])
    start_error = (initial_kernels("wide", K, P) - h_true).flatten(1).norm(dim=1).double()  # the flat start
    print(f"load average {os.getloadavg()}, threads {args.threads}, prior {args.prior}, pairs {dc['pairs']}, "
          f"base {base}")
    print("N_ext scale decay | kernel error wide / small (per pair) | distance to delta wide / small | "
          "wide better | small near delta | wide near delta | wide closer to h_bar than its start | s")
    for setting in grid:
        n_ext, scale, decay = setting.split(":")
        params = Algorithm1Params(**dict(base, n_ext=int(n_ext), gamma_h_scale=float(scale), gamma_h_decay=float(decay),
                                         kernel_schedule="lipschitz", pad="replicate"))
        t0 = time.time()
        run = run_pairs(den, x_true, h_true, params=params, seed=dc["seed"], progress=False)
        err, dd = run.scores["kernel_error"], run.scores["dirac_distance"]
        ew, es, dw, ds = err[:P], err[P:], dd[:P], dd[P:]
        closer = int((ew < start_error).sum())
        print(f"{n_ext:>5} {scale:>5} {decay:>5} | {fmt(ew)} / {fmt(es)} | {fmt(dw, 2)} / {fmt(ds, 2)} | "
              f"{int((ew < es).sum())}/{P} | {int((ds < NEAR_DELTA).sum())}/{P} | {int((dw < NEAR_DELTA).sum())}/{P} "
              f"| {closer}/{P} | {time.time() - t0:.0f}", flush=True)


def fmt(t, digits=3):
    return " ".join(f"{v:.{digits}f}" for v in t.tolist())


if __name__ == "__main__":
    main()
