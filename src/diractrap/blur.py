"""The blur operator y = h * x (the paper's forward model) by FFT, and its adjoints.

Convention: a true *convolution* (not a correlation) with the kernel centre at c = K // 2:

    circular:  y[i] = sum_u h[u] x[(i - u + c) mod n]           y has the size of x; delta is the identity
    valid:     y[i] = sum_u h[u] x[i + K - 1 - u],  0 <= i <= n - K   y is smaller by K - 1 per axis

'valid' is the authors' model: every output pixel sees only pixels of x, no boundary assumption; it equals
``conv2d(x, flip(h))`` (torch's conv2d is a correlation) and the crop [K-1-c : n-c] of the circular convolution,
so delta gives the centre crop of x. Shapes: x (B, C, H, W); h (K, K) for one kernel shared by the whole batch,
or (B, K, K) for one kernel per image; the kernel acts on every channel alike.

Adjoints (for the x- and theta-gradients of Algorithm 1 and for tests; autograd through :func:`conv` gives the
same numbers):
    conv_adjoint(y, h)            = A_h^T y,  the adjoint with respect to the image,     shape of x
    conv_adjoint_kernel(y, x, K)  = A_x^T y,  the adjoint with respect to the kernel,    (B, K, K) summed over C

Valid mode needs no zero-padding beyond the image size: with FFTs of length N >= H the wrapped-around part of
the circular convolution falls outside the valid window. N is rounded up to a fast FFT size.
"""

from __future__ import annotations

import scipy.fft
import torch
from torch import Tensor

__all__ = ["conv", "conv_adjoint", "conv_adjoint_kernel", "blur_same", "valid_shape"]

MODES = ("valid", "circular")


# ---------------------------------------------------------------------------------------------------------------
# Shape checks and FFT sizes
# ---------------------------------------------------------------------------------------------------------------


def _check(x: Tensor, h: Tensor, mode: str) -> tuple[int, int]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if x.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(x.shape)}")
    if h.ndim not in (2, 3) or (h.ndim == 3 and h.shape[0] not in (1, x.shape[0])):
        raise ValueError(f"kernels must be (K, K) or (B, K, K) with B = {x.shape[0]}, got {tuple(h.shape)}")
    kh, kw = h.shape[-2:]
    if kh > x.shape[-2] or kw > x.shape[-1]:
        raise ValueError(f"kernel {kh}x{kw} larger than image {x.shape[-2]}x{x.shape[-1]}")
    return kh, kw


def _kernel4(h: Tensor) -> Tensor:
    """(K, K) -> (1, 1, K, K); (B, K, K) -> (B, 1, K, K): broadcast over the batch and the channels."""
    return h.reshape(-1, 1, *h.shape[-2:])


def _fast(n: int) -> int:
    return scipy.fft.next_fast_len(n, real=True)


def valid_shape(image_shape, kernel_size: int) -> tuple[int, int]:
    """Size of the valid output of an image of shape (..., H, W) with a K x K kernel: (H - K + 1, W - K + 1)."""
    return image_shape[-2] - kernel_size + 1, image_shape[-1] - kernel_size + 1


# ---------------------------------------------------------------------------------------------------------------
# The operator A_h x = h * x
# ---------------------------------------------------------------------------------------------------------------


def conv(x: Tensor, h: Tensor, mode: str = "valid") -> Tensor:
    """h * x, differentiable in x and h. See the module docstring for the convention and shapes."""
    kh, kw = _check(x, h, mode)
    H, W = x.shape[-2:]
    if mode == "circular":
        s = (H, W)
        hf = torch.fft.rfft2(_centre_at_origin(_kernel4(h), s), s=s)
        return torch.fft.irfft2(torch.fft.rfft2(x) * hf, s=s)
    s = (_fast(H), _fast(W))
    z = torch.fft.irfft2(torch.fft.rfft2(x, s=s) * torch.fft.rfft2(_kernel4(h), s=s), s=s)
    return z[..., kh - 1 : H, kw - 1 : W]


