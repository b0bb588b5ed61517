"""The MAP objective of blind deconvolution and Algorithm 1 (Section 4 of the paper), with its evaluation.

Model (Section 1): y = h * x + b, b ~ N(0, sigma^2 I), 'valid' convolution (blur.conv): x is (B, C, H, W) and y is
(B, C, H - K + 1, W - K + 1). Images in [0, 1]; sigma in [0, 1] units; kernels (B, K, K) on the simplex, centre
at (K // 2, K // 2). The MAP objective, scaled by sigma^2 as in the paper:

    Ly(x, h) = 1/2 ||h * x - y||^2 + sigma^2 q(x),      q = -log p_x in nats for images in [0, 1].

Gradients. grad_h Ly = A_x^T (h * x - y) (blur.conv_adjoint_kernel). The prior gradient uses the small-noise
score of the denoiser, grad q(x) ~ (x - D(x, sigma_g)) / sigma_g^2 (the paper does not say how it computes it;
the authors' notebooks use sigma_g ~ 0.001 on [0, 1]). For a Gaussian prior N(m, S) this is exactly the gradient of
the potential of N(m, S + sigma_g^2 I). The kernel is h = P(theta), P the Euclidean projection onto the simplex
(kernels.project_simplex) and grad_theta Ly = J_P(theta)^T grad_h Ly: on the support S of P(theta), the gradient
minus its mean over S; zero elsewhere.

x starts (and restarts at every reset) from y padded by the kernel's reach (K - 1 - K // 2 pixels top and left,
K // 2 bottom and right; ``pad`` "replicate" or "reflect") or, with ``pad="observed"``, from the blurry image at the
size of x (``y_full``, the authors' geometry). Any size and mode: the prior sees x extended by reflection to the
sides it accepts (grey replicated, alpha dropped), the data term sees x, x is returned (:mod:`diractrap.domain`).

Two complete parameter sets, ``PRESETS``: "paper" (Algorithm 1 as the paper writes it) and "authors" (their
published loop: Douglas-Rachford x-steps with the denoiser as the prior's proximal step, a projected kernel step
with a log-decaying relative step); docs/ALGORITHM1.md gives every value's source and where their code is not followed.

Sections: the objective and its gradients; x-minimisation (gradient descent, the authors' Douglas-Rachford);
Algorithm 1. Re-exported here: :mod:`diractrap.problems`, :mod:`diractrap.metrics`, :mod:`diractrap.statement1`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from . import __version__
from .blur import conv, conv_adjoint, conv_adjoint_kernel
from .checks import (check_count, check_deconv_input, check_deconv_memory, check_nonnegative, check_positive,
                     nonfinite_message)
from .domain import Domain, extend, start_image, x_domain
from .kernels import dirac, project_simplex, second_moment, small, wide
from .numerics import at_precision, check_precision
from .priors import check_denoiser, denoise_unit, score_unit

__all__ = [
    "Algorithm1Params",
    "AUTHORS_REL_BUDGET",
    "PRESETS",
    "preset",
    "STEP_CAP",
    "Algorithm1Result",
    "NonFiniteError",
    "extend",
    "data_term",
    "objective",
    "prior_grad",
    "grad_x",
    "grad_h",
    "grad_theta",
    "kernel_lipschitz",
    "map_x",
    "initial_kernels",
    "algorithm1",
]


class NonFiniteError(RuntimeError):
    """A NaN or an infinity appeared in Algorithm 1; the message names the iteration and the term."""


def _check_finite(t: Tensor, what: str, where: str) -> None:
    if not torch.isfinite(t).all():
        raise NonFiniteError(nonfinite_message(what, where))  # names the fix that fits the quantity


# ---------------------------------------------------------------------------------------------------------------
# The objective Ly(x, h) = 1/2 ||h * x - y||^2 + sigma^2 q(x) and its gradients (paper Eq. (3))
# ---------------------------------------------------------------------------------------------------------------


def data_term(x: Tensor, h: Tensor, y: Tensor) -> Tensor:
    """1/2 ||h * x - y||^2 per item, shape (B,), accumulated in float64."""
    r = conv(x, h, "valid") - y
    return 0.5 * r.double().pow(2).flatten(1).sum(1)


def objective(
    x: Tensor, h: Tensor, y: Tensor, q: Tensor, *, sigma: float = 0.01  # paper: noise std 0.01
) -> dict[str, Tensor]:
    """The terms of Ly(x, h): ``data`` = 1/2 ||h * x - y||^2, ``prior`` = sigma^2 q, ``total``; each (B,) float64.

    ``q`` (B,) is the potential of x in nats for images in [0, 1], e.g. ``potential.potential(denoiser, x).q``.
    """
    d = data_term(x, h, y)
    p = sigma**2 * torch.as_tensor(q, dtype=torch.float64, device=d.device)
    return {"data": d, "prior": p, "total": d + p}


def prior_grad(denoiser, x: Tensor, sigma_g: float, labels: Tensor | None = None) -> Tensor:
    """grad q(x) ~ (x - D(x, sigma_g)) / sigma_g^2 for x in [0, 1], sigma_g in [0, 1] units; shaped like x."""
    return -score_unit(denoiser, x, sigma_g, labels)


def grad_x(
    denoiser, x: Tensor, h: Tensor, y: Tensor, *, sigma: float = 0.01, sigma_g: float = 0.001, labels=None
) -> Tensor:  # paper: sigma 0.01; authors' notebooks: sigma_g 0.001
    """grad_x Ly = A_h^T (h * x - y) + sigma^2 grad q(x), with the small-noise score for grad q."""
    return conv_adjoint(conv(x, h, "valid") - y, h, "valid") + sigma**2 * prior_grad(denoiser, x, sigma_g, labels)


def grad_h(x: Tensor, h: Tensor, y: Tensor) -> Tensor:
    """grad_h Ly = A_x^T (h * x - y), summed over channels: (B, K, K)."""
    hb = h.expand(x.shape[0], *h.shape[-2:]) if h.ndim == 2 else h
    return conv_adjoint_kernel(conv(x, hb, "valid") - y, x, h.shape[-1], "valid")


def _chain_simplex(theta: Tensor, g: Tensor) -> Tensor:
    """J_P(theta)^T g for h = P(theta): g minus its mean over the support of P(theta), zero off the support."""
    on = (project_simplex(theta, dims=2) > 0).to(g.dtype)
    mean = (g * on).sum((-2, -1), keepdim=True) / on.sum((-2, -1), keepdim=True)
    return (g - mean) * on


def grad_theta(x: Tensor, theta: Tensor, y: Tensor) -> Tensor:
    """grad_theta Ly(x, P(theta)) (B, K, K): the chain rule through the simplex projection (paper's theta)."""
    return _chain_simplex(theta, grad_h(x, project_simplex(theta, dims=2), y))


def kernel_lipschitz(
    x: Tensor, kernel_size: int, n_iter: int = 30, seed: int = 0, v0: Tensor | None = None, return_vector=False
):
    """Largest eigenvalue L of A_x^T A_x on zero-sum kernels (the directions the simplex leaves free), per item (B,).

    1 / L is the classical step for the kernel: grad_h Ly is L-Lipschitz in h on the simplex. Power iteration from
    ``v0`` (B, K, K) or from a fixed random start, so the value does not depend on the batch. With
    ``return_vector`` also returns the last iterate, to warm-start the next call when x changes slowly.
    """
    K = kernel_size
    if v0 is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(K, K, generator=g, dtype=torch.float64).to(x).expand(x.shape[0], K, K).clone()
    else:
        v = v0

    def op(v):
        v = v - v.mean((-2, -1), keepdim=True)
        w = conv_adjoint_kernel(conv(x, v, "valid"), x, K, "valid")
        return w - w.mean((-2, -1), keepdim=True)

    lam = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(n_iter):
        w = op(v)
        lam = w.flatten(1).norm(dim=1) / v.flatten(1).norm(dim=1)
        v = w / w.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1)
    return (lam, v) if return_vector else lam


