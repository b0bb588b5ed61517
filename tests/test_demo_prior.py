"""The embedded demo prior: it beats the Wiener filter, its weights are verified, training resumes exactly, and
EDM's Heun sampler integrates the probability-flow ODE of a Gaussian prior to its closed-form end point."""

import json
import math
import shutil

import pytest
import torch

from diractrap.data import demo_images
from diractrap.models.download import ChecksumError
from diractrap.models.registry import get_denoiser
from diractrap.priors import GaussianPrior, denoise_unit
from diractrap.train import (
    DEMO_ARCH,
    denoising_table,
    edm_sampler,
    load_demo_prior,
    sample_sigma,
    train_demo_prior,
)


@pytest.fixture(scope="module")
def demo():
    return get_denoiser("demo")


# ---------------------------------------------------------------------------------------------------------------
# The acceptance test: the learned prior denoises held-out crops >= 1 dB better than the fitted Gaussian's Wiener filter
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.2])
def test_demo_beats_wiener_by_1dB(demo, sigma):
    x = demo_images("test")  # held-out pictures only (split by picture)
    wiener = get_denoiser("gaussian-demo")  # stationary Gaussian fitted to the same training crops
    g = torch.Generator().manual_seed(0)
    y = x + sigma * torch.randn(x.shape, generator=g)  # sigma in [0, 1] units, the same noise for both
    with torch.no_grad():
        d_demo = torch.cat([denoise_unit(demo, y[i : i + 64], sigma) for i in range(0, len(y), 64)])
    d_wiener = denoise_unit(wiener, y, sigma)

    def mean_psnr(d):  # peak 1, per image, averaged
        return (-10 * torch.log10(((d.double() - x.double()) ** 2).flatten(1).mean(1))).mean().item()

    gain = mean_psnr(d_demo) - mean_psnr(d_wiener)
    assert gain >= 1.0, f"demo prior beats the Wiener filter by only {gain:.2f} dB at sigma = {sigma}"


# ---------------------------------------------------------------------------------------------------------------
# The shipped weights: protocol attributes, size, sha256 check
# ---------------------------------------------------------------------------------------------------------------


def test_demo_is_a_protocol_denoiser(demo):
    import hashlib

    assert tuple(demo.data_range) == (-1.0, 1.0) and demo.sigma_min == 0.002 and demo.sigma_max == 80.0
    assert not any(p.requires_grad for p in demo.parameters()) and not demo.training
    cfg_path = demo.info["config"]
    record = json.loads(open(cfg_path).read())
    weights = f"{cfg_path.rsplit('/', 1)[0]}/{record['weights']}"
    assert demo.info["sha256"] == record["sha256"] == hashlib.sha256(open(weights, 'rb').read()).hexdigest()  # independent of the library
    assert record["architecture"] == {**record["architecture"], "model_type": "SongUNet", "sigma_data": 0.5}
    assert 1e6 <= record["params"] <= 2e6 and record["params"] == sum(p.numel() for p in demo.parameters())
    assert shutil.os.path.getsize(weights) <= 10e6
    x = torch.rand(2, 3, 48, 48) * 2 - 1  # fully convolutional: larger crops work too
    assert demo(x, torch.full((2,), 0.5)).shape == x.shape


def test_tampered_weights_refused(demo, tmp_path):
    src = demo.info["config"]
    record = json.loads(open(src).read())
    shutil.copy(src, tmp_path / "demo_prior.json")
    w = bytearray(open(f"{src.rsplit('/', 1)[0]}/{record['weights']}", "rb").read())
    w[-1] ^= 1
    (tmp_path / record["weights"]).write_bytes(bytes(w))
    with pytest.raises(ChecksumError, match="sha256 .* instead of .*demo_prior.json records the expected hash"):
        load_demo_prior(tmp_path / "demo_prior.json")


