"""How far a wrapped loss is from the reference: values, gradients, rankings."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine", "low_pass", "quantiles", "spearman"]


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine similarity of two gradients (1.0 when both are zero, 0.0 when exactly one is)."""
    a, b = a.flatten().double(), b.flatten().double()
    na, nb = a.norm(), b.norm()
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def low_pass(grad: Tensor, factor: int = 4) -> Tensor:
    """Average-pool a gradient ``factor`` times (what downsampling keeps)."""
    pool = F.avg_pool2d if grad.ndim == 4 else F.avg_pool3d
    return pool(grad, factor, ceil_mode=True)


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for v in np.unique(x):  # average ranks for ties
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation of two equally long sequences."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def quantiles(values: list[float], qs: dict[str, float]) -> dict[str, float | None]:
    if not values:
        return dict.fromkeys(qs)
    arr = np.asarray(values, float)
    return {name: float(np.quantile(arr, q)) for name, q in qs.items()}