# ---------------------------------------------------------------------------------------------------------------
# Minimisation in x for a fixed kernel: gradient descent (Algorithm 1's inner loop) and Douglas-Rachford
# ---------------------------------------------------------------------------------------------------------------


def default_gamma_x(sigma: float, sigma_g: float) -> float:
    """1 / (1 + sigma^2 / sigma_g^2): the inverse Lipschitz bound of grad_x Ly (||A_h|| <= 1 on the simplex and
    (x - D(x, sigma_g)) / sigma_g^2 is 1/sigma_g^2-Lipschitz when D's Jacobian has its spectrum in [0, 1])."""
    return 1.0 / (1.0 + sigma**2 / sigma_g**2)


def _A(x: Tensor, h: Tensor, dom: Domain | None) -> Tensor:
    """The data operator on the prior's domain: h * (C x') (:mod:`diractrap.domain`; C = I without a domain)."""
    return conv(x if dom is None else dom.crop(x), h, "valid")


def _At(r: Tensor, h: Tensor, dom: Domain | None) -> Tensor:
    """Its adjoint C^T A_h^T r: zero on the pixels the domain added."""
    g = conv_adjoint(r, h, "valid")
    return g if dom is None else dom.crop_adjoint(g)


def _gd_steps(denoiser, x, h, y, n, *, sigma, sigma_g, gamma_x, labels, where, dom=None):
    """n gradient steps x <- x - gamma_x grad_x Ly(x, h), x on the prior's domain ``dom``.

    Returns x and the gradients of the first and of the last step (zeros when n = 0).
    """
    g = g0 = torch.zeros_like(x)
    for i in range(n):
        gd = _At(_A(x, h, dom) - y, h, dom)
        gp = prior_grad(denoiser, x, sigma_g, labels)
        _check_finite(gd, "the data gradient A_h^T(h*x - y)", f"{where}, inner step {i}")
        _check_finite(gp, "the prior gradient (x - D(x, sigma_g))/sigma_g^2", f"{where}, inner step {i}")
        g = gd + sigma**2 * gp
        if i == 0:
            g0 = g
        x = x - gamma_x * g
    return x, g0, g


