"""The preset registry: ``(name, kind) -> builder``, plus *measured* presets that apply to every kind.

A builder takes the loss, or the loss and the device's :class:`~fastloss.hardware.Capabilities`. A
measured preset (``"auto"``, registered by :mod:`fastloss.autotune`) is resolved by a function of the
loss and an example batch instead; the registry only knows its name, description and resolver.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..hardware import Capabilities

__all__ = [
    "MeasuredPreset", "PresetEntry", "describe", "entry", "list_presets", "measured", "preset_kind",
    "register_measured_preset", "register_preset", "unregister_preset",
]

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class PresetEntry:
    name: str
    kind: str
    builder: Builder
    description: str

    def build(self, loss: nn.Module, caps: Capabilities) -> nn.Module:
        return self.builder(loss, caps) if _takes_capabilities(self.builder) else self.builder(loss)


@dataclass(frozen=True)
class MeasuredPreset:
    """A preset chosen by measuring: ``resolve(loss, example, **kwargs)`` returns the stack."""

    name: str
    resolve: Callable[..., nn.Module]
    description: str
    owner: str  # who resolves it, for messages (e.g. "fastloss.autotune")


def _takes_capabilities(builder: Builder) -> bool:
    """Whether ``builder`` takes the capabilities: a second positional parameter without a default (or one
    named ``caps``/``capabilities``); ``lambda loss, n=n: ...`` takes only the loss."""
    try:
        params = list(inspect.signature(builder).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.name in ("caps", "capabilities") for p in params):
        return True
    return len(positional) >= 2 and positional[1].default is inspect.Parameter.empty


_REGISTRY: dict[tuple[str, str], PresetEntry] = {}
_MEASURED: dict[str, MeasuredPreset] = {}


def register_preset(name: str, kind: str, builder: Builder, description: str = "", *, overwrite: bool = False) -> None:
    """Register ``builder`` as preset ``name`` for loss kind ``kind``.

    ``builder(loss)`` or ``builder(loss, capabilities)`` returns the wrapped stack for a copy of the
    loss; with the second form the stack can depend on the device (:mod:`fastloss.hardware`).
    """
    if not isinstance(name, str) or not name or not isinstance(kind, str) or not kind:
        raise ValueError(f"`name` and `kind` must be non-empty strings, got {name!r} and {kind!r}")
    if name in _MEASURED:
        raise ValueError(f"`name` {name!r} is reserved: it is resolved by {_MEASURED[name].owner}")
    if not callable(builder):
        raise TypeError(f"`builder` must be callable (loss -> wrapped loss), got {type(builder).__name__}")
    if (name, kind) in _REGISTRY and not overwrite:
        raise ValueError(f"preset {name!r} for kind {kind!r} is already registered (pass overwrite=True)")
    _REGISTRY[name, kind] = PresetEntry(name, kind, builder, description)


def register_measured_preset(name: str, resolve: Callable[..., nn.Module], description: str, owner: str) -> None:
    """Register a preset of every kind that is chosen by measuring on an example batch (``"auto"``).

    ``preset(name, loss, example=(input, target), **kwargs)`` returns ``resolve(loss, example, **kwargs)``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}")
    if not callable(resolve):
        raise TypeError(f"`resolve` must be callable (loss, example, **kwargs -> loss), got {type(resolve).__name__}")
    if any(n == name for n, _ in _REGISTRY):
        raise ValueError(f"`name` {name!r} is already a registered preset")
    _MEASURED[name] = MeasuredPreset(name, resolve, description, owner)


def measured(name: str) -> MeasuredPreset | None:
    """The measured preset called ``name``, or ``None``."""
    return _MEASURED.get(name)


def unregister_preset(name: str, kind: str) -> None:
    """Remove a registered preset (``KeyError`` if unknown)."""
    del _REGISTRY[name, kind]


def list_presets(kind: str | None = None, *, include_measured: bool = True) -> list[str]:
    """Preset names, for one loss kind or for all; measured presets (``"auto"``) apply to every kind that
    has registered presets (``include_measured=False`` leaves them out)."""
    names = {n for n, k in _REGISTRY if kind is None or k == kind}
    if include_measured and names:
        names |= set(_MEASURED)
    return sorted(names)


def preset_kind(loss: nn.Module) -> str:
    kind = getattr(loss, "preset_kind", None)
    if not isinstance(kind, str):
        kinds = sorted({k for _, k in _REGISTRY})
        raise TypeError(
            f"`loss` of type {type(loss).__name__} has no `preset_kind`; set it to one of {kinds} to use presets"
        )
    return kind


def describe(name: str, kind: str) -> str:
    if name in _MEASURED:
        return _MEASURED[name].description
    return _REGISTRY[name, kind].description


def entry(name: str, kind: str) -> PresetEntry:
    if (name, kind) not in _REGISTRY:
        known = list_presets(kind, include_measured=False)
        raise ValueError(f"unknown preset {name!r} for {kind} losses; known: {known}, measured: {sorted(_MEASURED)}")
    return _REGISTRY[name, kind]
