"""The stratified order behind the sampling wrappers (:class:`TiledLoss`, :class:`BatchSampledLoss`)."""

from __future__ import annotations

import torch

from .._validation import check_int

__all__ = ["check_seed", "cycle_order"]


def check_seed(seed: object) -> int:
    return check_int("seed", seed, 0, expected="a non-negative int")


def cycle_order(seed: int, cycle: int, n: int) -> list[int]:
    """The visiting order of ``n`` items in cycle ``cycle``: a permutation drawn from a generator seeded
    by ``(seed, cycle)`` only, so any step's items are known without replaying the run (a resumed run
    visits exactly what the uninterrupted one would)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + cycle) % (2**63 - 1))
    return torch.randperm(n, generator=g).tolist()
