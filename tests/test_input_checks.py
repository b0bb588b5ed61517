"""Every command checks its input (issue 24): theorem1, sweep, models, devices, class labels, memory, Ctrl-C and
output folders, and the library entry points behind them (theorem1.diagnose, sweeps.sweep, deconv.algorithm1,
problems.run_pairs, potential).

Each test is one case found by probing the CLI as a hostile but ordinary user would, in the style of
tests/test_checks.py: a one-line error with exit status 1 and nothing written, or, where the input is valid, what
the documentation promises. Expected values come from closed forms (the bytes of known tensors), independent
computations (numpy's rotation of the stored pixels, a real evaluation traced beside the meta one) or from what must
not happen (no traceback, no file, no network evaluation).
"""

import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diractrap import checks, cli
from diractrap.data import load_image, save_image
from diractrap.deconv import Algorithm1Params, algorithm1
from diractrap.kernels import kernel
from diractrap.models import get_denoiser
from diractrap.potential import potential
from diractrap.priors import GaussianPrior

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread per test


def photo(size=32):
    """A real photo crop (scikit-image's astronaut, area-averaged), (3, size, size) float32 in [0, 1]."""
    import skimage.data

    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).double()[None] / 255
    return torch.nn.functional.adaptive_avg_pool2d(img, size)[0].float()


@pytest.fixture
def files(tmp_path):
    """Image files: a 32 x 32 and a 48 x 48 photo crop, a 1 x 1 and a 6 x 6 image, and a file that is no .npz."""
    out = {f"a{n}": str(save_image(photo(n), tmp_path / f"a{n}.png")) for n in (32, 48)}
    for n in (1, 6):
        out[f"a{n}"] = str(save_image(photo(32)[:, :n, :n], tmp_path / f"a{n}.png"))
    (tmp_path / "fake.npz").write_bytes(b"PK not a zip archive")
    out["fake"] = str(tmp_path / "fake.npz")
    return out


def run(argv, capsys):
    """(exit status, stdout, stderr) of one in-process command."""
    status = cli.main(argv)
    got = capsys.readouterr()
    return status, got.out, got.err


def refused(argv, capsys, named: str) -> str:
    """The command must stop with exit status 1 and one line on stderr naming ``named``, nothing on stdout."""
    status, out, err = run(argv, capsys)
    assert status == 1 and out == "" and err.count("\n") == 1 and "Traceback" not in err, (status, out, err)
    assert err.startswith(f"diractrap {argv[0]}: error: ") and named in err, err
    return err


# ---------------------------------------------------------------------------------------------------------------
# theorem1: ranges, finiteness, counts, sizes against the network and the kernel, options that need another one
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, named", [
    (["--theta", "nan"], "--theta must be a finite number, got nan"),  # NaN passed the old `>= 0` check
    (["--theta", "inf"], "--theta must be a finite number, got inf"),
    (["--theta", "-1"], "--theta must be a number >= 0"),
    (["--lanczos", "0"], "--lanczos must be an integer >= 1, got 0"),  # was an IndexError
    (["--lanczos", "-2"], "--lanczos must be an integer >= 1, got -2"),  # was torch's "Dimension size" message
    (["--descend", "-1"], "--descend must be an integer >= 0, got -1"),  # was numpy's "need at least one array"
    (["--lr", "0.1"], "--lr is the descent's step: it needs --descend N"),  # was silently ignored
    (["--size", "6"], "--kernel-size K = 15 must be smaller than the image (6x6)"),
    (["--kernel-size", "1"], "--kernel-size must be an integer >= 2"),  # (8) has no zero-sum direction for K = 1
    (["--angle", "30"], "angle applies to the motion family only"),
    (["--label", "3"], "--label 3: demo is unconditional"),
    (["--device", "nonsense"], "--device 'nonsense' is not a device: use cpu, cuda or cuda:N"),
])
def test_cli_theorem1_refuses_bad_values(files, capsys, options, named):
    refused(["theorem1", files["a32"], "--model", "demo", *options], capsys, named)


