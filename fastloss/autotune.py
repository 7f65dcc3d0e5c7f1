"""``autotune``: choose a wrapper stack by measuring on the user's own machine and batch.

A static preset cannot know the machine it lands on (native bfloat16 or not, how many cores, how
loaded). ``autotune`` measures each candidate — every registered preset of the loss's kind and the
candidates of :func:`register_candidate` (each wrapper alone, knobs that only change speed such as the
topology loss's ``workers`` and PH ``backend``) — against the exact loss, with the benchmark harness's
protocol (:mod:`fastloss.bench.protocol`) and deviation (:func:`fastloss.bench.deviation.deviation`),
on a short trajectory built from the user's ``(input, target)``
(:func:`fastloss.bench.workloads.batch_trajectory`), and picks the fastest that stays within bounds:

- the same computation is not timed twice: a candidate that runs exactly what the reference runs (e.g.
  ``balanced`` where it adds no wrapper) or what another candidate runs is reported so, not timed;
- timing: interleaved rounds, at least ``rounds`` and more (up to ``max_rounds``) while the budget
  allows and a speedup's significance is still open; speedup = reference / candidate per round;
- deviation: per computed step, value error and gradient cosine, and the cosine of the gradients
  accumulated over the trajectory. A candidate *passes* when its median value error is at most
  ``max_loss_error`` and both its median per-step cosine and its accumulated cosine are at least
  ``min_grad_cosine`` (so ``IntervalLoss`` is judged on what it adds up to as well). A sampling stack
  (``TiledLoss``, ``BatchSampledLoss``: one step sees one tile or group by design) is judged on one whole
  cycle instead: value error = the cycle's value bias, both cosines = the cycle's accumulated-gradient cosine;
- *faster* means significantly faster: the distribution-free one-sided 95% lower bound of its median
  speedup lies above 1 (at least 5 rounds are needed for that); a passing candidate that is not is
  reported "passes, not significantly faster";
- early drop: a candidate that would compute in a dtype the device only emulates is dropped without
  running; one whose first timed step is more than ``drop_factor`` times the reference's slowest step is
  dropped after it. ``time_budget`` bounds the whole call: what is not measured by then is reported so;
- candidates that reuse state across visits (``CachedPH(refresh_every > 1)``: a stale pairing) drift
  over far more steps than a short trajectory shows, so they are not offered by default
  (``include_reuse=True`` offers them; judge them end to end, ``python -m benchmarks.e2e``);
- the choice: the passing, significantly faster candidate with the highest median speedup (ties: by
  name), else the exact loss. The result is always an :class:`AutotunedLoss` (also from
  ``preset("auto")``), whose ``describe()`` says what was chosen, on which machine.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from . import hardware
from .losses._feature import FeatureLoss
from .losses._topology import CacheablePH
from .presets import PresetLoss, list_presets, register_measured_preset
from .presets.preset_loss import check_unwrapped
from .wrappers import (
    AMPLoss,
    BatchSampledLoss,
    CachedPH,
    DownsampledLoss,
    IntervalLoss,
    LossWrapper,
    TiledLoss,
)
from .wrappers.base import describe_stack

if TYPE_CHECKING:
    from .bench.results import CandidateResult, Report

__all__ = [
    "AutotuneResult", "AutotunedLoss", "CandidateFactory", "autotune", "choose", "default_candidates",
    "register_candidate",
]


# --- the candidates -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CandidateFactory:
    """A candidate stack for the losses ``applies`` accepts: ``build(loss)`` wraps a copy of the loss.

    ``reuse``: the candidate reuses state across visits of a sample, so its drift shows only over a long
    trajectory; such candidates are offered only with ``include_reuse=True``.
    """

    name: str
    build: Callable[[nn.Module], nn.Module]
    applies: Callable[[nn.Module], bool]
    reuse: bool = False


_CANDIDATES: list[CandidateFactory] = []


def register_candidate(name: str, build: Callable[[nn.Module], nn.Module],
                       applies: Callable[[nn.Module], bool] = lambda loss: True, *, reuse: bool = False) -> None:
    """Offer ``build(copy of loss)`` as autotune candidate ``name`` for every loss ``applies`` accepts
    (replacing a candidate of that name)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}")
    for fn, what in ((build, "build"), (applies, "applies")):
        if not callable(fn):
            raise TypeError(f"`{what}` must be callable, got {type(fn).__name__}")
    _CANDIDATES[:] = [c for c in _CANDIDATES if c.name != name]
    _CANDIDATES.append(CandidateFactory(name, build, applies, reuse))


