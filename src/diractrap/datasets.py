"""The image sets of the experiments: the paper's 100 training images per model, and the demo crops as a set.

Figure 3 of the paper evaluates each prior on 100 images of its own *training* set. We take them from public
parquet mirrors on the Hugging Face hub at a pinned revision, drawn across the whole split (not its first rows: two
of the mirrors are reported or likely to be stored in class order), and make the 64 x 64 sets the way EDM's
``dataset_tool.py`` made its training sets: FFHQ and AFHQv2 downsampled with PIL's Lanczos filter, ImageNet
centre-cropped to a square and then downsampled (the ImageNet mirror is already 64 x 64, reportedly made that way;
the same transform leaves it unchanged). Which rows are drawn is a function of the pinned files and the image count
alone, so a rerun draws the same images, and the files to download follow from it (:func:`plan_shards`): unlabelled
sets are spread over the split's files, labelled ones draw a stated number of images per class (:data:`DATASETS`).

Every image set, paper or demo, is stored in one file format (an ``.npz``, see :class:`ImageSet`) that the
workflow's sweep and deconvolution jobs read. The demo crops themselves (and image file input/output) belong to
:mod:`diractrap.data`; :func:`demo_image_set` only packs them into this format.

Sections: the image-set file; the public mirrors; download; selection (which rows of which files); preparation
(EDM's transforms); the demo set.
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
    "HubSplit",
    "PaperSet",
    "SPLITS",
    "SHARDS",
    "DATASETS",
    "split_shards",
    "plan_shards",
    "select_rows",
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
    name when it has one);  rows: (N,) int64, the row of each image in its source file;  source: a JSON-able dict
    (for a paper set, ``source["files"]`` lists the split's files);  shards: (N,) int64, the index of each image's
    file in ``source["files"]`` (default 0: a single source).
    """

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    rows: np.ndarray
    source: dict = field(default_factory=dict)
    shards: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, R, R, 3), got {self.images.dtype} {self.images.shape}")
        self.shards = np.zeros(n, dtype=np.int64) if self.shards is None else np.asarray(self.shards, np.int64)
        if not (len(self.labels) == len(self.names) == len(self.rows) == len(self.shards) == n):
            raise ValueError("images, labels, names, rows and shards must have the same length")

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
                                shards=self.shards, source=np.asarray(json.dumps(self.source, sort_keys=True)))
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
                            rows=z["rows"], source=json.loads(str(z["source"])),
                            shards=z["shards"] if "shards" in z.files else None)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # numpy's words for a foreign file
        reason = " ".join(str(err).split())[:120]
        if isinstance(err, zipfile.BadZipFile) or "pickle" in reason:  # numpy falls back to reading a pickle
            reason = "not an .npz archive"
        raise ValueError(f"{path} is not an image set written by diractrap (arrays images, labels, names, rows, "
                         f"source): {reason or type(err).__name__}") from None


# ---------------------------------------------------------------------------------------------------------------
# The public mirrors: every parquet file of each training split, at a pinned revision
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


@dataclass(frozen=True)
class HubSplit:
    """A training split of a Hugging Face dataset repository at a pinned commit: its parquet files in row order.

    ``rows`` is the split's size as the hub reports it (documentation: the files' own footers are what a job reads);
    ``classes`` the number of classes of ``label_column`` (0: unlabelled), ``class_names`` their names if known.
    """

    repo_id: str
    revision: str
    files: tuple[str, ...]
    rows: int
    image_column: str = "image"
    label_column: str | None = None
    classes: int = 0
    class_names: tuple[str, ...] = ()
    licence: str = ""


# Facts read from the hub's file pages and dataset cards as stored copies (not reachable from our machines): the
# FFHQ and AFHQv2 file names from the repositories' file lists at these revisions, the row counts from the dataset
# viewer (ImageNet) and dataset_infos.json (AFHQv2: 15,803 = AFHQv2's train + test, labels cat, dog, wild). The
# ImageNet file names follow push_to_hub's naming, not read from a file list: a 404 names the file to check.
_FFHQ_HASHES = ("991c06ed507bdb85", "78537a18b94b8879", "99699fe43dfbed7f", "da26a4adc48991a5", "6042881a9bae0948",
                "63fbe6d91f217943", "20ff57e5f39e43a3", "f81c33ff94c7cde5", "67df4eb7eeb0a448", "8d25e0cfc83bb2fb",
                "eb6d56b0434a4193", "1e9000cfae331646", "a96411675f1cda82", "467245f3e9cb2841", "267e348c5192fcda")
