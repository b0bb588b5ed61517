"""Do settings calibrated on one image meet the error budget on others? The headroom a calibration needs.

    python benchmarks/calibration_transfer.py --out transfer.npz     # solves (~12 min of two cores), then the report
    python benchmarks/calibration_transfer.py --load transfer.npz    # the report from saved solves (seconds)

The workflow calibrates each model on a few images (config/demo.yaml: demo crop 5) and the sweep runs the choice on
every image; each chunk's audit re-checks one image. This benchmark runs one calibration ladder (Heun grids x probes
x precisions against the reference, diractrap.calibration.solve_ladder) on the Gaussian grid of config/demo.yaml's
sweep, separately on groups of images, and reports each candidate's error bound over the allowed error (the larger
of order and values, max over the group's images), so a candidate's ratio on one group can be read against another:

    crop 5        the demo's calibration image
    crop 4        another demo crop
    crops 0-3     the rest of the demo's test crops (the sweep's own images, as the paper's calibration images are)
    photographs   two crops of scikit-image's "camera" photograph (tests/test_calibration.py: not_demo_crops),
                  images unlike the demo prior's training crops

The report then applies a headroom h (a candidate is chosen when its ratio <= 1 / h on the calibration images) and
says, for each calibration set, what is chosen and whether it meets the budget on the other groups.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from diractrap.calibration import (REFERENCE, ErrorBudget, Ladder, LadderSolves, assess, choose, cost_model,
                                   forward_flops, solve_ladder)
from diractrap.data import demo_images
from diractrap.models import get_denoiser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_calibration import not_demo_crops  # noqa: E402  the photographs of the transfer test, one definition
GROUPS = {"crop 5": [5], "crop 4": [4], "crops 0-3": [0, 1, 2, 3], "photographs": [100, 101]}


def group_images(name: str, size: int = 32) -> torch.Tensor:
    if name == "photographs":
        return not_demo_crops(size)
    return demo_images("test", size)[GROUPS[name]]


def solve(args) -> dict:
    torch.set_num_threads(args.threads)
    den = get_denoiser("demo")
    cfg = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    thetas = next(g["thetas"] for g in cfg["sweep"]["families"] if g["family"] == "gaussian")
    ladder = Ladder(steps=tuple(args.steps), n_probes=(1, 2), precisions=("fp32", "bf16"))
    data = {"thetas": np.array(sorted(thetas), dtype=float)}
    for name, ids in GROUPS.items():
        t0 = time.perf_counter()
        s = solve_ladder(den, group_images(name), "gaussian", thetas, item_ids=ids, ladder=ladder,
                         kernel_size=cfg["sweep"]["kernel_size"], boundary=cfg["sweep"]["boundary"],
                         model="demo", batch_size=36)
        for k, v in s.q.items():
            data[f"{name}/q/{k}"] = v
        for k, v in s.nfe.items():
            data[f"{name}/nfe/{k}"] = np.array(v)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    data["steps"] = np.array(args.steps)
    return data


def solves_of(data: dict, name: str, gflop: float) -> LadderSolves:
    steps = tuple(int(s) for s in data["steps"])
    q = {k.split("/q/")[1]: v for k, v in data.items() if k.startswith(f"{name}/q/")}
    nfe = {k.split("/nfe/")[1]: int(v) for k, v in data.items() if k.startswith(f"{name}/nfe/")}
    return LadderSolves(reference=REFERENCE, ladder=Ladder(steps=steps, n_probes=(1, 2), precisions=("fp32", "bf16")),
                        costs=cost_model("cpu", gflop), q=q, nfe=nfe, model="demo", family="gaussian",
                        thetas=[float(t) for t in data["thetas"]], items=GROUPS[name])


def merge(a: LadderSolves, b: LadderSolves) -> LadderSolves:
    """Two groups as one calibration set (images stacked)."""
    q = {k: np.concatenate([a.q[k], b.q[k]]) for k in a.q}
    nfe = {k: max(a.nfe[k], b.nfe[k]) for k in a.nfe}
    return LadderSolves(reference=a.reference, ladder=a.ladder, costs=a.costs, q=q, nfe=nfe, model=a.model,
                        family=a.family, thetas=a.thetas, items=list(a.items) + list(b.items))


def report(data: dict, headrooms=(1, 2)) -> str:
    gflop = forward_flops(get_denoiser("demo"), (3, 32, 32), "cpu") / 1e9
    groups = {name: solves_of(data, name, gflop) for name in GROUPS}
    budget = ErrorBudget()
    tables = {name: assess(s, budget)[0] for name, s in groups.items()}
    key = ["solver", "steps", "n_probes", "precision"]
    out = tables["crop 5"][key + ["nfe", "forward_equivalents"]].copy()
    for name, t in tables.items():
        out[f"{name}: order / values"] = [f"{o:.2f} / {v:.2f}" for o, v in zip(t["ratio_order"], t["ratio_values"])]
    out["photographs / crop 5"] = (tables["photographs"]["ratio"] / tables["crop 5"]["ratio"]).round(2)
    out["crops 0-3 / crop 5"] = (tables["crops 0-3"]["ratio"] / tables["crop 5"]["ratio"]).round(2)
    out["steps"] = [str(s) if v == "heun" else "-" for s, v in zip(out["steps"], out["solver"])]
    lines = [f"calibration_transfer.py, {datetime.date.today()}, {platform.node()}, Gaussian grid "
             f"{' '.join(f'{t:g}' for t in data['thetas'])}; bound / allowed, max over the group's images "
             "(<= 1 meets the budget), default budget (beta 1/4 on steps, epsilon 10 %, 2 standard errors)", "",
             out.to_markdown(index=False), ""]
    rows = []
    for cal_name, cal in (("crop 5", groups["crop 5"]), ("crop 4", groups["crop 4"]),
                          ("crops 4 + 5", merge(groups["crop 4"], groups["crop 5"]))):
        for h in headrooms:
            c = choose(cal, ErrorBudget(headroom=h))
            row = c.table[c.table["chosen"]].iloc[0]
            i = tables["crop 5"].index[(tables["crop 5"][key] == row[key]).all(axis=1)][0]
            rows.append({"calibrated on": cal_name, "headroom": h,
                         "choice (CPU costs)": f"{row.solver} {row.steps}, {row.n_probes} probe(s), {row.precision}",
                         "ratio there": round(float(row.ratio), 2),
                         **{f"on {g}": round(float(tables[g].loc[i, "ratio"]), 2) for g in ("crops 0-3",
                                                                                            "photographs")}})
    lines += [pd.DataFrame(rows).to_markdown(index=False)]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="save the solves here (.npz), then report")
    ap.add_argument("--load", type=Path, help="report from solves saved with --out")
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 12, 16, 32])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.load:
        data = dict(np.load(args.load))
    else:
        data = solve(args)
        if args.out:
            np.savez(args.out, **data)
    print(report(data))


if __name__ == "__main__":
    main()
