"""Small synthetic masks and predictions shared by the tests (seeded, no downloads)."""

import torch


def ring(size: int = 32, outer: int = 8, width: int = 3) -> torch.Tensor:
    """A square ring (beta_0 = 1, beta_1 = 1) as a (1, 1, size, size) float mask."""
    m = torch.zeros(1, 1, size, size)
    m[..., outer : size - outer, outer : size - outer] = 1
    m[..., outer + width : size - outer - width, outer + width : size - outer - width] = 0
    return m


def soft_prediction(mask: torch.Tensor, seed: int = 0, noise: float = 0.15) -> torch.Tensor:
    """A noisy probability map around ``mask`` (what a network predicts mid-training)."""
    g = torch.Generator().manual_seed(seed)
    p = mask * 0.8 + 0.1 + noise * (torch.rand(mask.shape, generator=g) - 0.5)
    return p.clamp(0, 1)
