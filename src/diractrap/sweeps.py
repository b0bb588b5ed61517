"""The experiment of Section 2.2: the potential q(h_theta * x) of blurred images, as a tidy table.

For each image x, blur family and theta of a grid, the image h_theta * x is formed at the size of x (a same-size
convolution with an explicit boundary rule, :func:`diractrap.blur.blur_same`; theta = 0 is delta, so the first
point is x itself) and its potential q (nats, images in [0, 1]) is computed through the probability-flow ODE
(:func:`diractrap.potential.potential`). Every blurred version of image i uses the Hutchinson probes of item i
(common random numbers), so the differences q(h_theta * x) - q(x) are far more precise than each value.

One row per (image, family, theta), with the settings that produced it (model, checkpoint sha256, solver,
steps / tolerances, probes, seed, network precision, where the settings came from, package versions): tables from
different runs can be concatenated and compared.
The ``prior`` column says which potential a row holds: "diffusion" (the model's, through the ODE) or a classical
baseline on the same images and kernels (:mod:`diractrap.baselines`: "tv", "gaussian"; closed forms, no solver).

Sections: the sweep; the baselines' rows; merging chunk tables; potentials relative to theta = 0.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import __version__
from .blur import blur_same
from .checks import check_sweep_input
from .kernels import kernel
from .potential import PotentialOptions, potential

__all__ = ["COLUMNS", "KEY", "sweep", "baseline_sweep", "merge", "relative"]

KEY = ["model", "prior", "family", "angle", "item", "theta"]  # one row per key
COLUMNS = [
    "model", "prior", "checkpoint_sha256", "image", "item", "label", "family", "angle", "theta", "kernel_size", "boundary",
    "q", "stderr", "bits_per_dim", "nfe", "solver", "steps", "rho", "rtol", "atol", "control", "divergence", "probe",
    "n_probes", "seed", "precision", "sigma_min", "sigma_max", "dtype", "device", "settings", "diractrap_version",
    "torch_version",
]


# ---------------------------------------------------------------------------------------------------------------
# The sweep: images x theta in batches, one potential solve per batch
# ---------------------------------------------------------------------------------------------------------------


def sweep(
    denoiser,
    images: Tensor,
    family: str,
    thetas,
    *,
    item_ids=None,
    names=None,
    labels: Tensor | None = None,
    angle: float | None = None,  # motion only: degrees, 0 = horizontal
    kernel_size: int = 21,  # paper: K = 21
    boundary: str = "reflect",
    batch_size: int = 16,
    model: str | None = None,
    checkpoint_sha256: str | None = None,
    options: PotentialOptions | dict | None = None,
    settings: str = "given",
    progress: bool = False,
    **overrides,
) -> pd.DataFrame:
    """q(h_theta * x) for every image x of ``images`` and every theta of ``thetas``, as a tidy DataFrame.

    Args:
        denoiser: a prior (:class:`diractrap.priors.Denoiser`); the images are moved to the device of its
            parameters when it has any, else they stay where they are.
        images: (B, C, H, W) in [0, 1].
        family, thetas, angle, kernel_size: the blur kernels h_theta (:func:`diractrap.kernels.kernel`).
        item_ids: (B,) the images' indices in their set: they seed the probes (default arange(B)); a chunk of a
            larger set must pass its global indices so that its numbers do not depend on the chunking.
        names: (B,) strings for the ``image`` column (default the item ids); labels: (B,) class indices for a
            conditional prior (the ``label`` column holds -1 when None).
        boundary: how h_theta * x is extended to the size of x ("reflect", "replicate", "circular", "zeros").
        batch_size: (image, theta) pairs per solve; fixed-step results do not depend on it (per-item probes),
            adaptive ones within the solver's tolerance (a batch shares its steps).
        model, checkpoint_sha256: provenance (default: the denoiser's ``info`` dict when it has one).
        options, **overrides: how q is computed (:class:`diractrap.potential.PotentialOptions` or a dict of its
            fields, plus fields by name: ``solver="heun"``); default the library's.
        settings: where the options came from, for the ``settings`` column: "given", or a calibration's record
            ("calibrated <model>.calibration.json sha256:<12 hex>", diractrap.calibration).
    Returns:
        One row per (image, theta), columns :data:`COLUMNS`, ordered by image then theta.
    """
    check_sweep_input(denoiser, images, kernel_size, boundary=boundary, batch_size=batch_size)
    B = images.shape[0]
    ids = list(range(B)) if item_ids is None else [int(i) for i in item_ids]
    names = [str(i) for i in ids] if names is None else [str(n) for n in names]
    if len(ids) != B or len(names) != B or (labels is not None and len(labels) != B):
        raise ValueError(f"item_ids, names and labels must have one entry per image ({B})")
    opt = PotentialOptions.make(options, **overrides)
    thetas = [float(t) for t in thetas]
    h = kernel(family, thetas, kernel_size, angle, dtype=images.dtype).to(images.device)  # (T, K, K)

    info = getattr(denoiser, "info", None) or {}
    param = next(iter(denoiser.parameters()), None) if hasattr(denoiser, "parameters") else None
    device = images.device if param is None else param.device
    pairs = [(b, t) for b in range(B) for t in range(len(thetas))]
    rows = []
    for start in tqdm(range(0, len(pairs), batch_size), desc=f"sweep {family}", disable=not progress):
        bi, ti = map(list, zip(*pairs[start : start + batch_size]))
        x = blur_same(images[bi], h[ti], boundary).to(device)
        res = potential(denoiser, x, labels=None if labels is None else labels[bi].to(device), options=opt,
                        item_ids=[ids[b] for b in bi])
        s = res.settings
        for k, (b, t) in enumerate(zip(bi, ti)):
            rows.append(dict(
                model=model or info.get("name", type(denoiser).__name__), prior="diffusion",
                checkpoint_sha256=checkpoint_sha256 or info.get("sha256", ""),
                image=names[b], item=ids[b], label=-1 if labels is None else int(labels[b]),
                family=family, angle=math.nan if angle is None else float(angle), theta=thetas[t],
                kernel_size=kernel_size, boundary=boundary,
                q=float(res.q[k]), stderr=float(res.stderr[k]), bits_per_dim=float(res.bits_per_dim[k]),
                nfe=res.nfe, solver=opt.solver, steps=s.get("steps", -1), rho=s.get("rho", math.nan),
                rtol=s.get("rtol", math.nan), atol=s.get("atol", math.nan), control=s.get("control", ""),
                divergence=opt.divergence, probe=s.get("probe", "none"), n_probes=s.get("n_probes", 0), seed=opt.seed,
                precision=opt.precision, sigma_min=s["sigma_min"], sigma_max=s["sigma_max"], dtype=s["dtype"],
                device=s["device"], settings=settings, diractrap_version=__version__, torch_version=torch.__version__,
            ))
    return pd.DataFrame(rows, columns=COLUMNS)


# ---------------------------------------------------------------------------------------------------------------
# The baselines' rows: closed-form potentials of the same blurred images (diractrap.baselines)
# ---------------------------------------------------------------------------------------------------------------


def baseline_sweep(
    potentials: dict,
    images: Tensor,
    family: str,
    thetas,
    *,
    model: str,
    item_ids=None,
    names=None,
    labels: Tensor | None = None,
    angle: float | None = None,
    kernel_size: int = 21,
    boundary: str = "reflect",
) -> pd.DataFrame:
    """The rows :func:`sweep` would write for the same images, kernels and thetas, with the potentials of
    classical priors instead of the diffusion prior's: ``potentials`` is {name: (q, info)} as returned by
    :func:`diractrap.baselines.fit_baselines` (q(x) -> (B,) nats). ``model`` names the panel the rows belong to
    (the diffusion model whose images they share). Solver columns read "closed form", nfe 0, stderr 0."""
    B = images.shape[0]
    ids = list(range(B)) if item_ids is None else [int(i) for i in item_ids]
    names = [str(i) for i in ids] if names is None else [str(n) for n in names]
    if len(ids) != B or len(names) != B or (labels is not None and len(labels) != B):
        raise ValueError(f"item_ids, names and labels must have one entry per image ({B})")
    thetas = [float(t) for t in thetas]
    h = kernel(family, thetas, kernel_size, angle, dtype=torch.float64).to(images.device)
    rows = []
    for t, theta in enumerate(thetas):
        x = blur_same(images.double(), h[t].expand(B, -1, -1), boundary)
        N = x[0].numel()
        for prior, (q_fn, _) in potentials.items():
            q = torch.as_tensor(q_fn(x), dtype=torch.float64).cpu()
            for b in range(B):
                rows.append(dict(
                    model=model, prior=prior, checkpoint_sha256="", image=names[b], item=ids[b],
                    label=-1 if labels is None else int(labels[b]), family=family,
                    angle=math.nan if angle is None else float(angle), theta=theta, kernel_size=kernel_size,
                    boundary=boundary, q=float(q[b]), stderr=0.0, bits_per_dim=float(q[b]) / (N * math.log(2)) + 8,
                    nfe=0, solver="closed form", steps=-1, rho=math.nan, rtol=math.nan, atol=math.nan, control="",
                    divergence="", probe="none", n_probes=0, seed=-1, precision="float64", sigma_min=math.nan,
                    sigma_max=math.nan, dtype="float64", device=str(images.device), settings="closed form",
                    diractrap_version=__version__, torch_version=torch.__version__,
                ))
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["prior", "item", "theta"], ignore_index=True)


# ---------------------------------------------------------------------------------------------------------------
# Merging chunk tables (the workflow splits a sweep into jobs: model x family x chunk of images)
# ---------------------------------------------------------------------------------------------------------------


def merge(tables) -> pd.DataFrame:
    """Concatenate sweep tables (DataFrames or parquet paths), sorted by :data:`KEY`; a repeated key is an error.
    (Tables written before the ``prior`` column existed hold diffusion potentials only.)"""
    frames = [t if isinstance(t, pd.DataFrame) else pd.read_parquet(t) for t in tables]
    if not frames:
        raise ValueError("merge needs at least one table")
    df = pd.concat(frames, ignore_index=True)
    if "prior" not in df:
        df.insert(1, "prior", "diffusion")
    dup = df.duplicated(KEY, keep=False)
    if dup.any():
        first = df.loc[dup, KEY].iloc[0].to_dict()
        raise ValueError(f"{int(dup.sum())} rows share a key ({', '.join(KEY)}), e.g. {first}")
    return df.sort_values(KEY, na_position="first", ignore_index=True)


# ---------------------------------------------------------------------------------------------------------------
# Potentials relative to the sharp image (theta = 0): Delta q = q(h_theta * x) - q(x), per image
# ---------------------------------------------------------------------------------------------------------------


def relative(df: pd.DataFrame) -> pd.Series:
    """q - q(theta = 0) of the same (model, prior, family, angle, image), in nats; needs theta = 0 for every image."""
    keys = [df[c] for c in ("model", "prior", "family", "angle", "item") if c in df]
    ref = df["q"].where(df["theta"] == 0).groupby(keys, dropna=False).transform("first")
    if ref.isna().any():
        raise ValueError("relative potentials need theta = 0 for every (model, family, angle, image) of the table")
    return (df["q"] - ref).rename("dq")