def _cg(apply, b: Tensor, x0: Tensor, n_iter: int, tol: float) -> Tensor:
    """Conjugate gradients for the SPD system apply(x) = b, per item: an item stops once ||r||^2 <= tol."""
    dims = tuple(range(1, b.ndim))
    x = x0
    r = b - apply(x)
    p = r.clone()
    rr = (r * r).sum(dims, keepdim=True)
    for _ in range(n_iter):
        active = (rr > tol).to(b.dtype)
        if not active.any():
            break
        Ap = apply(p)
        alpha = active * rr / (p * Ap).sum(dims, keepdim=True).clamp_min(1e-300)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = (r * r).sum(dims, keepdim=True)
        p = r + (rr_new / rr.clamp_min(1e-300)) * p
        rr = rr_new
    return x


def _dr_steps(denoiser, z, h, y, n, *, gamma, sigma_d, clamp, cg_iter, cg_tol, labels, where, dom=None):
    """Douglas-Rachford on f + g, f = 1/2||h*x - y||^2, with the denoiser as the proximal step of g.

    From the state z, each step: x = D(z, sigma_d), z <- z + prox_{gamma f}(2x - z) - x with
    prox_{gamma f}(v) = (A^T A + I/gamma)^{-1} (A^T y + v/gamma) by CG (warm-started), z clipped to
    [-clamp, 1 + clamp]; A = A_h C on the prior's domain ``dom``. When D(., sigma_d) is the proximal map of
    sigma_d^2 q (exactly so for a Gaussian prior), g = (sigma_d^2 / gamma) q and the fixed point minimises
    1/2||h*x - y||^2 + (sigma_d^2 / gamma) q(x).

    Returns (D(z, sigma_d), z) and the gradients of that objective at the first and at the last x: from the prox
    identity (z - x) / gamma = grad g(x) for x = D(z), no extra network evaluation: A^T(Ax - y) + (z - x) / gamma.
    """
    Aty = _At(y, h, dom)

    def normal(u):
        return _At(_A(u, h, dom), h, dom) + u / gamma

    def gradient(x, z):
        return _At(_A(x, h, dom), h, dom) - Aty + (z - x) / gamma

    u, g0 = z, None
    for i in range(n):
        x = denoise_unit(denoiser, z, sigma_d, labels)
        _check_finite(x, "the denoiser output D(z, sigma_d)", f"{where}, Douglas-Rachford step {i}")
        if i == 0:
            g0 = gradient(x, z)
        v = 2 * x - z
        u = _cg(normal, Aty + v / gamma, u, cg_iter, cg_tol)
        _check_finite(u, "the data proximal step (conjugate gradients)", f"{where}, Douglas-Rachford step {i}")
        z = (z + u - x).clamp(-clamp, 1 + clamp)
    x = denoise_unit(denoiser, z, sigma_d, labels)
    g = gradient(x, z)
    return x, z, (g if g0 is None else g0), g


@torch.no_grad()
def map_x(
    denoiser,
    y: Tensor,
    h: Tensor,
    x0: Tensor | None = None,
    *,
    n_iter: int = 1000,
    sigma: float = 0.01,  # paper: noise std
    sigma_g: float = 0.001,  # authors' notebooks
    gamma_x: float | None = None,  # None: 1 / (1 + sigma^2 / sigma_g^2)
    labels: Tensor | None = None,
    pad: str = "replicate",
    progress: bool = False,
) -> Tensor:
    """The non-blind MAP: argmin_x Ly(x, h) by gradient descent from ``x0`` (default: y extended). (B, C, H, W).

    With h = kernels.dirac(K) this is x_delta, the MAP-denoised image of Statement 1. x of any size and y's
    channels: the prior sees x extended to what it accepts, as in :func:`algorithm1` (:mod:`diractrap.domain`).
    """
    check_denoiser(denoiser)
    check_positive(sigma=sigma, sigma_g=sigma_g)
    check_deconv_input(denoiser, y, h.shape[-1], sigma=sigma)
    K = h.shape[-1]
    check_deconv_memory(denoiser, y, K, 12, f"the MAP of {y.shape[0]} image(s)")
    dom = x_domain(denoiser, y.shape[1], (y.shape[-2] + K - 1, y.shape[-1] + K - 1))
    y = dom.channels_in(y)
    x = dom.to_network(extend(y, K, pad) if x0 is None else dom.channels_in(x0.clone()))
    gamma = default_gamma_x(sigma, sigma_g) if gamma_x is None else gamma_x
    chunk = 50
    done = 0
    from tqdm.auto import tqdm

    with tqdm(total=n_iter, disable=not progress, desc="MAP x", unit="it") as bar:
        while done < n_iter:
            m = min(chunk, n_iter - done)
            x, _, _ = _gd_steps(denoiser, x, h, y, m, sigma=sigma, sigma_g=sigma_g, gamma_x=gamma, labels=labels,
                                where=f"MAP x iteration {done}", dom=dom)
            done += m
            bar.update(m)
    return dom.channels_out(dom.crop(x))


# ---------------------------------------------------------------------------------------------------------------
# Algorithm 1 (Section 4): alternating minimisation, exact-ish in x, one step in theta, x reset to y every 100 steps
# ---------------------------------------------------------------------------------------------------------------