def _with_config(loss: nn.Module, **changes) -> nn.Module:
    copied = copy.deepcopy(loss)
    copied.config = dataclasses.replace(copied.config, **changes)
    return copied


def _topology(loss: nn.Module) -> bool:
    return getattr(loss, "preset_kind", None) == "topology" and hasattr(loss, "config")


def _cacheable(loss: nn.Module) -> bool:  # a topological prior has no masks to cache by
    return _topology(loss) and isinstance(loss, CacheablePH) and loss.uncacheable_reason() is None


def _default_workers(loss: nn.Module) -> bool:  # knobs that only change speed, unless the user set them
    return _topology(loss) and loss.config.workers is None


register_candidate("DownsampledLoss(2)", lambda loss: DownsampledLoss(loss, factor=2))
register_candidate("IntervalLoss(4)", lambda loss: IntervalLoss(loss, every=4))
register_candidate("AMPLoss", AMPLoss, lambda loss: not _topology(loss))
register_candidate("CachedPH(5)", lambda loss: CachedPH(loss, refresh_every=5), _cacheable, reuse=True)
register_candidate("workers=1", lambda loss: _with_config(loss, workers=1), _default_workers)
register_candidate("CachedPH(1), workers=1", lambda loss: CachedPH(_with_config(loss, workers=1), refresh_every=1),
                   lambda loss: _default_workers(loss) and _cacheable(loss))
# the sampling wrappers (feature losses), judged over one cycle (CandidateResult.summarise)
register_candidate("TiledLoss(3x3)", lambda loss: TiledLoss(loss, 3), lambda loss: isinstance(loss, FeatureLoss))
register_candidate("BatchSampledLoss(k=B/2)", lambda loss: BatchSampledLoss(loss, 0.5),
                   lambda loss: isinstance(loss, FeatureLoss))
register_candidate("backend=cripser", lambda loss: _with_config(loss, backend="cripser"),
                   lambda loss: _topology(loss) and getattr(loss.config, "backend", None) == "auto")


def default_candidates(loss: nn.Module, include_reuse: bool = False) -> dict[str, Callable[[], nn.Module]]:
    """The candidates for ``loss``: its kind's registered presets, then the registered candidates that
    apply to it (those that reuse state across visits only with ``include_reuse``).

    Values are builders (called once each, on a copy of the loss).
    """
    kind = getattr(loss, "preset_kind", None)
    out: dict[str, Callable[[], nn.Module]] = {}
    for name in list_presets(kind, include_measured=False):
        if name != "exact":
            out[f"preset:{name}"] = lambda name=name: PresetLoss(name, kind, copy.deepcopy(loss))
    for c in _CANDIDATES:
        if (include_reuse or not c.reuse) and c.applies(loss):
            out[c.name] = lambda c=c: c.build(copy.deepcopy(loss))
    return out


# --- what autotune returns ----------------------------------------------------------------------------
class AutotunedLoss(LossWrapper):
    """The stack :func:`autotune` chose (the exact loss when nothing passed), saying what and where.

    Computes exactly what its ``loss`` computes; it is what both ``autotune(...).loss`` and
    ``preset("auto", ...)`` return, so the type never depends on the choice.
    """

    transparent = True

    def __init__(self, loss: nn.Module, chosen: str, machine: str) -> None:
        super().__init__(loss)
        self.chosen, self.machine = chosen, machine

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        return self.loss(input, target)

    def summary(self) -> str:
        return f"autotuned {self.chosen!r}"

    def describe(self) -> str:
        """What autotune chose, on which machine, and the stack."""
        return f"autotune chose {self.chosen!r} on {self.machine}: {describe_stack(self.loss)}"

    def get_extra_state(self) -> dict:
        return {"chosen": self.chosen, "machine": self.machine}

    def set_extra_state(self, state: dict) -> None:
        self.chosen, self.machine = state.get("chosen", self.chosen), state.get("machine", self.machine)

    def extra_repr(self) -> str:
        return f"chosen={self.chosen!r}"


