"""Checks at the boundary: what a user gives (numbers, images, tensors, output paths, a config) is validated once,
before any work, with a one-line error that names the value and what is allowed.

Shared by the library's entry points (:func:`diractrap.potential.potential`, :func:`diractrap.deconv.algorithm1`,
:func:`diractrap.deconv.map_x`), the image reader (:func:`diractrap.data.load_image`), the command line
(:mod:`diractrap.cli`) and the workflow's config validation (``workflow/rules/common.smk``). Every error here is a
``ValueError`` (a user error: the CLI prints it as one line and exits with status 1).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["RANGE_TOL", "NOISE_REACH", "check_positive", "check_nonnegative", "check_count", "check_images",
           "Geometry", "model_geometry", "check_model_input", "check_kernel_fits", "check_deconv_input",
           "nonfinite_message", "prepare_output_dir", "prepare_output_file", "config_errors"]

# Images enter the library in [0, 1]. The tolerance admits what the library itself produces (the iterates of a
# deblurring ring past the edges by a few hundredths to tenths; blurred images stay in [0, 1]) and refuses the
# usual mistakes: 8-bit values (every pixel brighter than 0.6 % grey exceeds 1.5), [-1, 1] images (every pixel
# darker than 25 % grey in [0, 1] terms lies below -0.5) and wrong scalings such as 5.0.
RANGE_TOL = 0.5
# y = h * x + sigma n: a Gaussian sample beyond 6 sigma has probability 2e-9 per pixel, so y may leave [0, 1] by up to
# NOISE_REACH * sigma more than an image may.
NOISE_REACH = 6.0


# ---------------------------------------------------------------------------------------------------------------
# Numbers: step sizes, noise levels, tolerances, counts
# ---------------------------------------------------------------------------------------------------------------


def _real(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def check_positive(**values) -> None:
    """Each given value (None = not given, skipped) must be a finite number > 0."""
    for name, value in values.items():
        if value is not None and _real(name, value) <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_nonnegative(**values) -> None:
    """Each given value (None skipped) must be a finite number >= 0."""
    for name, value in values.items():
        if value is not None and _real(name, value) < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def check_count(minimum: int = 1, **values) -> None:
    """Each given value (None skipped) must be an integer >= ``minimum``."""
    for name, value in values.items():
        if value is None:
            continue
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if int(value) < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Image tensors: a non-empty float batch (B, C, H, W), finite, in [0, 1] within RANGE_TOL
# ---------------------------------------------------------------------------------------------------------------


def check_images(x, name: str = "x", *, tol: float = RANGE_TOL) -> None:
    """Raise a ValueError unless ``x`` is a non-empty float tensor (B, C, H, W), finite, in [-tol, 1 + tol]."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch tensor (B, C, H, W), got a {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): give at least one image of at least one pixel")
    if not x.is_floating_point():
        hint = " (8-bit images: x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise ValueError(f"{name} has dtype {str(x.dtype).removeprefix('torch.')}: give float images in [0, 1]{hint}")
    bad = ~torch.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} has {int(bad.sum())} non-finite value(s) (NaN or infinity), the first at index "
                         f"{first}: give finite pixel values in [0, 1]")
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo < -tol or hi > 1 + tol:
        raise ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}]; images must lie in [0, 1] (tolerance {tol:g}): "
                         "divide 8-bit values by 255, map [-1, 1] images by (x + 1) / 2")


# ---------------------------------------------------------------------------------------------------------------
# What a prior accepts: channels, a side multiple (U-Nets halve the image several times), or one fixed shape
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """The images a prior accepts: ``channels`` (None: any), sides divisible by ``multiple``, or exactly ``shape``."""

    channels: int | None = None
    multiple: int = 1
    shape: tuple[int, int, int] | None = None  # (C, H, W) of a prior defined on one size only (Gaussian priors)


