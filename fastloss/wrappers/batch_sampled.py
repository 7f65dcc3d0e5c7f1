r"""BatchSampledLoss: evaluate a loss on ``k`` of the batch's ``B`` samples per training step.

A per-sample loss (a perceptual loss, LPIPS) costs about ``B`` times one sample's. ``BatchSampledLoss``
evaluates it on ``k`` samples per training step, chosen *stratified*: the batch positions are split into
``n = ceil(B / k)`` groups of at most ``k`` by a permutation drawn per cycle of ``n`` steps from a seeded
generator, and step ``t`` of the cycle takes group ``t``. Every position is evaluated exactly once per
cycle, and each step's value is scaled so that over a cycle the mean equals the batch's loss:

- ``reduction="mean"``: the group's mean times ``n * |group| / B`` (over a cycle: the batch mean);
- ``reduction="sum"``: the group's sum times ``n`` (over a cycle: the batch sum);
- ``reduction="none"``: a ``(B, ...)`` tensor, ``n`` times the sample's value at the group's positions and
  zero elsewhere (over a cycle: each sample's value; the documented shape is the wrapped loss's).

When ``B`` is a multiple of ``k`` each step is also an unbiased estimate on its own (a uniformly random
``k``-subset). The positions, not the samples, are stratified: with a shuffling data loader the samples
at a position change every step, so the estimate stays unbiased over the data. A batch of at most ``k``
samples is computed whole (gain 1). Eval mode and ``torch.no_grad()`` compute the whole batch.
The order depends only on the seed (``state_dict``) and the stack's step, so a resumed run picks exactly
the positions the uninterrupted one would. Wrappers inside advance once per cycle of groups (nested with a
:class:`TiledLoss`, every (group, tile) pair is visited once per ``n_groups * n_tiles`` steps).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_positive_int
from ._sampling import SamplingWrapper
from .base import LossWrapper, loss_output_shape

__all__ = ["BatchSampledLoss"]

REDUCTIONS = ("mean", "sum", "none")


class BatchSampledLoss(SamplingWrapper):
    r"""Evaluate ``loss`` on ``k`` samples of the batch per training step, every position once per cycle.

    Args:
        loss: the loss to wrap; it must reduce over the batch as its ``reduction`` attribute says
            (``"mean"``, ``"sum"`` or ``"none"``; for a wrapper, the innermost loss's), or give ``reduction`` here.
        k: samples per step (an int >= 1), or a fraction of the batch in ``(0, 1)`` (``k = ceil(fraction * B)``).
        reduction: how ``loss`` reduces over the batch; default its ``reduction`` attribute.
        seed: seed of the order (saved in ``state_dict``).

    Shape:
        - input, target: :math:`(B, *)`.
        - output: the wrapped loss's output for the whole batch (a scalar, or :math:`(B, *)` with ``"none"``).

    Example:
        >>> loss = BatchSampledLoss(torch.nn.L1Loss(reduction="none"), k=2)
        >>> x = torch.arange(4.0).requires_grad_()
        >>> values = []
        >>> for _ in range(2):  # one cycle: each position once
        ...     value = loss(x, torch.zeros(4))
        ...     value.sum().backward()
        ...     values.append(value.detach())
        >>> (sum(values) / 2).tolist()
        [0.0, 1.0, 2.0, 3.0]
    """

    def __init__(self, loss: nn.Module, k: int | float = 0.5, *, reduction: str | None = None, seed: int = 0) -> None:
        if isinstance(k, float):
            if not 0 < k < 1:
                raise ValueError(f"`k` as a fraction of the batch must be in (0, 1), got {k!r}")
        else:
            check_positive_int("k", k)
        if reduction is None:  # wrappers keep their loss's reduction over the batch: read the innermost's
            inner = loss.innermost() if isinstance(loss, LossWrapper) else loss
            reduction = getattr(inner, "reduction", None)
        if reduction is None:
            raise ValueError(
                f"{type(loss).__name__} has no `reduction` attribute: give `reduction` ('mean', 'sum' or 'none'), how it "
                "reduces over the batch"
            )
        check_choice("reduction", reduction, REDUCTIONS)
        super().__init__(loss, seed)
        self.k = k
        self.reduction = reduction

    def samples(self, batch: int) -> int:
        """``k`` for a batch of ``batch`` samples."""
        return min(batch, math.ceil(self.k * batch) if isinstance(self.k, float) else self.k)

    @torch.compiler.disable
    def positions(self, batch: int, step: int | None = None) -> list[int]:
        """The batch positions evaluated at training step ``step`` (default: now)."""
        k = self.samples(batch)
        n = math.ceil(batch / k)
        phase = self.phase(step)
        order = self.cycle_order(phase, n, batch)
        return sorted(order[(phase % n) * k:(phase % n + 1) * k])

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        batch = input.shape[0] if input.ndim else 1
        if not self.counting or input.ndim == 0 or self.samples(batch) >= batch:
            return self.loss(input, target)
        if target is not None and (target.ndim == 0 or target.shape[0] != batch):
            raise ValueError(f"`target` must have the input's batch size {batch}, got shape {tuple(target.shape)}")
        n = math.ceil(batch / self.samples(batch))
        self._cycle = n
        picked = self.positions(batch)
        index = torch.tensor(picked, device=input.device)
        out = self.loss(input.index_select(0, index), None if target is None else target.index_select(0, index))
        if self.reduction == "mean":
            return out * (n * len(picked) / batch)
        if self.reduction == "sum":
            return out * n
        full = out.new_zeros((batch, *out.shape[1:]))
        return full.index_copy(0, index, out * n)

    def output_shape(self, input: Tensor, target: Tensor | None) -> torch.Size:
        return loss_output_shape(self.loss, input, target)

    def summary(self) -> str:
        return f"{type(self).__name__}(k={self.k})"

    def extra_repr(self) -> str:
        return f"k={self.k}, reduction={self.reduction!r}, seed={self.seed}"
