"""Functional forms of the losses that need no network: the topology loss.

The image losses (:class:`~fastloss.PerceptualLoss`, :class:`~fastloss.LPIPSLoss`) hold a frozen
backbone and are modules only.
"""

from .losses.betti_matching import betti_matching_loss
from .losses.topological import topological_loss

__all__ = ["betti_matching_loss", "topological_loss"]
