"""How far a wrapped loss is from the reference: values, gradients, rankings (:func:`deviation`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..wrappers import BatchSampledLoss, IntervalLoss, LossWrapper, TiledLoss
from .measure import training_step, uses_outside_torch

__all__ = ["cosine", "cycle_deviation", "cycle_length", "deviation", "low_pass", "quantiles", "samples", "spearman"]


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
    """Average-pool a gradient ``factor`` times (what downsampling keeps); a gradient without two or three
    spatial axes (not ``(N, C, H, W)`` or ``(N, C, D, H, W)``) is returned as it is."""
    if grad.ndim not in (4, 5):
        return grad
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

def _stack_gain(loss: nn.Module) -> float:
    return loss.stack_gain() if isinstance(loss, LossWrapper) else 1.0


def deviation(
    reference: nn.Module,
    candidate: nn.Module,
    trajectory: Sequence[tuple[Tensor, Tensor | None]],
    ladder: tuple[Tensor, Sequence[Tensor]] | None = None,
    count_flops: bool = False,
    cycle: int | None = None,
) -> dict:
    """How far ``candidate`` is from ``reference`` over a training ``trajectory`` (both are stepped through
    it, in training mode, from where they are): the one definition every fastloss figure uses.

    Per step where the candidate computes (stack gain > 0): the value error relative to the reference's
    value (after dividing out the stack's gain; the denominator floored at 1% of the trajectory's median
    reference value, since late in training the reference can approach 0), the cosine of the input
    gradients, the cosine after 4x average pooling (what downsampling keeps). Over the trajectory: the
    cosine of the gradients accumulated over every step (skipped steps included: what IntervalLoss
    promises) and, with ``cycle``, the median and minimum over consecutive windows of ``cycle`` steps of
    the accumulated cosine. With ``ladder=(target, predictions)``: the Spearman correlation of the values
    (eval mode). With ``count_flops``: torch FLOPs per step of both (``"n/a"`` where work runs outside torch).

    Returns a dict: ``computed_steps``, ``loss_rel_error`` (median, p95, max), ``grad_cosine`` (median, p5),
    ``lowpass_grad_cosine`` (median, p5), ``accumulated_grad_cosine``, and where asked ``cycle_grad_cosine``,
    ``ladder_spearman``, ``_flops`` (reference, candidate). For a stochastic or gated stack (``TiledLoss``,
    ``BatchSampledLoss``, ``IntervalLoss``) also ``cycle``: :func:`cycle_deviation` on the trajectory's first
    batch (one whole cycle on the same batch: what the stack adds up to).

    Example:
        >>> import torch
        >>> from fastloss import IntervalLoss
        >>> steps = [(torch.rand(1, 1, 4, 4) + i, torch.zeros(1, 1, 4, 4)) for i in range(4)]
        >>> d = deviation(torch.nn.L1Loss(), IntervalLoss(torch.nn.L1Loss(), every=2), steps)
        >>> d["computed_steps"], d["loss_rel_error"]["max"], round(d["grad_cosine"]["median"], 6)
        (2, 0.0, 1.0)
    """
    values, cosines, lowpass, windows = [], [], [], []
    acc_ref = acc_cand = win_ref = win_cand = None
    computed = 0
    flops = {"reference": 0.0, "candidate": 0.0}
    outside_torch = uses_outside_torch(candidate) or uses_outside_torch(reference)

    def step(which: str, loss: nn.Module, x, t):
        if not count_flops or outside_torch:
            return training_step(loss, x, t)
        with FlopCounterMode(display=False) as counter:
            out = training_step(loss, x, t)
        flops[which] += counter.get_total_flops()
        return out

    for i, (x, t) in enumerate(trajectory):
        gain = _stack_gain(candidate)
        v_ref, g_ref = step("reference", reference, x, t)
        v_cand, g_cand = step("candidate", candidate, x, t)
        acc_ref = g_ref.clone() if acc_ref is None else acc_ref + g_ref
        acc_cand = g_cand.clone() if acc_cand is None else acc_cand + g_cand
        if cycle:
            win_ref = g_ref.clone() if i % cycle == 0 else win_ref + g_ref
            win_cand = g_cand.clone() if i % cycle == 0 else win_cand + g_cand
            if i % cycle == cycle - 1:
                windows.append(cosine(win_cand, win_ref))
        if gain == 0:
            continue
        computed += 1
        values.append((float(v_cand) / gain, float(v_ref)))
        cosines.append(cosine(g_cand, g_ref))
        lowpass.append(cosine(low_pass(g_cand), low_pass(g_ref)))
    floor = max(float(np.median([abs(r) for _, r in values])) * 0.01, 1e-12) if values else 1.0
    errors = [abs(c - r) / max(abs(r), floor) for c, r in values]
    out = {
        "computed_steps": computed,
        "loss_rel_error": quantiles(errors, {"median": 0.5, "p95": 0.95, "max": 1.0}),
        "grad_cosine": quantiles(cosines, {"median": 0.5, "p5": 0.05}),
        "lowpass_grad_cosine": quantiles(lowpass, {"median": 0.5, "p5": 0.05}),
        "accumulated_grad_cosine": cosine(acc_cand, acc_ref) if acc_ref is not None else None,
    }
    if cycle:
        out["cycle_grad_cosine"] = quantiles(windows, {"median": 0.5, "min": 0.0})
    if trajectory and cycle_length(candidate, trajectory[0][0]) > 1:  # stochastic or gated: one whole cycle
        out["cycle"] = {**cycle_deviation(reference, candidate, *trajectory[0]), "sampling": samples(candidate)}
    if count_flops:
        n = max(1, len(trajectory))
        out["_flops"] = ("n/a", "n/a") if outside_torch else (flops["reference"] / n, flops["candidate"] / n)
    if ladder is not None:
        target, preds = ladder
        reference.eval()
        candidate.eval()
        with torch.no_grad():
            ref_values = [float(reference(p, target)) for p in preds]
            cand_values = [float(candidate(p, target)) for p in preds]
        out["ladder_spearman"] = spearman(ref_values, cand_values)
    return out
