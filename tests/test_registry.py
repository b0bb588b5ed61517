"""The registry of the paper's checkpoints, the sha256 lock file, get_denoiser by name, and `diractrap models`."""

import hashlib
import json

import pytest
import torch

from conftest import shared_file
from diractrap import cli
from diractrap.models import REGISTRY, ModelSpec, checkpoint_path, checkpoint_status, fetch_checkpoint, get_denoiser
from diractrap.models.download import LOCK_NAME, ChecksumError
from test_download import DIGEST, PAYLOAD, LocalServer


def test_paper_models_are_registered():
    cdn = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
    expected = {
        "ffhq256": ("gdrive:1-mtdSwuefIZA0n85QWScQo2WRvJNWwUy", "ncsnpp", (0.0, 1.0), 256, (0.01, 348.0)),
        "ffhq64": (cdn + "edm-ffhq-64x64-uncond-vp.pkl", "edm-ddpmpp", (-1.0, 1.0), 64, (0.002, 80.0)),
        "afhq64": (cdn + "edm-afhqv2-64x64-uncond-vp.pkl", "edm-ddpmpp", (-1.0, 1.0), 64, (0.002, 80.0)),
        "imagenet64": (cdn + "edm-imagenet-64x64-cond-adm.pkl", "edm-adm", (-1.0, 1.0), 64, (0.002, 80.0)),
    }
    for name, (url, arch, rng, res, sig) in expected.items():
        spec = REGISTRY[name]
        got = (spec.urls[0], spec.architecture, spec.data_range, spec.resolution, spec.sigma_range)
        assert got == (url, arch, rng, res, sig)
        assert spec.filename and spec.licence and spec.build is None
    assert REGISTRY["ffhq256"].options["weights"] == "model"  # the authors loaded the raw weights
    assert "gaussian-demo" in REGISTRY  # embedded priors live in the same registry


def test_checkpoint_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("DIRACTRAP_CHECKPOINTS", raising=False)
    assert checkpoint_path("ffhq64").as_posix() == "data/checkpoints/edm-ffhq-64x64-uncond-vp.pkl"
    monkeypatch.setenv("DIRACTRAP_CHECKPOINTS", str(tmp_path / "env"))
    assert checkpoint_path("ffhq64") == tmp_path / "env" / "edm-ffhq-64x64-uncond-vp.pkl"
    assert checkpoint_path("ffhq64", root=tmp_path) == tmp_path / "edm-ffhq-64x64-uncond-vp.pkl"  # argument wins
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        checkpoint_path("nope")
    with pytest.raises(ValueError, match="embedded"):
        checkpoint_path("gaussian-demo")


# ---------------------------------------------------------------------------------------------------------------
# Download, lock file and verification through the registry (a test model served on 127.0.0.1)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch):
    with LocalServer({"/blob.bin": PAYLOAD}) as srv:
        spec = ModelSpec(name="test-blob", description="test", data_range=(0.0, 1.0), resolution=16,
                         urls=(srv.url + "/blob.bin",), filename="blob.bin", architecture="none")
        monkeypatch.setitem(REGISTRY, spec.name, spec)
        yield srv, spec


def test_first_download_records_the_hash_and_later_uses_verify(served, tmp_path):
    srv, spec = served
    assert checkpoint_status("test-blob", root=tmp_path)["state"] == "missing"
    with pytest.raises(FileNotFoundError, match=f"place it at {tmp_path / 'blob.bin'}"):
        fetch_checkpoint("test-blob", root=tmp_path, download=False)
    path, digest = fetch_checkpoint("test-blob", root=tmp_path, progress=False)
    assert (path, digest) == (tmp_path / "blob.bin", DIGEST)
    lock = json.loads((tmp_path / LOCK_NAME).read_text())
    assert lock["blob.bin"]["sha256"] == DIGEST and lock["blob.bin"]["size"] == len(PAYLOAD)
    assert checkpoint_status("test-blob", root=tmp_path)["state"] == "verified"
    assert checkpoint_status("test-blob", root=tmp_path, verify=False)["state"] == "present (not checked)"
    # a later use verifies against the record: a damaged file is refused, not re-recorded
    path.write_bytes(PAYLOAD[:-1] + b"\0")
    assert checkpoint_status("test-blob", root=tmp_path)["state"] == "mismatch"
    with pytest.raises(ChecksumError, match=f"recorded in {tmp_path / LOCK_NAME}"):
        fetch_checkpoint("test-blob", root=tmp_path, progress=False)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["blob.bin"]["sha256"] == DIGEST
    # deleting it downloads it again; the record holds
    path.unlink()
    assert fetch_checkpoint("test-blob", root=tmp_path, progress=False)[1] == DIGEST
    assert len(srv.requests) == 2


