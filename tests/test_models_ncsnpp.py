"""Our NCSN++ against score_sde's own outputs (golden fixtures), the full-size key manifest, strict loading."""

import json
import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from conftest import GOLDEN
from diractrap.models.download import ChecksumError
from diractrap.models.loading import load_denoiser
from diractrap.models.ncsnpp import (
    NCSNppConfig,
    build_ncsnpp,
    conv_downsample_2d,
    downsample_2d,
    upsample_2d,
    upsample_conv_2d,
)
from diractrap.priors import check_denoiser

CKPT = "ncsnpp_ve_tiny_checkpoint.pth"


def loader_config() -> dict:
    return json.loads((GOLDEN / "ncsnpp_ve_tiny_loader_config.json").read_text())


def golden_io() -> dict:
    return torch.load(GOLDEN / "ncsnpp_ve_tiny_io.pt", weights_only=True)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest, over images, of max |a - ref| / max |ref| (scores span ~1e2 at sigma 0.01 and ~1e-3 at sigma 348)."""
    d = (a.double() - ref.double()).abs().flatten(1).amax(1)
    return (d / ref.double().abs().flatten(1).amax(1)).max().item()


# ---------------------------------------------------------------------------------------------------------------
# Golden outputs of score_sde's NCSN++ (tiny FFHQ-256-like network, every parameter perturbed)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["ema", "model"])
def test_tiny_scores_match_score_sde_float32(weights):
    io = golden_io()
    den = load_denoiser(GOLDEN / CKPT, weights=weights, config=loader_config())
    with torch.no_grad():
        score = den.score(io["x"], io["sigma"])
        D = den(io["x"], io["sigma"])
    # the same float32 operations in the same order as the original: equal up to a few ulps of float32 (measured: 0)
    assert rel_err(score, io[f"score_{weights}_float32"]) <= 1e-5
    # the denoiser is Tweedie's formula around that score
    s2 = io["sigma"].double().view(-1, 1, 1, 1) ** 2
    assert rel_err(D - io["x"], s2 * io[f"score_{weights}_float32"].double()) <= 1e-5


@pytest.mark.parametrize("weights", ["ema", "model"])
def test_tiny_scores_match_score_sde_float64(weights):
    io = golden_io()
    den = load_denoiser(GOLDEN / CKPT, weights=weights, config=loader_config(), dtype=torch.float64)
    with torch.no_grad():
        score = den.score(io["x"].double(), io["sigma"].double())
    # float64 rounding through ~30 layers, amplified by 1/sigma = 100: measured 3e-15; 1e-10 leaves a wide margin
    # while any structural difference (seen as >= 1e-7 in float32) would fail
    assert score.dtype == torch.float64
    assert rel_err(score, io[f"score_{weights}_float64"]) <= 1e-10


@pytest.mark.parametrize("weights", ["ema", "model"])
def test_tiny_unscaled_output_and_ema_differs(weights):
    """scale_by_sigma=False (a config override) returns the network output before its division by sigma."""
    io = golden_io()
    den = load_denoiser(GOLDEN / CKPT, weights=weights, config={**loader_config(), "scale_by_sigma": False})
    with torch.no_grad():
        out = den.score(io["x"], io["sigma"])
    assert rel_err(out, io[f"net_unscaled_{weights}_float32"]) <= 1e-5
    other = "model" if weights == "ema" else "ema"
    assert rel_err(io[f"score_{weights}_float32"], io[f"score_{other}_float32"]) > 1e-3  # the weight sets differ


def test_tiny_score_at_sde_time_labels():
    """score_sde's continuous VE score_fn feeds sigma(t) to the network: our score at those sigmas is its output."""
    io = golden_io()
    stats = json.loads((GOLDEN / "ncsnpp_ve_tiny_config.json").read_text())["stats"]
    den = load_denoiser(GOLDEN / CKPT, config=loader_config())
    with torch.no_grad():
        score = den.score(io["x"], io["labels_from_t"])
    # score_sde's score_fn itself differs from its direct network call by stats[...] (float32 sigma(t) rounding);
    # feeding t instead of sigma(t) would be off by O(1)
    assert (score - io["score_fn_ema_float32"]).abs().max() <= 2 * stats["max_abs_score_fn_minus_score_ema"]


def test_ema_order_is_trainable_parameter_order():
    meta = json.loads((GOLDEN / "ncsnpp_ve_tiny_config.json").read_text())
    net = build_ncsnpp(loader_config(), device="meta")
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert names == [n.removeprefix("module.") for n in meta["ema_shadow_param_names_in_order"]]
    assert [n for n, p in net.named_parameters() if not p.requires_grad] == meta["non_trainable_params"]
    assert sum(p.numel() for p in net.parameters()) == meta["n_params"]


