"""Algorithm 1's presets and kernel steps (issue: Figures 4-5 by the algorithm that made them).

Checks against independent computations: the authors' schedules written out from their loop's formulas, one
iteration of the paper's Algorithm 1 written out by hand, the Douglas-Rachford fixed point against the dense
minimiser of the objective its prox step implies, and the ratchet of the chain-rule kernel step.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from diractrap import deconv
from diractrap.blur import conv, conv_adjoint, conv_adjoint_kernel
from diractrap.deconv import PRESETS, STEP_CAP, Algorithm1Params, algorithm1, preset
from diractrap.kernels import kernel, project_simplex

from test_deconv import D64, closed_form_map, gaussian_prior, problem


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


# ---------------------------------------------------------------------------------------------------------------
# The presets
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_is_a_complete_parameter_set(name):
    fields = {f.name for f in dataclasses.fields(Algorithm1Params)}
    assert set(PRESETS[name]) == fields  # nothing left to a default or a config
    p = preset(name)
    want = {k: (tuple(v) if isinstance(v, list) else v) for k, v in PRESETS[name].items()}
    assert {k: getattr(p, k) for k in fields} == want
    assert preset(name, n_ext=7).n_ext == 7
    with pytest.raises(ValueError, match="unknown Algorithm 1 parameter"):
        preset(name, n_exts=7)
    with pytest.raises(ValueError, match="unknown Algorithm 1 preset"):
        preset("paperr")


def test_authors_schedules_follow_their_loop():
    """Written out from their optimization_loop: lr_x *= 0.999 at the start of every outer loop (of `reset` kernel
    steps), the DR denoiser at 0.03 lr_x, inner steps max(50 - i 40/15, 10) truncated, kernel step
    clip(r_n max|h| / max|g|, 1e-7, 1e-3) with r = logspace(-2, -7, N)."""
    p = preset("authors")
    for n in (0, 99, 100, 250, 2999):
        lr_x = 5e-2 * 0.999 ** (n // 100 + 1)
        assert p.resolved_gamma_x(n) == pytest.approx(lr_x, rel=1e-12)
        assert p.resolved_dr_sigma(n) == pytest.approx(0.03 * lr_x, rel=1e-12)
        assert p.prior_weight(n) == pytest.approx((0.03 * lr_x) ** 2 / lr_x, rel=1e-12)
    steps = np.maximum(50 - np.arange(100) * 40 / 15, 10).astype(np.int16)
    assert [p.inner_steps(n) for n in range(300)] == steps.tolist() * 3
    assert (p.inner, p.kernel_step, p.kernel_schedule, p.pad) == ("douglas-rachford", "projected", "log-relative",
                                                                  "observed")
    assert p.dr_restart and p.dr_clamp == 0.2 and (p.cg_iter, p.cg_tol) == (1000, 1e-5)
    np.testing.assert_allclose(p.rel_schedule(), np.logspace(-2, -7, 3000), rtol=1e-12)  # at their 3000 iterations


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # no inner step: grad_x_rel is 0 / 0 throughout
def test_authors_step_budget_does_not_depend_on_the_iteration_count():
    """Their r_n = logspace(-2, -7, N) over N = 3000 iterations sums to a budget that a shorter run (n_ext = 200)
    used to spend only 7 % of; the preset rescales the log-spaced schedule to keep the sum, an explicit rel_step is
    used as given, and Algorithm 1 takes its steps from that schedule."""
    r0, r_end, N = 1e-2, 1e-7, 3000
    rho = (r_end / r0) ** (1 / (N - 1))
    budget = r0 * (1 - rho**N) / (1 - rho)  # the geometric series in closed form
    for n_ext in (200, 3000):
        r = preset("authors", n_ext=n_ext).rel_schedule()
        assert r.shape == (n_ext,)
        # summing 3000 positive float64 terms and the closed form's 1 - rho (~4e-3) both lose < 1e-13 relative
        assert r.sum() == pytest.approx(budget, rel=1e-12)
        np.testing.assert_allclose(np.diff(np.log10(r)), -5 / (n_ext - 1), rtol=1e-9)  # log-spaced by 1e-5 overall
    assert preset("paper").rel_budget == preset("authors").rel_budget  # (unused by the paper's constant step)
    explicit = preset("authors", n_ext=200, rel_step=(0.1, 1e-6))
    assert explicit.rel_budget is None
    np.testing.assert_allclose(explicit.rel_schedule(), np.logspace(-1, -6, 200), rtol=1e-12)
    assert preset("authors", rel_step=(0.1, 1e-6), rel_budget=1.0).rel_schedule().sum() == pytest.approx(1.0)

    # the run: x held at its start (no inner step) and no upper clip, so step_n = r_n max|h_n| / max|grad_h Ly|
    prior = gaussian_prior((1, 12, 12))
    _, _, y = problem(H=12, W=12, K=5, sigma=0.02)
    p = preset("authors", n_ext=200, n_in=0, n_in_first=None, inner="gradient", pad="replicate", gamma_h_max=1e9,
               sigma_g=0.05)
    res = algorithm1(prior, y, "wide", kernel_size=5, params=p, snapshots=1, progress=False)
    assert res.settings["rel_budget_used"] == pytest.approx(budget, rel=1e-12)
    row = deconv.table_rows(res)[0]  # what the table and summary.json carry
    r = p.rel_schedule()
    assert row["rel_budget_used"] == res.settings["rel_budget_used"] and row["rel_budget"] == p.rel_budget
    assert row["rel_step_used"] == str((float(r[0]), float(r[-1])))
    x = torch.nn.functional.pad(y, (2, 2, 2, 2), mode="replicate")
    h = torch.from_numpy(res.trajectory["h"][:-1, 0]).double()  # h_n before step n (stored in float32)
    g = deconv.grad_h(x.expand(len(h), -1, -1, -1), h, y.expand(len(h), -1, -1, -1))
    ratio = (h.flatten(1).amax(1) / g.flatten(1).abs().amax(1)).numpy()
    steps = res.history["gamma_h"][:, 0]
    free = steps > 1e-7  # the authors' lower clip of the step
    assert free.mean() > 0.9
    # h_n in float32 (relative rounding 6e-8) moves max|grad_h| by about as much
    np.testing.assert_allclose(steps[free] / ratio[free], p.rel_schedule()[free], rtol=1e-5)


def test_one_iteration_of_the_paper_preset_by_hand():
    """The paper's Algorithm 1 written out: x_{i+1} = x_i - gamma_x grad_x Ly (N_in times, x_0 = y extended), then
    theta <- theta - gamma_h J_P(theta)^T grad_h Ly with gamma_h = 1/L_h at the first step."""
    prior = gaussian_prior((1, 12, 12))
    _, h, y = problem(H=12, W=12, K=5, sigma=0.02)
    sigma, sigma_g, K = 0.02, 0.05, 5
    p = preset("paper", n_ext=2, n_in=3, sigma=sigma, sigma_g=sigma_g)
    res = algorithm1(prior, y, "wide", kernel_size=K, params=p, progress=False)

    theta = torch.full((1, K, K), 1.0 / K**2, dtype=D64)
    x = torch.nn.functional.pad(y, (2, 2, 2, 2), mode="replicate")
    gamma_x = 1 / (1 + sigma**2 / sigma_g**2)
    gamma_h = None
    _, v = deconv.kernel_lipschitz(x, K, return_vector=True)  # L_h tracked from the start, as the library does
    for _ in range(2):
        hk = project_simplex(theta, dims=2)
        for _ in range(3):
            score = (prior(x, torch.full((1,), sigma_g, dtype=D64)) - x) / sigma_g**2
            x = x - gamma_x * (conv_adjoint(conv(x, hk, "valid") - y, hk, "valid") - sigma**2 * score)
        g = conv_adjoint_kernel(conv(x, hk, "valid") - y, x, K, "valid")
        on = (hk > 0).to(D64)
        g = (g - (g * on).sum() / on.sum()) * on  # J_P^T g: minus its mean on the support, zero off it
        lip, v = deconv.kernel_lipschitz(x, K, n_iter=3, v0=v, return_vector=True)
        if gamma_h is None:
            gamma_h = 1 / lip  # fixed from the first kernel step on
        theta = theta - gamma_h.view(-1, 1, 1) * g
    torch.testing.assert_close(res.x, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.theta, theta, rtol=0, atol=1e-12)


def test_authors_prox_step_converges_to_the_objective_it_implies():
    """With a Gaussian prior N(m, S) the denoiser D(., sigma_d) is exactly prox_{sigma_d^2 q}, so the authors'
    Douglas-Rachford loop with a fixed kernel converges to argmin 1/2||h*x - y||^2 + lambda q(x) with
    lambda = sigma_d^2 / gamma_x = 0.03^2 gamma_x (not the paper's sigma^2)."""
    # a prior strong enough against lambda = 4.5e-5 that the minimiser is well conditioned (S ~ 1e-5 .. 1e-4)
    prior = gaussian_prior((1, 10, 10), c=1e-5)
    x_true, h, y = problem(sigma=0.01)
    _, y_full = deconv.make_problem(x_true, h, sigma=0.01, seed=0, full=True)
    p = preset("authors", n_ext=1, n_in=1, n_in_first=400, n_in_warmup=1, kernel_schedule="constant", gamma_h=0.0)
    lam = p.prior_weight(0)
    assert lam == pytest.approx(0.03**2 * 0.05 * 0.999)
    ref = closed_form_map(prior, h, y, math.sqrt(lam), 0.0)  # weight lambda on q of N(m, S) exactly
    assert ref.min() > -0.2 and ref.max() < 1.2  # the clipping of z is inactive at the solution
    # with the data prox solved exactly (CG to rounding) the loop reaches the minimiser (5e-10 measured)
    exact = algorithm1(prior, y, h, params=dataclasses.replace(p, cg_tol=1e-30), y_full=y_full, progress=False)
    assert ((exact.x - ref).norm() / ref.norm()).item() < 1e-4
    assert exact.history["grad_x_rel"][-1, 0] < 1e-6  # and the run itself says the x-subproblem was solved
    # with the authors' CG stopping rule (squared residual < 1e-5, warm-started) it stalls at 5.5e-4 relative here;
    # grad_x_rel shows it (2.1e-3)
    theirs = algorithm1(prior, y, h, params=p, y_full=y_full, progress=False)
    assert 1e-4 < ((theirs.x - ref).norm() / ref.norm()).item() < 2e-3
    assert 1e-3 < theirs.history["grad_x_rel"][-1, 0] < 1e-2


@pytest.mark.parametrize("name", ["paper", "authors"])
def test_batching_does_not_change_either_preset(name):
    prior = gaussian_prior((2, 14, 14))
    x, h, y = problem(B=3, C=2, H=14, W=14, K=5, sigma=0.02)
    _, y_full = deconv.make_problem(x, h, sigma=0.02, seed=0, full=True)
    p = preset(name, n_ext=8, n_in=2, n_in_first=None if name == "paper" else 6, reset=4, sigma_g=0.01)
    h0 = torch.stack([deconv.initial_kernels(i, 5, 1, dtype=D64)[0] for i in ("wide", "small", "wide")])
    res = algorithm1(prior, y, h0, params=p, y_full=y_full, progress=False)
    for b in range(3):
        alone = algorithm1(prior, y[b : b + 1], h0[b : b + 1], params=p, y_full=y_full[b : b + 1], progress=False)
        torch.testing.assert_close(alone.x[0], res.x[b], rtol=0, atol=1e-10)
        torch.testing.assert_close(alone.h[0], res.h[b], rtol=0, atol=1e-10)
        np.testing.assert_allclose(alone.history["step_L"][:, 0], res.history["step_L"][:, b], rtol=1e-9)


def test_full_observation_has_y_as_its_valid_centre():
    x, h, _ = problem(B=2, H=12, W=12, K=5)
    y = deconv.make_problem(x, h, sigma=0.05, seed=3, item_ids=[4, 9])
    y2, y_full = deconv.make_problem(x, h, sigma=0.05, seed=3, item_ids=[4, 9], full=True)
    torch.testing.assert_close(y2, y, rtol=0, atol=0)  # y does not change when the border is asked for
    torch.testing.assert_close(y_full[..., 2:-2, 2:-2], y, rtol=0, atol=0)  # the valid centre (K = 5)
    border = y_full - torch.nn.functional.pad(y, (2, 2, 2, 2))
    assert border[..., :2, :].std() > 0.02  # noisy border, not a copy
    with pytest.raises(ValueError, match="y_full"):
        algorithm1(gaussian_prior((1, 12, 12)), y[:1], "wide", kernel_size=5, params=preset("authors", n_ext=1),
                   progress=False)


# ---------------------------------------------------------------------------------------------------------------
# Kernel steps: the ratchet of the chain rule, the 2 / L_h bound
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_step", ["chain", "projected"])
def test_chain_step_is_a_ratchet_and_projected_regrows(kernel_step):
    """x held at the truth, target h_bar a Gaussian of std 3 on 15x15, theta with 5 pixels on the support and the
    others below the projection's threshold (pixels that have left the support): 3000 kernel steps of 1/L_h with
    Algorithm 1's own step functions. The chain-rule step keeps exactly those 5 pixels; the projected step regrows
    the kernel to the target."""
    K = 15
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 40, 40, generator=g, dtype=D64)
    h_bar = kernel("gaussian", 3.0, K, dtype=D64)
    y = conv(x, h_bar, "valid")
    theta = torch.full((1, K, K), -0.05, dtype=D64)
    theta[0, 7, 5:10] = 0.2  # P(theta): a 5-pixel bar; the rest has left the support
    on0 = project_simplex(theta, dims=2) > 0
    step = 1 / deconv.kernel_lipschitz(x, K, n_iter=100)
    for _ in range(3000):
        h = project_simplex(theta, dims=2)
        gh = deconv.grad_h(x, h, y)
        if kernel_step == "chain":
            theta = theta - step * deconv._chain_simplex(theta, gh)
        else:
            theta = project_simplex(theta - step * gh, dims=2)
    h = project_simplex(theta, dims=2)
    if kernel_step == "chain":
        assert torch.equal(h > 0, on0)  # not one pixel came back
    else:
        assert int((h > 0).sum()) > 100
        assert (h - h_bar).norm() < 0.1 * (project_simplex(torch.where(on0, 0.2, 0.0), dims=2) - h_bar).norm()