def test_pinned_hash_wins_and_a_wrong_download_is_removed(served, tmp_path):
    srv, spec = served
    with pytest.raises(ChecksumError, match="pinned"):
        fetch_checkpoint("test-blob", root=tmp_path, sha256="cd" * 32, progress=False)
    assert not (tmp_path / "blob.bin").exists() and not (tmp_path / LOCK_NAME).exists()
    assert checkpoint_status("test-blob", root=tmp_path)["state"] == "missing"
    assert fetch_checkpoint("test-blob", root=tmp_path, sha256=DIGEST.upper(), progress=False)[1] == DIGEST


def test_file_placed_by_hand_is_accepted_and_recorded(served, tmp_path):
    srv, spec = served
    (tmp_path / "blob.bin").write_bytes(PAYLOAD)
    assert checkpoint_status("test-blob", root=tmp_path)["state"] == "present (no recorded hash)"
    assert fetch_checkpoint("test-blob", root=tmp_path)[1] == DIGEST
    assert srv.requests == [] and checkpoint_status("test-blob", root=tmp_path)["state"] == "verified"


def test_partial_download_state(served, tmp_path):
    srv, spec = served
    srv.truncate.add("/blob.bin")
    with pytest.raises(RuntimeError):
        fetch_checkpoint("test-blob", root=tmp_path, progress=False)
    assert checkpoint_status("test-blob", root=tmp_path)["state"].startswith("partial")
    with pytest.raises(FileNotFoundError):  # the .part never passes for the checkpoint
        fetch_checkpoint("test-blob", root=tmp_path, download=False)


def test_cli_models_lists_states(served, tmp_path, capsys):
    srv, spec = served
    assert cli.main(["models", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(REGISTRY) <= set(lines)
    assert " missing " in lines["ffhq256"] and " missing " in lines["test-blob"]
    assert " embedded " in lines["gaussian-demo"]
    assert cli.main(["models", "--root", str(tmp_path), "--fetch", "test-blob", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"test-blob: {tmp_path / 'blob.bin'} sha256 {DIGEST}" in out
    assert " verified " in [line for line in out.splitlines() if line.startswith("test-blob ")][0]


def test_cli_models_offline_error_is_one_line(tmp_path, capsys, monkeypatch):
    spec = ModelSpec(name="test-offline", description="", data_range=(0.0, 1.0), resolution=16,
                     urls=("http://127.0.0.1:9/x.pkl",), filename="x.pkl")  # port 9 (discard): nobody listens
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    assert cli.main(["models", "--root", str(tmp_path), "--fetch", "test-offline", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "http://127.0.0.1:9/x.pkl" in err and str(tmp_path / "x.pkl") in err


# ---------------------------------------------------------------------------------------------------------------
# get_denoiser by name: download, verify, load (the tiny golden NCSN++ served as if it were a paper checkpoint)
# ---------------------------------------------------------------------------------------------------------------


def test_get_denoiser_downloads_verifies_and_loads(monkeypatch, tmp_path):
    data = shared_file("golden", "ncsnpp_ve_tiny_checkpoint.pth").read_bytes()
    config = json.loads(shared_file("golden", "ncsnpp_ve_tiny_loader_config.json").read_text())
    with LocalServer({"/tiny.pth": data}) as srv:
        spec = ModelSpec(name="tiny-ncsnpp", description="", data_range=(0.0, 1.0), resolution=16,
                         urls=(srv.url + "/tiny.pth",), filename="tiny.pth", architecture="ncsnpp",
                         licence="test", options={"weights": "model", "config": config})
        monkeypatch.setitem(REGISTRY, spec.name, spec)
        den = get_denoiser("tiny-ncsnpp", root=tmp_path, progress=False)
        assert den.info["sha256"] == hashlib.sha256(data).hexdigest()
        assert den.info["name"] == "tiny-ncsnpp" and den.info["weights"] == "model" and den.info["licence"] == "test"
        assert get_denoiser("tiny-ncsnpp", root=tmp_path, weights="ema").info["weights"] == "ema"  # caller overrides
        assert len(srv.requests) == 1  # the second call used the verified file
    io = torch.load(shared_file("golden", "ncsnpp_ve_tiny_io.pt"), weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(den.score(io["x"], io["sigma"]), io["score_model_float32"], rtol=1e-5, atol=0)


def test_get_denoiser_by_path_dispatches_edm_snapshots():
    """A .pkl path goes to the restricted EDM unpickler; the result is the golden EDMPrecond output."""
    io = torch.load(shared_file("golden", "edm_ddpmpp_io.pt"), weights_only=True)
    den = get_denoiser(str(shared_file("golden", "edm_ddpmpp_snapshot_nosrc.pkl")), name="ddpmpp")
    assert den.info["format"] == "edm" and den.info["name"] == "ddpmpp" and den.data_range == (-1.0, 1.0)
    with torch.no_grad():
        D = den(io["x"], io["sigma"])
    # the same float32 network as the original (tests/test_models_edm.py pins it closely): a dispatch check here
    assert (D - io["D_float32"]).abs().max() <= 1e-5 * io["D_float32"].abs().max()
    with pytest.raises(ValueError, match="only the 'ema' network"):
        get_denoiser(str(shared_file("golden", "edm_ddpmpp_snapshot_nosrc.pkl")), weights="model")