def test_denoiser_protocol_and_info():
    meta = json.loads((GOLDEN / "ncsnpp_ve_tiny_config.json").read_text())
    den = load_denoiser(GOLDEN / CKPT, weights="model", config=loader_config(), name="tiny")
    check_denoiser(den)
    assert (den.sigma_min, den.sigma_max, den.data_range) == (0.01, 348.0, (0.0, 1.0))
    assert den.info["sha256"] == meta["files"][CKPT]["sha256"]  # recorded by the fixture's author
    assert den.info["weights"] == "model" and den.info["name"] == "tiny" and den.info["step"] == 5000
    json.dumps(den.info)  # recordable in a result table
    assert not den.training and all(not p.requires_grad for p in den.parameters())
    x = golden_io()["x"][:2].clone().requires_grad_()
    den(x, torch.tensor(0.5)).square().sum().backward()  # a scalar sigma is broadcast
    assert x.grad is not None and x.grad.abs().sum() > 0
    den.train()
    assert not den.training  # stays in evaluation mode


def test_nested_score_sde_config_is_accepted():
    meta = json.loads((GOLDEN / "ncsnpp_ve_tiny_config.json").read_text())
    assert NCSNppConfig.from_dict(meta["config"]) == NCSNppConfig.from_dict(loader_config())


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="nf_typo"):
        NCSNppConfig.from_dict({"nf_typo": 3})
    with pytest.raises(ValueError, match="progressive"):
        NCSNppConfig.from_dict({"progressive": "sideways"})
    with pytest.raises(ValueError, match="attention_type"):
        NCSNppConfig.from_dict({"attention_type": "multihead"})


# ---------------------------------------------------------------------------------------------------------------
# The full-size FFHQ-256 architecture, built on the meta device
# ---------------------------------------------------------------------------------------------------------------


def test_fullsize_ffhq256_keys_and_shapes():
    ref = json.loads((GOLDEN / "fullsize_manifests.json").read_text())["ncsnpp_ffhq256"]
    net = build_ncsnpp(device="meta")  # FFHQ-256 defaults
    ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert ours == [(e["key"], e["shape"]) for e in ref["manifest"]]
    assert sum(p.numel() for p in net.parameters()) == ref["n_params"] == 65_574_549


# ---------------------------------------------------------------------------------------------------------------
# Strict loading: every offender is named; nothing but tensors is unpickled
# ---------------------------------------------------------------------------------------------------------------


def _tiny_checkpoint():
    return torch.load(GOLDEN / CKPT, weights_only=True)


def test_missing_unexpected_and_mismatched_keys_are_listed(tmp_path):
    ck = _tiny_checkpoint()
    model = ck["model"]
    del model["module.all_modules.4.Conv_0.bias"]
    model["module.all_modules.99.extra"] = torch.zeros(3)
    model["module.all_modules.5.Conv_1.weight"] = torch.zeros(12, 12, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(ck, path)
    with pytest.raises(ValueError) as err:
        load_denoiser(path, weights="model", config=loader_config())
    msg = str(err.value)
    assert "all_modules.4.Conv_0.bias" in msg and "missing" in msg
    assert "all_modules.99.extra" in msg and "unexpected" in msg
    assert "all_modules.5.Conv_1.weight (file (12, 12, 5, 5), model (12, 12, 3, 3))" in msg


def test_wrong_architecture_lists_shape_mismatches():
    with pytest.raises(ValueError, match=r"shape mismatch.*all_modules\.0\.W.*config=dict"):
        load_denoiser(GOLDEN / CKPT, weights="model", config={**loader_config(), "nf": 16})


def test_ema_errors(tmp_path):
    ck = _tiny_checkpoint()
    ck["ema"]["shadow_params"] = ck["ema"]["shadow_params"][:-1]
    torch.save(ck, tmp_path / "short_ema.pth")
    with pytest.raises(ValueError, match="223 shadow parameters but the architecture has 224"):
        load_denoiser(tmp_path / "short_ema.pth", config=loader_config())
    ck = _tiny_checkpoint()
    ck["ema"]["shadow_params"][3] = torch.zeros(7)
    torch.save(ck, tmp_path / "bad_ema.pth")
    with pytest.raises(ValueError, match=r"#3 all_modules\.2\.bias \(EMA \(7,\), model \(48,\)\)"):
        load_denoiser(tmp_path / "bad_ema.pth", config=loader_config())
    ck = _tiny_checkpoint()
    del ck["ema"]
    torch.save(ck, tmp_path / "no_ema.pth")
    with pytest.raises(ValueError, match="weights='model'"):
        load_denoiser(tmp_path / "no_ema.pth", config=loader_config())
    assert load_denoiser(tmp_path / "no_ema.pth", weights="model", config=loader_config()).info["weights"] == "model"


def test_sha256_pin_is_checked():
    with pytest.raises(ChecksumError, match="instead of 00"):
        load_denoiser(GOLDEN / CKPT, config=loader_config(), sha256="00" * 32)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the bare pickle's protocol 4
def test_checkpoint_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:  # a torch-style zip would carry the same pickle; a bare pickle is the simplest form
        pickle.dump({"model": {"w": _Exploit(marker)}}, f)
    torch.save({"model": {"w": _Exploit(marker)}}, tmp_path / "evil_zip.pth")
    for p in (path, tmp_path / "evil_zip.pth"):
        with pytest.raises(ValueError, match="not a plain-tensor PyTorch checkpoint"):
            load_denoiser(p, weights="model")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# FIR resampling and the configurations the golden network does not cover
# ---------------------------------------------------------------------------------------------------------------


def test_fused_fir_convolutions_equal_two_step_forms_inside():
    """The fused (pad-once) forms equal FIR resampling then convolution away from a one-pixel border."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 12, 12, generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)
    up = upsample_conv_2d(x, w)
    assert up.shape == (2, 5, 24, 24)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], F.conv2d(upsample_2d(x), w, padding=1)[..., 1:-1, 1:-1])
    down = conv_downsample_2d(x, w)
    assert down.shape == (2, 5, 6, 6)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], downsample_2d(F.conv2d(x, w, padding=1))[..., 1:-1, 1:-1])


def test_fir_resampling_against_separable_filters():
    """[1,3,3,1] FIR: downsampling averages with weights k/8 per axis; upsampling then downsampling a constant."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 8, 8, generator=g, dtype=torch.float64)
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64) / 8
    # output pixel i of the downsampling sees inputs 2i-1 .. 2i+2 (zero outside)
    xp = F.pad(x, (1, 1, 1, 1))
    expected = torch.einsum("a,b,ijab->ij", k, k, xp[0, 0].unfold(0, 4, 2).unfold(1, 4, 2))
    torch.testing.assert_close(downsample_2d(x)[0, 0], expected)
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(upsample_2d(ones)[..., 2:-2, 2:-2], torch.ones((), dtype=torch.float64))  # constants kept