def test_cli_theorem1_refuses_a_one_pixel_image_without_advising_k_below_1(files, capsys):
    err = refused(["theorem1", files["a1"], "--model", "demo"], capsys, "the image is 1x1: too small for Theorem 1")
    assert "K < 1" not in err


def test_cli_theorem1_refuses_a_size_the_network_does_not_take(files, capsys):
    """6 x 6 with K = 3: the kernel fits, the demo U-Net (sides divisible by 4) does not (a tensor-size error)."""
    refused(["theorem1", files["a6"], "--model", "demo", "--kernel-size", "3"], capsys,
            "divisible by 4: crop or resize to 4 or 8 rows")


def test_cli_theorem1_json_is_strict_json(files, capsys):
    """With a motion kernel dq/dt along the Gaussian path is undefined: null, never the NaN strict readers refuse."""
    status, out, err = run(["theorem1", files["a32"], "--model", "demo", "--kernel", "motion", "--theta", "2",
                            "--kernel-size", "5", "--lanczos", "2", "--json"], capsys)
    assert status == 0, err

    def no_constant(name):
        raise AssertionError(f"{name} in the JSON output")

    rows = json.loads(out, parse_constant=no_constant)
    assert rows[0]["dq_dt_path"] is None and math.isfinite(rows[0]["grad_norm"])


def test_json_text_writes_null_for_every_non_finite_number():
    text = cli._json_text({"a": math.nan, "b": [1.5, math.inf, {"c": -math.inf}], "d": "nan"})
    assert json.loads(text) == {"a": None, "b": [1.5, None, {"c": None}], "d": "nan"}


# ---------------------------------------------------------------------------------------------------------------
# sweep: kernel against the images, one size, image sets, the table format, labels
# ---------------------------------------------------------------------------------------------------------------


def _sweep(files, *images, out="t.csv", thetas=("0", "1"), extra=()):
    out = str(Path(files["a32"]).parent / out)
    return ["sweep", *images, "--model", "demo", "--family", "gaussian", "--thetas", *thetas, "--out", out, *extra]


@pytest.mark.parametrize("case, named", [
    ("kernel", "--kernel-size K = 71 is larger than the images (32x32)"),  # was "Padding size should be less"
    ("two sizes", "images have different sizes (32x32, 48x48)"),  # was "stack expects each tensor"
    ("fake npz", "fake.npz is not an image set written by diractrap"),  # was numpy's allow_pickle advice
    ("npz and images", "an image set (.npz) is read by 'diractrap sweep' alone"),
    ("txt", "the extension '.txt' names no table format; use .parquet or .csv"),  # was Parquet in a .txt
    ("nan theta", "--thetas must be a finite number, got nan"),
    ("label", "--label-mode 3: demo is unconditional"),
    ("label mode", "labels must be 'none', 'dataset' or a class index"),
])
def test_cli_sweep_refuses_bad_input_and_writes_nothing(files, capsys, case, named):
    argv = {
        "kernel": _sweep(files, files["a32"], extra=["--kernel-size", "71"]),
        "two sizes": _sweep(files, files["a32"], files["a48"]),
        "fake npz": _sweep(files, files["fake"]),
        "npz and images": _sweep(files, files["fake"], files["a32"]),
        "txt": _sweep(files, files["a32"], out="t.txt"),
        "nan theta": _sweep(files, files["a32"], thetas=("0", "nan")),
        "label": _sweep(files, files["a32"], extra=["--label-mode", "3"]),
        "label mode": _sweep(files, files["a32"], extra=["--label-mode", "some"]),
    }[case]
    refused(argv, capsys, named)
    assert not list(Path(files["a32"]).parent.glob("t.*"))


