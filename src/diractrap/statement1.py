"""Statement 1 in numbers: Ly at the true pair, at the trivial pair (x_delta, delta) and at Algorithm 1's output,
and the Gaussian semigroup path along which the data term is constant from the truth to delta.

Conventions as in :mod:`diractrap.deconv` (images in [0, 1], 'valid' convolution, kernels on the simplex).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .blur import blur_same
from .deconv import map_x, objective
from .kernels import dirac, kernel

__all__ = ["semigroup_path", "Statement1Result", "statement1"]


# ---------------------------------------------------------------------------------------------------------------
# Statement 1 in numbers: a path of constant data term from the truth to delta; Ly at the truth, at the trivial
# pair (x_delta, delta) and at Algorithm 1's output
# ---------------------------------------------------------------------------------------------------------------


def semigroup_path(
    x_true: Tensor, theta: float, ts: Sequence[float], kernel_size: int, *, boundary: str = "reflect"
) -> tuple[Tensor, Tensor]:
    """Statement 1's argument as a path from the true pair to the trivial one, for a Gaussian blur h_bar = g_theta.

    Gaussians compose, g_a * g_b = g_sqrt(a^2 + b^2), so for t in [0, 1] the pair x_t = g_{sqrt(1 - t^2) theta} *
    x_true, h_t = g_{t theta} has h_t * x_t = h_bar * x_true: the data term of Ly stays at 1/2 ||b||^2 all along
    the path (up to the grid: sampled Gaussians compose to ~1e-6 once both stds exceed ~1 px, and x_t is blurred at
    the size of x with ``boundary``), while q(x_t) grows with t wherever Claim 1 holds. t = 1 is (x_true, h_bar),
    t = 0 is (h_bar * x_true, delta). So on a prior where Claim 1 holds the true pair is not a local minimiser of
    Ly, and any descent method from near it drifts towards delta.

    ``x_true`` (B, C, H, W); returns x_t (T * B, C, H, W) and h_t (T * B, K, K), t-major (item t * B + b).
    """
    B = x_true.shape[0]
    xs, hs = [], []
    for t in ts:
        if not 0 <= t <= 1:
            raise ValueError(f"the path parameter t must be in [0, 1], got {t}")
        rest = kernel("gaussian", math.sqrt(1 - t * t) * theta, kernel_size, dtype=x_true.dtype, device=x_true.device)
        xs.append(blur_same(x_true, rest, boundary))
        h = kernel("gaussian", t * theta, kernel_size, dtype=x_true.dtype, device=x_true.device)
        hs.append(h.expand(B, kernel_size, kernel_size))
    return torch.cat(xs), torch.cat(hs)


@dataclass
class Statement1Result:
    """One Statement 1 row per problem (``rows``: column -> (B,) array) and the trivial-pair images x_delta."""

    rows: dict[str, np.ndarray]
    x_delta: Tensor


def statement1(
    denoiser,
    y: Tensor,
    x_true: Tensor,
    h_true: Tensor,
    x_hat: Tensor,
    h_hat: Tensor,
    *,
    sigma: float = 0.01,  # paper
    sigma_g: float = 0.001,  # authors' notebooks
    n_iter_delta: int = 1000,
    gamma_x: float | None = None,
    pad: str = "replicate",
    labels: Tensor | None = None,
    q_fn: Callable[[Tensor], Tensor] | None = None,
    potential_options: dict | None = None,
    x_delta: Tensor | None = None,
    progress: bool = False,
) -> Statement1Result:
    """Ly at (x_true, h_true), at (x_delta, delta) and at (x_hat, h_hat), with q from the ODE potential.

    x_delta = map_x(denoiser, y, delta) is the non-blind MAP with the Dirac kernel (``n_iter_delta`` gradient
    steps from y extended), unless given. q comes from ``q_fn(x) -> (B,)`` if given, else from
    ``potential.potential(denoiser, x, labels=labels, **potential_options)`` (nats, images in [0, 1]); the three
    calls share their Hutchinson probes item by item, so the differences between columns have less noise.

    Returns a :class:`Statement1Result`: ``rows``, a dict of (B,) numpy arrays (one row per problem): for each
    of ``true``, ``delta``, ``hat``: ``q_*``, ``data_*``, ``L_*``, plus ``q_stderr_*`` when the ODE gives it,
    ``delta_beats_true`` = L_delta < L_true (what Statement 1 predicts), ``hat_minus_true`` = L_hat - L_true;
    and ``x_delta``.
    """
    K = h_true.shape[-1]
    B = y.shape[0]
    delta = dirac(K, dtype=y.dtype, device=y.device).expand(B, K, K)
    if x_delta is None:
        x_delta = map_x(denoiser, y, delta, n_iter=n_iter_delta, sigma=sigma, sigma_g=sigma_g, gamma_x=gamma_x,
                        labels=labels, pad=pad, progress=progress)
    stderr = {}
    if q_fn is None:
        from .potential import potential

        def q_of(name, x):
            res = potential(denoiser, x, labels=labels, **(potential_options or {}))
            if getattr(res, "stderr", None) is not None:
                stderr[name] = torch.as_tensor(res.stderr, dtype=torch.float64).cpu().numpy()
            return torch.as_tensor(res.q, dtype=torch.float64).cpu()
    else:

        def q_of(name, x):
            return torch.as_tensor(q_fn(x), dtype=torch.float64).cpu()

    ht = h_true.expand(B, K, K) if h_true.ndim == 2 else h_true
    rows: dict[str, np.ndarray] = {}
    for name, x, h in (("true", x_true, ht), ("delta", x_delta, delta), ("hat", x_hat, h_hat)):
        q = q_of(name, x.to(y))
        terms = objective(x.to(y), h.to(y), y, q.to(y.device), sigma=sigma)
        rows[f"q_{name}"] = q.numpy()
        rows[f"data_{name}"] = terms["data"].cpu().numpy()
        rows[f"L_{name}"] = terms["total"].cpu().numpy()
        if name in stderr:
            rows[f"q_stderr_{name}"] = stderr[name]
    rows["delta_beats_true"] = rows["L_delta"] < rows["L_true"]
    rows["hat_minus_true"] = rows["L_hat"] - rows["L_true"]
    return Statement1Result(rows=rows, x_delta=x_delta.cpu())


