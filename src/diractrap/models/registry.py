"""The registry of named priors: ``get_denoiser("demo")``, ``get_denoiser("ffhq256")`` or a checkpoint path."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["ModelSpec", "REGISTRY", "register", "get_denoiser", "job_denoiser", "checkpoint_dir", "checkpoint_path",
           "fetch_checkpoint", "forget_checkpoint", "checkpoint_status"]

CHECKPOINTS_ENV = "DIRACTRAP_CHECKPOINTS"  # overrides the checkpoint directory
DEFAULT_CHECKPOINTS = Path("data/checkpoints")  # relative to the working directory (the repository root)


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
    architecture: str = ""  # e.g. "ncsnpp", "edm-ddpmpp", "edm-adm"
    sigma_range: tuple[float, float] | None = None  # the model's noise range, native units


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


def get_denoiser(name_or_path: str, *, device="cpu", root=None, download: bool = True, sha256: str | None = None,
                 progress: bool = True, **options):
    """A denoiser from a registered name or a checkpoint path.

    A downloadable model's file lives at ``<root>/<filename>`` (root: the argument, else ``$DIRACTRAP_CHECKPOINTS``,
    else ``data/checkpoints``); it is downloaded when missing (unless ``download=False``), verified against the
    expected sha256 (``sha256=``, else the registry's, else the one recorded in the lock file) and loaded strictly;
    on first use (no hash known) its hash is recorded only once it has loaded. An embedded prior built from weights
    (``demo``) checks them against its own record; a ``sha256=`` pin must then equal their hash too
    (``denoiser.info["sha256"]``). ``options`` go to the loader (``weights``, ``class_label``, ...) over the
    registry's.
    """
    from ..checks import check_device

    device = check_device(device)
    if name_or_path in REGISTRY:
        spec = REGISTRY[name_or_path]
        if spec.build is not None:
            denoiser = spec.build(device=device, **{**spec.options, **options})
            got = (getattr(denoiser, "info", None) or {}).get("sha256")
            if sha256 is not None and got != sha256.lower():
                from .download import ChecksumError

                raise ChecksumError(
                    f"model {name_or_path!r} is built in code, with no weights file a sha256 pin could check"
                    if got is None else f"model {name_or_path!r} was built from weights with sha256 {got} instead of "
                    f"the pinned {sha256.lower()}: fix the pin, or restore the weights")
            return denoiser
        path, digest, denoiser = _fetch(spec.name, root=root, download=download, sha256=sha256, progress=progress,
                                        device=device, options=options)
        if denoiser is None:
            from .loading import load_denoiser

            denoiser = load_denoiser(path, device=device, sha256=digest, name=spec.name, **{**spec.options, **options})
        denoiser.info.update(architecture=denoiser.info.get("architecture") or spec.architecture,
                             licence=spec.licence, url=spec.urls[0] if spec.urls else None)
        return denoiser
    if Path(name_or_path).exists():
        from .loading import load_denoiser

        return load_denoiser(name_or_path, device=device, sha256=sha256, **options)
    known = ", ".join(sorted(REGISTRY)) or "(none)"
    raise KeyError(f"unknown model {name_or_path!r}: not a registered name ({known}) and not an existing file")


def job_denoiser(job: dict, weights_files=()):
    """The denoiser of a workflow job, with the job's pinned hash always applied.

    ``job``: the dict of the workflow's job builders (``prior``, ``device``, ``sha256``: the config's pin or None);
    ``weights_files``: the job's checkpoint inputs (``snakemake.input.weights``; empty for embedded priors), whose
    directory is the checkpoint root. Never downloads: the workflow's download job has fetched the file.
    """
    root = Path(weights_files[0]).parent if weights_files else None
    return get_denoiser(job["prior"], device=job["device"], root=root, download=False, sha256=job["sha256"])


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint files: where they live, download and verification, state for `diractrap models`
# ---------------------------------------------------------------------------------------------------------------


def checkpoint_dir(root=None, what: str = "checkpoint directory") -> Path:
    """The checkpoint directory: ``root``, else ``$DIRACTRAP_CHECKPOINTS``, else ``data/checkpoints``; a path that
    exists and is not a directory is refused (one line naming ``what``)."""
    path = Path(root if root is not None else os.environ.get(CHECKPOINTS_ENV) or DEFAULT_CHECKPOINTS)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a directory: give the folder that holds (or will hold) the "
                         "checkpoint files")
    return path


def _downloadable(name: str) -> ModelSpec:
    spec = REGISTRY.get(name)
    if spec is None:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    if not spec.filename:
        raise ValueError(f"model {name!r} is embedded: it has no checkpoint file")
    return spec


def checkpoint_path(name: str, root=None) -> Path:
    """Where the checkpoint of a registered model is (or will be) stored."""
    return checkpoint_dir(root) / _downloadable(name).filename


def fetch_checkpoint(name: str, *, root=None, download: bool = True, sha256: str | None = None,
                     progress: bool = True, mirrors=None, official: bool | None = None) -> tuple[Path, str]:
    """The verified checkpoint file of a registered model and its sha256, downloading it if missing.

    Expected hash: ``sha256`` (a pin from the config), else the registry's, else the lock file's record. A file with
    no expected hash is trusted only once it loads as the model's architecture (on the CPU); its hash is then
    recorded in the lock with its origin (a completed download, or a file placed by hand), and every later call
    verifies against it. A downloaded file that does not load is removed; a file placed by hand is left in place.
    ``mirrors``: base URLs tried before the official ones (then those of ``$DIRACTRAP_MIRRORS``); ``official``:
    False tries the mirrors only (None: unless ``$DIRACTRAP_MIRRORS_ONLY=1``); see
    :func:`diractrap.models.download.mirror_urls`.
    """
    path, digest, _ = _fetch(name, root=root, download=download, sha256=sha256, progress=progress, mirrors=mirrors,
                             official=official)
    return path, digest


_LOAD_ERRORS = (ValueError, RuntimeError, OSError, EOFError, KeyError, TypeError, AttributeError, IndexError)


def _fetch(name: str, *, root, download: bool, sha256: str | None, progress: bool, device="cpu", options=None,
           mirrors=None, official: bool | None = None):
    """(path, sha256, the denoiser loaded to earn trust on first use, or None when the hash was already known)."""
    import pickle

    from .download import ChecksumError, ChecksumLock, download as fetch, mirror_urls, verify_file

    spec = _downloadable(name)
    path = checkpoint_path(name, root)
    lock = ChecksumLock(path.parent)
    record = lock.get(spec.filename)
    pinned = (sha256 or spec.sha256 or "").lower() or None
    expected = pinned or (record or {}).get("sha256")
    size = spec.size or (record or {}).get("size")
    where = "pinned" if pinned else f"recorded in {lock.path}"
    url = spec.urls[0] if spec.urls else None
    if not path.is_file():
        if not download:
            raise FileNotFoundError(f"checkpoint of {name!r} missing: download {url or '(no URL)'} "
                                    f"and place it at {path.absolute()} (or allow downloads)")
        try:
            urls = mirror_urls(spec.filename, spec.urls, mirrors=mirrors, use_official=official)
            digest = fetch(urls, path, sha256=expected, size=size, progress=progress)
        except ChecksumError as err:
            raise ChecksumError(f"{err} (expected hash {where})") from None
        origin = "download"
    else:
        digest = verify_file(path, expected or None, size or None, what=str(path.absolute()),
                             hint=f"expected hash {where}: the file is damaged or another checkpoint; delete it to "
                                  "download it again, or forget the record with "
                                  f"`diractrap models --forget {name}` if the source changed")
        origin = "placed by hand"
    if expected:  # verified against a pin or a record made when a file of this name last loaded
        return path, digest, None
    from .loading import load_denoiser

    try:  # trust on first use, for a file that loads as the expected architecture only
        denoiser = load_denoiser(path, device=device, sha256=digest, name=spec.name,
                                 **{**spec.options, **(options or {})})
    except (*_LOAD_ERRORS, pickle.UnpicklingError) as err:
        reason = " ".join(str(err).split())
        if origin == "download":
            path.unlink(missing_ok=True)
            raise ChecksumError(f"the download of {spec.filename} ({' or '.join(urls)}) does not load as "
                                f"{spec.architecture or name} ({reason}); "
                                f"it was removed and nothing was recorded") from None
        raise ChecksumError(f"{path.absolute()} (placed by hand) does not load as {spec.architecture or name} "
                            f"({reason}); nothing was recorded: replace it with the file from {url}") from None
    lock.record(spec.filename, sha256=digest, size=path.stat().st_size, url=url, origin=origin)
    return path, digest, denoiser


def forget_checkpoint(name: str, *, root=None) -> bool:
    """Remove the lock-file record of a registered model's checkpoint (the file, if any, stays). True if found."""
    from .download import ChecksumLock

    spec = _downloadable(name)
    return ChecksumLock(checkpoint_dir(root)).forget(spec.filename)


