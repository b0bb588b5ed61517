"""Pretrained priors: network architectures, checkpoint loading and the registry of named models.

Every object returned here follows the denoiser protocol of :mod:`diractrap.priors`.
"""

from .registry import REGISTRY, ModelSpec, get_denoiser

__all__ = ["REGISTRY", "ModelSpec", "get_denoiser"]

from .edm import DhariwalUNet, EDMPrecond, SongUNet  # noqa: E402  EDM's networks (Karras et al. 2022)
from .edm_pickle import load_edm_pickle  # noqa: E402  EDM snapshots read without running their code

__all__ += ["SongUNet", "DhariwalUNet", "EDMPrecond", "load_edm_pickle"]
