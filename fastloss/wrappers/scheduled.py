"""ScheduledWeight: multiply a loss by a weight that follows the training step."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from .base import LossWrapper

__all__ = ["ScheduledWeight"]


class ScheduledWeight(LossWrapper):
    r"""Return ``schedule(step) * loss(input, target)``; while the weight is 0 the loss is not called.

    ``schedule`` maps the stack's *training step* to a finite, non-negative weight: use
    :mod:`fastloss.schedules` (constant, piecewise, delayed start, linear warm-up, cosine decay; each can
    speak in epochs) or any callable. Inside an :class:`IntervalLoss` the schedule still reads the
    training step, so a delayed start means the same step wherever the wrapper sits. At weight 0 it
    returns a zero shaped like a computed output. In eval mode the weight of the current step applies.

    Example:
        >>> from fastloss import schedules
        >>> loss = ScheduledWeight(torch.nn.L1Loss(), schedules.delayed(start=2))
        >>> x = torch.ones(3, requires_grad=True)
        >>> values = []
        >>> for _ in range(3):
        ...     value = loss(x, torch.zeros(3))
        ...     value.backward()
        ...     values.append(value.item())
        >>> values
        [0.0, 0.0, 1.0]
    """

    can_skip = True

    def __init__(self, loss: nn.Module, schedule: Callable[[int], float]) -> None:
        if not callable(schedule):
            raise TypeError(f"`schedule` must be callable (step -> weight), got {type(schedule).__name__}")
        super().__init__(loss)
        self.schedule = schedule

    def weight(self, step: int | None = None) -> float:
        """The weight at training step ``step`` (default: the current step)."""
        step = self.current_step() if step is None else step
        w = self.schedule(step)
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise TypeError(f"`schedule({step})` must return a number, got {type(w).__name__}") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"`schedule({step})` must return a finite, non-negative weight, got {w}")
        return w

    def gain(self) -> float:
        return self.weight()

    def mean_gain(self) -> float:
        return self.weight()

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        w = self.weight()
        if w == 0:
            return self.skipped(input, target)
        out = self.loss(input, target)
        return out if w == 1 else out * w

    def extra_repr(self) -> str:
        return f"schedule={self.schedule!r}"
