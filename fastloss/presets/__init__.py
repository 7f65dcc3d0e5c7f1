"""Presets: named wrapper stacks per kind of loss, resolved against the device they run on (timm-style registry).

``preset(name, loss)`` returns a :class:`PresetLoss`: a wrapper around a *copy* of ``loss`` whose stack
is built at its first call, for the input's device, by the preset's *policy* (a builder that sees the
device's :class:`~fastloss.hardware.Capabilities`). A perceptual ``balanced`` preset, for example, casts
the backbone to bfloat16 once on a CPU with native bfloat16 and keeps float32 on an AVX2-only CPU,
where bfloat16 is emulated and tens of times slower. The resolved stack is visible (``repr``,
:meth:`PresetLoss.describe`) and saved in ``state_dict`` (the capabilities it was resolved for), so a
resumed run resolves the same way; a stack that moves to another device is resolved again.

``list_presets()`` lists what is known; ``register_preset(name, kind, builder)`` adds one (``builder``
takes the loss, or the loss and the capabilities). A loss's kind is its ``preset_kind`` attribute
(``"topology"`` for :class:`TopologicalLoss`, ``"perceptual"`` for :class:`PerceptualLoss` and
:class:`LPIPSLoss`); set it on your own loss class to use the presets of that kind. ``"auto"`` picks a
stack by measurement on the user's machine and batch (:func:`fastloss.autotune`, which registers it).

Presets never override a setting the user gave explicitly (``workers``, ``backend``,
``channels_last``, ``compute_dtype``).

The package: :mod:`~fastloss.presets.registry` (names, kinds, builders; measured presets such as
``"auto"`` plug in through :func:`register_measured_preset`), :mod:`~fastloss.presets.preset_loss`
(:class:`PresetLoss` and :func:`preset`) and :mod:`~fastloss.presets.policies` (the built-in presets).
"""

from . import policies  # registers the built-in presets
from .policies import perceptual_fast_path, target_cache_bytes
from .preset_loss import PresetLoss, preset
from .registry import (
    _REGISTRY,
    PresetEntry,
    describe,
    entry,
    list_presets,
    preset_kind,
    register_measured_preset,
    register_preset,
    unregister_preset,
)

__all__ = [
    "PresetEntry",
    "PresetLoss",
    "describe",
    "entry",
    "list_presets",
    "perceptual_fast_path",
    "policies",
    "preset",
    "preset_kind",
    "register_measured_preset",
    "register_preset",
    "target_cache_bytes",
    "unregister_preset",
]

_REGISTRY = _REGISTRY  # the registry itself (tests snapshot and restore it)