def test_sweep_library_refuses_what_the_cli_refuses():
    prior = GaussianPrior.power_law((3, 16, 16), c=1e-2, alpha=1.0, eps=0.1, mean=0.5)
    x = photo(16)[None]
    from diractrap.sweeps import sweep

    with pytest.raises(ValueError, match="kernel_size K = 21 is larger than the images"):
        sweep(prior, x, "gaussian", [0, 1])
    with pytest.raises(ValueError, match="boundary must be"):
        sweep(prior, x, "gaussian", [0, 1], kernel_size=5, boundary="mirror")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        sweep(prior, x, "gaussian", [0, 1], kernel_size=5, batch_size=0)
    with pytest.raises(ValueError, match="images has values in"):
        sweep(prior, x * 255, "gaussian", [0, 1], kernel_size=5)
    with pytest.raises(ValueError, match="theta must be >= 0 and finite"):
        sweep(prior, x, "gaussian", [0, math.nan], kernel_size=5)


def test_image_set_reader_names_a_foreign_file(tmp_path):
    from diractrap.datasets import load_image_set

    np.savez(tmp_path / "other.npz", images=np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="other.npz is not an image set .*no array 'labels', 'names', 'rows'"):
        load_image_set(tmp_path / "other.npz")
    (tmp_path / "fake.npz").write_bytes(b"PK not a zip archive")
    with pytest.raises(ValueError, match="fake.npz is not an image set .*not an .npz archive"):
        load_image_set(tmp_path / "fake.npz")


# ---------------------------------------------------------------------------------------------------------------
# deblur: --dr-clamp and the other Algorithm 1 parameters, in the CLI and in Algorithm1Params
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, named", [
    (["--dr-clamp", "-1"], "--dr-clamp must be a number >= 0, got -1.0"),  # clipped z to [1, 0]: x_hat all zero
    (["--rel-step", "0", "0"], "--rel-step must be a positive number, got 0.0"),  # was "math domain error"
    (["--gamma-x", "0"], "--gamma-x must be > 0 with inner 'douglas-rachford'"),  # was refused mid-run
    (["--gamma-h-decay", "2"], "--gamma-h-decay must be in (0, 1], got 2.0"),
    (["--gamma-h-max", "0"], "--gamma-h-max must be a positive number"),
    (["--sigma", "nan"], "--sigma must be a finite number, got nan"),
    (["--label", "1"], "--label 1: demo is unconditional"),
    (["--device", "nonsense"], "--device 'nonsense' is not a device"),
])
def test_cli_deblur_refuses_bad_values_and_leaves_no_folder(files, capsys, options, named):
    out = Path(files["a32"]).parent / "run"
    refused(["deblur", files["a32"], "--model", "demo", "--kernel-size", "5", "--out", str(out), "--no-progress",
             *options], capsys, named)
    assert not out.exists()


@pytest.mark.parametrize("field, value, named", [
    ("dr_clamp", -1.0, "dr_clamp must be a number >= 0"),
    ("rel_step", (1e-2, 0.0), "rel_step must be a positive number"),
    ("rel_step", (1e-2,), "rel_step must be two numbers"),
    ("gamma_h_max", 0.0, "gamma_h_max must be a positive number"),
    ("cg_iter", 0, "cg_iter must be an integer >= 1"),
    ("n_in_first", -1, "n_in_first must be an integer >= 0"),
    ("dr_sigma", math.inf, "dr_sigma must be a finite number"),
])
def test_algorithm1_params_refuse_out_of_range_values(field, value, named):
    with pytest.raises(ValueError, match=named):
        Algorithm1Params(**{field: value})


def test_douglas_rachford_needs_a_positive_step_gradient_steps_may_freeze():
    with pytest.raises(ValueError, match="gamma_x must be > 0 with inner 'douglas-rachford'"):
        Algorithm1Params(inner="douglas-rachford", gamma_x=0.0)
    assert Algorithm1Params(inner="gradient", gamma_x=0.0).gamma_x == 0.0  # documented: 0 freezes x


