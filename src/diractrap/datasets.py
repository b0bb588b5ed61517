"""The image sets of the experiments: the paper's 100 training images per model, and the demo crops as a set.

Figure 3 of the paper evaluates each prior on 100 images of its own *training* set. We take them from public
parquet mirrors on the Hugging Face hub, one shard each, at a pinned revision (never the whole dataset), and make
the 64 x 64 sets the way EDM's ``dataset_tool.py`` made its training sets: FFHQ and AFHQv2 downsampled with PIL's
Lanczos filter, ImageNet centre-cropped to a square and then downsampled (the ImageNet mirror is already 64 x 64,
reportedly made that way; the same transform leaves it unchanged).

Every image set, paper or demo, is stored in one file format (an ``.npz``, see :class:`ImageSet`) that the
workflow's sweep and deconvolution jobs read. The demo crops themselves (and image file input/output) belong to
:mod:`diractrap.data`; :func:`demo_image_set` only packs them into this format.

Sections: the image-set file; the public mirrors; download; preparation (selection, EDM's transforms); the demo set.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .data import atomic_path
from .models.download import sha256sum

__all__ = [
    "ImageSet",
    "load_image_set",
    "HubShard",
    "PaperSet",
    "SHARDS",
    "DATASETS",
    "shard_path",
    "shard_url",
    "download_shard",
    "prepare_image_set",
    "paper_image_set",
    "demo_image_set",
    "class_labels",
]


# ---------------------------------------------------------------------------------------------------------------
# The image-set file: uint8 pixels, class labels (-1 = none), names, and where they came from
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ImageSet:
    """N square RGB images with their provenance.

    images: (N, R, R, 3) uint8 (8-bit pixels as stored by the source);  labels: (N,) int64, the class index
    (ImageNet: the standard 0-999 order) or -1 when the set has no labels;  names: N strings (the source's file
    name when it has one);  rows: (N,) int64, the row of each image in its source;  source: a JSON-able dict.
    """

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    rows: np.ndarray
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, R, R, 3), got {self.images.dtype} {self.images.shape}")
        if not (len(self.labels) == len(self.names) == len(self.rows) == n):
            raise ValueError("images, labels, names and rows must have the same length")

    def __len__(self) -> int:
        return len(self.images)

    def tensor(self, index=None) -> Tensor:
        """Images ``index`` (default all) as float32 (n, 3, R, R) in [0, 1] (8-bit values / 255)."""
        a = self.images if index is None else self.images[index]
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).float() / 255.0

    def save(self, path) -> Path:
        """Write the set as a compressed ``.npz`` atomically (no pickles: names are a unicode array)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, images=self.images, labels=self.labels.astype(np.int64),
                                names=np.asarray(self.names, dtype=str), rows=self.rows.astype(np.int64),
                                source=np.asarray(json.dumps(self.source, sort_keys=True)))
        return Path(path)


def class_labels(mode, labels) -> Tensor | None:
    """The ``labels`` argument of a denoiser for images whose set labels are ``labels`` ((n,) ints, -1 = none).

    ``mode``: "none" (an unconditional prior: None), "dataset" (each image's own class; an error if the set has
    none) or a class index (that class for every image: a conditional prior on an unlabelled set).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if mode == "none":
        return None
    if mode == "dataset":
        if (labels < 0).any():
            raise ValueError("labels: dataset asks for each image's class, but this image set has no labels; "
                             "give a class index instead")
        return torch.from_numpy(labels.copy())
    if isinstance(mode, int) and not isinstance(mode, bool) and mode >= 0:
        return torch.full((len(labels),), mode, dtype=torch.int64)
    raise ValueError(f"labels must be 'none', 'dataset' or a class index, got {mode!r}")


def load_image_set(path) -> ImageSet:
    """Read an image set written by :meth:`ImageSet.save`."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image set at {path} (the workflow's image_set rule writes it)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            missing = [k for k in ("images", "labels", "names", "rows", "source") if k not in z.files]
            if missing:
                raise ValueError(f"no array {', '.join(map(repr, missing))}")
            return ImageSet(images=z["images"], labels=z["labels"], names=[str(s) for s in z["names"]],
                            rows=z["rows"], source=json.loads(str(z["source"])))
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # numpy's words for a foreign file
        reason = " ".join(str(err).split())[:120]
        if isinstance(err, zipfile.BadZipFile) or "pickle" in reason:  # numpy falls back to reading a pickle
            reason = "not an .npz archive"
        raise ValueError(f"{path} is not an image set written by diractrap (arrays images, labels, names, rows, "
                         f"source): {reason or type(err).__name__}") from None


