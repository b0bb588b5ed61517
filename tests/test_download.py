"""Verified downloads against a local HTTP server on 127.0.0.1 whose behaviour each test controls."""

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from diractrap.models.download import ChecksumError, DownloadError, download, sha256sum, verify_file

PAYLOAD = bytes(range(256)) * 4000  # 1 MB: several read chunks, so a cut lands mid-transfer
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# A small server: files by path; per-path faults (cut the first response, truncate every response, ignore Range)
# ---------------------------------------------------------------------------------------------------------------


class LocalServer:
    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.cut_first: set[str] = set()  # the first response stops after half its body, then the socket closes
        self.truncate: set[str] = set()  # every response announces the full length but sends half
        self.ignore_range = False  # answer 200 with the whole file to a ranged request
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = self.path in server.truncate or self.path in server.cut_first
                server.cut_first.discard(self.path)
                self.wfile.write(body[: len(body) // 2] if cut else body)
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with LocalServer({"/ckpt.bin": PAYLOAD}) as srv:
        yield srv


def _no_checkpoint_left(dest):
    """Nothing at the final path; whatever remains is a .part (never taken for a checkpoint)."""
    assert not dest.exists()
    assert all(p.name.endswith((".part", ".flock")) for p in dest.parent.iterdir() if p.name != "checkpoints.lock")


# ---------------------------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------------------------


def test_success_verifies_and_renames(server, tmp_path):
    dest = tmp_path / "sub" / "model.bin"
    assert download(server.url + "/ckpt.bin", dest, sha256=DIGEST, size=len(PAYLOAD), progress=False) == DIGEST
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("model.bin.part").exists()
    assert download(server.url + "/ckpt.bin", tmp_path / "b.bin", progress=False) == DIGEST  # hash unknown: returned
    assert sha256sum(dest) == DIGEST


def test_resume_after_cut_connection(server, tmp_path):
    dest = tmp_path / "model.bin"
    server.cut_first.add("/ckpt.bin")
    with pytest.raises(DownloadError) as err:
        download(server.url + "/ckpt.bin", dest, sha256=DIGEST, progress=False, retries=0)
    msg = str(err.value)
    assert "\n" not in msg and server.url + "/ckpt.bin" in msg and str(dest) in msg
    part = dest.with_name("model.bin.part")
    assert part.stat().st_size == len(PAYLOAD) // 2
    _no_checkpoint_left(dest)
    # the next call continues where the transfer stopped
    assert download(server.url + "/ckpt.bin", dest, sha256=DIGEST, progress=False) == DIGEST
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1] == ("/ckpt.bin", f"bytes={len(PAYLOAD) // 2}-")


def test_resume_within_one_call(server, tmp_path):
    dest = tmp_path / "model.bin"
    server.cut_first.add("/ckpt.bin")
    assert download(server.url + "/ckpt.bin", dest, sha256=DIGEST, progress=False, retries=1) == DIGEST
    assert [r for _, r in server.requests] == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert dest.read_bytes() == PAYLOAD


def test_server_without_range_support_gets_a_fresh_download(server, tmp_path):
    dest = tmp_path / "model.bin"
    dest.with_name("model.bin.part").write_bytes(b"stale bytes from another file")
    server.ignore_range = True
    assert download(server.url + "/ckpt.bin", dest, sha256=DIGEST, progress=False) == DIGEST
    assert server.requests == [("/ckpt.bin", "bytes=29-")]  # asked to resume, was given the whole file
    assert dest.read_bytes() == PAYLOAD


def test_part_longer_than_the_file_restarts(server, tmp_path):
    dest = tmp_path / "model.bin"
    dest.with_name("model.bin.part").write_bytes(b"x" * (len(PAYLOAD) + 5))
    assert download(server.url + "/ckpt.bin", dest, sha256=DIGEST, progress=False) == DIGEST  # 416, then from 0


def test_404(server, tmp_path):
    dest = tmp_path / "model.bin"
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download(server.url + "/missing.bin", dest, progress=False)
    assert server.url + "/missing.bin" in str(err.value) and f"place the file by hand at {dest}" in str(err.value)
    assert not any(tmp_path.glob("model.bin*"))


def test_wrong_checksum_removes_the_file(server, tmp_path):
    dest = tmp_path / "model.bin"
    with pytest.raises(ChecksumError, match="the download was removed") as err:
        download(server.url + "/ckpt.bin", dest, sha256="ab" * 32, progress=False)
    assert DIGEST in str(err.value) and str(dest) in str(err.value)
    assert not any(tmp_path.glob("model.bin*"))


def test_wrong_size_removes_the_file(server, tmp_path):
    dest = tmp_path / "model.bin"
    with pytest.raises(ChecksumError, match=f"{len(PAYLOAD)} bytes instead of 123"):
        download(server.url + "/ckpt.bin", dest, size=123, progress=False)
    assert not any(tmp_path.glob("model.bin*"))


def test_truncated_body(server, tmp_path):
    dest = tmp_path / "model.bin"
    server.truncate.add("/ckpt.bin")
    with pytest.raises(DownloadError, match="connection lost"):
        download(server.url + "/ckpt.bin", dest, progress=False, retries=1)  # hash unknown: size is the only guard
    _no_checkpoint_left(dest)
    assert len(server.requests) == 2 and server.requests[1][1] is not None  # the retry resumed


def test_no_server_gives_one_line_offline_message(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ckpt.bin"
    dest = tmp_path / "model.bin"
    with pytest.raises(DownloadError) as err:
        download(url, dest, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "offline or unreachable" in msg and url in msg and str(dest) in msg
    _no_checkpoint_left(dest)


def test_second_mirror_is_tried(server, tmp_path):
    dest = tmp_path / "model.bin"
    urls = [server.url + "/missing.bin", server.url + "/ckpt.bin"]
    assert download(urls, dest, sha256=DIGEST, progress=False) == DIGEST


def test_existing_file_is_verified_not_downloaded(server, tmp_path):
    dest = tmp_path / "model.bin"
    dest.write_bytes(PAYLOAD)
    assert download(server.url + "/ckpt.bin", dest, sha256=DIGEST, progress=False) == DIGEST
    assert server.requests == []
    dest.write_bytes(b"damaged")
    with pytest.raises(ChecksumError, match="delete it"):
        download(server.url + "/ckpt.bin", dest, sha256=DIGEST, progress=False)


def test_verify_file_is_the_one_checksum_check(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    assert verify_file(path) == verify_file(path, DIGEST.upper(), len(PAYLOAD)) == DIGEST
    with pytest.raises(ChecksumError, match=f"the weights has sha256 {DIGEST} instead of {'ab' * 32}; restore them"):
        verify_file(path, "AB" * 32, what="the weights", hint="restore them")
    with pytest.raises(ChecksumError, match=f"{path} has {len(PAYLOAD)} bytes instead of 7$"):
        verify_file(path, DIGEST, 7)
    assert issubclass(ChecksumError, DownloadError) and issubclass(ChecksumError, RuntimeError)  # the CLI's one line
    assert path.read_bytes() == PAYLOAD  # verifying never deletes: only a download's .part is removed


def test_google_drive_goes_through_gdown(monkeypatch, tmp_path):
    """The gdown path cannot reach Google offline; a stand-in for gdown.download checks the hand-over."""
    import gdown

    calls = []

    def fake_download(*, id, output, quiet, resume):
        calls.append((id, output, resume))
        with open(output, "wb") as f:
            f.write(PAYLOAD)
        return output

    monkeypatch.setattr(gdown, "download", fake_download)
    dest = tmp_path / "checkpoint_48.pth"
    assert download("gdrive:FILEID", dest, sha256=DIGEST, progress=False) == DIGEST
    assert calls == [("FILEID", str(dest) + ".part", True)] and dest.read_bytes() == PAYLOAD

    def failing(**kw):
        raise RuntimeError("Cannot retrieve the public link of the file.")

    monkeypatch.setattr(gdown, "download", failing)
    with pytest.raises(DownloadError, match=r"drive\.google\.com/uc\?id=OTHER .*place the file by hand"):
        download("gdrive:OTHER", tmp_path / "other.pth", progress=False)
    assert not (tmp_path / "other.pth").exists()


def _bump(path, n):
    from diractrap.models.download import _exclusive

    for _ in range(n):
        with _exclusive(path.with_name(".counter.flock")):
            value = int(path.read_text())
            time.sleep(0.0005)  # widen the window a lost update would need
            path.write_text(str(value + 1))


def test_lock_files_are_removed_and_still_exclude(tmp_path):
    """Failed fetches left empty .flock files; removing them on release must not break mutual exclusion (a waiter
    that locked a removed file retries on the new one): 4 processes x 40 read-increment-write give exactly 160."""
    import multiprocessing

    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_bump, args=(counter, 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    assert int(counter.read_text()) == 160
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter"]
