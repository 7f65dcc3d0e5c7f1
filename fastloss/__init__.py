"""fastloss: make expensive training losses cheap, and measure what it costs in accuracy.

Layers, bottom to top (each imports only from the layers below it; ``tests/integration`` checks it):
``ph``, ``_validation``, ``hardware``, ``schedules`` -> ``losses`` -> ``wrappers`` -> ``presets`` ->
``bench`` -> ``autotune`` -> this package. The benchmark harness (``fastloss.bench``) is imported when
first used (``fastloss.bench`` or a measurement by :func:`autotune`), not by ``import fastloss``.
"""

from . import functional, hardware, ph, schedules
from ._version import __version__ as __version__
from .autotune import AutotuneResult, autotune
from .losses import BettiMatchingLoss, LPIPSLoss, PerceptualLoss, TopologicalLoss
from .presets import PresetLoss, list_presets, preset, register_preset, unregister_preset
from .wrappers import (
    AMPLoss,
    BatchSampledLoss,
    CachedPH,
    CachedTarget,
    DownsampledLoss,
    IntervalLoss,
    LossWrapper,
    ScheduledWeight,
    TiledLoss,
)

__all__ = [
    "AMPLoss",
    "AutotuneResult",
    "BatchSampledLoss",
    "BettiMatchingLoss",
    "CachedPH",
    "CachedTarget",
    "DownsampledLoss",
    "IntervalLoss",
    "LPIPSLoss",
    "LossWrapper",
    "PerceptualLoss",
    "PresetLoss",
    "ScheduledWeight",
    "TiledLoss",
    "TopologicalLoss",
    "autotune",
    "bench",
    "functional",
    "hardware",
    "list_presets",
    "ph",
    "preset",
    "register_preset",
    "schedules",
    "unregister_preset",
]


def __getattr__(name: str):
    if name == "bench":  # the harness: loaded on first use
        import importlib

        return importlib.import_module(".bench", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