@pytest.mark.parametrize(
    "overrides",
    [
        {"resblock_type": "ddpm", "fir": False, "progressive": "none", "progressive_input": "none"},
        {"resblock_type": "ddpm", "progressive": "residual", "progressive_input": "residual"},
        {"progressive_combine": "cat", "embedding_type": "positional", "nonlinearity": "elu"},
        {"fir": False, "conditional": False, "centered": True, "resamp_with_conv": False, "resblock_type": "ddpm"},
    ],
)
def test_other_architectures_run(overrides):
    cfg = NCSNppConfig.from_dict({**loader_config(), **overrides})
    torch.manual_seed(0)
    net = build_ncsnpp(cfg).eval()
    names = [n for n, p in net.named_parameters()]
    assert len(names) == len(set(names))
    x = torch.rand(2, 3, 16, 16)
    t = torch.tensor([0.1, 10.0]) if cfg.embedding_type == "fourier" else torch.tensor([0, 1999])
    with torch.no_grad():
        out = net(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------------------
# The potential of the tiny NCSN++ against score_sde's own likelihood (same probe, same tolerances)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # score_sde's tolerances need ~5500 forward+VJP evaluations: ~2.5 min on one core
def test_potential_reproduces_score_sde_likelihood(one_thread):
    from diractrap import potential

    lik = torch.load(GOLDEN / "ncsnpp_ve_tiny_likelihood.pt", weights_only=True)
    meta = json.loads((GOLDEN / "ncsnpp_ve_tiny_likelihood.json").read_text())
    den = load_denoiser(GOLDEN / CKPT, weights=meta["weights"], config=loader_config())
    sde, coarse, fine = meta["sde"], meta["tol1e-5"], meta["tol1e-7"]
    # score_sde integrates its VE time from t = eps, i.e. from sigma(eps) = sigma_min (sigma_max / sigma_min)^eps,
    # to t = 1 (sigma_max), with one Rademacher probe for the whole solve and RK45 at rtol = atol = 1e-5
    sigma_start = sde["sigma_min"] * (sde["sigma_max"] / sde["sigma_min"]) ** coarse["eps"]
    res = potential.potential(den, lik["data"], solver="dopri5", control="state", rtol=coarse["rtol"],
                              atol=coarse["atol"], probes=lik["epsilon"][:, None], sigma_min=sigma_start,
                              sigma_max=float(sde["sigma_max"]))
    # the accuracy one can expect: how much score_sde's own answer moves from rtol 1e-5 to 1e-7 (0.65, 0.12 nats)
    sensitivity = torch.tensor(meta["nll_nats_abs_diff_tol1e-5_vs_tol1e-7"], dtype=torch.float64)
    q = res.q.double()
    assert ((q - torch.tensor(coarse["nll_nats_per_image"], dtype=torch.float64)).abs() <= sensitivity).all()
    assert (q - torch.tensor(fine["nll_nats_per_image"], dtype=torch.float64)).abs().max() <= sensitivity.max()
    bpd = torch.tensor(coarse["bpd"], dtype=torch.float64)  # score_sde's bits/dim (offset 8, [0, 1] data), float32:
    # the same bound in bits/dim, plus one float32 ulp of the stored value (1.9e-6 at 16.4)
    assert ((res.bits_per_dim.double() - bpd).abs() <= sensitivity / (meta["N_dims"] * math.log(2)) + 2e-6).all()
