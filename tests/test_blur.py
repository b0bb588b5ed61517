"""The FFT blur operators against direct convolution, their adjoints, and the Dirac kernel."""

import pytest
import torch
import torch.nn.functional as F

from diractrap.blur import blur_same, conv, conv_adjoint, conv_adjoint_kernel, valid_shape
from diractrap.kernels import dirac, kernel


def data(B=3, C=3, H=20, W=23, K=5, per_image=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    h = torch.rand((B, K, K) if per_image else (K, K), generator=g, dtype=dtype)
    return x, h


def rel(a, b):
    return abs(a - b) / max(abs(a), abs(b))


@pytest.mark.parametrize("mode", ["valid", "circular"])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("K", [5, 4])
def test_adjoints(mode, per_image, K):
    x, h = data(K=K, per_image=per_image)
    y = conv(x, h, mode)
    r = torch.randn_like(y)
    lhs = (y * r).sum().item()
    assert rel(lhs, (x * conv_adjoint(r, h, mode)).sum().item()) < 1e-10
    gk = conv_adjoint_kernel(r, x, K, mode)
    assert gk.shape == (3, K, K)
    hb = h if per_image else h.expand(3, K, K)
    assert rel(lhs, (hb * gk).sum().item()) < 1e-10
    # and the same numbers as autograd
    hh = h.clone().requires_grad_()
    xx = x.clone().requires_grad_()
    (conv(xx, hh, mode) * r).sum().backward()
    torch.testing.assert_close(xx.grad, conv_adjoint(r, h, mode))
    torch.testing.assert_close(hh.grad, gk if per_image else gk.sum(0))


@pytest.mark.parametrize("K", [21, 4])
def test_fft_valid_equals_direct_conv2d(K):
    x, h = data(B=2, C=3, H=64, W=48, K=K, dtype=torch.float32)
    y = conv(x, h, "valid")
    assert y.shape[-2:] == valid_shape(x.shape, K) == (64 - K + 1, 48 - K + 1)
    # torch's conv2d is a correlation: convolution = conv2d with the flipped kernel
    direct = torch.cat([F.conv2d(x[i : i + 1].transpose(0, 1), h[i].flip(-2, -1)[None, None]).transpose(0, 1) for i in range(2)])
    torch.testing.assert_close(y, direct, rtol=0, atol=1e-5 * direct.abs().max().item())


def test_circular_is_wrapped_convolution():
    x, h = data(B=1, C=1, H=12, W=12, K=5, per_image=False)
    ref = torch.zeros_like(x)
    c = 2
    for i in range(12):
        for j in range(12):
            for a in range(5):
                for b in range(5):
                    ref[0, 0, i, j] += h[a, b] * x[0, 0, (i - a + c) % 12, (j - b + c) % 12]
    torch.testing.assert_close(conv(x, h, "circular"), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("K", [5, 21, 4])
def test_dirac_is_identity(K):
    x, _ = data(H=30, W=31)
    d = dirac(K, dtype=torch.float64)
    top = K - 1 - K // 2
    torch.testing.assert_close(conv(x, d, "valid"), x[..., top : top + 30 - K + 1, top : top + 31 - K + 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(conv(x, d, "circular"), x, rtol=0, atol=1e-12)
    for boundary in ("reflect", "replicate", "circular", "zeros"):
        torch.testing.assert_close(blur_same(x, d, boundary), x, rtol=0, atol=1e-12)


def test_valid_is_the_crop_of_circular():
    x, h = data(K=5)
    torch.testing.assert_close(conv(x, h, "circular")[..., 2:-2, 2:-2], conv(x, h, "valid"))


def test_blur_preserves_mean_of_constant_images_and_errors():
    x = torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64)
    h = kernel("defocus", 3.0, 9, dtype=torch.float64)
    torch.testing.assert_close(conv(x, h), torch.full((1, 3, 8, 8), 0.3, dtype=torch.float64))
    with pytest.raises(ValueError, match="mode"):
        conv(x, h, "same")
    with pytest.raises(ValueError, match="larger than image"):
        conv(x[..., :5, :5], h)
    with pytest.raises(ValueError, match="kernels must be"):
        conv(x, h.expand(2, 9, 9))