def test_kernel_steps_are_bounded_by_two_over_lipschitz():
    with pytest.raises(ValueError, match=r"gamma_h_scale must be in \(0, 2\)"):
        Algorithm1Params(kernel_schedule="lipschitz", gamma_h_scale=2.0)
    Algorithm1Params(kernel_schedule="lipschitz", gamma_h_scale=1.9)
    prior = gaussian_prior((1, 12, 12))
    _, _, y = problem(H=12, W=12, K=5, sigma=0.02)
    p = Algorithm1Params(n_ext=5, n_in=2, kernel_schedule="constant", gamma_h=1e3, sigma=0.02, sigma_g=0.05)
    with pytest.warns(UserWarning, match="clamped on"):
        res = algorithm1(prior, y, "wide", kernel_size=5, params=p, progress=False)
    np.testing.assert_allclose(res.history["step_L"][:, 0], STEP_CAP, rtol=1e-12)
    assert res.settings["kernel_steps_clamped"] == [5]
    ok = algorithm1(prior, y, "wide", kernel_size=5, params=dataclasses.replace(p, gamma_h=None), progress=False)
    assert ok.settings["kernel_steps_clamped"] == [0]


def test_grad_x_rel_says_whether_the_x_subproblem_was_solved():
    prior = gaussian_prior((1, 12, 12))
    _, h, y = problem(H=12, W=12, K=5, sigma=0.05)
    base = dict(n_ext=3, reset=3, sigma=0.05, sigma_g=0.05, kernel_schedule="constant", gamma_h=0.0)
    one = algorithm1(prior, y, h, params=Algorithm1Params(n_in=1, **base), progress=False)
    assert one.history["grad_x_rel"][0, 0] == pytest.approx(1.0)  # first and last inner step are the same
    many = algorithm1(prior, y, h, params=Algorithm1Params(n_in=400, **base), progress=False)
    assert many.history["grad_x_rel"][0, 0] < 1e-3
    assert many.history["grad_x_rel"].shape == (3, 1)
