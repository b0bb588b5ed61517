"""The x domain of Algorithm 1: the sharp image of a blurry photo of any size and mode, on what the prior accepts.

A blurry image y (B, C, h, w) and a K x K kernel give a sharp image x of (h + K - 1, w + K - 1) pixels (the valid
model of :mod:`diractrap.deconv`); x starts from y extended by the kernel's reach (:func:`extend`) or from the
blurry image at the size of x. A network accepts only some sides (a U-Net that halves the image d times needs sides
divisible by 2^d: :func:`diractrap.checks.model_geometry`) and some channels; a photo has whatever it has. So the
deconvolution works on x', x extended to the next sides the prior accepts, and the data term keeps x's own domain:

    Ly(x', h) = 1/2 ||h * (C x') - y||^2 + sigma^2 q(x'),      C: the crop of x' to x, C^T: zero padding,

so the pixels added to x are seen by the prior only, and x = C x' is what comes back. Where the sides fit already,
C is the identity and nothing changes.

The extension reflects x about its border (``torch``'s "reflect": mirrored without repeating the edge row), split
evenly between the two sides (one more pixel at the bottom and right when the count is odd). Reflection continues
the image's edges and textures across the border, so the network sees a natural image everywhere; replicated edge
pixels would add flat streaks, and zeros a dark frame, that no training image has, and the prior would pull on them.

Channels (``x_domain``): a grey y (one channel) for a prior that takes three is replicated into each channel (each
channel sees the grey observation; the data term counts it once per channel, as for a colour photo whose channels
all equal the grey one), and x comes back as the mean of its channels, grey like y: the mean never increases the
data term, since each channel is compared with the same y. One channel more than the prior takes (RGBA, grey with
alpha) is an alpha channel: dropped, and x comes back without it.

Priors defined on one size only (the Gaussian priors of :mod:`diractrap.priors`) take x up to that size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from .checks import model_geometry

__all__ = ["Domain", "x_domain", "extend", "start_image"]


# ---------------------------------------------------------------------------------------------------------------
# x's size from y's: the valid model's geometry (the kernel's reach on each side)
# ---------------------------------------------------------------------------------------------------------------


def extend(y: Tensor, kernel_size: int, mode: str = "replicate") -> Tensor:
    """Extend y (B, C, h, w) to the size of x, (h + K - 1, w + K - 1), by padding the kernel's reach.

    ``mode``: "replicate" (repeat the edge pixels) or "reflect" (mirror without repeating the edge). The padding is
    K - 1 - K // 2 on the top/left and K // 2 on the bottom/right, so that extend(y) seen through the Dirac kernel
    (the valid centre crop) gives back y.
    """
    if mode not in ("replicate", "reflect"):
        raise ValueError(f"pad mode must be 'replicate' or 'reflect', got {mode!r}")
    K = kernel_size
    top, bottom = K - 1 - K // 2, K // 2
    if mode == "reflect" and max(top, bottom) >= min(y.shape[-2:]):
        raise ValueError(f"reflect padding by {max(top, bottom)} needs y larger than that, got {tuple(y.shape[-2:])}")
    return F.pad(y, (top, bottom, top, bottom), mode=mode)


def start_image(y: Tensor, kernel_size: int, pad: str, y_full: Tensor | None = None) -> Tensor:
    """Algorithm 1's start for x (and every reset), (B, C, h + K - 1, w + K - 1): y extended by ``pad``
    ("replicate", "reflect"), or for ``pad="observed"`` the blurry image at the size of x, ``y_full``."""
    if pad != "observed":
        return extend(y, kernel_size, pad)
    if y_full is None:
        raise ValueError("pad='observed' (the authors' preset) starts x from the blurry image at the size of x: pass "
                         "y_full (B, C, h + K - 1, w + K - 1), e.g. from problems.make_problem(..., full=True)")
    H, W = y.shape[-2] + kernel_size - 1, y.shape[-1] + kernel_size - 1
    if tuple(y_full.shape) != (*y.shape[:2], H, W):
        raise ValueError(f"y_full must be {(*y.shape[:2], H, W)} (y grown by K - 1), got {tuple(y_full.shape)}")
    return y_full.to(y)


# ---------------------------------------------------------------------------------------------------------------
# x' from x: the sides and channels the prior accepts, and back
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Domain:
    """How x (B, channels, *size) maps to the prior's x' (B, prior_channels, H + top + bottom, W + left + right).

    Built by :func:`x_domain`; sizes in pixels.
    """

    channels: int  # y's channels, which x comes back with
    prior_channels: int  # the channels the prior takes
    size: tuple[int, int]  # (H, W) of x: y's sides plus K - 1
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # (top, bottom, left, right): pixels added to x by reflection

    @property
    def network_size(self) -> tuple[int, int]:
        """(H', W'): the sides of x' that the prior sees."""
        top, bottom, left, right = self.pad
        return self.size[0] + top + bottom, self.size[1] + left + right

    def channels_in(self, t: Tensor) -> Tensor:
        """y or x (B, channels, ., .) in the prior's channels: grey replicated, an alpha channel dropped."""
        if self.channels == self.prior_channels:
            return t
        if self.channels == 1:
            return t.expand(-1, self.prior_channels, -1, -1)
        return t[:, : self.prior_channels]  # the last channel is alpha

    def channels_out(self, t: Tensor) -> Tensor:
        """x' (B, prior_channels, ., .) back in y's channels: the mean of the channels for a grey y."""
        if self.channels == 1 and self.prior_channels > 1:
            return t.mean(1, keepdim=True)
        return t

    def to_network(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> x' (B, C, H', W'), reflected about its border (repeatedly where x is thinner than the
        extension)."""
        top, bottom, left, right = self.pad
        while top or bottom or left or right:
            H, W = x.shape[-2:]
            if min(H, W) == 1:  # a side of one pixel has nothing to reflect about: repeat it
                return F.pad(x, (left, right, top, bottom), mode="replicate")
            step = (min(left, W - 1), min(right, W - 1), min(top, H - 1), min(bottom, H - 1))
            x = F.pad(x, step, mode="reflect")
            left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
        return x

    def crop(self, x: Tensor) -> Tensor:
        """C: x' (..., H', W') -> x (..., H, W), the pixels the data term sees."""
        top, _, left, _ = self.pad
        return x[..., top : top + self.size[0], left : left + self.size[1]]

    def crop_adjoint(self, r: Tensor) -> Tensor:
        """C^T: x-shaped (..., H, W) -> x'-shaped (..., H', W'), zero on the added pixels."""
        top, bottom, left, right = self.pad
        return F.pad(r, (left, right, top, bottom)) if any(self.pad) else r

    def record(self) -> dict:
        """What a result's settings record: x's and x''s shapes, the padding and the channel rule."""
        rule = ("as given" if self.channels == self.prior_channels else
                f"grey replicated into {self.prior_channels}, x averaged back" if self.channels == 1 else
                "alpha channel dropped")
        return {"x": [self.channels, *self.size], "network": [self.prior_channels, *self.network_size],
                "pad_top_bottom_left_right": list(self.pad), "extension": "reflect", "channels": rule}


