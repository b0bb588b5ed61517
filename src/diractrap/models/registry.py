"""The registry of named priors: ``get_denoiser("demo")``, ``get_denoiser("ffhq256")`` or a checkpoint path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["ModelSpec", "REGISTRY", "register", "get_denoiser"]


@dataclass(frozen=True)
class ModelSpec:
    """One named prior. Embedded priors have ``build``; downloadable ones have URLs and a file name."""

    name: str
    description: str
    data_range: tuple[float, float]
    resolution: int
    build: Callable | None = None  # build(device=..., **options) -> denoiser, for embedded priors
    urls: tuple[str, ...] = ()
    filename: str | None = None
    sha256: str | None = None
    size: int | None = None
    licence: str = ""
    options: dict = field(default_factory=dict)  # keyword arguments for the loader


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


def get_denoiser(name_or_path: str, *, device="cpu", **options):
    """A denoiser from a registered name or a checkpoint path."""
    if name_or_path in REGISTRY:
        spec = REGISTRY[name_or_path]
        if spec.build is not None:
            return spec.build(device=device, **{**spec.options, **options})
        raise NotImplementedError  # filled by the checkpoint registry (models issue)
    if Path(name_or_path).exists():
        from .loading import load_denoiser

        return load_denoiser(name_or_path, device=device, **options)
    known = ", ".join(sorted(REGISTRY)) or "(none)"
    raise KeyError(f"unknown model {name_or_path!r}: not a registered name ({known}) and not an existing file")


# ---------------------------------------------------------------------------------------------------------------
# Embedded priors (no download)
# ---------------------------------------------------------------------------------------------------------------


def _build_gaussian_demo(device="cpu", **kwargs):
    from ..data import demo_images
    from ..priors import GaussianPrior

    return GaussianPrior.fit(demo_images("train"), **kwargs).to(device)


register(
    ModelSpec(
        name="gaussian-demo",
        description="stationary Gaussian fitted to the embedded demo training crops (the baseline)",
        data_range=(0.0, 1.0),
        resolution=32,
        build=_build_gaussian_demo,
        licence="same as the demo images",
    )
)
