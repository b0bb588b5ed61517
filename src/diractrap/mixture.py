"""An exact prior with critical points where we put them: a broad Gaussian plus narrow isotropic modes.

Theorem 1 of the paper needs x_bar to be a second-order critical point of q = -log p (grad q = 0, Hessian >= 0).
No held-out image is such a point for a network prior, and a Gaussian's only critical point is its mean (a flat
image). This module builds a prior where chosen images *are* critical points, with every quantity in closed form:

    p(x) = w_0 N(x; m, S) + sum_i w_i N(x; mu_i, s^2 I),        i = 1 .. n,

S the covariance of a :class:`priors.GaussianPrior` (stationary, diagonal in the Fourier basis, e.g. fitted to the
demo crops) or a :class:`priors.DenseGaussianPrior`. Every sigma-marginal is the same mixture with S + sigma^2 I
and (s^2 + sigma^2) I, so

    log p_sigma(x)      = logsumexp_k (log w_k + log N_k(x; sigma))                       (exact, float64)
    grad q_sigma(x)     = sum_k r_k(x) grad q_k(x),  r_k the posterior weights (responsibilities)
    D(x, sigma)         = x - sigma^2 grad q_sigma(x)                                      (Tweedie, exact)

with grad q_broad = S_sigma^{-1} (x - m) and grad q_i = (x - mu_i) / (s^2 + sigma^2). Computing the score directly
(not as (D - x) / sigma^2) keeps it exact at small sigma. ``q`` is -log p_{sigma_min}, what the ODE potential
computes, as for the Gaussian priors.

A centre mu_i is not exactly a critical point of q (the other components pull on it); :func:`refine_mode` moves it
to one by the mixture's mean-shift iteration, which is exact for this model (one linear solve, diagonal in the
broad component's eigenbasis, per step). :func:`design_mode_scale` chooses s so that Statement 1 holds at a pair
while the mode stays a strict local minimum of q.

Sections: the prior; critical points (mean shift); choosing s.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .priors import _EigenGaussian

__all__ = ["MixturePrior", "refine_mode", "ModeRefinement", "design_mode_scale", "demo_mixture"]


# ---------------------------------------------------------------------------------------------------------------
# The prior: w_0 N(m, S) + sum_i w_i N(mu_i, s^2 I), exact at every sigma
# ---------------------------------------------------------------------------------------------------------------


class MixturePrior:
    """A broad Gaussian plus n narrow isotropic Gaussians; follows the denoiser protocol (data_range (0, 1)).

    Args:
        broad: a :class:`priors.GaussianPrior` or :class:`priors.DenseGaussianPrior` (the component N(m, S)).
        centres: (n, C, H, W) the narrow components' means mu_i, images in [0, 1].
        s: the narrow components' standard deviation per pixel ([0, 1] units).
        weights: (n + 1,) positive, summing to 1: [w_0 (broad), w_1, ..., w_n]. Default: w_0 = 1/2, the rest equal.
        sigma_min, sigma_max: the noise range of the ODE potential (default: the broad prior's).

    All arithmetic is in float64; the denoiser returns the dtype of its input.
    """

    data_range = (0.0, 1.0)

    def __init__(self, broad: _EigenGaussian, centres: Tensor, s: float, weights=None, *,
                 sigma_min: float | None = None, sigma_max: float | None = None):
        centres = torch.as_tensor(centres, dtype=torch.float64)
        if centres.ndim != 4 or tuple(centres.shape[1:]) != tuple(broad.shape):
            raise ValueError(f"centres must be (n, {', '.join(map(str, broad.shape))}) like the broad prior's images, "
                             f"got {tuple(centres.shape)}")
        n = centres.shape[0]
        if weights is None:
            weights = torch.tensor([0.5] + [0.5 / n] * n, dtype=torch.float64) if n else torch.ones(1)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (n + 1,) or (weights <= 0).any() or abs(float(weights.sum()) - 1) > 1e-9:
            raise ValueError(f"weights must be n + 1 = {n + 1} positive numbers summing to 1 (w_0 first), "
                             f"got {weights.tolist()}")
        if not s > 0:
            raise ValueError(f"the narrow components' std s must be > 0, got {s}")
        self.broad, self.centres, self.s, self.weights = broad, centres, float(s), weights
        self.shape = tuple(broad.shape)
        self.sigma_min = float(broad.sigma_min if sigma_min is None else sigma_min)
        self.sigma_max = float(broad.sigma_max if sigma_max is None else sigma_max)
        self.info = {"class": "MixturePrior", "n_modes": n, "s": self.s, "weights": weights.tolist()}

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def _sigma(self, x: Tensor, sigma) -> Tensor:
        """sigma as a float64 (B,) tensor; None means sigma_min."""
        sigma = self.sigma_min if sigma is None else sigma
        return torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])

    def lipschitz(self) -> float:
        """An upper bound on the Hessian of q = -log p_{sigma_min}: the largest component curvature.

        The Hessian of -log of a mixture is sum_k r_k H_k - Cov_r(grad q_k) <= max_k H_k (the covariance is PSD).
        """
        s2 = self.sigma_min**2
        return max(1.0 / (float(self.broad.lam.min()) + s2), 1.0 / (self.s**2 + s2))

    def log_joint(self, x: Tensor, sigma=None) -> Tensor:
        """log w_k + log N_k(x; sigma) for each component k (broad first): (B, n + 1), float64."""
        self.broad._check(x)
        x = x.double()
        s2 = self._sigma(x, sigma) ** 2
        lam = self.broad.lam.to(device=x.device, dtype=torch.float64)
        c = self.broad._analysis(x - self.broad.mean.to(x))
        lam_s = lam + s2.view(-1, *[1] * (c.ndim - 1))
        quad = (c.abs() ** 2 / lam_s).flatten(1).sum(1)
        n_coef = lam.expand(c.shape[1:]).numel()
        logdet = torch.log(lam_s.expand(c.shape)).flatten(1).sum(1)
        broad = -0.5 * (quad + logdet + n_coef * math.log(2 * math.pi))
        v = self.s**2 + s2  # (B,)
        d2 = (x[:, None] - self.centres.to(x)[None]).pow(2).flatten(2).sum(2)  # (B, n)
        narrow = -0.5 * (d2 / v[:, None] + self.dim * torch.log(2 * math.pi * v)[:, None])
        return torch.log(self.weights.to(x.device))[None] + torch.cat([broad[:, None], narrow], 1)

    def log_prob(self, x: Tensor, sigma=0.0) -> Tensor:
        """Exact log p_sigma(x) in nats, (B,) float64 (sigma = 0: the mixture itself)."""
        return torch.logsumexp(self.log_joint(x, sigma), 1)

    def potential(self, x: Tensor, sigma: float | None = None) -> Tensor:
        """q(x) = -log p_sigma(x), sigma defaulting to ``sigma_min`` (what the ODE potential computes); (B,)."""
        return -self.log_prob(x, sigma)

    def responsibilities(self, x: Tensor, sigma=None) -> Tensor:
        """r_k(x) = P(component k | x) under p_sigma: (B, n + 1), rows summing to 1."""
        return torch.softmax(self.log_joint(x, sigma), 1)

    def component_grads(self, x: Tensor, sigma=None) -> Tensor:
        """grad q_k(x) for each component: (B, n + 1, C, H, W), float64 (broad first)."""
        x = x.double()
        s2 = self._sigma(x, sigma) ** 2
        lam = self.broad.lam.to(device=x.device, dtype=torch.float64)
        c = self.broad._analysis(x - self.broad.mean.to(x))
        g0 = self.broad._synthesis(c / (lam + s2.view(-1, *[1] * (c.ndim - 1))))
        gi = (x[:, None] - self.centres.to(x)[None]) / (self.s**2 + s2).view(-1, 1, 1, 1, 1)
        return torch.cat([g0.view(x.shape)[:, None], gi], 1)

    def grad_q(self, x: Tensor, sigma=None) -> Tensor:
        """The exact gradient of q_sigma = -log p_sigma at x (sigma defaults to sigma_min): shaped like x, float64."""
        r = self.responsibilities(x, sigma)
        return (r.view(*r.shape, 1, 1, 1) * self.component_grads(x, sigma)).sum(1)

    def __call__(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        """The exact MMSE denoiser E[x0 | x0 + sigma n = x] = x - sigma^2 grad q_sigma(x), in x's dtype."""
        s = self._sigma(x, sigma)
        return (x.double() - s.view(-1, 1, 1, 1) ** 2 * self.grad_q(x, s)).to(x.dtype)

    def to(self, *args, **kwargs):
        """Device moves only: the arithmetic stays in float64 whatever dtype is asked."""
        self.broad.to(*args, **kwargs)
        self.broad.mean, self.broad.lam = self.broad.mean.double(), self.broad.lam.double()
        self.centres = self.centres.to(*args, **kwargs).double()
        return self


# ---------------------------------------------------------------------------------------------------------------
# Critical points of q: the mixture's mean shift (fixed point of sum_k r_k grad q_k = 0 with r frozen per step)
# ---------------------------------------------------------------------------------------------------------------


class ModeRefinement:
    """What :func:`refine_mode` returns: the critical points x (B, C, H, W), the residual ||grad q(x)|| (B,) and
    the same relative to ||grad q_broad(x)|| (the broad component's pull that the mode balances), and the number of
    iterations used."""

    def __init__(self, x, residual, relative, n_iter):
        self.x, self.residual, self.relative, self.n_iter = x, residual, relative, n_iter


def refine_mode(prior: MixturePrior, x0: Tensor, *, sigma=None, n_iter: int = 100,
                rtol: float = 1e-12) -> ModeRefinement:
    """Move each image of x0 (B, C, H, W) to a critical point of q_sigma (default sigma_min) by mean shift.

    With the responsibilities r frozen at the current x, sum_k r_k grad q_k(x') = 0 is linear in x' and diagonal
    in the broad prior's eigenbasis: x' = B [(r_0 c_m / L + a) / (r_0 / L + b)] with L = lam + sigma^2,
    b = sum_{i>=1} r_i / (s^2 + sigma^2), a = B* sum_i r_i mu_i / (s^2 + sigma^2), c_m = B* m. Each step is an
    EM step on log p_sigma, so q never increases; iterations stop when ||grad q|| <= rtol ||grad q_broad||.
    A start inside a narrow component's basin converges to that component's mode (a local minimum of q).
    """
    x = x0.double().clone()
    b_ = prior.broad
    lam = b_.lam.to(device=x.device, dtype=torch.float64)
    sig = prior._sigma(x, sigma)
    L = lam + sig.view(-1, *[1] * lam.ndim) ** 2
    v = (prior.s**2 + sig**2).view(-1, 1, 1, 1)
    mu = prior.centres.to(x)
    used = 0
    for used in range(1, n_iter + 1):
        r = prior.responsibilities(x, sig)
        r0 = r[:, :1].view(-1, *[1] * lam.ndim)
        a = b_._analysis((r[:, 1:, None, None, None] * mu[None]).sum(1) / v)
        bb = (r[:, 1:].sum(1).view(-1, 1, 1, 1) / v).view(-1, *[1] * lam.ndim)
        cm = b_._analysis(b_.mean.to(x).expand_as(x).contiguous())
        x = b_._synthesis((r0 * cm / L + a) / (r0 / L + bb)).view(x.shape)
        g = prior.grad_q(x, sig).flatten(1).norm(dim=1)
        pull = prior.component_grads(x, sig)[:, 0].flatten(1).norm(dim=1)
        if (g <= rtol * pull).all():
            break
    g = prior.grad_q(x, sig).flatten(1).norm(dim=1)
    pull = prior.component_grads(x, sig)[:, 0].flatten(1).norm(dim=1)
    return ModeRefinement(x, g, g / pull, used)


# ---------------------------------------------------------------------------------------------------------------
# Choosing s: Statement 1 at the pair and a strict local minimum at the mode
# ---------------------------------------------------------------------------------------------------------------


def design_mode_scale(broad: _EigenGaussian, x_c: Tensor, x_blurred: Tensor, w_c: float, *, fraction: float = 0.5,
                      sigma: float | None = None) -> float:
    """The std s that puts the narrow component's potential at the mode between two broad-prior levels.

    q_i(x_c) = -log w_c + (N / 2) log(2 pi (s^2 + sigma^2)) is set to q_b(xb) + fraction (q_b(x_c) - q_b(xb)),
    q_b the broad prior's potential, xb = h_bar * x_c (the blurred mode, the end of Statement 1's path). With
    0 < fraction < 1 and q_b(xb) < q_b(x_c) (Claim 1 for the broad prior), the narrow component dominates at x_c (a
    strict local minimum of q, Hessian ~ I / s^2), while q(h_bar * x_c) <= q_b(xb) + log(1/w_0) < q(x_c) when the
    margin exceeds log(1/w_0): the pair (h_bar * x_c, delta) beats (x_c, h_bar), so Statement 1 holds.
    ``x_c``, ``x_blurred``: (1, C, H, W). Raises if Claim 1 fails for the broad prior on x_c.
    """
    sigma = broad.sigma_min if sigma is None else sigma
    qc, qb = float(broad.potential(x_c, sigma)), float(broad.potential(x_blurred, sigma))
    if not qb < qc:
        raise ValueError(f"the broad prior does not prefer the blurred mode (q_b = {qb:.1f} >= {qc:.1f}): choose "
                         "another centre or a wider kernel")
    target = qb + fraction * (qc - qb)
    N = math.prod(x_c.shape[1:])
    v = math.exp(2 * (target + math.log(w_c)) / N) / (2 * math.pi)
    if v <= sigma**2:
        raise ValueError(f"no s > 0 puts the mode at q = {target:.1f}: raise w_c or the fraction")
    return math.sqrt(v - sigma**2)


def demo_mixture(centre_ids=(40, 100), theta: float = 2.5, kernel_size: int = 15, *, w_mode: float = 0.25,
                 fraction: float = 0.5, resolution: int = 32) -> tuple[MixturePrior, ModeRefinement]:
    """The mechanism experiment's prior: the stationary Gaussian fitted to the demo training crops plus modes at
    the demo test crops ``centre_ids`` (weight ``w_mode`` each, the broad prior the rest), with s from
    :func:`design_mode_scale` at the first centre and the Gaussian blur of std ``theta`` (K x K), then every
    centre refined to an exact critical point of q (the prior's centres are replaced by the refined modes).
    Returns the prior and the refinement record."""
    from .blur import blur_same
    from .data import demo_images
    from .kernels import kernel
    from .priors import GaussianPrior

    broad = GaussianPrior.fit(demo_images("train", resolution))
    mu = demo_images("test", resolution).double()[list(centre_ids)]
    h = kernel("gaussian", theta, kernel_size, dtype=torch.float64)
    s = design_mode_scale(broad, mu[:1], blur_same(mu[:1], h, "reflect"), w_mode, fraction=fraction)
    mix = MixturePrior(broad, mu, s, [1 - w_mode * len(centre_ids)] + [w_mode] * len(centre_ids))
    ref = refine_mode(mix, mu)
    mix.centres = ref.x.clone()
    return mix, ref
