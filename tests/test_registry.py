"""The registry of the paper's checkpoints, the sha256 lock file, get_denoiser by name, and `diractrap models`."""

import hashlib
import io
import json
import os

import pytest
import torch

from conftest import GOLDEN
from diractrap import cli
from diractrap.models import (REGISTRY, ModelSpec, checkpoint_path, checkpoint_status, fetch_checkpoint, get_denoiser,
                              job_denoiser)
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
    """A registered model whose file is opaque bytes: enough for pinned hashes (no load is needed to trust them)."""
    with LocalServer({"/blob.bin": PAYLOAD}) as srv:
        spec = ModelSpec(name="test-blob", description="test", data_range=(0.0, 1.0), resolution=16,
                         urls=(srv.url + "/blob.bin",), filename="blob.bin", architecture="none")
        monkeypatch.setitem(REGISTRY, spec.name, spec)
        yield srv, spec


TINY = {"nf": 8, "ch_mult": [1, 2], "image_size": 8, "attn_resolutions": [], "num_res_blocks": 1}  # NCSN++


def tiny_checkpoint(seed=0) -> bytes:
    """A real (random-weight) NCSN++ state dict as torch.save writes it: a file that loads as the architecture."""
    from diractrap.models.ncsnpp import build_ncsnpp

    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(build_ncsnpp(TINY).state_dict(), buf)
    return buf.getvalue()


@pytest.fixture
def served_net(monkeypatch):
    """A registered NCSN++ served on 127.0.0.1: /tiny.pth loads; /garbage.pth is 1000 random bytes."""
    data = tiny_checkpoint()
    files = {"/tiny.pth": data, "/garbage.pth": bytes(range(256)) * 3 + bytes(232)}
    with LocalServer(files) as srv:
        spec = ModelSpec(name="test-net", description="test", data_range=(0.0, 1.0), resolution=8,
                         urls=(srv.url + "/tiny.pth",), filename="tiny.pth", architecture="ncsnpp",
                         options={"weights": "model", "config": TINY})
        monkeypatch.setitem(REGISTRY, spec.name, spec)
        yield srv, spec, data


def _serve_garbage(spec, srv, monkeypatch):
    bad = ModelSpec(**{**spec.__dict__, "urls": (srv.url + "/garbage.pth",)})
    monkeypatch.setitem(REGISTRY, spec.name, bad)


def test_first_download_records_the_hash_once_it_loads_and_later_uses_verify(served_net, tmp_path):
    srv, spec, data = served_net
    digest = hashlib.sha256(data).hexdigest()
    assert checkpoint_status("test-net", root=tmp_path)["state"] == "missing"
    with pytest.raises(FileNotFoundError, match=f"place it at {tmp_path / 'tiny.pth'}"):
        fetch_checkpoint("test-net", root=tmp_path, download=False)
    path, got = fetch_checkpoint("test-net", root=tmp_path, progress=False)
    assert (path, got) == (tmp_path / "tiny.pth", digest)
    lock = json.loads((tmp_path / LOCK_NAME).read_text())
    assert lock["tiny.pth"]["sha256"] == digest and lock["tiny.pth"]["size"] == len(data)
    assert lock["tiny.pth"]["origin"] == "download"
    assert checkpoint_status("test-net", root=tmp_path)["state"] == "verified"
    assert checkpoint_status("test-net", root=tmp_path, verify=False)["state"] == "present (not checked)"
    # a later use verifies against the record: a damaged file is refused, not re-recorded
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert checkpoint_status("test-net", root=tmp_path)["state"] == "mismatch"
    with pytest.raises(ChecksumError, match=f"recorded in {tmp_path / LOCK_NAME}"):
        fetch_checkpoint("test-net", root=tmp_path, progress=False)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["tiny.pth"]["sha256"] == digest
    # deleting it downloads it again; the record holds
    path.unlink()
    assert checkpoint_status("test-net", root=tmp_path)["state"] == "missing (hash recorded)"
    assert fetch_checkpoint("test-net", root=tmp_path, progress=False)[1] == digest
    assert len(srv.requests) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, "tiny.pth"]  # no .flock, no .part


def test_pinned_hash_wins_and_a_wrong_download_is_removed(served, tmp_path):
    srv, spec = served
    with pytest.raises(ChecksumError, match="pinned"):
        fetch_checkpoint("test-blob", root=tmp_path, sha256="cd" * 32, progress=False)
    assert not (tmp_path / "blob.bin").exists() and not (tmp_path / LOCK_NAME).exists()
    assert checkpoint_status("test-blob", root=tmp_path)["state"] == "missing"
    assert fetch_checkpoint("test-blob", root=tmp_path, sha256=DIGEST.upper(), progress=False)[1] == DIGEST
    assert not (tmp_path / LOCK_NAME).exists()  # a pinned hash needs no record


