"""The MAP objective, Algorithm 1 and the metrics against closed forms and independent computations.

Gaussian priors make every check exact: for N(m, S), (x - D(x, sigma_g)) / sigma_g^2 = (S + sigma_g^2 I)^{-1}(x - m)
is the exact gradient of the potential of N(m, S + sigma_g^2 I), so the x-iterations must converge to the dense
solution of a linear system.
"""

import json

import numpy as np
import pytest
import torch

from diractrap import deconv
from diractrap.blur import conv
from diractrap.deconv import Algorithm1Params, NonFiniteError, algorithm1, metrics
from diractrap.metrics import _shift_kernel
from diractrap.kernels import dirac, kernel, project_simplex
from diractrap.priors import GaussianPrior

D64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


def gaussian_prior(shape, alpha=1.0, eps=0.1, c=1e-2):
    """A well-conditioned stationary Gaussian: spectrum c / (eps + |f|)^alpha in [0.0125, 0.1] for alpha 1."""
    return GaussianPrior.power_law(shape, c=c, alpha=alpha, eps=eps, mean=0.5)


def problem(B=1, C=1, H=10, W=10, K=3, sigma=0.1, seed=0):
    """x (B, C, H, W) in [0, 1], a Gaussian kernel per item, y = valid(h * x) + noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g, dtype=D64)
    h = kernel("gaussian", torch.linspace(0.7, 1.2, B), K, dtype=D64)
    y = deconv.make_problem(x, h, sigma=sigma, seed=seed)
    return x, h, y


def dense(op, n_in, shape_in):
    """The matrix of a linear map on tensors of shape ``shape_in`` (columns = images of basis vectors)."""
    cols = [op(torch.eye(n_in, dtype=D64)[j].view(1, *shape_in)).flatten() for j in range(n_in)]
    return torch.stack(cols, 1)


def closed_form_map(prior, h, y, sigma, sigma_g):
    """argmin_x 1/2||A x - y||^2 + sigma^2/2 (x - m)^T (S + sigma_g^2 I)^{-1} (x - m), solved densely."""
    shape = prior.shape
    n = int(np.prod(shape))
    A = dense(lambda e: conv(e, h[:1], "valid"), n, shape)
    # the covariance S + sigma_g^2 I: apply the eigen-decomposition to basis vectors
    S = dense(lambda e: prior._synthesis(prior._analysis(e) * prior.lam), n, shape)
    S = S + sigma_g**2 * torch.eye(n, dtype=D64)
    P = torch.linalg.inv(0.5 * (S + S.T))
    m = prior.mean.expand(shape).flatten()
    lhs = A.T @ A + sigma**2 * P
    rhs = A.T @ y.flatten() + sigma**2 * P @ m
    return torch.linalg.solve(lhs, rhs).view(1, *shape)


# ---------------------------------------------------------------------------------------------------------------
# The objective and its gradients
# ---------------------------------------------------------------------------------------------------------------


def test_extend_is_inverted_by_the_dirac_kernel():
    y = torch.rand(2, 3, 9, 7, dtype=D64)
    for K in (5, 4):
        for mode in ("replicate", "reflect"):
            x = deconv.extend(y, K, mode)
            assert x.shape == (2, 3, 9 + K - 1, 7 + K - 1)
            torch.testing.assert_close(conv(x, dirac(K, dtype=D64), "valid"), y, rtol=0, atol=1e-12)


def test_grad_x_is_the_gradient_of_the_smoothed_gaussian_objective():
    """grad_x Ly with the small-noise score equals autograd of 1/2||h*x-y||^2 + sigma^2 q_{sigma_g}(x), exactly."""
    prior = gaussian_prior((2, 8, 8))
    _, h, y = problem(B=2, C=2, H=8, W=8, K=3)
    x = torch.rand(2, 2, 8, 8, dtype=D64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    sigma, sigma_g = 0.05, 0.02
    L = deconv.data_term(x, h, y) + sigma**2 * prior.potential(x, sigma=sigma_g)
    (ref,) = torch.autograd.grad(L.sum(), x)
    got = deconv.grad_x(prior, x.detach(), h, y, sigma=sigma, sigma_g=sigma_g)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)  # float64 FFTs: agreement to rounding


def test_grad_theta_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    B, K = 2, 5
    x = torch.rand(B, 3, 12, 12, generator=g, dtype=D64)
    y = torch.rand(B, 3, 12 - K + 1, 12 - K + 1, generator=g, dtype=D64)
    theta = 0.08 * torch.randn(B, K, K, generator=g, dtype=D64) + 1.0 / K**2  # some entries fall off the support
    h = project_simplex(theta, dims=2)
    assert (h == 0).any() and (h > 0).sum() > 5, "the test needs a partial support"
    # stay away from the kinks of P: every theta_j is at least 1e-5 (100 eps) from its item's threshold tau
    # (h = theta - tau on the support), so the finite differences below never cross one
    tau = torch.stack([(theta[b] - h[b])[h[b] > 0][0] for b in range(B)]).view(B, 1, 1)
    assert (theta - tau).abs().min() > 1e-5
    grad = deconv.grad_theta(x, theta, y)
    eps = 1e-7
    fd = torch.zeros_like(theta)
    for b in range(B):
        for i in range(K):
            for j in range(K):
                tp, tm = theta.clone(), theta.clone()
                tp[b, i, j] += eps
                tm[b, i, j] -= eps
                fp = deconv.data_term(x, project_simplex(tp, dims=2), y)[b]
                fm = deconv.data_term(x, project_simplex(tm, dims=2), y)[b]
                fd[b, i, j] = (fp - fm) / (2 * eps)
    # central differences of a piecewise quadratic: error ~ eps^2 * curvature + rounding ~ 1e-16 * |f| / eps ~ 1e-8
    torch.testing.assert_close(grad, fd, rtol=0, atol=1e-6 * grad.abs().max().item())
    # the prior term does not depend on theta, so this is all of grad_theta Ly; and autograd through P agrees
    t = theta.clone().requires_grad_()
    (auto,) = torch.autograd.grad(deconv.data_term(x, project_simplex(t, dims=2), y).sum(), t)
    torch.testing.assert_close(grad, auto, rtol=1e-9, atol=1e-12)


def test_kernel_lipschitz_is_the_top_eigenvalue_on_zero_sum_kernels():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 2, 9, 9, generator=g, dtype=D64)
    K = 3
    M = dense(lambda v: deconv.conv_adjoint_kernel(conv(x, v.view(1, K, K), "valid"), x, K, "valid"), K * K, (K, K))
    Pz = torch.eye(K * K, dtype=D64) - 1.0 / K**2
    top = torch.linalg.eigvalsh(Pz @ M @ Pz).max()
    got = deconv.kernel_lipschitz(x, K, n_iter=200)
    assert abs(got.item() - top.item()) / top.item() < 1e-6  # power iteration, 200 steps on a 9x9 operator


def test_objective_terms_add_up():
    prior = gaussian_prior((1, 10, 10))
    x, h, y = problem()
    q = prior.potential(x)
    t = deconv.objective(x, h, y, q, sigma=0.1)
    torch.testing.assert_close(t["total"], t["data"] + 0.01 * q)
    torch.testing.assert_close(t["data"], 0.5 * ((conv(x, h, "valid") - y) ** 2).sum((1, 2, 3)))


# ---------------------------------------------------------------------------------------------------------------
# The x-iterations converge to the closed-form MAP
# ---------------------------------------------------------------------------------------------------------------


def test_map_x_converges_to_the_dense_gaussian_map():
    sigma, sigma_g = 0.1, 0.05
    prior = gaussian_prior((1, 10, 10))
    _, h, y = problem(sigma=sigma)
    ref = closed_form_map(prior, h, y, sigma, sigma_g)
    # gamma = 1/L = 0.2, the Hessian's smallest eigenvalue >= sigma^2/(lam_max + sigma_g^2) = 0.098: the error
    # contracts by at least 1 - 0.2 * 0.098 per step, i.e. < 1e-25 after 3000 steps; rounding dominates
    got = deconv.map_x(prior, y, h, n_iter=3000, sigma=sigma, sigma_g=sigma_g)
    assert ((got - ref).norm() / ref.norm()).item() < 1e-8


def test_algorithm1_with_the_true_kernel_and_no_kernel_step_is_the_map():
    sigma, sigma_g = 0.1, 0.05
    prior = gaussian_prior((1, 10, 10))
    _, h, y = problem(sigma=sigma)
    ref = closed_form_map(prior, h, y, sigma, sigma_g)
    params = Algorithm1Params(n_ext=300, n_in=10, gamma_h=0.0, kernel_schedule="constant", reset=1000, sigma=sigma,
                              sigma_g=sigma_g)
    res = algorithm1(prior, y, h, params=params, progress=False)
    assert ((res.x - ref).norm() / ref.norm()).item() < 1e-8  # as above: 3000 gradient steps without reset
    torch.testing.assert_close(res.h, h)


def test_douglas_rachford_converges_to_the_dense_gaussian_map():
    """With the exact Gaussian denoiser D(., sigma_d), sigma_d^2 = gamma sigma^2, as the prox of gamma sigma^2 q,
    the Douglas-Rachford iterations converge to the MAP of N(m, S) itself (no sigma_g smoothing)."""
    sigma = 0.1
    prior = gaussian_prior((1, 10, 10))
    _, h, y = problem(sigma=sigma)
    ref = closed_form_map(prior, h, y, sigma, 0.0)
    # no clipping of z (the authors clip to [-0.2, 1.2]); CG to ||r||^2 <= 1e-30 so that the prox is exact to rounding
    params = Algorithm1Params(n_ext=40, n_in=50, gamma_h=0.0, kernel_schedule="constant", reset=1000, sigma=sigma,
                              inner="douglas-rachford",
                              gamma_x=1.0, dr_clamp=1e6, cg_tol=1e-30)
    res = algorithm1(prior, y, h, params=params, progress=False)
    # DR on a strongly convex sum converges linearly: 2000 steps reach rounding (~1e-14 measured); CG's stopping
    # rule is the only other error source
    assert ((res.x - ref).norm() / ref.norm()).item() < 1e-10
    assert res.settings["dr_sigma_used"] == pytest.approx(sigma)


# ---------------------------------------------------------------------------------------------------------------
# Algorithm 1: the simplex, batching, snapshots, NaN reporting
# ---------------------------------------------------------------------------------------------------------------


def small_run(B=3, inner="gradient", kernel_step="chain", schedule="lipschitz", n_ext=12, snapshots=1):
    prior = gaussian_prior((2, 14, 14))
    x, h, y = problem(B=B, C=2, H=14, W=14, K=5, sigma=0.02)
    params = Algorithm1Params(n_ext=n_ext, n_in=4, reset=5, sigma=0.02, sigma_g=0.01, inner=inner,
                              kernel_step=kernel_step, kernel_schedule=schedule,
                              gamma_h=1e-3 if schedule == "constant" else None)
    h0 = torch.stack([deconv.initial_kernels(i, 5, 1, dtype=D64)[0] for i in ("wide", "small", "wide")][:B])
    return prior, y, h0, params, algorithm1(prior, y, h0, params=params, snapshots=snapshots, progress=False)


@pytest.mark.parametrize("kernel_step", ["chain", "projected"])
def test_every_kernel_iterate_is_on_the_simplex(kernel_step):
    *_, res = small_run(kernel_step=kernel_step)
    hs = torch.from_numpy(res.trajectory["h"])
    assert hs.shape == (13, 3, 5, 5) and list(res.trajectory["iteration"]) == list(range(13))
    assert (hs >= 0).all()
    torch.testing.assert_close(hs.sum((-2, -1)), torch.ones(13, 3), rtol=0, atol=1e-6)  # stored as float32
    # and the kernel moved: the test is not vacuous
    assert (hs[-1] - hs[0]).abs().max() > 1e-4


@pytest.mark.parametrize(
    "inner,schedule",
    [
        ("gradient", "lipschitz"),
        ("gradient", "constant"),
        ("douglas-rachford", "log-relative"),
        ("gradient", "log-relative"),
    ],
)
def test_batching_does_not_change_results(inner, schedule):
    prior, y, h0, params, res = small_run(inner=inner, schedule=schedule, snapshots=None)
    for b in range(3):
        alone = algorithm1(prior, y[b : b + 1], h0[b : b + 1], params=params, progress=False)
        # float64, per-item operations only: batched and single FFTs agree to rounding
        torch.testing.assert_close(alone.x[0], res.x[b], rtol=0, atol=1e-10)
        torch.testing.assert_close(alone.h[0], res.h[b], rtol=0, atol=1e-10)


def test_snapshots_and_reset():
    prior, y, h0, params, res = small_run(n_ext=12, snapshots=[3, 5, 99])
    t = res.trajectory
    assert list(t["iteration"]) == [0, 3, 5, 12]
    assert t["x"].shape == (4, 3, 2, 14, 14) and t["data"].shape == (4, 3)
    np.testing.assert_allclose(t["x"][0], deconv.extend(y, 5).float().numpy())
    assert np.isfinite(t["data"]).all() and (t["data"][-1] < t["data"][0]).all()


def test_nan_stops_the_run_naming_the_iteration_and_the_term():
    prior = gaussian_prior((1, 10, 10))
    _, h, y = problem()
    calls = {"n": 0}

    class Broken:
        sigma_min, sigma_max, data_range = prior.sigma_min, prior.sigma_max, prior.data_range

        def __call__(self, x, sigma, labels=None):
            calls["n"] += 1
            out = prior(x, sigma)
            return out * float("nan") if calls["n"] > 25 else out

    with pytest.raises(NonFiniteError, match=r"prior gradient.*n = 6, inner step 1"):
        algorithm1(Broken(), y, "wide", kernel_size=3, params=Algorithm1Params(n_ext=10, n_in=4), progress=False)


def test_lipschitz_kernel_step_decays_log_linearly():
    # gamma_x = 0 keeps x = y: the tracked L_h(x) is then the same sequence in both runs, whatever the kernels do,
    # so the two step sequences differ exactly by the decay factor gamma_h_decay ** (n / N_ext) of iteration n.
    prior = gaussian_prior((1, 10, 10))
    _, _, y = problem(K=3)
    runs = [algorithm1(prior, y, "wide", kernel_size=3, snapshots=1, progress=False,
                       params=Algorithm1Params(n_ext=20, n_in=1, gamma_x=0.0, gamma_h_scale=0.5, gamma_h_decay=d))
            for d in (1.0, 1e-2)]
    steps = [r.trajectory["gamma_h"][1:, 0] for r in runs]  # after iteration n = 0 ... 19
    np.testing.assert_allclose(steps[1] / steps[0], 1e-2 ** (np.arange(20) / 20), rtol=1e-12)
    with pytest.raises(ValueError, match="gamma_h_decay"):
        Algorithm1Params(gamma_h_decay=0.0)


def test_inner_step_schedule():
    assert [Algorithm1Params(n_in=7).inner_steps(n) for n in (0, 5, 100)] == [7, 7, 7]
    p = Algorithm1Params(n_in=10, n_in_first=50, n_in_warmup=15, reset=100)  # the authors' 50 -> 10 over 15
    # the authors' rule, written independently: max(50 - i (50 - 10) / 15, 10) truncated to an integer
    theirs = np.maximum(50 - np.arange(100) * (50 - 10) / 15, 10).astype(np.int16).tolist()
    assert [p.inner_steps(n) for n in range(200)] == theirs + theirs


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="inner"):
        Algorithm1Params(inner="adam")
    prior = gaussian_prior((1, 10, 10))
    _, _, y = problem()
    with pytest.raises(ValueError, match="kernel_size"):
        algorithm1(prior, y, "wide", progress=False)


class OraclePrior:
    """N(x_bar, lam I) around the true images (one per item): its MMSE denoiser, so that argmin_x Ly(x, h) ~ x_bar."""

    sigma_min, sigma_max, data_range = 0.001, 40.0, (0.0, 1.0)

    def __init__(self, x_bar, lam):
        self.x_bar, self.lam = x_bar, lam

    def __call__(self, x, sigma, labels=None):
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        return self.x_bar + self.lam / (self.lam + s2) * (x - self.x_bar)


@pytest.mark.parametrize("kernel_step", ["chain", "projected"])
def test_algorithm1_recovers_the_kernel_when_the_prior_knows_the_image(kernel_step):
    """With a prior concentrated at x_bar the x-steps return ~x_bar and Algorithm 1 becomes least squares in the
    kernel: from the wide start it must find h_bar (an end-to-end check of steps, signs, projection and reset)."""
    g = torch.Generator().manual_seed(6)
    K = 7
    x = torch.rand(2, 1, 24, 24, generator=g, dtype=D64)
    h = torch.stack([kernel("gaussian", 1.2, K, dtype=D64), kernel("motion", 2.0, K, dtype=D64, angle=45)])
    y = deconv.make_problem(x, h, sigma=0.001, seed=1)
    params = Algorithm1Params(n_ext=300, n_in=2, n_in_first=20, sigma=0.001, sigma_g=0.001, kernel_step=kernel_step)
    res = algorithm1(OraclePrior(x, 1e-6), y, "wide", kernel_size=K, params=params, progress=False)
    start = (deconv.initial_kernels("wide", K, 2, dtype=D64) - h).flatten(1).norm(dim=1)
    err = (res.h - h).flatten(1).norm(dim=1)
    # noise 1e-3 on 18 x 18 pixels leaves a least-squares kernel error of order 1e-3; 5 % of the start is lenient
    assert (err < 0.05 * start).all(), (err, start)


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------


def test_ssim_matches_skimage():
    import skimage.metrics as skm  # a declared dependency: its absence must fail, not skip

    g = torch.Generator().manual_seed(4)
    a = torch.rand(2, 3, 30, 27, generator=g, dtype=D64)
    b = (a + 0.1 * torch.randn(a.shape, generator=g, dtype=D64)).clamp(0, 1)
    got = deconv.ssim(a, b)
    for i in range(2):
        ref = skm.structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.0, channel_axis=0,
                                        gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert abs(got[i].item() - ref) < 1e-10  # same window, same constants, float64


def test_metrics_undo_the_translation_ambiguity():
    """x shifted by s and h shifted by -s give the same blurry image; metrics find s and a zero kernel error."""
    g = torch.Generator().manual_seed(5)
    K, s = 9, (2, -1)
    x = torch.rand(1, 3, 32, 32, generator=g, dtype=D64)
    h = torch.zeros(K, K, dtype=D64)
    h[3:6, 3:6] = kernel("gaussian", 0.8, 3, dtype=D64)  # room to move inside the window
    x_hat = torch.roll(x, shifts=s, dims=(-2, -1))  # x_hat[i + s] = x[i]
    h_hat = _shift_kernel(h, -s[0], -s[1])  # h_hat[u] = h[u + s]
    # the sign convention: same blurry image (away from the wrapped border)
    torch.testing.assert_close(conv(x_hat, h_hat)[..., 3:-3, 3:-3], conv(x, h)[..., 3:-3, 3:-3])
    m = metrics(x_hat, h_hat, x, h)
    assert (m["shift_row"].item(), m["shift_col"].item()) == s
    assert m["kernel_error"].item() < 1e-12 and m["psnr"].item() > 200 and abs(m["ssim"].item() - 1) < 1e-12
    # the Dirac estimate: distance 0 to delta, and its kernel error is ||delta_s - h||
    md = metrics(x, dirac(K, dtype=D64), x, h)
    assert md["dirac_distance"].item() < 1e-12 and md["spread"].item() == 0
    assert abs(md["kernel_error"].item() - (dirac(K, dtype=D64) - h).norm().item()) < 1e-12
    # psnr as defined
    noisy = x + 0.01
    assert abs(deconv.psnr(noisy, x).item() - 40.0) < 1e-9


# ---------------------------------------------------------------------------------------------------------------
# Statement 1 table, saving, CLI
# ---------------------------------------------------------------------------------------------------------------


def test_the_true_pair_is_no_minimum_along_the_gaussian_semigroup_path():
    """Statement 1's argument in closed form: along x_t = g_sqrt(1-t^2)theta * x, h_t = g_t theta the data term stays
    at its value at the truth (Gaussians compose), and the exact Gaussian potential of x_t grows with t (a stationary
    Gaussian with a decreasing spectrum favours blur), so Ly rises all the way from (h * x, delta) to (x, h)."""
    prior = gaussian_prior((1, 32, 32))
    x = prior.sample(2, generator=torch.Generator().manual_seed(0))
    theta, K, sigma = 2.2, 15, 0.02  # both Gaussians of the path wider than ~1 px: sampled ones compose to ~1e-6
    y = deconv.make_problem(x, kernel("gaussian", theta, K, dtype=D64), sigma=sigma, seed=0)
    ts = [0.0, 0.5, 0.75, 0.9, 1.0]
    xs, hs = deconv.semigroup_path(x, theta, ts, K)
    np.testing.assert_allclose(xs[-2:], x)  # t = 1: the true image and kernel
    np.testing.assert_allclose(hs[:2], dirac(K, dtype=D64).expand(2, K, K))  # t = 0: the Dirac
    terms = deconv.objective(xs, hs, y.repeat(len(ts), 1, 1, 1), prior.potential(xs), sigma=sigma)
    data, total = terms["data"].view(len(ts), 2), terms["total"].view(len(ts), 2)
    # measured: 4e-4 relative (x_t is blurred at the size of x with reflected borders, which y never sees exactly)
    np.testing.assert_allclose(data, data[-1:].expand_as(data), rtol=2e-3)
    assert (total.diff(dim=0) > 0).all(), total


def test_statement1_rows_with_an_exact_potential():
    sigma, sigma_g = 0.1, 0.05
    prior = gaussian_prior((1, 10, 10))
    x, h, y = problem(B=1, sigma=sigma)
    q_fn = lambda z: prior.potential(z, sigma=sigma_g)  # noqa: E731 - the potential the x-iterations minimise
    res = deconv.statement1(prior, y, x, h, x, h, sigma=sigma, sigma_g=sigma_g, n_iter_delta=3000, q_fn=q_fn)
    rows = res.rows
    for name in ("true", "delta", "hat"):
        np.testing.assert_allclose(rows[f"L_{name}"], rows[f"data_{name}"] + sigma**2 * rows[f"q_{name}"])
    np.testing.assert_allclose(rows["L_hat"], rows["L_true"])
    # x_delta minimises Ly(., delta): every perturbation raises it
    xd = res.x_delta.double()
    delta = dirac(3, dtype=D64)[None]
    L0 = deconv.objective(xd, delta, y, q_fn(xd), sigma=sigma)["total"]
    for k in range(5):
        v = torch.randn(xd.shape, generator=torch.Generator().manual_seed(k), dtype=D64)
        xp = xd + 1e-3 * v
        assert deconv.objective(xp, delta, y, q_fn(xp), sigma=sigma)["total"] > L0


def test_statement1_takes_q_from_the_ode_potential():
    """Without q_fn, q comes from potential.potential: for a Gaussian prior it matches the closed form of the flow."""
    from diractrap import potential

    prior = gaussian_prior((1, 10, 10))
    x, h, y = problem(B=2, sigma=0.1)
    opts = dict(solver="dopri5", rtol=1e-6, atol=1e-6, divergence="exact")
    res = deconv.statement1(prior, y, x, h, x, h, sigma=0.1, sigma_g=0.05, n_iter_delta=10, potential_options=opts)
    for name, z in (("true", x), ("delta", res.x_delta), ("hat", x)):
        ref = potential.gaussian_flow_potential(prior, z.double())
        # dopri5 at 1e-6 reproduces the flow's closed form to ~1e-3 nats here (measured); 1e-2 leaves margin
        np.testing.assert_allclose(res.rows[f"q_{name}"], ref.numpy(), rtol=0, atol=1e-2)


def test_save_result_and_summary(tmp_path):
    *_, res = small_run(n_ext=6, snapshots=2)
    path = tmp_path / "run.npz"
    deconv.save_result(path, res, x_true=np.zeros(3))
    with np.load(path) as z:
        assert z["traj_x"].shape[0] == 4 and z["x"].shape == (3, 2, 14, 14) and z["x_true"].shape == (3,)
        assert json.loads(str(z["settings"]))["n_ext"] == 6
    s = deconv.summary(res, {"psnr": torch.ones(3)})
    json.dumps(s)
    assert s["iterations"] == 6 and len(s["final"]["data"]) == 3
    rows = deconv.table_rows(res, {"psnr": torch.arange(3.0)}, pair=["a", "b", "c"], seed=0)
    assert len(rows) == 3 and rows[2]["psnr"] == 2.0 and rows[1]["pair"] == "b" and rows[0]["n_ext"] == 6
    json.dumps(rows)
    assert rows[0]["final_data"] == float(res.trajectory["data"][-1][0])


def test_rows_name_their_provenance_record_once():
    """Rows carry a short key of the denoiser's record; the summary holds the record under that key; the key
    follows what was computed (the checkpoint) and not where the record was read from."""
    from diractrap.problems import provenance_key

    *_, res = small_run(n_ext=2)
    record = {"model": "m", "sha256": "ab" * 32, "architecture": {"channels": 8}, "config": "/here/m.json"}
    res.settings["denoiser"] = record
    rows = deconv.table_rows(res)
    s = deconv.summary(res)
    assert "denoiser" not in rows[0] and rows[0]["checkpoint_sha256"] == "ab" * 32
    assert {r["provenance"] for r in rows} == set(s["provenance"]) and s["provenance"][rows[0]["provenance"]] == record
    assert rows[0]["provenance"] == provenance_key(dict(record, config="/elsewhere/m.json"))
    assert rows[0]["provenance"] != provenance_key(dict(record, sha256="cd" * 32))
    assert rows[0]["provenance"] != provenance_key(dict(record, architecture={"channels": 16}))


def test_make_problem_noise_is_per_item():
    x, h, _ = problem(B=3, C=2, H=12, W=12, K=3)
    y = deconv.make_problem(x, h, sigma=0.1, seed=7)
    y1 = deconv.make_problem(x[1:2], h[1:2], sigma=0.1, seed=7, item_ids=[1])
    torch.testing.assert_close(y[1:2], y1, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["paper", "authors"])
def test_cli_deblur_writes_its_outputs(tmp_path, monkeypatch, preset):
    from diractrap import cli
    from diractrap.data import save_image
    from diractrap.models import registry

    K, size = 5, 16
    prior = gaussian_prior((3, size, size))
    spec = registry.ModelSpec(name="test-gauss", description="test", data_range=(0.0, 1.0), resolution=size,
                              build=lambda device="cpu", **kw: prior)
    monkeypatch.setitem(registry.REGISTRY, "test-gauss", spec)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    y, y_full = deconv.make_problem(x, kernel("gaussian", 1.0, K), sigma=0.01, full=True)
    # the paper's preset takes the valid y (x is K - 1 larger); the authors' the blurry image at the size of x
    save_image((y if preset == "paper" else y_full)[0].clamp(0, 1), tmp_path / "blurry.png")
    out = tmp_path / "out"
    rc = cli.main(["deblur", str(tmp_path / "blurry.png"), "--model", "test-gauss", "--kernel-size", str(K),
                   "--preset", preset, "--start", "wide", "--out", str(out), "--n-ext", "4", "--n-in", "2",
                   "--n-in-first", "3", "--sigma-g", "0.01", "--no-progress"])
    assert rc == 0
    for name in ("x_hat.png", "x_hat.npy", "h_hat.png", "h_hat.npy", "trajectory.npz", "summary.json"):
        assert (out / name).is_file(), name
    h_hat = np.load(out / "h_hat.npy")
    assert h_hat.shape == (K, K) and abs(h_hat.sum() - 1) < 1e-5 and (h_hat >= 0).all()
    assert np.load(out / "x_hat.npy").shape == (3, size, size)
    settings = json.loads((out / "summary.json").read_text())["settings"]
    expected = deconv.preset(preset, n_ext=4, n_in=2, n_in_first=3, sigma_g=0.01)
    assert {k: settings[k] for k in ("n_ext", "n_in", "n_in_first", "sigma_g", "inner", "kernel_step", "pad")} == {
        k: getattr(expected, k) for k in ("n_ext", "n_in", "n_in_first", "sigma_g", "inner", "kernel_step", "pad")}


def test_run_pairs_batches_pairs_and_starts():
    prior = gaussian_prior((2, 14, 14))
    x, h, _ = problem(B=2, C=2, H=14, W=14, K=5)
    params = Algorithm1Params(n_ext=3, n_in=2, sigma=0.02, sigma_g=0.01)
    run = deconv.run_pairs(prior, x, h, params=params, pair_ids=[4, 9], progress=False, family=["g", "m"])
    assert [(r["pair"], r["start"], r["family"]) for r in run.rows] == [
        (4, "wide", "g"), (9, "wide", "m"), (4, "small", "g"), (9, "small", "m")]
    torch.testing.assert_close(run.y, deconv.make_problem(x, h, sigma=0.02, item_ids=[4, 9]))
    alone = algorithm1(prior, run.y[1:], "small", kernel_size=5, params=params, progress=False)
    torch.testing.assert_close(alone.h[0], run.result.h[3], rtol=0, atol=1e-10)
