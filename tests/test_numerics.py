"""The TF32 policy (diractrap.numerics.no_tf32): off inside the block only, the caller's flags restored (nesting and
errors included), and the networks apply it to their own forward pass instead of flipping it process-wide."""

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
