"""Per-item random streams: one CPU generator per (seed, item id), so a draw never depends on the batch it is in.

Modelled on EDM's ``StackedRandomGenerator`` (Karras et al. 2022, ``generate.py``): :class:`ItemGenerators` holds
one ``torch.Generator`` per item and returns the items' draws stacked along a leading batch axis. Draws are made
on the CPU (then moved), so they do not depend on the device either.

How a generator's seed is derived from (seed, item id) is a named scheme (:data:`SCHEMES`):

    "seedsequence"  numpy's SeedSequence([seed, item id]) -> one uint64 (well mixed; seed and ids must be >= 0).
                    The stream of the Hutchinson probes (:func:`diractrap.potential.make_probes`).
    "affine"        (seed * 1_000_003 + item id) mod (2^63 - 1). The historical stream of the synthetic problems'
                    noise (:func:`diractrap.problems.make_problem`), of the demo prior's sampler, denoising table
                    and training steps (:mod:`diractrap.train`).

Both are kept bit for bit: changing either would change the numbers of every run made before.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import Tensor

__all__ = ["SCHEMES", "item_seed", "ItemGenerators"]

SCHEMES = ("seedsequence", "affine")
_AFFINE_MULTIPLIER = 1_000_003  # a prime: distinct (seed, item) pairs rarely share a seed for small ids
_AFFINE_MODULUS = 2**63 - 1  # keeps the seed in torch's accepted range


# ---------------------------------------------------------------------------------------------------------------
# Seed derivation: (seed, item id) -> the seed of that item's generator, by a named scheme
# ---------------------------------------------------------------------------------------------------------------


def item_seed(seed: int, item_id: int, scheme: str = "seedsequence") -> int:
    """The seed of item ``item_id``'s generator under ``scheme`` (see the module docstring)."""
    seed, item_id = int(seed), int(item_id)
    if scheme == "seedsequence":
        if seed < 0 or item_id < 0:
            raise ValueError(f"seed and item ids must be >= 0, got seed={seed}, item_id={item_id}")
        return int(np.random.SeedSequence([seed, item_id]).generate_state(1, dtype=np.uint64)[0])
    if scheme == "affine":
        return (seed * _AFFINE_MULTIPLIER + item_id) % _AFFINE_MODULUS
    raise ValueError(f"seed scheme must be one of {SCHEMES}, got {scheme!r}")


# ---------------------------------------------------------------------------------------------------------------
# Stacked per-item draws (EDM's StackedRandomGenerator)
# ---------------------------------------------------------------------------------------------------------------


class ItemGenerators:
    """One CPU generator per item id; each method draws ``shape`` per item and stacks: (len(item_ids), *shape).

    The generators keep their state between calls, so successive draws continue each item's stream (as
    successive calls on one ``torch.Generator`` would).
    """

    def __init__(self, seed: int, item_ids: Iterable[int], *, scheme: str = "seedsequence"):
        self.seed, self.scheme = int(seed), scheme
        self.item_ids = [int(i) for i in item_ids]
        self.generators = [torch.Generator().manual_seed(item_seed(seed, i, scheme)) for i in self.item_ids]

    def __len__(self) -> int:
        return len(self.item_ids)

    def _stack(self, draw, shape, dtype) -> Tensor:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not self.generators:
            return torch.empty((0, *shape), dtype=dtype)
        return torch.stack([draw(shape, g) for g in self.generators])

    def randn(self, shape, *, dtype=torch.float32) -> Tensor:
        """N(0, 1) entries drawn in ``dtype`` (the draw itself depends on the dtype)."""
        return self._stack(lambda s, g: torch.randn(s, generator=g, dtype=dtype), shape, dtype)

    def randint(self, high: int, shape, *, dtype=torch.int64) -> Tensor:
        """Integers uniform on [0, high), drawn in ``dtype``."""
        return self._stack(lambda s, g: torch.randint(0, high, s, generator=g, dtype=dtype), shape, dtype)

    def rademacher(self, shape, *, dtype=torch.float32) -> Tensor:
        """+-1 entries with probability 1/2 each (from int8 draws on {0, 1}), as ``dtype``."""
        return self.randint(2, shape, dtype=torch.int8).to(dtype) * 2 - 1
