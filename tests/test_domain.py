"""Blurry photos of any size and mode (diractrap.domain): the extension of x to what the prior accepts, its crop and
adjoint, the channel rules, and ``diractrap deblur`` on images of 37 x 41, 50 x 50 and 64 x 64 in RGB, grey and RGBA
with K in {13, 15} and both presets.

Independent truths: numpy's own reflection, the inner-product identity of an adjoint, the dense minimiser of the
extended objective for a Gaussian prior, and a channel-independent Gaussian prior for the channel rules.
"""

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diractrap import cli, domain
from diractrap.blur import conv
from diractrap.deconv import algorithm1, map_x, preset
from diractrap.metrics import metrics

from test_deconv import D64, dense, gaussian_prior, problem

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


class _Net:
    """Stands for a network's geometry (checks.model_geometry reads an EDM-style encoder): sides divisible by 2^d."""

    def __init__(self, channels=3, downs=2):
        self.img_channels = channels
        self.model = type("M", (), {"enc": {f"{8 >> i}x{8 >> i}_down": None for i in range(downs)}})()


# ---------------------------------------------------------------------------------------------------------------
# The domain: sizes, reflection, crop and its adjoint
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, multiple, want", [((37, 41), 4, (40, 44)), ((50, 50), 4, (52, 52)),
                                                  ((64, 64), 4, (64, 64)), ((49, 53), 16, (64, 64)),
                                                  ((5, 7), 16, (16, 16))])
def test_x_is_extended_by_reflection_to_the_next_accepted_sides(size, multiple, want):
    dom = domain.x_domain(_Net(downs=int(np.log2(multiple))), 3, size)
    assert dom.network_size == want and dom.crop(torch.zeros(1, 3, *want)).shape[-2:] == size
    top, bottom, left, right = dom.pad
    assert (top + bottom, left + right) == (want[0] - size[0], want[1] - size[1])
    assert 0 <= bottom - top <= 1 and 0 <= right - left <= 1  # split evenly, the odd pixel at the bottom and right
    x = torch.rand(2, 3, *size, dtype=D64, generator=torch.Generator().manual_seed(0))
    ext = dom.to_network(x)
    # numpy's "reflect" (no edge repeat) reflects again where the pad exceeds the side, as in the (5, 7) case
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)), mode="reflect")
    np.testing.assert_array_equal(ext.numpy(), ref)
    torch.testing.assert_close(dom.crop(ext), x, rtol=0, atol=0)


def test_the_zero_padding_is_the_adjoint_of_the_crop():
    dom = domain.x_domain(_Net(downs=3), 3, (13, 21))
    g = torch.Generator().manual_seed(1)
    big, small = torch.randn(2, 3, 16, 24, generator=g, dtype=D64), torch.randn(2, 3, 13, 21, generator=g, dtype=D64)
    # <C u, v> = <u, C^T v> to rounding of a 1000-term float64 sum
    assert (dom.crop(big) * small).sum().item() == pytest.approx((big * dom.crop_adjoint(small)).sum().item(),
                                                                 rel=1e-12)


def test_what_cannot_be_mapped_is_refused_in_one_line():
    with pytest.raises(ValueError, match="defined on 1x12x12 images only: y must be at most 8x8"):
        domain.x_domain(gaussian_prior((1, 12, 12)), 1, (14, 14), kernel_size=5)
    with pytest.raises(ValueError, match=r"y has 2 channel\(s\); this prior takes 3"):
        domain.x_domain(_Net(), 2, (16, 16))
    # a prior defined on a larger size than x: x is extended to it
    assert domain.x_domain(gaussian_prior((1, 12, 12)), 1, (10, 9)).pad == (1, 1, 1, 2)


# ---------------------------------------------------------------------------------------------------------------
# The data term keeps x's domain: the extended MAP against its dense solution
# ---------------------------------------------------------------------------------------------------------------


