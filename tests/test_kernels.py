"""Blur families and the simplex projection, against definitions and an independent solver."""

import pytest
import torch

from diractrap.kernels import FAMILIES, dirac, kernel, project_simplex, second_moment, small, wide

# theta ranges used by the paper's figures for K = 21 (config/paper.yaml uses sub-grids of these)
PAPER_RANGE = {"gaussian": 4.0, "motion": 9.0, "airy": 6.0, "defocus": 9.0}
VARIANTS = [("gaussian", {}), ("motion", {"angle": 0}), ("motion", {"angle": 45}), ("motion", {"angle": 90}),
            ("airy", {}), ("defocus", {})]


@pytest.mark.parametrize("family,opts", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_theta_zero_is_dirac_and_kernels_are_distributions(family, opts, dtype):
    theta = torch.linspace(0, PAPER_RANGE[family], 13, dtype=dtype)
    h = kernel(family, theta, 21, dtype=dtype, **opts)
    assert h.shape == (13, 21, 21) and h.dtype == dtype
    assert torch.equal(h[0], dirac(21, dtype=dtype))
    assert (h >= 0).all()
    torch.testing.assert_close(h.sum((-2, -1)), torch.ones(13, dtype=dtype), rtol=0, atol=10 * torch.finfo(dtype).eps)
    assert torch.equal(kernel(family, 0.0, 21, dtype=dtype, **opts), dirac(21, dtype=dtype))


@pytest.mark.parametrize("family,opts", VARIANTS)
def test_spread_grows_strictly_with_theta(family, opts):
    # theta = 0 then a fine grid over the paper's range from a quarter pixel, in float64. Below ~0.03 px every
    # family is delta to machine precision (the Gaussian's exp(-1/(2 theta^2)) underflows), so a strict increase
    # cannot be asked for there; at 0.25 px the smallest tails are ~1e-14 and still register.
    theta = torch.cat([torch.zeros(1), torch.linspace(0.25, PAPER_RANGE[family], 180)]).double()
    m = second_moment(kernel(family, theta, 21, dtype=torch.float64, **opts))
    assert (m.diff() > 0).all(), theta[1:][m.diff() <= 0]


def test_kernel_centres_and_symmetries():
    g = kernel("gaussian", 2.0, 21, dtype=torch.float64)
    torch.testing.assert_close(g, g.flip(0)), torch.testing.assert_close(g, g.T)
    # closed form of the normalised sampled Gaussian
    r = torch.arange(21, dtype=torch.float64) - 10
    ref = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / 8)
    torch.testing.assert_close(g, ref / ref.sum(), rtol=1e-12, atol=1e-15)
    horizontal = kernel("motion", 5.0, 21, dtype=torch.float64, angle=0)
    vertical = kernel("motion", 5.0, 21, dtype=torch.float64, angle=90)
    torch.testing.assert_close(vertical, horizontal.T)
    diagonal = kernel("motion", 5.0, 21, dtype=torch.float64, angle=45)
    # 45 degrees on screen: from bottom-left to top-right (rows point down)
    assert diagonal[10 - 3, 10 + 3] > 0.02 and diagonal[10 + 3, 10 + 3] < 1e-6
    for fam in ("airy", "defocus"):
        h = kernel(fam, 3.0, 21, dtype=torch.float64)
        torch.testing.assert_close(h, h.T), torch.testing.assert_close(h, h.flip(1))


def test_airy_first_dark_ring_is_at_theta():
    # pixel-integrated pattern: along the row through the centre, the minimum near r = theta for theta = 6
    h = kernel("airy", 6.0, 21, dtype=torch.float64)
    row = h[10, 10:]
    assert int(torch.argmin(row[:9])) == 6


def test_initial_kernels_and_errors():
    torch.testing.assert_close(wide(21), torch.full((21, 21), 1 / 441))
    torch.testing.assert_close(small(21), kernel("gaussian", 1.5, 21))
    with pytest.raises(ValueError, match="unknown blur family"):
        kernel("box", 1.0)
    with pytest.raises(ValueError, match="theta must be >= 0"):
        kernel("gaussian", -1.0)
    with pytest.raises(ValueError, match="motion family only"):
        kernel("gaussian", 1.0, angle=3)
    with pytest.raises(TypeError):
        kernel("gaussian", 1.0, width=3)  # no other option exists
    for family in FAMILIES:  # every family takes angle=None, positionally or by name (as a ** dict)
        torch.testing.assert_close(kernel(family, 2.0, 9, None), kernel(family, 2.0, 9, **{"angle": None}))
    torch.testing.assert_close(kernel("motion", 2.0, 9, None), kernel("motion", 2.0, 9, angle=0))
    assert set(FAMILIES) == {"gaussian", "motion", "airy", "defocus"}


# ---------------------------------------------------------------------------------------------------------------
# Simplex projection vs bisection on the threshold: P(v) = max(v - tau, 0) with sum max(v - tau, 0) = 1
# ---------------------------------------------------------------------------------------------------------------


def bisection_projection(v: torch.Tensor) -> torch.Tensor:
    v = v.double()
    lo, hi = v.min() - 1.0, v.max()  # f(lo) >= n >= 1, f(hi) = 0 < 1
    for _ in range(200):
        mid = (lo + hi) / 2
        if torch.clamp(v - mid, min=0).sum() > 1:
            lo = mid
        else:
            hi = mid
    return torch.clamp(v - (lo + hi) / 2, min=0)


def cases():
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(50, generator=g, dtype=torch.float64) * s for s in (0.01, 1.0, 10.0)]
    rows += [torch.rand(30, generator=g, dtype=torch.float64) / 30]  # nearly inside already
    rows += [torch.tensor([0.3, 0.3, 0.3, 0.1, -2.0], dtype=torch.float64)]  # ties
    rows += [torch.full((7,), 0.5, dtype=torch.float64)]  # all tied
    rows += [-torch.rand(9, generator=g, dtype=torch.float64) - 1]  # all negative
    rows += [torch.eye(6, dtype=torch.float64)[2]]  # one-hot: already on the simplex
    rows += [torch.eye(6, dtype=torch.float64)[4] * 5]  # one-hot, scaled
    return rows


@pytest.mark.parametrize("i", range(len(cases())))
def test_projection_matches_bisection(i):
    v = cases()[i]
    p = project_simplex(v)
    torch.testing.assert_close(p, bisection_projection(v), rtol=0, atol=1e-12)
    assert (p >= 0).all() and abs(p.sum().item() - 1) < 1e-12


def test_projection_rows_of_a_batch_are_independent():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(64, 3, 3, generator=g, dtype=torch.float64) * torch.logspace(-2, 1, 64, dtype=torch.float64).view(-1, 1, 1)
    batch = project_simplex(v, dims=2)
    for k in range(64):
        assert torch.equal(batch[k], project_simplex(v[k : k + 1], dims=2)[0])
        torch.testing.assert_close(batch[k].flatten(), bisection_projection(v[k].flatten()), rtol=0, atol=1e-12)


def test_projection_gradient_is_the_closed_form():
    # on the active set S the Jacobian is I - 11^T / |S| (zero outside S)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(12, generator=g, dtype=torch.float64).requires_grad_()
    p = project_simplex(v)
    w = torch.randn(12, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((p * w).sum(), v)
    s = (p > 0).double()
    expected = s * (w - (w * s).sum() / s.sum())
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)