def model_geometry(denoiser) -> Geometry:
    """Geometry of a prior of the project, read from the object; Geometry() (no constraint) when unknown."""
    shape = getattr(denoiser, "shape", None)
    if isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(s, int) for s in shape):
        return Geometry(channels=shape[0], shape=shape)  # the Gaussian priors of diractrap.priors
    net = getattr(denoiser, "model", None)
    enc = getattr(net, "enc", None)
    if hasattr(denoiser, "img_channels") and enc is not None:  # EDMPrecond around a SongUNet / DhariwalUNet
        downs = sum(1 for k in enc.keys() if k.endswith("_down") and not k.endswith("_aux_down"))
        return Geometry(channels=int(denoiser.img_channels), multiple=2**downs)
    net = getattr(denoiser, "net", None)
    if hasattr(net, "num_resolutions") and hasattr(net, "config"):  # NCSNppDenoiser
        return Geometry(channels=int(net.config.num_channels), multiple=2 ** (int(net.num_resolutions) - 1))
    return Geometry()


def _sides(n: int, m: int) -> str:
    lower, upper = n - n % m, n - n % m + m
    return f"{lower} or {upper}" if lower > 0 else f"{upper}"


def check_model_input(denoiser, x: Tensor, name: str = "x") -> None:
    """x (B, C, H, W) must have the channels and the size the prior accepts; the error names what would fit.

    No padding or cropping is done here: a network's output depends on every pixel, so neither is exact for q(x).
    """
    g = model_geometry(denoiser)
    C, H, W = (int(s) for s in x.shape[1:])
    if g.shape is not None and (C, H, W) != g.shape:
        raise ValueError(f"{name} is {C}x{H}x{W} (C x H x W); this prior is defined on {'x'.join(map(str, g.shape))} "
                         "images only")
    if g.channels is not None and C != g.channels:
        raise ValueError(f"{name} has {C} channel(s); this prior takes {g.channels} (load images with mode='RGB' for "
                         "3, 'L' for 1)")
    if g.multiple > 1 and (H % g.multiple or W % g.multiple):
        raise ValueError(f"{name} is {H}x{W}; this network needs sides divisible by {g.multiple}: crop or resize to "
                         f"{_sides(H, g.multiple)} rows and {_sides(W, g.multiple)} columns")


def check_kernel_fits(kernel_size, h: int, w: int, name: str = "kernel_size") -> int:
    """K must be an integer >= 1 smaller than the blurry image (h, w): a kernel as large as the observation leaves
    nothing to deblur (and costs minutes per iteration). Returns K."""
    check_count(1, **{name: kernel_size})
    K, h, w = int(kernel_size), int(h), int(w)
    if K >= min(h, w):
        raise ValueError(f"{name} K = {K} must be smaller than the blurry image ({h}x{w}): use K < {min(h, w)}")
    return K


def check_deconv_input(denoiser, y: Tensor, kernel_size, *, sigma: float | None = None) -> None:
    """The blurry batch y (B, C, h, w) of Algorithm 1 / the MAP: images (noise included), K, and x's size.

    x is (h + K - 1, w + K - 1) (the valid model), extended to the sides and channels the prior accepts
    (:func:`diractrap.domain.x_domain`: refused only where no extension fits, e.g. a prior defined on a smaller
    size). K must be smaller than y (:func:`check_kernel_fits`). A constant y (a flat or saturated image) carries
    no information about the kernel: refused with that reason.
    """
    tol = RANGE_TOL + NOISE_REACH * (sigma or 0.0)
    check_images(y, "y", tol=tol)
    if kernel_size is None:
        raise ValueError("kernel_size K is needed when the initial kernel is given by name (the paper uses K = 21)")
    K = int(check_kernel_fits(kernel_size, *y.shape[-2:]))
    h, w = (int(s) for s in y.shape[-2:])
    flat = (y.flatten(2).amax(2) - y.flatten(2).amin(2)).amax(1) == 0  # (B,): every channel constant
    if flat.any():
        which = [int(i) for i in flat.nonzero().flatten()]
        raise ValueError(f"blurry image(s) {which} are constant (flat or saturated): a constant image says nothing "
                         "about the kernel; give an image with contrast")
    from .domain import x_domain  # x mapped to the sides and channels the prior accepts, or a one-line error

    x_domain(denoiser, y.shape[1], (h + K - 1, w + K - 1), kernel_size=K)


