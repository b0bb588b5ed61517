"""Song et al.'s NCSN++ (score_sde, VE SDE) in plain PyTorch, and its denoiser wrapper.

The FFHQ-256 prior of the paper is score_sde's ``ncsnpp`` network trained with the continuous VE SDE
(``configs/ve/ffhq_256_ncsnpp_continuous.py``). This module rebuilds that architecture from its description so the
original checkpoint loads strictly into code we own: same module tree, same state-dict keys and shapes, same
parameter order (the EMA shadow list depends on it), and FIR resampling written with ``torch.nn.functional`` (no
CUDA extension).

Conventions of the original network, kept here:
- input ``x`` in [0, 1] (``centered=False``: the network maps it to 2x - 1 itself); ``time_cond`` is the noise
  level sigma in [0, 1] units for the Fourier embedding (of log sigma), or a timestep index for the positional one;
- with ``scale_by_sigma`` the output is divided by sigma: it is the score of the sigma-marginal, not a denoised image.

:class:`NCSNppDenoiser` turns it into a denoiser of the project protocol: D(x, sigma) = x + sigma^2 * score(x, sigma)
on [0, 1] with sigma_min 0.01, sigma_max 348 (Tweedie; arXiv:2508.02923, Section 2).

Sections: the configuration; FIR up/down-sampling (StyleGAN2's upfirdn2d); layers; the U-Net; the denoiser wrapper.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..numerics import no_tf32

__all__ = [
    "NCSNppConfig",
    "NCSNpp",
    "NCSNppDenoiser",
    "build_ncsnpp",
    "upfirdn2d",
    "upsample_2d",
    "downsample_2d",
    "upsample_conv_2d",
    "conv_downsample_2d",
]


# ---------------------------------------------------------------------------------------------------------------
# The configuration: score_sde's `model` section plus the data fields the network reads (FFHQ-256 defaults)
# ---------------------------------------------------------------------------------------------------------------

# score_sde config fields that only matter for training or data loading: accepted and ignored
_IGNORED_FIELDS = {
    "ema_rate", "beta_min", "beta_max", "name", "dataset", "random_flip", "uniform_dequantization",
    "tfrecords_path", "normalization", "conv_size", "attention_type",
}
# fields with one value only in score_sde's NCSN++ (another value would need code the original does not have)
_FIXED_FIELDS = {"name": "ncsnpp", "normalization": "GroupNorm", "conv_size": 3, "attention_type": "ddpm"}


@dataclass(frozen=True)
class NCSNppConfig:
    """Architecture of score_sde's NCSN++; defaults are the FFHQ-256 VE model (``checkpoint_48.pth``)."""

    image_size: int = 256
    num_channels: int = 3
    centered: bool = False  # False: inputs in [0, 1], mapped to 2x - 1 inside the network
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0  # only active in training mode; the loaded network is always in eval mode
    resamp_with_conv: bool = True
    conditional: bool = True  # noise-conditional (the time embedding reaches every residual block)
    fir: bool = True
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"  # "biggan" or "ddpm"
    progressive: str = "output_skip"  # "none", "output_skip" or "residual"
    progressive_input: str = "input_skip"  # "none", "input_skip" or "residual"
    progressive_combine: str = "sum"  # "sum" or "cat"
    embedding_type: str = "fourier"  # "fourier" (of log sigma) or "positional" (of a timestep index)
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    nonlinearity: str = "swish"
    scale_by_sigma: bool = True  # divide the output by sigma: the network returns the score
    sigma_min: float = 0.01  # VE SDE noise range, [0, 1] units
    sigma_max: float = 348.0
    num_scales: int = 2000  # length of the `sigmas` buffer stored in the checkpoint

    def __post_init__(self):
        for name in ("ch_mult", "attn_resolutions", "fir_kernel"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        choices = {
            "resblock_type": ("biggan", "ddpm"),
            "progressive": ("none", "output_skip", "residual"),
            "progressive_input": ("none", "input_skip", "residual"),
            "progressive_combine": ("sum", "cat"),
            "embedding_type": ("fourier", "positional"),
            "nonlinearity": tuple(_ACTIVATIONS),
        }
        for name, allowed in choices.items():
            value = str(getattr(self, name)).lower()
            if value not in allowed:
                raise ValueError(f"NCSN++ config: {name}={getattr(self, name)!r} is not one of {allowed}")
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, overrides: dict | None = None) -> "NCSNppConfig":
        """FFHQ-256 defaults updated by ``overrides``: a flat dict of fields, or score_sde's nested config.

        A nested config (keys ``model`` and ``data``) is flattened. Training-only fields (``ema_rate``,
        ``beta_min``...) are accepted and ignored; an unknown field is an error naming it.
        """
        overrides = dict(overrides or {})
        if isinstance(overrides.get("model"), dict):  # score_sde's ConfigDict as nested dicts: keep data + model
            overrides = {**overrides.get("data", {}), **overrides["model"]}
        known = {f.name for f in fields(cls)}
        for name, value in _FIXED_FIELDS.items():
            if name in overrides and str(overrides[name]) != str(value):
                raise ValueError(f"NCSN++ config: {name}={overrides[name]!r} is not supported (only {value!r})")
        unknown = sorted(set(overrides) - known - _IGNORED_FIELDS)
        if unknown:
            raise ValueError(f"NCSN++ config: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in overrides.items() if k in known})

    def as_dict(self) -> dict:
        """A JSON-friendly dict (tuples as lists), as recorded in ``denoiser.info``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


_ACTIVATIONS = {
    "swish": nn.SiLU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "lrelu": lambda: nn.LeakyReLU(negative_slope=0.2),
}


# ---------------------------------------------------------------------------------------------------------------
# FIR up/down-sampling (StyleGAN2's upfirdn2d): zero insertion, padding, true convolution, decimation
# ---------------------------------------------------------------------------------------------------------------


def _fir_2d(k, gain: float, x: Tensor) -> Tensor:
    """The separable FIR kernel outer(k, k), normalised to sum to ``gain``, in float32 as the original builds it."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = torch.outer(k, k)
    k = k / k.sum()
    return (k * gain).to(device=x.device, dtype=x.dtype)


def upfirdn2d(x: Tensor, k: Tensor, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by ``up`` (zeros after each sample), pad (pad0 before, pad1 after), convolve, keep every ``down``-th.

    ``x`` (B, C, H, W); ``k`` (kh, kw), applied to each channel as a true convolution (the kernel is flipped).
    Output size: (H * up + pad0 + pad1 - kh) // down + 1, and the same along W. Negative pads crop.
    """
    B, C, H, W = x.shape
    if up > 1:
        z = x.new_zeros(B, C, H, up, W, up)
        z[:, :, :, 0, :, 0] = x
        x = z.reshape(B, C, H * up, W * up)
    p0, p1 = pad
    x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    if p0 < 0 or p1 < 0:
        h_end, w_end = x.shape[2] - max(-p1, 0), x.shape[3] - max(-p1, 0)
        x = x[:, :, max(-p0, 0) : h_end, max(-p0, 0) : w_end]
    w = k.flip(0, 1)[None, None].expand(C, 1, *k.shape)
    return F.conv2d(x, w, stride=down, groups=C)


def upsample_2d(x: Tensor, k=(1, 3, 3, 1), factor: int = 2) -> Tensor:
    """FIR upsampling by ``factor``: (B, C, H, W) -> (B, C, factor H, factor W); constants are preserved."""
    kk = _fir_2d(k, factor**2, x)
    p = kk.shape[0] - factor
    return upfirdn2d(x, kk, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: Tensor, k=(1, 3, 3, 1), factor: int = 2) -> Tensor:
    """FIR downsampling by ``factor``: (B, C, H, W) -> (B, C, H / factor, W / factor); constants are preserved."""
    kk = _fir_2d(k, 1.0, x)
    p = kk.shape[0] - factor
    return upfirdn2d(x, kk, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: Tensor, w: Tensor, k=(1, 3, 3, 1), factor: int = 2) -> Tensor:
    """FIR upsampling fused with a convolution by ``w`` (out, in, kh, kw), padding once (StyleGAN2).

    Away from a one-pixel border it equals ``conv2d(upsample_2d(x, k), w, padding=kh // 2)``; on the border the
    fused form sees the FIR tails that the two-step form crops. (score_sde_pytorch's torch port of this function
    indexes a tensor with a negative step and cannot run; this is the StyleGAN2 operation it ports.)
    """
    kh = w.shape[-1]
    kk = _fir_2d(k, factor**2, x)
    p = (kk.shape[0] - factor) - (kh - 1)
    wt = w.flip(-2, -1).transpose(0, 1)  # a transposed convolution by the flipped kernel is a zero-insertion conv
    x = F.conv_transpose2d(x, wt, stride=factor)
    return upfirdn2d(x, kk, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: Tensor, w: Tensor, k=(1, 3, 3, 1), factor: int = 2) -> Tensor:
    """A convolution by ``w`` fused with FIR downsampling, padding once (StyleGAN2).

    Away from a one-pixel border it equals ``downsample_2d(conv2d(x, w, padding=kh // 2), k)``.
    """
    kh = w.shape[-1]
    kk = _fir_2d(k, 1.0, x)
    p = (kk.shape[0] - factor) + (kh - 1)
    x = upfirdn2d(x, kk, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=factor)


def _naive_upsample_2d(x: Tensor, factor: int = 2) -> Tensor:
    return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def _naive_downsample_2d(x: Tensor, factor: int = 2) -> Tensor:
    return F.avg_pool2d(x, factor)


# ---------------------------------------------------------------------------------------------------------------
# Layers (names and registration order as in score_sde's layers.py / layerspp.py: they fix the state-dict keys
# and the order of the EMA shadow parameters)
# ---------------------------------------------------------------------------------------------------------------


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)


def _conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1)


class GaussianFourierProjection(nn.Module):
    """[sin(2 pi W s), cos(2 pi W s)] of a scalar s per item (s = log sigma); W is fixed (not trained)."""

    def __init__(self, embedding_size: int, scale: float = 16.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, s: Tensor) -> Tensor:
        # same float32 evaluation order as the original: ((s W) 2) pi -- the phase reaches ~600 rad
        proj = s[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class NIN(nn.Module):
    """A per-pixel linear map over channels (a 1x1 convolution stored as W (in, out) and b (out))."""

    def __init__(self, in_dim: int, num_units: int):
        super().__init__()
        self.W = nn.Parameter(torch.randn(in_dim, num_units) / math.sqrt(in_dim))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bchw,co->bohw", x, self.W) + self.b[None, :, None, None]


class Combine(nn.Module):
    """Merge the input pyramid into the main branch: 1x1 conv of the pyramid, then sum or concatenation."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        self.Conv_0 = _conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class AttnBlockpp(nn.Module):
    """Single-head self-attention over pixels (q, k, v by NIN layers), residual, optionally rescaled by 1/sqrt 2."""

    def __init__(self, channels: int, skip_rescale: bool = False):
        super().__init__()
        self.GroupNorm_0 = _group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h).flatten(2), self.NIN_1(h).flatten(2), self.NIN_2(h).flatten(2)  # (B, C, HW)
        w = torch.softmax(torch.bmm(q.transpose(1, 2), k) * (int(C) ** (-0.5)), dim=-1)  # (B, HW_query, HW_key)
        h = torch.bmm(v, w.transpose(1, 2)).reshape(B, C, H, W)
        h = self.NIN_3(h)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class FIRConv2d(nn.Module):
    """A 3x3 convolution fused with FIR up- or down-sampling (score_sde's ``up_or_down_sampling.Conv2d``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, *, up=False, down=False, resample_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel) / math.sqrt(in_ch * kernel * kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up, self.down, self.resample_kernel = up, down, tuple(resample_kernel)

    def forward(self, x: Tensor) -> Tensor:
        if self.up:
            x = upsample_conv_2d(x, self.weight, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, self.weight, k=self.resample_kernel)
        else:
            x = F.conv2d(x, self.weight, padding=self.weight.shape[-1] // 2)
        return x + self.bias.reshape(1, -1, 1, 1)


class Upsample(nn.Module):
    """x2 upsampling: nearest or FIR, with or without a convolution."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv:
            if fir:
                self.Conv2d_0 = FIRConv2d(in_ch, out_ch, up=True, resample_kernel=fir_kernel)
            else:
                self.Conv_0 = _conv3x3(in_ch, out_ch)
        self.with_conv, self.fir, self.fir_kernel = with_conv, fir, tuple(fir_kernel)

    def forward(self, x: Tensor) -> Tensor:
        if not self.fir:
            h = F.interpolate(x, scale_factor=2, mode="nearest")
            return self.Conv_0(h) if self.with_conv else h
        return self.Conv2d_0(x) if self.with_conv else upsample_2d(x, self.fir_kernel)


class Downsample(nn.Module):
    """/2 downsampling: average pooling or FIR, with or without a convolution."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv:
            if fir:
                self.Conv2d_0 = FIRConv2d(in_ch, out_ch, down=True, resample_kernel=fir_kernel)
            else:
                self.Conv_0 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=2, padding=0)
        self.with_conv, self.fir, self.fir_kernel = with_conv, fir, tuple(fir_kernel)

    def forward(self, x: Tensor) -> Tensor:
        if not self.fir:
            x = F.pad(x, (0, 1, 0, 1))  # TensorFlow's 'SAME' padding for a stride-2 window
            return self.Conv_0(x) if self.with_conv else F.avg_pool2d(x, 2, stride=2)
        return self.Conv2d_0(x) if self.with_conv else downsample_2d(x, self.fir_kernel)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block: GN-act-conv, + time embedding, GN-act-dropout-conv, shortcut (NIN or 3x3 conv)."""

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1, skip_rescale=False):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = _group_norm(in_ch)
        self.Conv_0 = _conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = _group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv3x3(out_ch, out_ch)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = _conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.act, self.out_ch, self.skip_rescale, self.conv_shortcut = act, out_ch, skip_rescale, conv_shortcut

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if x.shape[1] != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN residual block: resampling (FIR or naive) inside the block, 1x1 conv shortcut when shapes change."""

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, up=False, down=False, dropout=0.1, fir=False,
                 fir_kernel=(1, 3, 3, 1), skip_rescale=True):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = _group_norm(in_ch)
        self.up, self.down, self.fir, self.fir_kernel = up, down, fir, tuple(fir_kernel)
        self.Conv_0 = _conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = _group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv3x3(out_ch, out_ch)
        if in_ch != out_ch or up or down:
            self.Conv_2 = _conv1x1(in_ch, out_ch)
        self.act, self.in_ch, self.out_ch, self.skip_rescale = act, in_ch, out_ch, skip_rescale

    def _resample(self, x: Tensor) -> Tensor:
        if self.up:
            return upsample_2d(x, self.fir_kernel) if self.fir else _naive_upsample_2d(x)
        if self.down:
            return downsample_2d(x, self.fir_kernel) if self.fir else _naive_downsample_2d(x)
        return x

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch or self.up or self.down:
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


def _timestep_embedding(t: Tensor, dim: int, max_positions: int = 10000) -> Tensor:
    """DDPM's sinusoidal embedding of a timestep index, [sin, cos] (score_sde's positional embedding)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(max_positions) / (half - 1)))
    arg = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


