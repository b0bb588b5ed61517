"""The memory estimate of :mod:`diractrap.checks` against what a process really uses (issue 24).

For each case a fresh process builds the network (the demo prior, or one of the paper's three architectures with
random weights, as benchmarks/gpu_models.py builds them), runs the evaluation once at 16 x 16 (so that libraries,
kernels and allocator pools are loaded), reads its resident memory, traces the peak of one evaluation at the case's
size on the meta device (:func:`diractrap.checks.network_peak`: nothing allocated), runs that evaluation for real
and reads the resident high-water mark. The ratio growth / traced is what ``checks.MEMORY_MARGIN`` must cover.
On CUDA the real peak is ``torch.cuda.max_memory_allocated`` instead (exact, no process overhead).

    python benchmarks/memory_estimate.py                # the cases below, one process each: a markdown table
    python benchmarks/memory_estimate.py --quick        # the demo network only (seconds)
    python benchmarks/memory_estimate.py --device cuda  # on a GPU machine

Works: "forward" (one pass without gradients: Algorithm 1, the descent), "vjp" (a pass kept for 2 VJPs: the
potential's Hutchinson divergence with 2 probes), "hvp" (a Hessian-vector product of q: Theorem 1's Lanczos).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

# (network, batch, side, work): the demo network at several sizes; the paper's networks at their own size
CASES = [
    ("demo", 1, 256, "forward"), ("demo", 1, 512, "forward"), ("demo", 1, 256, "vjp"), ("demo", 8, 64, "vjp"),
    ("demo", 4, 128, "vjp"), ("demo", 1, 256, "hvp"),
    ("ddpmpp", 1, 64, "forward"), ("ddpmpp", 1, 64, "vjp"), ("ddpmpp", 2, 128, "vjp"),
    ("adm", 1, 64, "forward"), ("adm", 1, 64, "vjp"),
    ("ncsnpp", 1, 256, "forward"), ("ncsnpp", 1, 256, "vjp"),
]
QUICK = [c for c in CASES if c[0] == "demo"][:3]


def _status(key: str) -> int:
    """VmRSS or VmHWM of this process, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _network(name: str, device: str):
    if name == "demo":
        from diractrap.models import get_denoiser

        return get_denoiser("demo", device=device)
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_models import build

    return build(name, device, False)


def _work(kind: str):
    from diractrap.priors import score_unit
    from diractrap.theorem1 import hvp

    def run(den, x):
        sigma = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        classes = getattr(den, "classes", None) or getattr(den, "label_dim", 0)  # the meta stand-in: .classes
        labels = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device) if classes else None  # class 0
        if kind == "forward":
            with torch.no_grad():
                den(x, sigma, labels)
        elif kind == "vjp":
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                D = den(xg, sigma, labels)
                for m in range(2):
                    torch.autograd.grad(D, xg, torch.ones_like(D), retain_graph=m == 0)
        else:
            hvp(lambda u: -score_unit(den, u, 0.001, labels), x, torch.ones_like(x))

    return run


def one_case(name: str, batch: int, side: int, kind: str, device: str) -> dict:
    """Run in its own process: the traced peak and the real growth of one evaluation."""
    from diractrap import checks

    torch.set_num_threads(1)
    den = _network(name, device)
    work = _work(kind)
    native = 256 if name == "ncsnpp" else 16  # NCSN++ with attention takes its own size only
    work(den, torch.rand(1, 3, native, native, device=device))  # warm-up: libraries, kernels, pools
    if device != "cuda":
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give back what the warm-up freed: its reuse would hide growth
    traced = checks.network_peak(den, (batch, 3, side, side), work, key=kind)
    x = torch.rand(batch, 3, side, side, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        work(den, x)
        torch.cuda.synchronize()
        real = torch.cuda.max_memory_allocated() - before
    else:
        before = _status("VmRSS")
        work(den, x)
        real = _status("VmHWM") - before
    return dict(network=name, batch=batch, side=side, work=kind, traced=traced, real=real)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="the demo network's first three cases only")
    p.add_argument("--case", nargs=4, metavar=("NETWORK", "BATCH", "SIDE", "WORK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.case:  # the child process
        name, batch, side, kind = args.case
        print(json.dumps(one_case(name, int(batch), int(side), kind, args.device)))
        return 0
    print(f"{datetime.date.today()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.device}, 1 thread; real = {'max_memory_allocated' if args.device == 'cuda' else 'VmHWM - VmRSS'}")
    print("\n| network | batch x side | work | traced | real | real / traced |\n|---|---|---|---|---|---|")
    for name, batch, side, kind in QUICK if args.quick else CASES:
        out = subprocess.run([sys.executable, __file__, "--device", args.device, "--case", name, str(batch),
                              str(side), kind], capture_output=True, text=True)
        if out.returncode:
            print(f"| {name} | {batch} x {side} | {kind} | failed: {out.stderr.strip().splitlines()[-1]} | | |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        mib = 2**20
        print(f"| {name} | {batch} x {side}^2 | {kind} | {r['traced'] / mib:.0f} MiB | {r['real'] / mib:.0f} MiB | "
              f"{r['real'] / r['traced']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
