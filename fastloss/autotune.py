"""``autotune``: choose a wrapper stack by measuring on the user's own machine and batch.

A static preset cannot know the machine it lands on (native bfloat16 or not, how many cores, how
loaded). ``autotune`` measures each candidate — every registered preset of the loss's kind, each
wrapper alone, and knobs that only change speed (the topology loss's ``workers`` and PH ``backend``) —
against the exact loss, with the benchmark harness's protocol and deviation definitions, on a short
trajectory built from the user's ``(input, target)``, and picks the fastest that stays within the
stated bounds:

- the trajectory: ``steps`` training steps built from the batch as an epoch-based run sees it — the
  batch in four flipped variants visited in turn (each target comes back every fourth step; consecutive
  steps see different content), the input moving toward the target (``x_t = (1 - a_t) input + a_t
  target``, ``a_t`` up to 0.25) with fresh smooth noise, the way a prediction drifts in training;
- timing: one warm-up step each, then ``rounds`` interleaved rounds (order rotated), every training step
  timed with a synchronised clock (CUDA events on a GPU); speedup = reference / candidate per round,
  median and bootstrap 95% interval;
- deviation: per computed step, value error (relative, after dividing out the stack's gain) and
  gradient cosine; and the cosine of the gradients accumulated over the trajectory. A candidate passes
  when its median value error is at most ``max_loss_error`` and both its median per-step cosine and its
  accumulated cosine are at least ``min_grad_cosine`` (so ``IntervalLoss`` is judged honestly: exact on
  the steps it computes, and on what it adds up to);
- early drop: a candidate that would compute in a dtype the device only emulates is dropped without
  running; one whose first timed step is more than ``drop_factor`` times the reference's mean step
  (over its first round) is dropped after it. ``time_budget`` bounds the whole call: a candidate not
  measured by then is reported so;
- the choice: the passing candidate with the highest median speedup above 1 (ties: by name), else the
  exact loss. The same measurements always give the same choice.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from . import hardware
from .presets import PresetLoss, list_presets, register_measured_preset
from .presets.preset_loss import check_unwrapped
from .wrappers import AMPLoss, CachedPH, DownsampledLoss, IntervalLoss
from .wrappers.base import describe_stack

__all__ = ["AutotuneCandidate", "AutotuneResult", "autotune", "default_candidates"]


@dataclass
class AutotuneCandidate:
    """One candidate's measurements and verdict."""

    name: str
    stack: str
    status: str = "not measured"
    speedup: float | None = None
    ci95: tuple[float, float] | None = None
    loss_error: float | None = None
    grad_cosine: float | None = None  # median per computed step
    accumulated_cosine: float | None = None
    first_step_ratio: float | None = None
    rounds: int = 0
    loss: nn.Module | None = field(default=None, repr=False)

    def passes(self, max_loss_error: float, min_grad_cosine: float) -> str | None:
        """``None`` if it passes the bounds, else why not."""
        if self.loss_error is None or self.grad_cosine is None:
            return "no deviation measured"
        if self.loss_error > max_loss_error:
            return f"loss error {self.loss_error:.2%} > {max_loss_error:.2%}"
        if self.grad_cosine < min_grad_cosine:
            return f"gradient cosine {self.grad_cosine:.3f} < {min_grad_cosine}"
        if self.accumulated_cosine is not None and self.accumulated_cosine < min_grad_cosine:
            return f"accumulated gradient cosine {self.accumulated_cosine:.3f} < {min_grad_cosine}"
        return None