# ---------------------------------------------------------------------------------------------------------------
# The U-Net: one flat ModuleList `all_modules`, consumed in construction order by forward (as the original)
# ---------------------------------------------------------------------------------------------------------------


class NCSNpp(nn.Module):
    """score_sde's NCSN++: ``net(x, time_cond) -> score`` for x (B, C, H, W) in [0, 1] and time_cond (B,).

    ``time_cond`` is sigma ([0, 1] units) for the Fourier embedding, a timestep index into ``sigmas`` (index 0 is
    sigma_max) for the positional one. With ``scale_by_sigma`` the output is divided by sigma: it is the score.
    """

    def __init__(self, config: NCSNppConfig | None = None):
        super().__init__()
        self.config = cfg = config or NCSNppConfig()
        self.act = act = _ACTIVATIONS[cfg.nonlinearity]()
        sigmas = torch.exp(torch.linspace(math.log(cfg.sigma_max), math.log(cfg.sigma_min), cfg.num_scales,
                                          dtype=torch.float64))
        self.register_buffer("sigmas", sigmas)  # float64 in the checkpoint; used by the positional embedding only
        nf, ch_mult, nrb = cfg.nf, cfg.ch_mult, cfg.num_res_blocks
        self.num_resolutions = nres = len(ch_mult)
        self.all_resolutions = res = [cfg.image_size // 2**i for i in range(nres)]
        temb_dim = nf * 4
        C = cfg.num_channels

        def resnet(**kw):
            if cfg.resblock_type == "ddpm":
                return ResnetBlockDDPMpp(act, dropout=cfg.dropout, skip_rescale=cfg.skip_rescale, temb_dim=temb_dim, **kw)
            return ResnetBlockBigGANpp(act, dropout=cfg.dropout, fir=cfg.fir, fir_kernel=cfg.fir_kernel,
                                       skip_rescale=cfg.skip_rescale, temb_dim=temb_dim, **kw)

        def attn(ch):
            return AttnBlockpp(ch, skip_rescale=cfg.skip_rescale)

        resample = dict(fir=cfg.fir, fir_kernel=cfg.fir_kernel)
        modules: list[nn.Module] = []
        # noise-level embedding, then two dense layers (Eq. of the time embedding in DDPM)
        if cfg.embedding_type == "fourier":
            modules.append(GaussianFourierProjection(nf, scale=cfg.fourier_scale))
            embed_dim = 2 * nf
        else:
            embed_dim = nf
        if cfg.conditional:
            modules += [nn.Linear(embed_dim, temb_dim), nn.Linear(temb_dim, temb_dim)]

        # encoder
        input_pyramid_ch = C
        modules.append(_conv3x3(C, nf))
        hs_c = [nf]
        in_ch = nf
        for i_level in range(nres):
            for _ in range(nrb):
                out_ch = nf * ch_mult[i_level]
                modules.append(resnet(in_ch=in_ch, out_ch=out_ch))
                in_ch = out_ch
                if res[i_level] in cfg.attn_resolutions:
                    modules.append(attn(in_ch))
                hs_c.append(in_ch)
            if i_level != nres - 1:
                if cfg.resblock_type == "ddpm":
                    modules.append(Downsample(in_ch, with_conv=cfg.resamp_with_conv, **resample))
                else:
                    modules.append(resnet(down=True, in_ch=in_ch))
                if cfg.progressive_input == "input_skip":  # the pyramid's own resampling has no weights
                    modules.append(Combine(input_pyramid_ch, in_ch, method=cfg.progressive_combine))
                    if cfg.progressive_combine == "cat":
                        in_ch *= 2
                elif cfg.progressive_input == "residual":
                    modules.append(Downsample(input_pyramid_ch, in_ch, with_conv=True, **resample))
                    input_pyramid_ch = in_ch
                hs_c.append(in_ch)

        # middle
        in_ch = hs_c[-1]
        modules += [resnet(in_ch=in_ch), attn(in_ch), resnet(in_ch=in_ch)]

        # decoder, with the output pyramid
        pyramid_ch = 0
        for i_level in reversed(range(nres)):
            for _ in range(nrb + 1):
                out_ch = nf * ch_mult[i_level]
                modules.append(resnet(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
                in_ch = out_ch
            if res[i_level] in cfg.attn_resolutions:
                modules.append(attn(in_ch))
            if cfg.progressive != "none":
                if i_level == nres - 1:
                    if cfg.progressive == "output_skip":
                        modules += [_group_norm(in_ch), _conv3x3(in_ch, C)]
                        pyramid_ch = C
                    else:
                        modules += [_group_norm(in_ch), _conv3x3(in_ch, in_ch)]
                        pyramid_ch = in_ch
                elif cfg.progressive == "output_skip":  # the pyramid's own resampling has no weights
                    modules += [_group_norm(in_ch), _conv3x3(in_ch, C)]
                    pyramid_ch = C
                else:
                    modules.append(Upsample(pyramid_ch, in_ch, with_conv=True, **resample))
                    pyramid_ch = in_ch
            if i_level != 0:
                if cfg.resblock_type == "ddpm":
                    modules.append(Upsample(in_ch, with_conv=cfg.resamp_with_conv, **resample))
                else:
                    modules.append(resnet(in_ch=in_ch, up=True))
        assert not hs_c
        if cfg.progressive != "output_skip":
            modules += [_group_norm(in_ch), _conv3x3(in_ch, C)]
        self.all_modules = nn.ModuleList(modules)

    def _norm_act_conv(self, mods, h: Tensor) -> Tensor:
        norm, conv = next(mods), next(mods)  # GroupNorm, then 3x3 conv: the output heads
        return conv(self.act(norm(h)))

    def _pyramid_down(self, x: Tensor) -> Tensor:
        cfg = self.config
        return downsample_2d(x, cfg.fir_kernel) if cfg.fir else _naive_downsample_2d(x)

    def _pyramid_up(self, x: Tensor) -> Tensor:
        cfg = self.config
        return upsample_2d(x, cfg.fir_kernel) if cfg.fir else F.interpolate(x, scale_factor=2, mode="nearest")

    def forward(self, x: Tensor, time_cond: Tensor) -> Tensor:
        cfg, act = self.config, self.act
        mods = iter(self.all_modules)
        if cfg.embedding_type == "fourier":
            used_sigmas = time_cond
            temb = next(mods)(torch.log(used_sigmas))
        else:
            used_sigmas = self.sigmas[time_cond.long()].to(x.dtype)
            temb = _timestep_embedding(time_cond, cfg.nf).to(x.dtype)
        if cfg.conditional:
            temb = next(mods)(temb)
            temb = next(mods)(act(temb))
        else:
            temb = None
        if not cfg.centered:
            x = 2 * x - 1.0  # inputs in [0, 1] -> [-1, 1]

        # encoder
        input_pyramid = x if cfg.progressive_input != "none" else None
        hs = [next(mods)(x)]
        for i_level in range(self.num_resolutions):
            for _ in range(cfg.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if h.shape[-1] in cfg.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                h = next(mods)(hs[-1]) if cfg.resblock_type == "ddpm" else next(mods)(hs[-1], temb)
                if cfg.progressive_input == "input_skip":
                    input_pyramid = self._pyramid_down(input_pyramid)
                    h = next(mods)(input_pyramid, h)
                elif cfg.progressive_input == "residual":
                    input_pyramid = next(mods)(input_pyramid)
                    input_pyramid = (input_pyramid + h) / math.sqrt(2.0) if cfg.skip_rescale else input_pyramid + h
                    h = input_pyramid
                hs.append(h)

        # middle
        h = hs[-1]
        h = next(mods)(h, temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)

        # decoder
        pyramid = None
        for i_level in reversed(range(self.num_resolutions)):
            for _ in range(cfg.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in cfg.attn_resolutions:
                h = next(mods)(h)
            if cfg.progressive != "none":
                if i_level == self.num_resolutions - 1:
                    pyramid = self._norm_act_conv(mods, h)
                elif cfg.progressive == "output_skip":
                    pyramid = self._pyramid_up(pyramid)
                    pyramid = pyramid + self._norm_act_conv(mods, h)
                else:
                    pyramid = next(mods)(pyramid)
                    pyramid = (pyramid + h) / math.sqrt(2.0) if cfg.skip_rescale else pyramid + h
                    h = pyramid
            if i_level != 0:
                h = next(mods)(h) if cfg.resblock_type == "ddpm" else next(mods)(h, temb)
        assert not hs

        if cfg.progressive == "output_skip":
            h = pyramid
        else:
            h = self._norm_act_conv(mods, h)
        if next(mods, None) is not None:  # pragma: no cover - construction and forward out of step
            raise RuntimeError("NCSN++ forward did not use every module: construction and forward disagree")
        if cfg.scale_by_sigma:
            h = h / used_sigmas.reshape(-1, *[1] * (h.ndim - 1))
        return h


def build_ncsnpp(config: NCSNppConfig | dict | None = None, *, device="cpu") -> NCSNpp:
    """An NCSN++ with random weights (``device="meta"`` builds it without memory, for key/shape checks)."""
    if not isinstance(config, NCSNppConfig):
        config = NCSNppConfig.from_dict(config)
    with torch.device(device):
        return NCSNpp(config)


# ---------------------------------------------------------------------------------------------------------------
# The denoiser: D(x, sigma) = x + sigma^2 * score(x, sigma) on [0, 1] (Tweedie), float32, TF32 off
# ---------------------------------------------------------------------------------------------------------------


class NCSNppDenoiser(nn.Module):
    """A loaded NCSN++ as a denoiser of the project protocol (:mod:`diractrap.priors`).

    ``D(x, sigma)``: x (B, C, H, W) in [0, 1], sigma (B,) (or a scalar) in [0, 1] units; returns a tensor shaped
    and typed like x. The network runs in its own dtype (float32 unless built otherwise) with TF32 off; gradients
    flow to x only (parameters are frozen). The network is unconditional: ``labels`` is accepted and ignored, so
    callers can pass an image set's labels to every prior alike.
    """

    data_range = (0.0, 1.0)

    def __init__(self, net: NCSNpp, *, info: dict | None = None):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        cfg = net.config
        self.sigma_min, self.sigma_max = float(cfg.sigma_min), float(cfg.sigma_max)
        self.info = {"architecture": "ncsnpp", "config": cfg.as_dict(),
                     "n_params": sum(p.numel() for p in net.parameters()), **(info or {})}
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # always in evaluation mode (dropout off)

    def _time_cond(self, sigma: Tensor) -> Tensor:
        cfg = self.net.config
        if cfg.embedding_type == "fourier":
            return sigma
        # positional models were trained on integer indices into `sigmas` (index 0 = sigma_max): round as
        # score_sde's score_fn does for discrete VE models
        t = torch.log(cfg.sigma_max / sigma.double()) / math.log(cfg.sigma_max / cfg.sigma_min)
        return torch.round(t * (cfg.num_scales - 1)).long()

    def score(self, x: Tensor, sigma) -> Tensor:
        """The network's score of the sigma-marginal on [0, 1], in the network's dtype."""
        dtype = next(self.net.parameters()).dtype
        sigma = torch.as_tensor(sigma, device=x.device).to(dtype).reshape(-1).expand(x.shape[0])
        with no_tf32():  # TF32 would cost ~1e-3 relative in every matmul/conv
            return self.net(x.to(dtype), self._time_cond(sigma))

    def forward(self, x: Tensor, sigma, labels: Tensor | None = None) -> Tensor:
        s = torch.as_tensor(sigma, device=x.device).to(x.dtype).reshape(-1).expand(x.shape[0])
        return x + s.view(-1, 1, 1, 1) ** 2 * self.score(x, sigma).to(x.dtype)
