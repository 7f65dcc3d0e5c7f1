"""Functional forms of the losses that need no network: the topology loss.

The image losses (:class:`~fastloss.PerceptualLoss`, :class:`~fastloss.LPIPSLoss`) hold a frozen
backbone and are modules only.
"""

from .losses.topological import topological_loss

__all__ = ["topological_loss"]
