"""Reference ("exact") losses that every wrapper and benchmark is measured against."""

from .betti_matching import BettiMatchingLoss
from .lpips import LPIPSLoss
from .perceptual import PerceptualLoss
from .topological import TopologicalLoss

__all__ = ["BettiMatchingLoss", "LPIPSLoss", "PerceptualLoss", "TopologicalLoss"]
