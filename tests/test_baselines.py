"""Classical baselines on the Section 2.2 sweep: TV's value in closed form, its maximum-likelihood lambda, and the
baseline rows of the sweep table against independent computations."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from diractrap import kernels
from diractrap.baselines import fit_baselines, fit_tv_lambda, tv
from diractrap.priors import GaussianPrior
from diractrap.sweeps import COLUMNS, baseline_sweep, merge, relative, sweep
from test_sweeps import _reflect_blur  # h * x at the size of x, written independently (reflect pad + conv2d)

K = 5


def test_tv_of_a_ramp_and_a_step_in_closed_form():
    # a ramp x[i, j] = a i + b j: interior pixels have |grad| = sqrt(a^2 + b^2); the last column has only the
    # vertical difference a, the last row only the horizontal one b, the corner none
    H, W, a, b = 5, 7, 0.03, -0.02
    i, j = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    ramp = (0.5 + a * i + b * j)[None, None]
    expected = (H - 1) * (W - 1) * math.hypot(a, b) + (H - 1) * abs(a) + (W - 1) * abs(b)
    np.testing.assert_allclose(tv(ramp), [expected], rtol=1e-12)
    # a vertical edge of height 1 in each of 3 channels: one jump per row and channel
    step = torch.zeros(1, 3, H, W, dtype=torch.float64)
    step[..., W // 2 :] = 1
    np.testing.assert_allclose(tv(torch.cat([step, 0.5 * step])), [3 * H, 1.5 * H], rtol=1e-12)
    assert tv(torch.full((2, 3, 4, 4), 0.3)).abs().max() == 0


def test_tv_lambda_maximises_the_likelihood_of_the_gradients():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam = fit_tv_lambda(x)
    n = x.numel()  # one gradient vector per channel and pixel

    def loglik(l):  # sum over gradient vectors of log(l^2 / (2 pi) exp(-l |g|))
        return n * math.log(l**2 / (2 * math.pi)) - l * float(tv(x).sum())

    assert loglik(lam) > loglik(1.01 * lam) and loglik(lam) > loglik(0.99 * lam)
    with pytest.raises(ValueError, match="constant"):
        fit_tv_lambda(torch.zeros(1, 1, 4, 4))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(3)
    return torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64)


def test_baseline_rows_match_independent_computations(images):
    train = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    pots = fit_baselines(train, sigma_min=0.01)
    thetas = [0.0, 1.0, 2.0]
    df = baseline_sweep(pots, images, "gaussian", thetas, model="m", item_ids=[7, 8, 9], kernel_size=K)
    assert list(df.columns) == COLUMNS and len(df) == 2 * 3 * 3
    assert set(df.prior) == {"tv", "gaussian"} and (df.model == "m").all() and (df.nfe == 0).all()
    lam = pots["tv"][1]["lambda"]
    gauss = GaussianPrior.fit(train, sigma_min=0.01)  # fitted again, independently of fit_baselines
    for t in thetas:
        x = _reflect_blur(images, kernels.kernel("gaussian", t, K, dtype=torch.float64))
        rows = df[df.theta == t].set_index(["prior", "item"])["q"]
        np.testing.assert_allclose([rows["tv", i] for i in (7, 8, 9)], lam * tv(x).numpy(), rtol=1e-12)
        np.testing.assert_allclose([rows["gaussian", i] for i in (7, 8, 9)], gauss.potential(x).numpy(), rtol=1e-10)
    # theta = 0 is delta: the images themselves
    np.testing.assert_allclose(df[(df.prior == "tv") & (df.theta == 0)].q, lam * tv(images).numpy(), rtol=1e-12)


def test_baseline_rows_join_the_diffusion_table(images):
    prior = GaussianPrior.power_law((1, 8, 8), c=2e-3, alpha=2.0, mean=0.45)
    thetas = [0.0, 1.0]
    diff = sweep(prior, images, "defocus", thetas, kernel_size=K, model="m", solver="heun", steps=4)
    base = baseline_sweep(fit_baselines(images), images, "defocus", thetas, model="m", kernel_size=K)
    table = merge([diff, base])  # no repeated key: the prior column tells the rows apart
    assert len(table) == 3 * len(diff)
    dq = relative(table)
    assert (dq[table.theta == 0] == 0).all()
    # relative potentials stay within a prior: the TV row's dq is its own difference
    tv_rows = table[(table.prior == "tv") & (table.item == 1)].set_index("theta")["q"]
    got = dq[(table.prior == "tv") & (table.item == 1) & (table.theta == 1.0)].item()
    assert got == pytest.approx(tv_rows[1.0] - tv_rows[0.0], rel=1e-12)
    # blur lowers TV on these noise images (smoother gradients): the classical prior prefers the blurred image
    assert (table[(table.prior == "tv") & (table.theta == 1.0)].q.to_numpy()
            < table[(table.prior == "tv") & (table.theta == 0.0)].q.to_numpy()).all()


def test_merge_reads_tables_written_before_the_prior_column():
    old = pd.DataFrame(dict(model=["m"], family=["airy"], angle=[np.nan], item=[0], theta=[0.0], q=[1.0]))
    assert merge([old]).prior.tolist() == ["diffusion"]