def checkpoint_status(name: str, *, root=None, verify: bool = True) -> dict:
    """State of a registered model's file: embedded, missing, partial, present (not checked), verified, mismatch,
    loads (not yet recorded) or invalid (the file does not load: the reason follows)."""
    spec = REGISTRY[name]
    if spec.build is not None:
        return {"name": name, "state": "embedded", "path": None, "sha256": None}
    from .download import ChecksumLock, sha256sum

    path = checkpoint_path(name, root)
    record = ChecksumLock(path.parent).get(spec.filename) or {}
    expected = spec.sha256 or record.get("sha256")
    if not path.is_file():
        part = path.with_name(path.name + ".part")
        state = f"partial ({part.stat().st_size / 2**20:.0f} MiB)" if part.is_file() else "missing"
        state += " (hash recorded)" if record else ""
        return {"name": name, "state": state, "path": str(path), "sha256": None}
    if not verify:
        return {"name": name, "state": "present (not checked)", "path": str(path), "sha256": None}
    digest = sha256sum(path)
    if expected:
        state = "verified" if digest == expected else "mismatch"
        return {"name": name, "state": state, "path": str(path), "sha256": digest}
    import pickle

    from .loading import load_denoiser

    try:  # no hash to compare with: does it at least load as the architecture?
        load_denoiser(path, device="cpu", sha256=digest, name=name, **spec.options)
    except (*_LOAD_ERRORS, pickle.UnpicklingError) as err:
        reason = " ".join(str(err).split())
        return {"name": name, "state": f"invalid ({reason[:120]})", "path": str(path), "sha256": digest}
    return {"name": name, "state": "loads (not yet recorded)", "path": str(path), "sha256": digest}


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


