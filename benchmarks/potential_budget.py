"""The error/cost ladder of q on the demo prior: which solver grid, probe count and network precision a sweep needs.

    python benchmarks/potential_budget.py --out budget.npz          # solves (~20 min of one core), then the report
    python benchmarks/potential_budget.py --load budget.npz         # the report from saved solves (seconds)

For each blur family of config/demo.yaml's sweep (its theta grids, K = 21, reflect boundary) and the demo test crops,
it computes per-probe potentials of every (image, theta): the reference (Tsitouras 5(4) at rtol = atol = 1e-5,
8 probes, fp32) and Heun grids x precisions (2 probes; probe 1 of a 2-probe solve is the 1-probe solve), and today's
library default (tsit5 at 1e-4, 2 probes). The report is diractrap.calibration's assessment of every candidate
per family: the error bound against the allowed error of the default budget (order and values) and of issue 20's
first rule, the largest measured error, and whether the order in theta is kept.
Evaluation counts and errors are the numbers to read; times depend on the machine's load.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from diractrap.calibration import REFERENCE, ErrorBudget, blurred_grid
from diractrap.data import demo_images
from diractrap.models import get_denoiser
from diractrap.potential import PotentialOptions, potential

ROOT = Path(__file__).resolve().parents[1]


def solve(den, x, ids, opt, batch):
    out, nfe, t0 = [], 0, time.perf_counter()
    for s in range(0, len(x), batch):
        r = potential(den, x[s : s + batch], options=opt, item_ids=ids[s : s + batch])
        out.append(r.q_probes.numpy())
        nfe = max(nfe, r.nfe)
    return np.concatenate(out), nfe, time.perf_counter() - t0


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    den = get_denoiser("demo")
    cfg = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    images = demo_images("test", 32)[args.images]
    ids = list(args.images)
    data = {}
    solves = [("reference", REFERENCE), ("default", PotentialOptions(n_probes=2))]
    solves += [(f"heun{s}-{p}", PotentialOptions(solver="heun", steps=s, rho=args.rho, n_probes=2, precision=p))
               for s in args.steps for p in args.precisions]
    for g in cfg["sweep"]["families"]:
        fam, thetas = g["family"], sorted(g["thetas"])
        x = blurred_grid(images, fam, thetas, angle=g.get("angle"))
        xid = [i for i in ids for _ in thetas]
        data[f"{fam}/thetas"] = np.array(thetas)
        for name, opt in solves:
            q, nfe, sec = solve(den, x, xid, opt, args.batch)
            data[f"{fam}/{name}"] = q.reshape(len(ids), len(thetas), -1)
            data[f"{fam}/{name}/nfe"] = np.array(nfe)
            data[f"{fam}/{name}/seconds"] = np.array(sec)
            print(f"{fam:9s} {name:12s} nfe {nfe:4d} {sec:7.1f} s", flush=True)
        if args.out:
            np.savez(args.out, **data)
    return data


def report(data: dict, beta: float, epsilon: float, coverage: float) -> None:
    fams = [f for f in ("gaussian", "motion", "airy", "defocus") if f"{f}/reference" in data]
    names = sorted({k.split("/")[1] for k in data if k.count("/") == 1 and not k.endswith("thetas")},
                   key=lambda n: (n != "reference", n != "default", int(n[4:].split("-")[0]) if n[4:5].isdigit()
                                  else 0, n))
    budgets = {"steps": ErrorBudget(beta=beta, epsilon=epsilon, coverage=coverage),
               "differences": ErrorBudget(beta=beta, epsilon=None, quantity="differences", coverage=coverage)}
    print(f"\nbound / allowed, max over the {data[f'{fams[0]}/reference'].shape[0]} images of each family "
          f"(Hutchinson at {coverage:g} standard errors): order = each step within 2 beta = {2 * beta:g} of itself; "
          f"values = each q(theta_k) - q(0) within epsilon = {epsilon:g} of itself; issue = issue 20's rule, each "
          f"q(theta_k) - q(0) within beta x the smallest step. Measured = the largest error of a step against the "
          "reference's mean (one realisation). Order kept: q decreasing along every image's grid.\n")
    print("| settings | probes | NFE | NFE x (1 + M) | " + " | ".join(f"{f}: order / values / issue" for f in fams) +
          " | measured (max) | order kept |")
    print("|---|---|---|---|" + "---|" * len(fams) + "---|---|")
    for name in names:
        q0 = data[f"{fams[0]}/{name}"]
        for M in ([q0.shape[-1]] if name == "reference" else [1, 2]):
            cells, measured, kept = [], 0.0, True
            for fam in fams:
                ref, q = data[f"{fam}/reference"], data[f"{fam}/{name}"]
                base = data.get(f"{fam}/{name.rsplit('-', 1)[0]}-fp32", q) if name.startswith("heun") else q
                args = (ref,) if name == "reference" else (ref, q, base, M)
                order, values = budgets["steps"].ratios(*args)
                issue, _ = budgets["differences"].ratios(*args)
                cells.append(f"{order:.2f} / {values:.2f} / {issue:.2f}")
                if name != "reference":
                    measured = max(measured, budgets["steps"].parts(*args)["measured"].max())
                kept &= bool((np.diff(q[..., :M].mean(-1), axis=-1) < 0).all())
            nfe = int(data[f"{fams[0]}/{name}/nfe"])
            print(f"| {name} | {M} | {nfe} | {nfe * (1 + M)} | " + " | ".join(cells) +
                  f" | {measured:.0f} | {'yes' if kept else 'NO'} |")
    steps = {fam: np.abs(np.diff(data[f"{fam}/reference"].mean(-1), axis=-1)).min(-1) for fam in fams}
    print("\nsmallest theta-step per image (reference, nats):",
          {fam: np.round(v).astype(int).tolist() for fam, v in steps.items()})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="demo test crops")
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 12, 16, 24, 32], help="Heun grids")
    ap.add_argument("--rho", type=float, default=7.0)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=36, help="items per solve")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--beta", type=float, default=0.25)
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--coverage", type=float, default=2.0)
    ap.add_argument("--out", help="save the solves (npz)")
    ap.add_argument("--load", help="report from saved solves")
    args = ap.parse_args(argv)
    print(f"# potential budget ladder, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {args.threads} thread(s)")
    data = dict(np.load(args.load)) if args.load else run(args)
    report(data, args.beta, args.epsilon, args.coverage)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
