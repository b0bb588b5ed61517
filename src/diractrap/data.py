"""Image files and the embedded demo crops: files <-> (C, H, W) float tensors in [0, 1].

This module owns the small file utilities every other module uses (:func:`load_image`, :func:`save_image`,
:class:`atomic_path`) and the demo crops: deterministic crops of photographs bundled with installed packages
(scikit-image, matplotlib, scikit-learn), which train and test the demo prior without a download. The paper's
image sets, and the ``.npz`` file format the workflow reads, are in :mod:`diractrap.datasets`.

Sections: image files; the embedded demo images.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

__all__ = [
    "load_image",
    "save_image",
    "atomic_path",
    "DEMO_SOURCES",
    "DEMO_SCALES",
    "demo_crops",
    "demo_images",
    "make_demo_crops",
]


# ---------------------------------------------------------------------------------------------------------------
# Image files: PNG/JPEG <-> float tensors (C, H, W) in [0, 1]; RGBA and grey are converted to RGB
# ---------------------------------------------------------------------------------------------------------------


def load_image(path, *, size: int | None = None, mode: str = "RGB") -> Tensor:
    """Read an image file as a float32 tensor (C, H, W) in [0, 1].

    ``mode`` is "RGB" (default, 3 channels) or "L" (one channel). An EXIF orientation (JPEGs from cameras and
    phones) is applied: the array is the picture as viewers show it. Every PIL mode is read at its own depth: 8-bit
    grey, palette, LA, RGB(A) and CMYK through PIL's conversion (the alpha channel is dropped, CMYK converted by
    PIL's formula), 16-bit grey (I;16*, and "I" as PIL opens 16-bit PNGs) divided by 65535, float images ("F")
    taken as they are (checked to lie in [0, 1]). ``size`` resizes the shorter side to ``size`` and centre-crops a
    square (LANCZOS). An unreadable, empty or truncated file raises a one-line ValueError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            ImageOps.exif_transpose(im, in_place=True)  # a camera's orientation tag: pixels as the photo is shown
            a = _unit_array(im, mode, size)
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # PIL's errors for unreadable data
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"{path} is not a readable image ({reason}): give a PNG or JPEG file") from None
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError(f"{path} has values in [{np.nanmin(a):.4g}, {np.nanmax(a):.4g}]; float images must lie in "
                         "[0, 1]")
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


_HIGH_DEPTH = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def _unit_array(im: Image.Image, mode: str, size: int | None) -> np.ndarray:
    """(H, W) or (H, W, 3) float array in [0, 1]: 8-bit modes through PIL's conversion, high-depth ones by scale."""
    if im.mode not in _HIGH_DEPTH:
        im = _square(im.convert(mode), size)
        return np.asarray(im, dtype=np.float32) / 255.0
    a = np.asarray(im, dtype=np.float64)
    if im.mode == "I" and (a.min() < 0 or a.max() > 65535):  # a 32-bit integer image, not a 16-bit PNG
        raise OSError(f"32-bit integer pixels in [{a.min():.0f}, {a.max():.0f}] have no known scale")
    a = (a / _HIGH_DEPTH[im.mode]).astype(np.float32)
    a = np.asarray(_square(Image.fromarray(a, mode="F"), size), dtype=np.float32)  # resized in float, never 8 bits
    if size is not None:
        a = a.clip(0.0, 1.0)  # LANCZOS overshoots at edges; the 8-bit path clips the same way
    return np.stack([a] * 3, -1) if mode == "RGB" else a