def _build_demo(device="cpu", **kwargs):
    from ..train import load_demo_prior

    return load_demo_prior(device=device, **kwargs)  # verifies the shipped weights' sha256


register(
    ModelSpec(
        name="demo",
        description="small EDM denoiser (DDPM++ SongUNet, ~1.7 M parameters) trained on the demo crops; "
        "weights ship in diractrap/assets (retrain: diractrap train-demo)",
        data_range=(-1.0, 1.0),
        resolution=32,
        build=_build_demo,
        licence="MIT (weights trained by this project on the demo images; see diractrap.data.DEMO_SOURCES)",
        architecture="edm-ddpmpp",
        sigma_range=(0.002, 80.0),
    )
)


# ---------------------------------------------------------------------------------------------------------------
# The paper's pretrained priors (its experiments, arXiv:2508.02923): downloaded on first use, never redistributed.
# Hashes: no public source we could reach gives them (the EDM and score_sde releases publish none, and these machines
# have no network to hash the files), so none is pinned; the first file that loads records its hash in the lock
# file, and config/paper.yaml (models.<m>.sha256) can pin one.
# ---------------------------------------------------------------------------------------------------------------

_EDM_CDN = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"

register(
    ModelSpec(
        name="ffhq256",
        description="Song et al. NCSN++ on FFHQ 256x256, continuous VE SDE (score_sde checkpoint_48.pth); "
        "loaded with the raw `model` weights, as the paper's authors did (weights='ema' for the EMA)",
        data_range=(0.0, 1.0),
        resolution=256,
        urls=("gdrive:1-mtdSwuefIZA0n85QWScQo2WRvJNWwUy",),  # Google Drive file id, fetched with gdown
        filename="ffhq_256_ncsnpp_continuous_checkpoint_48.pth",
        licence="score_sde release (Apache-2.0 code); trained on FFHQ (CC BY-NC-SA 4.0)",
        options={"weights": "model"},
        architecture="ncsnpp",
        sigma_range=(0.01, 348.0),
    )
)

for _name, _file, _what in (
    ("ffhq64", "edm-ffhq-64x64-uncond-vp.pkl", "FFHQ 64x64"),
    ("afhq64", "edm-afhqv2-64x64-uncond-vp.pkl", "AFHQv2 64x64"),
):
    register(
        ModelSpec(
            name=_name,
            description=f"EDM (Karras et al. 2022) DDPM++ SongUNet on {_what}, unconditional, VP config, EDMPrecond",
            data_range=(-1.0, 1.0),
            resolution=64,
            urls=(_EDM_CDN + _file,),
            filename=_file,
            licence="CC BY-NC-SA 4.0",
            architecture="edm-ddpmpp",
            sigma_range=(0.002, 80.0),
        )
    )

register(
    ModelSpec(
        name="imagenet64",
        description="EDM ADM DhariwalUNet on ImageNet 64x64, class-conditional only (1000 classes): the potential "
        "uses each image's own label when the image set has labels, else class_label=... (a fixed class)",
        data_range=(-1.0, 1.0),
        resolution=64,
        urls=(_EDM_CDN + "edm-imagenet-64x64-cond-adm.pkl",),
        filename="edm-imagenet-64x64-cond-adm.pkl",
        licence="CC BY-NC-SA 4.0 (model); ImageNet research terms (data)",
        architecture="edm-adm",
        sigma_range=(0.002, 80.0),
    )
)
del _name, _file, _what