# ---------------------------------------------------------------------------------------------------------------
# Training resumes exactly: 3 + 3 steps from the checkpoint equal 6 uninterrupted steps, bit for bit
# ---------------------------------------------------------------------------------------------------------------


def test_training_resumes_identically(tmp_path, one_thread):
    tiny = dict(DEMO_ARCH, img_resolution=16, model_channels=16, channel_mult=[1, 2], num_blocks=1)
    x = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # any images will do
    kw = dict(steps=6, batch_size=4, images=x, arch=tiny, checkpoint_every=2, log_every=2, lr_rampup=2,
              evaluate=False, progress=False)
    train_demo_prior(tmp_path / "a", **kw)
    assert train_demo_prior(tmp_path / "b", stop_after=3, **kw).name == "checkpoint.pt"  # "killed" after 3 steps
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 3
    train_demo_prior(tmp_path / "b", **kw)
    a = torch.load(tmp_path / "a" / "demo_prior.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "demo_prior.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same CPU kernels, same order: exact
    ca = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(ca["net"][k], cb["net"][k]) for k in ca["net"])
    assert ca["optimizer"]["state"][0]["exp_avg_sq"].equal(cb["optimizer"]["state"][0]["exp_avg_sq"])
    loss_a = (tmp_path / "a" / "loss.csv").read_text().splitlines()
    assert len(loss_a) == 4 and loss_a[0].startswith("step,loss")  # header + steps 2, 4, 6
    assert json.loads((tmp_path / "a" / "demo_prior.json").read_text())["training"]["steps_done"] == 6
    with pytest.raises(ValueError, match="other settings"):
        train_demo_prior(tmp_path / "b", **{**kw, "lr": 5e-4})  # a checkpoint never continues a different run
    with pytest.raises(ValueError, match="other settings"):
        train_demo_prior(tmp_path / "b", **{**kw, "P_uniform": 0.5})  # nor one with other noise levels
    old = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)  # written before the P_uniform option:
    del old["settings"]["P_uniform"]  # EDM's log-normal only, so it continues as P_uniform = 0
    torch.save(old, tmp_path / "b" / "checkpoint.pt")
    train_demo_prior(tmp_path / "b", **{**kw, "steps": 7})
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 7


# ---------------------------------------------------------------------------------------------------------------
# The training noise levels: EDM's log-normal, unchanged by default, and the log-uniform mixture, against their CDFs
# ---------------------------------------------------------------------------------------------------------------


def test_sample_sigma_default_is_edm_lognormal():
    g = torch.Generator().manual_seed(5)
    expected = torch.exp(torch.randn(1000, generator=g) * 1.2 - 1.2)  # EDM's draw, written out
    assert torch.equal(sample_sigma(1000, torch.Generator().manual_seed(5)), expected)


@pytest.mark.parametrize("p_uniform", [0.5, 1.0])
def test_sample_sigma_mixture_follows_its_cdf(p_uniform):
    from scipy import stats

    lo, hi = 0.002, 80.0
    s = sample_sigma(20000, torch.Generator().manual_seed(1), P_uniform=p_uniform, sigma_range=(lo, hi)).double()
    assert s.min() > 0 and (p_uniform < 1 or (s.min() >= lo and s.max() <= hi))

    def cdf(v):  # of log sigma: the mixture of N(-1.2, 1.2^2) and U(log lo, log hi)
        uni = ((v - math.log(lo)) / (math.log(hi) - math.log(lo))).clip(0, 1)
        return p_uniform * uni + (1 - p_uniform) * stats.norm.cdf(v, loc=-1.2, scale=1.2)

    # a fixed seed, so deterministic; drawn with a fraction of 0.45, these 20000 draws score p = 4e-4 against 0.5
    assert stats.kstest(s.log().numpy(), cdf).pvalue > 1e-3
    below = (s < 0.01).double().mean().item()  # sigma < 0.005 on [0, 1]: EDM's log-normal puts 0.2 % there
    exact = p_uniform * math.log(0.01 / lo) / math.log(hi / lo)
    exact += (1 - p_uniform) * stats.norm.cdf(math.log(0.01), -1.2, 1.2)
    assert abs(below - exact) < 4 * math.sqrt(exact * (1 - exact) / len(s))


