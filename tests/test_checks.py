"""Bad input gets a one-line error before any work (issue 15): image files of every PIL mode, tensors given to the
potential and to Algorithm 1, numbers on the command line, output paths, model sizes, non-finite iterates.

Each test is one defect found by using the CLI and the library as a new user would; the expected values come from
independent computations (the arrays written into the files, PIL-free formulas) or from what must not happen
(no traceback, no file written, no model evaluated).
"""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diractrap import cli
from diractrap.data import load_image, save_image
from diractrap.deconv import Algorithm1Params, NonFiniteError, algorithm1, map_x
from diractrap.kernels import dirac, kernel
from diractrap.models.registry import REGISTRY, ModelSpec
from diractrap.potential import potential
from diractrap.priors import GaussianPrior


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


def gaussian(shape):
    return GaussianPrior.power_law(shape, c=1e-2, alpha=1.0, eps=0.1, mean=0.5)


def photo(size=16):
    """A real photo crop (scikit-image's astronaut, area-averaged), (3, size, size) float32 in [0, 1]."""
    import skimage.data

    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).double()[None] / 255
    return torch.nn.functional.adaptive_avg_pool2d(img, size)[0].float()


# ---------------------------------------------------------------------------------------------------------------
# Image files: every PIL mode read at its depth, unreadable files named in one line
# ---------------------------------------------------------------------------------------------------------------

RNG = np.random.default_rng(15)
GREY8 = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (6, 5), dtype=np.uint16)
RGB8 = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
CMYK = RNG.integers(0, 256, (6, 5, 4), dtype=np.uint8)


def _png_rgb16(a: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (PIL cannot write one): signature, IHDR (depth 16, colour type 2), IDAT."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = a.shape
    raw = b"".join(b"\0" + a[i].astype(">u2").tobytes() for i in range(h))  # filter type 0 per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


RGB16 = RNG.integers(0, 65536, (6, 5, 3), dtype=np.uint16)


def _files():
    """(name, writer(path) -> path, expected (3, H, W) in [0, 1], tolerance) for each mode."""
    grey = np.stack([GREY8 / 255] * 3)
    palette = Image.fromarray(RGB8).quantize(16)  # an exact palette image: the expected values are its colours
    pal_rgb = np.asarray(palette.convert("RGB")).transpose(2, 0, 1) / 255
    # CMYK -> RGB by the standard formula R = 255 (1 - C/255)(1 - K/255): 8-bit rounding in the file (1/255)
    cmy, k = CMYK[..., :3] / 255, CMYK[..., 3:] / 255
    cmyk_rgb = ((1 - cmy) * (1 - k)).transpose(2, 0, 1)
    return [
        ("grey 8-bit", lambda p: Image.fromarray(GREY8).save(p), grey, 1e-7),
        ("grey 16-bit", lambda p: Image.fromarray(GREY16).save(p), np.stack([GREY16 / 65535] * 3), 1e-7),
        ("palette", lambda p: palette.save(p), pal_rgb, 1e-7),
        ("LA", lambda p: Image.fromarray(np.stack([GREY8, ALPHA], -1), "LA").save(p), grey, 1e-7),
        ("RGB", lambda p: Image.fromarray(RGB8).save(p), RGB8.transpose(2, 0, 1) / 255, 1e-7),
        # PIL opens 16-bit RGB as 8-bit RGB (the high byte of each sample): right to 1/255
        ("RGB 16-bit", lambda p: p.write_bytes(_png_rgb16(RGB16)), RGB16.transpose(2, 0, 1) / 65535, 1.0 / 255),
        ("RGBA", lambda p: Image.fromarray(np.dstack([RGB8, ALPHA]), "RGBA").save(p), RGB8.transpose(2, 0, 1) / 255,
         1e-7),
        ("CMYK", lambda p: Image.frombytes("CMYK", (5, 6), CMYK.tobytes()).save(p.with_suffix(".tif")), cmyk_rgb,
         1.0 / 255),
    ]


@pytest.mark.parametrize("name, write, expected, tol", _files(), ids=[f[0] for f in _files()])
def test_every_image_mode_is_read_at_its_depth(tmp_path, name, write, expected, tol):
    path = tmp_path / "im.png"
    write(path)
    if not path.exists():
        path = path.with_suffix(".tif")
    x = load_image(path)
    assert x.dtype == torch.float32 and x.shape == (3, 6, 5)
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=tol + 6e-8)  # float32 rounding of values <= 1


