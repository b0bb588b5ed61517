"""The project's floating-point policy: the precision of network evaluations, chosen by the caller, float32 by default.

A network evaluation runs at one of :data:`PRECISIONS`:

    fp32   float32 throughout, TF32 off (the default: what the potential's ODE and Algorithm 1 were validated on)
    tf32   float32 tensors, TF32 allowed in CUDA matmuls and cuDNN convolutions (10 mantissa bits inside them)
    bf16   autocast to bfloat16 around the network's forward pass (8 mantissa bits in matmuls and convolutions)
    fp16   autocast to float16 (GPU only in practice: on our CPUs float16 autocast is ~60x slower than float32)

Only the network changes: the ODE state stays float32 and the divergence integral float64 (diractrap.potential),
the network's output is cast back to its input's dtype, and the skip connection c_skip * x of a preconditioned
denoiser, an element-wise product, is formed in float32 by autocast's type promotion. On the CPU TF32 does not
exist, so tf32 is fp32 there. How much each costs in q, and where it is harmless: BENCHMARKS.md "potential".

The TF32 flags are process-wide in PyTorch, so the policy is a context manager that gives the caller back the flags
it had: :func:`precision_scope` sets them for a block (forward *and* backward passes: a backward pass reads the
flags when it runs), :func:`autocast` wraps a forward pass only (autograd replays the forward's dtypes in the
backward pass), and :func:`at_precision` wraps a denoiser so that every call of it does both. Code that does not
choose (the networks' own forward passes, theorem1's second derivatives) uses :func:`no_tf32`, which switches TF32
off unless an enclosing :func:`precision_scope` chose otherwise.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

__all__ = ["PRECISIONS", "REDUCED", "check_precision", "precision_scope", "autocast", "at_precision", "no_tf32",
           "active_precision"]

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
REDUCED = ("tf32", "bf16", "fp16")  # a network evaluation rounded coarser than float32
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_chosen: contextvars.ContextVar[str | None] = contextvars.ContextVar("diractrap_precision", default=None)


def check_precision(precision: str) -> str:
    """``precision`` itself if it is one of :data:`PRECISIONS`, else a ValueError naming the valid ones."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def active_precision() -> str | None:
    """The precision chosen by the innermost enclosing :func:`precision_scope`, or None outside any."""
    return _chosen.get()


# ---------------------------------------------------------------------------------------------------------------
# The TF32 flags for a block (forward and backward), and autocast for a forward pass
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def precision_scope(precision: str = "fp32"):
    """TF32 allowed in the block if ``precision == "tf32"``, off otherwise; the caller's flags restored after it.

    Inside the block, :func:`no_tf32` (used by the networks' own forward passes) defers to this choice.
    """
    check_precision(precision)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    allow = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    token = _chosen.set(precision)
    try:
        yield
    finally:
        _chosen.reset(token)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def autocast(precision: str, device_type: str):
    """torch.autocast to bfloat16 / float16 for ``bf16`` / ``fp16``; nothing for ``fp32`` and ``tf32``.

    Wrap forward passes only: autograd runs each backward op in the dtype its forward op used.
    """
    dtype = _AUTOCAST_DTYPES.get(check_precision(precision))
    if dtype is None:
        yield
        return
    with torch.autocast(device_type, dtype=dtype):
        yield


@contextlib.contextmanager
def no_tf32():
    """TF32 off for the block (then the previous flags restored), unless an enclosing :func:`precision_scope`
    chose a precision: then that choice stands. A backward pass reads the flags when it runs: differentiate inside
    the block to keep TF32 off there too."""
    if _chosen.get() is not None:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---------------------------------------------------------------------------------------------------------------
# A denoiser evaluated at a chosen precision (the denoiser protocol of diractrap.priors, unchanged)
# ---------------------------------------------------------------------------------------------------------------


class _AtPrecision:
    """A denoiser whose every call runs in :func:`precision_scope` and :func:`autocast` and returns its input's
    dtype. Attributes (sigma_min, sigma_max, data_range, info, parameters, ...) are the wrapped denoiser's."""

    def __init__(self, denoiser, precision: str):
        self.denoiser, self.precision = denoiser, check_precision(precision)

    def __call__(self, x, sigma, labels=None):
        with precision_scope(self.precision), autocast(self.precision, x.device.type):
            out = self.denoiser(x, sigma, labels)
        return out.to(x.dtype)

    def __getattr__(self, name):
        if name in ("denoiser", "precision"):  # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.denoiser, name)


def at_precision(denoiser, precision: str = "fp32"):
    """``denoiser`` evaluated at ``precision`` (:data:`PRECISIONS`); fp32 returns it unchanged.

    Forward passes only are affected by autocast; to keep TF32 off or on in a backward pass too, differentiate
    inside :func:`precision_scope` (as :func:`diractrap.potential.potential` does).
    """
    if check_precision(precision) == "fp32":
        return denoiser
    if isinstance(denoiser, _AtPrecision):
        denoiser = denoiser.denoiser
    return _AtPrecision(denoiser, precision)