SPLITS: dict[str, HubSplit] = {
    # FFHQ at 256 x 256: 70,000 images in 15 files of ~490 MB (unlabelled)
    "ffhq256": HubSplit("merkol/ffhq-256", "f23c0e21f6fe222b4429272a86be00e4583b0298",
                        tuple(f"data/train-{i:05d}-of-00015-{h}.parquet" for i, h in enumerate(_FFHQ_HASHES)), 70_000,
                        licence="CC BY-NC-SA 4.0 (FFHQ)"),
    # AFHQv2 at 512 x 512: 15,803 images in 13 files of ~535 MB; labels 0 cat, 1 dog, 2 wild
    "afhqv2": HubSplit("huggan/AFHQv2", "f638548a7eccf134045249ed2ac708505bac6e2e",
                       tuple(f"data/train-{i:05d}-of-00013.parquet" for i in range(13)), 15_803, label_column="label",
                       classes=3, class_names=("cat", "dog", "wild"), licence="CC BY-NC 4.0 (AFHQ)"),
    # ImageNet-1k train at 64 x 64 (reported made as EDM: centre crop, then Lanczos): 1,281,167 images in 5 files,
    # the standard class indices 0-999
    "imagenet64": HubSplit("benjamin-paine/imagenet-1k-64x64", "f12246fedf1127d5b34bea760b61ef00e0f3d603",
                           tuple(f"data/train-{i:05d}-of-00005.parquet" for i in range(5)), 1_281_167,
                           label_column="label", classes=1000,
                           licence="ImageNet terms of access (research, non-commercial)"),
}

# one download per file: "<split>-<index>", e.g. "ffhq256-07" (the workflow's dataset_shard jobs)
SHARDS: dict[str, HubShard] = {
    f"{name}-{i:02d}": HubShard(s.repo_id, s.revision, f, s.image_column, s.label_column, s.licence)
    for name, s in SPLITS.items() for i, f in enumerate(s.files)
}


@dataclass(frozen=True)
class PaperSet:
    """One of the paper's image sets: which split, how images are picked and transformed."""

    split: str  # key of SPLITS
    resolution: int
    transform: str  # "resize" (EDM's default: Lanczos to R x R) or "center-crop" (crop to a square, then resize)
    select: str  # "spread" (over the split's files, then their rows) or "classes" (a stated count per class)
    labels: bool  # keep class labels (the conditional ImageNet model needs them)
    prior: str  # the model whose training set this is


DATASETS: dict[str, PaperSet] = {
    "ffhq256": PaperSet("ffhq256", 256, "resize", "spread", False, "ffhq256"),
    # EDM made FFHQ-64 from the 1024 x 1024 originals; we resize the same images from 256 (Lanczos both times)
    "ffhq64": PaperSet("ffhq256", 64, "resize", "spread", False, "ffhq64"),
    # 100 images: 34 cats, 33 dogs, 33 wild animals, each class's rows evenly spaced
    "afhq64": PaperSet("afhqv2", 64, "resize", "classes", False, "afhq64"),
    # 100 images: one per class, classes 0, 10, 20, ..., 999 (evenly spaced over all 1000)
    "imagenet64": PaperSet("imagenet64", 64, "center-crop", "classes", True, "imagenet64"),
}


def split_shards(split: str) -> list[str]:
    """The shard names (keys of :data:`SHARDS`) of a split, in its row order."""
    if split not in SPLITS:
        raise KeyError(f"unknown dataset split {split!r}; choose one of {', '.join(SPLITS)}")
    return [f"{split}-{i:02d}" for i in range(len(SPLITS[split].files))]


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
# Selection: which rows of which files, a function of the pinned files and the count alone
# ---------------------------------------------------------------------------------------------------------------


