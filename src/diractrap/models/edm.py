"""EDM's networks (Karras et al. 2022) in our own code: SongUNet (DDPM++ / NCSN++), DhariwalUNet (ADM), EDMPrecond.

The architectures are re-implemented from the facts of NVlabs/edm ``training/networks.py`` so that module,
parameter and buffer names reproduce EDM's state-dict keys exactly and a snapshot loads with ``strict=True``
(:mod:`diractrap.models.edm_pickle` reads the snapshot pickles without running their embedded code).

Conventions (all observed in the original code and checked by the golden fixtures):

- images on [-1, 1], noise level sigma in the same units, ``sigma`` of shape (B,);
- EDM preconditioning with sigma_data = 0.5: D(x, sigma) = c_skip x + c_out F(c_in x, c_noise), c_noise = ln(sigma)/4;
- attention: the ``qkv`` 1x1 convolution's output channels are interleaved per channel as (q, k, v); softmax in at
  least float32; SongUNet uses one head, ADM ``channels // 64`` heads;
- GroupNorm uses min(32, channels // 4) groups;
- the positional noise embedding is ordered [sin, cos] in SongUNet and [cos, sin] in DhariwalUNet;
- class labels enter the UNets as one-hot floats (EDMPrecond also accepts integer class indices).

Evaluation is always in float32 (``use_fp16`` is kept as an attribute for the record but ignored); ``.double()``
evaluates the whole network in float64 (tests only). :func:`freeze` puts a network into the evaluation state of the
denoiser protocol: float32, ``eval()``, parameters frozen. :class:`EDMPrecond` runs its forward pass with TF32 off
(:func:`diractrap.numerics.no_tf32`, scoped: the caller's flags are restored after each call).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..numerics import no_tf32

__all__ = [
    "Linear",
    "Conv2d",
    "GroupNorm",
    "UNetBlock",
    "PositionalEmbedding",
    "FourierEmbedding",
    "SongUNet",
    "DhariwalUNet",
    "EDMPrecond",
    "edm_coefficients",
    "freeze",
]


# ---------------------------------------------------------------------------------------------------------------
# Weight initialisation: EDM's four schemes, each scaled by fan-in / fan-out (matters only for training)
# ---------------------------------------------------------------------------------------------------------------


def _init_tensor(shape, mode: str, fan_in: int, fan_out: int) -> Tensor:
    """Random tensor of ``shape``: uniform on [-a, a] or normal, a set by the scheme (creates on the default device)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init_mode {mode!r}: use xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal")


# ---------------------------------------------------------------------------------------------------------------
# Layers: fully connected, convolution with FIR up/down-sampling, group normalisation
# ---------------------------------------------------------------------------------------------------------------