def test_job_denoiser_always_applies_the_jobs_pin(served_net, tmp_path):
    srv, spec, data = served_net
    fetch_checkpoint("test-net", root=tmp_path, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    weights = [str(tmp_path / "tiny.pth")]  # the job's snakemake.input.weights
    job = dict(prior="test-net", device="cpu", sha256="ef" * 32)
    with pytest.raises(ChecksumError, match="pinned"):
        job_denoiser(job, weights)
    job["sha256"] = hashlib.sha256(data).hexdigest()
    assert job_denoiser(job, weights).info["sha256"] == job["sha256"]
    with pytest.raises(KeyError):  # a job builder that forgot the pin is an error, not an unchecked load
        job_denoiser(dict(prior="test-net", device="cpu"), weights)


def test_a_pin_applies_to_the_weights_of_an_embedded_prior():
    demo = job_denoiser(dict(prior="demo", device="cpu", sha256=None))  # embedded: no weights input
    assert get_denoiser("demo", sha256=demo.info["sha256"].upper()).info["sha256"] == demo.info["sha256"]
    with pytest.raises(ChecksumError, match="instead of the pinned"):
        get_denoiser("demo", sha256="0" * 64)
    with pytest.raises(ChecksumError, match="no weights file"):
        get_denoiser("gaussian-demo", sha256="0" * 64)


def test_file_placed_by_hand_is_recorded_as_such_once_it_loads(served_net, tmp_path):
    srv, spec, data = served_net
    (tmp_path / "tiny.pth").write_bytes(data)
    assert checkpoint_status("test-net", root=tmp_path)["state"] == "loads (not yet recorded)"
    assert not (tmp_path / LOCK_NAME).exists()  # looking is not trusting
    den = get_denoiser("test-net", root=tmp_path)
    assert den.info["sha256"] == hashlib.sha256(data).hexdigest() and den.info["architecture"] == "ncsnpp"
    assert json.loads((tmp_path / LOCK_NAME).read_text())["tiny.pth"]["origin"] == "placed by hand"
    assert srv.requests == [] and checkpoint_status("test-net", root=tmp_path)["state"] == "verified"


@pytest.mark.parametrize("how", ["downloaded", "placed by hand"])
def test_a_file_that_does_not_load_is_never_recorded(served_net, tmp_path, monkeypatch, capsys, how):
    """The hash of any file at the path was recorded before loading, also when the loader refused it; the right
    file placed afterwards was then refused as a mismatch."""
    srv, spec, data = served_net
    if how == "downloaded":
        _serve_garbage(spec, srv, monkeypatch)
    else:
        (tmp_path / "tiny.pth").write_bytes(os.urandom(1000))
        assert checkpoint_status("test-net", root=tmp_path)["state"].startswith("invalid (")
    with pytest.raises(ChecksumError, match="does not load as ncsnpp"):
        get_denoiser("test-net", root=tmp_path, progress=False)
    assert not (tmp_path / LOCK_NAME).exists()
    assert (tmp_path / "tiny.pth").exists() == (how == "placed by hand")  # a bad download is removed, a user's file not
    assert not [p for p in tmp_path.iterdir() if p.name != "tiny.pth"]  # no .flock, no .part, no lock
    # the right file, placed afterwards, is accepted
    (tmp_path / "tiny.pth").write_bytes(data)
    assert get_denoiser("test-net", root=tmp_path).info["sha256"] == hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    assert cli.main(["models", "--root", str(tmp_path)]) == 0
    assert " verified " in [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("test-net ")][0]


def test_cli_models_shows_invalid_files_and_forgets_records(served_net, tmp_path, capsys):
    srv, spec, data = served_net
    (tmp_path / "tiny.pth").write_bytes(os.urandom(1000))  # showed as "present (no recorded hash)"
    assert cli.main(["models", "--root", str(tmp_path)]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("test-net ")][0]
    assert " invalid (" in line
    (tmp_path / "tiny.pth").unlink()
    fetch_checkpoint("test-net", root=tmp_path, progress=False)
    (tmp_path / "tiny.pth").unlink()  # deleting the file keeps the record ...
    assert "tiny.pth" in json.loads((tmp_path / LOCK_NAME).read_text())
    assert cli.main(["models", "--root", str(tmp_path), "--forget", "test-net"]) == 0  # ... forgetting removes it
    out = capsys.readouterr().out
    assert "test-net: record removed" in out and not (tmp_path / LOCK_NAME).exists()
    assert " missing " in [ln for ln in out.splitlines() if ln.startswith("test-net ")][0]
    assert not list(tmp_path.iterdir())


def test_partial_download_state(served, tmp_path):
    srv, spec = served
    srv.truncate.add("/blob.bin")
    with pytest.raises(RuntimeError):
        fetch_checkpoint("test-blob", root=tmp_path, progress=False)
    assert checkpoint_status("test-blob", root=tmp_path)["state"].startswith("partial")
    with pytest.raises(FileNotFoundError):  # the .part never passes for the checkpoint
        fetch_checkpoint("test-blob", root=tmp_path, download=False)


def test_cli_models_lists_states(served_net, tmp_path, capsys):
    srv, spec, data = served_net
    assert cli.main(["models", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(REGISTRY) <= set(lines)
    assert " missing " in lines["ffhq256"] and " missing " in lines["test-net"]
    assert " embedded " in lines["gaussian-demo"]
    assert cli.main(["models", "--root", str(tmp_path), "--fetch", "test-net", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"test-net: {tmp_path / 'tiny.pth'} sha256 {hashlib.sha256(data).hexdigest()}" in out
    assert " verified " in [line for line in out.splitlines() if line.startswith("test-net ")][0]


def test_cli_models_offline_error_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    spec = ModelSpec(name="test-offline", description="", data_range=(0.0, 1.0), resolution=16,
                     urls=("http://127.0.0.1:9/x.pkl",), filename="x.pkl")  # port 9 (discard): nobody listens
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    root = tmp_path / "checkpoints"
    assert cli.main(["models", "--root", str(root), "--fetch", "test-offline", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "http://127.0.0.1:9/x.pkl" in err and str(root / "x.pkl") in err
    assert not root.exists()  # failed fetches left empty .flock files (and the directory) behind


def test_loader_refusal_never_advises_an_unsafe_retry(tmp_path, capsys):
    """torch's message says to retry with weights_only=False: advice this project must never give."""
    from diractrap.models import load_denoiser

    class CarriesCode:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"model": CarriesCode()}, path)
    with pytest.raises(ValueError, match="not a plain-tensor PyTorch checkpoint and was not loaded") as err:
        load_denoiser(path)
    assert "weights_only" not in str(err.value) and "system" in str(err.value)
    assert cli.main(["potential", str(_image(tmp_path)), "--model", str(path), "--no-progress"]) == 1
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and "weights_only" not in out and "Traceback" not in out


def _image(tmp_path):
    from diractrap.data import save_image

    return save_image(torch.full((3, 8, 8), 0.5), tmp_path / "grey.png")


# ---------------------------------------------------------------------------------------------------------------
# get_denoiser by name: download, verify, load (the tiny golden NCSN++ served as if it were a paper checkpoint)
# ---------------------------------------------------------------------------------------------------------------


def test_get_denoiser_downloads_verifies_and_loads(monkeypatch, tmp_path):
    data = (GOLDEN / "ncsnpp_ve_tiny_checkpoint.pth").read_bytes()
    config = json.loads((GOLDEN / "ncsnpp_ve_tiny_loader_config.json").read_text())
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
    io = torch.load(GOLDEN / "ncsnpp_ve_tiny_io.pt", weights_only=True)
    with torch.no_grad():
        ref = io["score_model_float32"]
        # float32 sums in a thread-count-dependent order: ~1e-7 of the largest value (1.2e-4 of 151 measured with one
        # thread against the fixture's default threads); atol 1e-6 of it, rtol 1e-5 elsewhere
        torch.testing.assert_close(den.score(io["x"], io["sigma"]), ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())


def test_get_denoiser_by_path_dispatches_edm_snapshots():
    """A .pkl path goes to the restricted EDM unpickler; the result is the golden EDMPrecond output."""
    io = torch.load(GOLDEN / "edm_ddpmpp_io.pt", weights_only=True)
    den = get_denoiser(str(GOLDEN / "edm_ddpmpp_snapshot_nosrc.pkl"), name="ddpmpp")
    assert den.info["format"] == "edm" and den.info["name"] == "ddpmpp" and den.data_range == (-1.0, 1.0)
    with torch.no_grad():
        D = den(io["x"], io["sigma"])
    # the same float32 network as the original (tests/test_models_edm.py pins it closely): a dispatch check here
    assert (D - io["D_float32"]).abs().max() <= 1e-5 * io["D_float32"].abs().max()
    with pytest.raises(ValueError, match="only the 'ema' network"):
        get_denoiser(str(GOLDEN / "edm_ddpmpp_snapshot_nosrc.pkl"), weights="model")
