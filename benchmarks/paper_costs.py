"""Measured costs of the paper run (config/paper.yaml): FLOPs per network evaluation, CPU wall time and peak memory
per job kind at the real shapes, and the projected GPU time of the whole run.

    python benchmarks/paper_costs.py            # everything, ~5-10 min on 2 cores; markdown on stdout
    python benchmarks/paper_costs.py --quick    # FLOPs and the projection only (meta device: seconds)

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` on the three full-size architectures built on the meta device
(no memory, no arithmetic): one forward, and one forward + VJP (the input gradient only: the parameters are
frozen, as in every job). It counts matrix products and convolutions (2 FLOPs per multiply-add), not the
element-wise work (normalisations, activations, FFTs of the blur), which is memory-bound and small next to them.

CPU measurements: each in a fresh process (``--worker``), so that its peak resident memory (``ru_maxrss``) is its
own: loading each stand-in checkpoint (tests/standins.py, real formats and sizes), one potential step as a sweep
job takes it (Heun, 2 evaluations of forward + 2 VJPs -- the paper's 2 probes -- at batch 2), and Algorithm 1 at
256 x 256 with K = 21 (2 outer iterations of 1 x-step). Wall times depend on the machine's load: the report says it.

Projection: FLOPs of every job of config/paper.yaml (counts read from the file) divided by an assumed sustained
throughput, a stated fraction of an H100's FP32 peak (TF32 is off on every path of this project, so the tensor
cores' TF32/BF16 rates do not apply). The adaptive solver's NFE per potential is not known before a run on the real
checkpoints: the projection is given for two values (``--nfe``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

H100_FP32_TFLOPS = 67.0  # H100 SXM5, FP32 on CUDA cores (NVIDIA H100 datasheet; PCIe: 51)
ARCHS = {"ncsnpp": "NCSN++ 256 (ffhq256)", "ddpmpp": "DDPM++ 64 (ffhq64, afhq64)", "adm": "ADM 64 (imagenet64)"}
MODEL_ARCH = {"ffhq256": "ncsnpp", "ffhq64": "ddpmpp", "afhq64": "ddpmpp", "imagenet64": "adm"}


# ---------------------------------------------------------------------------------------------------------------
# FLOPs per evaluation (meta device)
# ---------------------------------------------------------------------------------------------------------------


def _inputs(den, kind: str, batch: int, device):
    from gpu_models import resolution

    R = resolution(den)
    x = torch.rand(batch, 3, R, R, device=device)
    sigma = torch.full((batch,), 0.5, device=device)
    labels = torch.zeros(batch, 1000, device=device) if kind == "adm" else None  # one-hot: no .item() on meta
    if labels is not None:
        labels[:, 0] = 1
    return x, sigma, labels


def flops(kind: str) -> dict:
    """GFLOP per image of one forward and of one forward + VJP, counted at batch 1 on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from gpu_models import build

    den = build(kind, "meta", tiny=False)
    x, sigma, labels = _inputs(den, kind, 1, "meta")
    with FlopCounterMode(display=False) as fc:
        den(x, sigma, labels)
    fwd = fc.get_total_flops()
    xg = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        out = den(xg, sigma, labels)
        out.backward(torch.ones_like(out))  # autograd.grad trips the counter's module hooks; backward is the same VJP
    both = fc.get_total_flops()
    return {"params_M": sum(p.numel() for p in den.parameters()) / 1e6, "forward_GFLOP": fwd / 1e9,
            "forward_vjp_GFLOP": both / 1e9}


