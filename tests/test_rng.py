"""Per-item random streams (diractrap.rng): each named seed scheme reproduces its historical stream exactly, and an
item's draws do not depend on the batch it is drawn in."""

import numpy as np
import pytest
import torch

from diractrap.rng import SCHEMES, ItemGenerators, item_seed


# ---------------------------------------------------------------------------------------------------------------
# The schemes, against independent reimplementations of the formulas they replace
# ---------------------------------------------------------------------------------------------------------------


def _seedsequence_generator(seed, item):  # the probes' formula (potential.item_generator before diractrap.rng)
    state = np.random.SeedSequence([seed, item]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _affine_generator(seed, item):  # the problems' and the demo prior's formula before diractrap.rng
    return torch.Generator().manual_seed((seed * 1_000_003 + item) % (2**63 - 1))


@pytest.mark.parametrize("seed", [0, 1, 17, 2**40])
def test_schemes_reproduce_the_old_streams(seed):
    ids = [0, 3, 1, 250]
    for scheme, old in (("seedsequence", _seedsequence_generator), ("affine", _affine_generator)):
        gens = ItemGenerators(seed, ids, scheme=scheme)
        expected = torch.stack([torch.randn(2, 5, 4, generator=old(seed, i), dtype=torch.float64) for i in ids])
        assert torch.equal(gens.randn((2, 5, 4), dtype=torch.float64), expected)
        # a second draw continues each item's stream, as make_problem's border noise relies on
        olds = [old(seed, i) for i in ids]
        for g in olds:
            torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
        assert torch.equal(gens.randn(3, dtype=torch.float32),
                           torch.stack([torch.randn(3, generator=g) for g in olds]))


def test_rademacher_is_the_old_probe_draw():
    ids = [4, 0, 9]
    got = ItemGenerators(5, ids).rademacher((2, 3, 6, 6), dtype=torch.float64)
    old = torch.stack([torch.randint(0, 2, (2, 3, 6, 6), generator=_seedsequence_generator(5, i),
                                     dtype=torch.int8).to(torch.float64) * 2 - 1 for i in ids])
    assert torch.equal(got, old)
    assert set(got.unique().tolist()) == {-1.0, 1.0}


def test_draws_do_not_depend_on_batch_composition():
    for scheme in SCHEMES:
        whole = ItemGenerators(3, range(6), scheme=scheme).randn((2, 4))
        parts = [ItemGenerators(3, ids, scheme=scheme).randn((2, 4)) for ids in ([0, 1], [2], [3, 4, 5])]
        assert torch.equal(torch.cat(parts), whole)
        shuffled = ItemGenerators(3, [5, 2, 0], scheme=scheme).randn((2, 4))
        assert torch.equal(shuffled, whole[[5, 2, 0]])
        assert not torch.equal(whole[0], whole[1])


def test_empty_batch_and_errors():
    assert ItemGenerators(0, []).randn((2, 3)).shape == (0, 2, 3)
    with pytest.raises(ValueError, match="scheme"):
        item_seed(0, 0, "xor")
    with pytest.raises(ValueError, match=">= 0"):
        item_seed(-1, 0, "seedsequence")
    assert item_seed(2, 5, "affine") == 2 * 1_000_003 + 5