class Linear(nn.Module):
    """y = x W^T + b; keys ``weight`` (out, in) and ``bias`` (out,)."""

    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = nn.Parameter(_init_tensor([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(_init_tensor([out_features], **fans) * init_bias) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


def _fir_2d(resample_filter) -> Tensor:
    """Separable FIR filter f f^T / (sum f)^2 as a (1, 1, k, k) tensor ([1, 1]: box, [1, 3, 3, 1]: binomial)."""
    f = torch.as_tensor(resample_filter, dtype=torch.float32)
    return torch.outer(f, f)[None, None] / f.sum() ** 2


class Conv2d(nn.Module):
    """Square convolution with optional 2x FIR up- or down-sampling before it (or after it, when fused).

    ``kernel=0`` gives a pure resampler (no weight). The FIR filter is a persistent buffer ``resample_filter``
    only when ``up`` or ``down`` (as in EDM's state dicts). Up-sampling is a transposed depthwise convolution with
    4 f (so [1, 1] is nearest-neighbour); down-sampling a stride-2 depthwise convolution with f (box average).
    ``fused_resample`` (down only: NCSN++'s residual encoder) convolves first, then down-samples.
    """

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=(1, 1),
                 fused_resample=False, init_mode="kaiming_normal", init_weight=1, init_bias=0):
        if up and down:
            raise ValueError("Conv2d: choose up or down, not both")
        if fused_resample and up:
            raise ValueError("Conv2d: fused resampling is implemented for down-sampling only (the only use in EDM)")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = dict(mode=init_mode, fan_in=in_channels * kernel * kernel, fan_out=out_channels * kernel * kernel)
        if kernel:
            self.weight = nn.Parameter(_init_tensor([out_channels, in_channels, kernel, kernel], **fans) * init_weight)
        else:
            self.register_parameter("weight", None)
        if kernel and bias:
            self.bias = nn.Parameter(_init_tensor([out_channels], **fans) * init_bias)
        else:
            self.register_parameter("bias", None)
        if up or down:
            self.register_buffer("resample_filter", _fir_2d(resample_filter))
        else:
            self.resample_filter = None

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and self.down and w is not None:
            # convolve with the combined padding, then down-sample without padding
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile(self.out_channels, 1, 1, 1), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (4 * f).tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2,
                                       padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).view(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with min(num_groups, channels // min_channels_per_group) groups; keys weight, bias."""

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


# ---------------------------------------------------------------------------------------------------------------
# Self-attention over pixels: softmax(q^T k / sqrt(c)) in at least float32
# ---------------------------------------------------------------------------------------------------------------


def _attention(qkv: Tensor, num_heads: int) -> Tensor:
    """Multi-head attention from a (B, 3C, H, W) qkv map whose channels are interleaved (q, k, v) per channel.

    Channel 3i + j of ``qkv`` is component j (0: q, 1: k, 2: v) of channel i; heads take consecutive groups of
    C // num_heads channels. Returns (B, C, H, W).
    """
    B, C3, H, W = qkv.shape
    C = C3 // 3
    q, k, v = qkv.reshape(B * num_heads, C // num_heads, 3, H * W).unbind(2)  # each (B*heads, c, HW)
    work = torch.promote_types(q.dtype, torch.float32)  # the softmax never runs in half precision
    logits = torch.einsum("ncq,nck->nqk", q.to(work), (k / math.sqrt(k.shape[1])).to(work))
    w = logits.softmax(dim=2).to(q.dtype)
    return torch.einsum("nqk,nck->ncq", w, v).reshape(B, C, H, W)


# ---------------------------------------------------------------------------------------------------------------
# The U-Net block shared by DDPM++, NCSN++ and ADM: residual block, optional resampling and attention
# ---------------------------------------------------------------------------------------------------------------


class UNetBlock(nn.Module):
    """GroupNorm-SiLU-conv, noise-embedding modulation, GroupNorm-SiLU-dropout-conv, skip; then optional attention.

    x (B, in_channels, H, W), emb (B, emb_channels) -> (B, out_channels, H', W') with H' = 2H (``up``), H/2
    (``down``) or H. ``adaptive_scale`` (ADM): the embedding gives a scale and a shift applied after ``norm1``;
    otherwise (DDPM++) it is added before ``norm1``. Heads: ``num_heads``, else out_channels // channels_per_head
    (0 heads = no attention). Keys: norm0, conv0, affine, norm1, conv1, [skip], [norm2, qkv, proj].
    """

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0.0, skip_scale=1.0, eps=1e-5, resample_filter=(1, 1),
                 resample_proj=False, adaptive_scale=True, init=None, init_zero=None, init_attn=None):
        super().__init__()
        init = {} if init is None else dict(init)
        init_zero = dict(init_weight=0) if init_zero is None else dict(init_zero)
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = float(skip_scale)
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter,
                            **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            # a 1x1 projection when channels change (or resample_proj), else a bare resampler without weights
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1, **(init if init_attn is None else init_attn))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            x = (self.proj(_attention(self.qkv(self.norm2(x)), self.num_heads)) + x) * self.skip_scale
        return x


# ---------------------------------------------------------------------------------------------------------------
# Noise-level embeddings of c_noise: sinusoidal (DDPM++, ADM) and random Fourier features (NCSN++)
# ---------------------------------------------------------------------------------------------------------------


class PositionalEmbedding(nn.Module):
    """Sinusoids of c_noise at frequencies (1/max_positions)^(i/n), i < n = num_channels // 2: (B,) -> (B, 2n).

    ``endpoint=True`` divides by n - 1 (DDPM++) instead of n (ADM). Order [sin, cos] if ``sin_first`` (SongUNet),
    else [cos, sin] (DhariwalUNet). The frequencies are float32 constants whatever the evaluation dtype (as trained).
    """

    def __init__(self, num_channels, max_positions=10000, endpoint=False, sin_first=False):
        super().__init__()
        self.num_channels, self.max_positions = num_channels, max_positions
        self.endpoint, self.sin_first = endpoint, sin_first

    def forward(self, x: Tensor) -> Tensor:
        n = self.num_channels // 2
        freqs = torch.arange(n, dtype=torch.float32, device=x.device) / (n - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        phase = torch.outer(x, freqs.to(x.dtype))
        parts = [phase.sin(), phase.cos()] if self.sin_first else [phase.cos(), phase.sin()]
        return torch.cat(parts, dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise, frequencies ``freqs`` ~ N(0, scale^2) (a persistent buffer).

    (B,) -> (B, num_channels), order [sin, cos] if ``sin_first`` (SongUNet), else [cos, sin].
    """

    def __init__(self, num_channels, scale=16, sin_first=False):
        super().__init__()
        self.sin_first = sin_first
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        phase = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        parts = [phase.sin(), phase.cos()] if self.sin_first else [phase.cos(), phase.sin()]
        return torch.cat(parts, dim=1)


def _drop_labels(labels: Tensor, p: float, training: bool) -> Tensor:
    """Classifier-free-guidance label dropout: zero each row with probability p (training only)."""
    if not (training and p):
        return labels
    keep = torch.rand(labels.shape[0], 1, device=labels.device) >= p
    return labels * keep.to(labels.dtype)


# ---------------------------------------------------------------------------------------------------------------
# SongUNet: DDPM++ and NCSN++ (Song et al. 2021) as re-implemented by EDM
# ---------------------------------------------------------------------------------------------------------------


class SongUNet(nn.Module):
    """DDPM++ (defaults) or NCSN++ U-Net F(x, c_noise, class_labels): (B, in_channels, R, R) -> (B, out_channels, R, R).

    NCSN++ settings: ``embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
    resample_filter=[1, 3, 3, 1]``. EDM's FFHQ/AFHQv2-64 networks: model_channels 128, channel_mult [1, 2, 2, 2],
    num_blocks 4, attn_resolutions [16], dropout 0.05, augment_dim 9. ``class_labels`` (B, label_dim) one-hot
    floats (ignored when label_dim = 0); ``augment_labels`` (B, augment_dim) or None (no augmentation).
    """

    def __init__(
        self,
        img_resolution,  # image side at input and output
        in_channels,  # colour channels at input
        out_channels,  # colour channels at output
        label_dim=0,  # number of classes, 0 = unconditional
        augment_dim=0,  # augmentation-label size, 0 = none
        model_channels=128,  # base channel count
        channel_mult=(1, 2, 2, 2),  # channel multiplier per resolution
        channel_mult_emb=4,  # embedding size = model_channels * channel_mult_emb
        num_blocks=4,  # residual blocks per resolution
        attn_resolutions=(16,),  # resolutions with self-attention
        dropout=0.10,  # dropout probability inside the blocks
        label_dropout=0,  # classifier-free-guidance label dropout (training)
        embedding_type="positional",  # 'positional' (DDPM++) or 'fourier' (NCSN++)
        channel_mult_noise=1,  # noise-embedding size multiplier: 1 (DDPM++), 2 (NCSN++)
        encoder_type="standard",  # 'standard' (DDPM++), 'skip' or 'residual' (NCSN++)
        decoder_type="standard",  # 'standard' or 'skip'
        resample_filter=(1, 1),  # FIR filter: [1, 1] (DDPM++), [1, 3, 3, 1] (NCSN++)
    ):
        if embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be 'positional' or 'fourier', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be 'standard', 'skip' or 'residual', got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be 'standard' or 'skip', got {decoder_type!r}")
        super().__init__()
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.augment_dim, self.label_dropout = label_dim, augment_dim, label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = dict(init_mode="xavier_uniform")
        init_zero = dict(init_mode="xavier_uniform", init_weight=1e-5)
        init_attn = dict(init_mode="xavier_uniform", init_weight=math.sqrt(0.2))
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5),
                            eps=1e-6, resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                            init=init, init_zero=init_zero, init_attn=init_attn)

        # mapping network: noise (+ label, + augmentation) embedding -> emb_channels
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True, sin_first=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels, sin_first=True)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # encoder: '<res>x<res>_conv|_down|_block<i>' plus the auxiliary input branch of the skip/residual encoders
        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, kernel=0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, kernel=3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
        skips = [block.out_channels for name, block in self.enc.items() if "aux" not in name]

        # decoder: '<res>x<res>_in0/_in1' (lowest resolution) or '_up', then num_blocks + 1 blocks eating the skips
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block_kwargs)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        # mapping
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"this SongUNet is conditional on {self.label_dim} classes: pass class_labels")
            labels = _drop_labels(class_labels, self.label_dropout, self.training)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        # encoder; 'aux' modules carry the down-sampled input image beside the main path
        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        # decoder; the output is the sum of the (up-sampled) auxiliary output heads
        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


# ---------------------------------------------------------------------------------------------------------------
# DhariwalUNet: ADM (Dhariwal & Nichol 2021) as re-implemented by EDM
# ---------------------------------------------------------------------------------------------------------------


class DhariwalUNet(nn.Module):
    """ADM U-Net: F(x, c_noise, class_labels), x (B, in_channels, R, R) -> (B, out_channels, R, R).

    EDM's ImageNet-64 network: model_channels 192, channel_mult [1, 2, 3, 4], num_blocks 3, attn_resolutions
    [32, 16, 8], dropout 0.1, label_dim 1000. Attention blocks have out_channels // 64 heads (none below 64
    channels). ``class_labels`` (B, label_dim) one-hot floats (unscaled, unlike SongUNet).
    """

    def __init__(
        self,
        img_resolution,  # image side at input and output
        in_channels,  # colour channels at input
        out_channels,  # colour channels at output
        label_dim=0,  # number of classes, 0 = unconditional
        augment_dim=0,  # augmentation-label size, 0 = none
        model_channels=192,  # base channel count
        channel_mult=(1, 2, 3, 4),  # channel multiplier per resolution
        channel_mult_emb=4,  # embedding size = model_channels * channel_mult_emb
        num_blocks=3,  # residual blocks per resolution
        attn_resolutions=(32, 16, 8),  # resolutions with self-attention
        dropout=0.10,  # dropout probability inside the blocks
        label_dropout=0,  # classifier-free-guidance label dropout (training)
    ):
        super().__init__()
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        self.label_dim, self.augment_dim, self.label_dropout = label_dim, augment_dim, label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = dict(init_mode="kaiming_uniform", init_weight=math.sqrt(1 / 3), init_bias=math.sqrt(1 / 3))
        init_zero = dict(init_mode="kaiming_uniform", init_weight=0, init_bias=0)
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout, init=init,
                            init_zero=init_zero)

        # mapping network
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=math.sqrt(label_dim)) if label_dim else None)

        # encoder
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block_kwargs)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
        skips = [block.out_channels for block in self.enc.values()]

        # decoder
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block_kwargs)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None,
                augment_labels: Tensor | None = None) -> Tensor:
        # mapping: the label embedding is added after map_layer1, before the last SiLU
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError(f"this DhariwalUNet is conditional on {self.label_dim} classes: pass class_labels")
            emb = emb + self.map_label(_drop_labels(class_labels, self.label_dropout, self.training))
        emb = F.silu(emb)

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


# ---------------------------------------------------------------------------------------------------------------
# EDM preconditioning (Karras et al. 2022, Table 1): D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)
# ---------------------------------------------------------------------------------------------------------------


def edm_coefficients(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape, native units), in sigma's dtype."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


_UNETS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


class EDMPrecond(nn.Module):
    """An EDM denoiser: D(x, sigma, labels=None) on [-1, 1] around a SongUNet or DhariwalUNet (``self.model``).

    Follows :class:`diractrap.priors.Denoiser`: x (B, img_channels, R, R) on [-1, 1], sigma (B,) (or one value for
    the whole batch) in [-1, 1] units; the result has x's shape and dtype. The arithmetic runs in the dtype of the
    parameters: float32 (``use_fp16`` is recorded, never used), or float64 after ``.double()``.

    Labels of a conditional network (``label_dim > 0``): ``labels`` is (B,) int64 class indices or (B, label_dim)
    one-hot floats. Without labels the fixed ``class_label`` given at construction (or load) time is used; with
    neither, the call raises (EDM itself would silently feed an all-zero label the network never saw). For ImageNet-64
    the workflow passes the image's own class when the image set has labels, else a configured fixed class. Labels
    given to an unconditional network are ignored.

    ``sigma_min`` / ``sigma_max`` default to EDM's sampling range 0.002 / 80 (the original class defaults are 0
    and inf, which no solver can use). ``augment_labels`` (B, augment_dim) is for training only: None = no
    augmentation, which is how EDM samples.
    """

    data_range = (-1.0, 1.0)

    def __init__(
        self,
        img_resolution,  # image side
        img_channels,  # colour channels
        label_dim=0,  # number of classes, 0 = unconditional
        use_fp16=False,  # recorded from the snapshot; evaluation is always float32
        sigma_min=0.002,  # smallest noise level used (EDM's sampler)
        sigma_max=80.0,  # largest noise level used (EDM's sampler)
        sigma_data=0.5,  # standard deviation of the training data
        model_type="DhariwalUNet",  # 'SongUNet' or 'DhariwalUNet' (EDM's default)
        *,
        class_label: int | None = None,  # fixed class used when a conditional net is called without labels
        **model_kwargs,  # arguments of the UNet
    ):
        if model_type not in _UNETS:
            raise ValueError(f"model_type must be one of {sorted(_UNETS)}, got {model_type!r}")
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = bool(use_fp16)
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.model_type = model_type
        self.init_kwargs = dict(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim,
                                use_fp16=use_fp16, sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data,
                                model_type=model_type, **model_kwargs)
        self.model = _UNETS[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                        out_channels=img_channels, label_dim=label_dim, **model_kwargs)
        self.class_label = None
        if class_label is not None:
            self.set_class_label(class_label)
        self.info = {"architecture": f"EDMPrecond/{model_type}", "init_kwargs": dict(self.init_kwargs)}

    def set_class_label(self, class_label: int | None) -> None:
        """Fix the class used when a conditional network is called without labels (None: labels required)."""
        if class_label is None:
            self.class_label = None
            return
        if not self.label_dim:
            raise ValueError("class_label given for an unconditional network (label_dim = 0)")
        if not 0 <= int(class_label) < self.label_dim:
            raise ValueError(f"class_label must be in [0, {self.label_dim}), got {class_label}")
        self.class_label = int(class_label)

    def one_hot_labels(self, labels: Tensor | None, batch: int, dtype, device) -> Tensor | None:
        """(B, label_dim) one-hot labels from class indices, one-hot rows, or the fixed class; None if unconditional."""
        if not self.label_dim:
            return None
        if labels is None:
            if self.class_label is None:
                raise ValueError(
                    f"this EDM network is class-conditional ({self.label_dim} classes): pass labels= as (B,) class "
                    "indices or (B, label_dim) one-hot, or load it with class_label=<index> to fix one class")
            labels = torch.full((batch,), self.class_label, dtype=torch.int64, device=device)
        labels = torch.as_tensor(labels, device=device)
        if not labels.is_floating_point():
            labels = labels.reshape(-1)
            if ((labels < 0) | (labels >= self.label_dim)).any():
                raise ValueError(f"class indices must lie in [0, {self.label_dim}), got {labels.tolist()}")
            labels = F.one_hot(labels, self.label_dim)
        if labels.ndim != 2 or labels.shape[1] != self.label_dim:
            raise ValueError(f"float labels must be one-hot of shape (B, {self.label_dim}), got {tuple(labels.shape)}")
        if labels.shape[0] not in (1, batch):
            raise ValueError(f"labels for {labels.shape[0]} images, but the batch has {batch}")
        return labels.to(dtype).expand(batch, -1)

    def forward(self, x: Tensor, sigma, labels: Tensor | None = None, augment_labels: Tensor | None = None) -> Tensor:
        dtype = self.model.map_layer0.weight.dtype  # float32, or float64 after .double()
        B = x.shape[0]
        x_in = x.to(dtype)
        sigma = torch.as_tensor(sigma, dtype=dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(B)
        if sigma.shape[0] != B:
            raise ValueError(f"sigma must have one value per image ({B}) or one in all, got shape {tuple(sigma.shape)}")
        class_labels = self.one_hot_labels(labels, B, dtype, x.device)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma.reshape(-1, 1, 1, 1), self.sigma_data)
        with no_tf32():
            F_x = self.model(c_in * x_in, c_noise.flatten(), class_labels, augment_labels)
        return (c_skip * x_in + c_out * F_x).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# The evaluation state of the denoiser protocol
# ---------------------------------------------------------------------------------------------------------------


def freeze(net: nn.Module, device="cpu") -> nn.Module:
    """Float32, eval mode, parameters frozen (gradients flow to the input only), moved to ``device``."""
    return net.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