def test_a_16_bit_image_keeps_its_values_through_size(tmp_path):
    """--size resizes in float: a 16-bit ramp stays a ramp, not all 1.0 (the old convert('RGB') of I;16)."""
    ramp = np.tile(np.linspace(0, 65535, 8).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    x = load_image(tmp_path / "ramp.png", size=8)
    np.testing.assert_allclose(x[0].numpy(), ramp / 65535, atol=1e-6)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"], ids=["empty", "garbage", "truncated"])
def test_unreadable_images_are_one_line_errors(tmp_path, capsys, content):
    path = tmp_path / "bad.png"
    if content == "truncated":
        buf = io.BytesIO()
        Image.fromarray(RGB8).save(buf, format="PNG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.png is not a readable image"):
        load_image(path)
    assert cli.main(["potential", str(path), "--model", "gaussian-demo"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.png" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------
# Tensors given to potential(): dtype, range, finiteness, batch, channels and sizes the model accepts
# ---------------------------------------------------------------------------------------------------------------


class Counting:
    """A Gaussian prior that counts its evaluations: a refused input must cost none."""

    def __init__(self, prior):
        self.prior, self.calls = prior, 0
        self.sigma_min, self.sigma_max, self.data_range = prior.sigma_min, prior.sigma_max, prior.data_range
        self.shape = prior.shape

    def __call__(self, x, sigma, labels=None):
        self.calls += 1
        return self.prior(x, sigma, labels)


def _bad_tensors():
    x = photo(8)[None]
    nan = x.clone()
    nan[0, 1, 2, 3] = float("nan")
    return [
        ("uint8", (x * 255).round().to(torch.uint8), "dtype uint8"),
        ("255 scale", x * 255, r"values in \[.*\]; images must lie in \[0, 1\]"),
        ("five", torch.full_like(x, 5.0), "values in"),
        ("nan pixel", nan, r"1 non-finite value\(s\).*index \(0, 1, 2, 3\)"),
        ("empty batch", x[:0], "is empty"),
        ("no batch axis", x[0], r"\(B, C, H, W\)"),
        ("wrong size", photo(12)[None], "defined on 3x8x8 images only"),
    ]


@pytest.mark.parametrize("name, x, message", _bad_tensors(), ids=[t[0] for t in _bad_tensors()])
def test_potential_refuses_bad_tensors_before_any_evaluation(name, x, message):
    prior = Counting(gaussian((3, 8, 8)))
    with pytest.raises(ValueError, match=message):
        potential(prior, x, steps=4)
    assert prior.calls == 0


@pytest.mark.parametrize("option", [dict(rtol=-1.0, solver="dopri5"), dict(atol=-1.0, solver="dopri5"),
                                    dict(steps=0), dict(n_probes=0)])
def test_potential_refuses_nonpositive_tolerances_and_counts(option):
    prior = Counting(gaussian((3, 8, 8)))
    with pytest.raises(ValueError, match=f"{next(iter(option))} must be"):
        potential(prior, photo(8)[None], **option)
    assert prior.calls == 0


def test_demo_network_names_the_multiple_it_needs():
    """The demo U-Net halves the image twice: 31 x 31 failed deep in torch ('Sizes of tensors must match')."""
    from diractrap import checks
    from diractrap.models import get_denoiser

    den = get_denoiser("demo")
    assert checks.model_geometry(den) == checks.Geometry(channels=3, multiple=4)
    x = torch.full((1, 3, 31, 31), 0.5)
    with pytest.raises(ValueError, match="divisible by 4: crop or resize to 28 or 32 rows"):
        potential(den, x, steps=2)
    with pytest.raises(ValueError, match="takes 3"):
        potential(den, torch.full((1, 1, 32, 32), 0.5), steps=2)
    # Algorithm 1 takes any size: y 23 x 23 with K = 11 gives x 33 x 33, which the network sees extended to 36 x 36
    # (diractrap.domain; tests/test_domain.py)
    res = algorithm1(den, photo(23)[None], "wide", kernel_size=11, params=Algorithm1Params(n_ext=1, n_in=1),
                     progress=False)
    assert res.x.shape == (1, 3, 33, 33) and res.settings["domain"]["network"] == [3, 36, 36]


def test_ncsnpp_geometry_is_read_from_its_config():
    from diractrap import checks
    from diractrap.models.ncsnpp import NCSNppConfig, NCSNppDenoiser, build_ncsnpp

    cfg = NCSNppConfig.from_dict({"nf": 8, "ch_mult": [1, 2, 2], "image_size": 16, "attn_resolutions": [],
                                  "num_res_blocks": 1})
    assert checks.model_geometry(NCSNppDenoiser(build_ncsnpp(cfg))) == checks.Geometry(channels=3, multiple=4)


# ---------------------------------------------------------------------------------------------------------------
# Algorithm 1 and the non-blind MAP: kernel sizes, signs of sigma and the steps, flat images, non-finite iterates
# ---------------------------------------------------------------------------------------------------------------


def _problem(K=3, size=10, flat=False):
    x = torch.full((1, 1, size, size), 1.0) if flat else photo(size)[:1][None].double()
    y = torch.nn.functional.conv2d(x, kernel("gaussian", 0.8, K, dtype=x.dtype)[None, None])
    return gaussian((1, size, size)), y.to(torch.float64)


@pytest.mark.parametrize("field, value", [("sigma", -0.01), ("sigma", 0.0), ("sigma_g", 0.0), ("gamma_x", -1.0),
                                          ("gamma_h", -1.0), ("gamma_h_scale", -1.0)])
def test_algorithm1_refuses_negative_noise_and_steps(field, value):
    with pytest.raises(ValueError, match=f"{field} must be"):
        Algorithm1Params(**{field: value})


@pytest.mark.parametrize("K, message", [(0, "kernel_size must be an integer >= 1"),
                                        (8, r"K = 8 must be smaller than the blurry image \(8x8\)"),
                                        (999, "K = 999 must be smaller")])
def test_algorithm1_refuses_kernel_sizes_before_any_work(K, message):
    prior, y = _problem()
    counting = Counting(prior)
    with pytest.raises(ValueError, match=message):
        algorithm1(counting, y, "wide", kernel_size=K, params=Algorithm1Params(n_ext=2, n_in=1), progress=False)
    assert counting.calls == 0


def test_flat_image_is_refused_with_its_reason():
    """A flat (or saturated) y made the Lipschitz kernel step infinite, and the advice was 'lower the step sizes'."""
    prior, y = _problem(flat=True)
    with pytest.raises(ValueError, match=r"constant \(flat or saturated\)"):
        algorithm1(prior, y, "wide", kernel_size=3, params=Algorithm1Params(n_ext=2, n_in=1), progress=False)
    with pytest.raises(ValueError, match="constant"):
        map_x(prior, y, dirac(3, dtype=y.dtype), n_iter=1)


def test_algorithm1_refuses_bad_tensors():
    prior, y = _problem()
    params = Algorithm1Params(n_ext=1, n_in=1)
    with pytest.raises(ValueError, match="is empty"):
        algorithm1(prior, y[:0], "wide", kernel_size=3, params=params, progress=False)
    with pytest.raises(ValueError, match="dtype uint8"):
        algorithm1(prior, (y * 255).to(torch.uint8), "wide", kernel_size=3, params=params, progress=False)
    with pytest.raises(ValueError, match="values in"):
        algorithm1(prior, y * 255, "wide", kernel_size=3, params=params, progress=False)
    # noise of std sigma may take y outside [0, 1]: the tolerance grows with sigma (6 sigma beyond RANGE_TOL)
    noisy = y + 0.6
    algorithm1(prior, noisy, "wide", kernel_size=3, params=Algorithm1Params(n_ext=1, n_in=1, sigma=0.1),
               progress=False)


@pytest.mark.parametrize("what, fix", [
    ("the prior gradient (x - D(x, sigma_g))/sigma_g^2", "raise sigma_g"),
    ("the image x", "lower gamma_x"),
    ("the kernel parameter theta", "gamma_h_scale"),
])
def test_nonfinite_message_suggests_the_fix_that_fits(what, fix):
    from diractrap import checks

    message = checks.nonfinite_message(what, "outer iteration n = 3")
    assert message.startswith(f"{what} is not finite at outer iteration n = 3") and fix in message
    assert "lower the step sizes" not in message


def test_diverging_x_is_named_with_its_fix():
    prior, y = _problem()
    with pytest.raises(NonFiniteError, match="lower gamma_x"):
        algorithm1(prior, y, "wide", kernel_size=3, params=Algorithm1Params(n_ext=30, n_in=50, gamma_x=1e30),
                   progress=False)


# ---------------------------------------------------------------------------------------------------------------
# The command line: one line, exit status 1, no traceback; --out checked before any computation
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def gauss16(monkeypatch):
    """A registered 16 x 16 Gaussian prior that records whether it was ever built (a refused command builds none)."""
    built = []

    def build(device="cpu"):
        built.append(device)
        return gaussian((3, 16, 16))

    spec = ModelSpec(name="test-gauss-16", description="", data_range=(0.0, 1.0), resolution=16, build=build)
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    return spec.name, built


@pytest.fixture
def blurry(tmp_path):
    y = photo(12)
    return str(save_image(y, tmp_path / "blurry.png"))


@pytest.mark.parametrize("options, named", [
    (["--sigma", "-0.01"], "--sigma must be a positive number, got -0.01"),
    (["--sigma-g", "0"], "--sigma-g must be a positive number, got 0.0"),
    (["--gamma-x", "-1"], "--gamma-x must be a number >= 0, got -1.0"),
    (["--gamma-h", "-1"], "--gamma-h must be a number >= 0, got -1.0"),
    (["--kernel-size", "0"], "--kernel-size must be an integer >= 1, got 0"),
    (["--kernel-size", "999"], "--kernel-size K = 999 must be smaller than the blurry image (12x12)"),
    (["--n-ext", "-3"], "--n-ext must be an integer >= 0, got -3"),
    (["--sigma", "abc"], "argument --sigma: invalid float value: 'abc'"),
])
def test_cli_deblur_refuses_bad_values_before_any_work(tmp_path, capsys, gauss16, blurry, options, named):
    name, built = gauss16
    out = tmp_path / "run"
    assert cli.main(["deblur", blurry, "--model", name, "--out", str(out), "--no-progress", *options]) == 1
    err = capsys.readouterr().err
    assert err == f"diractrap deblur: error: {named}\n" or (named in err and err.count("\n") == 1), err
    assert built == [] and not out.exists()


@pytest.mark.parametrize("options, named", [
    (["--solver", "dopri5", "--rtol", "-1"], "--rtol must be a positive number"),
    (["--solver", "dopri5", "--atol", "-1"], "--atol must be a positive number"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
])
def test_cli_potential_refuses_bad_values(tmp_path, capsys, gauss16, options, named):
    name, built = gauss16
    f = save_image(photo(16), tmp_path / "im.png")
    assert cli.main(["potential", str(f), "--model", name, "--no-progress", *options]) == 1
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1 and built == []


def test_cli_potential_of_a_16_bit_png_equals_the_library_on_its_values(tmp_path, capsys, gauss16):
    """The 16-bit PNG gave q = -18130 from an all-white image with exit status 0."""
    name, _ = gauss16
    x16 = (photo(16).numpy()[0] * 65535).round().astype(np.uint16)
    Image.fromarray(x16).save(tmp_path / "deep.png")
    assert cli.main(["potential", str(tmp_path / "deep.png"), "--model", name, "--json", "--steps", "4",
                     "--n-probes", "2", "--no-progress"]) == 0
    import json

    q = json.loads(capsys.readouterr().out)[0]["q"]
    x = torch.from_numpy(np.stack([x16 / 65535] * 3)).float()[None]
    ref = potential(gaussian((3, 16, 16)), x, steps=4, n_probes=2, item_ids=[0])
    assert q == pytest.approx(float(ref.q[0]), rel=1e-12)


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_cli_out_that_cannot_be_a_directory_fails_before_the_computation(tmp_path, capsys, gauss16, blurry, where):
    name, built = gauss16
    (tmp_path / "taken").write_text("x")
    out = tmp_path / "taken" if where == "a file" else tmp_path / "taken" / "run"
    assert cli.main(["deblur", blurry, "--model", name, "--out", str(out), "--kernel-size", "5", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert str(out) in err and err.count("\n") == 1 and "Traceback" not in err
    assert built == []  # refused before the prior was even built
    assert (tmp_path / "taken").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories: no permission to refuse")
def test_cli_unwritable_out_fails_before_the_computation(tmp_path, capsys, gauss16, blurry):
    name, built = gauss16
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert cli.main(["deblur", blurry, "--model", name, "--out", str(locked / "run"), "--no-progress"]) == 1
    finally:
        locked.chmod(0o700)
    assert "cannot be created" in capsys.readouterr().err and built == []


def test_cli_failed_command_leaves_no_output_directory(tmp_path, capsys, gauss16, blurry):
    """A failure after --out was created (here: the prior refuses the size) removes the new, empty directory."""
    name, built = gauss16
    out = tmp_path / "new" / "run"
    assert cli.main(["deblur", blurry, "--model", name, "--out", str(out), "--kernel-size", "7", "--n-ext", "1",
                     "--preset", "paper", "--no-progress"]) == 1  # x would be 18 x 18; the prior has 16 x 16 only
    assert "defined on 3x16x16 images only" in capsys.readouterr().err
    assert built and not (tmp_path / "new").exists()


def test_cli_debug_shows_the_traceback(tmp_path, gauss16, blurry):
    name, _ = gauss16
    with pytest.raises(ValueError, match="--sigma must be a positive number"):
        cli.main(["deblur", blurry, "--model", name, "--out", str(tmp_path / "o"), "--sigma", "-1", "--debug"])


def test_cli_refused_pickle_as_model_is_one_line(tmp_path, capsys):
    """A .pkl carrying code (os.system) is refused by the restricted unpickler: one line, not an UnpicklingError."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"ema": Evil()}))
    f = save_image(photo(16), tmp_path / "im.png")
    assert cli.main(["potential", str(f), "--model", str(bad), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "system" in err


def test_cli_usage_errors_are_one_line_with_status_1(tmp_path, capsys, gauss16):
    """argparse's own errors (here: no image given) printed the usage and exited with status 2."""
    name, _ = gauss16
    assert cli.main(["potential", "--model", name]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "images" in err
