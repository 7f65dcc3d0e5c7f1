"""What the sampling wrappers (:class:`TiledLoss`, :class:`BatchSampledLoss`) share: a stratified order
drawn per cycle from a seed, the seed kept in ``state_dict``, and the inner wrappers' phase."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_int
from .base import LossWrapper

__all__ = ["SamplingWrapper", "check_seed", "cycle_order"]


def check_seed(seed: object) -> int:
    return check_int("seed", seed, 0, expected="a non-negative int")


def cycle_order(seed: int, cycle: int, n: int) -> list[int]:
    """The visiting order of ``n`` items in cycle ``cycle``: a permutation drawn from a generator seeded
    by ``(seed, cycle)`` only, so any step's items are known without replaying the run (a resumed run
    visits exactly what the uninterrupted one would)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + cycle) % (2**63 - 1))
    return torch.randperm(n, generator=g).tolist()


class SamplingWrapper(LossWrapper):
    """A wrapper that evaluates one part (a tile, a group of samples) of every ``n`` per training step, each
    part once per cycle of ``n`` steps, in an order that depends only on ``seed`` and the stack's step.

    Wrappers inside see one step per cycle (:meth:`inner_phase`): nested, two sampling wrappers visit
    every pair of parts once per product of their cycles.
    """

    def __init__(self, loss: nn.Module, seed: int) -> None:
        self.seed = check_seed(seed)
        super().__init__(loss)
        self._cycle = 1  # parts per cycle at the last training call (the inner wrappers' phase unit)

    def inner_phase(self, phase: int) -> int:
        return phase // self._cycle

    def cycle_order(self, phase: int, n: int, items: int | None = None) -> list[int]:
        """The order of ``items`` (default ``n``) in the cycle of ``n`` steps holding ``phase``."""
        return cycle_order(self.seed, phase // n, n if items is None else items)

    def get_extra_state(self) -> dict:
        return {"seed": self.seed}

    def set_extra_state(self, state: dict) -> None:
        self.seed = check_seed(state["seed"])