# ---------------------------------------------------------------------------------------------------------------
# The public mirrors: one parquet shard per source, at a pinned revision (facts read from the hub's file pages)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubShard:
    """One parquet file of a Hugging Face dataset repository, at a pinned commit."""

    repo_id: str
    revision: str  # a full commit hash: the file cannot change under us
    filename: str  # path inside the repository
    image_column: str = "image"  # parquet struct {bytes, path}: the encoded image file
    label_column: str | None = None  # integer class labels, if the set has them
    licence: str = ""


SHARDS: dict[str, HubShard] = {
    # FFHQ at 256 x 256 (70k images in 15 shards of ~490 MB; shard 0 holds the first ~4.7k images)
    "ffhq256": HubShard("merkol/ffhq-256", "f23c0e21f6fe222b4429272a86be00e4583b0298",
                        "data/train-00000-of-00015-991c06ed507bdb85.parquet", licence="CC BY-NC-SA 4.0 (FFHQ)"),
    # AFHQv2 at 512 x 512 (15.8k images in 13 shards of ~500 MB); labels 0 cat, 1 dog, 2 wild
    "afhqv2": HubShard("huggan/AFHQv2", "f638548a7eccf134045249ed2ac708505bac6e2e",
                       "data/train-00000-of-00013.parquet", label_column="label", licence="CC BY-NC 4.0 (AFHQ)"),
    # ImageNet-1k train at 64 x 64 (reported made as EDM: centre crop, then Lanczos), standard class indices,
    # stored in class order in 5 train shards; the shard name follows the hub's push_to_hub naming (not read from
    # the file list, unlike the two above): check it against the repository's files if the download answers 404
    "imagenet64": HubShard("benjamin-paine/imagenet-1k-64x64", "f12246fedf1127d5b34bea760b61ef00e0f3d603",
                           "data/train-00000-of-00005.parquet", label_column="label",
                           licence="ImageNet terms of access (research, non-commercial)"),
}


@dataclass(frozen=True)
class PaperSet:
    """One of the paper's image sets: which shard, how images are picked and transformed."""

    shard: str  # key of SHARDS
    resolution: int
    transform: str  # "resize" (EDM's default: Lanczos to R x R) or "center-crop" (crop to a square, then resize)
    select: str  # "first" (rows 0..N-1) or "spread" (N rows evenly spaced over the shard: shards sorted by class)
    labels: bool  # keep class labels (the conditional ImageNet model needs them)
    prior: str  # the model whose training set this is


DATASETS: dict[str, PaperSet] = {
    "ffhq256": PaperSet("ffhq256", 256, "resize", "first", False, "ffhq256"),
    # EDM made FFHQ-64 from the 1024 x 1024 originals; we resize the same images from 256 (Lanczos both times)
    "ffhq64": PaperSet("ffhq256", 64, "resize", "first", False, "ffhq64"),
    "afhq64": PaperSet("afhqv2", 64, "resize", "spread", False, "afhq64"),
    "imagenet64": PaperSet("imagenet64", 64, "center-crop", "spread", True, "imagenet64"),
}


def _endpoint() -> str:
    # read at call time (huggingface_hub reads HF_ENDPOINT once, at import)
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def shard_url(name: str) -> str:
    """The download address of a shard (honours HF_ENDPOINT)."""
    s = _shard(name)
    return f"{_endpoint()}/datasets/{s.repo_id}/resolve/{s.revision}/{s.filename}"


def shard_path(name: str, root="data/datasets") -> Path:
    """Where the shard lives once downloaded (or where to put it by hand): root/raw/<name>/<filename>."""
    return _local_dir(name, root) / _shard(name).filename


def _local_dir(name: str, root) -> Path:
    return Path(root) / "raw" / name


def _shard(name: str) -> HubShard:
    if name not in SHARDS:
        raise KeyError(f"unknown dataset shard {name!r}; choose one of {', '.join(SHARDS)}")
    return SHARDS[name]


# ---------------------------------------------------------------------------------------------------------------
# Download: one file, through huggingface_hub (resumable, written beside its final place, then renamed)
# ---------------------------------------------------------------------------------------------------------------


def download_shard(name: str, root="data/datasets") -> Path:
    """Fetch shard ``name`` into :func:`shard_path` unless it is already there; return its path.

    Raises a one-line RuntimeError naming the URL and the exact path to place the file at when the hub cannot be
    reached (offline, HF_HUB_OFFLINE=1, 404, ...).
    """
    s = _shard(name)
    target = shard_path(name, root)
    if target.is_file():
        return target
    from huggingface_hub import hf_hub_download

    try:
        got = hf_hub_download(s.repo_id, s.filename, repo_type="dataset", revision=s.revision,
                              local_dir=_local_dir(name, root), endpoint=_endpoint())
    except Exception as err:  # any failure has the same remedy: fetch the file another way
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RuntimeError(f"could not download dataset shard {name!r} ({type(err).__name__}: {reason}); "
                           f"download {shard_url(name)} and place it at {target}") from None
    return Path(got)


