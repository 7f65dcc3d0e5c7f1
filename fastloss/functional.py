"""Functional forms of the losses (stateless; the modules are thin wrappers around them)."""

from .losses.topological import topological_loss

__all__ = ["topological_loss"]
