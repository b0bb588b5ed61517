"""GPU timings of the paper's four networks and of one potential each, and the GPU-hours of the paper's sweep.

The three full-size architectures (FFHQ-64 and AFHQv2-64 share one) are built with random weights, float32, TF32
off, eval mode, parameters frozen -- exactly how the loaded checkpoints run. For each: the denoiser's forward and
forward + VJP (the cost of one step of the potential's Hutchinson divergence) at batch 1 / 8 / 32, then one full
potential with the default solver of :func:`diractrap.potential.potential`. The sweep estimate multiplies the
per-image potential time by 4 models x 100 images x 4 blur families x the theta grid (``--n-theta``; 8 values per
family are assumed unless config/paper.yaml says otherwise).

    python benchmarks/gpu_models.py                 # on a CUDA machine: prints a markdown table for BENCHMARKS.md
    python benchmarks/gpu_models.py --cpu-smoke     # tiny configurations on the CPU: checks the script runs

Without CUDA and without ``--cpu-smoke`` it exits with a message (the full-size networks take seconds per call on
a CPU: NOTES.md).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import torch

from diractrap.models.edm import EDMPrecond, freeze
from diractrap.models.ncsnpp import NCSNppConfig, NCSNppDenoiser, build_ncsnpp

# ---------------------------------------------------------------------------------------------------------------
# The architectures: full size (the paper's checkpoints) and tiny (for --cpu-smoke)
# ---------------------------------------------------------------------------------------------------------------

_DDPMPP_64 = dict(img_resolution=64, img_channels=3, label_dim=0, model_type="SongUNet", augment_dim=9,
                  model_channels=128, channel_mult=[1, 2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.05,
                  embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                  decoder_type="standard", resample_filter=[1, 1])  # EDM FFHQ-64 / AFHQv2-64 (edm-*-64x64-uncond-vp)
_ADM_64 = dict(img_resolution=64, img_channels=3, label_dim=1000, model_type="DhariwalUNet", model_channels=192,
               channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[32, 16, 8], dropout=0.1)  # ImageNet-64

# name -> (paper models it stands for, builder(device, tiny) -> denoiser, whether it needs labels)
ARCHITECTURES = {
    "NCSN++ 256 (score_sde)": (("ffhq256",), "ncsnpp", False),
    "DDPM++ 64 (EDM)": (("ffhq64", "afhq64"), "ddpmpp", False),
    "ADM 64 (EDM, 1000 classes)": (("imagenet64",), "adm", True),
}


def build(kind: str, device, tiny: bool):
    """A denoiser with random weights, frozen, float32, on ``device`` (TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    if kind == "ncsnpp":
        cfg = NCSNppConfig(image_size=16, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,)) if tiny \
            else NCSNppConfig()
        return NCSNppDenoiser(build_ncsnpp(cfg, device=device).float())
    kwargs = dict(_DDPMPP_64 if kind == "ddpmpp" else _ADM_64)
    if tiny:
        kwargs.update(img_resolution=16, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
        if kind == "adm":
            kwargs["label_dim"] = 10
    with torch.device(device):
        net = EDMPrecond(**kwargs)
    return freeze(net, device)


def resolution(den) -> int:
    return den.net.config.image_size if isinstance(den, NCSNppDenoiser) else den.img_resolution


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def network_timings(den, batch: int, device, repeats: int, labels_needed: bool) -> dict:
    R = resolution(den)
    g = torch.Generator(device=device).manual_seed(batch)
    x = torch.rand(batch, 3, R, R, device=device, generator=g) * (den.data_range[1] - den.data_range[0]) + den.data_range[0]
    sigma = torch.full((batch,), 1.0, device=device)  # mid-range noise level (native units)
    labels = torch.arange(batch, device=device) % getattr(den, "label_dim", 1) if labels_needed else None
    v = torch.randn(x.shape, device=device, generator=g)

    def forward():
        with torch.no_grad():
            den(x, sigma, labels)

    def forward_vjp():
        xr = x.detach().requires_grad_()
        out = den(xr, sigma, labels)
        torch.autograd.grad(out, xr, v)

    row = {}
    for name, fn in (("forward", forward), ("forward+vjp", forward_vjp)):
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            row[name] = time_call(fn, device, repeats)
        except torch.OutOfMemoryError:
            row[name] = float("nan")
            torch.cuda.empty_cache()
        if torch.device(device).type == "cuda":
            row[name + " GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def potential_timing(den, batch: int, device, labels_needed: bool, **options) -> dict | None:
    try:
        from diractrap.potential import potential
    except ImportError:  # pragma: no cover - the potential module is part of the package
        return None
    R = resolution(den)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.rand(batch, 3, R, R, device=device, generator=g)  # images in [0, 1]
    labels = torch.arange(batch, device=device) % getattr(den, "label_dim", 1) if labels_needed else None
    potential(den, x[:1], labels=None if labels is None else labels[:1], **options)  # warm-up (kernels, allocator)
    _sync(device)
    t0 = time.perf_counter()
    res = potential(den, x, labels=labels, **options)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "per_image": seconds / batch, "nfe": res.nfe, "batch": batch,
            "solver": res.settings.get("solver", "?") if isinstance(res.settings, dict) else "?"}


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny configurations on the CPU (checks the script)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 8 32; smoke: 1 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (default 10; smoke: 2)")
    p.add_argument("--potential-batch", type=int, default=None, help="images per potential (default 8; smoke: 2)")
    p.add_argument("--n-theta", type=int, default=8, help="theta values per blur family in the sweep (assumed 8)")
    p.add_argument("--images", type=int, default=100, help="images per model in the sweep (paper: 100)")
    p.add_argument("--families", type=int, default=4, help="blur families (paper: 4)")
    args = p.parse_args(argv)

    if args.cpu_smoke:
        device, tiny = "cpu", True
        batches, repeats, pot_batch = args.batches or [1, 2], args.repeats or 2, args.potential_batch or 2
        pot_options = {"solver": "heun", "steps": 4}  # a few steps: the smoke test checks the plumbing only
    elif torch.cuda.is_available():
        device, tiny = "cuda", False
        batches, repeats, pot_batch = args.batches or [1, 8, 32], args.repeats or 10, args.potential_batch or 8
        pot_options = {}  # the default solver of diractrap.potential.potential
    else:
        print("benchmarks/gpu_models.py needs a CUDA device (the full-size networks take seconds per call on a CPU); "
              "run it with --cpu-smoke to check it on tiny configurations.", file=sys.stderr)
        return 2

    dev_name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    print(f"## Networks ({'tiny smoke configurations' if tiny else 'full size'}, random weights, float32, TF32 off)\n")
    print(f"{dev_name}, torch {torch.__version__}, {datetime.date.today().isoformat()}, median of {repeats} runs\n")
    print("| network | params (M) | batch | forward (ms) | forward+VJP (ms) | forward+VJP per image (ms) | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    potentials = {}
    for title, (models, kind, labels_needed) in ARCHITECTURES.items():
        den = build(kind, device, tiny)
        n_params = sum(p.numel() for p in den.parameters()) / 1e6
        for b in batches:
            r = network_timings(den, b, device, repeats, labels_needed)
            mem = f"{r.get('forward+vjp GiB', float('nan')):.1f}" if device == "cuda" else "-"
            print(f"| {title} | {n_params:.1f} | {b} | {1e3 * r['forward']:.1f} | {1e3 * r['forward+vjp']:.1f} | "
                  f"{1e3 * r['forward+vjp'] / b:.1f} | {mem} |", flush=True)
        potentials[title] = (models, potential_timing(den, pot_batch, device, labels_needed, **pot_options))
        del den
        if device == "cuda":
            torch.cuda.empty_cache()

    print("\n## One potential per model (default solver of diractrap.potential.potential)\n")
    print("| network | images | solver | NFE | seconds | seconds per image |")
    print("|---|---|---|---|---|---|")
    total_hours = 0.0
    per_model = args.images * args.families * args.n_theta
    for title, (models, pot) in potentials.items():
        if pot is None:
            print(f"| {title} | - | diractrap.potential not available | - | - | - |")
            continue
        print(f"| {title} | {pot['batch']} | {pot['solver']} | {pot['nfe']} | {pot['seconds']:.1f} | "
              f"{pot['per_image']:.2f} |")
        total_hours += len(models) * per_model * pot["per_image"] / 3600
    if any(pot is not None for _, pot in potentials.values()):
        print(f"\nSweep estimate: {len(sum((m for m, _ in potentials.values()), ()))} models x {args.images} images x "
              f"{args.families} families x {args.n_theta} theta values (assumed; see config/paper.yaml) = "
              f"{per_model} potentials per model; at the per-image times above (batch {pot_batch}, one probe): "
              f"**{total_hours:.2f} GPU-hours** on this device" + (" (tiny configurations: meaningless)" if tiny else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
