"""The mixture prior against its own closed forms, autograd and the ODE potential; mode refinement; choosing s."""

import math

import pytest
import torch

from diractrap.mixture import MixturePrior, design_mode_scale, refine_mode
from diractrap.potential import potential
from diractrap.priors import DenseGaussianPrior, GaussianPrior


def small_mixture(s=0.3, sigma_max=40.0, shape=(2, 8, 8), n=3, seed=0):
    broad = GaussianPrior.power_law(shape, sigma_max=sigma_max)
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(n, *shape, generator=g, dtype=torch.float64)
    return MixturePrior(broad, mu, s, [0.4] + [0.6 / n] * n), g


@pytest.mark.parametrize("sigma", [0.001, 0.05, 1.0])
@pytest.mark.parametrize("dense", [False, True])
def test_denoiser_is_tweedie_of_the_autograd_gradient_of_log_p(sigma, dense):
    """D(x, sigma) = x + sigma^2 grad log p_sigma(x): the denoiser (written from the component gradients) against
    autograd through the log-sum-exp closed form, float64; 1e-8 relative is ~1e4 times float64 rounding."""
    mix, g = small_mixture()
    if dense:
        c = torch.randn(12, 12, generator=g, dtype=torch.float64)
        broad = DenseGaussianPrior(torch.full((3, 2, 2), 0.5), c @ c.T / 12 + 0.01 * torch.eye(12), (3, 2, 2))
        mix = MixturePrior(broad, torch.rand(2, 3, 2, 2, generator=g, dtype=torch.float64), 0.2)
    x = torch.rand(4, *mix.shape, generator=g, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(mix.log_prob(x, sigma).sum(), x)
    D = mix(x.detach(), torch.full((4,), sigma, dtype=torch.float64))
    r = mix.responsibilities(x.detach(), sigma)
    assert (r.max(1).values < 0.999).any(), "the test must see components mixing, not one dominant component"
    assert ((D - x.detach()) / sigma**2 - grad).norm() <= 1e-8 * grad.norm()


def test_log_prob_reduces_to_the_components():
    """With one narrow mode of weight w: log p = logaddexp(log(1-w) + log N_broad, log w + log N(mu, s^2 I))."""
    mix, g = small_mixture(n=1)
    x = torch.rand(3, *mix.shape, generator=g, dtype=torch.float64)
    sig = 0.1
    v = mix.s**2 + sig**2
    narrow = -0.5 * ((x - mix.centres).pow(2).flatten(1).sum(1) / v + mix.dim * math.log(2 * math.pi * v))
    expected = torch.logaddexp(math.log(0.4) + mix.broad.log_prob(x, sig), math.log(0.6) + narrow)
    torch.testing.assert_close(mix.log_prob(x, sig), expected, rtol=1e-12, atol=1e-9)


def test_ode_potential_matches_the_closed_form():
    """The probability-flow ODE with the exact divergence against -log p_{sigma_min}: 1e-3 nats/dim (the
    acceptance tolerance). sigma_max = 1e4 so that the end-point prior N(0, sigma_max^2 I) (which ignores the
    mean, ~|mean| / sigma_max per dim) costs < 1e-4 nats/dim; s = 0.3 makes the modes matter at sigma_min."""
    mix, g = small_mixture(shape=(1, 4, 4), sigma_max=1e4)
    x = torch.cat([mix.centres[:1] + 0.05 * torch.randn(1, *mix.shape, generator=g, dtype=torch.float64),
                   torch.rand(1, *mix.shape, generator=g, dtype=torch.float64)])
    res = potential(mix, x, solver="dopri5", divergence="exact")
    assert ((res.q - mix.potential(x)).abs() / mix.dim).max() < 1e-3


def test_refined_modes_are_critical_points_and_local_minima():
    """Modes close enough to pull on each other move away from their centres (so the test is not trivial) and end
    where the autograd gradient of q vanishes to 1e-6 of the broad component's pull, with a positive Hessian."""
    mix, g = small_mixture(s=0.15, shape=(1, 4, 4), n=2)
    u = torch.randn(1, 4, 4, generator=g, dtype=torch.float64)
    mix.centres[1] = mix.centres[0] + 2.5 * mix.s * u / u.norm()  # 2.5 s apart: two modes that pull on each other
    ref = refine_mode(mix, mix.centres.clone())
    assert (ref.x - mix.centres).flatten(1).norm(dim=1).min() > 1e-3
    x = ref.x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(mix.potential(x).sum(), x)
    pull = mix.component_grads(ref.x)[:, 0].flatten(1).norm(dim=1)
    assert (grad.flatten(1).norm(dim=1) <= 1e-6 * pull).all()
    assert (ref.relative <= 1e-6).all()
    for b in range(2):
        H = torch.autograd.functional.hessian(lambda z: mix.potential(z.view(1, 1, 4, 4)).sum(), ref.x[b].flatten())
        assert torch.linalg.eigvalsh(H).min() > 0


def test_design_mode_scale_puts_the_mode_at_the_target_level():
    """q_i(x_c) (the narrow component alone) lands at q_b(xb) + f (q_b(x_c) - q_b(xb)), and in the built mixture
    the blurred mode is more probable than the mode (Statement 1) while the mode is a local minimum of q."""
    from diractrap.blur import blur_same
    from diractrap.kernels import kernel

    broad = GaussianPrior.power_law((1, 16, 16))
    g = torch.Generator().manual_seed(3)
    xc = broad.sample(1, generator=g)
    xb = blur_same(xc, kernel("gaussian", 2.0, 9, dtype=torch.float64), "reflect")
    s = design_mode_scale(broad, xc, xb, 0.5, fraction=0.5)
    mix = MixturePrior(broad, xc, s, [0.5, 0.5])
    qc, qb = float(broad.potential(xc)), float(broad.potential(xb))
    v = s**2 + broad.sigma_min**2
    q_narrow = -math.log(0.5) + 256 / 2 * math.log(2 * math.pi * v)
    assert q_narrow == pytest.approx(qb + 0.5 * (qc - qb), rel=1e-9)
    assert float(mix.potential(xb)) < float(mix.potential(xc))
    assert mix.responsibilities(xc)[0, 1] > 0.99
