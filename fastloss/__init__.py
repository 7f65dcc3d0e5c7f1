"""fastloss: make expensive training losses cheap, and measure what it costs in accuracy."""

from . import functional, hardware, ph, schedules
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

__version__ = "0.2.0"

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
    "functional",
    "hardware",
    "list_presets",
    "ph",
    "preset",
    "register_preset",
    "schedules",
    "unregister_preset",
]
