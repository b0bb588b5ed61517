"""Load a pretrained prior from its original checkpoint file into modules we own: strictly, and without running
code carried by the file.

Two formats, chosen by the file suffix:
- ``.pth`` / ``.pt``: a score_sde checkpoint dict ``{model, ema, optimizer, step}`` (or a bare state dict), read
  with ``torch.load(..., weights_only=True)`` (tensors and plain containers only) into :class:`~.ncsnpp.NCSNpp`;
- ``.pkl``: an EDM snapshot pickle, read by the restricted unpickler of :mod:`diractrap.models.edm_pickle`.

Every key of the file must find a parameter or buffer of the same shape and every parameter must be filled: a
missing or unexpected key or a shape mismatch is an error that lists them (no ``strict=False`` anywhere).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .download import verify_file
from .ncsnpp import NCSNppConfig, NCSNppDenoiser, build_ncsnpp

__all__ = ["load_denoiser", "load_score_sde", "check_state_dict"]

_SHOW = 12  # offenders listed per category in an error message


# ---------------------------------------------------------------------------------------------------------------
# The entry point: dispatch on the file format
# ---------------------------------------------------------------------------------------------------------------


def load_denoiser(path, **options):
    """A denoiser (protocol of :mod:`diractrap.priors`) from a checkpoint file.

    Options for a score_sde checkpoint (``.pth``/``.pt``), see :func:`load_score_sde`: ``device="cpu"``,
    ``weights="ema"`` (EMA shadow parameters) or ``"model"`` (the raw weights, which the paper's authors used),
    ``config=dict(...)`` (architecture fields; FFHQ-256 defaults), ``dtype=torch.float32``.
    Options for an EDM snapshot (``.pkl``): ``device``, ``class_label`` (a fixed class for a conditional network).
    Both: ``sha256=`` (the file must have this hash), ``name=`` (recorded in ``denoiser.info``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        return _load_edm_snapshot(path, **options)
    if suffix in (".pth", ".pt"):
        return load_score_sde(path, **options)
    raise ValueError(
        f"{path}: unknown checkpoint format {suffix!r}; expected a score_sde checkpoint (.pth, .pt) "
        "or an EDM snapshot (.pkl)"
    )


def _verified_digest(path: Path, sha256: str | None) -> str:
    return verify_file(path, sha256, hint="the file is damaged or another checkpoint; delete it and download it again")


# ---------------------------------------------------------------------------------------------------------------
# Strict state-dict matching, with errors that list the offenders
# ---------------------------------------------------------------------------------------------------------------


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def check_state_dict(module: nn.Module, state: dict, *, source: str = "checkpoint", hint: str = "") -> None:
    """Raise a ValueError listing missing keys, unexpected keys and shape mismatches between ``state`` and ``module``.

    Works on a module built on the meta device (only names and shapes are compared).
    """
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {expected[k]})"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        message = f"{source} does not fit {type(module).__name__}: " + "; ".join(problems)
        raise ValueError(message + (f". {hint}" if hint else ""))


# ---------------------------------------------------------------------------------------------------------------
# score_sde checkpoints: {model, ema: {decay, num_updates, shadow_params}, optimizer, step}
# ---------------------------------------------------------------------------------------------------------------


def load_score_sde(
    path,
    *,
    device="cpu",
    weights: str = "ema",  # "ema" (EMA shadow parameters) or "model" (what the paper's authors loaded)
    config: dict | NCSNppConfig | None = None,  # architecture overrides; FFHQ-256 defaults
    dtype: torch.dtype = torch.float32,
    class_label=None,
    sha256: str | None = None,
    name: str | None = None,
) -> NCSNppDenoiser:
    """An :class:`NCSNppDenoiser` from a score_sde checkpoint (or a bare NCSN++ state dict; then ``weights="model"``).

    ``weights="ema"`` puts the EMA shadow parameters, a list in the order of the network's *trainable* parameters
    (the fixed Fourier weights ``all_modules.0.W`` are not in it and come from ``model``), into the network.
    The DataParallel prefix ``module.`` is stripped. ``config`` is a flat dict of :class:`NCSNppConfig` fields or
    score_sde's nested config; training-only fields are ignored.
    """
    path = Path(path)
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    if class_label is not None:
        raise ValueError("NCSN++ is unconditional: class_label must be None")
    digest = _verified_digest(path, sha256)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the weights-only unpickler refuses anything but tensors and plain containers
        raise ValueError(f"{path} is not a plain-tensor PyTorch checkpoint and was not loaded ({_why(err)}); this "
                         "project loads only files of tensors and plain containers") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict or a state dict")

    if isinstance(ckpt.get("model"), dict):  # score_sde's run_lib layout
        state, ema, step = ckpt["model"], ckpt.get("ema"), ckpt.get("step")
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):  # a bare state dict
        state, ema, step = ckpt, None, None
    else:
        raise ValueError(f"{path}: expected score_sde's {{model, ema, optimizer, step}} or a state dict; "
                         f"found keys {sorted(map(str, ckpt))[:8]}")
    state = {k.removeprefix("module."): v for k, v in state.items()}

    cfg = config if isinstance(config, NCSNppConfig) else NCSNppConfig.from_dict(config)
    net = build_ncsnpp(cfg, device="meta")
    hint = "If the checkpoint has another architecture, describe it with config=dict(...) (fields of NCSNppConfig)."
    check_state_dict(net, state, source=str(path), hint=hint)
    if weights == "ema":
        if not isinstance(ema, dict) or "shadow_params" not in ema:
            raise ValueError(f"{path} has no EMA weights (ema.shadow_params); load it with weights='model'")
        state = _with_ema(net, state, list(ema["shadow_params"]), source=str(path))
    net.load_state_dict(state, strict=True, assign=True)
    net = net.to(device=device, dtype=dtype)
    info = {"name": name or path.stem, "checkpoint": str(path), "sha256": digest, "format": "score_sde",
            "weights": weights, "step": None if step is None else int(step)}
    return NCSNppDenoiser(net, info=info)


