"""IntervalLoss: compute a loss on every N-th training step only (lazy regularisation)."""

from __future__ import annotations

from torch import Tensor, nn

from .._validation import check_bool, check_int, check_positive_int
from .base import LossWrapper

__all__ = ["IntervalLoss"]


class IntervalLoss(LossWrapper):
    r"""Compute ``loss`` on one training step in ``every``; the others return a zero without calling it.

    On the computed steps the result is multiplied by ``every`` when ``compensate`` (StyleGAN2's lazy
    regularisation): over each window of ``every`` steps the mean value, and the expected gradient, equal
    the exact loss's (gain 1). Without ``compensate`` the mean gain is ``1 / every``. A skipped step returns
    a zero shaped like a computed step's output (for every reduction and batch size; the shape is
    remembered from the computed steps, so the loss is not called: see :meth:`LossWrapper.skipped`),
    attached to the input's graph so it is safe to add and to backpropagate. In eval mode or
    under ``torch.no_grad()`` the loss is computed on every call with gain 1, so validation is exact.

    Which steps compute: those where the wrapper's *phase* satisfies ``(phase - offset) % every == 0``.
    The phase is the stack's training step, divided by the ``every`` of each enclosing IntervalLoss, so
    ``IntervalLoss(IntervalLoss(loss, every=b), every=a)`` computes one step in ``a * b`` with gain
    ``a * b`` (mean gain 1), never the same step twice.

    Args:
        loss: the loss to wrap.
        every: compute on one training step in ``every``.
        compensate: multiply by ``every`` on the computed steps.
        offset: which step of each window computes (``0 <= offset < every``).

    Example:
        >>> loss = IntervalLoss(torch.nn.L1Loss(), every=2)
        >>> x = torch.ones(3, requires_grad=True)
        >>> values = []
        >>> for _ in range(4):
        ...     value = loss(x, torch.zeros(3))
        ...     value.backward()  # the clock advances once per backward pass
        ...     values.append(value.item())
        >>> values
        [2.0, 0.0, 2.0, 0.0]
    """

    can_skip = True

    def __init__(self, loss: nn.Module, every: int = 4, compensate: bool = True, offset: int = 0) -> None:
        check_positive_int("every", every)
        check_int("offset", offset, 0, every - 1, expected=f"an int in [0, {every - 1}]")
        check_bool("compensate", compensate)
        super().__init__(loss)  # validate first: joining a stack changes the wrappers inside
        self.every = every
        self.compensate = compensate
        self.offset = offset

    def active(self, step: int | None = None) -> bool:
        """Whether the wrapped loss is computed at training step ``step`` (default: the current one)."""
        return (self.phase(step) - self.offset) % self.every == 0

    def inner_phase(self, phase: int) -> int:
        return (phase - self.offset) // self.every

    def gain(self) -> float:
        if not self.active():
            return 0.0
        return float(self.every) if self.compensate else 1.0

    def mean_gain(self) -> float:
        return 1.0 if self.compensate else 1.0 / self.every

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        if not self.counting:
            return self.loss(input, target)
        if not self.active():
            return self.skipped(input, target)
        out = self.loss(input, target)
        return out * self.every if self.compensate else out

    def summary(self) -> str:
        return f"{type(self).__name__}({self.every})"

    def extra_repr(self) -> str:
        return f"every={self.every}, compensate={self.compensate}, offset={self.offset}"
