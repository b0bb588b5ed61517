"""Paper image sets: download one shard from a hub (a local server on 127.0.0.1), pick rows, apply EDM's transforms."""

import http.server
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diractrap import datasets
from diractrap.datasets import HubShard, ImageSet, load_image_set

REVISION = "0123456789abcdef0123456789abcdef01234567"
FILENAME = "data/train-00000-of-00001.parquet"


def _tiny_parquet(path: Path, n: int = 7, rows_per_group: int = 3):
    """A hub-style parquet shard: an 'image' struct {bytes (PNG), path} and a 'label' column; 60 x 80 images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, 60, 80, 3), dtype=np.uint8)
    cells = []
    for i, a in enumerate(pixels):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        cells.append({"bytes": buf.getvalue(), "path": f"{i:05d}.png"})
    labels = np.arange(n) * 10
    pq.write_table(pa.table({"image": cells, "label": labels}), path, row_group_size=rows_per_group)
    return pixels, labels


class _Hub(http.server.BaseHTTPRequestHandler):
    """Answers /datasets/<repo>/resolve/<revision>/<filename> like the hub: HEAD with metadata headers, then GET."""

    files: dict = {}

    def _serve(self, body: bool):
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"tiny-etag"')
        self.send_header("X-Repo-Commit", REVISION)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._serve(False)

    def do_GET(self):
        self._serve(True)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local hub serving one tiny shard, registered as SHARDS['tiny']; yields (source pixels, labels)."""
    import huggingface_hub.constants

    pixels, labels = _tiny_parquet(tmp_path / "tiny.parquet")
    _Hub.files = {f"/datasets/test/tiny/resolve/{REVISION}/{FILENAME}": (tmp_path / "tiny.parquet").read_bytes()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the session is offline by default
    monkeypatch.setitem(datasets.SHARDS, "tiny", HubShard("test/tiny", REVISION, FILENAME, label_column="label"))
    yield pixels, labels
    server.shutdown()
    server.server_close()


def _centre_crop_lanczos(a: np.ndarray, r: int) -> np.ndarray:
    """EDM's centre-crop transform written out independently: the central min(H, W) square, Lanczos to r x r."""
    h, w = a.shape[:2]
    c = min(h, w)
    square = Image.fromarray(a).crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c))
    return np.asarray(square.resize((r, r), Image.LANCZOS))


def test_download_and_prepare_from_a_local_hub(hub, tmp_path):
    pixels, labels = hub
    root = tmp_path / "datasets"
    path = datasets.download_shard("tiny", root)
    assert path == datasets.shard_path("tiny", root) and path.is_file()
    s = datasets.prepare_image_set(path, count=4, resolution=16, transform="center-crop", select="spread",
                                   label_column="label")
    rows = [0, 2, 4, 6]  # 4 rows evenly spaced over 7, spanning the three row groups
    assert s.rows.tolist() == rows
    assert s.labels.tolist() == labels[rows].tolist()
    assert s.names == [f"{r:05d}.png" for r in rows]
    for got, r in zip(s.images, rows):
        np.testing.assert_array_equal(got, _centre_crop_lanczos(pixels[r], 16))  # PNG is lossless: exact


def test_a_downloaded_shard_is_reused_without_network(hub, tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    first = datasets.download_shard("tiny", root)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert datasets.download_shard("tiny", root) == first


def test_offline_error_names_the_url_and_the_path(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    root = tmp_path / "datasets"
    with pytest.raises(RuntimeError) as err:
        datasets.download_shard("ffhq256", root)
    msg = str(err.value)
    assert "\n" not in msg
    assert datasets.shard_url("ffhq256") in msg and str(datasets.shard_path("ffhq256", root)) in msg
    assert not datasets.shard_path("ffhq256", root).exists()


def test_missing_file_on_the_hub_is_an_error_and_leaves_nothing(hub, tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.SHARDS, "gone", HubShard("test/tiny", REVISION, "data/missing.parquet"))
    root = tmp_path / "datasets"
    with pytest.raises(RuntimeError, match="place it at"):
        datasets.download_shard("gone", root)
    assert not datasets.shard_path("gone", root).exists()


def test_resize_transform_and_first_rows(hub, tmp_path):
    pixels, _ = hub
    path = datasets.download_shard("tiny", tmp_path)
    s = datasets.prepare_image_set(path, count=2, resolution=20, transform="resize", select="first")
    assert s.rows.tolist() == [0, 1] and s.labels.tolist() == [-1, -1]
    expected = np.asarray(Image.fromarray(pixels[1]).resize((20, 20), Image.LANCZOS))  # EDM: plain Lanczos resize
    np.testing.assert_array_equal(s.images[1], expected)
    with pytest.raises(ValueError, match="holds 7"):
        datasets.prepare_image_set(path, count=8, resolution=20)


def test_image_set_file_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    s = ImageSet(rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8), np.array([5, -1, 7]), ["a", "b", "c"],
                 np.array([0, 4, 9]), {"kind": "test"})
    path = s.save(tmp_path / "set.npz")
    t = load_image_set(path)
    np.testing.assert_array_equal(t.images, s.images)
    assert t.labels.tolist() == [5, -1, 7] and t.names == ["a", "b", "c"] and t.source == {"kind": "test"}
    x = t.tensor([0, 2])
    assert x.shape == (2, 3, 8, 8) and float(x.max()) <= 1.0
    assert abs(float(x[1, 0, 0, 0]) - s.images[2, 0, 0, 0] / 255) < 1e-7  # channels first, 8-bit / 255


def test_demo_image_set_is_the_first_test_crops():
    from diractrap.data import demo_images

    s = datasets.demo_image_set(3, resolution=32)
    np.testing.assert_allclose(s.tensor().numpy(), demo_images("test", 32)[:3].numpy(), atol=1e-7)
    assert len(set(s.names)) == 3 and (s.labels == -1).all()
