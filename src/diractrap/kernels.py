"""Blur kernels h_theta (Section 2.2 of the paper) and the projection onto the simplex of kernels (Algorithm 1).

Conventions: a kernel is a (K, K) tensor on the grid u = (row - c, col - c), c = K // 2, non-negative and summing
to 1; ``theta = 0`` gives exactly the Dirac kernel delta (1 at the centre); the spread grows with theta.
Rows point down and columns right, as images are displayed; a motion angle is measured counter-clockwise from
the horizontal, as seen on screen.

The four families follow the authors' definitions (the paper, arXiv:2508.02923, and its code) with two documented
changes that make every family start exactly at delta and grow continuously:

- defocus and motion are smoothed by a 5x5 Gaussian of std ``0.5 * min(theta, 1)`` (the authors use 0.5 for
  every theta, which makes theta = 0 a small Gaussian instead of delta);
- airy is parameterised by the radius of its first dark ring in pixels, h(u) ~ (2 J1(z)/z)^2 with
  z = 3.8317 |u| / theta, averaged over the area of each pixel. The authors evaluate |J1(R rho)/rho|^2 on the centred FFT grid rho = |fftfreq(K)| with
  R = 3.8317 * 2 pi^2 / theta_a: its first zero is at theta_a * K / (2 pi^2) pixels, so
  ``theta = theta_a * K / (2 * pi**2)`` maps their value to ours (and ours does not depend on K).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FAMILIES", "kernel", "dirac", "wide", "small", "project_simplex", "second_moment"]

FAMILIES = ("gaussian", "motion", "airy", "defocus")
J1_FIRST_ZERO = 3.8317059702075125  # first positive zero of the Bessel function J1


# ---------------------------------------------------------------------------------------------------------------
# Helpers: the grid, the smooth bump that all edges use, normalisation
# ---------------------------------------------------------------------------------------------------------------


def _grid(size: int, dtype, device) -> tuple[Tensor, Tensor]:
    """Row and column offsets from the centre c = size // 2, each (size, size)."""
    r = torch.arange(size, dtype=dtype, device=device) - size // 2
    return torch.meshgrid(r, r, indexing="ij")


def _edge(d: Tensor) -> Tensor:
    """1 for d <= 0, the bump exp(-1/(1 - d^2)) / exp(-1) for 0 < d < 1, 0 for d >= 1 (smooth, C-infinity)."""
    inside = (d > 0) & (d < 1)
    dd = torch.where(inside, d, torch.zeros_like(d))
    bump = torch.exp(1.0 - 1.0 / (1.0 - dd**2))
    return torch.where(d <= 0, torch.ones_like(d), torch.where(inside, bump, torch.zeros_like(d)))


def _normalise(h: Tensor) -> Tensor:
    return h / h.sum(dim=(-2, -1), keepdim=True)


def _smooth(h: Tensor, std: Tensor) -> Tensor:
    """Convolve each (K, K) kernel of a (T, K, K) stack with a 5x5 Gaussian of its own std (std = 0 leaves it)."""
    g = _gaussian(std, 5)  # (T, 5, 5), delta where std == 0
    out = F.conv2d(h[None], g[:, None], padding=2, groups=h.shape[0])[0]  # symmetric filter: conv = correlation
    return _normalise(out)


def _gaussian(std: Tensor, size: int) -> Tensor:
    y, x = _grid(size, std.dtype, std.device)
    r2 = (x**2 + y**2)[None]
    s = std.view(-1, 1, 1)
    safe = torch.where(s > 0, s, torch.ones_like(s))
    g = torch.where(s > 0, torch.exp(-r2 / (2 * safe**2)), (r2 == 0).to(std.dtype))
    return _normalise(g)


# ---------------------------------------------------------------------------------------------------------------
# The four families as the authors define them (arXiv:2508.02923 and its code), with the changes listed above
# ---------------------------------------------------------------------------------------------------------------


def _defocus(theta: Tensor, size: int) -> Tensor:
    y, x = _grid(size, theta.dtype, theta.device)
    r = torch.sqrt(x**2 + y**2)[None]
    disc = _edge(r - theta.view(-1, 1, 1))  # 1 inside radius theta, smooth fall over one pixel
    return _smooth(_normalise(disc), 0.5 * theta.clamp(max=1.0))


