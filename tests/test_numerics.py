"""The precision policy (diractrap.numerics): TF32 off inside no_tf32's block only, the caller's flags restored
(nesting and errors included), the networks apply it to their own forward pass instead of flipping it process-wide;
a chosen precision (tf32, bf16) reaches the network and q, and an adaptive solve on a bf16 network stops at max_nfe."""

import pytest
import torch

from diractrap.numerics import no_tf32


def flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.fixture
def tf32_on():
    """TF32 switched on (settable on the CPU too), then the session's flags put back."""
    saved = flags()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_no_tf32_restores_the_previous_flags_nested_and_on_errors(tf32_on):
    with no_tf32():
        assert flags() == (False, False)
        with no_tf32():
            assert flags() == (False, False)
        assert flags() == (False, False)  # the inner block restores the outer block's state, not the defaults
    assert flags() == (True, True)
    torch.backends.cudnn.allow_tf32 = False  # mixed flags come back as they were
    with pytest.raises(RuntimeError), no_tf32():
        raise RuntimeError("inside")
    assert flags() == (True, False)


def test_edm_network_turns_tf32_off_for_its_forward_pass_only(tf32_on):
    from diractrap.models.edm import EDMPrecond, freeze

    torch.manual_seed(0)
    net = freeze(EDMPrecond(8, 3, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[]))
    assert flags() == (True, True)  # loading and freezing leave the process' flags alone
    seen = []
    net.model.register_forward_hook(lambda *_: seen.append(flags()))
    net(torch.randn(2, 3, 8, 8), torch.tensor([0.5, 2.0]))
    assert seen == [(False, False)] and flags() == (True, True)


def test_ncsnpp_denoiser_turns_tf32_off_for_its_score_only(tf32_on):
    from diractrap.models.ncsnpp import NCSNppDenoiser

    class Probe(torch.nn.Module):  # stands in for the network: records the flags it runs under
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.config = type("Config", (), {"sigma_min": 0.01, "sigma_max": 50.0, "embedding_type": "fourier",
                                              "as_dict": lambda self: {}})()
            self.seen = []

        def forward(self, x, t):
            self.seen.append(flags())
            return torch.zeros_like(x)

    den = NCSNppDenoiser(Probe())
    den(torch.rand(1, 3, 4, 4), 0.1)
    assert den.net.seen == [(False, False)] and flags() == (True, True)


# ---------------------------------------------------------------------------------------------------------------
# A chosen precision: TF32 on for "tf32" (the networks' own no_tf32 defers), autocast for bf16, restored after
# ---------------------------------------------------------------------------------------------------------------


def _tiny_edm():
    from diractrap.models.edm import EDMPrecond, freeze

    torch.manual_seed(0)
    net = freeze(EDMPrecond(8, 3, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[]))
    with torch.no_grad():  # EDM's output layer starts at zero: perturb so that the network's rounding shows
        for w in net.parameters():
            w.add_(0.05 * torch.randn_like(w))
    return net


def test_a_chosen_precision_reaches_the_network_and_the_flags_come_back(tf32_on):
    from diractrap.numerics import active_precision, at_precision, precision_scope

    net = _tiny_edm()
    seen = []
    net.model.register_forward_hook(lambda m, i, out: seen.append((flags(), out.dtype, active_precision())))
    x, sigma = torch.rand(2, 3, 8, 8) * 2 - 1, torch.tensor([0.5, 2.0])
    for precision, want in (("fp32", ((False, False), torch.float32)), ("tf32", ((True, True), torch.float32)),
                            ("bf16", ((False, False), torch.bfloat16))):
        out = at_precision(net, precision)(x, sigma)
        assert seen[-1][:2] == want, precision  # the network's own no_tf32 defers to the chosen precision
        assert out.dtype == torch.float32 and flags() == (True, True)  # cast back; the caller's flags restored
    assert at_precision(net, "fp32") is net and seen[0][2] is None  # fp32: the network's own policy, unwrapped
    with precision_scope("tf32"):
        assert flags() == (True, True) and active_precision() == "tf32"
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16, fp16"):
        at_precision(net, "fp64")


def test_bf16_changes_q_by_its_rounding_and_an_adaptive_solve_on_it_stops_at_max_nfe():
    from diractrap.potential import REDUCED_MAX_NFE, PotentialOptions, potential

    net = _tiny_edm()
    x = torch.rand(2, 3, 8, 8)
    q32 = potential(net, x, solver="heun", steps=4, n_probes=2)
    q16 = potential(net, x, solver="heun", steps=4, n_probes=2, precision="bf16")
    assert q16.settings["precision"] == "bf16" and q32.settings["precision"] == "fp32"
    rel = ((q16.q - q32.q).abs() / q32.q.abs()).max().item()
    assert 0 < rel < 0.05  # bfloat16 keeps 8 mantissa bits (relative 4e-3 per operation): changed, not broken
    # probe m is the same in every solve: a 2-probe solve holds the 1-probe one (Heun: bit for bit)
    q1 = potential(net, x, solver="heun", steps=4, n_probes=1)
    assert torch.equal(q1.q_probes[:, 0], q32.q_probes[:, 0]) and torch.equal(q32.q, q32.q_probes.mean(1))
    assert PotentialOptions().nfe_limit is None and PotentialOptions(precision="bf16").nfe_limit == REDUCED_MAX_NFE
    with pytest.raises(RuntimeError, match=r"tsit5 at rtol=1e-05, atol=1e-05 with the network in bf16 stopped "
                                           r"after 12 network evaluations .*solver='heun'"):
        potential(net, x, rtol=1e-5, atol=1e-5, precision="bf16", max_nfe=12)