# ---------------------------------------------------------------------------------------------------------------
# Devices: one that exists in this torch build, checked before the prior loads and before --out is made
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine without CUDA, whatever this one has: the check must read torch.cuda.is_available()."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("command", ["potential", "theorem1", "deblur"])
def test_cli_cuda_without_cuda_is_one_line_and_writes_nothing(files, capsys, no_cuda, command):
    out = Path(files["a32"]).parent / "run"
    argv = [command, files["a32"], "--model", "demo", "--device", "cuda"]
    argv += ["--out", str(out), "--kernel-size", "5"] if command == "deblur" else []
    err = refused(argv, capsys, "--device cuda: ")  # was "Torch not compiled with CUDA enabled" and a traceback
    assert "use cpu" in err and not out.exists()


def test_check_device_names_what_exists(no_cuda):
    assert checks.check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device"):
        checks.check_device("nonsense")
    with pytest.raises(ValueError, match="cuda:1: "):
        checks.check_device("cuda:1")
    with pytest.raises(ValueError, match="runs on cpu, cuda or mps, not meta"):
        checks.check_device("meta")
    with pytest.raises(ValueError, match="device 'gpu' is not a device"):
        get_denoiser("demo", device="gpu")  # the library entry point checks too


def test_a_cuda_index_beyond_the_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert checks.check_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="2 CUDA device\\(s\\), cuda:0 to cuda:1"):
        checks.check_device("cuda:2", "--device")


# ---------------------------------------------------------------------------------------------------------------
# Class labels: only for a conditional prior, one of its classes
# ---------------------------------------------------------------------------------------------------------------


def test_label_option_needs_a_conditional_prior_and_one_of_its_classes():
    from diractrap.models.edm import EDMPrecond

    cond = EDMPrecond(8, 3, label_dim=5, model_type="SongUNet", model_channels=8, channel_mult=[1],
                      num_blocks=1, attn_resolutions=[])
    checks.check_label_option(cond, 4, "--label", "cond")
    checks.check_label_option(cond, "dataset", "--label-mode", "cond")  # each image's own class, checked per image
    with pytest.raises(ValueError, match=r"--label must be a class index in \[0, 4\] for cond, got 5"):
        checks.check_label_option(cond, 5, "--label", "cond")
    uncond = get_denoiser("demo")
    checks.check_label_option(uncond, None)  # not given: nothing to check
    with pytest.raises(ValueError, match="--label 0: demo is unconditional"):
        checks.check_label_option(uncond, 0, "--label", "demo")


@pytest.mark.parametrize("command", ["potential", "theorem1"])
def test_cli_label_on_an_unconditional_prior_is_refused(files, capsys, command):
    refused([command, files["a32"], "--model", "demo", "--label", "2"], capsys, "--label 2: demo is unconditional")


# ---------------------------------------------------------------------------------------------------------------
# models: --root must be a directory
# ---------------------------------------------------------------------------------------------------------------


def test_cli_models_root_that_is_a_file_is_refused(files, capsys):
    err = refused(["models", "--root", files["a32"]], capsys, "--root")
    assert "is a file, not a directory" in err  # was a table of paths inside the file
    from diractrap.models.registry import checkpoint_dir

    with pytest.raises(ValueError, match="checkpoint directory .* is a file"):
        checkpoint_dir(files["a32"])


# ---------------------------------------------------------------------------------------------------------------
# Memory: the meta-device trace against closed forms and a real evaluation; refusals before any evaluation
# ---------------------------------------------------------------------------------------------------------------


class TwoConvs(torch.nn.Module):
    """x (B, 3, H, W) -> conv 3->8 -> conv 8->5 -> the first 3 channels (a view): a peak known in closed form."""

    sigma_min, sigma_max, data_range = 0.01, 10.0, (0.0, 1.0)

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 5, 3, padding=1)

    def forward(self, x, sigma, labels=None):
        return self.b(self.a(x))[:, :3]


