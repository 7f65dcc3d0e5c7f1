"""Composable wrappers: each takes a loss module and is itself a loss module, so they nest."""

from .amp import AMPLoss
from .base import LossWrapper
from .batch_sampled import BatchSampledLoss
from .cached_ph import CachedPH
from .cached_target import CachedTarget
from .downsampled import DownsampledLoss
from .interval import IntervalLoss
from .scheduled import ScheduledWeight
from .tiled import TiledLoss

__all__ = ["AMPLoss", "BatchSampledLoss", "CachedPH", "CachedTarget", "DownsampledLoss", "IntervalLoss", "LossWrapper", "ScheduledWeight", "TiledLoss"]