def _square(im: Image.Image, size: int | None) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop a square (LANCZOS); unchanged for size None."""
    if size is None:
        return im
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.LANCZOS)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return im.crop((left, top, left + size, top + size))


def save_image(x: Tensor, path) -> Path:
    """Write a (C, H, W) or (1, C, H, W) tensor in [0, 1] (clipped, rounded to 8 bits) as PNG, atomically."""
    x = x.detach().to("cpu", torch.float64)
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"save_image writes one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected (C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    a = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return Path(path)


class atomic_path:
    """Context manager giving a temporary path beside ``path``; on success it is renamed onto ``path``.

    A failure (or a kill) leaves no file at ``path``: readers never see a half-written output.
    """

    def __init__(self, path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


# ---------------------------------------------------------------------------------------------------------------
# The embedded demo images: multi-scale crops of photographs that installed packages bundle (no download)
# ---------------------------------------------------------------------------------------------------------------
#
# Sources (all ship inside scikit-image 0.26, matplotlib or scikit-learn wheels; licences as their packages state):
#
# | name                 | package, call                                  | subject                  | licence                          | split |
# |----------------------|------------------------------------------------|--------------------------|----------------------------------|-------|
# | astronaut            | skimage.data.astronaut()            512x512    | a face (Eileen Collins)  | public domain (NASA)             | test  |
# | chelsea              | skimage.data.chelsea()              300x451    | a cat's face             | CC0 (Stefan van der Walt)        | test  |
# | coffee               | skimage.data.coffee()               400x600    | cup on wood              | CC0 (Rachel Michetti)            | train |
# | rocket               | skimage.data.rocket()               427x640    | launch pad at dusk       | public domain (SpaceX)           | train |
# | immunohistochemistry | skimage.data.immunohistochemistry() 512x512    | stained tissue           | no known copyright restrictions  | train |
# | motorcycle           | skimage.data.stereo_motorcycle()[0] 500x741    | motorcycle in a garage   | Middlebury 2014 stereo benchmark (Scharstein et al., GCPR 2014): free research use with citation | train |
# | grace_hopper         | matplotlib sample_data grace_hopper.jpg 600x512| a face (Grace Hopper)    | public domain (US Navy photo)    | train |
# | china                | sklearn.datasets.load_sample_image("china.jpg") 427x640 | a pagoda, trees  | CC BY 2.0 (danielbuechele, Flickr) | train |
# | flower               | sklearn.datasets.load_sample_image("flower.jpg") 427x640 | a dahlia        | CC BY 2.0 (vultilion, Flickr)    | train |
#
# Left out on purpose: hubble_deep_field (black sky and point stars) and retina (a dark disc) would teach the prior
# statistics unlike photographs; the grey pictures (camera, brick, grass, ...) have no colour; ``lfw_subset`` faces
# are 25x25, smaller than a crop, and upsampling them would teach the prior that blur is likely. Nothing is ever
# upsampled: every picture is only downsampled (antialiased Lanczos) by a scale <= 1/2, which also removes JPEG
# blocking and sensor noise, then cropped. The split is by picture, so no test scene is ever seen in training; the
# test pictures hold a human face and a cat's face (the paper's FFHQ and AFHQ priors are face priors).


@dataclass(frozen=True)
class DemoSource:
    """One bundled photograph: how to load it, what it shows, its licence, and its split."""

    name: str
    package: str
    call: str
    subject: str
    licence: str
    split: str  # "train" or "test"


DEMO_SOURCES: dict[str, DemoSource] = {
    s.name: s
    for s in (
        DemoSource("astronaut", "scikit-image", "skimage.data.astronaut()", "a human face", "public domain (NASA)", "test"),
        DemoSource("chelsea", "scikit-image", "skimage.data.chelsea()", "a cat's face", "CC0 (Stefan van der Walt)", "test"),
        DemoSource("coffee", "scikit-image", "skimage.data.coffee()", "cup on wood", "CC0 (Rachel Michetti)", "train"),
        DemoSource("rocket", "scikit-image", "skimage.data.rocket()", "launch pad at dusk", "public domain (SpaceX)", "train"),
        DemoSource(
            "immunohistochemistry", "scikit-image", "skimage.data.immunohistochemistry()", "stained tissue",
            "no known copyright restrictions", "train",
        ),
        DemoSource(
            "motorcycle", "scikit-image", "skimage.data.stereo_motorcycle()[0]", "motorcycle in a garage",
            "Middlebury 2014 stereo benchmark (Scharstein et al., GCPR 2014): research use with citation", "train",
        ),
        DemoSource(
            "grace_hopper", "matplotlib", "matplotlib.cbook.get_sample_data('grace_hopper.jpg')", "a human face",
            "public domain (US Navy photograph)", "train",
        ),
        DemoSource(
            "china", "scikit-learn", "sklearn.datasets.load_sample_image('china.jpg')", "a pagoda and trees",
            "CC BY 2.0 (danielbuechele, Flickr)", "train",
        ),
        DemoSource(
            "flower", "scikit-learn", "sklearn.datasets.load_sample_image('flower.jpg')", "a dahlia",
            "CC BY 2.0 (vultilion, Flickr)", "train",
        ),
    )
}

DEMO_SCALES = tuple(2.0 ** (-k / 2) for k in range(2, 9))  # 1/2, 1/(2 sqrt 2), ..., 1/16: octave halves, never > 1/2
DEMO_STRIDE = {"train": 0.5, "test": 1.0}  # crop stride / crop size: overlapping train crops, disjoint test crops


def _load_source(name: str) -> np.ndarray:
    """The picture ``name`` of :data:`DEMO_SOURCES` as a (H, W, 3) uint8 array, from the package that bundles it."""
    if name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "motorcycle"):
        import skimage.data

        a = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    elif name == "grace_hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as im:
            a = np.asarray(im.convert("RGB"))
    elif name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        a = load_sample_image(f"{name}.jpg")
    else:
        raise KeyError(f"unknown demo source {name!r}; choose one of {', '.join(DEMO_SOURCES)}")
    a = np.asarray(a)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise RuntimeError(f"demo source {name!r} loaded as {a.dtype} {a.shape}, expected uint8 (H, W, 3)")
    return a


@functools.lru_cache(maxsize=None)
def _downsampled(name: str, scale: float) -> np.ndarray:
    """The picture shrunk by ``scale`` <= 1 with PIL's antialiased Lanczos filter, (round(H s), round(W s), 3) uint8."""
    if not 0 < scale <= 1:
        raise ValueError(f"demo crops are only ever downsampled: scale must be in (0, 1], got {scale}")
    a = _load_source(name)
    h, w = a.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(a).resize(size, Image.LANCZOS))