def test_traced_peak_of_a_known_network_is_its_two_activations():
    """Forward: the noise levels (B,) are made, then the 8-channel activation, alive while the 5-channel one is
    made; the slice is a view; the input and the weights existed before: peak = (8 + 5) B H W + B float32 values."""
    net = TwoConvs()
    B, H, W = 2, 10, 7
    assert checks.network_peak(net, (B, 3, H, W), "forward") == ((8 + 5) * B * H * W + B) * 4
    assert checks.network_peak(net, (B, 3, H, W), lambda den, x: x.view(-1), key="view") == 0
    assert checks.network_peak(GaussianPrior.power_law((3, 4, 4)), (1, 3, 4, 4), "forward") is None  # no network


def test_traced_peak_of_the_demo_network_equals_a_real_evaluation():
    """The meta trace (shapes only) against the same tracker around a real CPU evaluation: the same tensors are
    allocated (a few scalar constants differ: 0.1 % allowed)."""
    den = get_denoiser("demo")
    xg = (photo(32)[None] * 2 - 1).requires_grad_(True)
    with checks._PeakBytes() as real:  # what network_peak's "vjp" work does, on real tensors
        with torch.enable_grad():
            D = den(xg, torch.ones(1))
            torch.autograd.grad(D, xg, torch.ones_like(D))
    traced = checks.network_peak(den, (1, 3, 32, 32), "vjp")
    assert real.peak > 1e6 and traced == pytest.approx(real.peak, rel=1e-3)


def test_the_memory_limit_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(checks.MEMORY_LIMIT_ENV, "1.5")
    assert checks.available_memory("cpu") == (int(1.5 * 2**20), "the limit $DIRACTRAP_MEMORY_LIMIT_MB")
    monkeypatch.setenv(checks.MEMORY_LIMIT_ENV, "-3")
    with pytest.raises(ValueError, match="DIRACTRAP_MEMORY_LIMIT_MB must be a positive number of MiB, got '-3'"):
        checks.available_memory("cpu")
    monkeypatch.delenv(checks.MEMORY_LIMIT_ENV)
    avail, source = checks.available_memory("cpu")
    assert source == "available" and (avail is None or avail > 0)


def test_potential_refuses_past_the_limit_before_any_evaluation_and_runs_below_it(monkeypatch):
    """The same 32 x 32 image: refused under a 1 MiB limit (its forward + VJP alone traces to ~12 MiB) with no
    network evaluation, computed under a 1 GiB one."""
    den = get_denoiser("demo")
    calls = []
    den.register_forward_hook(lambda m, args, out: calls.append(args[0].device.type))
    x = photo(32)[None]
    monkeypatch.setenv(checks.MEMORY_LIMIT_ENV, "1")
    with pytest.raises(ValueError, match=r"q\(x\) of 1 image\(s\) of 3x32x32 needs about .* MiB .* but 1 MiB is the "
                                         r"limit \$DIRACTRAP_MEMORY_LIMIT_MB: use fewer images per batch"):
        potential(den, x, solver="heun", steps=2, n_probes=1)
    assert "cpu" not in calls  # only the meta trace ran the network
    monkeypatch.setenv(checks.MEMORY_LIMIT_ENV, "1024")
    assert torch.isfinite(potential(den, x, solver="heun", steps=2, n_probes=1).q).all()


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """A 4000 x 4000 RGB file with contrast (a ramp), 75 kB as a PNG: 16 M pixels, 192 MB as float32."""
    ramp = np.linspace(0, 255, 4000).astype(np.uint8) // 2
    a = np.add.outer(ramp, ramp).astype(np.uint8)
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.fromarray(np.stack([a] * 3, -1)).save(path)
    return str(path)


@pytest.mark.parametrize("command, what", [
    ("potential", r"q\(x\) of 1 image\(s\) of 3x4000x4000"),  # was killed by the kernel at 24 GB (exit 137)
    ("theorem1", "Theorem 1's diagnostics at an image of 3x4000x4000"),  # ran on past a minute
    ("deblur", r"Algorithm 1 on 1 image\(s\) of 3x4000x4000"),  # ran on, and left an empty folder
])
def test_cli_a_4000_pixel_image_is_refused_with_the_estimate_and_the_way_out(huge, tmp_path, capsys, monkeypatch,
                                                                             command, what):
    monkeypatch.setenv(checks.MEMORY_LIMIT_ENV, "16000")  # a 16 GB machine, whatever this one has
    out = tmp_path / "run"
    argv = [command, huge, "--model", "demo"] + (["--out", str(out), "--no-progress"] if command == "deblur" else [])
    status, _, err = run(argv, capsys)
    assert status == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert __import__("re").search(f"{what} needs about [0-9.]+ TiB of memory on cpu but 15.6 GiB is the limit", err)
    assert "smaller image" in err or "smaller images" in err
    assert not out.exists()