def test_extended_map_is_the_dense_minimiser_of_the_extended_objective():
    """y 8 x 8, K = 3: x is 10 x 10, the prior N(m, S) lives on 12 x 12. The MAP must minimise
    1/2||h * (C x') - y||^2 + sigma^2/2 (x' - m)^T (S + sigma_g^2 I)^{-1} (x' - m) over x' and return C x'."""
    sigma, sigma_g = 0.1, 0.05
    prior = gaussian_prior((1, 12, 12))
    _, h, y = problem(sigma=sigma)  # x 10 x 10, y 8 x 8
    dom = domain.x_domain(prior, 1, (10, 10))
    assert dom.pad == (1, 1, 1, 1)
    n = 144
    A = dense(lambda e: conv(dom.crop(e), h[:1], "valid"), n, (1, 12, 12))
    S = dense(lambda e: prior._synthesis(prior._analysis(e) * prior.lam), n, (1, 12, 12))
    P = torch.linalg.inv(0.5 * (S + S.T) + sigma_g**2 * torch.eye(n, dtype=D64))
    m = prior.mean.expand(1, 12, 12).flatten()
    ref = torch.linalg.solve(A.T @ A + sigma**2 * P, A.T @ y.flatten() + sigma**2 * P @ m).view(1, 1, 12, 12)
    # gradient descent with gamma = 1/L contracts the error by >= 1 - 0.2 * 0.098 per step (test_deconv's bound,
    # the same prior spectrum): 3000 steps reach rounding
    got = map_x(prior, y, h, n_iter=3000, sigma=sigma, sigma_g=sigma_g)
    assert got.shape == (1, 1, 10, 10)
    want = dom.crop(ref)
    assert ((got - want).norm() / want.norm()).item() < 1e-8
    # Douglas-Rachford with the exact prox (test_deconv's setting: sigma_d^2 = gamma sigma^2, CG to rounding)
    # converges to the minimiser without the sigma_g smoothing
    ref0 = torch.linalg.solve(A.T @ A + sigma**2 * torch.linalg.inv(0.5 * (S + S.T)),
                              A.T @ y.flatten() + sigma**2 * torch.linalg.inv(0.5 * (S + S.T)) @ m)
    params = preset("paper", n_ext=40, n_in=50, gamma_h=0.0, reset=1000, sigma=sigma, inner="douglas-rachford",
                    gamma_x=1.0, dr_clamp=1e6, cg_tol=1e-30)
    res = algorithm1(prior, y, h, params=params, progress=False)
    want0 = dom.crop(ref0.view(1, 1, 12, 12))
    assert ((res.x - want0).norm() / want0.norm()).item() < 1e-10  # linear convergence to rounding, as there


# ---------------------------------------------------------------------------------------------------------------
# Channels: grey replicated and averaged back, alpha dropped
# ---------------------------------------------------------------------------------------------------------------


def test_grey_on_a_colour_prior_is_the_grey_problem_and_alpha_is_dropped():
    """The power-law prior has independent, identical channels: each channel of the replicated grey problem is the
    grey problem itself, so the mean over channels is the MAP of the one-channel prior (to rounding)."""
    sigma, sigma_g = 0.1, 0.05
    _, h, y = problem(sigma=sigma)
    grey = map_x(gaussian_prior((1, 10, 10)), y, h, n_iter=200, sigma=sigma, sigma_g=sigma_g)
    colour = gaussian_prior((3, 10, 10))
    got = map_x(colour, y, h, n_iter=200, sigma=sigma, sigma_g=sigma_g)
    assert got.shape == (1, 1, 10, 10)
    torch.testing.assert_close(got, grey, rtol=0, atol=1e-12)
    rgb = torch.cat([y, 1 - y, 0.5 * y], 1)
    alpha = torch.cat([rgb, torch.rand_like(y)], 1)
    torch.testing.assert_close(map_x(colour, alpha, h, n_iter=50, sigma=sigma, sigma_g=sigma_g),
                               map_x(colour, rgb, h, n_iter=50, sigma=sigma, sigma_g=sigma_g), rtol=0, atol=0)
    res = algorithm1(colour, y, "wide", kernel_size=3, params=preset("paper", n_ext=2, n_in=1), progress=False)
    assert res.x.shape == (1, 1, 10, 10) and res.trajectory["x"].shape[2] == 1
    assert res.settings["domain"]["channels"] == "grey replicated into 3, x averaged back"


# ---------------------------------------------------------------------------------------------------------------
# diractrap deblur on photos of any size and mode, with the demo prior (sides divisible by 4)
# ---------------------------------------------------------------------------------------------------------------

_MODES = {"RGB": 3, "L": 1, "RGBA": 3}  # file mode -> channels of x-hat


