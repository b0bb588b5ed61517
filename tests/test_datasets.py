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
        datasets.download_shard("ffhq256-00", root)
    msg = str(err.value)
    assert "\n" not in msg
    assert datasets.shard_url("ffhq256-00") in msg and str(datasets.shard_path("ffhq256-00", root)) in msg
    assert not datasets.shard_path("ffhq256-00", root).exists()


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


# ---------------------------------------------------------------------------------------------------------------
# Selection across the whole split: files spread, classes covered (the class-sorted mirrors' first file is not)
# ---------------------------------------------------------------------------------------------------------------


def _split_files(tmp_path, labels_per_file, size=4):
    """A split of several parquet files, row r of the split a flat image of value r % 251 and label labels[r]."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths, r = [], 0
    for f, labels in enumerate(labels_per_file):
        cells = []
        for _ in labels:
            buf = io.BytesIO()
            Image.fromarray(np.full((size, size, 3), r % 251, dtype=np.uint8)).save(buf, format="PNG")
            cells.append({"bytes": buf.getvalue(), "path": f"{r:05d}.png"})
            r += 1
        path = tmp_path / f"train-{f:05d}.parquet"
        pq.write_table(pa.table({"image": cells, "label": np.asarray(labels, dtype=np.int64)}), path,
                       row_group_size=3)
        paths.append(path)
    return paths


def _contiguous(labels: np.ndarray, n_files: int) -> list[np.ndarray]:
    """A split cut into n_files contiguous files of nearly equal rows (how push_to_hub shards)."""
    return np.array_split(labels, n_files)


def test_spread_reads_only_the_planned_files_and_draws_from_each(tmp_path):
    paths = _split_files(tmp_path, [[-1] * n for n in (7, 5, 6)])  # rows 0-6 | 7-11 | 12-17
    s = datasets.prepare_image_set([paths[0], None, paths[2]], count=2, resolution=4, select="spread")
    assert s.shards.tolist() == [0, 2] and s.rows.tolist() == [0, 0]  # 2 of 3 files: the first and the last
    assert [int(im[0, 0, 0]) for im in s.images] == [0, 12] and s.names == ["00000.png", "00012.png"]
    s = datasets.prepare_image_set(paths, count=7, resolution=4, select="spread")  # 3, 2, 2 images
    assert s.shards.tolist() == [0, 0, 0, 1, 1, 2, 2] and s.rows.tolist() == [0, 3, 6, 0, 4, 0, 5]
    assert [int(im[0, 0, 0]) for im in s.images] == [0, 3, 6, 7, 11, 12, 17]  # the pixels are those rows'
    with pytest.raises(ValueError, match="not given"):
        datasets.prepare_image_set([paths[0], None, None], count=2, resolution=4, select="spread")


def test_paper_plans_read_every_file_they_draw_from():
    for name, d in datasets.DATASETS.items():
        files = datasets.split_shards(d.split)
        plan = datasets.plan_shards(name, 100)
        assert plan == files  # 100 images reach every file of FFHQ (15); labelled sets read all their labels
        assert datasets.plan_shards(name, 1) == (files[:1] if d.select == "spread" else files)
    assert datasets.plan_shards("ffhq256", 4) == ["ffhq256-00", "ffhq256-05", "ffhq256-09", "ffhq256-14"]
    assert len(datasets.SHARDS) == sum(len(s.files) for s in datasets.SPLITS.values()) == 15 + 13 + 5


def test_class_coverage_of_the_imagenet_and_afhq_selections(capsys):
    """On splits shaped like the mirrors (sizes of the real ones, labels in class order as those mirrors store
    them, then the same rows shuffled), the paper's selections cover what they promise; the first file alone, which
    the sets used to come from, covers a fifth of ImageNet's classes and AFHQv2's cats only."""
    rng = np.random.default_rng(0)
    per_class = rng.integers(732, 1301, 1000)  # ImageNet-1k train: 732 to 1300 images per class
    imagenet = np.repeat(np.arange(1000), per_class)
    afhq = np.repeat([0, 1, 2], [5558, 5169, 5076])  # cat, dog, wild: 15,803 rows as the mirror (split assumed)
    lines = []
    for name, labels, n_files, classes in (("imagenet64", imagenet, 5, 1000), ("afhq64", afhq, 13, 3)):
        for order, lab in (("class order", labels), ("shuffled", rng.permutation(labels))):
            files = _contiguous(lab, n_files)
            which, rows = datasets.select_rows("classes", 100, [len(f) for f in files], files, classes)
            drawn = np.array([files[f][r] for f, r in zip(which, rows)])
            counts = np.bincount(drawn, minlength=classes)
            if name == "imagenet64":  # 100 distinct classes, evenly spaced over all 1000
                assert sorted(drawn) == sorted(set(drawn)) and len(drawn) == 100
                assert drawn.min() == 0 and drawn.max() == 999 and np.diff(np.sort(drawn)).max() <= 11
                first = set(files[0][np.linspace(0, len(files[0]) - 1, 100).round().astype(int)])
                lines.append(f"{name} ({order}): 100 distinct classes {drawn.min()}..{drawn.max()}, largest gap "
                             f"{np.diff(np.sort(drawn)).max()}; 100 rows spread over the first file alone: "
                             f"{len(first)} classes, {min(first)}..{max(first)}")
                if order == "class order":
                    assert max(first) < 260  # the old selection: a fifth of the classes at most
            else:  # the stated mix: 34 cats, 33 dogs, 33 wild animals
                assert counts.tolist() == [34, 33, 33]
                first = np.bincount(files[0], minlength=3)
                lines.append(f"{name} ({order}): cat/dog/wild {counts.tolist()}; first file alone "
                             f"{first.tolist()}")
                if order == "class order":
                    assert first.tolist() == [len(files[0]), 0, 0]
            assert (np.sort(drawn) == drawn).all()  # the set lists its images class by class
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_classes_selection_draws_the_rows_it_names_and_checks_the_mix(tmp_path):
    labels = np.repeat([0, 1, 2], [4, 3, 5])  # 12 rows in class order over 3 files of 4
    paths = _split_files(tmp_path, _contiguous(labels, 3))
    s = datasets.prepare_image_set(paths, count=7, resolution=4, select="classes", label_column="label", classes=3)
    # 3 cats of rows 0-3, 2 dogs of rows 4-6, 2 wild of rows 7-11, evenly spaced within each class
    assert [int(im[0, 0, 0]) for im in s.images] == [0, 2, 3, 4, 6, 7, 11]
    assert s.labels.tolist() == [0, 0, 0, 1, 1, 2, 2] and s.source["class_counts"] == {0: 3, 1: 2, 2: 2}
    assert s.shards.tolist() == [0, 0, 0, 1, 1, 1, 2] and s.rows.tolist() == [0, 2, 3, 0, 2, 3, 3]
    hidden = datasets.prepare_image_set(paths, count=7, resolution=4, select="classes", label_column="label",
                                        classes=3, keep_labels=False)
    assert (hidden.labels == -1).all() and hidden.source["class_counts"] == s.source["class_counts"]
    with pytest.raises(ValueError, match="class 1 has 3 images"):
        datasets.prepare_image_set(paths, count=12, resolution=4, select="classes", label_column="label", classes=3)
    with pytest.raises(ValueError, match="labels of every file"):
        datasets.prepare_image_set([paths[0], None, paths[2]], count=3, resolution=4, select="classes",
                                   label_column="label", classes=3)


def test_paper_image_set_takes_the_planned_files_in_order(tmp_path, monkeypatch):
    labels = np.repeat([0, 1, 2], 4)
    paths = _split_files(tmp_path, _contiguous(labels, 3))
    split = datasets.HubSplit("test/afhq", REVISION, ("a.parquet", "b.parquet", "c.parquet"), 12,
                              label_column="label", classes=3, class_names=("cat", "dog", "wild"))
    monkeypatch.setitem(datasets.SPLITS, "tiny3", split)
    monkeypatch.setitem(datasets.DATASETS, "tiny3", datasets.PaperSet("tiny3", 4, "resize", "classes", False, "m"))
    assert datasets.plan_shards("tiny3", 3) == ["tiny3-00", "tiny3-01", "tiny3-02"]
    s = datasets.paper_image_set("tiny3", 3, shard_files=paths)
    assert s.source["class_counts"] == {0: 1, 1: 1, 2: 1} and s.source["files"] == list(split.files)
    assert (s.labels == -1).all()  # an unconditional prior's set keeps no labels, its source keeps the mix
    with pytest.raises(ValueError, match="reads 3 shards"):
        datasets.paper_image_set("tiny3", 3, shard_files=paths[:1])