def _motion(theta: Tensor, size: int, angle: float = 0.0) -> Tensor:
    y, x = _grid(size, theta.dtype, theta.device)
    a = math.radians(angle)
    along = x * math.cos(a) - y * math.sin(a)  # rows point down: screen "up" is -row
    across = x * math.sin(a) + y * math.cos(a)
    t = theta.view(-1, 1, 1)
    # the ends fall over min(theta, 1) pixel, so that theta -> 0 tends to delta at every angle (at 45 degrees the
    # nearest neighbours sit 0.71 px along the line); across the line the profile is one pixel wide
    w = t.clamp(max=1.0)
    d = along.abs()[None] - t
    ends = torch.where(w > 0, _edge(d / torch.where(w > 0, w, torch.ones_like(w))), (d <= 0).to(theta.dtype))
    line = ends * _edge(across.abs())[None]
    return _smooth(_normalise(line), 0.5 * theta.clamp(max=1.0))


def _airy(theta: Tensor, size: int) -> Tensor:
    # Each pixel integrates the pattern over its area (n x n samples). Point samples of the rings on the integer
    # grid would make the spread non-monotone in theta; n grows as theta shrinks so that every ring period is
    # sampled a few times (about 1.2 / theta rings cross a pixel), capped at 64 (below theta ~ 0.1 px).
    y, x = _grid(size, theta.dtype, theta.device)
    out = []
    for t in theta.tolist():
        if t == 0:
            out.append((y**2 + x**2 == 0).to(theta.dtype))
            continue
        n = min(64, max(8, math.ceil(6.0 / t)))
        sub = (torch.arange(n, dtype=theta.dtype, device=theta.device) + 0.5) / n - 0.5
        yy = y[..., None, None] + sub.view(-1, 1)  # (K, K, n, 1): sub-pixel rows
        xx = x[..., None, None] + sub.view(1, -1)  # (K, K, 1, n): sub-pixel columns
        z = J1_FIRST_ZERO * torch.sqrt(xx**2 + yy**2) / t
        safe = torch.where(z > 0, z, torch.ones_like(z))
        out.append(torch.where(z > 0, (2 * torch.special.bessel_j1(safe) / safe) ** 2, torch.ones_like(z)).mean((-2, -1)))
    return _normalise(torch.stack(out))


def _gaussian_family(theta: Tensor, size: int) -> Tensor:
    return _gaussian(theta, size)


_BUILDERS = {"gaussian": _gaussian_family, "motion": _motion, "airy": _airy, "defocus": _defocus}