# ---------------------------------------------------------------------------------------------------------------
# Workers: one measurement per process (peak RSS of that process only)
# ---------------------------------------------------------------------------------------------------------------


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def worker(job: str, arg: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    base = _peak_mb()
    t0 = time.perf_counter()
    if job == "load":  # what every job does first: verify (sha256) and load the checkpoint
        from standins import make_standins

        from diractrap.models import REGISTRY, load_denoiser

        root = Path(make_standins(log=lambda *a: None)["root"]) / "checkpoints"
        t0 = time.perf_counter()
        den = load_denoiser(root / REGISTRY[arg].filename, **REGISTRY[arg].options)
        out = {"seconds": time.perf_counter() - t0, "params_M": sum(p.numel() for p in den.parameters()) / 1e6}
    elif job == "sweep-step":  # one Heun step of a sweep job: 2 NFE x (forward + 2 VJPs), batch 2
        from gpu_models import build

        from diractrap.potential import potential

        den = build(arg, "cpu", tiny=False)
        x, _, labels = _inputs(den, arg, 2, "cpu")
        labels = None if labels is None else torch.tensor([0, 1])
        t0 = time.perf_counter()
        res = potential(den, x, labels=labels, solver="heun", steps=1, n_probes=2, seed=0)
        out = {"seconds": time.perf_counter() - t0, "nfe": res.nfe, "batch": 2, "probes": 2}
        out["seconds_per_nfe_image"] = out["seconds"] / (res.nfe * 2)
    elif job == "algorithm1":  # Algorithm 1 at 256 x 256, K = 21: 2 outer iterations of 1 x-step
        from gpu_models import build

        from diractrap.deconv import Algorithm1Params, algorithm1

        den = build("ncsnpp", "cpu", tiny=False)
        y = torch.rand(1, 3, 256 - 20, 256 - 20)
        t0 = time.perf_counter()
        algorithm1(den, y, "wide", kernel_size=21, params=Algorithm1Params(n_ext=2, n_in=1), progress=False)
        out = {"seconds": time.perf_counter() - t0, "per_iteration": (time.perf_counter() - t0) / 2}
    else:
        raise ValueError(f"unknown worker job {job!r}")
    out.update(peak_mb=_peak_mb(), start_mb=base)
    return out


def measure(job: str, arg: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", job, arg, "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"worker {job} {arg} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------------------------
# The paper run's work, from config/paper.yaml
# ---------------------------------------------------------------------------------------------------------------


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base`` as snakemake merges config files: dictionaries key by key, anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(*paths) -> dict:
    """The configuration a run sees: config/demo.yaml (the Snakefile's configfile), then each file in order."""
    config = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    for path in paths:
        config = _merge(config, yaml.safe_load(Path(path).read_text()))
    return config


def rates(fraction_fp32: float | None = None) -> dict:
    """Sustained TFLOP/s per precision on an H100 SXM: diractrap.calibration's peaks x assumed utilisation (FP32
    ``fraction_fp32`` of its peak if given), the same numbers a calibration's cost model uses on a GPU."""
    from diractrap.calibration import GPU_PEAK_TFLOPS, GPU_UTILISATION

    out = {p: GPU_PEAK_TFLOPS[p] * GPU_UTILISATION[p] for p in GPU_PEAK_TFLOPS}
    if fraction_fp32 is not None:
        out["fp32"] = GPU_PEAK_TFLOPS["fp32"] * fraction_fp32
    return out


def sweep_choice(config: dict, nfe: float, calibration_table=None, tflops: dict | None = None) -> dict:
    """What a sweep row costs: {"nfe", "n_probes", "precision", "source"}. Explicit settings: their own (an
    adaptive solver at ``nfe`` evaluations, the projection's assumption). ``sweep.potential: calibrate``: the row a
    calibration table (a results/potential/<model>.calibration.csv) picks once its costs are those of an H100
    (evaluations x (1 + probes) / the precision's sustained rate; the FLOPs per evaluation cancel)."""
    pot = config["sweep"]["potential"]
    if pot != "calibrate":
        opt = dict(pot)
        evals = 2 * opt.get("steps", 128) if opt.get("solver") == "heun" else nfe
        return dict(nfe=evals, n_probes=opt.get("n_probes", 2), precision=opt.get("precision", "fp32"),
                    source="config")
    if calibration_table is None:
        raise ValueError("sweep.potential is 'calibrate': pass a calibration table (--calibration)")
    import pandas as pd

    from diractrap.calibration import pick

    t = pd.read_csv(calibration_table)
    tflops = tflops or rates()
    t["seconds"] = t["nfe"] * (1 + t["n_probes"]) / t["precision"].map(tflops)
    row = t.loc[pick(t)]
    return dict(nfe=int(row["nfe"]), n_probes=int(row["n_probes"]), precision=row["precision"],
                source=f"{Path(calibration_table).name}: {row['solver']} {int(row['steps'])} steps")


FP32_SWEEP = dict(solver="tsit5", rtol=1e-5, atol=1e-5, n_probes=2, precision="fp32")  # the projection before issue 20


def fp32_config(config: dict) -> dict:
    """The config as it was costed before calibration: the sweep at FP32_SWEEP, Statement 1 likewise, every
    Algorithm 1 run in fp32, no calibration or audit jobs."""
    import copy

    c = copy.deepcopy(config)
    c["sweep"]["potential"] = dict(FP32_SWEEP)
    c["deconv"]["statement1"]["potential"] = dict(FP32_SWEEP)
    for run in c["deconv"]["algorithm1"].values():
        run["precision"] = "fp32"
    return c


def paper_work(config: dict, nfe: float, choice: dict | None = None) -> dict:
    """Network evaluations of every job kind of the paper run, per image, in forward-equivalents by architecture.

    ``nfe``: the evaluations assumed for an adaptive solve (explicit sweep settings, the calibration's reference,
    the audits, Statement 1); ``choice``: the sweep rows' settings (:func:`sweep_choice`; default the config's).
    Returns {job kind: {"jobs": n, "arch": kind, "forwards": n, "vjps": n, "precision": p}}, image-level counts."""
    import dataclasses

    sweep = config["sweep"]
    choice = choice or sweep_choice(config, nfe)
    calibrate = sweep["potential"] == "calibrate"
    thetas = sum(len(f["thetas"]) for f in sweep["families"])
    work = {}
    for m in sweep["models"]:
        arch = MODEL_ARCH[config["models"][m]["prior"]]
        images = config["image_sets"][config["models"][m]["images"]]["count"]
        n = images * thetas * choice["nfe"]  # image-evaluations of the ODE drift
        chunks = -(-images // sweep["chunk"]) * len(sweep["families"])
        work[f"sweep_chunk {m}"] = {"jobs": chunks, "arch": arch, "forwards": n, "vjps": n * choice["n_probes"],
                                    "precision": choice["precision"]}
        if not calibrate:
            continue
        cal = sweep["calibration"]
        items = len(cal["images"]) * len(next(f["thetas"] for f in sweep["families"] if f["family"] == cal["family"]))
        ref_probes = cal["reference"].get("n_probes", 2)
        work[f"calibrate {m} (reference)"] = {"jobs": 1, "arch": arch, "forwards": items * nfe,
                                              "vjps": items * nfe * ref_probes, "precision": "fp32"}
        lad = cal["ladder"]
        for p in lad.get("precisions", ["fp32", "bf16"]):
            n = items * sum(2 * s for s in lad["steps"])
            work[f"calibrate {m} (ladder, {p})"] = {"jobs": 0, "arch": arch, "forwards": n,
                                                    "vjps": n * max(lad["n_probes"]), "precision": p}
        quantity = cal["budget"].get("quantity", "differences")
        per_audit = 2 if quantity == "steps" else thetas / len(sweep["families"])
        work[f"audit {m}"] = {"jobs": 0, "arch": arch, "forwards": chunks * per_audit * nfe,
                              "vjps": chunks * per_audit * nfe * ref_probes, "precision": "fp32"}
    from diractrap.deconv import preset

    d = config["deconv"]
    arch = MODEL_ARCH[config["models"][d["model"]]["prior"]]
    pairs, starts, cont = len(d["pairs"]), len(d["starts"]), d.get("continuation")

    def forwards_per_problem(p):  # one forward per x-step, plus the final D(z) of each Douglas-Rachford inner loop
        return sum(p.inner_steps(n) + (p.inner == "douglas-rachford") for n in range(p.n_ext))

    by_precision = {}
    jobs = 0
    for run in d["runs"]:  # one batched job per (run, start), all pairs; plus the continuation of each run
        spec = dict(d["algorithm1"][run])
        selected = {k: spec.pop(k) for k in ("pairs", "starts") if k in spec}  # a run of some pairs and starts only:
        p = preset(spec.pop("preset"), **spec, sigma=d["sigma"])  # one job per pair and start, no continuation
        if selected:
            n = len(selected.get("pairs", range(pairs))) * len(selected.get("starts", d["starts"]))
            jobs += n
            by_precision[p.precision] = by_precision.get(p.precision, 0) + n * forwards_per_problem(p)
            continue
        f = pairs * starts * forwards_per_problem(p)
        jobs += starts
        if cont:
            pc = dataclasses.replace(p, **{k: v for k, v in cont.items() if k != "start"})
            jobs, f = jobs + 1, f + pairs * forwards_per_problem(pc)
        by_precision[p.precision] = by_precision.get(p.precision, 0) + f
    for prec, f in sorted(by_precision.items()):
        key = "algorithm1" if len(by_precision) == 1 else f"algorithm1 ({prec})"
        work[key] = {"jobs": jobs, "arch": arch, "forwards": f, "vjps": 0, "precision": prec}
    pairs = len(d["pairs"])
    s1 = d["statement1"].get("potential") or ({} if calibrate else dict(sweep["potential"]))
    s1_nfe = 2 * s1.get("steps", 128) if s1.get("solver", "tsit5") == "heun" else nfe
    s1_probes = s1.get("n_probes", 2)
    work["statement1"] = {"jobs": 1, "arch": arch, "forwards": pairs * d["statement1"]["n_iter_delta"] + 3 * pairs * s1_nfe,
                          "vjps": 3 * pairs * s1_nfe * s1_probes, "precision": "fp32"}
    return work


def projection(config: dict, gflop: dict, nfe: float, tflops: dict, choice: dict | None = None) -> list[dict]:
    """GPU hours per job kind: FLOPs of :func:`paper_work` over the sustained rate of each item's precision."""
    rows = []
    for kind, w in paper_work(config, nfe, choice).items():
        f = gflop[w["arch"]]
        total = 1e9 * (w["forwards"] * f["forward_GFLOP"] + w["vjps"] * (f["forward_vjp_GFLOP"] - f["forward_GFLOP"]))
        rate = tflops[w["precision"]] * 1e12  # FLOP/s sustained
        rows.append(dict(kind=kind, jobs=w["jobs"], precision=w["precision"], pflop=total / 1e15,
                         gpu_hours=total / rate / 3600, minutes_per_job=total / rate / 60 / max(w["jobs"], 1)))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="FLOPs and projection only (no CPU measurements)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per measurement (the smoke run uses 2)")
    p.add_argument("--nfe", type=float, nargs="+", default=[250, 1000],
                   help="ODE evaluations per potential assumed (dopri5 1e-5: not known before a real run)")
    p.add_argument("--fraction", type=float, default=0.3, help="sustained fraction of the H100 FP32 peak assumed "
                   "(the tensor-core precisions: diractrap.calibration.GPU_UTILISATION)")
    p.add_argument("--config", type=Path, default=ROOT / "config/paper.yaml")
    p.add_argument("--calibration", type=Path, default=None,
                   help="a calibration table (results/potential/<model>.calibration.csv) whose choice under H100 "
                   "costs the sweep rows use (sweep.potential: calibrate)")
    p.add_argument("--worker", nargs=2, metavar=("JOB", "ARG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads)))
        return 0

    config = load_config(args.config)  # on top of config/demo.yaml, as snakemake reads it
    load = os.getloadavg()[0]
    print(f"## The paper run: measured costs ({datetime.date.today().isoformat()}, {platform.processor() or 'cpu'}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, load average {load:.1f})\n")
    print("FLOPs per image and evaluation (FlopCounterMode, matmuls and convolutions):\n")
    print("| network | params (M) | forward (GFLOP) | forward + VJP (GFLOP) |")
    print("|---|---|---|---|")
    gflop = {}
    for kind, title in ARCHS.items():
        gflop[kind] = flops(kind)
        g = gflop[kind]
        print(f"| {title} | {g['params_M']:.1f} | {g['forward_GFLOP']:.1f} | {g['forward_vjp_GFLOP']:.1f} |", flush=True)

    if not args.quick:
        print("\nCPU, real shapes, one process per row (peak RSS of that process):\n")
        print("| job kind | what | wall (s) | peak RSS (MB) |")
        print("|---|---|---|---|")
        for model in MODEL_ARCH:
            r = measure("load", model, args.threads)
            print(f"| every job of {model} | verify + load the stand-in checkpoint | {r['seconds']:.1f} | "
                  f"{r['peak_mb']:.0f} |", flush=True)
        for kind in ARCHS:
            r = measure("sweep-step", kind, args.threads)
            print(f"| sweep_chunk, {ARCHS[kind]} | 1 Heun step, batch 2, 2 probes ({r['nfe']} NFE): "
                  f"{r['seconds_per_nfe_image']:.2f} s per NFE and image | {r['seconds']:.1f} | {r['peak_mb']:.0f} |",
                  flush=True)
        r = measure("algorithm1", "ncsnpp", args.threads)
        print(f"| algorithm1 (NCSN++ 256, K 21) | 2 outer iterations, n_in 1: {r['per_iteration']:.1f} s per "
              f"x-step | {r['seconds']:.1f} | {r['peak_mb']:.0f} |", flush=True)
        print(f"\nload average after the measurements: {os.getloadavg()[0]:.1f}")

    tflops = rates(args.fraction)
    fp32 = fp32_config(config)
    print(f"\nSustained H100 rates assumed (TFLOP/s): " + ", ".join(f"{p} {r:.1f}" for p, r in tflops.items()) +
          " (diractrap.calibration: peak x utilisation; FP32 at --fraction)")
    for nfe in args.nfe:
        runs = [("FP32, before calibration: sweep tsit5 1e-5 with 2 probes, every network evaluation in fp32", fp32,
                 None)]
        if config["sweep"]["potential"] == "calibrate" and args.calibration:
            choice = sweep_choice(config, nfe, args.calibration, tflops)
            runs.append((f"calibrated: sweep rows at {choice['source']}, {choice['n_probes']} probe(s), "
                         f"{choice['precision']} (the demo prior's calibration: the real checkpoints pick their own)",
                         config, choice))
        for title, cfg, choice in runs:
            rows = projection(cfg, gflop, nfe, tflops, choice)
            print(f"\nProjected H100 time of {args.config.name}, {title}; adaptive solves at {nfe:g} NFE:\n")
            print("| job kind | jobs | precision | PFLOP | GPU hours | minutes per job |")
            print("|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['kind']} | {r['jobs']} | {r['precision']} | {r['pflop']:.1f} | {r['gpu_hours']:.2f} | "
                      f"{r['minutes_per_job']:.0f} |")
            total = sum(r["gpu_hours"] for r in rows)
            print(f"| **total** | {sum(r['jobs'] for r in rows)} | | {sum(r['pflop'] for r in rows):.0f} | "
                  f"**{total:.2f}** | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
