"""IntervalLoss: compute a loss on every N-th training step only (lazy regularisation)."""

from __future__ import annotations

from torch import Tensor, nn

from .._validation import check_positive_int
from .base import LossWrapper, zero_loss

__all__ = ["IntervalLoss"]


class IntervalLoss(LossWrapper):
    r"""Compute ``loss`` on training steps where ``(step - offset) % every == 0`` only.

    On those steps the result is multiplied by ``every`` when ``compensate`` (StyleGAN2's lazy
    regularisation: the expected gradient over a window of ``every`` steps is unchanged). On the other
    steps it returns a zero that is safe to add and to backpropagate, without calling ``loss``. In eval
    mode or under ``torch.no_grad()`` the loss is computed on every call with gain 1, so validation
    numbers stay exact.

    Args:
        loss: the loss to wrap.
        every: compute on one training step in ``every``.
        compensate: multiply by ``every`` on the computed steps.
        offset: which step of each window computes (``0 <= offset < every``).

    Example:
        >>> loss = IntervalLoss(torch.nn.L1Loss(), every=2)
        >>> x = torch.ones(3, requires_grad=True)
        >>> [loss(x, torch.zeros(3)).item() for _ in range(4)]
        [2.0, 0.0, 2.0, 0.0]
    """

    def __init__(self, loss: nn.Module, every: int = 4, compensate: bool = True, offset: int = 0) -> None:
        super().__init__(loss)
        self.every = check_positive_int("every", every)
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < every:
            raise ValueError(f"`offset` must be an int in [0, {every - 1}], got {offset!r}")
        self.compensate = compensate
        self.offset = offset
        self._shape: tuple = ()

    def active(self, step: int | None = None) -> bool:
        """Whether the wrapped loss is computed at training step ``step`` (default: the current one)."""
        step = self._step if step is None else step
        return (step - self.offset) % self.every == 0

    def gain(self) -> float:
        if not self.active():
            return 0.0
        return float(self.every) if self.compensate else 1.0

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        if not self.counting:
            return self.loss(input, target)
        if not self.active():
            return zero_loss(input, self._shape)
        out = self.loss(input, target)
        self._shape = tuple(out.shape)
        return out * self.every if self.compensate else out

    def extra_repr(self) -> str:
        return f"every={self.every}, compensate={self.compensate}, offset={self.offset}"
