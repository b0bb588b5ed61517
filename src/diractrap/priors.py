"""The prior interface (a denoiser) and exact Gaussian priors.

Every image prior of the project -- the analytic Gaussians below, the embedded demo network, Song et al.'s NCSN++
and the EDM networks -- is a *denoiser*: an object ``D`` with

    D(x, sigma, labels=None) -> Tensor      x: (B, C, H, W), sigma: (B,), result shaped like x
    D.sigma_min, D.sigma_max                 floats, in the units of the denoiser's own data range
    D.data_range                             (0.0, 1.0) or (-1.0, 1.0)

``D(x, sigma)`` estimates E[x0 | x0 + sigma * n = x]; the score of the sigma-marginal is (D - x) / sigma**2
(Tweedie). Images enter the rest of the library in [0, 1]; the helpers :func:`to_native`, :func:`from_native` and
:func:`denoise_unit` convert once, at the boundary. A prior on [-1, 1] sees an image x in [0, 1] as 2x - 1 and a
noise level sigma (in [0, 1] units) as 2 sigma.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "Denoiser",
    "check_denoiser",
    "range_scale",
    "to_native",
    "from_native",
    "denoise_unit",
    "score_unit",
    "GaussianPrior",
    "DenseGaussianPrior",
]


# ---------------------------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------------------------


@runtime_checkable
class Denoiser(Protocol):
    """What every prior is: a MMSE denoiser with its noise range and its native data range."""

    sigma_min: float
    sigma_max: float
    data_range: tuple[float, float]

    def __call__(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor: ...


def check_denoiser(denoiser) -> None:
    """Raise a TypeError naming what is missing if ``denoiser`` does not follow the protocol."""
    missing = [a for a in ("sigma_min", "sigma_max", "data_range") if not hasattr(denoiser, a)]
    if missing or not callable(denoiser):
        what = ", ".join(missing) if missing else "__call__"
        raise TypeError(f"{type(denoiser).__name__} is not a denoiser: missing {what}")
    if tuple(denoiser.data_range) not in ((0.0, 1.0), (-1.0, 1.0)):
        raise TypeError(f"data_range must be (0, 1) or (-1, 1), got {denoiser.data_range}")
    if not 0 < denoiser.sigma_min < denoiser.sigma_max:
        raise TypeError(f"need 0 < sigma_min < sigma_max, got {denoiser.sigma_min}, {denoiser.sigma_max}")


# ---------------------------------------------------------------------------------------------------------------
# Range conversion at the boundary: images in [0, 1] <-> the denoiser's native range
# ---------------------------------------------------------------------------------------------------------------


def range_scale(data_range) -> float:
    """Native units per [0, 1] unit: 1 for a [0, 1] prior, 2 for a [-1, 1] prior."""
    lo, hi = data_range
    return float(hi - lo)


def to_native(x: Tensor, data_range) -> Tensor:
    """Map an image in [0, 1] to the native range (affine, no clipping)."""
    lo, hi = data_range
    return x * (hi - lo) + lo if (lo, hi) != (0.0, 1.0) else x


def from_native(z: Tensor, data_range) -> Tensor:
    """Inverse of :func:`to_native`."""
    lo, hi = data_range
    return (z - lo) / (hi - lo) if (lo, hi) != (0.0, 1.0) else z


def denoise_unit(denoiser, x: Tensor, sigma, labels: Tensor | None = None) -> Tensor:
    """D(x, sigma) for an image x in [0, 1] and a noise level sigma in [0, 1] units, whatever the native range."""
    s = range_scale(denoiser.data_range)
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0]) * s
    return from_native(denoiser(to_native(x, denoiser.data_range), sigma, labels), denoiser.data_range)


def score_unit(denoiser, x: Tensor, sigma, labels: Tensor | None = None) -> Tensor:
    """The score (D - x) / sigma**2 of the sigma-marginal, in [0, 1] units: an estimate of -grad q(x) as sigma -> 0."""
    sigma_t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0]).view(-1, 1, 1, 1)
    return (denoise_unit(denoiser, x, sigma, labels) - x) / sigma_t**2


# ---------------------------------------------------------------------------------------------------------------
# Gaussian priors: x ~ N(m, B diag(lam) B*) with B orthonormal; every sigma-marginal is N(m, B diag(lam + s^2) B*)
# ---------------------------------------------------------------------------------------------------------------


class _EigenGaussian:
    """Shared closed forms for a Gaussian whose covariance is diagonal in an orthonormal basis B.

    Subclasses define ``_analysis(z) -> c = B* z`` and ``_synthesis(c) -> B c`` and the eigenvalues ``lam``
    (broadcastable to the coefficients). Complex coefficients are allowed (the Fourier basis): the quadratic form
    is sum |c|^2 / lam, exact for real z whenever lam is symmetric (lam(f) = lam(-f)).
    """

    data_range = (0.0, 1.0)
    lam: Tensor
    mean: Tensor
    shape: tuple[int, int, int]

    def _analysis(self, z: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def _synthesis(self, c: Tensor) -> Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != tuple(self.shape):
            raise ValueError(f"this prior is defined on images of shape {tuple(self.shape)}, got {tuple(x.shape[1:])}")

    def __call__(self, x: Tensor, sigma: Tensor, labels: Tensor | None = None) -> Tensor:
        """Exact MMSE denoiser (the Wiener filter): m + B diag(lam / (lam + sigma^2)) B* (x - m)."""
        self._check(x)
        m = self.mean.to(x)
        c = self._analysis(x - m)
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0]).view(-1, *[1] * (c.ndim - 1))
        lam = self.lam.to(device=x.device, dtype=x.dtype)
        return m + self._synthesis(c * (lam / (lam + s**2)))

    def log_prob(self, x: Tensor, sigma: float = 0.0) -> Tensor:
        """Exact log-density (nats) of N(m, Sigma + sigma^2 I) at each image of the batch, in float64: shape (B,)."""
        self._check(x)
        x = x.double()
        lam = self.lam.to(device=x.device, dtype=torch.float64) + sigma**2
        c = self._analysis(x - self.mean.to(x))
        quad = (c.abs() ** 2 / lam).flatten(1).sum(1)
        logdet = torch.log(lam).expand(c.shape[1:]).sum()
        return -0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))

    def potential(self, x: Tensor, sigma: float | None = None) -> Tensor:
        """q(x) = -log p_sigma(x) in nats, exactly; sigma defaults to ``sigma_min`` (what the ODE potential computes)."""
        return -self.log_prob(x, self.sigma_min if sigma is None else sigma)

    def divergence(self, x: Tensor, sigma: Tensor) -> Tensor:
        """Exact div_x D(x, sigma) = sum lam / (lam + sigma^2), shape (B,) (independent of x)."""
        s2 = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).expand(x.shape[0])
        lam = self.lam.to(device=x.device, dtype=torch.float64).expand(self._coeff_shape)
        return (lam.flatten()[None] / (lam.flatten()[None] + s2[:, None] ** 2)).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None, sigma: float = 0.0) -> Tensor:
        """n exact samples of N(m, Sigma + sigma^2 I), float64."""
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        lam = self.lam.to(torch.float64)
        # colour white noise in the eigenbasis: B diag(sqrt(lam)) B* z has covariance B diag(lam) B*
        return self.mean.double() + self._synthesis(self._analysis(z) * torch.sqrt(lam)) + sigma * torch.randn(
            (n, *self.shape), generator=generator, dtype=torch.float64
        )

    def to(self, *args, **kwargs):
        self.mean = self.mean.to(*args, **kwargs)
        self.lam = self.lam.to(*args, **kwargs)
        return self


class GaussianPrior(_EigenGaussian):
    """Stationary (circulant) Gaussian images: covariance diagonal in the orthonormal 2-D Fourier basis.

    Channels are independent. ``spectrum`` (C, H, W) holds the variance of each orthonormal DFT coefficient
    (numpy ``fft2(..., norm="ortho")`` ordering, zero frequency at [0, 0]); ``mean`` is one value per channel.
    Images live in [0, 1]. ``sigma_min`` / ``sigma_max`` are the noise range used by the ODE potential; sigma_max
    must dwarf the image spread for the end-point prior N(0, sigma_max^2 I) to be accurate.
    """

    def __init__(self, spectrum: Tensor, mean, sigma_min: float = 0.001, sigma_max: float = 40.0):  # EDM's range on [0, 1]
        spectrum = torch.as_tensor(spectrum, dtype=torch.float64)
        if spectrum.ndim != 3:
            raise ValueError(f"spectrum must be (C, H, W), got {tuple(spectrum.shape)}")
        if not torch.allclose(spectrum, _flip_freq(spectrum)):
            raise ValueError("spectrum must be symmetric, S(f) = S(-f), for a real-valued Gaussian")
        if (spectrum <= 0).any():
            raise ValueError("spectrum must be positive")
        self.shape = tuple(spectrum.shape)
        self._coeff_shape = self.shape
        self.lam = spectrum
        self.mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1, 1, 1).expand(self.shape[0], 1, 1).clone()
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def _analysis(self, z: Tensor) -> Tensor:
        return torch.fft.fft2(z, norm="ortho")

    def _synthesis(self, c: Tensor) -> Tensor:
        return torch.fft.ifft2(c, norm="ortho").real

    @classmethod
    def power_law(cls, shape, c: float = 1e-2, alpha: float = 2.0, eps: float = 1e-2, mean=0.5, **kwargs):
        """Spectrum c / (eps + |f|)^alpha, |f| in cycles per pixel (the natural-image 1/f^2 law for alpha = 2)."""
        C, H, W = shape
        f = torch.sqrt(torch.fft.fftfreq(H, dtype=torch.float64)[:, None] ** 2 + torch.fft.fftfreq(W, dtype=torch.float64)[None] ** 2)
        return cls((c / (eps + f) ** alpha).expand(C, H, W).clone(), mean, **kwargs)

    @classmethod
    def fit(cls, images: Tensor, floor: float = 1e-6, **kwargs):
        """Fit mean (per channel) and spectrum (averaged periodogram, symmetrised, floored) to images (N, C, H, W)."""
        images = torch.as_tensor(images, dtype=torch.float64)
        mean = images.mean(dim=(0, 2, 3))
        periodogram = (torch.fft.fft2(images - mean.view(1, -1, 1, 1), norm="ortho").abs() ** 2).mean(0)
        spectrum = 0.5 * (periodogram + _flip_freq(periodogram))
        return cls(spectrum.clamp_min(floor), mean, **kwargs)


def _flip_freq(s: Tensor) -> Tensor:
    """S(-f) on the FFT grid: index k -> (-k) mod n along the last two axes."""
    return torch.roll(torch.flip(s, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))


class DenseGaussianPrior(_EigenGaussian):
    """Gaussian images with any covariance (N x N, N = C*H*W): a test oracle for tiny dimensions."""

    def __init__(self, mean: Tensor, cov: Tensor, shape, sigma_min: float = 0.001, sigma_max: float = 40.0):
        cov = torch.as_tensor(cov, dtype=torch.float64)
        self.shape = tuple(shape)
        n = math.prod(self.shape)
        if cov.shape != (n, n):
            raise ValueError(f"cov must be ({n}, {n}) for shape {self.shape}, got {tuple(cov.shape)}")
        lam, self.basis = torch.linalg.eigh(0.5 * (cov + cov.T))
        if (lam <= 0).any():
            raise ValueError("cov must be positive definite")
        self.lam = lam
        self._coeff_shape = (n,)
        self.mean = torch.as_tensor(mean, dtype=torch.float64).reshape(self.shape).clone()
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def _analysis(self, z: Tensor) -> Tensor:
        return z.flatten(1) @ self.basis.to(z)

    def _synthesis(self, c: Tensor) -> Tensor:
        return (c @ self.basis.to(c).T).view(-1, *self.shape)

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        self.basis = self.basis.to(*args, **kwargs)
        return self
