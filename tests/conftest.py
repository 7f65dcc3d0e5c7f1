"""Test fixtures; the shared shapes live in shapes.py (importable from spawned processes too)."""

import pytest
import torch
from shapes import ring

torch.set_num_threads(1)


@pytest.fixture
def ring_mask() -> torch.Tensor:
    return ring()
