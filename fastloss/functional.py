"""Functional forms of the losses (stateless; the modules are thin wrappers around them)."""

from .losses.betti_matching import betti_matching_loss
from .losses.topological import topological_loss

__all__ = ["betti_matching_loss", "topological_loss"]
