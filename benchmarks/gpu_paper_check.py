"""The paper run on one GPU, measured in one call of under 5 minutes: per network at the paper's shapes, forward +
VJP throughput in fp32, tf32 and bf16 at batches 1-16; the reduced-precision error of one 256 x 256 potential
against fp32; one batch of Algorithm 1 iterations per precision; memory peaks. Prints the markdown for BENCHMARKS.md
("The paper run") and writes a JSON whose measured seconds a calibration uses instead of assumed rates
(``sweep.calibration.gpu_measurements``).

    python benchmarks/gpu_paper_check.py --out gpu_check.json          # on a CUDA machine (full-size networks)
    python benchmarks/gpu_paper_check.py --device cpu --quick          # the dry path: tiny networks on the CPU

The networks are the three full-size architectures with random weights (benchmarks/gpu_models.py), eval mode,
parameters frozen: how the loaded checkpoints run; throughput does not depend on the weights' values. The potential's
precision error does: with ``--checkpoints DIR`` holding the FFHQ-256 checkpoint (checkpoint_48.pth, as
`diractrap models` places it) it is measured on the real network, else on random weights (say so when reporting).

Rows:
- forward + VJP (one probe) of each network at batches 1, 4, 8, 16 and each precision (diractrap.numerics: fp32 =
  TF32 off; tf32 = TF32 on; bf16 = autocast): ms per call, images per second, peak memory;
- one potential of 2 images (a photo-like image and its Gaussian blur, std 2 px) at 256 x 256 with NCSN++, Heun
  ``--steps`` steps, 1 probe, in each precision: q and the step q(blurred) - q(sharp), and their change against
  fp32 (nats) -- what a calibration's "precision" part measures;
- Algorithm 1 at 256 x 256, K = 21, n_in = 10 for 2 outer iterations at batch 8 (the (pair, start) runs of one
  job), fp32 and bf16.
The JSON: {"forward_seconds": {prior: {precision: seconds per image-forward at the sweep's batch}}, "rows": [...]}
(an image-forward = half a forward + VJP, the unit of diractrap.calibration.CostModel).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_models import _sync, build, resolution, time_call  # noqa: E402  the full-size (and tiny) architectures

PRIORS = {"ncsnpp": ["ffhq256"], "ddpmpp": ["ffhq64", "afhq64"], "adm": ["imagenet64"]}
TITLES = {"ncsnpp": "NCSN++", "ddpmpp": "DDPM++", "adm": "ADM"}


def _reset(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def forward_vjp(den, kind: str, batch: int, device, repeats: int, precision: str) -> dict:
    """Median seconds of one forward + VJP at ``precision`` (the way diractrap.potential evaluates the drift)."""
    from diractrap.numerics import at_precision, precision_scope

    net = at_precision(den, precision)
    R = resolution(den)
    g = torch.Generator(device=device).manual_seed(batch)
    lo, hi = den.data_range
    x = lo + (hi - lo) * torch.rand(batch, 3, R, R, device=device, generator=g)
    sigma = torch.full((batch,), 0.5, device=device)
    labels = torch.arange(batch, device=device) % den.label_dim if kind == "adm" else None
    v = torch.randn(x.shape, device=device, generator=g)

    def call():
        with precision_scope(precision):
            xr = x.detach().requires_grad_()
            torch.autograd.grad(net(xr, sigma, labels), xr, v)

    _reset(device)
    try:
        s = time_call(call, device, repeats, warmup=1)
    except torch.OutOfMemoryError:
        return {"seconds": float("nan"), "peak_gib": float("nan")}
    return {"seconds": s, "peak_gib": _peak_gib(device)}


def photo_pair(R: int, device) -> torch.Tensor:
    """A photo-like image (scikit-image's astronaut, area-averaged to R x R) and its Gaussian blur (std 2 px)."""
    import skimage.data

    from diractrap.calibration import blurred_grid

    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float()[None] / 255
    x = torch.nn.functional.adaptive_avg_pool2d(img, R)
    return blurred_grid(x, "gaussian", [0.0, 2.0], kernel_size=21).to(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny networks (the dry path; meaningless numbers)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 3; quick 1)")
    p.add_argument("--steps", type=int, default=None, help="Heun steps of the potential (default 16; quick 1)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16"])
    p.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 4 8 16 (quick: 1 2)")
    p.add_argument("--checkpoints", type=Path, default=None, help="where checkpoint_48.pth is (real FFHQ-256)")
    p.add_argument("--config", type=Path, default=ROOT / "config/paper.yaml")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or check the script with --device cpu --quick", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    tiny = args.quick
    repeats = args.repeats or (1 if tiny else 3)
    steps = args.steps or (1 if tiny else 16)
    batches = args.batches or ([1, 2] if tiny else [1, 4, 8, 16])
    config = yaml.safe_load(args.config.read_text())
    sweep_batch = config["sweep"]["batch_size"]
    start = time.perf_counter()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"## GPU check of the paper run ({'tiny networks: dry path' if tiny else 'full-size networks'})\n")
    print(f"{name}, torch {torch.__version__}, {datetime.date.today().isoformat()}, median of {repeats}\n")
    print("| measurement | precision | batch | ms per call | images/s | peak GiB |")
    print("|---|---|---|---|---|---|")
    rows, forward_seconds = [], {}
    dens = {}
    for kind in ("ncsnpp", "ddpmpp", "adm"):
        den = build(kind, device, tiny)
        title = f"{TITLES[kind]} {resolution(den)}"
        for prec in args.precisions:
            for b in batches:
                r = forward_vjp(den, kind, b, device, repeats, prec)
                rows.append(dict(kind=kind, precision=prec, batch=b, **r))
                print(f"| {title} forward + VJP | {prec} | {b} | {1e3 * r['seconds']:.1f} | {b / r['seconds']:.1f} | "
                      f"{r['peak_gib']:.2f} |", flush=True)
            at = [r for r in rows if r["kind"] == kind and r["precision"] == prec]
            best = min(at, key=lambda r: abs(r["batch"] - sweep_batch))  # the sweep's batch, or the nearest
            for prior in PRIORS[kind]:
                forward_seconds.setdefault(prior, {})[prec] = best["seconds"] / best["batch"] / 2
        if kind == "ncsnpp":
            dens[kind] = den
        else:
            del den

    from diractrap.potential import potential

    den = dens["ncsnpp"]
    R = resolution(den)
    source = "random weights"
    if args.checkpoints and (args.checkpoints / "checkpoint_48.pth").is_file() and not tiny:
        from diractrap.models import get_denoiser

        den = get_denoiser("ffhq256", device=device, root=args.checkpoints, download=False)
        source = "the FFHQ-256 checkpoint"
    x = photo_pair(R, device)
    q = {}
    for prec in args.precisions:
        _reset(device)
        t0 = time.perf_counter()
        res = potential(den, x, solver="heun", steps=steps, n_probes=1, seed=0, precision=prec)
        _sync(device)
        s = time.perf_counter() - t0
        q[prec] = res.q.double()
        dq, dstep = (q[prec] - q["fp32"]).abs().max().item(), abs((q[prec][1] - q[prec][0]) - (q["fp32"][1] - q["fp32"][0]))
        rows.append(dict(kind="potential", precision=prec, batch=2, seconds=s, q=q[prec].tolist(), dq=dq,
                         dstep=float(dstep), source=source))
        print(f"| NCSN++ {R} potential ({source}), Heun {steps}, 1 probe, sharp + blurred: q {q[prec][0]:.0f} / "
              f"{q[prec][1]:.0f}; vs fp32: q {dq:.2f}, step {float(dstep):.2f} nats | {prec} | 2 | {1e3 * s:.0f} | "
              f"{2 * res.nfe / s:.1f} (NFE x images / s) | {_peak_gib(device):.2f} |", flush=True)

    from diractrap.deconv import Algorithm1Params, algorithm1

    K = 5 if tiny else config["deconv"]["kernel_size"]  # the tiny NCSN++ works at 16 x 16
    n_in = 1 if tiny else 10
    b = len(config["deconv"]["pairs"]) * len(config["deconv"]["starts"])
    for prec in ("fp32", "bf16"):
        y = torch.rand(b, 3, R - K + 1, R - K + 1, device=device)
        _reset(device)
        t0 = time.perf_counter()
        algorithm1(den, y, "wide", kernel_size=K, params=Algorithm1Params(n_ext=2, n_in=n_in, precision=prec),
                   progress=False)
        _sync(device)
        s = (time.perf_counter() - t0) / 2
        rows.append(dict(kind="algorithm1", precision=prec, batch=b, seconds=s))
        print(f"| Algorithm 1 outer iteration, {R} x {R}, K {K}, n_in {n_in} | {prec} | {b} | {1e3 * s:.0f} | "
              f"{b / s:.2f} (problem-iterations / s) | {_peak_gib(device):.2f} |", flush=True)
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB -> MB
    total = time.perf_counter() - start
    print(f"\n(total {total:.0f} s; host peak RSS {host:.0f} MB: the CUDA context and libraries, for the mem_mb of "
          "GPU jobs)")
    if args.out:
        args.out.write_text(json.dumps(dict(device=name, torch=torch.__version__, date=datetime.date.today().isoformat(),
                                            tiny=tiny, forward_seconds=forward_seconds, rows=rows, seconds=total),
                                       indent=1) + "\n")
        print(f"wrote {args.out} (sweep.calibration.gpu_measurements)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