@dataclass
class AutotuneResult:
    """What :func:`autotune` measured and chose."""

    loss: AutotunedLoss
    chosen: str
    candidates: list[CandidateResult]
    machine: str
    reference_ms: float | None
    seconds: float
    bounds: tuple[float, float]
    report: Report | None = None

    def table(self) -> str:
        """A markdown table of every candidate (speedup [95% CI], deviation, status), machine named."""
        from .bench.report import fmt, markdown_table

        head = (f"autotune on {self.machine}; reference {fmt(self.reference_ms, '.1f')} ms/step; bounds: loss error "
                f"<= {self.bounds[0]:.1%}, gradient cosine >= {self.bounds[1]}; chose {self.chosen!r}; "
                f"{self.seconds:.1f} s")
        return head + ("\n\n" + markdown_table(self.report) if self.report is not None else "")


# --- measuring ----------------------------------------------------------------------------------------
def _check(name: str, value: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"`{name}` must be a number in [{low}, {high}], got {value!r}")
    return float(value)


_SIMPLE = (int, float, str, bool, tuple, type(None), torch.dtype)


def _fingerprint(module: nn.Module) -> str:
    """What a stack computes, for spotting two candidates that run the same thing: below the wrappers that
    only pass through (``transparent``), its ``repr`` and every module's type and plain settings (the
    public attributes that are numbers, strings, tuples, dtypes or dataclasses such as a loss's config)."""
    while isinstance(module, LossWrapper) and module.transparent:
        module = module.loss
    parts = [repr(module)]
    for name, m in module.named_modules():
        settings = sorted((k, repr(v)) for k, v in vars(m).items() if not k.startswith("_") and k != "training"
                          and (isinstance(v, _SIMPLE) or dataclasses.is_dataclass(v)))
        parts.append(f"{name}: {type(m).__module__}.{type(m).__qualname__} {settings}")
    return "\n".join(parts)


