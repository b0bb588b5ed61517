"""Images in and out of the library: files <-> (C, H, W) float tensors in [0, 1].

Sections: image files; (later) the embedded demo images and the paper's datasets.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["load_image", "save_image", "atomic_path"]


# ---------------------------------------------------------------------------------------------------------------
# Image files: PNG/JPEG <-> float tensors (C, H, W) in [0, 1]; RGBA and grey are converted to RGB
# ---------------------------------------------------------------------------------------------------------------


def load_image(path, *, size: int | None = None, mode: str = "RGB") -> Tensor:
    """Read an image file as a float32 tensor (C, H, W) in [0, 1].

    ``mode`` is a PIL mode ("RGB" by default: RGBA is composited on nothing, i.e. the alpha channel is dropped;
    "L" gives one channel). ``size`` resizes the shorter side to ``size`` and centre-crops a square (LANCZOS).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    with Image.open(path) as im:
        im = im.convert(mode)
        if size is not None:
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.LANCZOS)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
        a = np.asarray(im, dtype=np.float32) / 255.0
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a))


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
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False