STEP_CAP = 1.99  # constant kernel steps are clamped to STEP_CAP / L_h: a projected gradient step decreases the
#                  L_h-smooth kernel subproblem only below 2 / L_h


@dataclass(frozen=True)
class Algorithm1Params:
    """Parameters of Algorithm 1, one per field with its meaning in a trailing comment. Complete named sets:
    :data:`PRESETS` (``preset("paper")``, ``preset("authors")``); docs/ALGORITHM1.md gives the source of every
    value. L_h below is the largest eigenvalue of A_x^T A_x on zero-sum kernels (warm-started power iterations)."""

    n_ext: int = 3000  # outer iterations (kernel steps)
    n_in: int = 10  # inner x-steps per kernel step (once the warm-up after a reset is over)
    n_in_first: int | None = None  # inner x-steps right after a reset, falling linearly (floored) to n_in; None: n_in
    n_in_warmup: int = 15  # outer iterations over which the inner steps fall from n_in_first to n_in
    gamma_x: float | None = None  # x step; None: 1 / (1 + sigma^2 / sigma_g^2) for "gradient", 0.05 for DR
    gamma_x_decay: float = 1.0  # gamma_x multiplied by this at every reset (the first included)
    gamma_h: float | None = None  # "constant" schedule; None: 1 / L_h at the first kernel step, per problem
    gamma_h_scale: float = 1.0  # "lipschitz" schedule: the kernel step at n = 0, in units of 1 / L_h(x_n)
    gamma_h_decay: float = 1.0  # "lipschitz" schedule: the step's factor at n = n_ext (gamma_h_decay ** (n / n_ext))
    reset: int = 100  # x restarts from y when n mod reset == 0
    sigma: float = 0.01  # noise std on [0, 1]
    sigma_g: float = 0.001  # grad q(x) ~ (x - D(x, sigma_g)) / sigma_g^2
    pad: str = "replicate"  # x's start: y extended ("replicate", "reflect") or the full-size observation ("observed")
    inner: str = "gradient"  # or "douglas-rachford"
    # Kernel step. "projected": theta <- P(theta - gamma_h grad_h Ly), on the simplex. "chain": the paper's literal
    # theta <- theta - gamma_h J_P(theta)^T grad_h Ly with h = P(theta); J_P vanishes off the support of P(theta)
    # and sums to zero on it, so the threshold never moves and a pixel that left the support never returns.
    kernel_step: str = "projected"  # or "chain"
    # Kernel step size. "constant": gamma_h (None: 1 / L_h at the first kernel step), clamped to STEP_CAP / L_h(x_n)
    # with a warning; "lipschitz": gamma_h_scale / L_h(x_n) * gamma_h_decay ** (n / n_ext); "log-relative" (the
    # authors'): clip(r_n max|h| / max|grad|, 1e-7, gamma_h_max), r_n log-spaced over the run.
    kernel_schedule: str = "lipschitz"  # or "constant", "log-relative"
    rel_step: tuple[float, float] = (1e-2, 1e-7)  # "log-relative": r_0 and r_end of the log-spaced r_n; given: as is
    rel_budget: float | None = None  # "log-relative": r_n scaled to sum to this at any n_ext; None: rel_step as given
    gamma_h_max: float = 1e-3  # "log-relative": largest step
    dr_sigma: float | None = None  # DR denoiser level; None: dr_sigma_scale * gamma_x, or sigma sqrt(gamma_x)
    dr_sigma_scale: float | None = None  # DR: sigma_d = dr_sigma_scale * gamma_x (the authors' 0.03)
    dr_clamp: float = 0.2  # DR: z clipped to [-dr_clamp, 1 + dr_clamp]
    dr_restart: bool = False  # DR: z restarted at x before every kernel step's inner loop (else carried over)
    cg_iter: int = 1000  # DR: at most this many conjugate-gradient iterations per data proximal step
    cg_tol: float = 1e-5  # DR: conjugate gradients stop once the squared residual norm is below this
    precision: str = "fp32"  # the denoiser's evaluations: fp32, tf32, bf16 or fp16 (diractrap.numerics)

    def __post_init__(self):
        choices = {"inner": ("gradient", "douglas-rachford"), "kernel_step": ("chain", "projected"),
                   "kernel_schedule": ("lipschitz", "constant", "log-relative"),
                   "pad": ("replicate", "reflect", "observed")}
        check_precision(self.precision)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        if self.kernel_schedule == "lipschitz" and not 0 < self.gamma_h_scale < 2:
            raise ValueError(f"gamma_h_scale must be in (0, 2): a kernel step of gamma_h_scale / L_h >= 2 / L_h does "
                             f"not decrease the kernel subproblem, got {self.gamma_h_scale}")
        if self.gamma_h is not None and not self.gamma_h >= 0:
            raise ValueError(f"gamma_h must be >= 0 (0 freezes the kernel), got {self.gamma_h}")
        for name in ("gamma_h_decay", "gamma_x_decay"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        check_positive(sigma=self.sigma, sigma_g=self.sigma_g)  # 0 step sizes are allowed: they freeze x or h
        check_nonnegative(gamma_x=self.gamma_x, gamma_h=self.gamma_h, gamma_h_scale=self.gamma_h_scale,
                          dr_clamp=self.dr_clamp, cg_tol=self.cg_tol)
        check_positive(gamma_h_max=self.gamma_h_max, dr_sigma=self.dr_sigma, dr_sigma_scale=self.dr_sigma_scale)
        check_count(0, n_ext=self.n_ext, n_in=self.n_in, n_in_first=self.n_in_first)
        check_count(1, reset=self.reset, n_in_warmup=self.n_in_warmup, cg_iter=self.cg_iter)
        if len(self.rel_step) != 2:
            raise ValueError(f"rel_step must be two numbers (first and last relative step), got {self.rel_step!r}")
        for r in self.rel_step:  # log-spaced: both ends > 0
            check_positive(rel_step=r)
        check_positive(rel_budget=self.rel_budget)
        if self.inner == "douglas-rachford" and self.gamma_x == 0:
            raise ValueError("gamma_x must be > 0 with inner 'douglas-rachford': it is the proximal step (the data "
                             "prox divides by it); 0 freezes x only with inner 'gradient'")

    def inner_steps(self, n: int) -> int:
        """N_in at outer iteration n: constant, or the linear warm-up after each reset (floored, as the authors)."""
        if self.n_in_first is None:
            return self.n_in
        k = n % self.reset
        return max(self.n_in, math.floor(self.n_in_first - k * (self.n_in_first - self.n_in) / self.n_in_warmup))

    def rel_schedule(self) -> np.ndarray:
        """The "log-relative" r_n, n = 0 .. n_ext - 1: log-spaced from rel_step[0] to rel_step[1], then scaled to
        sum to rel_budget when that is set, so that the kernel's step budget does not depend on n_ext."""
        r = np.logspace(math.log10(self.rel_step[0]), math.log10(self.rel_step[1]), max(self.n_ext, 1))
        return r if self.rel_budget is None else r * (self.rel_budget / r.sum())

    def resolved_gamma_x(self, n: int = 0) -> float:
        """gamma_x at outer iteration n (decayed once per reset, the first reset included)."""
        if self.gamma_x is not None:
            g = float(self.gamma_x)
        else:
            g = 0.05 if self.inner == "douglas-rachford" else default_gamma_x(self.sigma, self.sigma_g)
        return g * self.gamma_x_decay ** (n // self.reset + 1) if self.gamma_x_decay != 1 else g

    def resolved_dr_sigma(self, n: int = 0) -> float:
        """The Douglas-Rachford denoiser's noise level at outer iteration n ([0, 1] units)."""
        if self.dr_sigma is not None:
            return float(self.dr_sigma)
        if self.dr_sigma_scale is not None:
            return self.dr_sigma_scale * self.resolved_gamma_x(n)
        return self.sigma * math.sqrt(self.resolved_gamma_x(n))

    def prior_weight(self, n: int = 0) -> float:
        """The weight lambda on q of the x-subproblem 1/2||h*x - y||^2 + lambda q(x) that the inner solver
        minimises: sigma^2 for gradient steps, sigma_d^2 / gamma_x for Douglas-Rachford (its prox step)."""
        if self.inner == "gradient":
            return self.sigma**2
        return self.resolved_dr_sigma(n) ** 2 / self.resolved_gamma_x(n)


# The authors' kernel-step budget: the sum of their relative steps r = logspace(-2, -7, N) over the N = 3000
# iterations of their run (2.610). Their schedule spreads over n_ext, so fewer iterations spent less (0.18 at 200);
# the presets keep the sum instead (docs/ALGORITHM1.md).
AUTHORS_REL_BUDGET = float(np.logspace(-2, -7, 3000).sum())

# Named, complete parameter sets. Every field is given, so nothing is inherited from a config or a default; the
# source of each value (paper, the authors' code, or a guess) is in docs/ALGORITHM1.md.
PRESETS: dict[str, dict] = {
    "paper": dict(  # the paper's Algorithm 1 as written
        n_ext=3000, n_in=10, n_in_first=None, n_in_warmup=15, gamma_x=None, gamma_x_decay=1.0, gamma_h=None,
        gamma_h_scale=1.0, gamma_h_decay=1.0, reset=100, sigma=0.01, sigma_g=0.001, pad="replicate",
        inner="gradient", kernel_step="chain", kernel_schedule="constant", rel_step=(1e-2, 1e-7),
        rel_budget=AUTHORS_REL_BUDGET, gamma_h_max=1e-3, dr_sigma=None, dr_sigma_scale=None, dr_clamp=0.2,
        dr_restart=False, cg_iter=1000, cg_tol=1e-5, precision="fp32",
    ),
    "authors": dict(  # the authors' published optimisation loop (putils/optimization.py), point by point
        n_ext=3000, n_in=10, n_in_first=50, n_in_warmup=15, gamma_x=0.05, gamma_x_decay=0.999, gamma_h=None,
        gamma_h_scale=1.0, gamma_h_decay=1.0, reset=100, sigma=0.01, sigma_g=0.001, pad="observed",
        inner="douglas-rachford", kernel_step="projected", kernel_schedule="log-relative", rel_step=(1e-2, 1e-7),
        rel_budget=AUTHORS_REL_BUDGET, gamma_h_max=1e-3, dr_sigma=None, dr_sigma_scale=0.03, dr_clamp=0.2,
        dr_restart=True, cg_iter=1000, cg_tol=1e-5, precision="fp32",
    ),
}


def preset(name: str, **overrides) -> Algorithm1Params:
    """The named parameter set ``name`` (a key of :data:`PRESETS`) with ``overrides`` (field names of
    :class:`Algorithm1Params`) applied on top. An explicit ``rel_step`` wins over the preset's step budget: it is
    used as given (rel_budget None) unless ``rel_budget`` is given too."""
    if name not in PRESETS:
        raise ValueError(f"unknown Algorithm 1 preset {name!r}; choose one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(Algorithm1Params)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown Algorithm 1 parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    values = {**PRESETS[name], **overrides}
    if "rel_step" in overrides and "rel_budget" not in overrides:
        values["rel_budget"] = None
    if isinstance(values.get("rel_step"), list):
        values["rel_step"] = tuple(values["rel_step"])
    return Algorithm1Params(**values)


@dataclass
class Algorithm1Result:
    """What Algorithm 1 returns. Tensors are on the CPU.

    x (B, C, H, W) and h, theta (B, K, K): the final iterates. ``trajectory``: numpy arrays over the snapshot
    iterations T: ``iteration`` (T,), ``x`` (T, B, C, H, W) float32, ``h`` (T, B, K, K), and per item (T, B):
    ``data`` = 1/2||h*x - y||^2, ``grad_x`` = ||grad_x|| of the x-subproblem at the last inner step, ``grad_theta`` =
    the norm of the kernel direction used (J_P^T grad_h for "chain", grad_h for "projected"), ``gamma_h`` the kernel
    step, ``spread`` = second moment of h (px^2), ``h_max``, and ``q`` / ``total`` when a potential function was
    given. ``history``: per outer iteration n (N_ext, B), recorded before the kernel step: ``grad_x_rel`` =
    ||grad_x|| at the last inner step / ||grad_x|| at the first inner step after the latest reset (how far the
    x-subproblem was solved), ``gamma_h``, ``step_L`` = gamma_h * L_h(x_n) (< 2 for a decreasing step), ``data``,
    ``spread``. ``settings``: the parameters, the resolved step sizes, the log-relative budget spent
    (``rel_budget_used``) and x's ``domain`` (:meth:`diractrap.domain.Domain.record`)."""

    x: Tensor
    h: Tensor
    theta: Tensor
    trajectory: dict[str, np.ndarray]
    settings: dict = field(default_factory=dict)
    history: dict[str, np.ndarray] = field(default_factory=dict)

    def item(self, b: int) -> "Algorithm1Result":
        """Problem b of the batch as a batch of one (per-item settings such as the constant step are sliced)."""
        s = slice(b, b + 1)
        per_item = ("gamma_h_used", "kernel_steps_clamped")
        settings = {k: (v[s] if k in per_item and isinstance(v, list) else v) for k, v in self.settings.items()}
        return Algorithm1Result(
            x=self.x[s], h=self.h[s], theta=self.theta[s],
            trajectory={k: (v if k == "iteration" else v[:, s]) for k, v in self.trajectory.items()},
            settings=settings, history={k: v[:, s] for k, v in self.history.items()})


def initial_kernels(init, kernel_size: int, batch: int, *, dtype=torch.float32, device=None) -> Tensor:
    """(B, K, K) starting kernels: "wide" (1/K^2), "small" (Gaussian of std 1.5), "dirac", or a given (K, K) /
    (B, K, K) tensor (projected onto the simplex)."""
    K = kernel_size
    if isinstance(init, str):
        make = {"wide": wide, "small": small, "dirac": dirac}
        if init not in make:
            raise ValueError(f"init must be 'wide', 'small', 'dirac' or a kernel tensor, got {init!r}")
        h = make[init](K, dtype=dtype, device=device)
    else:
        h = torch.as_tensor(init, dtype=dtype, device=device)
    if h.shape[-2:] != (K, K):
        raise ValueError(f"initial kernel must be {K}x{K}, got {tuple(h.shape)}")
    return project_simplex(h.expand(batch, K, K).clone(), dims=2)


def _snapshot_set(snapshots, n_ext: int) -> set[int]:
    if snapshots is None:
        steps = set()
    elif isinstance(snapshots, int):
        steps = set(range(0, n_ext + 1, snapshots)) if snapshots > 0 else set()
    else:
        steps = {int(s) for s in snapshots if 0 <= int(s) <= n_ext}
    return steps | {0, n_ext}


@torch.no_grad()
def algorithm1(
    denoiser,
    y: Tensor,
    h0,
    *,
    kernel_size: int | None = None,
    params: Algorithm1Params = Algorithm1Params(),
    labels: Tensor | None = None,
    snapshots: int | Sequence[int] | None = None,
    q_fn: Callable[[Tensor], Tensor] | None = None,
    y_full: Tensor | None = None,
    progress: bool = True,
) -> Algorithm1Result:
    """Algorithm 1 on a batch of independent problems (pairs x initialisations).

    Args:
        denoiser: any prior of the project (priors.Denoiser); images are handled in [0, 1].
        y: (B, C, h, w) blurry noisy images in [0, 1] (the valid output: x is (B, C, h + K - 1, w + K - 1)), of any
            size and, for a colour prior, C = 3, 1 (grey: x comes back grey) or 4 (alpha dropped; x has 3).
        h0: theta_0: "wide" (1/K^2), "small" (Gaussian of std 1.5), "dirac" (then ``kernel_size`` gives K), or a
            (K, K) / (B, K, K) kernel (projected onto the simplex).
        kernel_size: K when h0 is a name (paper: 21).
        params: Algorithm1Params, e.g. ``preset("authors")``.
        labels: (B,) class labels for conditional priors, or None.
        snapshots: record the iterates after these outer iterations n (a list), or every n iterations (an int);
            0 (the start) and N_ext are always recorded.
        q_fn: optional x -> q(x) (B,) in nats (e.g. the ODE potential), evaluated at the snapshots on x as the
            prior sees it (extended, in its channels: :mod:`diractrap.domain`).
        y_full: (B, C, H, W) the blurry image at the size of x whose valid centre is y; needed by pad="observed".
        progress: tqdm bar over the outer iterations.

    Every problem of the batch evolves independently (per-item kernels, steps and stopping rules), so a problem
    gives the same result alone or inside a batch. A NaN or infinity raises NonFiniteError naming the iteration
    and the term.
    """
    import warnings

    from tqdm.auto import tqdm

    check_denoiser(denoiser)
    denoiser = at_precision(denoiser, params.precision)
    K_in = kernel_size if isinstance(h0, str) else torch.as_tensor(h0).shape[-1]
    check_deconv_input(denoiser, y, K_in, sigma=params.sigma)
    B = y.shape[0]
    if isinstance(h0, str):
        if kernel_size is None:
            raise ValueError(f"h0={h0!r} needs kernel_size (the paper uses K = 21)")
        theta = initial_kernels(h0, int(kernel_size), B, dtype=y.dtype, device=y.device)
    else:
        h0 = torch.as_tensor(h0)
        theta = initial_kernels(h0, h0.shape[-1], B, dtype=y.dtype, device=y.device)
    K = theta.shape[-1]
    p = params
    check_deconv_memory(denoiser, y, K, 24 + len(_snapshot_set(snapshots, p.n_ext)), f"Algorithm 1 on {B} image(s)")
    dom = x_domain(denoiser, y.shape[1], (y.shape[-2] + K - 1, y.shape[-1] + K - 1))  # x' = x on the prior's domain
    x_reset = dom.to_network(dom.channels_in(start_image(y, K, p.pad, y_full)))
    y = dom.channels_in(y)
    x = x_reset.clone()
    z = x_reset.clone()  # the Douglas-Rachford state
    crop = dom.crop  # what the data term and the kernel see
    lip, v_lip = kernel_lipschitz(crop(x_reset), K, return_vector=True)  # then tracked by 3 power iterations per step
    gamma_h_const = None if p.gamma_h is None else torch.full((B,), float(p.gamma_h), dtype=y.dtype, device=y.device)
    n_clamped = torch.zeros(B, dtype=torch.long)
    rel = p.rel_schedule()  # "log-relative" only
    keep = _snapshot_set(snapshots, p.n_ext)

    names = ("iteration", "x", "h", "data", "grad_x", "grad_theta", "gamma_h", "spread", "h_max")
    traj: dict[str, list] = {k: [] for k in names}
    if q_fn is not None:
        traj["q"], traj["total"] = [], []
    hist: dict[str, list] = {k: [] for k in ("grad_x_rel", "gamma_h", "step_L", "data", "spread")}

    def record(n, x, theta, gx, gt, gh):
        h = project_simplex(theta, dims=2)
        traj["iteration"].append(n)
        traj["x"].append(dom.channels_out(crop(x)).float().cpu().numpy())
        traj["h"].append(h.float().cpu().numpy())
        d = data_term(crop(x), h, y)
        traj["data"].append(d.cpu().numpy())
        traj["grad_x"].append(gx.cpu().numpy())
        traj["grad_theta"].append(gt.cpu().numpy())
        traj["gamma_h"].append(gh.double().cpu().numpy())
        traj["spread"].append(second_moment(h.double()).cpu().numpy())
        traj["h_max"].append(h.flatten(1).amax(1).double().cpu().numpy())
        if q_fn is not None:
            q = torch.as_tensor(q_fn(x), dtype=torch.float64).cpu()
            traj["q"].append(q.numpy())
            traj["total"].append((d.cpu() + p.sigma**2 * q).numpy())

    def norms(t):
        return t.double().flatten(1).norm(dim=1).cpu()

    nan = torch.full((B,), float("nan"), dtype=torch.float64)
    if 0 in keep:
        record(0, x, theta, nan, nan, nan)
    g_ref = nan
    for n in tqdm(range(p.n_ext), disable=not progress, desc="Algorithm 1", unit="it"):
        h = project_simplex(theta, dims=2)
        reset = n % p.reset == 0
        if reset:
            x, z = x_reset.clone(), x_reset.clone()
        gamma_x = p.resolved_gamma_x(n)
        where = f"outer iteration n = {n}"
        if p.inner == "gradient":
            x, g_first, g_last = _gd_steps(denoiser, x, h, y, p.inner_steps(n), sigma=p.sigma, sigma_g=p.sigma_g,
                                           gamma_x=gamma_x, labels=labels, where=where, dom=dom)
        else:
            if p.dr_restart:
                z = x
            x, z, g_first, g_last = _dr_steps(denoiser, z, h, y, p.inner_steps(n), gamma=gamma_x,
                                              sigma_d=p.resolved_dr_sigma(n), clamp=p.dr_clamp, cg_iter=p.cg_iter,
                                              cg_tol=p.cg_tol, labels=labels, where=where, dom=dom)
        _check_finite(x, "the image x", where)
        if reset:
            g_ref = norms(g_first)
        gxn = norms(g_last)
        gh_h = grad_h(crop(x), h, y)
        _check_finite(gh_h, "the kernel gradient A_x^T(h*x - y)", where)
        g = _chain_simplex(theta, gh_h) if p.kernel_step == "chain" else gh_h
        lip, v_lip = kernel_lipschitz(crop(x), K, n_iter=3, v0=v_lip, return_vector=True)
        if p.kernel_schedule == "constant":
            if gamma_h_const is None:
                gamma_h_const = 1.0 / lip  # per problem, fixed from the first kernel step on
            cap = STEP_CAP / lip
            n_clamped += (gamma_h_const > cap).cpu().long()
            step = torch.minimum(gamma_h_const, cap)
        elif p.kernel_schedule == "lipschitz":
            step = p.gamma_h_scale * p.gamma_h_decay ** (n / max(p.n_ext, 1)) / lip
        else:
            ratio = h.flatten(1).abs().amax(1) / g.flatten(1).abs().amax(1).clamp_min(1e-30)
            step = (rel[n] * ratio).clamp(1e-7, p.gamma_h_max)
        hist["grad_x_rel"].append((gxn / g_ref).numpy())
        hist["gamma_h"].append(step.double().cpu().numpy())
        hist["step_L"].append((step * lip).double().cpu().numpy())
        hist["data"].append(data_term(crop(x), h, y).cpu().numpy())
        hist["spread"].append(second_moment(h.double()).cpu().numpy())
        theta = theta - step.view(-1, 1, 1) * g
        if p.kernel_step == "projected":
            theta = project_simplex(theta, dims=2)
        _check_finite(theta, "the kernel parameter theta", where)
        if (n + 1) in keep:
            record(n + 1, x, theta, gxn, norms(g), step.cpu())
    if n_clamped.any():
        warnings.warn(f"the constant kernel step exceeded {STEP_CAP} / L_h and was clamped on "
                      f"{n_clamped.tolist()} of {p.n_ext} iterations (per problem)", stacklevel=2)

    settings = {
        **dataclasses.asdict(p),
        "gamma_x_used": p.resolved_gamma_x(0),
        "gamma_h_used": (gamma_h_const.tolist() if p.kernel_schedule == "constant" and gamma_h_const is not None
                         else "per iteration (history gamma_h)"),
        "dr_sigma_used": p.resolved_dr_sigma(0) if p.inner == "douglas-rachford" else None,
        "prior_weight": p.prior_weight(0),
        "kernel_steps_clamped": n_clamped.tolist(),
        "rel_budget_used": float(rel.sum()) if p.kernel_schedule == "log-relative" else None,  # sum of r_n
        "rel_step_used": [float(rel[0]), float(rel[-1])] if p.kernel_schedule == "log-relative" else None,
        "domain": dom.record(),
        "kernel_size": K,
        "diractrap_version": __version__,
        "denoiser": getattr(denoiser, "info", {"class": type(denoiser).__name__}),
    }
    trajectory = {k: np.stack(v) if k != "iteration" else np.asarray(v, dtype=np.int64) for k, v in traj.items()}
    history = {k: np.stack(v) if v else np.zeros((0, B)) for k, v in hist.items()}
    h = project_simplex(theta, dims=2)
    return Algorithm1Result(x=dom.channels_out(crop(x)).cpu(), h=h.cpu(), theta=theta.cpu(), trajectory=trajectory,
                            settings=settings, history=history)

# The rest of the deconvolution API, in modules that import this one: reachable from here, resolved on first use
_ELSEWHERE = {  # (PEP 562), so that importing either module first works
    **dict.fromkeys(("metrics", "psnr", "ssim"), "metrics"),
    **dict.fromkeys(("PairsRun", "make_problem", "run_pairs", "save_result", "load_result", "summary", "table_rows"),
                    "problems"),
    **dict.fromkeys(("Statement1Result", "semigroup_path", "statement1"), "statement1"),
}


def __getattr__(name: str):
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_ELSEWHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
