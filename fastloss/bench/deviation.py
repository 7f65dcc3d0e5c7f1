"""How far a wrapped loss is from the reference: values, gradients, rankings (:func:`deviation`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..wrappers import BatchSampledLoss, IntervalLoss, LossWrapper, TiledLoss
from .measure import training_step, uses_outside_torch

__all__ = [
    "ReferenceRun",
    "cosine",
    "cycle_deviation",
    "cycle_length",
    "deviation",
    "low_pass",
    "quantiles",
    "reference_run",
    "samples",
    "spearman",
]


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


def cycle_deviation(reference: nn.Module | None, candidate: nn.Module, input: Tensor, target: Tensor | None,
                    steps: int | None = None, reference_step: tuple[float | Tensor, Tensor] | None = None) -> dict:
    """What training sees from a stochastic or gated stack: a copy of ``candidate`` runs ``steps``
    training steps (default: :func:`cycle_length`) on the same ``input, target``; its values and input
    gradients, averaged over them, are compared with one step of ``reference``.

    Returns ``steps``, ``cycle_grad_cosine`` (cosine of the accumulated gradient with the reference's),
    ``cycle_grad_norm_ratio`` (its norm over the reference's: 1 for an unbiased stack), ``cycle_value_bias``
    (mean value minus the reference's, relative to it) and ``step_grad_cosine`` (median and p5 of the
    single steps' cosines, what one step of the stack sees: low for tiles, by design).
    ``reference_step``: the reference's ``(value, input gradient)`` on ``input, target`` where already
    computed (then ``reference`` may be ``None``).
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

    if reference_step is not None:
        ref_value, ref_grad = float(reference_step[0]), reference_step[1].double()
    elif reference is None:
        raise TypeError("`cycle_deviation` needs a `reference` module or a `reference_step`, got neither")
    else:
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

@dataclass
class ReferenceRun:
    """The reference's side of :func:`deviation` over one trajectory, computed once by
    :func:`reference_run` and shared by every candidate compared on it (a deterministic reference gives
    the same figures as stepping a fresh copy beside each candidate, at half the cost).

    ``steps``: the value and input gradient of each training step; ``flops``: torch FLOPs per step
    (``None`` if not counted, as where work runs outside torch); ``outside_torch``: part of its work runs outside torch (FLOPs ``"n/a"``);
    ``ladder_values``: its eval-mode values over the ladder (``None`` without one). Holds one gradient per
    step: the size of the trajectory it was run on.
    """

    steps: list[tuple[Tensor, Tensor]]
    flops: float | None
    outside_torch: bool
    ladder_values: list[float] | None


def _counted(loss: nn.Module, x: Tensor, t: Tensor | None, count: bool) -> tuple[Tensor, Tensor, float]:
    """One training step of ``loss`` and its torch FLOPs (0 when not counted)."""
    if not count:
        return (*training_step(loss, x, t), 0.0)
    with FlopCounterMode(display=False) as counter:
        value, grad = training_step(loss, x, t)
    return value, grad, float(counter.get_total_flops())


def reference_run(
    reference: nn.Module,
    trajectory: Sequence[tuple[Tensor, Tensor | None]],
    ladder: tuple[Tensor, Sequence[Tensor]] | None = None,
    count_flops: bool = False,
) -> ReferenceRun:
    """Step ``reference`` (in training mode, from where it is) through ``trajectory`` once and keep what
    :func:`deviation` compares candidates with; pass the result as its ``reference``."""
    outside = uses_outside_torch(reference)
    count = count_flops and not outside
    steps, total = [], 0.0
    reference.train()
    for x, t in trajectory:
        value, grad, flops = _counted(reference, x, t, count)
        steps.append((value, grad))
        total += flops
    ladder_values = None
    if ladder is not None:
        target, preds = ladder
        reference.eval()
        with torch.no_grad():
            ladder_values = [float(reference(p, target)) for p in preds]
    return ReferenceRun(steps, total / max(1, len(steps)) if count else None, outside, ladder_values)


def _stack_gain(loss: nn.Module) -> float:
    return loss.stack_gain() if isinstance(loss, LossWrapper) else 1.0


def deviation(
    reference: nn.Module | ReferenceRun,
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
    ``reference`` may be a :class:`ReferenceRun` of the same trajectory (and ladder, and ``count_flops``),
    so that comparing many candidates steps the reference once.

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
    if isinstance(reference, ReferenceRun):
        ref = reference
        if len(ref.steps) != len(trajectory):
            raise ValueError(f"`reference` is a ReferenceRun of {len(ref.steps)} steps, but `trajectory` has "
                             f"{len(trajectory)}: run `reference_run` on the same trajectory")
        if ladder is not None and ref.ladder_values is None:
            raise ValueError("`ladder` was given but the `reference` ReferenceRun has no ladder values: pass the "
                             "ladder to `reference_run` too")
        if count_flops and ref.flops is None and not ref.outside_torch:
            raise ValueError("`count_flops=True` but the `reference` ReferenceRun did not count FLOPs: pass "
                             "`count_flops=True` to `reference_run` too")
    else:
        ref = reference_run(reference, trajectory, ladder, count_flops)
    values, cosines, lowpass, windows = [], [], [], []
    acc_ref = acc_cand = win_ref = win_cand = None
    computed = 0
    outside_torch = uses_outside_torch(candidate) or ref.outside_torch
    cand_flops = 0.0
    candidate.train()
    for i, ((x, t), (v_ref, g_ref)) in enumerate(zip(trajectory, ref.steps, strict=True)):
        gain = _stack_gain(candidate)
        v_cand, g_cand, f = _counted(candidate, x, t, count_flops and not outside_torch)
        cand_flops += f
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
        out["cycle"] = {**cycle_deviation(None, candidate, *trajectory[0], reference_step=ref.steps[0]),
                        "sampling": samples(candidate)}
    if count_flops:
        n = max(1, len(trajectory))
        out["_flops"] = ("n/a", "n/a") if outside_torch else (ref.flops, cand_flops / n)
    if ladder is not None:
        target, preds = ladder
        candidate.eval()
        with torch.no_grad():
            cand_values = [float(candidate(p, target)) for p in preds]
        out["ladder_spearman"] = spearman(ref.ladder_values, cand_values)
    return out