# ---------------------------------------------------------------------------------------------------------------
# Preparation: pick N rows, decode, apply EDM's transform (dataset_tool.py: Lanczos; ImageNet: centre crop first)
# ---------------------------------------------------------------------------------------------------------------


def _rows(n_rows: int, count: int, select: str) -> np.ndarray:
    if count > n_rows:
        raise ValueError(f"asked for {count} images but the shard holds {n_rows}")
    if select == "first":
        return np.arange(count)
    if select == "spread":  # evenly spaced, first and last included: covers the classes of a class-sorted shard
        return np.unique(np.linspace(0, n_rows - 1, count).round().astype(np.int64))
    raise ValueError(f"select must be 'first' or 'spread', got {select!r}")


def edm_transform(img: Image.Image, resolution: int, transform: str) -> np.ndarray:
    """EDM's dataset_tool transforms: "resize" = Lanczos to R x R (no-op at that size); "center-crop" = the
    central square of side min(H, W), then Lanczos to R x R. Returns (R, R, 3) uint8."""
    a = np.asarray(img.convert("RGB"))
    if transform == "center-crop":
        c = min(a.shape[:2])
        top, left = (a.shape[0] - c) // 2, (a.shape[1] - c) // 2
        a = a[top : top + c, left : left + c]
    elif transform != "resize":
        raise ValueError(f"transform must be 'resize' or 'center-crop', got {transform!r}")
    if a.shape[:2] != (resolution, resolution):
        a = np.asarray(Image.fromarray(a).resize((resolution, resolution), Image.LANCZOS))
    return np.ascontiguousarray(a, dtype=np.uint8)


def prepare_image_set(shard_file, *, count: int, resolution: int, transform: str = "resize", select: str = "first",
                      image_column: str = "image", label_column: str | None = None, source: dict | None = None,
                      name_prefix: str = "img") -> ImageSet:
    """Read ``count`` images from a parquet shard and transform them (reads only the row groups it needs)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(shard_file)
    rows = _rows(pf.metadata.num_rows, count, select)
    starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    columns = [image_column] + ([label_column] if label_column else [])
    images, labels, names = [], [], []
    for g in np.unique(np.searchsorted(starts, rows, side="right") - 1):
        table = pf.read_row_group(int(g), columns=columns).to_pydict()
        for r in rows[(rows >= starts[g]) & (rows < starts[g + 1])]:
            cell = table[image_column][r - starts[g]]
            data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (cell, None)
            with Image.open(io.BytesIO(data)) as im:
                images.append(edm_transform(im, resolution, transform))
            labels.append(int(table[label_column][r - starts[g]]) if label_column else -1)
            names.append(Path(path).name if path else f"{name_prefix}-{int(r):06d}")
    info = dict(source or {}, rows_in_shard=int(pf.metadata.num_rows), count=count, resolution=resolution,
                transform=transform, select=select, shard_sha256=sha256sum(shard_file))
    return ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), names, rows.astype(np.int64), info)


def paper_image_set(name: str, count: int = 100, root="data/datasets", shard_file=None) -> ImageSet:  # paper: 100
    """The paper's image set ``name`` (a key of :data:`DATASETS`) from ``shard_file``, or from its shard under
    ``root`` (downloaded if missing)."""
    if name not in DATASETS:
        raise KeyError(f"unknown paper dataset {name!r}; choose one of {', '.join(DATASETS)}")
    d = DATASETS[name]
    s = SHARDS[d.shard]
    path = shard_file or download_shard(d.shard, root)
    source = dict(kind="hub", dataset=name, repo_id=s.repo_id, revision=s.revision, filename=s.filename,
                  licence=s.licence, prior=d.prior)
    return prepare_image_set(path, count=count, resolution=d.resolution, transform=d.transform, select=d.select,
                             image_column=s.image_column, label_column=s.label_column if d.labels else None,
                             source=source, name_prefix=name)


# ---------------------------------------------------------------------------------------------------------------
# The demo set: the first test crops of the embedded demo images (whole faces come first), no download
# ---------------------------------------------------------------------------------------------------------------


def demo_image_set(count: int, resolution: int = 32, split: str = "test") -> ImageSet:
    """The first ``count`` demo crops of ``split`` (see :func:`diractrap.data.demo_crops`) as an image set."""
    from .data import demo_crops, demo_images

    records = demo_crops(split, resolution)
    if count > len(records):
        raise ValueError(f"asked for {count} demo crops but the {split} split has {len(records)} at {resolution} px")
    x = demo_images(split, resolution)[:count]
    pixels = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    source = dict(kind="demo", split=split, resolution=resolution, count=count,
                  sha256=[r.sha256 for r in records[:count]])
    return ImageSet(pixels, np.full(count, -1, dtype=np.int64), [Path(r.file).stem for r in records[:count]],
                    np.arange(count, dtype=np.int64), source)