def _photo(path, size, mode):
    """A crop of scikit-image's astronaut (a real photo) saved in ``mode``; RGBA with a varying alpha."""
    from skimage import data

    a = data.astronaut()[60 : 60 + size[0], 180 : 180 + size[1]]
    im = Image.fromarray(a)
    if mode == "L":
        im = im.convert("L")
    elif mode == "RGBA":
        im.putalpha(Image.fromarray(np.linspace(0, 255, size[0] * size[1]).reshape(size).astype(np.uint8)))
    im.save(path)
    return path


# every combination (36), under a second each with these counts
@pytest.mark.parametrize("size, mode, K, name", list(itertools.product([(37, 41), (50, 50), (64, 64)], _MODES,
                                                                      [13, 15], ["authors", "paper"])))
def test_deblur_takes_any_size_and_mode(tmp_path, capsys, size, mode, K, name):
    blurry = _photo(tmp_path / "blurry.png", size, mode)
    out = tmp_path / "run"
    # tiny counts: 2 kernel steps of one inner step each (the authors' DR with 50 CG iterations at most)
    assert cli.main(["deblur", str(blurry), "--model", "demo", "--preset", name, "--kernel-size", str(K),
                     "--out", str(out), "--n-ext", "2", "--n-in", "1", "--n-in-first", "none", "--cg-iter", "50",
                     "--no-progress"]) == 0
    start, summary_line = capsys.readouterr().out.splitlines()  # the start line, then the one-line summary
    assert start.startswith("deblurring ") and summary_line.startswith(f"{blurry}: x-hat ")
    assert ("alpha channel dropped" in summary_line) == (mode == "RGBA")
    H, W = size if name == "authors" else (size[0] + K - 1, size[1] + K - 1)  # observed: BLURRY has x's size
    x_hat, h_hat = np.load(out / "x_hat.npy"), np.load(out / "h_hat.npy")
    assert x_hat.shape == (_MODES[mode], H, W)
    assert h_hat.shape == (K, K) and h_hat.min() >= 0 and abs(h_hat.sum() - 1) < 1e-6  # on the simplex
    summary = json.loads((out / "summary.json").read_text())
    dom = summary["settings"]["domain"]
    assert dom["x"] == [_MODES[mode], H, W] and dom["network"][1:] == [-(-H // 4) * 4, -(-W // 4) * 4]
    with Image.open(out / "x_hat.png") as im:
        assert im.size == (W, H) and im.mode == ("L" if mode == "L" else "RGB")
    with Image.open(out / "result.png") as im:
        assert im.size[0] > im.size[1] > 100  # one row of panels


def test_deblur_with_a_known_truth_reports_its_scores(tmp_path, capsys):
    from diractrap.kernels import kernel

    K = 13
    truth = _photo(tmp_path / "truth.png", (50, 50), "RGB")
    h_bar = kernel("motion", 4.0, K, 30, dtype=D64)
    # the kernel given as an 8-bit image: read grey and scaled to sum 1
    Image.fromarray((h_bar / h_bar.max() * 255).round().to(torch.uint8).numpy()).save(tmp_path / "h.png")
    out = tmp_path / "run"
    assert cli.main(["deblur", str(truth), "--model", "demo", "--kernel-size", str(K), "--out", str(out),
                     "--n-ext", "2", "--n-in", "1", "--n-in-first", "none", "--cg-iter", "50", "--no-progress",
                     "--true-image", str(truth), "--true-kernel", str(tmp_path / "h.png")]) == 0
    printed = capsys.readouterr().out
    with Image.open(tmp_path / "h.png") as im:
        h_read = torch.from_numpy(np.asarray(im, dtype=np.float64) / 255)
    x_bar = torch.from_numpy(np.asarray(Image.open(truth), dtype=np.float64).transpose(2, 0, 1) / 255)[None]
    want = metrics(torch.from_numpy(np.load(out / "x_hat.npy"))[None], torch.from_numpy(np.load(out / "h_hat.npy")),
                   x_bar, h_read / h_read.sum())
    got = json.loads((out / "summary.json").read_text())["metrics"]
    # the command reads 8-bit files in float32 (relative rounding 6e-8), this test in float64
    assert got["kernel_error"][0] == pytest.approx(want["kernel_error"].item(), rel=1e-6)
    assert got["psnr"][0] == pytest.approx(want["psnr"].item(), rel=1e-6)
    assert f"kernel error {want['kernel_error'].item():.4f}" in printed
    assert cli.main(["deblur", str(truth), "--model", "demo", "--out", str(tmp_path / "run2"), "--true-image",
                     str(truth)]) == 1
    assert "--true-image and --true-kernel go together" in capsys.readouterr().err