def _positions(n: int, size: int, stride: int) -> list[int]:
    """Offsets of a regular grid of crops of ``size`` along a side of ``n`` pixels, centred (equal margins)."""
    count = (n - size) // stride + 1
    first = (n - size - (count - 1) * stride) // 2
    return [first + i * stride for i in range(count)]


@dataclass(frozen=True)
class DemoCrop:
    """Where one crop comes from. ``sha256`` hashes its raw (R, R, 3) uint8 pixels in row-major order."""

    file: str  # relative path written by make_demo_crops: "{split}/{source}_s{scale:.4f}_y{top:03d}_x{left:03d}.png"
    source: str
    split: str
    scale: float  # output pixels per source pixel (<= 1/2: never upsampled)
    top: int  # position in the downsampled picture
    left: int
    size: int
    sha256: str


@functools.lru_cache(maxsize=None)
def _demo_crops(split: str, resolution: int) -> tuple[tuple[DemoCrop, ...], np.ndarray]:
    if split not in DEMO_STRIDE:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8 pixels, got {resolution}")
    stride = max(1, round(resolution * DEMO_STRIDE[split]))
    records, pixels = [], []
    # coarsest scale first, sources interleaved: the first test crops are whole faces, not patches of a spacesuit
    for scale in sorted(DEMO_SCALES):
        for source in (s for s in DEMO_SOURCES.values() if s.split == split):
            a = _downsampled(source.name, scale)
            if min(a.shape[:2]) < resolution:
                continue  # this picture is too small at this scale; never upsample
            for top in _positions(a.shape[0], resolution, stride):
                for left in _positions(a.shape[1], resolution, stride):
                    crop = np.ascontiguousarray(a[top : top + resolution, left : left + resolution])
                    file = f"{split}/{source.name}_s{scale:.4f}_y{top:03d}_x{left:03d}.png"
                    sha = hashlib.sha256(crop.tobytes()).hexdigest()
                    records.append(DemoCrop(file, source.name, split, scale, top, left, resolution, sha))
                    pixels.append(crop)
    if not pixels:
        raise ValueError(f"no demo picture is at least {resolution} pixels wide at scale {max(DEMO_SCALES):.3g}")
    stack = np.stack(pixels)
    stack.setflags(write=False)  # cached: callers get copies
    return tuple(records), stack


def demo_crops(split: str = "train", resolution: int = 32) -> list[DemoCrop]:
    """The manifest of the demo crops of one split (built in memory, deterministic, cached in-process).

    Order: scales from coarse to fine, and within a scale the pictures in :data:`DEMO_SOURCES` order, each in
    row-major grid order; ``demo_images(split, resolution)[i]`` is the crop ``demo_crops(split, resolution)[i]``.
    """
    return list(_demo_crops(split, resolution)[0])


def demo_images(split: str = "train", resolution: int = 32) -> Tensor:
    """The demo crops of one split as a float32 tensor (N, 3, R, R) in [0, 1] (8-bit values / 255).

    Built in memory from the pictures bundled with scikit-image, matplotlib and scikit-learn (no files, no
    network), deterministically, and cached in-process. Train crops overlap by half (stride R/2) over
    :data:`DEMO_SCALES`; test crops are disjoint (stride R). At resolution 32: 2970 train and 164 test crops.
    Any resolution works (e.g. 48 or 64 test crops leave room for a 21 x 21 kernel's 'valid' blur); larger
    crops exist at fewer scales, since a picture is never upsampled.
    """
    pixels = _demo_crops(split, resolution)[1]
    return torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


def make_demo_crops(out_dir, resolution: int = 32, splits=("train", "test"), *, progress: bool = True) -> Path:
    """Write the demo crops as PNG files ``out_dir/{split}/*.png`` and a manifest ``out_dir/manifest.json``.

    The manifest lists every crop (file, source picture, scale, position, size, sha256 of its raw RGB pixels,
    split), the source pictures with their licences, and the settings. Deterministic: two runs write identical
    files. Returns the manifest's path.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    crops = []
    for split in splits:
        records, pixels = _demo_crops(split, resolution)
        for rec, crop in tqdm(list(zip(records, pixels)), desc=f"demo crops ({split})", disable=not progress):
            with atomic_path(out_dir / rec.file) as tmp:
                Image.fromarray(crop).save(tmp, format="PNG")
        crops += [asdict(r) for r in records]
    manifest = {
        "resolution": resolution,
        "scales": list(DEMO_SCALES),
        "stride": {s: max(1, round(resolution * DEMO_STRIDE[s])) for s in splits},
        "resampling": "PIL Image.resize, LANCZOS (antialiased), from the 8-bit picture; crops are 8-bit",
        "sha256": "of the raw (R, R, 3) uint8 pixels, row-major",
        "sources": [asdict(s) for s in DEMO_SOURCES.values()],
        "crops": crops,
    }
    path = out_dir / "manifest.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return path
