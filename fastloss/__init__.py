"""fastloss: make expensive training losses cheap, and measure what it costs in accuracy."""

from . import functional, ph, schedules
from .losses import BettiMatchingLoss, LPIPSLoss, PerceptualLoss, TopologicalLoss
from .presets import list_presets, preset, register_preset
from .wrappers import AMPLoss, CachedPH, DownsampledLoss, IntervalLoss, LossWrapper, ScheduledWeight

__version__ = "0.1.0"

__all__ = [
    "AMPLoss",
    "BettiMatchingLoss",
    "CachedPH",
    "DownsampledLoss",
    "IntervalLoss",
    "LPIPSLoss",
    "LossWrapper",
    "PerceptualLoss",
    "ScheduledWeight",
    "TopologicalLoss",
    "functional",
    "list_presets",
    "ph",
    "preset",
    "register_preset",
    "schedules",
]