def _why(err: BaseException) -> str:
    """torch.load's reason without its advice to retry with weights_only=False (never to be followed here)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not any(w in ln.lower() for w in ("weights_only", "weights only", "documentation"))]
    return keep[0] if keep else type(err).__name__


def _with_ema(net: nn.Module, state: dict, shadow: list, *, source: str) -> dict:
    """``state`` with each trainable parameter replaced by its EMA shadow (matched by position, shapes checked)."""
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if len(shadow) != len(trainable):
        raise ValueError(
            f"{source}: the EMA holds {len(shadow)} shadow parameters but the architecture has {len(trainable)} "
            "trainable ones; the config does not describe this checkpoint"
        )
    mismatched = [
        f"#{i} {n} (EMA {tuple(s.shape)}, model {tuple(p.shape)})"
        for i, ((n, p), s) in enumerate(zip(trainable, shadow))
        if tuple(s.shape) != tuple(p.shape)
    ]
    if mismatched:
        raise ValueError(f"{source}: {len(mismatched)} EMA shadow shape mismatch(es): {_listing(mismatched)}")
    return {**state, **{n: s for (n, _), s in zip(trainable, shadow)}}


# ---------------------------------------------------------------------------------------------------------------
# EDM snapshots: delegated to the restricted unpickler (imported lazily: it lives in its own module)
# ---------------------------------------------------------------------------------------------------------------


def _load_edm_snapshot(path: Path, *, device="cpu", class_label=None, weights: str = "ema", sha256=None, name=None):
    if weights != "ema":
        raise ValueError(f"an EDM snapshot holds only the 'ema' network; weights={weights!r} is not available")
    digest = _verified_digest(path, sha256)
    from .edm_pickle import load_edm_pickle

    denoiser = load_edm_pickle(path, device=device, class_label=class_label)
    info = getattr(denoiser, "info", None)
    if not isinstance(info, dict):
        info = {}
        denoiser.info = info
    info.update({"name": name or path.stem, "checkpoint": str(path), "sha256": digest, "format": "edm", "weights": "ema"})
    return denoiser
