"""Presets: named, measured wrapper stacks per kind of loss (a timm-style registry).

``preset(name, loss)`` returns a wrapped *copy* of ``loss``; ``list_presets()`` lists what is known;
``register_preset(name, kind, builder)`` adds one. A loss's kind is its ``preset_kind`` attribute
(``"topology"`` for :class:`TopologicalLoss`, ``"perceptual"`` for :class:`PerceptualLoss` and
:class:`LPIPSLoss`); set it on your own loss class to use the presets of that kind.

The built-in stacks and the figures behind them are in the README's preset table, measured with
``python -m benchmarks``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .losses import PerceptualLoss
from .wrappers import AMPLoss, CachedPH, DownsampledLoss, IntervalLoss

__all__ = ["list_presets", "preset", "preset_kind", "register_preset"]

Builder = Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class PresetEntry:
    name: str
    kind: str
    builder: Builder
    description: str


_REGISTRY: dict[tuple[str, str], PresetEntry] = {}


def register_preset(name: str, kind: str, builder: Builder, description: str = "", *, overwrite: bool = False) -> None:
    """Register ``builder`` (a copy of the loss -> wrapped loss) as preset ``name`` for loss kind ``kind``."""
    if not isinstance(name, str) or not name or not isinstance(kind, str) or not kind:
        raise ValueError(f"`name` and `kind` must be non-empty strings, got {name!r} and {kind!r}")
    if not callable(builder):
        raise TypeError(f"`builder` must be callable (loss -> wrapped loss), got {type(builder).__name__}")
    if (name, kind) in _REGISTRY and not overwrite:
        raise ValueError(f"preset {name!r} for kind {kind!r} is already registered (pass overwrite=True)")
    _REGISTRY[name, kind] = PresetEntry(name, kind, builder, description)


def list_presets(kind: str | None = None) -> list[str]:
    """Preset names, for one loss kind or for all."""
    return sorted({n for n, k in _REGISTRY if kind is None or k == kind})


def preset_kind(loss: nn.Module) -> str:
    kind = getattr(loss, "preset_kind", None)
    if not isinstance(kind, str):
        kinds = sorted({k for _, k in _REGISTRY})
        raise TypeError(
            f"`loss` of type {type(loss).__name__} has no `preset_kind`; set it to one of {kinds} to use presets"
        )
    return kind


def describe(name: str, kind: str) -> str:
    return _REGISTRY[name, kind].description


def preset(name: str, loss: nn.Module) -> nn.Module:
    """A wrapped copy of ``loss`` following preset ``name`` (``"exact"``, ``"balanced"``, ``"fastest"``, ...)."""
    if not isinstance(loss, nn.Module):
        raise TypeError(f"`loss` must be an nn.Module, got {type(loss).__name__}")
    kind = preset_kind(loss)
    if (name, kind) not in _REGISTRY:
        raise ValueError(f"unknown preset {name!r} for {kind} losses; known: {list_presets(kind)}")
    return _REGISTRY[name, kind].builder(copy.deepcopy(loss))


def _channels_last(loss: nn.Module) -> nn.Module:
    return loss.use_channels_last() if isinstance(loss, PerceptualLoss) else loss


def _topology_balanced(loss: nn.Module) -> nn.Module:
    # Exact: only the target diagrams are cached. Reusing a prediction's pairing (refresh_every > 1)
    # measured a median gradient cosine of 0.10-0.17 on the suite's trajectory: it fails the contract.
    loss.config = dataclasses.replace(loss.config, workers=None)  # PH of the maps on all cores
    return CachedPH(loss, refresh_every=1)


# How the built-in presets are chosen (figures: README, `python -m benchmarks`, on the CPU suite):
# - balanced: the fastest stack that computes the loss on every step with median gradient cosine >= 0.85
#   and median loss error <= 2%. On a CUDA GPU the perceptual one measured 0.76-1.06x (launch-bound
#   networks, TF32 convolutions already): see the README before relying on it there;
# - fastest: the balanced stack plus every wrapper that keeps the Spearman correlation with the exact
#   loss >= 0.9 over the degradation ladder. DownsampledLoss fails it for topology (max-pooling closes
#   1-pixel breaks: 0.50), so the topology stack has no downsampling.
register_preset("exact", "topology", lambda loss: loss, "no wrapper: the reference loss")
register_preset(
    "balanced", "topology", _topology_balanced, "CachedPH(refresh_every=1) (exact: target diagrams cached), PH on all cores"
)
register_preset(
    "fastest", "topology", lambda loss: IntervalLoss(_topology_balanced(loss), every=4),
    "IntervalLoss(4) o balanced",
)
register_preset("exact", "perceptual", lambda loss: loss, "no wrapper: the reference loss")
register_preset("balanced", "perceptual", lambda loss: AMPLoss(_channels_last(loss)), "AMPLoss, channels_last backbone")
register_preset(
    "fastest", "perceptual",
    lambda loss: IntervalLoss(DownsampledLoss(AMPLoss(_channels_last(loss)), factor=2), every=4),
    "IntervalLoss(4) o DownsampledLoss(2, area) o balanced",
)