def _spread_counts(total: int, bins: int) -> np.ndarray:
    """``total`` items over ``bins`` bins as evenly as possible, the remainder on evenly spaced bins (the first
    included): 1 of 15 -> bin 0; 4 of 15 -> bins 0, 5, 9, 14; 100 of 1000 -> bins 0, 10, 20, ..., 989, 999."""
    counts = np.full(bins, total // bins, dtype=np.int64)
    extra = total - int(counts.sum())
    if extra:
        counts[np.linspace(0, bins - 1, extra).round().astype(np.int64)] += 1  # distinct: spacing >= 1
    return counts


def _even(n: int, k: int) -> np.ndarray:
    """k of the positions 0..n-1, evenly spaced, the first and (k > 1) the last included."""
    if k > n:
        raise ValueError(f"asked for {k} images but the shard holds {n}")
    return np.linspace(0, n - 1, k).round().astype(np.int64) if k else np.zeros(0, dtype=np.int64)


def plan_shards(name: str, count: int) -> list[str]:
    """The shards (keys of :data:`SHARDS`) that paper set ``name`` of ``count`` images reads: for "spread", the
    files that receive images; for "classes", every file of the split (only their labels tell where a class is)."""
    if name not in DATASETS:
        raise KeyError(f"unknown paper dataset {name!r}; choose one of {', '.join(DATASETS)}")
    d = DATASETS[name]
    names = split_shards(d.split)
    if d.select == "spread":
        return [n for n, k in zip(names, _spread_counts(count, len(names))) if k]
    return names


def select_rows(select: str, count: int, row_counts, labels=None, classes: int = 0):
    """Which images a set holds: (file index (N,), row in that file (N,)), in the set's order.

    ``row_counts``: rows of each file of the split, in order (None for a file the selection does not need).
    ``select``: "first" (the first ``count`` rows of the split), "spread" (``count`` over the files by
    :func:`_spread_counts`, evenly spaced rows within each) or "classes" (``count`` over the class indices
    0..classes-1 by :func:`_spread_counts`, evenly spaced among each class's rows in the split's order; ``labels``
    is a list of (n_f,) int arrays, one per file). Every file is the pinned revision's, so a rerun draws the same.
    """
    files = rows = None
    if select == "first":
        total = sum(n for n in row_counts if n is not None)
        if count > total:
            raise ValueError(f"asked for {count} images but the shard holds {total}")
        pos = np.arange(count)
    elif select == "spread":
        per_file = _spread_counts(count, len(row_counts))
        need = [f for f, k in enumerate(per_file) if k and row_counts[f] is None]
        if need:
            raise ValueError(f"the selection reads files {need} of the split, which were not given")
        files = np.concatenate([np.full(k, f) for f, k in enumerate(per_file)]).astype(np.int64)
        rows = np.concatenate([_even(row_counts[f], k) for f, k in enumerate(per_file) if k]).astype(np.int64)
        return files, rows
    elif select == "classes":
        if labels is None or any(lab is None for lab in labels) or classes < 1:
            raise ValueError("select='classes' needs the labels of every file of the split and the class count")
        every = np.concatenate([np.asarray(lab, dtype=np.int64) for lab in labels])
        picked = []
        for c, k in enumerate(_spread_counts(count, classes)):
            where = np.flatnonzero(every == c)
            if k > len(where):
                raise ValueError(f"class {c} has {len(where)} images in the split; the set asks for {k}")
            picked.append(where[_even(len(where), int(k))])
        pos = np.concatenate(picked)
    else:
        raise ValueError(f"select must be 'first', 'spread' or 'classes', got {select!r}")
    starts = np.cumsum([0] + [n or 0 for n in row_counts])
    files = np.searchsorted(starts, pos, side="right") - 1
    return files.astype(np.int64), (pos - starts[files]).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Preparation: decode the selected rows, apply EDM's transform (dataset_tool.py: Lanczos; ImageNet: centre crop)
# ---------------------------------------------------------------------------------------------------------------


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


def prepare_image_set(files, *, count: int, resolution: int, transform: str = "resize", select: str = "spread",
                      image_column: str = "image", label_column: str | None = None, keep_labels: bool = True,
                      classes: int = 0, source: dict | None = None, name_prefix: str = "img") -> ImageSet:
    """``count`` images of a split given as parquet ``files`` (one path, or the split's files in order with None
    for those the selection does not read), chosen by :func:`select_rows` and transformed (only the row groups
    holding them are decoded). Labels are read from ``label_column`` when given, kept in the set if
    ``keep_labels``; ``source["class_counts"]`` records how many images of each class the set holds."""
    import pyarrow.parquet as pq

    files = [files] if isinstance(files, (str, Path)) else list(files)
    pfs = [None if f is None else pq.ParquetFile(f) for f in files]
    row_counts = [None if pf is None else pf.metadata.num_rows for pf in pfs]
    labels = None
    if label_column:
        labels = [None if pf is None else pf.read(columns=[label_column]).column(0).to_numpy() for pf in pfs]
    which, rows = select_rows(select, count, row_counts, labels, classes)
    images, names, set_labels = [None] * len(rows), [None] * len(rows), np.full(len(rows), -1, dtype=np.int64)
    for f in np.unique(which):
        pf = pfs[f]
        mine = np.flatnonzero(which == f)
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        groups = np.searchsorted(starts, rows[mine], side="right") - 1
        for g in np.unique(groups):
            table = pf.read_row_group(int(g), columns=[image_column]).column(0).to_pylist()
            for i in mine[groups == g]:
                cell = table[rows[i] - starts[g]]
                data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (cell, None)
                with Image.open(io.BytesIO(data)) as im:
                    images[i] = edm_transform(im, resolution, transform)
                names[i] = Path(path).name if path else f"{name_prefix}-{int(f):02d}-{int(rows[i]):06d}"
        if labels is not None:
            set_labels[mine] = labels[f][rows[mine]]
    info = dict(source or {}, rows_in_files=row_counts, count=count, resolution=resolution, transform=transform,
                select=select, shard_sha256={int(f): sha256sum(files[f]) for f in np.unique(which)})
    if labels is not None:
        info["class_counts"] = {int(c): int(n) for c, n in zip(*np.unique(set_labels, return_counts=True))}
    return ImageSet(np.stack(images), set_labels if keep_labels else np.full(len(rows), -1, dtype=np.int64), names,
                    rows, info, shards=which)


def paper_image_set(name: str, count: int = 100, root="data/datasets", shard_files=None) -> ImageSet:  # paper: 100
    """The paper's image set ``name`` (a key of :data:`DATASETS`) of ``count`` images, from ``shard_files`` (the
    files of :func:`plan_shards` in its order) or from those shards under ``root`` (downloaded if missing).

    A "classes" set is checked as it is built: it holds exactly the planned number of images of each class (for
    ImageNet, ``count`` distinct classes spread over all 1000; for AFHQv2, the stated cat/dog/wild mix).
    """
    plan = plan_shards(name, count)
    d = DATASETS[name]
    s = SPLITS[d.split]
    paths = [download_shard(n, root) for n in plan] if shard_files is None else list(shard_files)
    if len(paths) != len(plan):
        raise ValueError(f"paper set {name!r} of {count} images reads {len(plan)} shards ({', '.join(plan)}), "
                         f"got {len(paths)} files")
    files = [None] * len(s.files)
    for shard, path in zip(plan, paths):
        files[split_shards(d.split).index(shard)] = path
    source = dict(kind="hub", dataset=name, repo_id=s.repo_id, revision=s.revision, files=list(s.files),
                  licence=s.licence, prior=d.prior, class_names=list(s.class_names))
    images = prepare_image_set(files, count=count, resolution=d.resolution, transform=d.transform, select=d.select,
                               image_column=s.image_column, label_column=s.label_column, keep_labels=d.labels,
                               classes=s.classes, source=source, name_prefix=name)
    if d.select == "classes":
        want = {c: int(k) for c, k in enumerate(_spread_counts(count, s.classes)) if k}
        if images.source["class_counts"] != want:
            raise RuntimeError(f"paper set {name!r}: drew classes {images.source['class_counts']}, planned {want}")
    return images


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