def x_domain(denoiser, channels: int, size: tuple[int, int], *, kernel_size: int | None = None) -> Domain:
    """The :class:`Domain` of an x of ``channels`` and ``size`` (H, W) under ``denoiser``.

    Sides grow to the next multiple the network needs (or to the one size a Gaussian prior is defined on);
    channels follow the rules of the module docstring. A one-line ValueError names what no rule can map: a prior
    defined on a smaller size than x, or channels other than the prior's, 1, or the prior's plus alpha.
    ``kernel_size`` (K) only makes the errors name y's size.
    """
    g = model_geometry(denoiser)
    H, W = (int(s) for s in size)
    C = int(channels)
    P = C if g.channels is None else g.channels
    what = f"x is {H}x{W}" if kernel_size is None else \
        f"x (y extended by K - 1) is {H}x{W} (y {H - kernel_size + 1}x{W - kernel_size + 1}, K = {kernel_size})"
    if g.shape is not None:
        P, H2, W2 = g.shape
        if H > H2 or W > W2:
            fit = "" if kernel_size is None else f": y must be at most {H2 - kernel_size + 1}x{W2 - kernel_size + 1}"
            raise ValueError(f"{what}; this prior is defined on {'x'.join(map(str, g.shape))} images only{fit}")
    else:
        m = g.multiple
        H2, W2 = -(-H // m) * m, -(-W // m) * m
    if C != P and C != 1 and C != P + 1:
        raise ValueError(f"y has {C} channel(s); this prior takes {P} (or 1, a grey image, or {P + 1}, with alpha)")
    dh, dw = H2 - H, W2 - W
    return Domain(channels=C, prior_channels=P, size=(H, W), pad=(dh // 2, dh - dh // 2, dw // 2, dw - dw // 2))
