"""How far a wrapped loss is from the reference: values, gradients, rankings."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..wrappers import BatchSampledLoss, IntervalLoss, LossWrapper, TiledLoss

__all__ = ["cosine", "cycle_deviation", "cycle_length", "low_pass", "quantiles", "samples", "spearman"]


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


def samples(loss: nn.Module) -> bool:
    """Whether a stack samples (``TiledLoss``, ``BatchSampledLoss``): one step sees part of the loss by design,
    so its deviation is judged over a cycle (:func:`cycle_deviation`), not per step."""
    return isinstance(loss, LossWrapper) and any(isinstance(w, (TiledLoss, BatchSampledLoss)) for w in loss.wrappers())


def cycle_length(loss: nn.Module, input: Tensor) -> int:
    """Training steps after which a stochastic or gated stack has visited everything once: the product of
    its wrappers' periods (``IntervalLoss``: ``every``; ``TiledLoss``: its tiles for ``input``;
    ``BatchSampledLoss``: its groups for ``input``'s batch); 1 for a deterministic stack."""
    n = 1
    if not isinstance(loss, LossWrapper):
        return n
    for w in loss.wrappers():
        if isinstance(w, IntervalLoss):
            n *= w.every
        elif isinstance(w, TiledLoss):
            n *= len(w.tiles_of(*input.shape[-2:]))
        elif isinstance(w, BatchSampledLoss):
            batch = input.shape[0]
            n *= math.ceil(batch / w.samples(batch))
    return n


def cycle_deviation(reference: nn.Module, candidate: nn.Module, input: Tensor, target: Tensor | None,
                    steps: int | None = None) -> dict:
    """What training sees from a stochastic or gated stack: a copy of ``candidate`` runs ``steps``
    training steps (default: :func:`cycle_length`) on the same ``input, target``; its values and input
    gradients, averaged over them, are compared with one step of ``reference``.

    Returns ``steps``, ``cycle_grad_cosine`` (cosine of the accumulated gradient with the reference's),
    ``cycle_grad_norm_ratio`` (its norm over the reference's: 1 for an unbiased stack), ``cycle_value_bias``
    (mean value minus the reference's, relative to it) and ``step_grad_cosine`` (median and p5 of the
    single steps' cosines, what one step of the stack sees: low for tiles, by design).
    """
    steps = cycle_length(candidate, input) if steps is None else steps
    candidate = copy.deepcopy(candidate)
    candidate.train()

    def grad_of(loss: nn.Module) -> tuple[float, Tensor]:
        leaf = input.detach().clone().requires_grad_()
        value = loss(leaf, target)
        value.sum().backward()
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        return float(value.detach().double().sum()), grad.double()

    ref_value, ref_grad = grad_of(reference)
    values, acc, cosines = [], torch.zeros_like(ref_grad), []
    for _ in range(steps):
        value, grad = grad_of(candidate)
        values.append(value)
        acc += grad
        cosines.append(cosine(grad, ref_grad))
    mean_grad = acc / steps
    ref_norm = float(ref_grad.norm())
    return {
        "steps": steps,
        "cycle_grad_cosine": cosine(mean_grad, ref_grad),
        "cycle_grad_norm_ratio": float(mean_grad.norm()) / ref_norm if ref_norm > 0 else float("nan"),
        "cycle_value_bias": (float(np.mean(values)) - ref_value) / max(abs(ref_value), 1e-12),
        "step_grad_cosine": quantiles(cosines, {"median": 0.5, "p5": 0.05}),
    }
