"""The embedded demo prior: a small EDM denoiser trained on the demo crops, its sampler and its evaluation.

Sections: the demo architecture; EDM's training loss (Karras et al. 2022, Eq. 2 with Table 1's log-normal sigma
and loss weight; optionally a log-uniform share of the sigmas); the training loop (Adam, EMA, resumable); the
shipped weights; EDM's deterministic Heun sampler (Algorithm 1 of Karras et al.); the denoising table (PSNR against
the Wiener filter of the fitted Gaussian).

The network is :class:`diractrap.models.edm.EDMPrecond` around a small DDPM++-like
:class:`~diractrap.models.edm.SongUNet` (:data:`DEMO_ARCH`): data on [-1, 1], sigma in [-1, 1] units. Images
enter and leave every public function here in [0, 1]; noise levels given "in [0, 1] units" are doubled for the
network (``priors.denoise_unit``).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import atomic_path, demo_images
from .metrics import psnr
from .models.download import sha256sum, verify_file
from .potential import rho_schedule
from .priors import denoise_unit, from_native, to_native
from .rng import ItemGenerators, item_seed

__all__ = [
    "DEMO_ARCH",
    "sample_sigma",
    "edm_loss",
    "train_demo_prior",
    "load_demo_prior",
    "edm_sampler",
    "denoising_table",
]


# ---------------------------------------------------------------------------------------------------------------
# The demo architecture: EDMPrecond around a small DDPM++ SongUNet (~1.7 M parameters at model_channels 32)
# ---------------------------------------------------------------------------------------------------------------

DEMO_ARCH = dict(
    img_resolution=32,  # trained on 32 x 32 crops; fully convolutional, so it also runs on 48 or 64 crops
    img_channels=3,
    label_dim=0,  # unconditional
    use_fp16=False,
    sigma_min=0.002,  # EDM's sampling range on [-1, 1]
    sigma_max=80.0,
    sigma_data=0.5,  # EDM's sigma_data for images on [-1, 1]
    model_type="SongUNet",
    model_channels=32,  # multiples of 32 (GroupNorm uses 32 groups)
    channel_mult=[1, 2, 2],  # 32x32, 16x16, 8x8
    channel_mult_emb=4,
    num_blocks=2,
    attn_resolutions=[],  # SongUNet still puts one attention block at the lowest resolution (8x8)
    dropout=0.0,
    embedding_type="positional",  # DDPM++
    channel_mult_noise=1,
    encoder_type="standard",
    decoder_type="standard",
    resample_filter=[1, 1],
)


def build_network(arch: dict | None = None):
    """A fresh (randomly initialised) EDMPrecond from an architecture dict like :data:`DEMO_ARCH`."""
    from .models.edm import EDMPrecond

    return EDMPrecond(**(DEMO_ARCH if arch is None else arch))


# ---------------------------------------------------------------------------------------------------------------
# EDM's loss: sigma ~ log-normal(P_mean, P_std), weight (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 (Karras Table 1)
# ---------------------------------------------------------------------------------------------------------------


def sample_sigma(
    n: int,
    generator: torch.Generator,
    *,
    P_mean: float = -1.2,  # EDM: log-normal mean of sigma
    P_std: float = 1.2,  # EDM: log-normal std of sigma
    P_uniform: float = 0.0,  # EDM: 0; else this fraction of sigmas is log-uniform on sigma_range
    sigma_range: tuple[float, float] = (0.002, 80.0),  # EDM's sampling range on [-1, 1]
) -> Tensor:
    """n training noise levels (native units), shape (n,): log-normal (EDM) or, with probability ``P_uniform``,
    log-uniform on ``sigma_range``.

    EDM's log-normal puts 0.2 % of its mass below sigma = 0.01 on [-1, 1] (0.005 on [0, 1]), where Algorithm 1
    evaluates the small-noise score; a log-uniform share gives those levels weight across the whole range of the
    probability-flow ODE. With ``P_uniform = 0`` the draws are EDM's and consume the generator exactly as before.
    """
    if not 0 <= P_uniform <= 1:
        raise ValueError(f"P_uniform is a fraction of the draws, in [0, 1]; got {P_uniform}")
    log_sigma = torch.randn(n, generator=generator) * P_std + P_mean
    if P_uniform > 0:
        lo, hi = math.log(sigma_range[0]), math.log(sigma_range[1])
        uniform = torch.rand(n, generator=generator)
        pick = torch.rand(n, generator=generator) < P_uniform
        log_sigma = torch.where(pick, lo + (hi - lo) * uniform, log_sigma)
    return torch.exp(log_sigma)


def edm_loss(
    net,
    y: Tensor,
    generator: torch.Generator,
    *,
    P_mean: float = -1.2,  # EDM: log-normal mean of sigma
    P_std: float = 1.2,  # EDM: log-normal std of sigma
    sigma_data: float = 0.5,  # EDM: data std on [-1, 1]
    P_uniform: float = 0.0,  # EDM: 0 (see sample_sigma)
    sigma_range: tuple[float, float] = (0.002, 80.0),  # EDM's sampling range on [-1, 1]
    bf16: bool = False,
) -> Tensor:
    """EDM's weighted denoising loss per image, shape (B,): lambda(sigma) * mean over pixels of |D(y + n) - y|^2.

    ``y`` (B, C, H, W) on [-1, 1]; sigma (:func:`sample_sigma`) and the noise come from ``generator``. EDM sums
    over pixels; we average (Adam is invariant to the constant, and the logged value is comparable across
    resolutions). With ``bf16`` the network runs under CPU bfloat16 autocast; the loss is formed in float32.
    """
    B = y.shape[0]
    sigma = sample_sigma(B, generator, P_mean=P_mean, P_std=P_std, P_uniform=P_uniform, sigma_range=sigma_range)
    sigma = sigma.view(B, 1, 1, 1).to(y)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    n = torch.randn(y.shape, generator=generator).to(y) * sigma
    with torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=bf16):
        D = net(y + n, sigma.flatten())
    return (weight * (D.float() - y) ** 2).mean(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------------------------------
# Training: Adam with a learning-rate warm-up, EMA of the weights (EDM's half-life rule), checkpoints, loss log
# ---------------------------------------------------------------------------------------------------------------


def _step_seed(seed: int, step: int) -> int:
    """One seed per (run seed, step): the randomness of a step does not depend on when the run was resumed."""
    return item_seed(seed, step, "affine")


def _lr(step: int, lr: float, rampup: int, steps: int, decay: bool) -> float:
    """Linear warm-up over ``rampup`` steps (EDM), then constant, or a cosine decay to lr/10 over the run."""
    warm = min(1.0, (step + 1) / max(rampup, 1))
    if not decay:
        return lr * warm
    return lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * step / max(steps, 1))))


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "ms_per_step", "wall_s"])
        w.writeheader()
        w.writerows(rows)


def train_demo_prior(
    out_dir,
    *,
    steps: int = 4000,  # 37.5 min at 562 ms/step on 2 idle cores (BENCHMARKS.md "demo prior")
    batch_size: int = 64,
    lr: float = 1e-3,  # Adam; EDM uses 1e-3 for its CIFAR-10 DDPM++ at batch 512
    seed: int = 0,
    resume: bool = True,
    progress: bool = True,
    images: Tensor | None = None,
    arch: dict | None = None,
    P_mean: float = -1.2,  # EDM
    P_std: float = 1.2,  # EDM
    P_uniform: float = 0.0,  # EDM: 0; the fraction of sigmas drawn log-uniformly on [sigma_min, sigma_max]
    lr_rampup: int = 500,  # warm-up steps
    lr_decay: bool = False,  # True: cosine decay to lr/10 (then the schedule depends on ``steps``)
    ema_halflife_kimg: float = 50.0,  # EMA half-life in thousands of images (EDM: 500 for 200 Mimg runs)
    ema_rampup_ratio: float = 0.05,  # EDM: half-life at most this fraction of the images seen so far
    bf16: bool = True,  # CPU bfloat16 autocast for the network (~1.7x faster on CPU; loss and Adam in float32)
    checkpoint_every: int = 250,
    snapshot_every: int = 1000,
    log_every: int = 50,
    evaluate: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train the demo denoiser with EDM's loss on the demo training crops; write weights, config and logs.

    Writes to ``out_dir``: ``checkpoint.pt`` (network, EMA, Adam state, step; every ``checkpoint_every`` steps),
    ``ema-NNNNNN.pt`` (EMA snapshots every ``snapshot_every`` steps), ``loss.csv`` (step, mean loss over the
    steps since the previous line, lr, ms/step, wall time),
    and at the end ``demo_prior.pt`` (the EMA weights, float32 state dict) with ``demo_prior.json`` (architecture,
    training settings, sha256 of the weights, and, with ``evaluate``, the denoising PSNR table of
    :func:`denoising_table` on the demo test crops against the Wiener filter of the fitted Gaussian).

    ``images``: training images (N, 3, R, R) in [0, 1]; default ``demo_images("train", 32)``. Each step draws a
    batch with replacement, flips each image left-right with probability 1/2, and draws sigma and the noise,
    all from a generator seeded by (``seed``, step): an interrupted run resumed from its checkpoint
    (``resume=True``, the default) continues exactly as an uninterrupted one would. With the default constant
    learning rate a run can also be extended: resuming with a larger ``steps`` continues it. ``stop_after`` ends the
    call after that many steps of this call (for tests; the run can be resumed). Returns the path of
    ``demo_prior.json`` (or of ``checkpoint.pt`` when stopped early).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = dict(DEMO_ARCH if arch is None else arch)
    images = demo_images("train", arch["img_resolution"]) if images is None else images
    if images.ndim != 4 or images.shape[1] != arch["img_channels"]:
        raise ValueError(f"images must be (N, {arch['img_channels']}, R, R) in [0, 1], got {tuple(images.shape)}")
    settings = dict(
        steps=steps, batch_size=batch_size, lr=lr, seed=seed, P_mean=P_mean, P_std=P_std, P_uniform=P_uniform,
        lr_rampup=lr_rampup, lr_decay=lr_decay, ema_halflife_kimg=ema_halflife_kimg,
        ema_rampup_ratio=ema_rampup_ratio, bf16=bf16, optimizer="Adam(betas=(0.9, 0.999), eps=1e-8)",
        augmentation="horizontal flips (p = 1/2)", n_train_images=int(images.shape[0]),
        train_resolution=int(images.shape[-1]),
    )
    fingerprint = hashlib.sha256((images * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()

    torch.manual_seed(seed)  # the initial weights
    net = build_network(arch).train().requires_grad_(True)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    step, wall = 0, 0.0
    ckpt_path, log_path = out_dir / "checkpoint.pt", out_dir / "loss.csv"
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        before = {"P_uniform": 0.0, **ckpt["settings"]}  # runs from before the option drew EDM's sigmas only
        same = {k: v for k, v in before.items() if k != "steps"} == {k: v for k, v in settings.items() if k != "steps"}
        if lr_decay and ckpt["settings"]["steps"] != steps:
            same = False  # the cosine schedule depends on the run length
        if ckpt["arch"] != arch or not same or ckpt["data_sha256"] != fingerprint:
            raise ValueError(
                f"{ckpt_path} was written with other settings, architecture or data; "
                "delete it (or the whole run directory) or pass resume=False to start afresh"
            )
        net.load_state_dict(ckpt["net"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, wall = int(ckpt["step"]), float(ckpt["wall_s"])
    rows = _read_log(log_path, step) if step else []

    def save_checkpoint():
        state = dict(net=net.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(), step=step,
                     wall_s=wall, arch=arch, settings=settings, data_sha256=fingerprint)
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        _write_log(log_path, rows)

    y_all = to_native(images.float(), (-1.0, 1.0))
    N = y_all.shape[0]
    window, t_window, done_here = [], time.perf_counter(), 0
    bar = tqdm(total=steps, initial=step, desc="train demo prior", disable=not progress, unit="step")
    while step < steps and (stop_after is None or done_here < stop_after):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(_step_seed(seed, step))
        torch.manual_seed(_step_seed(seed, step))  # dropout, if any
        idx = torch.randint(N, (batch_size,), generator=g)
        flip = torch.rand(batch_size, generator=g) < 0.5
        y = y_all[idx]
        y = torch.where(flip.view(-1, 1, 1, 1), y.flip(-1), y)
        loss = edm_loss(net, y, g, P_mean=P_mean, P_std=P_std, sigma_data=arch["sigma_data"], P_uniform=P_uniform,
                        sigma_range=(arch["sigma_min"], arch["sigma_max"]), bf16=bf16).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in net.parameters():  # as EDM: a rare non-finite gradient must not poison Adam's moments
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, lr, lr_rampup, steps, lr_decay)
        optimizer.step()
        # EMA with EDM's half-life rule: beta = 0.5 ** (batch / half-life), the half-life growing with the run
        seen = (step + 1) * batch_size
        halflife = min(ema_halflife_kimg * 1000, seen * ema_rampup_ratio) if ema_rampup_ratio else ema_halflife_kimg * 1000
        beta = 0.5 ** (batch_size / max(halflife, 1e-8))
        with torch.no_grad():
            for p_ema, p_net in zip(ema.parameters(), net.parameters()):
                p_ema.copy_(p_net.detach().lerp(p_ema, beta))
        step += 1
        done_here += 1
        wall += time.perf_counter() - t0
        window.append(loss.item())
        bar.update(1)
        if step % log_every == 0 or step == steps:
            ms = 1000 * (time.perf_counter() - t_window) / len(window)
            rows.append(dict(step=step, loss=f"{np.mean(window):.6f}", lr=f"{_lr(step - 1, lr, lr_rampup, steps, lr_decay):.3e}",
                             ms_per_step=f"{ms:.1f}", wall_s=f"{wall:.1f}"))
            bar.set_postfix(loss=f"{np.mean(window):.4f}", ms=f"{ms:.0f}")
            window, t_window = [], time.perf_counter()
        if step % checkpoint_every == 0 or step == steps:
            save_checkpoint()
        if snapshot_every and step % snapshot_every == 0:  # EMA snapshots along the run, as EDM keeps them
            with atomic_path(out_dir / f"ema-{step:06d}.pt") as tmp:
                torch.save({k: v.detach().float().clone() for k, v in ema.state_dict().items()}, tmp)
    bar.close()
    if step < steps:
        save_checkpoint()
        return ckpt_path

    # the shipped artefact: EMA weights + a JSON with everything needed to rebuild and check them
    weights_path, config_path = out_dir / "demo_prior.pt", out_dir / "demo_prior.json"
    with atomic_path(weights_path) as tmp:
        torch.save({k: v.detach().float().clone() for k, v in ema.state_dict().items()}, tmp)
    record = dict(
        name="demo",
        weights="demo_prior.pt",
        sha256=sha256sum(weights_path),
        params=sum(p.numel() for p in ema.parameters()),
        architecture=arch,
        training=dict(settings, steps_done=step, wall_s=round(wall, 1), ms_per_step=round(1000 * wall / max(step, 1), 1),
                      threads=torch.get_num_threads(), torch=torch.__version__, data_sha256=fingerprint,
                      final_loss=float(rows[-1]["loss"]) if rows else None),
        data="diractrap.data.demo_images('train', 32): crops of the pictures listed in diractrap.data.DEMO_SOURCES",
    )
    if evaluate:
        record["denoising_psnr"] = compare_with_wiener(freeze_denoiser(ema))
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    return config_path


# ---------------------------------------------------------------------------------------------------------------
# The shipped weights: src/diractrap/assets/demo_prior.{pt,json}, checked against their sha256 on load
# ---------------------------------------------------------------------------------------------------------------


def freeze_denoiser(net, info: dict | None = None, device="cpu"):
    """A trained EDMPrecond as a protocol denoiser: float32, eval, frozen, with ``info`` merged in."""
    from .models.edm import freeze

    net = freeze(copy.deepcopy(net), device=device)
    net.info = {**getattr(net, "info", {}), **(info or {})}
    return net


def load_demo_prior(config=None, *, device="cpu"):
    """The demo denoiser (EDMPrecond, data_range (-1, 1), sigma in [0.002, 80]) from its JSON and weights.

    ``config`` is a ``demo_prior.json`` written by :func:`train_demo_prior`; default: the copy shipped in
    ``diractrap/assets``. The weights file beside it must match the recorded sha256.
    """
    if config is None:
        config = Path(str(resources.files("diractrap") / "assets" / "demo_prior.json"))
    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(
            f"no demo prior config at {config}; train one with `diractrap train-demo OUT` (or the workflow rule "
            "train_demo_prior) and copy OUT/demo_prior.{pt,json} into src/diractrap/assets/"
        )
    record = json.loads(config.read_text())
    weights = config.parent / record["weights"]
    if not weights.is_file():
        raise FileNotFoundError(f"{config} names weights {weights}, which do not exist")
    sha = verify_file(weights, record["sha256"], hint=f"{config.name} records the expected hash: the weights were "
                                                      "changed or corrupted; restore them (git checkout) or retrain")
    net = build_network(record["architecture"])
    net.load_state_dict({k: v.float() for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()})
    info = dict(model="demo", sha256=sha, params=record["params"], architecture=record["architecture"], config=str(config))
    return freeze_denoiser(net, info, device=device)


# ---------------------------------------------------------------------------------------------------------------
# EDM's deterministic sampler: Heun's 2nd-order method on the probability-flow ODE, sigma(t) = t (Karras Alg. 1)
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def edm_sampler(
    denoiser,
    n: int,
    *,
    steps: int = 18,  # EDM: 18 steps (35 network evaluations)
    seed: int = 0,
    sigma_min: float | None = None,  # native units; default the denoiser's (0.002 for EDM)
    sigma_max: float | None = None,  # native units; default the denoiser's (80 for EDM)
    rho: float = 7.0,  # EDM: time-step exponent
    resolution: int | None = None,
    channels: int = 3,
    batch_size: int = 64,
    clip: bool = True,
    progress: bool = False,
) -> Tensor:
    """n samples of the prior by EDM's deterministic Heun sampler; (n, C, R, R) in [0, 1] (clipped if ``clip``).

    Time steps t_i = (s_max^(1/rho) + i/(steps-1) (s_min^(1/rho) - s_max^(1/rho)))^rho (EDM's schedule,
    :func:`diractrap.potential.rho_schedule` with ``descending=True``), then t_steps = 0; the ODE
    dx/dt = (x - D(x, t)) / t is integrated by Heun's method (Euler on the last step). The initial noise of
    sample i comes from a generator seeded by (seed, i): samples do not depend on ``batch_size``.
    """
    from tqdm.auto import tqdm

    s_min = float(denoiser.sigma_min if sigma_min is None else sigma_min)
    s_max = float(denoiser.sigma_max if sigma_max is None else sigma_max)
    R = int(resolution or getattr(denoiser, "img_resolution", 32))
    t = rho_schedule(s_min, s_max, steps - 1, rho, descending=True)
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    out = []
    for start in tqdm(range(0, n, batch_size), desc="EDM sampler", disable=not progress):
        ids = range(start, min(n, start + batch_size))
        x = ItemGenerators(seed, ids, scheme="affine").randn((channels, R, R), dtype=torch.float64)
        x = x * t[0]
        for k in range(steps):
            t_cur, t_next = t[k], t[k + 1]
            d = (x - denoiser(x.float(), t_cur.float().expand(len(x))).double()) / t_cur
            x_next = x + (t_next - t_cur) * d
            if t_next > 0:  # Heun's 2nd-order correction
                d2 = (x_next - denoiser(x_next.float(), t_next.float().expand(len(x))).double()) / t_next
                x_next = x + (t_next - t_cur) * (0.5 * d + 0.5 * d2)
            x = x_next
        x = from_native(x.float(), denoiser.data_range)
        out.append(x.clamp(0, 1) if clip else x)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------------
# Denoising table: PSNR of D(x + sigma n, sigma) on test crops, sigma in [0, 1] units
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def denoising_table(denoiser, images: Tensor, sigmas=(0.05, 0.1, 0.2), seed: int = 0, *, batch_size: int = 64,
                    per_image: bool = False) -> dict:
    """Mean PSNR (dB) of the denoised images for each noise level: {sigma: psnr}.

    ``images`` (N, C, H, W) in [0, 1]; sigma in [0, 1] units (a [-1, 1] denoiser sees 2 sigma). Image i gets the
    noise of a generator seeded by (seed, i) scaled by sigma (the same noise for every sigma and every denoiser);
    the estimate D(x + sigma n, sigma) is not clipped. With ``per_image`` the values are (N,) tensors.
    """
    noise = ItemGenerators(seed, range(len(images)), scheme="affine").randn(images.shape[1:])
    table = {}
    for sigma in sigmas:
        values = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].float()
            y = x + float(sigma) * noise[start : start + batch_size]
            values.append(psnr(denoise_unit(denoiser, y, float(sigma)), x))
        v = torch.cat(values)
        table[float(sigma)] = v if per_image else float(v.mean())
    return table


def compare_with_wiener(denoiser, sigmas=(0.05, 0.1, 0.2), seed: int = 0, resolution: int = 32) -> dict:
    """The denoising table of ``denoiser`` and of the Gaussian baseline (``gaussian-demo``) on the demo test crops.

    Returns {"sigma": [...], "demo": [...], "wiener": [...], "noisy": [...], "n_images": N} (mean PSNR in dB).
    """
    from .priors import GaussianPrior

    test = demo_images("test", resolution)
    gauss = GaussianPrior.fit(demo_images("train", resolution))
    demo = denoising_table(denoiser, test, sigmas, seed)
    wiener = denoising_table(gauss, test, sigmas, seed)
    noise = ItemGenerators(seed, range(len(test)), scheme="affine").randn(test.shape[1:])
    noisy = [float(psnr(test + s * noise, test).mean()) for s in sigmas]
    return dict(sigma=list(map(float, sigmas)), demo=[round(demo[s], 3) for s in map(float, sigmas)],
                wiener=[round(wiener[s], 3) for s in map(float, sigmas)], noisy=[round(v, 3) for v in noisy],
                n_images=len(test), seed=seed)
