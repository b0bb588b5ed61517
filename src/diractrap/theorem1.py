"""Theorem 1 in numbers: is an image a critical point of q, and do the conditions (7)-(9) hold there?

Theorem 1 of the paper: if x_bar is a second-order critical point of q (grad q(x_bar) = 0, Hessian H = grad^2 q(x_bar)
>= 0) and

    (7) ker H  cap  ker A_hbar = {0}               A_hbar x = h_bar * x (valid convolution)
    (8) ker J = {0}                                J: theta -> h_theta * x_bar, the Jacobian at theta_bar
    (9) A_hbar(ker H)  cap  Im J = {0}

then for small noise Ly has a unique local minimiser near (x_bar, theta_bar). Here theta is the kernel itself on the
simplex (h = P(theta), the paper's Algorithm 1), so J = A_xbar restricted to zero-sum kernels (the directions the
simplex leaves free at an interior point); (8) is its smallest singular value.

Numerics (the tolerances are arguments, with these defaults):
- grad q: exact for the closed-form priors (:class:`priors.GaussianPrior`, :class:`mixture.MixturePrior`: the
  gradient of -log p_{sigma_min}); for a network the small-noise score (x - D(x, sigma_g)) / sigma_g^2.
- Hessian-vector products: forward-mode derivatives (JVPs) of grad q; the extreme eigenvalues of H by Lanczos with
  full reorthogonalisation (``n_lanczos`` steps, a fixed random start per image), with the Ritz residuals.
- The numerical kernel of H: the Ritz vectors whose |value| <= ``kernel_rtol`` max |value| (default 1e-4). Only
  the Ritz pairs found are tested: a kernel Lanczos does not reach is not seen (the eigenvalue count says how many).
- (7) and (9) as the smallest principal angle between the subspaces whose intersection must be {0}: (7) between
  the numerical kernel of H and ker A_hbar, (9) between A_hbar(ker H) and Im J. A condition holds numerically when
  that angle exceeds ``angle_tol`` (default 1e-3 rad); with an empty numerical kernel both hold (angle pi/2).
- (8) holds numerically when s_min(J) / ||x_bar|| > 1e-6 (float64 rank noise on these sizes is ~1e-13).
- The first-order change of q along the blur family: Gaussian blur is the heat flow, g_eps * x = x + (eps^2 / 2)
  Lap x + O(eps^4), so dq/d(eps^2) = <grad q, Lap x> / 2 (5-point Laplacian, replicated border). Along Statement 1's
  semigroup path x_t = g_{sqrt(1 - t^2) theta} * x_bar, dq/dt at t = 1 is -theta^2 <grad q, Lap x_bar>, zero at a
  critical point; the curvature <u, H u> / |u|^2 along u = Lap x_bar then decides whether q rises (a barrier).

Sections: gradients and Hessian-vector products; Lanczos; the kernel Jacobian (8); principal angles (7), (9);
descent to a critical point of a network prior; the diagnostics table; the mechanism experiment.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .blur import conv, conv_adjoint
from .checks import (check_count, check_images, check_memory, check_model_input, check_nonnegative, check_positive,
                     memory_need, network_peak)
from .numerics import no_tf32
from .priors import _EigenGaussian, check_denoiser, score_unit
from .rng import item_seed

__all__ = [
    "grad_q_fn",
    "hvp",
    "lanczos",
    "laplacian",
    "kernel_jacobian_svals",
    "principal_angles",
    "condition_angles",
    "descend_to_critical",
    "check_diagnose_input",
    "diagnose",
]

KERNEL_RTOL = 1e-4  # |Ritz value| <= this x max |Ritz value|: counted in the numerical kernel of the Hessian
ANGLE_TOL = 1e-3  # rad: a smallest principal angle above this means "the intersection is {0}" numerically
JAC_RTOL = 1e-6  # (8) holds numerically when s_min(J) > this x ||x_bar|| (float64 rank noise is ~1e-13 here)


# ---------------------------------------------------------------------------------------------------------------
# grad q and Hessian-vector products (JVPs of the score)
# ---------------------------------------------------------------------------------------------------------------


def grad_q_fn(prior, sigma_g: float = 0.001, labels: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """x (B, C, H, W) in [0, 1] -> grad q(x): exact for closed-form priors, the small-noise score for networks.

    A prior with a ``grad_q(x)`` method (the mixture) or a Gaussian prior (grad q = (S + sigma_min^2)^-1 (x - m))
    gives the gradient of its q = -log p_{sigma_min}, in float64; any other denoiser gives
    (x - D(x, sigma_g)) / sigma_g^2 (sigma_g in [0, 1] units; authors' notebooks: 0.001) in the dtype of x.
    """
    if hasattr(prior, "grad_q"):
        return lambda x: prior.grad_q(x)
    if isinstance(prior, _EigenGaussian):

        def gauss(x):
            x = x.double()
            c = prior._analysis(x - prior.mean.to(x))
            lam = prior.lam.to(device=x.device, dtype=torch.float64) + prior.sigma_min**2
            return prior._synthesis(c / lam).view(x.shape)

        return gauss
    check_denoiser(prior)
    return lambda x: -score_unit(prior, x, sigma_g, labels)


def _exact(prior) -> bool:
    """Whether grad q is known in closed form (then sigma_g plays no role)."""
    return hasattr(prior, "grad_q") or isinstance(prior, _EigenGaussian)


def hvp(grad_fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> Tensor:
    """H v = d/de grad q(x + e v) at e = 0 (a JVP of the score); x, v (B, C, H, W).

    Forward mode (torch.func.jvp) where every operation supports it, else the double-backward trick
    (torch.autograd.functional.jvp: two reverse passes), e.g. for networks whose group norm has no forward rule.
    """
    v = v.to(x.dtype)
    try:
        return torch.func.jvp(grad_fn, (x,), (v,))[1]
    except RuntimeError:
        with torch.enable_grad():
            return torch.autograd.functional.jvp(grad_fn, x, v)[1].detach()


# ---------------------------------------------------------------------------------------------------------------
# Lanczos with full reorthogonalisation: the extreme eigenvalues of a symmetric operator
# ---------------------------------------------------------------------------------------------------------------


def lanczos(matvec: Callable[[Tensor], Tensor], v0: Tensor, n_iter: int) -> tuple[Tensor, Tensor, Tensor]:
    """Ritz values (ascending), Ritz vectors (N, k) and residual norms ||A u - theta u|| (k,) of a symmetric A.

    ``matvec`` maps a float64 vector (N,) to (N,); ``v0`` (N,) is the start. Every new Lanczos vector is
    reorthogonalised against all previous ones (twice), so the Ritz values have no spurious copies; the extreme
    ones converge first. Stops early on an invariant subspace. Residuals use ||A u - theta u|| = |beta_k e_k^T s|.
    """
    n = v0.numel()
    k = min(n_iter, n)
    Q = torch.zeros(n, k + 1, dtype=torch.float64, device=v0.device)
    alpha = torch.zeros(k, dtype=torch.float64)
    beta = torch.zeros(k, dtype=torch.float64)
    Q[:, 0] = v0.double().flatten() / v0.double().norm()
    m = k
    for j in range(k):
        w = matvec(Q[:, j]).double().flatten()
        alpha[j] = torch.dot(w, Q[:, j])
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            w = w - Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)
        beta[j] = w.norm()
        if beta[j] <= 1e-12 * alpha[: j + 1].abs().max().clamp_min(1e-300):
            m = j + 1
            break
        Q[:, j + 1] = w / beta[j]
    T = torch.diag(alpha[:m]) + torch.diag(beta[: m - 1], 1) + torch.diag(beta[: m - 1], -1)
    theta, S = torch.linalg.eigh(T)
    resid = (beta[m - 1] * S[-1]).abs()
    return theta, Q[:, :m] @ S, resid


# ---------------------------------------------------------------------------------------------------------------
# Condition (8): the kernel Jacobian J = A_xbar on zero-sum kernels
# ---------------------------------------------------------------------------------------------------------------


def _zero_sum_basis(K: int, dtype=torch.float64) -> Tensor:
    """An orthonormal basis (K^2, K^2 - 1) of the zero-sum kernels (Helmert-like, from a QR)."""
    n = K * K
    M = torch.eye(n, dtype=dtype)[:, 1:] - torch.eye(n, dtype=dtype)[:, :1]  # e_j - e_0, j >= 1: zero-sum, independent
    return torch.linalg.qr(M)[0]


def kernel_jacobian(x: Tensor, K: int) -> Tensor:
    """J Z: the matrix (M, K^2 - 1) of theta -> valid(h_theta * x) on an orthonormal basis Z of zero-sum kernels.

    ``x`` (1, C, H, W); M = C (H - K + 1) (W - K + 1). Built column by column (one FFT convolution per basis
    kernel, batched), in float64.
    """
    Z = _zero_sum_basis(K).to(x.device)
    cols = conv(x.double().expand(K * K - 1, *x.shape[1:]), Z.T.reshape(-1, K, K), "valid")
    return cols.flatten(1).T


def kernel_jacobian_svals(x: Tensor, K: int) -> Tensor:
    """Singular values (descending, (K^2 - 1,)) of the kernel Jacobian on zero-sum kernels: condition (8) holds
    iff the smallest is > 0. For a flat image h * x = (sum h) x, so every zero-sum kernel is in the kernel of J."""
    return torch.linalg.svdvals(kernel_jacobian(x, K))


# ---------------------------------------------------------------------------------------------------------------
# Conditions (7) and (9): principal angles between subspaces
# ---------------------------------------------------------------------------------------------------------------


def principal_angles(U: Tensor, W: Tensor) -> Tensor:
    """Principal angles (ascending, radians) between span(U) and span(W), U (N, p), W (N, q), any bases."""
    if U.shape[1] == 0 or W.shape[1] == 0:
        return torch.full((0,), math.pi / 2, dtype=torch.float64)
    Qu, Qw = torch.linalg.qr(U.double())[0], torch.linalg.qr(W.double())[0]
    c = torch.linalg.svdvals(Qu.T @ Qw).clamp(-1, 1)
    return torch.sort(torch.arccos(c)).values


def _angle_to_kernel_of_blur(V: Tensor, h: Tensor, shape) -> float:
    """Smallest principal angle between span(V) (N, k orthonormal) and ker A_h (valid convolution).

    sin^2 of the angles are the eigenvalues of V^T P_row V, P_row = A^T (A A^T)^-1 A the projection onto the row
    space of A; A A^T is built densely on the y-grid (M unit vectors through A A^T) and factored by Cholesky.
    """
    C, H, W = shape
    K = h.shape[-1]
    m = C * (H - K + 1) * (W - K + 1)
    check_memory(3 * m * m * 8, V.device, f"condition (7) at a {C}x{H}x{W} image (A A^T dense, {m} x {m}, float64)",
                 "use a smaller image (--size): the Hessian has a numerical kernel there, and (7) needs A A^T")
    E = torch.eye(m, dtype=torch.float64).view(m, C, H - K + 1, W - K + 1)
    h = h.double()
    AAt = torch.cat([conv(conv_adjoint(E[i : i + 512], h), h).flatten(1) for i in range(0, m, 512)])
    AV = conv(V.T.reshape(-1, C, H, W), h).flatten(1).T  # (M, k)
    L = torch.linalg.cholesky(0.5 * (AAt + AAt.T))
    Y = torch.cholesky_solve(AV, L)
    P = AV.T @ Y  # V^T A^T (A A^T)^-1 A V
    s2 = torch.linalg.eigvalsh(0.5 * (P + P.T)).clamp(0, 1)
    return float(torch.arcsin(torch.sqrt(s2.min())))


def condition_angles(V: Tensor, x: Tensor, h: Tensor) -> dict[str, float]:
    """Smallest principal angles for (7) and (9), given an orthonormal basis V (N, k) of the numerical kernel of
    the Hessian at x (1, C, H, W) and the kernel h (K, K). k = 0 gives pi/2 for both (nothing to intersect)."""
    if V.shape[1] == 0:
        return {"angle7": math.pi / 2, "angle9": math.pi / 2}
    a7 = _angle_to_kernel_of_blur(V, h, x.shape[1:])
    AV = conv(V.T.reshape(-1, *x.shape[1:]), h.double()).flatten(1).T
    a9 = principal_angles(AV, kernel_jacobian(x, h.shape[-1]))
    return {"angle7": a7, "angle9": float(a9[0])}


# ---------------------------------------------------------------------------------------------------------------
# Descent to a critical point of a (network) prior: the authors' eigenvalues.ipynb recipe
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
@no_tf32()  # hundreds of network evaluations whose small differences drive the descent
def descend_to_critical(
    prior,
    x0: Tensor,
    *,
    lr: float = 0.01,  # authors' eigenvalues.ipynb
    n_steps: int = 3000,  # authors' eigenvalues.ipynb
    sigma_g: float = 0.001,  # authors' eigenvalues.ipynb
    labels: Tensor | None = None,
    record_every: int = 100,
    progress: bool = False,
) -> tuple[Tensor, np.ndarray]:
    """Gradient descent on q from x0 (B, C, H, W) in [0, 1]: x <- x - lr (x - D(x, sigma_g)) / sigma_g^2.

    The step is stable for any MMSE denoiser when lr <= sigma_g^2 (then x <- (1 - a) x + a D(x, sigma_g),
    a = lr / sigma_g^2 <= 1, a damped fixed-point iteration of the denoiser, whose Jacobian has its spectrum in
    [0, 1]); the authors' lr = 0.01 at sigma_g = 0.001 is a = 1e4, which needs D(x, sigma_g) = x to ~1e-4: true
    for their FFHQ networks, whose smallest trained sigma (0.01) is far above sigma_g, not for the demo network
    (it diverges there: BENCHMARKS.md "theorem1"). A warning is issued when a > 2.

    Returns the end point and the history (T, B) of ||grad q|| every ``record_every`` steps (first and last
    included). For a closed-form prior the exact gradient replaces the score (:func:`grad_q_fn`).
    """
    from tqdm.auto import tqdm

    check_images(x0, "x0")
    check_model_input(prior, x0, "x0")
    check_positive(lr=lr, sigma_g=sigma_g)
    check_count(0, n_steps=n_steps)
    check_count(1, record_every=record_every)
    peak = network_peak(prior, x0.shape, "forward", dtype=x0.dtype)
    check_memory(memory_need(peak, 4 * x0.numel() * x0.element_size()), x0.device,
                 f"descent on q of {x0.shape[0]} image(s) of {'x'.join(map(str, x0.shape[1:]))}",
                 "descend fewer images at once, or smaller ones (--size)")
    if lr / sigma_g**2 > 2 and not _exact(prior):
        import warnings

        warnings.warn(f"descent step lr / sigma_g^2 = {lr / sigma_g**2:g} > 2: stable only if D(x, sigma_g) ~ x; "
                      "use lr <= sigma_g^2 for a damped denoiser iteration", stacklevel=2)
    g = grad_q_fn(prior, sigma_g, labels)
    x = x0.clone()
    hist = []
    for i in tqdm(range(n_steps + 1), disable=not progress, desc="descent on q", unit="step"):
        d = g(x).to(x.dtype)
        if not torch.isfinite(d).all():
            raise RuntimeError(f"descent on q diverged at step {i}: lower lr (now {lr}) or raise sigma_g ({sigma_g})")
        if i % record_every == 0 or i == n_steps:
            hist.append(d.double().flatten(1).norm(dim=1).cpu().numpy())
        if i < n_steps:
            x = x - lr * d
    return x, np.stack(hist)


# ---------------------------------------------------------------------------------------------------------------
# The diagnostics table: one row per (image, kernel)
# ---------------------------------------------------------------------------------------------------------------


def laplacian(x: Tensor) -> Tensor:
    """5-point Laplacian with replicated border: d/d(eps^2) of g_eps * x is Lap x / 2 (the heat flow)."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4 * x


def check_diagnose_input(prior, x: Tensor, kernel_size: int, *, sigma_g: float = 0.001, n_lanczos: int = 40,
                         name: str = "kernel_size") -> None:
    """What :func:`diagnose` needs, checked before any evaluation: images (B, C, H, W) in [0, 1] of a size the
    prior takes, a kernel of K >= 2 smaller than them (h * x, valid, is (H - K + 1) x (W - K + 1)), and the memory
    of one Hessian-vector product plus the Lanczos basis and the kernel Jacobian of (8) (a one-line refusal)."""
    check_images(x, "x")
    check_count(2, **{name: kernel_size})  # (8) is about the K^2 - 1 zero-sum directions: none for K = 1
    check_count(1, n_lanczos=n_lanczos)
    check_positive(sigma_g=sigma_g)
    C, H, W = (int(s) for s in x.shape[1:])
    K = int(kernel_size)
    if min(H, W) <= 2:
        raise ValueError(f"the image is {H}x{W}: too small for Theorem 1, whose kernel (K >= 2) must be smaller than "
                         "the image; give an image of at least 3x3 pixels")
    if K >= min(H, W):
        raise ValueError(f"{name} K = {K} must be smaller than the image ({H}x{W}): h * x (valid) would be empty; use "
                         f"K < {min(H, W)} or a larger image")
    check_model_input(prior, x)
    N = C * H * W

    def hessian_vector(den, z):  # the network part of one Lanczos step
        return hvp(lambda u: -score_unit(den, u, sigma_g), z, torch.empty_like(z))

    peak = network_peak(prior, (1, C, H, W), hessian_vector, key=f"hvp{sigma_g}", dtype=x.dtype)
    # Lanczos: its basis and the Ritz vectors (N x (n + 1) each, float64); (8): the (K^2 - 1) convolved images in
    # float64 and their FFTs, 2.4-2.6 of them traced at 32-100 px (4 allowed: LAPACK's SVD workspace is not traced)
    rest = 2 * N * (n_lanczos + 1) * 8 + 4 * (K * K - 1) * N * 8
    check_memory(rest if peak is None else memory_need(peak, rest), x.device,
                 f"Theorem 1's diagnostics at an image of {C}x{H}x{W}",
                 "use a smaller image (--size), fewer Lanczos steps or a smaller kernel")


def _check_diagnose_input(prior, x, h, *, theta, sigma_g, n_lanczos) -> None:
    if not isinstance(h, Tensor) or h.ndim not in (2, 3) or h.shape[-1] != h.shape[-2]:
        raise ValueError(f"h must be a square kernel (K, K) or one per image (B, K, K), got "
                         f"{tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__}")
    if h.ndim == 3 and h.shape[0] != x.shape[0]:
        raise ValueError(f"h has {h.shape[0]} kernels for {x.shape[0]} images")
    check_nonnegative(theta=theta)
    check_diagnose_input(prior, x, h.shape[-1], sigma_g=sigma_g, n_lanczos=n_lanczos)


@no_tf32()  # second derivatives through the network: TF32 would swamp them on a GPU
def diagnose(
    prior,
    x: Tensor,
    h: Tensor,
    *,
    theta: float | None = None,
    sigma_g: float = 0.001,  # authors' notebooks
    labels: Tensor | None = None,
    n_lanczos: int = 40,
    kernel_rtol: float = KERNEL_RTOL,
    angle_tol: float = ANGLE_TOL,
    seed: int = 0,
) -> list[dict]:
    """Theorem 1's hypotheses at each image of x (B, C, H, W) in [0, 1] with the kernel h (K, K) or (B, K, K).

    ``theta``: the std of h when h is a Gaussian (for dq/dt along the semigroup path; else that column is NaN).
    Returns one dict per image: grad_norm = ||grad q||, grad_rms = ||grad q|| / sqrt(N), dq_blur = dq/d(eps^2)
    (nats per px^2 of added blur variance), dq_dt_path (dq/dt of the semigroup path at t = 1), curv_blur
    (<u, H u> / |u|^2, u = Lap x), lam_min / lam_max (extreme Ritz values of H) with their residuals,
    n_kernel (Ritz values counted as zero), j_smin / j_smax (singular values of the kernel Jacobian, (8)),
    angle7 / angle9 (radians), and booleans cond7, cond8, cond9 with the tolerances used.
    """
    _check_diagnose_input(prior, x, h, theta=theta, sigma_g=sigma_g, n_lanczos=n_lanczos)
    gfn = grad_q_fn(prior, sigma_g, labels)
    rows = []
    B = x.shape[0]
    hb = h.expand(B, *h.shape[-2:]) if h.ndim == 2 else h
    for b in range(B):
        xb = x[b : b + 1]
        xd = xb.double() if _exact(prior) else xb
        g = gfn(xd).double()
        u = laplacian(xb.double())
        gn = float(g.norm())
        dq_blur = 0.5 * float((g * u).sum())

        def mv(v, xd=xd):
            return hvp(gfn, xd, v.view(xd.shape)).double().flatten()

        gen = torch.Generator().manual_seed(item_seed(seed, b, "affine"))  # one Lanczos start per item
        v0 = torch.randn(xb.numel(), generator=gen, dtype=torch.float64)
        vals, vecs, res = lanczos(mv, v0, n_lanczos)
        curv = float((u.flatten() @ mv(u.flatten())) / u.flatten().pow(2).sum())
        zero = vals.abs() <= kernel_rtol * vals.abs().max()
        V = torch.linalg.qr(vecs[:, zero])[0] if zero.any() else vecs[:, :0]
        s = kernel_jacobian_svals(xb, h.shape[-1])
        ang = condition_angles(V, xb.double(), hb[b])
        j_rel = float(s[-1] / xb.double().norm())  # ||J v|| <= ||x|| ||v||_1: a scale that is 0 only for x = 0
        rows.append({
            "grad_norm": gn,
            "grad_rms": gn / math.sqrt(xb.numel()),
            "dq_blur": dq_blur,
            "dq_dt_path": float(-(theta**2) * 2 * dq_blur) if theta is not None else float("nan"),
            "curv_blur": curv,
            "lam_min": float(vals[0]),
            "lam_max": float(vals[-1]),
            "lam_min_resid": float(res[0]),
            "lam_max_resid": float(res[-1]),
            "n_lanczos": int(vals.numel()),
            "n_kernel": int(zero.sum()),
            "j_smin": float(s[-1]),
            "j_smax": float(s[0]),
            "j_rel": j_rel,
            "angle7": ang["angle7"],
            "angle9": ang["angle9"],
            "second_order": bool(vals[0] >= -kernel_rtol * vals.abs().max()),
            "cond7": ang["angle7"] > angle_tol,
            "cond8": j_rel > JAC_RTOL,
            "cond9": ang["angle9"] > angle_tol,
            "kernel_rtol": kernel_rtol,
            "angle_tol": angle_tol,
            "sigma_g": None if _exact(prior) else sigma_g,
        })
    return rows


# ---------------------------------------------------------------------------------------------------------------
# The mechanism experiment: Ly along Statement 1's path, and Algorithm 1 from three starts, per truth
# ---------------------------------------------------------------------------------------------------------------


def converged_params(prior, x_true: Tensor, K: int, *, sigma: float = 0.01, n_ext: int = 300, n_in: int = 100,
                     n_in_first: int = 2000, lipschitz_q: float | None = None, sigma_g: float | None = None):
    """Algorithm 1 with the x-subproblem solved before every kernel step and a safe constant kernel step.

    Gradient x-steps of 1 / (1 + sigma^2 L_q) (L_q bounds the Hessian of q: ``lipschitz_q``, else the prior's
    ``lipschitz()``), n_in_first steps from the start then n_in warm-started steps per kernel step (x is never reset
    after the first iteration, so it tracks argmin_x Ly as h moves; x starts from the given full-size image,
    pad="observed"); projected kernel step with the constant
    gamma_h = 1 / L_h(x_true), the largest eigenvalue of A_x^T A_x on zero-sum kernels at the truth (the smallest of
    the batch: a step that decreases the kernel subproblem for every item). Returns deconv.Algorithm1Params.
    """
    from .deconv import kernel_lipschitz, preset

    sigma_g = getattr(prior, "sigma_min", 0.001) if sigma_g is None else sigma_g
    # for a network, grad q = (x - D(x, sigma_g)) / sigma_g^2 is 1 / sigma_g^2-Lipschitz (D's Jacobian in [0, 1])
    Lq = float(lipschitz_q if lipschitz_q is not None else prior.lipschitz() if hasattr(prior, "lipschitz")
               else 1 / sigma_g**2)
    L_h = float(kernel_lipschitz(x_true.double(), K, n_iter=100).max())
    return preset("paper", n_ext=n_ext, n_in=n_in, n_in_first=n_in_first, n_in_warmup=1, reset=n_ext + 1,
                  pad="observed",
                  sigma=sigma, sigma_g=sigma_g, gamma_x=1.0 / (1.0 + sigma**2 * Lq),
                  kernel_step="projected", kernel_schedule="constant", gamma_h=1.0 / L_h)


@no_tf32()  # second derivatives through the network: TF32 would swamp them on a GPU
def mechanism(
    prior,
    x_true: Tensor,
    theta: float,
    kernel_size: int,
    algorithms: dict,
    *,
    starts=("wide", "small", "true"),
    sigma: float = 0.01,  # paper
    seed: int = 0,
    ts=(0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 1.0),  # dense near 1: the barrier
    q_fn: Callable[[Tensor], Tensor] | None = None,
    n_iter_delta: int = 3000,
    gamma_x_delta: float | None = None,
    sigma_g: float | None = None,
    labels=None,
    progress: bool = False,
) -> dict[str, list[dict]]:
    """Theorem 1's prediction put to the test on truths x_true (P, C, H, W) blurred by the Gaussian g_theta (K x K).

    Returns tidy rows: ``path`` (truth, t, data, q, L, L - L(t = 1)) along Statement 1's semigroup path
    x_t = g_{sqrt(1 - t^2) theta} * x_true, h_t = g_{t theta}; ``statement1`` (per truth: Ly at the truth, at the
    path's end (h_bar * x_true, delta) and at (x_delta, delta), x_delta by ``n_iter_delta`` gradient steps of the
    non-blind MAP with delta; ``holds`` = min of the two delta values < Ly(truth)); ``runs`` (per algorithm, start
    and truth: the metrics of the final pair, its Ly, Ly at the truth, ||grad_x Ly|| / its value at the reset before
    the last kernel step; ``r_mode``, for a mixture, the posterior weight of the truth's own component at the final
    x: near 1 when x ended in the mode's basin; ``x_rmse``, the RMS distance of the final x to x_true, whole
    image). ``algorithms``: name -> deconv.Algorithm1Params (with pad="observed": x starts from the full-size
    blurry image). ``starts``: "wide", "small", "true" (h_bar, x from the blurry image) and "truth" (h_bar and
    x_true itself: does the pair stay where Theorem 1 puts a minimiser?).
    ``q_fn``: x -> q(x) in nats (default ``prior.potential``, the closed form); ``sigma_g``: the score's noise level
    for x_delta (default the prior's sigma_min). Everything runs in float64 (a network casts to its own dtype).
    """
    from .deconv import algorithm1, data_term, initial_kernels, map_x
    from .kernels import dirac, kernel
    from .metrics import metrics
    from .problems import make_problem
    from .statement1 import semigroup_path

    q_fn = prior.potential if q_fn is None else q_fn
    dt = torch.float64 if _exact(prior) else torch.float32  # networks run in float32
    x_true = x_true.to(dt)
    P, K = x_true.shape[0], kernel_size
    h_bar = kernel("gaussian", theta, K, dtype=dt)
    y, y_full = make_problem(x_true, h_bar, sigma=sigma, seed=seed, full=True)
    out: dict[str, list[dict]] = {"path": [], "statement1": [], "runs": []}

    xs, hs = semigroup_path(x_true, theta, ts, K)
    q = torch.as_tensor(q_fn(xs), dtype=torch.float64)
    d = data_term(xs, hs, y.repeat(len(ts), 1, 1, 1))
    L = d + sigma**2 * q
    L1 = L[-P:] if ts[-1] == 1 else None
    for i, t in enumerate(ts):
        for p in range(P):
            k = i * P + p
            out["path"].append({"truth": p, "t": float(t), "data": float(d[k]), "q": float(q[k]), "L": float(L[k]),
                                "L_minus_true": float(L[k] - L1[p]) if L1 is not None else float("nan")})

    delta = dirac(K, dtype=dt).expand(P, K, K)
    sigma_g = getattr(prior, "sigma_min", 0.001) if sigma_g is None else sigma_g
    x_delta = map_x(prior, y, delta, n_iter=n_iter_delta, sigma=sigma, sigma_g=sigma_g,
                    gamma_x=gamma_x_delta, labels=labels)
    L_true = data_term(x_true, h_bar.expand(P, K, K), y) + sigma**2 * torch.as_tensor(q_fn(x_true),
                                                                                     dtype=torch.float64)
    L_delta = data_term(x_delta, delta, y) + sigma**2 * torch.as_tensor(q_fn(x_delta), dtype=torch.float64)
    L_end = L[:P] if ts[0] == 0 else torch.full((P,), float("nan"), dtype=torch.float64)  # (h_bar * x_true, delta)
    for p in range(P):
        out["statement1"].append({"truth": p, "L_true": float(L_true[p]), "L_path_end": float(L_end[p]),
                                  "L_delta": float(L_delta[p]),
                                  "holds": bool(min(float(L_delta[p]), float(L_end[p])) < float(L_true[p]))})

    h0 = torch.cat([h_bar.expand(P, K, K) if s in ("true", "truth") else initial_kernels(s, K, P, dtype=dt)
                    for s in starts])
    x0 = torch.cat([x_true if s == "truth" else y_full for s in starts])  # x's start (pad="observed")
    n = len(starts)
    modes = getattr(prior, "centres", None)
    out["kernels"] = {"h_true": h_bar.numpy(), "starts": list(starts)}
    for name, params in algorithms.items():
        if params.pad != "observed":
            raise ValueError(f"algorithm {name!r}: the mechanism starts x from given images; use pad='observed'")
        res = algorithm1(prior, y.repeat(n, 1, 1, 1), h0, params=params, y_full=x0,
                         labels=None if labels is None else labels.repeat(n), progress=progress)
        out["kernels"][name] = res.h.double().numpy()
        if modes is not None:  # which component is the truth's: the nearest centre (the critical truth's own)
            own = (x_true[:, None] - modes[None]).flatten(2).norm(dim=2).argmin(1) + 1
            r = prior.responsibilities(res.x.double())
            r_mode = r[torch.arange(n * P), own.repeat(n)]
        else:
            r_mode = torch.full((n * P,), float("nan"))
        sc = metrics(res.x, res.h, x_true.repeat(n, 1, 1, 1), h_bar.expand(n * P, K, K))
        Lf = data_term(res.x.to(dt), res.h.to(dt), y.repeat(n, 1, 1, 1)) + sigma**2 * torch.as_tensor(
            q_fn(res.x.to(dt)), dtype=torch.float64)
        gxr = res.history["grad_x_rel"][-1]
        gx = res.trajectory["grad_x"][-1]
        for b in range(n * P):
            out["runs"].append({
                "algorithm": name, "start": starts[b // P], "truth": b % P,
                "kernel_error": float(sc["kernel_error"][b]), "dirac_distance": float(sc["dirac_distance"][b]),
                "spread": float(sc["spread"][b]), "psnr": float(sc["psnr"][b]),
                "L_final": float(Lf[b]), "L_true": float(L_true[b % P]), "grad_x_final": float(gx[b]),
                "grad_x_rel": float(gxr[b]), "r_mode": float(r_mode[b]),
                "x_rmse": float((res.x[b].double() - x_true[b % P]).pow(2).mean().sqrt()),
            })
    return out
