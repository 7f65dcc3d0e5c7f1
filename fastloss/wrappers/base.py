"""The small base every wrapper shares: a step counter in ``state_dict`` and stack-wide stepping.

A forward call through the *outermost* wrapper of a stack advances every wrapper in the stack by one
step, but only when that wrapper is in training mode and grad is enabled. Inner wrappers that were
skipped (e.g. inside an ``IntervalLoss`` off-step) are advanced all the same, so every wrapper of a
stack agrees on the step. In eval mode or under ``torch.no_grad()`` nothing advances.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .._validation import check_tensor

__all__ = ["LossWrapper", "zero_loss"]

_local = threading.local()


def zero_loss(input: Tensor, like: torch.Size | tuple = ()) -> Tensor:
    """A zero that is safe to add and to backpropagate: it is attached to ``input``'s graph.

    Being attached keeps every parameter "used" on skipped steps (DistributedDataParallel needs no
    ``find_unused_parameters``), and ``nan_to_num`` keeps a non-finite input from turning it into NaN.
    """
    anchor = torch.nan_to_num(input.sum(), nan=0.0, posinf=0.0, neginf=0.0) * 0
    return anchor.expand(like) if len(like) else anchor


class LossWrapper(nn.Module):
    """Base class of the wrappers: holds ``loss`` and a ``step`` buffer, and drives the step.

    Subclasses implement :meth:`compute`; :meth:`forward` handles stepping.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise TypeError(f"`loss` must be an nn.Module (a loss to wrap), got {type(loss).__name__}")
        self.loss = loss
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._step = 0  # host mirror of `step`: reading it never synchronises a GPU

    @property
    def preset_kind(self) -> str | None:
        return getattr(self.loss, "preset_kind", None)

    # --- stepping -----------------------------------------------------------------------------
    def wrappers(self) -> Iterator[LossWrapper]:
        """Every wrapper in this stack, this one included (also inside composite losses)."""
        return (m for m in self.modules() if isinstance(m, LossWrapper))

    def advance(self) -> None:
        """Advance every wrapper in the stack by one step."""
        for w in self.wrappers():
            w.step.add_(1)
            w._step += 1

    def set_step(self, step: int) -> None:
        """Set the step of the whole stack (resume, or drive schedules by the training loop's step)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"`step` must be a non-negative int, got {step!r}")
        for w in self.wrappers():
            w.step.fill_(step)
            w._step = step

    @property
    def counting(self) -> bool:
        """Whether this call is a training step (decided by the outermost wrapper of the call)."""
        return getattr(_local, "counting", self.training and torch.is_grad_enabled())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._step = int(self.step)

    # --- calling ------------------------------------------------------------------------------
    def forward(self, input: Tensor, target: Tensor | None = None) -> Tensor:
        check_tensor("input", input)
        if hasattr(_local, "counting"):  # an inner wrapper: the outermost one steps the stack
            return self.compute(input, target)
        counting = self.training and torch.is_grad_enabled()
        _local.counting = counting
        try:
            out = self.compute(input, target)
        finally:
            del _local.counting
        if counting:
            self.advance()
        return out

    def gain(self) -> float:
        """The factor this wrapper applies at the current training step (0: the loss is skipped)."""
        return 1.0

    def stack_gain(self) -> float:
        """Product of :meth:`gain` over the stack: what a training step's value is multiplied by."""
        g = 1.0
        for w in self.wrappers():
            g *= w.gain()
        return g

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        raise NotImplementedError
