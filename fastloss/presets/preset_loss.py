""":class:`PresetLoss` (a preset's stack, resolved for the device of its first call) and :func:`preset`."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .. import hardware
from ..hardware import Capabilities
from ..wrappers import LossWrapper
from ..wrappers.base import describe_stack
from .registry import entry, measured, preset_kind

__all__ = ["PresetLoss", "check_unwrapped", "preset"]


def check_unwrapped(loss: object) -> nn.Module:
    """``loss`` if it is an unwrapped ``nn.Module``, else a ``TypeError`` saying what to pass."""
    if not isinstance(loss, nn.Module):
        raise TypeError(f"`loss` must be an nn.Module, got {type(loss).__name__}")
    if isinstance(loss, LossWrapper):
        raise TypeError(
            f"`loss` is already wrapped ({type(loss).__name__} around {type(loss.innermost()).__name__}); a preset "
            "builds its own stack: pass the unwrapped loss (e.g. `stack.innermost()`)"
        )
    return loss


class PresetLoss(LossWrapper):
    r"""A preset's stack, resolved for the device of the first call (and again if the device changes).

    Built by :func:`preset`; its ``loss`` is the loss itself until the first call, then the resolved
    stack around it. It is the stack's outermost wrapper, so it holds the stack's clock.

    Example:
        >>> topo = preset("balanced", __import__("fastloss").TopologicalLoss())
        >>> topo.describe()
        "preset 'balanced' (topology): not resolved yet (resolves at the first call, for the input's device)"
    """

    transparent = True  # it runs its resolved stack, nothing else

    def __init__(self, name: str, kind: str, loss: nn.Module) -> None:
        entry(name, kind)
        super().__init__(loss)
        self.name = name
        self.kind = kind
        self.resolved_for: Capabilities | None = None
        # The loss as given, on the CPU, to resolve from again on another device. A plain attribute:
        # not a submodule, so neither in state_dict nor moved or cast with the stack.
        object.__setattr__(self, "_pristine", copy.deepcopy(loss).to("cpu"))

    @property
    def preset_kind(self) -> str:
        return self.kind

    def _current_device(self) -> torch.device:
        for t in (*self.loss.parameters(), *self.loss.buffers()):
            return t.device
        return torch.device("cpu")

    def resolve(self, device: torch.device | str | Capabilities) -> PresetLoss:
        """Build the stack for ``device`` now (or for recorded capabilities, where the stack is now); returns ``self``."""
        if isinstance(device, Capabilities):
            caps, place = device, self._current_device()
        else:
            place = hardware.normalise(device)
            caps = hardware.capabilities(place)
        base = copy.deepcopy(self._pristine).to(place)
        step = int(self.step)
        stack = entry(self.name, self.kind).build(base, caps)
        self.loss = stack
        self._root._adopt()  # the whole stack's root: this preset may itself sit inside other wrappers
        self.step.fill_(step)
        self.resolved_for = caps
        return self

    def materialise(self, device: torch.device) -> None:
        """Resolve for ``device`` now unless already resolved (what a harness calls before timing)."""
        if self.resolved_for is None:
            self.resolve(device)

    @torch.compiler.disable
    def _ensure_resolved(self, input: Tensor) -> None:
        caps = self.resolved_for
        if caps is None or torch.device(caps.device) != hardware.normalise(input.device):
            self.resolve(input.device)

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        self._ensure_resolved(input)
        return self.loss(input, target)

    def summary(self) -> str:
        return f"preset {self.name!r}"

    def describe(self) -> str:
        """What this preset became: the device it was resolved for and the resolved stack."""
        head = f"preset {self.name!r} ({self.kind})"
        if self.resolved_for is None:
            return f"{head}: not resolved yet (resolves at the first call, for the input's device)"
        return f"{head} on {self.resolved_for.describe()}: {describe_stack(self.loss)}"

    def get_extra_state(self) -> dict:
        return {"name": self.name, "kind": self.kind,
                "resolved_for": None if self.resolved_for is None else self.resolved_for.as_dict()}

    def set_extra_state(self, state: dict) -> None:
        if (state["name"], state["kind"]) != (self.name, self.kind):
            raise ValueError(
                f"the checkpoint holds preset {state['name']!r} ({state['kind']}), this is {self.name!r} ({self.kind})"
            )
        saved = state.get("resolved_for")
        if saved is not None:  # rebuild the stack the checkpoint was resolved to, so its state loads into it
            self.resolve(hardware.Capabilities.from_dict(saved))

    def extra_repr(self) -> str:
        where = "unresolved" if self.resolved_for is None else self.resolved_for.device
        return f"name={self.name!r}, kind={self.kind!r}, resolved_for={where!r}"


def preset(name: str, loss: nn.Module, *, example: tuple[Tensor, Tensor] | None = None, **autotune_kwargs) -> nn.Module:
    """A wrapped copy of ``loss`` following preset ``name`` (``"exact"``, ``"balanced"``, ``"fastest"``, ``"auto"``).

    The stack is resolved for the device of the first call (see :class:`PresetLoss`). ``"auto"`` measures
    the candidates on ``example=(input, target)`` with :func:`fastloss.autotune` (keyword arguments are
    passed to it) and returns the chosen stack.
    """
    loss = check_unwrapped(loss)
    kind = preset_kind(loss)
    chosen_by_measuring = measured(name)
    if chosen_by_measuring is not None:
        if example is None:
            raise ValueError(f"preset {name!r} measures on your data: pass example=(input, target)")
        return chosen_by_measuring.resolve(loss, example, **autotune_kwargs)
    if example is not None or autotune_kwargs:
        raise TypeError(f"`example` and autotune arguments are for preset 'auto' only, not {name!r}")
    entry(name, kind)
    return PresetLoss(name, kind, copy.deepcopy(loss))
