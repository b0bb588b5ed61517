"""The project's floating-point policy: float32 network evaluations without TF32, switched off only where needed.

TF32 keeps 10 mantissa bits in CUDA matmuls and cuDNN convolutions: on Ampere and later GPUs a network evaluation
would be ~1e-3 relative, far from the float32 the potential's ODE and Algorithm 1's gradients assume. The flags are
process-wide in PyTorch, so the policy is a context manager: it switches TF32 off for its block and gives the
caller back the flags it had. On the CPU the flags have no effect (and stay settable).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["no_tf32"]


# ---------------------------------------------------------------------------------------------------------------
# TF32: off inside the block, the caller's flags restored after it (nesting included)
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def no_tf32():
    """Switch TF32 off for CUDA matmuls and cuDNN for the duration of the block, then restore the previous flags.

    A backward pass reads the flags when it runs: differentiate inside the block to keep TF32 off there too.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
