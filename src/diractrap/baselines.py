"""Classical priors next to the diffusion priors on Section 2.2's experiment: total variation, fitted Gaussian.

Figure 3 asks whether q(h_theta * x) falls as theta grows. The first question a reader asks is whether a classical
prior shows the same ordering on the same images and kernels; two closed-form potentials answer it, computed on the
very images of the sweep (:func:`diractrap.sweeps.baseline_sweep`):

- total variation, q_TV(x) = lambda TV(x), TV(x) = sum over channels and pixels of |grad x| (isotropic, forward
  differences, zero difference across the last row and column). lambda is fitted by maximum likelihood
  (:func:`fit_tv_lambda`). For a circular boundary TV(h * x) <= TV(x) for every kernel h >= 0 summing to 1 (TV is a
  convex, translation-invariant norm and h * x an average of translates of x), so this prior always prefers blur;
  the sign of a difference q_TV(h * x) - q_TV(x) never depends on lambda, only its scale does.
- the stationary Gaussian fitted to the same training images as the diffusion prior
  (:meth:`diractrap.priors.GaussianPrior.fit`: mean per channel, averaged periodogram), whose potential
  -log N(x; m, Sigma + sigma_min^2 I) is exact (no ODE) -- the Gaussian that the end-point of the ODE leaves out.

Potentials are in nats for images in [0, 1]; q_TV is defined up to its (unknown, image-independent) normaliser, so
only its differences are meaningful, which is what Figure 3 plots.

Sections: total variation; the fitted baselines.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BASELINES", "tv", "fit_tv_lambda", "fit_baselines"]

BASELINES = ("tv", "gaussian")


# ---------------------------------------------------------------------------------------------------------------
# Total variation: TV(x) and the maximum-likelihood lambda
# ---------------------------------------------------------------------------------------------------------------


def _gradient_norms(x: Tensor) -> Tensor:
    """|grad x| per channel and pixel, (B, C, H, W) float64: forward differences, 0 across the last row / column."""
    x = x.double()
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    dy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return torch.sqrt(dx**2 + dy**2)


def tv(x: Tensor) -> Tensor:
    """Isotropic total variation of each image of x (B, C, H, W): (B,) float64, sum over channels and pixels of
    sqrt(dx^2 + dy^2), forward differences, none across the last row or column (Neumann boundary)."""
    if x.ndim != 4:
        raise ValueError(f"x must be a batch of images (B, C, H, W), got shape {tuple(x.shape)}")
    return _gradient_norms(x).flatten(1).sum(1)


def fit_tv_lambda(images: Tensor) -> float:
    """The maximum-likelihood lambda of the TV prior on ``images`` (N, C, H, W) in [0, 1], 1 / (intensity units).

    Model: the gradient vectors g in R^2 of every channel and pixel are independent with density
    lambda^2 / (2 pi) exp(-lambda |g|) (the 2-D Laplace law whose product is exp(-lambda TV(x)) up to a constant).
    Its log-likelihood n (2 ln lambda) - lambda sum |g| is maximal at lambda = 2 n / sum |g| (n gradient vectors).
    """
    norms = _gradient_norms(images)
    total = float(norms.sum())
    if total <= 0:
        raise ValueError("the images are constant: TV's lambda cannot be fitted (pass other images)")
    return 2 * norms.numel() / total


# ---------------------------------------------------------------------------------------------------------------
# The fitted baselines: name -> (q(x) -> (B,) nats, description for the table)
# ---------------------------------------------------------------------------------------------------------------


def fit_baselines(images: Tensor, names=BASELINES, *, sigma_min: float = 0.002) -> dict:
    """Fit the classical priors ``names`` (a subset of :data:`BASELINES`) to ``images`` (N, C, H, W) in [0, 1].

    ``sigma_min`` (units of [0, 1] images) smooths the Gaussian as the diffusion prior's q = -log p_{sigma_min}
    is smoothed: pass the diffusion prior's own (halved for a [-1, 1] prior). Returns {name: (q, info)} with
    ``q(x) -> (B,)`` float64 nats for images in [0, 1] and ``info`` a dict of the fitted parameters (lambda; the
    number of fitting images, sigma_min).
    """
    from .priors import GaussianPrior

    unknown = set(names) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baseline(s) {sorted(unknown)}: choose from {BASELINES}")
    out = {}
    if "tv" in names:
        lam = fit_tv_lambda(images)
        out["tv"] = (lambda x, lam=lam: lam * tv(x), {"lambda": lam, "fit_images": len(images)})
    if "gaussian" in names:
        prior = GaussianPrior.fit(images, sigma_min=sigma_min, sigma_max=max(40.0, 10 * sigma_min))
        out["gaussian"] = (lambda x, prior=prior: prior.potential(x.double()),
                           {"sigma_min": sigma_min, "fit_images": len(images),
                            "spectrum_range": (float(prior.lam.min()), float(prior.lam.max()))})
    return out
