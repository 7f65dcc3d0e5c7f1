"""The one measurement protocol: interleaved rounds of timed work, compared as per-round ratios.

Every speed figure fastloss prints comes from :func:`interleave` (``compare()``, ``autotune()`` and the
scripts in ``benchmarks/`` are compositions of it):

- every entry runs once untimed first (warm-up: compilation, caches, allocator);
- then rounds; in each round every entry runs once, in an order rotated each round (A B C, B C A,
  ...), with the reference first in round 0 so that each candidate's first step can be compared with
  it; the clock is synchronised (CUDA events after a ``synchronize`` on a GPU, ``perf_counter`` on a
  CPU);
- a round's figure for an entry is its mean time per timed step; an entry's speedup in a round is the
  reference's figure over its own, counted only in rounds where both ran (so both saw the same load);
- early drop: a candidate whose first timed step is more than ``drop_factor`` times the reference's
  slowest step of the first round is dropped after that step, with the measured ratio (a yardstick that a
  stall under load raises, never lowers: the drop is for the tens-of-times slowdowns of emulated dtypes);
- the deadline: from round ``min_rounds`` on, a round that would not fit (predicted from the last
  round's duration) is not started and, once the deadline has passed, entries left in a round are
  skipped; ``min_rounds`` rounds always run.

:func:`time_trajectories` times whole training trajectories of loss modules this way (a fresh copy
per round: cold caches, step 0), :func:`time_calls` single calls of any functions.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .measure import StepClock, training_step

__all__ = ["Dropped", "Timing", "interleave", "time_calls", "time_trajectories"]


class Dropped(Exception):
    """Raised by a runner to drop its entry (the message is the reason)."""


@dataclass
class Timing:
    """One entry's timing: per round, the mean seconds per timed step (``None``: not run that round)."""

    name: str
    rounds: list[float | None] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)  # every timed step, all rounds
    status: str = "measured"  # or "dropped: <reason>"
    first_step_ratio: float | None = None

    @property
    def dropped(self) -> bool:
        return self.status.startswith("dropped")

    @property
    def round_times(self) -> list[float]:
        return [t for t in self.rounds if t is not None]

    def ratios(self, other: Timing) -> list[float]:
        """``other``'s time over this entry's, one per round where both ran (speedup vs ``other``)."""
        return [o / t for t, o in zip(self.rounds, other.rounds, strict=False) if t is not None and o is not None]


Runner = Callable[[int], Sequence[float]]  # round index -> the timed steps of that round


def interleave(
    runners: dict[str, Runner],
    reference: str,
    rounds: int,
    *,
    warmup: dict[str, Callable[[], object]] | None = None,
    min_rounds: int = 1,
    deadline: float | None = None,
    progress: Callable[[str], None] | None = None,
    stop: Callable[[dict[str, Timing]], bool] | None = None,
) -> dict[str, Timing]:
    """Run ``runners`` in interleaved rounds (see the module docstring); returns a :class:`Timing` each.

    ``runners[key](r)`` runs entry ``key`` once in round ``r`` and returns its timed steps (seconds), or
    raises :class:`Dropped`. ``warmup[key]()`` runs before the rounds, untimed. ``deadline`` is a
    ``time.perf_counter()`` value. ``stop(timings)``, asked after each round from ``min_rounds`` on, ends
    the rounds early when it returns True (e.g. once every comparison is decided).
    """
    if reference not in runners:
        raise ValueError(f"`reference` {reference!r} must be one of the runners {list(runners)}")
    tick = progress or (lambda _: None)
    timings = {k: Timing(k) for k in runners}
    names = list(runners)
    for fn in (warmup or {}).values():
        if deadline is None or time.perf_counter() < deadline:
            fn()
    last_round = 0.0
    for r in range(rounds):
        started = time.perf_counter()
        if deadline is not None and r >= min_rounds and started + last_round > deadline:
            break
        order = [reference, *[k for k in names if k != reference]] if r == 0 else names[r % len(names):] + names[: r % len(names)]
        for key in order:
            timing = timings[key]
            timing.rounds.append(None)
            if timing.dropped:
                continue
            if deadline is not None and r >= min_rounds and time.perf_counter() > deadline:
                continue
            tick(f"{key}: timing round {r + 1}/{rounds}")
            try:
                steps = list(runners[key](r))
            except Dropped as why:
                timing.status = f"dropped: {why}"
                continue
            timing.steps += steps
            timing.rounds[-1] = sum(steps) / len(steps)
        last_round = time.perf_counter() - started
        if timings[reference].rounds[-1] is None:  # no reference this round: nothing more can be compared
            break
        if stop is not None and r + 1 >= min_rounds and stop(timings):
            break
    return timings


def time_trajectories(
    templates: dict[str, nn.Module],
    trajectory: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    reference: str,
    rounds: int,
    *,
    device: torch.device,
    drop_factor: float | None = None,
    droppable: Sequence[str] | None = None,
    min_rounds: int = 1,
    deadline: float | None = None,
    progress: Callable[[str], None] | None = None,
    stop: Callable[[dict[str, Timing]], bool] | None = None,
) -> dict[str, Timing]:
    """Time whole training trajectories (forward + backward per step) of loss ``templates`` in interleaved
    rounds: each round runs a fresh deep copy of each template (cold caches, step 0) over ``trajectory``.

    ``drop_factor``: drop an entry of ``droppable`` (default: all but the reference) whose first timed
    step is more than this many times the reference's slowest step over its first round.
    """
    clock = StepClock(device)
    droppable = set(templates) - {reference} if droppable is None else set(droppable)
    yardstick: list[float] = []  # the reference's slowest step in round 0 (stalls under load raise it, never lower it)
    first_ratios: dict[str, float] = {}

    def fresh(key: str) -> nn.Module:
        return copy.deepcopy(templates[key]).train()

    def runner(key: str) -> Runner:
        def run(r: int) -> list[float]:
            loss = fresh(key)
            times = []
            for x, t in trajectory:
                times.append(clock(lambda x=x, t=t: training_step(loss, x, t)))
                if r == 0 and len(times) == 1 and key != reference and yardstick:
                    ratio = times[0] / yardstick[0]
                    first_ratios[key] = ratio
                    if drop_factor is not None and key in droppable and ratio > drop_factor:
                        raise Dropped(f"first timed step {ratio:.1f}x slower than the reference (limit {drop_factor:g}x)")
            if r == 0 and key == reference:
                yardstick.append(max(times))
            return times

        return run

    x0, t0 = trajectory[0]
    timings = interleave(
        {k: runner(k) for k in templates}, reference, rounds,
        warmup={k: (lambda k=k: training_step(fresh(k), x0, t0)) for k in templates},
        min_rounds=min_rounds, deadline=deadline, progress=progress, stop=stop,
    )
    for key, ratio in first_ratios.items():
        timings[key].first_step_ratio = ratio
    return timings


def time_calls(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    *,
    device: torch.device | str = "cpu",
    calls: int = 1,
    reference: str | None = None,
    warmup: bool = True,
) -> dict[str, Timing]:
    """Time single calls of ``fns`` in interleaved rounds (``calls`` timed calls each per round, after one
    untimed warm-up call unless ``warmup=False``); ``reference``: the entry the others' ratios are taken
    against (default: the first)."""
    clock = StepClock(torch.device(device))
    runners = {k: (lambda r, fn=fn: [clock(fn) for _ in range(calls)]) for k, fn in fns.items()}
    return interleave(runners, reference or next(iter(fns)), rounds, warmup=dict(fns) if warmup else None)
