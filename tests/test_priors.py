"""The Gaussian priors' closed forms against independent computations: a dense covariance built from the definition
of a stationary field, scipy's multivariate normal, the posterior mean by a linear solve, autograd (Tweedie)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from diractrap.priors import DenseGaussianPrior, GaussianPrior, check_denoiser, denoise_unit, score_unit

D64 = torch.float64
SHAPE = (2, 4, 5)  # C, H, W: small enough for dense N x N matrices (N = 40), odd and even sizes


def random_spectrum(shape, seed=0) -> torch.Tensor:
    """A positive spectrum with S(f) = S(-f): the average of a random field with its frequency-reversed copy."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(shape, generator=g, dtype=D64) + 0.05
    flipped = torch.roll(torch.flip(s, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    return 0.5 * (s + flipped)


def circulant_covariance(spectrum: torch.Tensor) -> np.ndarray:
    """Cov[x_c(p), x_c(p')] = (1/HW) sum_f S_c(f) cos(2 pi f . (p - p')), channels independent (numpy, from the
    definition of a stationary field on the torus; no FFT)."""
    C, H, W = spectrum.shape
    S = spectrum.numpy()
    fy, fx = np.meshgrid(np.arange(H) / H, np.arange(W) / W, indexing="ij")
    py, px = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    dy = py.ravel()[:, None] - py.ravel()[None]
    dx = px.ravel()[:, None] - px.ravel()[None]
    n = H * W
    cov = np.zeros((C * n, C * n))
    for c in range(C):
        phase = 2 * np.pi * (fy.ravel()[None, None] * dy[..., None] + fx.ravel()[None, None] * dx[..., None])
        cov[c * n : (c + 1) * n, c * n : (c + 1) * n] = (S[c].ravel() * np.cos(phase)).sum(-1) / n
    return cov


@pytest.fixture
def pair():
    spectrum = random_spectrum(SHAPE)
    mean = torch.tensor([0.4, 0.6], dtype=D64)
    stationary = GaussianPrior(spectrum, mean)
    cov = circulant_covariance(spectrum)
    dense = DenseGaussianPrior(mean[:, None, None].expand(SHAPE).reshape(-1), torch.from_numpy(cov), SHAPE)
    x = torch.rand((3, *SHAPE), generator=torch.Generator().manual_seed(1), dtype=D64)
    return stationary, dense, cov, x


def test_log_prob_matches_scipy(pair):
    stationary, dense, cov, x = pair
    m = dense.mean.flatten().numpy()
    for sigma in (0.0, 0.3):
        ref = multivariate_normal(m, cov + sigma**2 * np.eye(len(m))).logpdf(x.flatten(1).numpy())
        # float64 throughout: agreement to rounding (1e-9 relative on values of order 10-100)
        np.testing.assert_allclose(stationary.log_prob(x, sigma), ref, rtol=1e-9)
        np.testing.assert_allclose(dense.log_prob(x, sigma), ref, rtol=1e-9)
    np.testing.assert_allclose(stationary.potential(x), -stationary.log_prob(x, stationary.sigma_min), rtol=1e-12)


def test_denoiser_is_the_posterior_mean(pair):
    stationary, dense, cov, x = pair
    m = dense.mean.flatten().numpy()
    sigma = 0.25
    # E[x0 | x] = m + Sigma (Sigma + sigma^2 I)^{-1} (x - m), by a dense linear solve
    ref = m + (cov @ np.linalg.solve(cov + sigma**2 * np.eye(len(m)), (x.flatten(1).numpy() - m).T)).T
    s = torch.full((3,), sigma, dtype=D64)
    np.testing.assert_allclose(stationary(x, s).flatten(1), ref, atol=1e-12)
    np.testing.assert_allclose(dense(x, s).flatten(1), ref, atol=1e-12)
    # its divergence is tr(Sigma (Sigma + sigma^2 I)^{-1})
    tr = np.trace(cov @ np.linalg.inv(cov + sigma**2 * np.eye(len(m))))
    np.testing.assert_allclose(stationary.divergence(x, s), tr, rtol=1e-10)
    np.testing.assert_allclose(dense.divergence(x, s), tr, rtol=1e-10)


def test_tweedie_score_is_the_gradient_of_the_log_density(pair):
    stationary, dense, _, x = pair
    sigma = 0.1
    for prior in (stationary, dense):
        z = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(prior.log_prob(z, sigma).sum(), z)
        score = (prior(x, torch.full((3,), sigma, dtype=D64)) - x) / sigma**2
        np.testing.assert_allclose(score, grad, rtol=1e-9, atol=1e-9)


def test_samples_have_the_prior_covariance(pair):
    stationary, _, cov, _ = pair
    n = 20000
    z = stationary.sample(n, generator=torch.Generator().manual_seed(0)).flatten(1).numpy()
    emp = np.cov(z.T)
    # each entry of a sample covariance has std <= sqrt(2 / n) * max variance (~0.03 here): 5 stds
    assert np.abs(emp - cov).max() < 5 * math.sqrt(2 / n) * cov.diagonal().max()
    np.testing.assert_allclose(z.mean(0), stationary.mean.expand(SHAPE).flatten(), atol=0.05)


def test_fit_recovers_spectrum_and_mean(pair):
    stationary, *_ = pair
    z = stationary.sample(4000, generator=torch.Generator().manual_seed(3))
    fitted = GaussianPrior.fit(z)
    # averaged periodogram of 4000 images: each |c|^2 is (scaled) chi^2 with 1-2 dof, relative std <= sqrt(2/4000)
    # = 2.2 % per coefficient before symmetrising; 12 % is > 5 stds
    np.testing.assert_allclose(fitted.lam, stationary.lam, rtol=0.12)
    np.testing.assert_allclose(fitted.mean.flatten(), stationary.mean.flatten(), atol=0.02)


def test_power_law_spectrum_and_validation():
    p = GaussianPrior.power_law((1, 8, 8), c=2.0, alpha=2.0, eps=0.1)
    f = math.hypot(1 / 8, 3 / 8)  # frequencies of index (1, 3): fftfreq gives 1/8 and 3/8
    assert math.isclose(float(p.lam[0, 1, 3]), 2.0 / (0.1 + f) ** 2, rel_tol=1e-12)
    assert math.isclose(float(p.lam[0, 0, 0]), 2.0 / 0.1**2, rel_tol=1e-12)
    check_denoiser(p)
    bad = torch.ones(1, 4, 4, dtype=D64)
    bad[0, 0, 1] = 2.0  # S(f) != S(-f)
    with pytest.raises(ValueError, match="symmetric"):
        GaussianPrior(bad, 0.5)
    with pytest.raises(ValueError, match="positive"):
        GaussianPrior(torch.zeros(1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="defined on images of shape"):
        p(torch.zeros(1, 1, 4, 4), torch.ones(1))
    with pytest.raises(ValueError, match="positive definite"):
        DenseGaussianPrior(torch.zeros(2), -torch.eye(2), (1, 1, 2))


class OnMinusOneOne:
    """The same prior re-expressed on [-1, 1]: z = 2x - 1, native sigma = 2 sigma."""

    data_range = (-1.0, 1.0)

    def __init__(self, prior):
        self.prior, self.sigma_min, self.sigma_max = prior, 2 * prior.sigma_min, 2 * prior.sigma_max

    def __call__(self, z, sigma, labels=None):
        return 2 * self.prior((z + 1) / 2, sigma / 2) - 1


def test_unit_range_helpers_are_range_independent(pair):
    stationary, _, _, x = pair
    for prior in (stationary, OnMinusOneOne(stationary)):
        np.testing.assert_allclose(denoise_unit(prior, x, 0.2), stationary(x, torch.full((3,), 0.2, dtype=D64)),
                                   atol=1e-12)
        np.testing.assert_allclose(score_unit(prior, x, 0.2),
                                   (stationary(x, torch.full((3,), 0.2, dtype=D64)) - x) / 0.04, atol=1e-9)
