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

x is started from y extended to the size of x: y padded by the kernel's reach (K - 1 - K // 2 pixels on the top
and left, K // 2 on the bottom and right, the valid model's geometry) with replicate padding by default
(``pad="reflect"`` also). The same extension starts every reset of Algorithm 1.

The authors' code (github.com/mh-nguyen712/blind_deblur_diffusion, ``putils/optimization.py``, function
``optimization_loop``; read, not copied) differs from the paper's Algorithm 1, and ``Algorithm1Params`` offers its
choices as options: Douglas-Rachford inner iterations with the denoiser D(z, 0.03 lr_x), lr_x = 0.05, as the
prior's proximal step and the data prox solved by conjugate gradients (1000 iterations, tolerance 1e-5,
``putils/linalg.py``), z clipped to [-0.2, 1.2]; a projected kernel step h <- P(h - lr grad_h) with
lr = clip(r_n max|h| / max|grad_h|, 1e-7, 1e-3), r_n log-spaced from 1e-2 to 1e-7 over the run; inner steps
decreasing from 50 to 10 over the first 15 kernel steps after each reset of x to y. Their x-gradient applies the
prior to the centre (H - K + 1) x (W - K + 1) crop of x only; here q acts on the whole x, as the paper writes Ly.

Sections: the objective and its gradients; x-minimisation (gradient descent and the authors' Douglas-Rachford);
Algorithm 1; synthetic problems; metrics (PSNR, SSIM, kernel error after the best shift, Levin et al.'s protocol);
Statement 1 (the semigroup path from the true pair to the trivial one, and the table); saving results.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import __version__
from .blur import blur_same, conv, conv_adjoint, conv_adjoint_kernel
from .data import atomic_path
from .kernels import dirac, kernel, project_simplex, second_moment, small, wide
from .priors import check_denoiser, denoise_unit, score_unit

__all__ = [
    "Algorithm1Params",
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
    "make_problem",
    "run_pairs",
    "PairsRun",
    "psnr",
    "ssim",
    "metrics",
    "semigroup_path",
    "statement1",
    "Statement1Result",
    "save_result",
    "table_rows",
    "summary",
]


class NonFiniteError(RuntimeError):
    """A NaN or an infinity appeared in Algorithm 1; the message names the iteration and the term."""


def _check_finite(t: Tensor, what: str, where: str) -> None:
    if not torch.isfinite(t).all():
        raise NonFiniteError(
            f"{what} is not finite at {where}: lower the step sizes (gamma_x, gamma_h) or raise sigma_g"
        )


# ---------------------------------------------------------------------------------------------------------------
# The objective Ly(x, h) = 1/2 ||h * x - y||^2 + sigma^2 q(x) and its gradients (paper Eq. (3))
# ---------------------------------------------------------------------------------------------------------------


def extend(y: Tensor, kernel_size: int, mode: str = "replicate") -> Tensor:
    """Extend y (B, C, h, w) to the size of x, (h + K - 1, w + K - 1), by padding the kernel's reach.

    ``mode``: "replicate" (repeat the edge pixels) or "reflect" (mirror without repeating the edge). The padding is
    K - 1 - K // 2 on the top/left and K // 2 on the bottom/right, so that extend(y) seen through the Dirac kernel
    (the valid centre crop) gives back y.
    """
    if mode not in ("replicate", "reflect"):
        raise ValueError(f"pad mode must be 'replicate' or 'reflect', got {mode!r}")
    K = kernel_size
    top, bottom = K - 1 - K // 2, K // 2
    if mode == "reflect" and max(top, bottom) >= min(y.shape[-2:]):
        raise ValueError(f"reflect padding by {max(top, bottom)} needs y larger than that, got {tuple(y.shape[-2:])}")
    return F.pad(y, (top, bottom, top, bottom), mode=mode)


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


def _gd_steps(denoiser, x, h, y, n, *, sigma, sigma_g, gamma_x, labels, where):
    """n gradient steps x <- x - gamma_x grad_x Ly(x, h). Returns x and the last gradient."""
    g = torch.zeros_like(x)
    for i in range(n):
        gd = conv_adjoint(conv(x, h, "valid") - y, h, "valid")
        gp = prior_grad(denoiser, x, sigma_g, labels)
        _check_finite(gd, "the data gradient A_h^T(h*x - y)", f"{where}, inner step {i}")
        _check_finite(gp, "the prior gradient (x - D(x, sigma_g))/sigma_g^2", f"{where}, inner step {i}")
        g = gd + sigma**2 * gp
        x = x - gamma_x * g
    return x, g


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


def _dr_steps(denoiser, z, h, y, n, *, gamma, sigma_d, clamp, cg_iter, cg_tol, labels, where):
    """Douglas-Rachford on 1/2||h*x - y||^2 + sigma^2 q(x) with the denoiser as the prior's proximal step.

    From the state z, each step: x = D(z, sigma_d) (prox of gamma sigma^2 q when sigma_d^2 = gamma sigma^2),
    z <- z + prox_{gamma f}(2x - z) - x with prox_{gamma f}(v) = (A^T A + I/gamma)^{-1} (A^T y + v/gamma) by CG,
    z clipped to [-clamp, 1 + clamp] as the authors do. Returns (D(z, sigma_d), z).
    """
    Aty = conv_adjoint(y, h, "valid")

    def normal(u):
        return conv_adjoint(conv(u, h, "valid"), h, "valid") + u / gamma

    u = z
    for i in range(n):
        x = denoise_unit(denoiser, z, sigma_d, labels)
        _check_finite(x, "the denoiser output D(z, sigma_d)", f"{where}, Douglas-Rachford step {i}")
        v = 2 * x - z
        u = _cg(normal, Aty + v / gamma, u, cg_iter, cg_tol)
        _check_finite(u, "the data proximal step (conjugate gradients)", f"{where}, Douglas-Rachford step {i}")
        z = (z + u - x).clamp(-clamp, 1 + clamp)
    return denoise_unit(denoiser, z, sigma_d, labels), z


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

    With h = kernels.dirac(K) this is x_delta, the MAP-denoised image of Statement 1.
    """
    check_denoiser(denoiser)
    K = h.shape[-1]
    x = extend(y, K, pad) if x0 is None else x0.clone()
    gamma = default_gamma_x(sigma, sigma_g) if gamma_x is None else gamma_x
    chunk = 50
    done = 0
    from tqdm.auto import tqdm

    with tqdm(total=n_iter, disable=not progress, desc="MAP x", unit="it") as bar:
        while done < n_iter:
            m = min(chunk, n_iter - done)
            x, _ = _gd_steps(denoiser, x, h, y, m, sigma=sigma, sigma_g=sigma_g, gamma_x=gamma, labels=labels,
                             where=f"MAP x iteration {done}")
            done += m
            bar.update(m)
    return x


# ---------------------------------------------------------------------------------------------------------------
# Algorithm 1 (Section 4): alternating minimisation, exact-ish in x, one step in theta, x reset to y every 100 steps
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Algorithm1Params:
    """Parameters of Algorithm 1. Paper values where the paper gives them; the rest say where they come from.

    inner: "gradient" (the paper: N_in steps x <- x - gamma_x grad_x Ly) or "douglas-rachford" (the authors' code:
        N_in Douglas-Rachford steps with the denoiser D(., dr_sigma) as the proximal step of the prior; the DR
        state z is carried over between outer iterations and reset with x, where the authors restart it at x).
    kernel_step: "chain" (the paper: theta <- theta - gamma_h J_P(theta)^T grad_h Ly, h = P(theta)) or "projected"
        (the authors' code: theta <- P(theta - gamma_h grad_h Ly), so theta stays on the simplex and h = theta).
    n_in_first, n_in_warmup: the authors' inner-step schedule: after each reset, the first outer iteration runs
        n_in_first inner steps, decreasing linearly to n_in over n_in_warmup iterations, so that x is close to
        argmin_x Ly(x, h) before the kernel starts to move (the paper's "exact minimisation in x").
    kernel_schedule: "lipschitz" (gamma_h,n = gamma_h_scale / L_h(x_{n+1}), L_h the largest eigenvalue of A_x^T A_x
        on zero-sum kernels, tracked by 3 warm-started power iterations per outer iteration: the step follows x
        as it sharpens, where a step fixed from the blurry start overshoots; with gamma_h_decay < 1 the step is
        further multiplied by gamma_h_decay ** (n / N_ext), a log-linear decay as in the authors' code, so that
        the kernel moves fast at first and settles), "constant" (the paper's form, a
        fixed gamma_h) or "log-relative" (the authors' code: gamma_h,n = clip(r_n max|h| /
        max|grad_h|, 1e-7, gamma_h_max), r_n log-spaced from rel_step[0] to rel_step[1] over the N_ext steps, so
        that the largest kernel change is the fraction r_n of the largest kernel value).
    """

    n_ext: int = 3000  # paper Fig. 4 shows iterations up to 2900-4300 (N_ext not stated)
    n_in: int = 10  # not stated in the paper
    n_in_first: int | None = None  # None: N_in always (paper); else N_in right after a reset, decreasing linearly
    n_in_warmup: int = 15  # ... to N_in over this many outer iterations (authors' code: 50 -> 10 over 15)
    gamma_x: float | None = None  # not stated; None: 1 / (1 + sigma^2 / sigma_g^2), the inverse Lipschitz bound
    gamma_h: float | None = None  # not stated; used by kernel_schedule "constant"
    gamma_h_scale: float = 1.0  # kernel_schedule "lipschitz": gamma_h,n = gamma_h_scale / L_h(x_n) ...
    gamma_h_decay: float = 1.0  # ... times gamma_h_decay ** (n / N_ext): 1 = no decay (paper); < 1 a log decay
    reset: int = 100  # paper: x restarts from y when n mod 100 == 0
    sigma: float = 0.01  # paper: noise std on [0, 1]
    sigma_g: float = 0.001  # authors' notebooks: grad q(x) ~ (x - D(x, sigma_g)) / sigma_g^2
    pad: str = "replicate"  # how y is extended to the size of x
    inner: str = "gradient"  # paper; "douglas-rachford": the authors' code
    kernel_step: str = "chain"  # paper; "projected": the authors' code
    kernel_schedule: str = "lipschitz"  # or "constant" (the paper's fixed gamma_h) or "log-relative" (authors)
    rel_step: tuple[float, float] = (1e-2, 1e-7)  # authors' code: np.logspace(-2, -7, ...)
    gamma_h_max: float = 1e-3  # authors' code: lr_kernel
    dr_sigma: float | None = None  # None: sigma * sqrt(gamma_x), the prox of gamma_x sigma^2 q (authors: 0.03 gamma_x)
    dr_clamp: float = 0.2  # authors' code: z clipped to [-0.2, 1.2]
    cg_iter: int = 1000  # authors' code
    cg_tol: float = 1e-5  # authors' code: squared residual norm

    def __post_init__(self):
        if self.inner not in ("gradient", "douglas-rachford"):
            raise ValueError(f"inner must be 'gradient' or 'douglas-rachford', got {self.inner!r}")
        if self.kernel_step not in ("chain", "projected"):
            raise ValueError(f"kernel_step must be 'chain' or 'projected', got {self.kernel_step!r}")
        if self.kernel_schedule not in ("lipschitz", "constant", "log-relative"):
            raise ValueError(
                f"kernel_schedule must be 'lipschitz', 'constant' or 'log-relative', got {self.kernel_schedule!r}"
            )
        if self.kernel_schedule == "constant" and self.gamma_h is None:
            raise ValueError("kernel_schedule 'constant' needs gamma_h")
        if not 0 < self.gamma_h_decay <= 1:
            raise ValueError(f"gamma_h_decay must be in (0, 1], got {self.gamma_h_decay}")
        if self.n_ext < 0 or self.n_in < 0 or self.reset < 1 or self.n_in_warmup < 1:
            raise ValueError("need n_ext >= 0, n_in >= 0, reset >= 1 and n_in_warmup >= 1")

    def inner_steps(self, n: int) -> int:
        """N_in at outer iteration n: constant, or the authors' linear warm-up after each reset."""
        if self.n_in_first is None:
            return self.n_in
        k = n % self.reset
        return max(self.n_in, round(self.n_in_first - k * (self.n_in_first - self.n_in) / self.n_in_warmup))

    def resolved_gamma_x(self) -> float:
        if self.gamma_x is not None:
            return float(self.gamma_x)
        if self.inner == "douglas-rachford":
            return 0.05  # authors' code: lr_x = 5e-2
        return default_gamma_x(self.sigma, self.sigma_g)

    def resolved_dr_sigma(self) -> float:
        return self.sigma * math.sqrt(self.resolved_gamma_x()) if self.dr_sigma is None else float(self.dr_sigma)


@dataclass
class Algorithm1Result:
    """What Algorithm 1 returns. Tensors are on the CPU.

    x (B, C, H, W) and h, theta (B, K, K): the final iterates. ``trajectory``: numpy arrays over the snapshot
    iterations T: ``iteration`` (T,), ``x`` (T, B, C, H, W) float32, ``h`` (T, B, K, K), and per item (T, B):
    ``data`` = 1/2||h*x - y||^2, ``grad_x`` = ||grad_x Ly|| at the last inner step, ``grad_theta`` = the norm of
    the kernel direction used (J_P^T grad_h for "chain", grad_h for "projected"), ``gamma_h`` the kernel step
    used, ``spread`` = second moment of h (px^2), ``h_max``, and ``q`` / ``total`` when a potential function was
    given. ``settings``: the parameters and the resolved step sizes.
    """

    x: Tensor
    h: Tensor
    theta: Tensor
    trajectory: dict[str, np.ndarray]
    settings: dict = field(default_factory=dict)


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
    progress: bool = True,
) -> Algorithm1Result:
    """Algorithm 1 on a batch of independent problems (pairs x initialisations).

    Args:
        denoiser: any prior of the project (priors.Denoiser); images are handled in [0, 1].
        y: (B, C, h, w) blurry noisy images in [0, 1] (the valid output: x is (B, C, h + K - 1, w + K - 1)).
        h0: theta_0: "wide" (1/K^2), "small" (Gaussian of std 1.5), "dirac" (then ``kernel_size`` gives K), or a
            (K, K) / (B, K, K) kernel (projected onto the simplex).
        kernel_size: K when h0 is a name (paper: 21).
        params: Algorithm1Params (paper defaults).
        labels: (B,) class labels for conditional priors, or None.
        snapshots: record the iterates after these outer iterations n (a list), or every n iterations (an int);
            0 (the start) and N_ext are always recorded.
        q_fn: optional x -> q(x) (B,) in nats (e.g. the ODE potential), evaluated at the snapshots.
        progress: tqdm bar over the outer iterations.

    Every problem of the batch evolves independently (per-item kernels, steps and stopping rules), so a problem
    gives the same result alone or inside a batch. A NaN or infinity raises NonFiniteError naming the iteration
    and the term.
    """
    from tqdm.auto import tqdm

    check_denoiser(denoiser)
    if y.ndim != 4:
        raise ValueError(f"y must be (B, C, h, w), got {tuple(y.shape)}")
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
    gamma_x = p.resolved_gamma_x()
    x_reset = extend(y, K, p.pad)
    x = x_reset.clone()
    z = x_reset.clone()  # the Douglas-Rachford state, carried from one outer iteration to the next
    lip, v_lip = kernel_lipschitz(x_reset, K, return_vector=True)  # tracked below for the "lipschitz" schedule
    if p.kernel_schedule == "constant":
        gamma_h_const = torch.full((B,), float(p.gamma_h), dtype=y.dtype, device=y.device)
    rel = np.logspace(math.log10(p.rel_step[0]), math.log10(p.rel_step[1]), max(p.n_ext, 1))
    keep = _snapshot_set(snapshots, p.n_ext)

    names = ("iteration", "x", "h", "data", "grad_x", "grad_theta", "gamma_h", "spread", "h_max")
    traj: dict[str, list] = {k: [] for k in names}
    if q_fn is not None:
        traj["q"], traj["total"] = [], []

    def record(n, x, theta, gx, gt, gh):
        h = project_simplex(theta, dims=2)
        traj["iteration"].append(n)
        traj["x"].append(x.float().cpu().numpy())
        traj["h"].append(h.float().cpu().numpy())
        d = data_term(x, h, y)
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

    nan = torch.full((B,), float("nan"), dtype=torch.float64)
    if 0 in keep:
        record(0, x, theta, nan, nan, nan)
    for n in tqdm(range(p.n_ext), disable=not progress, desc="Algorithm 1", unit="it"):
        h = project_simplex(theta, dims=2)
        if n % p.reset == 0:
            x, z = x_reset.clone(), x_reset.clone()
        where = f"outer iteration n = {n}"
        if p.inner == "gradient":
            x, gx = _gd_steps(denoiser, x, h, y, p.inner_steps(n), sigma=p.sigma, sigma_g=p.sigma_g, gamma_x=gamma_x,
                              labels=labels, where=where)
        else:
            x, z = _dr_steps(denoiser, z, h, y, p.inner_steps(n), gamma=gamma_x, sigma_d=p.resolved_dr_sigma(),
                             clamp=p.dr_clamp, cg_iter=p.cg_iter, cg_tol=p.cg_tol, labels=labels, where=where)
            gx = grad_x(denoiser, x, h, y, sigma=p.sigma, sigma_g=p.sigma_g, labels=labels) if (n + 1) in keep else None
        _check_finite(x, "the image x", where)
        gh_h = grad_h(x, h, y)
        _check_finite(gh_h, "the kernel gradient A_x^T(h*x - y)", where)
        g = _chain_simplex(theta, gh_h) if p.kernel_step == "chain" else gh_h
        if p.kernel_schedule == "constant":
            step = gamma_h_const
        elif p.kernel_schedule == "lipschitz":
            lip, v_lip = kernel_lipschitz(x, K, n_iter=3, v0=v_lip, return_vector=True)
            step = p.gamma_h_scale * p.gamma_h_decay ** (n / max(p.n_ext, 1)) / lip
        else:
            ratio = h.flatten(1).abs().amax(1) / g.flatten(1).abs().amax(1).clamp_min(1e-30)
            step = (rel[n] * ratio).clamp(1e-7, p.gamma_h_max)
        theta = theta - step.view(-1, 1, 1) * g
        if p.kernel_step == "projected":
            theta = project_simplex(theta, dims=2)
        _check_finite(theta, "the kernel parameter theta", where)
        if (n + 1) in keep:
            gxn = gx.double().flatten(1).norm(dim=1).cpu() if gx is not None else nan
            record(n + 1, x, theta, gxn, g.double().flatten(1).norm(dim=1).cpu(), step.cpu())

    settings = {
        **dataclasses.asdict(p),
        "gamma_x_used": gamma_x,
        "gamma_h_used": p.gamma_h if p.kernel_schedule == "constant" else "per iteration (trajectory gamma_h)",
        "dr_sigma_used": p.resolved_dr_sigma() if p.inner == "douglas-rachford" else None,
        "kernel_size": K,
        "diractrap_version": __version__,
        "denoiser": getattr(denoiser, "info", {"class": type(denoiser).__name__}),
    }
    trajectory = {k: np.stack(v) if k != "iteration" else np.asarray(v, dtype=np.int64) for k, v in traj.items()}
    h = project_simplex(theta, dims=2)
    return Algorithm1Result(x=x.cpu(), h=h.cpu(), theta=theta.cpu(), trajectory=trajectory, settings=settings)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic problems: y = valid(h * x) + sigma n, with one noise generator per item
# ---------------------------------------------------------------------------------------------------------------


def item_generator(seed: int, item_id: int) -> torch.Generator:
    """A CPU generator for one item, seeded from (seed, item id), so results do not depend on batching."""
    return torch.Generator(device="cpu").manual_seed((int(seed) * 1_000_003 + int(item_id)) % (2**63 - 1))


def make_problem(
    x: Tensor, h: Tensor, *, sigma: float = 0.01, seed: int = 0, item_ids: Sequence[int] | None = None
) -> Tensor:  # paper: sigma 0.01
    """y = valid(h * x) + sigma n for x (B, C, H, W) in [0, 1], h (K, K) or (B, K, K); n ~ N(0, I) per item."""
    clean = conv(x, h, "valid")
    ids = range(x.shape[0]) if item_ids is None else item_ids
    shape = clean.shape[1:]
    noise = torch.stack([torch.randn(shape, generator=item_generator(seed, i), dtype=torch.float64) for i in ids])
    return clean + sigma * noise.to(clean)


@dataclass
class PairsRun:
    """Algorithm 1 on pairs x initialisations: the batched result (item b = init b // P, pair b % P), the
    blurry images y (P, C, h, w), the metrics and one tidy row per run."""

    result: Algorithm1Result
    y: Tensor
    scores: dict[str, Tensor]
    rows: list[dict]


def run_pairs(
    denoiser,
    x_true: Tensor,
    h_true: Tensor,
    *,
    inits: Sequence[str] = ("wide", "small"),  # paper: the wide start recovers the kernel, the small one falls to delta
    params: Algorithm1Params = Algorithm1Params(),
    seed: int = 0,
    pair_ids: Sequence[int] | None = None,
    labels: Tensor | None = None,
    snapshots: int | Sequence[int] | None = None,
    progress: bool = True,
    **columns,
) -> PairsRun:
    """Blur P sharp images x_true (P, C, H, W) with their kernels h_true (P, K, K), add noise of std params.sigma
    (one generator per pair id), and run Algorithm 1 from every initialisation on all pairs in one batch.

    Rows carry ``pair`` (the pair id), ``init``, the settings, the final objective terms, the metrics
    (:func:`metrics`) and ``columns`` (per pair: sequences of length P, or scalars).
    """
    P, K = x_true.shape[0], h_true.shape[-1]
    ids = list(range(P)) if pair_ids is None else [int(i) for i in pair_ids]
    y = make_problem(x_true, h_true, sigma=params.sigma, seed=seed, item_ids=ids)
    n = len(inits)
    h0 = torch.cat([initial_kernels(i, K, P, dtype=y.dtype, device=y.device) for i in inits])
    lab = None if labels is None else labels.repeat(n)
    res = algorithm1(denoiser, y.repeat(n, 1, 1, 1), h0, params=params, labels=lab, snapshots=snapshots,
                     progress=progress)
    scores = metrics(res.x, res.h, x_true.cpu().repeat(n, 1, 1, 1), h_true.cpu().repeat(n, 1, 1))
    per_pair = {k: list(v) * n if isinstance(v, (list, tuple, np.ndarray, Tensor)) else v for k, v in columns.items()}
    rows = table_rows(res, scores, pair=ids * n, init=[i for i in inits for _ in range(P)], seed=seed, **per_pair)
    return PairsRun(result=res, y=y.cpu(), scores=scores, rows=rows)


# ---------------------------------------------------------------------------------------------------------------
# Metrics: PSNR, SSIM (Wang et al. 2004), kernel error, after the best integer shift (Levin et al. 2009)
# ---------------------------------------------------------------------------------------------------------------


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """10 log10(R^2 / MSE) per item (B,)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gauss_window(sigma: float, truncate: float, dtype, device) -> Tensor:
    r = int(truncate * sigma + 0.5)  # scipy.ndimage.gaussian_filter's radius, as skimage uses it
    u = torch.arange(-r, r + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (u / sigma) ** 2)
    return w / w.sum()


def ssim(
    a: Tensor, b: Tensor, data_range: float = 1.0, *, sigma: float = 1.5, K1: float = 0.01, K2: float = 0.03
) -> Tensor:  # Wang et al. 2004: window std 1.5, K1 = 0.01, K2 = 0.03
    """Mean SSIM per item (B,) of (B, C, H, W) images (Wang et al. 2004: Gaussian window of std 1.5 truncated at
    3.5 std, i.e. 11 x 11, K1 = 0.01, K2 = 0.03, population covariances), averaged over the positions where the
    window fits and over the channels: skimage's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=R) per channel, then the mean."""
    a, b = a.double(), b.double()
    w = _gauss_window(sigma, 3.5, a.dtype, a.device)
    B, C, H, W = a.shape
    n = w.numel()
    if min(H, W) < n:
        raise ValueError(f"SSIM needs images of at least {n}x{n}, got {H}x{W}")

    def filt(t):
        t = t.reshape(B * C, 1, H, W)
        t = F.conv2d(t, w.view(1, 1, -1, 1))
        return F.conv2d(t, w.view(1, 1, 1, -1)).reshape(B, C, H - n + 1, W - n + 1)

    ma, mb = filt(a), filt(b)
    va, vb, cab = filt(a * a) - ma**2, filt(b * b) - mb**2, filt(a * b) - ma * mb
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    return s.mean((-2, -1)).mean(1)


def _shift_kernel(h: Tensor, dr: int, dc: int) -> Tensor:
    """h'[u] = h[u - (dr, dc)], zero-filled: (K, K) -> (K, K)."""
    K = h.shape[-1]
    out = torch.zeros_like(h)
    r0, r1 = max(0, dr), min(K, K + dr)
    c0, c1 = max(0, dc), min(K, K + dc)
    out[r0:r1, c0:c1] = h[r0 - dr : r1 - dr, c0 - dc : c1 - dc]
    return out


def metrics(
    x_hat: Tensor,
    h_hat: Tensor,
    x_true: Tensor,
    h_true: Tensor,
    *,
    crop: int | None = None,
    max_shift: int | None = None,
    data_range: float = 1.0,
) -> dict[str, Tensor]:
    """Quality of (x_hat, h_hat) against (x_true, h_true), up to the translation ambiguity of blind deblurring.

    Levin et al.'s protocol with integer shifts: for every shift s with |s_r|, |s_c| <= max_shift, compare
    x_hat[i + s] with x_true[i] on the image cropped by ``crop`` pixels on each side; keep the s of least MSE.
    x_hat is clipped to [0, 1] first. The kernel is compared after the same translation: if x_hat[i + s] = x[i]
    then h_hat[u - s] = h[u] gives the same blurry image, so ``kernel_error`` = ||h_hat[. - s] - h_true||_2.
    Defaults: crop = K // 2 (the border of x that y only sees partially), max_shift = K // 4 (at most crop).

    Returns (B,) tensors: psnr, ssim (on the same shifted crop; NaN when it is under 11 x 11), mse, kernel_error,
    kernel_error_rel
    (/ ||h_true||), dirac_distance = min_s ||h_hat - delta_s|| (small when h_hat is near a Dirac), spread
    (second moment of h_hat, px^2), shift_row, shift_col.
    """
    K = h_hat.shape[-1]
    crop = K // 2 if crop is None else int(crop)
    max_shift = min(K // 4, crop) if max_shift is None else int(max_shift)
    if max_shift > crop:
        raise ValueError(f"max_shift ({max_shift}) must not exceed crop ({crop})")
    B, C, H, W = x_true.shape
    xh = x_hat.double().clamp(0, 1)
    xt = x_true.double()
    ref = xt[..., crop : H - crop, crop : W - crop]
    best = torch.full((B,), float("inf"), dtype=torch.float64, device=xt.device)
    shifts = torch.zeros(B, 2, dtype=torch.long)
    for dr in range(-max_shift, max_shift + 1):
        for dc in range(-max_shift, max_shift + 1):
            cand = xh[..., crop + dr : H - crop + dr, crop + dc : W - crop + dc]
            mse = (cand - ref).pow(2).flatten(1).mean(1)
            better = mse < best
            best = torch.where(better, mse, best)
            shifts[better.cpu()] = torch.tensor([dr, dc])
    sh = shifts.tolist()
    aligned = torch.stack([xh[i, :, crop + r : H - crop + r, crop + c : W - crop + c] for i, (r, c) in enumerate(sh)])
    hh = h_hat.double().expand(B, K, K)
    ht = h_true.double().expand(B, K, K)
    hs = torch.stack([_shift_kernel(hh[i], r, c) for i, (r, c) in enumerate(sh)])
    kerr = (hs - ht).flatten(1).norm(dim=1)
    sq = hh.flatten(1).pow(2).sum(1)
    return {
        "psnr": 10 * torch.log10(data_range**2 / best),
        "ssim": ssim(aligned, ref, data_range) if min(ref.shape[-2:]) >= 11 else torch.full_like(best, float("nan")),
        "mse": best,
        "kernel_error": kerr,
        "kernel_error_rel": kerr / ht.flatten(1).norm(dim=1),
        "dirac_distance": torch.sqrt((sq - 2 * hh.flatten(1).amax(1) + 1).clamp_min(0)),
        "spread": second_moment(hh),
        "shift_row": shifts[:, 0],
        "shift_col": shifts[:, 1],
    }


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
    potential_options=None,
    x_delta: Tensor | None = None,
    progress: bool = False,
) -> Statement1Result:
    """Ly at (x_true, h_true), at (x_delta, delta) and at (x_hat, h_hat), with q from the ODE potential.

    x_delta = map_x(denoiser, y, delta) is the non-blind MAP with the Dirac kernel (``n_iter_delta`` gradient
    steps from y extended), unless given. q comes from ``q_fn(x) -> (B,)`` if given, else from
    ``potential.potential(denoiser, x, labels=labels, options=potential_options)`` (a ``PotentialOptions``, a dict of
    its fields or None: the defaults; nats, [0, 1] images); the calls share their probes item by item (less noise).

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
            res = potential(denoiser, x, labels=labels, options=potential_options)
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


# ---------------------------------------------------------------------------------------------------------------
# Saving: compressed snapshots (npz) and a JSON summary, written atomically
# ---------------------------------------------------------------------------------------------------------------


def save_result(path, result: Algorithm1Result, **extra: np.ndarray) -> None:
    """Write the final iterates and the trajectory to one compressed .npz (keys: x, h, theta, traj_<name>, and
    any extra arrays such as the true image and kernel); the settings go in as a JSON string under 'settings'."""
    arrays = {"x": result.x.float().numpy(), "h": result.h.float().numpy(), "theta": result.theta.float().numpy()}
    arrays.update({f"traj_{k}": v for k, v in result.trajectory.items()})
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    arrays["settings"] = np.asarray(json.dumps(result.settings, default=str))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


_FINAL = ("data", "grad_x", "grad_theta", "spread", "h_max", "q", "total")  # trajectory columns reported at the end


def table_rows(result: Algorithm1Result, scores: dict[str, Tensor] | None = None, **columns) -> list[dict]:
    """One tidy row per problem of the batch: the scalar settings, the step sizes used, the final objective
    terms, the metrics (``scores`` from :func:`metrics`) and any extra ``columns`` (scalars, or sequences of length
    B such as pair ids and initialisations)."""
    B = result.x.shape[0]
    st = result.settings
    fixed = {k: v for k, v in st.items() if isinstance(v, (int, float, str, bool)) or v is None}
    fixed["rel_step"] = str(tuple(st["rel_step"]))
    fixed["denoiser"] = json.dumps(st.get("denoiser", {}), default=str, sort_keys=True)
    rows = []
    for b in range(B):
        row = dict(fixed)
        g = st.get("gamma_h_used")
        row["gamma_h_used"] = g[b] if isinstance(g, list) else g
        for k in _FINAL:
            if k in result.trajectory:
                row[f"final_{k}"] = float(result.trajectory[k][-1][b])
        for k, v in (scores or {}).items():
            row[k] = torch.as_tensor(v)[b].item()
        for k, v in columns.items():
            row[k] = v[b] if isinstance(v, (list, tuple, np.ndarray, Tensor)) else v
            if isinstance(row[k], (Tensor, np.generic)):
                row[k] = row[k].item()
        rows.append(row)
    return rows


def summary(result: Algorithm1Result, scores: dict[str, Tensor] | None = None) -> dict:
    """A JSON-ready summary: the settings, the final objective terms per item, and the metrics if given."""
    t = result.trajectory
    out = {
        "settings": result.settings,
        "iterations": int(t["iteration"][-1]),
        "final": {k: t[k][-1].tolist() for k in _FINAL if k in t},
    }
    if scores is not None:
        out["metrics"] = {k: torch.as_tensor(v).tolist() for k, v in scores.items()}
    return out
