"""The paper run on one GPU, measured in under 8 minutes: per-model forward + VJP throughput at the batch sizes of
config/paper.yaml, one 256 x 256 potential, one batch of Algorithm 1 iterations, with memory peaks; prints the
markdown table for BENCHMARKS.md ("The paper run").

    python benchmarks/gpu_paper_check.py                       # on a CUDA machine (full-size networks)
    python benchmarks/gpu_paper_check.py --device cpu --quick  # the dry path: tiny networks on the CPU (seconds)

The networks are the three full-size architectures with random weights (benchmarks/gpu_models.py), float32, TF32
off, eval mode, parameters frozen: how the loaded checkpoints run. Throughput does not depend on the weights'
values; the NFE of an adaptive solve does, so the potential uses a fixed grid (Heun, ``--steps``) and reports the
time per evaluation: multiply by the NFE of a real run for a job's time.

Rows:
- forward + VJP (one probe) of each network at batch 1 (Algorithm 1), the statement1 batch (the four pairs) and the
  sweep's ``batch_size`` (8): ms per call, images per second, peak memory (``torch.cuda.max_memory_allocated``);
- one potential of ``batch_size`` 256 x 256 images with the paper's 2 probes on NCSN++ (Heun, ``--steps`` steps);
- Algorithm 1 at 256 x 256, K = 21, n_in = 10 for 2 outer iterations, at batch 1 (one job today) and at batch 8
  (the 8 (pair, start) runs in one job): does batching pay?
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import yaml

from gpu_models import _sync, time_call  # benchmarks/: the same timing helpers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_models import build, resolution  # noqa: E402  the full-size (and tiny) architectures


def _reset(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def forward_vjp(den, kind: str, batch: int, device, repeats: int) -> dict:
    R = resolution(den)
    g = torch.Generator(device=device).manual_seed(batch)
    lo, hi = den.data_range
    x = lo + (hi - lo) * torch.rand(batch, 3, R, R, device=device, generator=g)
    sigma = torch.full((batch,), 0.5, device=device)
    labels = torch.arange(batch, device=device) % den.label_dim if kind == "adm" else None
    v = torch.randn(x.shape, device=device, generator=g)

    def call():
        xr = x.detach().requires_grad_()
        torch.autograd.grad(den(xr, sigma, labels), xr, v)

    _reset(device)
    try:
        s = time_call(call, device, repeats, warmup=1)
    except torch.OutOfMemoryError:
        return {"seconds": float("nan"), "peak_gib": float("nan")}
    return {"seconds": s, "peak_gib": _peak_gib(device)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny networks (the dry path; meaningless numbers)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 5; quick 1)")
    p.add_argument("--steps", type=int, default=None, help="Heun steps of the potential (default 16; quick 1)")
    p.add_argument("--config", type=Path, default=ROOT / "config/paper.yaml")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or check the script with --device cpu --quick", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # the project's numerics: float32 throughout
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    tiny = args.quick
    repeats = args.repeats or (1 if tiny else 5)
    steps = args.steps or (1 if tiny else 16)
    config = yaml.safe_load(args.config.read_text())
    sweep_batch = config["sweep"]["batch_size"]
    probes = config["sweep"]["potential"]["n_probes"]
    n_pairs = len(config["deconv"]["pairs"])
    batches = sorted({1, n_pairs, sweep_batch})
    start = time.perf_counter()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"## GPU check of the paper run ({'tiny networks: dry path' if tiny else 'full-size networks'})\n")
    print(f"{name}, torch {torch.__version__}, {datetime.date.today().isoformat()}, float32 (TF32 off), "
          f"median of {repeats}\n")
    print("| measurement | batch | ms per call | images/s | peak GiB |")
    print("|---|---|---|---|---|")
    dens = {}
    for kind, title in (("ncsnpp", "NCSN++"), ("ddpmpp", "DDPM++"), ("adm", "ADM")):
        den = build(kind, device, tiny)
        title = f"{title} {resolution(den)}"
        for b in batches:
            r = forward_vjp(den, kind, b, device, repeats)
            print(f"| {title} forward + VJP | {b} | {1e3 * r['seconds']:.1f} | {b / r['seconds']:.1f} | "
                  f"{r['peak_gib']:.2f} |", flush=True)
        if kind == "ncsnpp":
            dens[kind] = den
        else:
            del den

    from diractrap.potential import potential

    den = dens["ncsnpp"]
    R = resolution(den)
    x = torch.rand(sweep_batch, 3, R, R, device=device, generator=torch.Generator(device=device).manual_seed(0))
    _reset(device)
    t0 = time.perf_counter()
    res = potential(den, x, solver="heun", steps=steps, n_probes=probes, seed=0)
    _sync(device)
    s = time.perf_counter() - t0
    print(f"| NCSN++ {R} x {R} potential, Heun {steps} steps, {probes} probes ({res.nfe} NFE) | {sweep_batch} | "
          f"{1e3 * s:.0f} | {sweep_batch * res.nfe / s:.1f} (NFE x images / s) | {_peak_gib(device):.2f} |", flush=True)

    from diractrap.deconv import Algorithm1Params, algorithm1

    K = 5 if tiny else config["deconv"]["kernel_size"]  # the tiny NCSN++ works at 16 x 16
    n_in = 1 if tiny else 10
    for b in (1, n_pairs * len(config["deconv"]["starts"])):
        y = torch.rand(b, 3, R - K + 1, R - K + 1, device=device)
        _reset(device)
        t0 = time.perf_counter()
        algorithm1(den, y, "wide", kernel_size=K, params=Algorithm1Params(n_ext=2, n_in=n_in), progress=False)
        _sync(device)
        s = (time.perf_counter() - t0) / 2
        print(f"| Algorithm 1 outer iteration, {R} x {R}, K {K}, n_in {n_in} | {b} | {1e3 * s:.0f} | "
              f"{b / s:.2f} (problem-iterations / s) | {_peak_gib(device):.2f} |", flush=True)
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB -> MB
    print(f"\n(total {time.perf_counter() - start:.0f} s; host peak RSS {host:.0f} MB: the CUDA context and libraries, "
          "for the mem_mb of GPU jobs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