@dataclass
class AutotuneResult:
    """What :func:`autotune` measured and chose."""

    loss: nn.Module
    chosen: str
    candidates: list[AutotuneCandidate]
    machine: str
    reference_ms: float | None
    seconds: float
    bounds: tuple[float, float]

    def table(self) -> str:
        """A markdown table of every candidate (speedup [95% CI], deviation, status), machine named."""
        lines = [
            f"autotune on {self.machine}; reference {_fmt(self.reference_ms, '.1f')} ms/step; bounds: loss error <= "
            f"{self.bounds[0]:.1%}, gradient cosine >= {self.bounds[1]}; {self.seconds:.1f} s",
            "",
            "| candidate | stack | speedup [95% CI] | loss error | grad cos (median / accumulated) | status |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.candidates:
            ci = f" [{c.ci95[0]:.2f}, {c.ci95[1]:.2f}]" if c.ci95 else ""
            speed = f"{c.speedup:.2f}{ci}" if c.speedup is not None else "-"
            err = f"{c.loss_error:.2%}" if c.loss_error is not None else "-"
            cos = f"{_fmt(c.grad_cosine)} / {_fmt(c.accumulated_cosine)}" if c.grad_cosine is not None else "-"
            lines.append(f"| {c.name} | {c.stack} | {speed} | {err} | {cos} | {c.status} |")
        return "\n".join(lines)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _with_config(loss: nn.Module, **changes) -> nn.Module:
    copied = copy.deepcopy(loss)
    copied.config = dataclasses.replace(copied.config, **changes)
    return copied


def default_candidates(loss: nn.Module) -> dict[str, Callable[[], nn.Module]]:
    """The candidates for ``loss``: its kind's registered presets, each wrapper alone, and speed knobs.

    Values are builders (called once each, on a copy of the loss).
    """
    kind = getattr(loss, "preset_kind", None)
    out: dict[str, Callable[[], nn.Module]] = {}
    for name in list_presets(kind, include_measured=False):
        if name != "exact":
            out[f"preset:{name}"] = lambda name=name: PresetLoss(name, kind, copy.deepcopy(loss))
    topology = kind == "topology" and hasattr(loss, "config")
    out["DownsampledLoss(2)"] = lambda: DownsampledLoss(copy.deepcopy(loss), factor=2)
    out["IntervalLoss(4)"] = lambda: IntervalLoss(copy.deepcopy(loss), every=4)
    if not topology:
        out["AMPLoss"] = lambda: AMPLoss(copy.deepcopy(loss))
    if topology:
        cfg = loss.config
        prior = getattr(cfg, "betti", None) is not None  # a topological prior has no masks to cache by
        if not prior:
            out["CachedPH(5)"] = lambda: CachedPH(copy.deepcopy(loss), refresh_every=5)
        # knobs that only change speed (the values are exact either way), unless the user set them
        if cfg.workers is None:
            out["workers=1"] = lambda: _with_config(loss, workers=1)
            if not prior:
                out["CachedPH(1), workers=1"] = lambda: CachedPH(_with_config(loss, workers=1), refresh_every=1)
        backend = getattr(cfg, "backend", None)
        if backend == "auto":
            out["backend=cripser"] = lambda: _with_config(loss, backend="cripser")
    return out


def _variants(x: Tensor) -> list[tuple[int, ...]]:
    """The flips of the last two axes that keep ``x``'s shape (identity first): four for images and maps."""
    if x.ndim < 2:
        return [()]
    return [(), (-1,), (-2,), (-2, -1)]


def _trajectory(input: Tensor, target: Tensor | None, steps: int, seed: int = 0) -> list[tuple[Tensor, Tensor | None]]:
    """``steps`` training steps built from one batch, as an epoch-based run sees it: the batch in four
    flipped variants visited in turn (so each target comes back every fourth step, as samples do every
    epoch, and consecutive steps see different content, as different batches would), the input drifting
    toward the target with fresh smooth noise each step, within the input's own value range."""
    x0 = input.detach()
    if not x0.is_floating_point():
        return [(x0.clone(), target) for _ in range(steps)]
    g = torch.Generator().manual_seed(seed)
    low, high = float(x0.min()), float(x0.max())
    sigma = 0.1 * float(x0.float().std()) if x0.numel() > 1 else 0.0
    paired = target is not None and target.shape == x0.shape
    flips = _variants(x0) if paired else [()]
    out = []
    for t, a in enumerate(np.linspace(0.0, 0.25, steps)):
        dims = flips[t % len(flips)]
        xt, tt = (x0.flip(dims), target.flip(dims)) if dims else (x0, target)
        x = (1 - a) * xt + a * tt.detach().to(x0.dtype) if paired else xt.clone()
        noise = torch.randn(x0.shape, generator=g).to(x0.dtype)
        if x0.ndim >= 4:  # spatially smooth, like a network's output
            pool = torch.nn.functional.avg_pool2d if x0.ndim == 4 else torch.nn.functional.avg_pool3d
            noise = pool(noise.float(), 5, 1, 2).to(x0.dtype) * 5
        out.append(((x + sigma * noise.to(x0.device)).clamp(low, high), tt))
    return out


def _check(name: str, value: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"`{name}` must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def autotune(
    loss: nn.Module,
    input: Tensor,
    target: Tensor | None = None,
    *,
    max_loss_error: float = 0.02,
    min_grad_cosine: float = 0.85,
    time_budget: float = 60.0,
    candidates: dict[str, nn.Module | Callable[[], nn.Module]] | None = None,
    steps: int = 8,
    rounds: int = 3,
    drop_factor: float = 2.0,
    include_defaults: bool | None = None,
) -> AutotuneResult:
    """Measure candidate stacks of ``loss`` on ``(input, target)`` here and return the best that passes.

    Args:
        loss: the exact (unwrapped) loss.
        input, target: one representative batch (e.g. the first of your loader).
        max_loss_error: largest acceptable median relative error of the value (0.02 = 2%).
        min_grad_cosine: smallest acceptable gradient cosine (median per step and accumulated).
        time_budget: seconds for the whole call; candidates not measured by then are reported so.
        candidates: your own ``{name: wrapped loss or builder}``; with it the defaults are only added
            when ``include_defaults=True``.
        steps, rounds: the trajectory length and the interleaved timing rounds.
        drop_factor: drop a candidate whose first timed step is this many times slower than the reference.

    Returns:
        :class:`AutotuneResult`: ``.loss`` (the chosen wrapped copy, the exact loss if nothing passes),
        ``.candidates``, ``.table()``.

    Example:
        >>> topo = __import__("fastloss").TopologicalLoss(workers=1)
        >>> mask = torch.zeros(2, 1, 24, 24); mask[..., 6:18, 6:18] = 1
        >>> result = autotune(topo, mask * 0.8 + 0.1, mask, time_budget=20, steps=4, rounds=2)
        >>> result.chosen in [c.name for c in result.candidates] + ["exact"]
        True
    """
    from .bench.harness import (  # the harness loads when measuring
        CandidateResult,
        _deviation,
        emulated_reason,
    )
    from .bench.measure import StepClock, training_step

    loss = check_unwrapped(loss)
    if not isinstance(input, Tensor):
        raise TypeError(f"`input` must be a torch.Tensor, got {type(input).__name__}")
    _check("max_loss_error", max_loss_error, 0.0, math.inf)
    _check("min_grad_cosine", min_grad_cosine, -1.0, 1.0)
    if isinstance(time_budget, bool) or not isinstance(time_budget, int | float) or not time_budget > 0:
        raise ValueError(f"`time_budget` must be a positive number of seconds, got {time_budget!r}")
    for name, value, low in (("steps", steps, 2), ("rounds", rounds, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    _check("drop_factor", drop_factor, 1.0, math.inf)
    if candidates is None and getattr(loss, "preset_kind", None) is None:
        raise TypeError(f"`loss` of type {type(loss).__name__} has no `preset_kind`: pass your own `candidates=`")
    if candidates is not None and not isinstance(candidates, dict):
        raise TypeError(f"`candidates` must be a dict of name -> loss module or builder, got {type(candidates).__name__}")

    builders: dict[str, Callable[[], nn.Module]] = {}
    if candidates is None or include_defaults:
        builders.update(default_candidates(loss))
    for name, value in (candidates or {}).items():
        if isinstance(value, nn.Module):
            builders[name] = lambda value=value: copy.deepcopy(value)
        elif callable(value):
            builders[name] = value
        else:
            raise TypeError(f"`candidates[{name!r}]` must be an nn.Module or a builder, got {type(value).__name__}")
    if not builders:
        raise ValueError("`candidates` is empty: nothing to measure")

    started = time.perf_counter()
    deadline = started + time_budget
    device = input.device
    caps = hardware.capabilities(device)
    clock = StepClock(device)
    trajectory = _trajectory(input, target, steps)
    reference = copy.deepcopy(loss).to(device)
    results: dict[str, CandidateResult] = {"exact": CandidateResult("exact")}
    entries: dict[str, AutotuneCandidate] = {}
    templates: dict[str, nn.Module] = {"exact": reference}
    for name, build in builders.items():
        module = build().to(device)
        if isinstance(module, PresetLoss):
            module.resolve(device)
        templates[name] = module
        entries[name] = AutotuneCandidate(name, describe_stack(module), loss=module)
        results[name] = CandidateResult(name)
        reason = emulated_reason(module, device)
        if reason is not None:
            entries[name].status = f"dropped: {reason} (not run)"

    def fresh(key: str) -> nn.Module:
        return copy.deepcopy(templates[key]).train()

    def out_of_time() -> bool:
        return time.perf_counter() > deadline

    def active(key: str) -> bool:
        return key == "exact" or not entries[key].status.startswith("dropped")

    for key in templates:  # warm-up
        if active(key) and not out_of_time():
            training_step(fresh(key), *trajectory[0])
    names = list(templates)
    ref_first = None
    for r in range(rounds):
        order = names if r == 0 else names[r % len(names):] + names[: r % len(names)]
        round_times: dict[str, float] = {}
        for key in order:
            if not active(key) or out_of_time():
                continue
            module = fresh(key)
            times = []
            for x, t in trajectory:
                times.append(clock(lambda module=module, x=x, t=t: training_step(module, x, t)))
                if r == 0 and len(times) == 1 and key != "exact":
                    if ref_first:
                        ratio = times[0] / ref_first
                        entries[key].first_step_ratio = ratio
                        if ratio > drop_factor:
                            entries[key].status = f"dropped: {ratio:.1f}x slower on its first step"
                            break
            if active(key):
                round_times[key] = sum(times) / len(times)
                if key == "exact" and r == 0:
                    ref_first = round_times[key]  # the reference's mean step: a steadier yardstick than one step
        if "exact" not in round_times:
            break
        for key, value in round_times.items():  # a round counts for a candidate timed beside the reference
            results[key].round_times.append(value)
            if key != "exact":
                results[key].speedups.append(round_times["exact"] / value)

    for key, entry in entries.items():
        res = results[key]
        if not active(key):
            continue
        if not res.speedups:
            entry.status = "not measured: time budget"
            continue
        summary = res.speedup_summary()
        entry.speedup, entry.ci95, entry.rounds = summary["median"], tuple(summary["ci95"]), len(res.speedups)
        if out_of_time():
            entry.status = "not measured (deviation): time budget"
            continue
        dev = _deviation(fresh("exact"), fresh(key), trajectory, None)
        entry.loss_error = dev["loss_rel_error"]["median"]
        entry.grad_cosine = dev["grad_cosine"]["median"]
        entry.accumulated_cosine = dev["accumulated_grad_cosine"]
        why = entry.passes(max_loss_error, min_grad_cosine)
        entry.status = "passes" if why is None else f"fails: {why}"

    chosen = choose(list(entries.values()))
    for entry in entries.values():
        if entry.status == "passes" and entry is not chosen and (entry.speedup or 0) <= 1.0:
            entry.status = "passes, not faster"
    if chosen is None:
        best, name = copy.deepcopy(loss), "exact"
    else:
        chosen.status = "chosen"
        best, name = copy.deepcopy(templates[chosen.name]), chosen.name
    for entry in entries.values():
        entry.loss = None if entry.name != name else best
    ref_ms = 1e3 * float(np.median(results["exact"].round_times)) if results["exact"].round_times else None
    return AutotuneResult(best.train(), name, list(entries.values()), caps.describe(), ref_ms,
                          time.perf_counter() - started, (max_loss_error, min_grad_cosine))


def choose(candidates: Sequence[AutotuneCandidate]) -> AutotuneCandidate | None:
    """The passing candidate with the highest median speedup above 1 (ties by name), or ``None``."""
    passing = [c for c in candidates if c.status == "passes" and c.speedup is not None and c.speedup > 1.0]
    if not passing:
        return None
    return sorted(passing, key=lambda c: (-c.speedup, c.name))[0]


def _auto_preset(loss: nn.Module, example: tuple[Tensor, Tensor | None], **kwargs) -> nn.Module:
    """``preset("auto", loss, example=(input, target), **kwargs)``: the stack :func:`autotune` chooses."""
    return autotune(loss, *example, **kwargs).loss


register_measured_preset(
    "auto", _auto_preset,
    "measured on your machine and batch: the fastest candidate within the deviation bounds (fastloss.autotune)",
    "fastloss.autotune",
)