# ---------------------------------------------------------------------------------------------------------------
# EDM's Heun sampler on a Gaussian prior: the probability-flow ODE has the closed-form flow
#   c(sigma) = sqrt((lam + sigma^2) / (lam + sigma_max^2)) c(sigma_max)   per Fourier coefficient
# ---------------------------------------------------------------------------------------------------------------


def test_heun_sampler_matches_gaussian_flow():
    from diractrap.rng import ItemGenerators

    prior = GaussianPrior.power_law((3, 8, 8), c=2e-4, mean=0.5, sigma_min=0.01, sigma_max=5.0)
    n, steps, seed = 4, 64, 3
    x = edm_sampler(prior, n, steps=steps, seed=seed, resolution=8, clip=False)
    # the same initial noise, mapped exactly

    z = ItemGenerators(seed, range(n), scheme="affine").randn((3, 8, 8), dtype=torch.float64)
    c = torch.fft.fft2(z * prior.sigma_max - prior.mean, norm="ortho")  # x(sigma_max) - m
    lam = prior.lam
    exact_min = torch.fft.ifft2(c * torch.sqrt((lam + prior.sigma_min**2) / (lam + prior.sigma_max**2)), norm="ortho").real
    # last step: Euler from sigma_min to 0 with d = (x - D(x)) / sigma_min, so x_0 = D(x(sigma_min), sigma_min)
    exact = prior(prior.mean + exact_min, torch.full((n,), prior.sigma_min, dtype=torch.float64))
    err = (x.double() - exact).abs().max().item()
    # Heun is 2nd order: with 64 rho-spaced steps the error is ~1e-4 of the unit range; float32 denoiser calls
    # add ~1e-6 (the sampler casts x to float32 for each network evaluation)
    assert err < 1e-3, err
    # second order: 64 / 18 = 3.6 times more steps divide the error by ~3.6^2 = 12.6 (first order would give 3.6)
    err18 = (edm_sampler(prior, n, steps=18, seed=seed, resolution=8, clip=False).double() - exact).abs().max().item()
    assert err18 / err > 8, (err18, err)
    assert (x - exact).abs().max() > 0  # really a numerical integration, not the closed form
    assert torch.equal(x[1:3], edm_sampler(prior, 3, steps=steps, seed=seed, resolution=8, clip=False, batch_size=1)[1:3])


def test_denoising_table_identity_is_input_psnr():
    x = demo_images("test")[:16]

    class Identity:
        data_range, sigma_min, sigma_max = (0.0, 1.0), 1e-3, 1.0

        def __call__(self, x, sigma, labels=None):
            return x

    table = denoising_table(Identity(), x, sigmas=(0.1,), seed=0, per_image=True)
    # identity denoiser: PSNR = -10 log10(sigma^2 mean n^2); mean n^2 over 3072 pixels is 1 +- 0.026 (chi^2 / N)
    assert table[0.1].shape == (16,)
    assert (table[0.1] - (-20 * math.log10(0.1))).abs().max() < 10 * math.log10(1 + 4 * 0.026)


def test_the_table_psnr_is_metrics_psnr_and_keeps_its_old_arithmetic():
    from diractrap.metrics import psnr

    g = torch.Generator().manual_seed(2)
    x, ref = torch.rand(16, 3, 8, 8, generator=g), torch.rand(16, 3, 8, 8, generator=g)
    mse = ((x.double() - ref.double()) ** 2).flatten(1).mean(1)
    assert torch.equal(psnr(x, ref), -10 * torch.log10(mse))  # the demo table's formula before metrics owned it
    torch.testing.assert_close(psnr(2 * x, 2 * ref, data_range=2.0), psnr(x, ref), rtol=1e-14, atol=0)