#: the part of ``time_budget`` the timing rounds may use; the rest is for the deviation pass
TIMING_SHARE = 0.6


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
    rounds: int = 5,
    max_rounds: int = 20,
    drop_factor: float = 2.0,
    include_defaults: bool | None = None,
    include_reuse: bool = False,
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
        steps: the trajectory's length.
        rounds, max_rounds: at least ``rounds`` interleaved timing rounds, more up to ``max_rounds`` while
            the budget allows and a candidate's speedup is not yet significant either way (a speedup
            needs 5 rounds or more to be called significant).
        drop_factor: drop a candidate whose first timed step is this many times slower than the reference.
        include_reuse: also offer the candidates that reuse state across visits (``CachedPH(5)``).

    Returns:
        :class:`AutotuneResult`: ``.loss`` (an :class:`AutotunedLoss` around the chosen copy, the exact
        loss if nothing passes), ``.candidates``, ``.table()``.

    Example:
        >>> topo = __import__("fastloss").TopologicalLoss(workers=1)
        >>> mask = torch.zeros(2, 1, 24, 24); mask[..., 6:18, 6:18] = 1
        >>> result = autotune(topo, mask * 0.8 + 0.1, mask, time_budget=20, steps=4, rounds=2)
        >>> result.chosen in [c.name for c in result.candidates] + ["exact"]
        True
        >>> result.loss.describe().startswith("autotune chose")
        True
    """
    from .bench import protocol, workloads  # the harness loads when something is measured
    from .bench.deviation import deviation, reference_run
    from .bench.harness import emulated_reason, materialised
    from .bench.results import CandidateResult, Report

    loss = check_unwrapped(loss)
    if not isinstance(input, Tensor):
        raise TypeError(f"`input` must be a torch.Tensor, got {type(input).__name__}")
    _check("max_loss_error", max_loss_error, 0.0, math.inf)
    _check("min_grad_cosine", min_grad_cosine, -1.0, 1.0)
    if isinstance(time_budget, bool) or not isinstance(time_budget, int | float) or not time_budget > 0:
        raise ValueError(f"`time_budget` must be a positive number of seconds, got {time_budget!r}")
    for name, value, low in (("steps", steps, 2), ("rounds", rounds, 1), ("max_rounds", max_rounds, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    _check("drop_factor", drop_factor, 1.0, math.inf)
    if candidates is None and getattr(loss, "preset_kind", None) is None:
        raise TypeError(f"`loss` of type {type(loss).__name__} has no `preset_kind`: pass your own `candidates=`")
    if candidates is not None and not isinstance(candidates, dict):
        raise TypeError(f"`candidates` must be a dict of name -> loss module or builder, got {type(candidates).__name__}")

    builders: dict[str, Callable[[], nn.Module]] = {}
    if candidates is None or include_defaults:
        builders.update(default_candidates(loss, include_reuse))
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
    trajectory = workloads.batch_trajectory(input, target, steps)
    reference = copy.deepcopy(loss).to(device)
    templates: dict[str, nn.Module] = {"exact": reference}
    entries: dict[str, CandidateResult] = {}
    same_as: dict[str, str] = {}  # candidate -> the entry that runs the same computation
    seen = {_fingerprint(reference): "exact"}
    for name, build in builders.items():
        module = materialised(build().to(device), device)
        entry = entries[name] = CandidateResult(name, stack=describe_stack(module), loss=module)
        reason = emulated_reason(module, device)
        if reason is not None:
            entry.status = f"dropped: {reason} (not run)"
            continue
        fp = _fingerprint(module)
        if fp in seen:
            same_as[name] = seen[fp]
            continue
        seen[fp] = name
        templates[name] = module

    def undecided(timings: dict[str, protocol.Timing]) -> bool:
        for key, timing in timings.items():
            ratios = timing.ratios(timings["exact"])
            if key == "exact" or timing.dropped or not ratios:
                continue
            if len(ratios) < max(rounds, 5):
                return True
            low, high = median_bounds(ratios)
            if low <= 1.0 <= high:
                return True
        return False

    timings = protocol.time_trajectories(
        templates, trajectory, "exact", max(rounds, max_rounds), device=device, drop_factor=drop_factor,
        min_rounds=0, deadline=started + TIMING_SHARE * time_budget, stop=lambda t: not undecided(t),
    )

    def fresh(key: str) -> nn.Module:
        return copy.deepcopy(templates[key]).train()

    ref_run = None
    for key, entry in entries.items():
        if entry.dropped:
            continue
        if key in timings:
            timing = timings[key]
            entry.status, entry.first_step_ratio = timing.status, timing.first_step_ratio
            if entry.dropped:
                continue
            entry.round_times, entry.step_times = timing.round_times, timing.steps
            entry.speedups = timing.ratios(timings["exact"])
            if not entry.speedups:
                entry.status = "not measured: time budget"
                continue
        if time.perf_counter() > deadline:
            entry.status = "not measured (deviation): time budget"
            continue
        if ref_run is None:  # the exact loss's side, once for every candidate
            ref_run = reference_run(fresh("exact"), trajectory)
        entry.deviation = deviation(ref_run, copy.deepcopy(entry.loss).train(), trajectory)
        entry.summarise()
        why = entry.passes(max_loss_error, min_grad_cosine)
        if key in same_as:
            other = "the exact loss" if same_as[key] == "exact" else same_as[key]
            entry.status = f"same computation as {other}: not timed" + ("" if why is None else f"; fails: {why}")
        elif why is not None:
            entry.status = f"fails: {why}"
        elif entry.speedup_low is not None and entry.speedup_low > 1.0:
            entry.status = "passes"
        else:
            entry.status = "passes, not significantly faster"

    chosen = choose(list(entries.values()))
    if chosen is None:
        best, name = copy.deepcopy(loss), "exact"
    else:
        chosen.status = "chosen"
        best, name = copy.deepcopy(templates[chosen.name]), chosen.name
    for entry in entries.values():
        entry.loss = None if entry.name != name else best
    ref = CandidateResult("exact", stack=describe_stack(reference))
    ref.round_times, ref.step_times = timings["exact"].round_times, timings["exact"].steps
    ref_ms = 1e3 * float(sorted(ref.round_times)[len(ref.round_times) // 2]) if ref.round_times else None
    report = Report(loss=type(loss).__name__, workload=f"your batch, {steps} steps", device=str(device),
                    threads=torch.get_num_threads(), rounds=len(ref.round_times), steps=steps, reference=ref,
                    candidates=entries, machine=hardware.machine_info(str(device), torch.get_num_threads()),
                    verdicts=True)
    return AutotuneResult(AutotunedLoss(best.train(), name, caps.describe()), name, list(entries.values()),
                          caps.describe(), ref_ms, time.perf_counter() - started, (max_loss_error, min_grad_cosine),
                          report)


def median_bounds(samples: Sequence[float]) -> tuple[float, float]:
    """The distribution-free one-sided 95% lower and upper bounds of the median (``-inf``/``inf`` when
    there are too few samples for one)."""
    from .bench.results import median_lower_bound

    low = median_lower_bound(list(samples))
    high = median_lower_bound([-v for v in samples])
    return (-math.inf if low is None else low, math.inf if high is None else -high)


def choose(candidates: Sequence[CandidateResult]) -> CandidateResult | None:
    """The passing, significantly faster candidate with the highest median speedup (ties by name), or ``None``."""
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