def test_the_allocators_message_becomes_ours():
    err = RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 138240000000 bytes. Error code 12 (Cannot allocate memory)")
    text = cli._one_line(err)
    assert text.startswith("out of memory (one allocation of 129 GiB failed): process fewer images at once")
    assert "alloc_cpu" not in text


def test_theorem1_library_checks_its_input_before_any_evaluation():
    from diractrap.theorem1 import descend_to_critical, diagnose

    prior = GaussianPrior.power_law((3, 16, 16), c=1e-2, alpha=1.0, eps=0.1, mean=0.5)
    x, h = photo(16)[None].double(), kernel("gaussian", 1.0, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_lanczos must be an integer >= 1"):
        diagnose(prior, x, h, n_lanczos=0)
    with pytest.raises(ValueError, match="kernel_size K = 17 must be smaller than the image"):
        diagnose(prior, x, kernel("gaussian", 1.0, 17, dtype=torch.float64))
    with pytest.raises(ValueError, match="theta must be a finite number"):
        diagnose(prior, x, h, theta=math.nan)
    with pytest.raises(ValueError, match="h has 2 kernels for 1 images"):
        diagnose(prior, x, h.expand(2, 5, 5))
    with pytest.raises(ValueError, match="defined on 3x16x16 images only"):
        diagnose(prior, photo(12)[None].double(), h)
    with pytest.raises(ValueError, match="n_steps must be an integer >= 0"):
        descend_to_critical(prior, x, n_steps=-1)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        descend_to_critical(prior, x, lr=0.0)


def test_run_pairs_refuses_a_kernel_as_large_as_the_images():
    from diractrap.problems import run_pairs

    prior = GaussianPrior.power_law((3, 8, 8), c=1e-2, alpha=1.0, eps=0.1, mean=0.5)
    with pytest.raises(ValueError, match=r"h_true is 9x9, not smaller than x_true \(8x8\)"):
        run_pairs(prior, photo(8)[None], kernel("gaussian", 1.0, 9)[None], params=Algorithm1Params(n_ext=1))
    with pytest.raises(ValueError, match="h_true has 1 kernels for 2 images"):
        run_pairs(prior, photo(8)[None].expand(2, -1, -1, -1), kernel("gaussian", 1.0, 3)[None],
                  params=Algorithm1Params(n_ext=1))


def test_algorithm1_memory_check_runs_before_any_evaluation(monkeypatch):
    den = get_denoiser("demo")
    calls = []
    den.register_forward_hook(lambda m, args, out: calls.append(args[0].device.type))
    monkeypatch.setenv(checks.MEMORY_LIMIT_ENV, "0.5")
    with pytest.raises(ValueError, match=r"Algorithm 1 on 1 image\(s\) of 3x32x32 needs about"):
        algorithm1(den, photo(28)[None], "wide", kernel_size=5, params=Algorithm1Params(n_ext=1, n_in=1),
                   progress=False)
    assert "cpu" not in calls


# ---------------------------------------------------------------------------------------------------------------
# Output folders and Ctrl-C: a folder that holds a run is refused unless --overwrite; an interrupt leaves nothing
# ---------------------------------------------------------------------------------------------------------------


def test_cli_deblur_refuses_a_folder_that_holds_files_unless_overwrite(files, capsys):
    out = Path(files["a32"]).parent / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")  # an earlier run's complete-looking file
    argv = ["deblur", files["a32"], "--model", "demo", "--kernel-size", "5", "--out", str(out), "--n-ext", "1",
            "--no-progress"]
    refused(argv, capsys, "already holds files (summary.json): give a new folder, or --overwrite")
    assert (out / "summary.json").read_text() == "{}"
    status, stdout, err = run(argv + ["--overwrite"], capsys)
    assert status == 0, err
    assert json.loads((out / "summary.json").read_text())["settings"]["n_ext"] == 1  # the new run's
    assert {p.name for p in out.iterdir()} == {"x_hat.png", "x_hat.npy", "h_hat.png", "h_hat.npy", "trajectory.npz",
                                                "result.png", "summary.json"}
    assert max(out.iterdir(), key=lambda p: p.stat().st_mtime_ns).name == "summary.json"  # written last


def test_cli_interrupt_in_process_is_status_130_and_removes_the_new_folder(files, capsys, monkeypatch):
    from diractrap import deconv

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(deconv, "algorithm1", interrupted)
    out = Path(files["a32"]).parent / "new" / "run"
    status, _, err = run(["deblur", files["a32"], "--model", "demo", "--kernel-size", "5", "--out", str(out),
                          "--no-progress"], capsys)
    assert status == 130 and err == "diractrap deblur: interrupted (Ctrl-C); no output was completed\n"
    assert not (Path(files["a32"]).parent / "new").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is a POSIX signal")
def test_cli_deblur_under_sigint_exits_130_with_one_line_and_no_output(files):
    """A real Ctrl-C: the command runs in its own process; once it prints that Algorithm 1 has started (a run of
    10^6 kernel steps, hours on any machine), SIGINT. Before: a KeyboardInterrupt traceback, exit status -2 and an
    empty output folder."""
    out = Path(files["a32"]).parent / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "diractrap.cli", "deblur", files["a32"], "--model", "demo",
                             "--kernel-size", "5", "--n-ext", "1000000", "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 300)  # the start line, or the end of the process
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("deblurring "), (line, proc.stderr.read() if proc.poll() is not None else "")
        time.sleep(1.0)  # into the run: its checks, then Algorithm 1's loop
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr == "diractrap deblur: interrupted (Ctrl-C); no output was completed\n"
    assert stdout == "" and not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# Images: EXIF orientation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation, turn", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)),
                                               (8, lambda a: np.rot90(a, 1))])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    """A camera stores the sensor's rows and a tag saying how to turn them (6: 90 degrees clockwise to view). The
    expected array is numpy's rotation of the stored pixels, as PIL decodes them without the tag."""
    stored = (photo(32).numpy()[:, :24, :].transpose(1, 2, 0) * 255).round().astype(np.uint8)  # 24 x 32, not square
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    path = tmp_path / "camera.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    with Image.open(path) as im:
        decoded = np.asarray(im.convert("RGB"), dtype=np.float32) / 255  # the stored pixels, tag not applied
    x = load_image(path)
    np.testing.assert_array_equal(x.numpy().transpose(1, 2, 0), turn(decoded))
    assert x.shape[1:] == ((24, 32) if orientation == 3 else (32, 24))


def test_ncsnpp_with_attention_takes_its_native_size_only():
    """score_sde's NCSN++ places its attention blocks where the feature map's width equals an attention resolution:
    at another input size the blocks it built are met in the wrong order (a TypeError deep in the network)."""
    from diractrap.models.ncsnpp import NCSNppConfig, NCSNppDenoiser, build_ncsnpp

    cfg = NCSNppConfig(image_size=16, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
    den = NCSNppDenoiser(build_ncsnpp(cfg))
    assert checks.model_geometry(den) == checks.Geometry(channels=3, shape=(3, 16, 16))
    with pytest.raises(TypeError):  # what the check prevents
        den(torch.rand(1, 3, 32, 32), torch.ones(1))
    with pytest.raises(ValueError, match="defined on 3x16x16 images only"):
        potential(den, photo(32)[None], solver="heun", steps=1, n_probes=1)