# ---------------------------------------------------------------------------------------------------------------
# NaN or infinity during Algorithm 1: name the quantity and the fix that fits its cause
# ---------------------------------------------------------------------------------------------------------------

_NONFINITE_HINTS = (  # (words in the quantity's name, what to do)
    ("prior gradient", "the denoiser returned NaN or infinity at sigma_g: raise sigma_g towards the prior's "
     "sigma_min, or check the network (dtype, device, weights)"),
    ("denoiser output", "the denoiser returned NaN or infinity: raise dr_sigma, or check the network"),
    ("data proximal", "the conjugate gradients diverged: lower gamma_x or raise cg_tol"),
    ("data gradient", "x diverged: lower gamma_x (default 1 / (1 + sigma^2 / sigma_g^2))"),
    ("image x", "x diverged: lower gamma_x (default 1 / (1 + sigma^2 / sigma_g^2))"),
    ("kernel gradient", "x diverged: lower gamma_x"),
    ("theta", "the kernel step diverged: lower gamma_h (constant schedule) or gamma_h_scale (lipschitz schedule)"),
)


def nonfinite_message(what: str, where: str) -> str:
    """'<what> is not finite at <where>: <the fix that fits>' for Algorithm 1's NonFiniteError."""
    hint = next((h for key, h in _NONFINITE_HINTS if key in what), "lower the step sizes (gamma_x, gamma_h)")
    return f"{what} is not finite at {where}: {hint}"


# ---------------------------------------------------------------------------------------------------------------
# Output paths: checked (and a directory created) before any computation
# ---------------------------------------------------------------------------------------------------------------


def _writable_dir(path: Path, what: str) -> bool:
    """Create ``path`` (and parents) if missing; raise a one-line ValueError if it cannot hold new files.

    Returns True when the directory was created by this call (the caller may remove it again on failure).
    """
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a directory: give a directory path")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{what} {path} cannot be created ({err.strerror or type(err).__name__}): give a path in a "
                         "writable directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable: give a writable directory")
    return created


def prepare_output_dir(path, what: str = "output directory") -> list[Path]:
    """Make sure ``path`` is (or can be made) a writable directory; return the directories this call created."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    _writable_dir(path, what)
    return missing


def prepare_output_file(path, what: str = "output file") -> list[Path]:
    """Make sure a file can be written at ``path`` (not a directory; its directory writable, created if missing)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory: give a file path")
    return prepare_output_dir(path.parent, f"the directory of {what}") if str(path.parent) not in ("", ".") else []


# ---------------------------------------------------------------------------------------------------------------
# The workflow's config against its JSON schema: a few lines naming the key, never the whole schema
# ---------------------------------------------------------------------------------------------------------------


def _key(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def config_errors(config: dict, schema: dict, limit: int = 3) -> list[str]:
    """At most ``limit`` one-line messages, one per schema violation: the key, the problem, the allowed keys."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(config),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))  # top-level first
    lines = []
    for err in errors[:limit]:
        path = list(err.absolute_path)
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))  # the object's own schema node ($ref resolved)
            extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
            for k in extra:
                lines.append(f"config key {_key([*path, k])}: unknown key; allowed under {_key(path)}: "
                             f"{', '.join(allowed)}")
            continue
        if err.validator == "required":
            lines.append(f"config key {_key(path)}: {err.message}")
            continue
        message = " ".join(err.message.split())
        lines.append(f"config key {_key(path)}: {message if len(message) <= 160 else message[:157] + '...'}")
    if len(errors) > limit:
        lines.append(f"... and {len(errors) - limit} more problem(s)")
    return lines
