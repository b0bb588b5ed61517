"""Checkpoint mirrors: <base>/<file name> tried before the official URLs ($DIRACTRAP_MIRRORS, downloads.mirrors),
the Google Drive file included; a corrupted file on a mirror stops with one line naming the URL and the file and
leaves nothing behind. Mirrors are local HTTP servers on 127.0.0.1; the official URLs point at ports nobody
listens on (or at a Google Drive id whose gdown call would fail the test)."""

import hashlib
import json
import socket

import pytest

from diractrap.models import REGISTRY, ModelSpec, fetch_checkpoint
from diractrap.models.download import LOCK_NAME, MIRRORS_ENV, MIRRORS_ONLY_ENV, ChecksumError, DownloadError, mirror_urls
from test_download import DIGEST, PAYLOAD, LocalServer


def _dead_url(name: str) -> str:
    """An http URL on a port nobody listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


@pytest.fixture(autouse=True)
def no_env_mirrors(monkeypatch):
    monkeypatch.delenv(MIRRORS_ENV, raising=False)
    monkeypatch.delenv(MIRRORS_ONLY_ENV, raising=False)


# ---------------------------------------------------------------------------------------------------------------
# The URL list
# ---------------------------------------------------------------------------------------------------------------


def test_mirrors_come_first_in_order_then_the_official_urls(monkeypatch):
    official = ["https://cdn.example/edm/a.pkl"]
    assert mirror_urls("a.pkl", official) == official  # no mirror: unchanged
    monkeypatch.setenv(MIRRORS_ENV, "http://env1/ckpt/, http://env2")
    got = mirror_urls("a.pkl", official, mirrors=["https://cfg/x"])
    assert got == ["https://cfg/x/a.pkl", "http://env1/ckpt/a.pkl", "http://env2/a.pkl", official[0]]
    monkeypatch.delenv(MIRRORS_ENV)
    # the Google Drive file is looked up on the mirrors by its registry name, before gdown
    assert mirror_urls("ffhq 256.pth", "gdrive:ID", mirrors=["http://m"]) == ["http://m/ffhq%20256.pth", "gdrive:ID"]
    assert mirror_urls("a.pkl", official, mirrors=["http://m", "http://m/"]) == ["http://m/a.pkl", official[0]]


def test_mirrors_only(monkeypatch):
    assert mirror_urls("a.pkl", ["https://cdn/a.pkl"], mirrors=["http://m"], use_official=False) == ["http://m/a.pkl"]
    monkeypatch.setenv(MIRRORS_ONLY_ENV, "1")
    monkeypatch.setenv(MIRRORS_ENV, "http://env")
    assert mirror_urls("a.pkl", ["https://cdn/a.pkl"]) == ["http://env/a.pkl"]
    assert mirror_urls("a.pkl", ["https://cdn/a.pkl"], use_official=True)[-1] == "https://cdn/a.pkl"  # argument wins
    monkeypatch.delenv(MIRRORS_ENV)
    with pytest.raises(ValueError, match=f"no mirror is given for a.pkl: set \\${MIRRORS_ENV}"):
        mirror_urls("a.pkl", ["https://cdn/a.pkl"])
    monkeypatch.setenv(MIRRORS_ONLY_ENV, "maybe")
    with pytest.raises(ValueError, match=MIRRORS_ONLY_ENV):
        mirror_urls("a.pkl", [])


def test_a_mirror_that_is_not_a_url_is_refused(monkeypatch):
    monkeypatch.setenv(MIRRORS_ENV, "/srv/checkpoints")
    with pytest.raises(ValueError, match="'/srv/checkpoints' is not an http"):
        mirror_urls("a.pkl", [])


# ---------------------------------------------------------------------------------------------------------------
# Through the registry: the mirror serves the file, the official URL is never reached
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def mirror():
    with LocalServer({"/ckpt/model.bin": PAYLOAD}) as srv:
        yield srv


def _register(monkeypatch, urls, filename="model.bin"):
    spec = ModelSpec(name="test-mirrored", description="", data_range=(0.0, 1.0), resolution=16, urls=tuple(urls),
                     filename=filename)
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    return spec


def test_env_mirror_serves_the_file_before_the_official_url(mirror, monkeypatch, tmp_path):
    official = _dead_url("model.bin")
    _register(monkeypatch, [official])
    monkeypatch.setenv(MIRRORS_ENV, mirror.url + "/ckpt")
    # pinned: the payload is opaque bytes, which an unpinned first use would refuse to trust (it does not load)
    path, digest = fetch_checkpoint("test-mirrored", root=tmp_path, sha256=DIGEST, progress=False)
    assert digest == DIGEST and path.read_bytes() == PAYLOAD
    assert mirror.requests == [("/ckpt/model.bin", None)]
    lock = tmp_path / LOCK_NAME  # a pinned hash needs no record
    assert not lock.exists() or "model.bin" not in json.loads(lock.read_text())


def test_config_mirror_for_the_google_drive_file_skips_gdown(mirror, monkeypatch, tmp_path):
    import gdown

    def forbidden(**kw):
        raise AssertionError("gdown must not be called when a mirror has the file")

    monkeypatch.setattr(gdown, "download", forbidden)
    _register(monkeypatch, ["gdrive:1-mtdSwuefIZA0n85QWScQo2WRvJNWwUy"])
    path, digest = fetch_checkpoint("test-mirrored", root=tmp_path, mirrors=[mirror.url + "/ckpt"], official=False,
                                    sha256=DIGEST, progress=False)
    assert digest == DIGEST and path.read_bytes() == PAYLOAD


def test_missing_on_the_mirror_falls_back_to_the_next_url(mirror, monkeypatch, tmp_path):
    _register(monkeypatch, [mirror.url + "/ckpt/model.bin"])  # the "official" URL is the working one here
    path, digest = fetch_checkpoint("test-mirrored", root=tmp_path, mirrors=[mirror.url + "/empty"], sha256=DIGEST,
                                    progress=False)
    assert digest == DIGEST
    assert [p for p, _ in mirror.requests] == ["/empty/model.bin", "/ckpt/model.bin"]


# ---------------------------------------------------------------------------------------------------------------
# A corrupted file on the mirror: one line naming the URL and the file, nothing left behind
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("served", [
    PAYLOAD[:-1] + b"\x00",  # same size, one byte changed: only the hash tells
    PAYLOAD[: len(PAYLOAD) // 3],  # a truncated copy, delivered completely by the server
], ids=["wrong-hash", "truncated"])
def test_corrupted_file_on_the_mirror_stops_and_leaves_nothing(monkeypatch, tmp_path, served):
    with LocalServer({"/ckpt/model.bin": served}) as srv:
        official = _dead_url("model.bin")
        _register(monkeypatch, [official])
        monkeypatch.setenv(MIRRORS_ENV, srv.url + "/ckpt")
        with pytest.raises(DownloadError) as err:
            fetch_checkpoint("test-mirrored", root=tmp_path, sha256=DIGEST, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"the file from {srv.url}/ckpt/model.bin has sha256 {hashlib.sha256(served).hexdigest()}" in msg
    assert str(tmp_path / "model.bin") in msg and official in msg  # the fallback was tried and named too
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []  # no file, no .part, no lock


def test_corrupted_file_on_the_only_mirror_is_a_checksum_error(monkeypatch, tmp_path):
    with LocalServer({"/ckpt/model.bin": PAYLOAD[:1000]}) as srv:
        _register(monkeypatch, ["gdrive:unused"])
        with pytest.raises(ChecksumError) as err:
            fetch_checkpoint("test-mirrored", root=tmp_path, sha256=DIGEST, mirrors=[srv.url + "/ckpt"],
                             official=False, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and f"{srv.url}/ckpt/model.bin" in msg and str(tmp_path / "model.bin") in msg
    assert "expected hash pinned" in msg and "gdrive" not in msg
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
