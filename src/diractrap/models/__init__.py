"""Pretrained priors: network architectures, checkpoint loading and the registry of named models.

Every object returned here follows the denoiser protocol of :mod:`diractrap.priors`.
"""

from .registry import REGISTRY, ModelSpec, get_denoiser

__all__ = ["REGISTRY", "ModelSpec", "get_denoiser"]

from .edm import DhariwalUNet, EDMPrecond, SongUNet  # noqa: E402  EDM's networks (Karras et al. 2022)

__all__ += ["SongUNet", "DhariwalUNet", "EDMPrecond"]
