"""Reference ("exact") losses that every wrapper and benchmark is measured against."""

from .lpips import LPIPSLoss
from .perceptual import PerceptualLoss
from .topological import TopologicalLoss

__all__ = ["LPIPSLoss", "PerceptualLoss", "TopologicalLoss"]