def kernel(family: str, theta, size: int = 21, angle: float | None = None, *, dtype=torch.float32,
           device=None) -> Tensor:
    """The kernel h_theta of a family on a size x size grid.

    Args:
        family: "gaussian" (theta = std in pixels), "motion" (theta = half-length in pixels), "airy" (theta =
            radius of the first dark ring in pixels) or "defocus" (theta = disc radius in pixels).
        theta: a number (returns (K, K)) or a 1-D tensor / sequence of T values (returns (T, K, K)). theta >= 0.
        size: K, odd or even; the centre is K // 2.
        angle: the motion blur's direction in degrees (None: 0 = horizontal). Every family takes the argument, so
            callers pass a pair's angle as it is; the other families are isotropic and accept only None (an angle
            given for them is a configuration error, raised as ValueError).
    Returns:
        Non-negative kernels summing to 1, delta for theta = 0, differentiable in theta (theta > 0).
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown blur family {family!r}; choose one of {', '.join(FAMILIES)}")
    if angle is not None and family != "motion":
        raise ValueError(f"angle applies to the motion family only, not {family!r} (isotropic): got angle={angle}")
    options = {} if angle is None else {"angle": angle}
    scalar = not isinstance(theta, Tensor) and not isinstance(theta, (list, tuple))
    t = torch.as_tensor(theta, dtype=dtype, device=device)
    scalar = scalar or t.ndim == 0
    t = t.reshape(-1)
    if not (torch.isfinite(t) & (t >= 0)).all():  # NaN passes "t < 0" unnoticed
        raise ValueError(f"theta must be >= 0 and finite, got {t.tolist()}")
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"kernel size must be an integer >= 1, got {size!r}")
    h = _BUILDERS[family](t, size, **options)
    return h[0] if scalar else h


def dirac(size: int = 21, *, dtype=torch.float32, device=None) -> Tensor:
    """The Dirac kernel delta: 1 at the centre (size // 2, size // 2)."""
    h = torch.zeros(size, size, dtype=dtype, device=device)
    h[size // 2, size // 2] = 1
    return h


def wide(size: int = 21, *, dtype=torch.float32, device=None) -> Tensor:
    """Algorithm 1's wide initial kernel: constant 1 / K^2."""
    return torch.full((size, size), 1.0 / size**2, dtype=dtype, device=device)


def small(size: int = 21, std: float = 1.5, *, dtype=torch.float32, device=None) -> Tensor:  # paper: std 1.5
    """Algorithm 1's small initial kernel: a Gaussian of std 1.5 pixels."""
    return kernel("gaussian", std, size, dtype=dtype, device=device)


def second_moment(h: Tensor) -> Tensor:
    """E|u - E u|^2 of a kernel seen as a distribution on the grid: the squared spread, shape h.shape[:-2]."""
    y, x = _grid(h.shape[-1], h.dtype, h.device)
    if h.shape[-2] != h.shape[-1]:
        raise ValueError("second_moment expects square kernels")
    my = (h * y).sum((-2, -1), keepdim=True)
    mx = (h * x).sum((-2, -1), keepdim=True)
    return (h * ((y - my) ** 2 + (x - mx) ** 2)).sum((-2, -1))


# ---------------------------------------------------------------------------------------------------------------
# Euclidean projection onto the simplex {h >= 0, sum h = 1} (h = P(theta) in Algorithm 1)
# ---------------------------------------------------------------------------------------------------------------


def project_simplex(v: Tensor, dims: int = 1) -> Tensor:
    """Exact Euclidean projection of each vector of a batch onto the probability simplex.

    The last ``dims`` axes form one vector (``dims=2`` projects (..., K, K) kernels); every leading index is
    projected independently. Sort-based algorithm (Held et al. 1974; Duchi et al. 2008): with u sorted in
    decreasing order, rho = max{j : u_j > (sum_{i<=j} u_i - 1) / j}, tau = (sum_{i<=rho} u_i - 1) / rho and
    P(v) = max(v - tau, 0). Differentiable almost everywhere (autograd goes through tau).
    """
    shape = v.shape
    flat = v.reshape(*shape[: v.ndim - dims], -1) if dims > 0 else v
    u, _ = torch.sort(flat, dim=-1, descending=True)
    css = torch.cumsum(u, dim=-1) - 1
    j = torch.arange(1, flat.shape[-1] + 1, dtype=v.dtype, device=v.device)
    cond = u - css / j > 0
    rho = (cond * j).argmax(dim=-1, keepdim=True)  # index of the last j where cond holds (cond is monotone)
    tau = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return torch.clamp(flat - tau, min=0).reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# Real camera shake: Levin et al.'s eight kernels (CVPR 2009), shipped in assets/levin09_kernels.npz
# ---------------------------------------------------------------------------------------------------------------

LEVIN_SIZES = (19, 17, 15, 27, 13, 21, 23, 23)  # native sizes of kernels 1..8


def levin_kernel(index: int, size: int | None = None, *, dtype=torch.float32, device=None) -> Tensor:
    """Levin et al.'s camera-shake kernel number ``index`` (1..8) as a true-convolution kernel, centred on a
    ``size`` x ``size`` grid (zero-padded; default its native size, see LEVIN_SIZES). Sums to 1.

    Unlike :func:`kernel` this is no one-parameter family: the kernels are measured camera motions, used as test
    kernels for Algorithm 1 (the authors' own test kernels are of this kind, 15-52 px^2 second moment).
    """
    from importlib.resources import files

    import numpy as np

    if int(index) != index or not 1 <= index <= 8:
        raise ValueError(f"Levin kernel number must be 1..8, got {index!r}")
    with np.load(files("diractrap") / "assets" / "levin09_kernels.npz") as z:
        k = torch.as_tensor(z[f"k{int(index)}"], dtype=dtype, device=device)
    n = k.shape[-1]
    size = n if size is None else int(size)
    if size < n:
        raise ValueError(f"Levin kernel {index} is {n} x {n}: it needs a kernel size of at least {n}, got {size}")
    out = torch.zeros(size, size, dtype=dtype, device=device)
    o = size // 2 - n // 2
    out[o : o + n, o : o + n] = k
    return out / out.sum()
