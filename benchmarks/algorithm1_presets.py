"""Algorithm 1 by a configured run (a preset with overrides) on some of the demo's pairs, from the wide and the
small start, then the continuation test: from the wide start's final kernel, a constant kernel step 1 / L_h that
does not vanish. If the kernel then leaves h_bar, what held it near h_bar was the step budget, not a minimum of Ly.

Problems are made as the workflow makes them (demo test crops, diractrap.problems.make_problem(..., full=True),
noise seeded by the pair's index). Prints per start and pair: kernel error (after the best shift), spread (px^2),
distance to the Dirac, PSNR, ||grad_x|| relative to the reset at the last kernel step, the largest gamma_h L_h; and
for the continuation the kernel error at its snapshots.

Usage: .venv/bin/python benchmarks/algorithm1_presets.py --run authors-demo --pairs 0 4 --set n_in=10 n_in_first=50
       n_in_warmup=15 rel_step=0.1,1e-6 n_ext=300 --continue 200; numbers go into BENCHMARKS.md ("deconv").
"""

import argparse
import dataclasses
import os
import time

import torch
import yaml

from diractrap.data import demo_images
from diractrap.deconv import STEP_CAP, algorithm1, initial_kernels, preset
from diractrap.metrics import metrics
from diractrap.problems import make_problem, pair_kernel
from diractrap.train import load_demo_prior


def parse_value(text):
    if "," in text:
        return tuple(float(v) for v in text.split(","))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def table(title, res, scores, x_true, h_true, labels):
    print(f"\n{title}")
    print("start pair | kernel error | spread | dirac distance | PSNR | grad_x_rel (last) | max gamma_h L_h")
    for b, label in enumerate(labels):
        print(f"{label} | {scores['kernel_error'][b]:.3f} | {scores['spread'][b]:.2f} | "
              f"{scores['dirac_distance'][b]:.3f} | {scores['psnr'][b]:.2f} | {res.history['grad_x_rel'][-1, b]:.3g} | "
              f"{res.history['step_L'][:, b].max():.3g}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--run", default="authors-demo")
    ap.add_argument("--pairs", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--set", nargs="*", default=[], help="NAME=VALUE overrides of the run (tuples as a,b)")
    ap.add_argument("--continue", dest="cont", type=int, default=200, help="continuation steps (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(open(args.config))
    dc = cfg["deconv"]
    spec = dict(dc["algorithm1"][args.run])
    spec.update({k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)})
    params = preset(spec.pop("preset"), **spec, sigma=dc["sigma"])
    K, s = dc["kernel_size"], cfg["image_sets"][dc["images"]]
    X = demo_images(s["split"], s["resolution"]).double()
    pairs = [dc["pairs"][i] for i in args.pairs]
    x_true = X[[p["image"] for p in pairs]]
    h_true = torch.stack([pair_kernel(p["family"], p["theta"], K, p.get("angle")) for p in pairs])
    y, y_full = make_problem(x_true, h_true, sigma=dc["sigma"], seed=dc["seed"], item_ids=args.pairs, full=True)
    den = load_demo_prior()
    print(f"load average {os.getloadavg()}, threads {args.threads}, pairs {pairs}, K {K}, params "
          f"{dataclasses.asdict(params)}")
    P = len(pairs)
    h0 = torch.cat([initial_kernels(i, K, P) for i in ("wide", "small")])
    t0 = time.process_time()
    res = algorithm1(den, y.float().repeat(2, 1, 1, 1), h0, params=params, y_full=y_full.float().repeat(2, 1, 1, 1),
                     progress=False)
    scores = metrics(res.x, res.h, x_true.repeat(2, 1, 1, 1), h_true.repeat(2, 1, 1))
    labels = [f"{st} {i} ({pairs[j]['family']} {pairs[j]['theta']})" for st in ("wide", "small")
              for j, i in enumerate(args.pairs)]
    table(f"{args.run} {spec} ({time.process_time() - t0:.0f} s CPU)", res, scores, x_true, h_true, labels)
    if args.cont:
        cont = dataclasses.replace(params, n_ext=args.cont, kernel_schedule="constant", gamma_h=None)
        t0 = time.process_time()
        snaps = sorted({0, *range(0, args.cont + 1, max(1, args.cont // 8)), args.cont})
        res2 = algorithm1(den, y.float(), res.h[:P], params=cont, y_full=y_full.float(), snapshots=snaps,
                          progress=False)
        scores2 = metrics(res2.x, res2.h, x_true, h_true)
        table(f"continuation from the wide start's final kernel: {args.cont} steps of 1 / L_h (constant, projected; "
              f"cap {STEP_CAP} / L_h) ({time.process_time() - t0:.0f} s CPU)", res2, scores2, x_true, h_true,
              labels[:P])
        print("kernel error along the continuation (iteration: per pair)")
        for k, it in enumerate(res2.trajectory["iteration"]):
            h = torch.from_numpy(res2.trajectory["h"][k]).double()
            err = metrics(torch.from_numpy(res2.trajectory["x"][k]).double(), h, x_true, h_true)["kernel_error"]
            print(f"{it}: " + " ".join(f"{e:.3f}" for e in err.tolist()), flush=True)


if __name__ == "__main__":
    main()
