"""Pretrained priors: network architectures, checkpoint loading and the registry of named models.

Every object returned here follows the denoiser protocol of :mod:`diractrap.priors`.
"""

from .registry import (REGISTRY, ModelSpec, checkpoint_path, checkpoint_status, fetch_checkpoint, forget_checkpoint,
                       get_denoiser, job_denoiser)
from .loading import load_denoiser
from .ncsnpp import NCSNpp, NCSNppConfig, NCSNppDenoiser  # Song et al.'s NCSN++ (score_sde)

__all__ = ["REGISTRY", "ModelSpec", "get_denoiser", "job_denoiser", "load_denoiser", "fetch_checkpoint",
           "checkpoint_path", "checkpoint_status", "forget_checkpoint", "NCSNpp", "NCSNppConfig", "NCSNppDenoiser"]

from .edm import DhariwalUNet, EDMPrecond, SongUNet  # noqa: E402  EDM's networks (Karras et al. 2022)
from .edm_pickle import load_edm_pickle  # noqa: E402  EDM snapshots read without running their code

__all__ += ["SongUNet", "DhariwalUNet", "EDMPrecond", "load_edm_pickle"]