def conv_adjoint(y: Tensor, h: Tensor, mode: str = "valid") -> Tensor:
    """A_h^T y: the adjoint with respect to the image (a correlation with h); returns the shape of x."""
    kh, kw = h.shape[-2:]
    if mode == "circular":
        _check(y, h, mode)
        s = tuple(y.shape[-2:])
        hf = torch.fft.rfft2(_centre_at_origin(_kernel4(h), s), s=s)
        return torch.fft.irfft2(torch.fft.rfft2(y) * hf.conj(), s=s)
    H, W = y.shape[-2] + kh - 1, y.shape[-1] + kw - 1
    _check(torch.empty(*y.shape[:-2], H, W, device="meta"), h, mode)
    s = (_fast(H), _fast(W))
    yf = torch.fft.rfft2(_embed(y, kh - 1, kw - 1), s=s)
    return torch.fft.irfft2(yf * torch.fft.rfft2(_kernel4(h), s=s).conj(), s=s)[..., :H, :W]


def conv_adjoint_kernel(y: Tensor, x: Tensor, kernel_size: int | tuple[int, int], mode: str = "valid") -> Tensor:
    """A_x^T y: the adjoint with respect to the kernel, i.e. d<y, h * x>/dh, summed over channels: (B, K, K).

    Sum over the batch as well (``.sum(0)``) for a kernel shared by the batch.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    H, W = x.shape[-2:]
    if mode == "circular":
        s = (H, W)
        g = torch.fft.irfft2(torch.fft.rfft2(y) * torch.fft.rfft2(x).conj(), s=s).sum(1)
        # g[v] pairs y[i] with x[i - v]; kernel index u = v + c
        return torch.roll(g, shifts=(kh // 2, kw // 2), dims=(-2, -1))[..., :kh, :kw]
    if tuple(y.shape[-2:]) != (H - kh + 1, W - kw + 1):
        raise ValueError(f"y {tuple(y.shape[-2:])} is not the valid output of x {(H, W)} with a {kh}x{kw} kernel")
    s = (_fast(H), _fast(W))
    g = torch.fft.irfft2(torch.fft.rfft2(_embed(y, kh - 1, kw - 1), s=s) * torch.fft.rfft2(x, s=s).conj(), s=s)
    return g[..., :kh, :kw].sum(1)


def _embed(y: Tensor, top: int, left: int) -> Tensor:
    """Zero-pad y on the top/left by (top, left); the FFT length pads the rest."""
    return torch.nn.functional.pad(y, (left, 0, top, 0))


def _centre_at_origin(h4: Tensor, s: tuple[int, int]) -> Tensor:
    """Zero-pad a (.., K, K) kernel to size s and roll its centre c = K // 2 to index (0, 0)."""
    kh, kw = h4.shape[-2:]
    big = torch.nn.functional.pad(h4, (0, s[1] - kw, 0, s[0] - kh))
    return torch.roll(big, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))


# ---------------------------------------------------------------------------------------------------------------
# Same-size blur with an explicit boundary rule (for making test images; the inverse problem uses 'valid')
# ---------------------------------------------------------------------------------------------------------------


def blur_same(x: Tensor, h: Tensor, boundary: str = "reflect") -> Tensor:
    """h * x at the size of x: pad x by the kernel's reach with ``boundary`` ("reflect", "replicate",
    "circular" or "zeros"), then take the valid convolution. delta returns x unchanged."""
    kh, kw = h.shape[-2:]
    top, left = kh - 1 - kh // 2, kw - 1 - kw // 2
    pad = (left, kw - 1 - left, top, kh - 1 - top)
    mode = {"zeros": "constant"}.get(boundary, boundary)
    if mode not in ("reflect", "replicate", "circular", "constant"):
        raise ValueError(f"unknown boundary {boundary!r}")
    return conv(torch.nn.functional.pad(x, pad, mode=mode), h, "valid")
