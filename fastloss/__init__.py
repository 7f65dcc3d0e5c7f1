"""fastloss: make expensive training losses cheap, and measure what it costs in accuracy."""

from . import functional
from .losses import LPIPSLoss, PerceptualLoss, TopologicalLoss

__version__ = "0.1.0"

__all__ = ["LPIPSLoss", "PerceptualLoss", "TopologicalLoss", "functional"]
