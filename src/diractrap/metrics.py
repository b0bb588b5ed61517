"""Quality of a blind deconvolution result: PSNR, SSIM and kernel error, up to the translation ambiguity.

Images (B, C, H, W) in [0, 1]; kernels (K, K) or (B, K, K) on the simplex. Every function returns per-item (B,)
tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import second_moment

__all__ = ["psnr", "ssim", "metrics"]


# ---------------------------------------------------------------------------------------------------------------
# Metrics: PSNR, SSIM (Wang et al. 2004), kernel error, after the best integer shift (Levin et al. 2009)
# ---------------------------------------------------------------------------------------------------------------


def psnr(a: Tensor, b: Tensor, data_range: float = 1.0) -> Tensor:
    """10 log10(R^2 / MSE) per item (B,), in float64.

    Computed as -10 log10(MSE / R^2): for R = 1 this is bit for bit the demo prior's denoising table as it was
    first computed (its numbers are compared across versions)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse / data_range**2)


def _gauss_window(sigma: float, truncate: float, dtype, device) -> Tensor:
    r = int(truncate * sigma + 0.5)  # scipy.ndimage.gaussian_filter's radius, as skimage uses it
    u = torch.arange(-r, r + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (u / sigma) ** 2)
    return w / w.sum()


def ssim(
    a: Tensor, b: Tensor, data_range: float = 1.0, *, sigma: float = 1.5, K1: float = 0.01, K2: float = 0.03
) -> Tensor:  # Wang et al. 2004: window std 1.5, K1 = 0.01, K2 = 0.03
    """Mean SSIM per item (B,) of (B, C, H, W) images (Wang et al. 2004: Gaussian window of std 1.5 truncated at
    3.5 std, i.e. 11 x 11, K1 = 0.01, K2 = 0.03, population covariances), averaged over the positions where the
    window fits and over the channels: skimage's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=R) per channel, then the mean."""
    a, b = a.double(), b.double()
    w = _gauss_window(sigma, 3.5, a.dtype, a.device)
    B, C, H, W = a.shape
    n = w.numel()
    if min(H, W) < n:
        raise ValueError(f"SSIM needs images of at least {n}x{n}, got {H}x{W}")

    def filt(t):
        t = t.reshape(B * C, 1, H, W)
        t = F.conv2d(t, w.view(1, 1, -1, 1))
        return F.conv2d(t, w.view(1, 1, 1, -1)).reshape(B, C, H - n + 1, W - n + 1)

    ma, mb = filt(a), filt(b)
    va, vb, cab = filt(a * a) - ma**2, filt(b * b) - mb**2, filt(a * b) - ma * mb
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    return s.mean((-2, -1)).mean(1)


def _shift_kernel(h: Tensor, dr: int, dc: int) -> Tensor:
    """h'[u] = h[u - (dr, dc)], zero-filled: (K, K) -> (K, K)."""
    K = h.shape[-1]
    out = torch.zeros_like(h)
    r0, r1 = max(0, dr), min(K, K + dr)
    c0, c1 = max(0, dc), min(K, K + dc)
    out[r0:r1, c0:c1] = h[r0 - dr : r1 - dr, c0 - dc : c1 - dc]
    return out


def metrics(
    x_hat: Tensor,
    h_hat: Tensor,
    x_true: Tensor,
    h_true: Tensor,
    *,
    crop: int | None = None,
    max_shift: int | None = None,
    data_range: float = 1.0,
) -> dict[str, Tensor]:
    """Quality of (x_hat, h_hat) against (x_true, h_true), up to the translation ambiguity of blind deblurring.

    Levin et al.'s protocol with integer shifts: for every shift s with |s_r|, |s_c| <= max_shift, compare
    x_hat[i + s] with x_true[i] on the image cropped by ``crop`` pixels on each side; keep the s of least MSE.
    x_hat is clipped to [0, 1] first. The kernel is compared after the same translation: if x_hat[i + s] = x[i]
    then h_hat[u - s] = h[u] gives the same blurry image, so ``kernel_error`` = ||h_hat[. - s] - h_true||_2.
    Defaults: crop = K // 2 (the border of x that y only sees partially), max_shift = K // 4 (at most crop).

    Returns (B,) tensors: psnr, ssim (on the same shifted crop; NaN when it is under 11 x 11), mse, kernel_error,
    kernel_error_rel
    (/ ||h_true||), dirac_distance = min_s ||h_hat - delta_s|| (small when h_hat is near a Dirac), spread
    (second moment of h_hat, px^2), shift_row, shift_col.
    """
    K = h_hat.shape[-1]
    crop = K // 2 if crop is None else int(crop)
    max_shift = min(K // 4, crop) if max_shift is None else int(max_shift)
    if max_shift > crop:
        raise ValueError(f"max_shift ({max_shift}) must not exceed crop ({crop})")
    B, C, H, W = x_true.shape
    xh = x_hat.double().clamp(0, 1)
    xt = x_true.double()
    ref = xt[..., crop : H - crop, crop : W - crop]
    best = torch.full((B,), float("inf"), dtype=torch.float64, device=xt.device)
    shifts = torch.zeros(B, 2, dtype=torch.long)
    for dr in range(-max_shift, max_shift + 1):
        for dc in range(-max_shift, max_shift + 1):
            cand = xh[..., crop + dr : H - crop + dr, crop + dc : W - crop + dc]
            mse = (cand - ref).pow(2).flatten(1).mean(1)
            better = mse < best
            best = torch.where(better, mse, best)
            shifts[better.cpu()] = torch.tensor([dr, dc])
    sh = shifts.tolist()
    aligned = torch.stack([xh[i, :, crop + r : H - crop + r, crop + c : W - crop + c] for i, (r, c) in enumerate(sh)])
    hh = h_hat.double().expand(B, K, K)
    ht = h_true.double().expand(B, K, K)
    hs = torch.stack([_shift_kernel(hh[i], r, c) for i, (r, c) in enumerate(sh)])
    kerr = (hs - ht).flatten(1).norm(dim=1)
    sq = hh.flatten(1).pow(2).sum(1)
    return {
        "psnr": 10 * torch.log10(data_range**2 / best),
        "ssim": ssim(aligned, ref, data_range) if min(ref.shape[-2:]) >= 11 else torch.full_like(best, float("nan")),
        "mse": best,
        "kernel_error": kerr,
        "kernel_error_rel": kerr / ht.flatten(1).norm(dim=1),
        "dirac_distance": torch.sqrt((sq - 2 * hh.flatten(1).amax(1) + 1).clamp_min(0)),
        "spread": second_moment(hh),
        "shift_row": shifts[:, 0],
        "shift_col": shifts[:, 1],
    }


