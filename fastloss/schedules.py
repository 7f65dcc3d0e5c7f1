"""Weight schedules for :class:`fastloss.ScheduledWeight`: callables ``step -> weight``.

Each takes ``steps_per_epoch``: with it, every position (``start``, ``boundaries``, ``warmup``,
``total``) is in epochs; without it (the default 1) they are in steps. Example: the common "topology
weight 0 for the first 60 epochs, then 1" is ``delayed(start=60, steps_per_epoch=len(loader))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ._validation import check_int, check_number

__all__ = ["Schedule", "constant", "cosine_decay", "delayed", "linear_warmup", "piecewise"]


def _check_number(name: str, value: float) -> float:
    return check_number(name, value, 0.0)


@dataclass(frozen=True)
class Schedule:
    """Base: converts a step to a position in epochs (or steps) and evaluates :meth:`at`."""

    steps_per_epoch: int = 1

    def __post_init__(self) -> None:
        check_int("steps_per_epoch", self.steps_per_epoch, 1, expected="a positive int")

    def __call__(self, step: int) -> float:
        return self.at(step / self.steps_per_epoch)

    def at(self, t: float) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class _Constant(Schedule):
    value: float = 1.0

    def at(self, t: float) -> float:
        return self.value


@dataclass(frozen=True)
class _Piecewise(Schedule):
    boundaries: tuple[float, ...] = ()
    values: tuple[float, ...] = (1.0,)

    def at(self, t: float) -> float:
        return self.values[sum(t >= b for b in self.boundaries)]


@dataclass(frozen=True)
class _Warmup(Schedule):
    start: float = 0.0
    warmup: float = 0.0
    value: float = 1.0

    def at(self, t: float) -> float:
        if t < self.start:
            return 0.0
        if self.warmup == 0:
            return self.value
        return self.value * min(1.0, (t - self.start) / self.warmup)


@dataclass(frozen=True)
class _Cosine(Schedule):
    total: float = 1.0
    value: float = 1.0
    final: float = 0.0
    start: float = 0.0

    def at(self, t: float) -> float:
        if t < self.start:
            return self.value
        progress = min(1.0, (t - self.start) / self.total)
        return self.final + (self.value - self.final) * 0.5 * (1 + math.cos(math.pi * progress))


def constant(value: float = 1.0, steps_per_epoch: int = 1) -> Schedule:
    """Always ``value`` (``steps_per_epoch`` is accepted like every schedule's, and changes nothing)."""
    return _Constant(steps_per_epoch, _check_number("value", value))


def piecewise(boundaries: Sequence[float], values: Sequence[float], steps_per_epoch: int = 1) -> Schedule:
    """``values[i]`` from ``boundaries[i-1]`` on (a step function); ``len(values) == len(boundaries) + 1``.

    >>> s = piecewise([10, 20], [0.0, 0.5, 1.0]); s(0), s(10), s(25)
    (0.0, 0.5, 1.0)
    """
    boundaries = tuple(_check_number("boundaries", b) for b in boundaries)
    values = tuple(_check_number("values", v) for v in values)
    if len(values) != len(boundaries) + 1:
        raise ValueError(f"`values` must have len(boundaries) + 1 = {len(boundaries) + 1} entries, got {len(values)}")
    if list(boundaries) != sorted(boundaries):
        raise ValueError(f"`boundaries` must be increasing, got {list(boundaries)}")
    return _Piecewise(steps_per_epoch, boundaries, values)


def delayed(start: float, value: float = 1.0, steps_per_epoch: int = 1) -> Schedule:
    """0 before ``start``, then ``value`` (e.g. no topology loss for the first 60 epochs)."""
    return _Warmup(steps_per_epoch, _check_number("start", start), 0.0, _check_number("value", value))


def linear_warmup(warmup: float, value: float = 1.0, start: float = 0.0, steps_per_epoch: int = 1) -> Schedule:
    """0 before ``start``, then a linear ramp to ``value`` over ``warmup``, then ``value``.

    >>> s = linear_warmup(4, start=2); [s(t) for t in (0, 2, 4, 6, 9)]
    [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    return _Warmup(
        steps_per_epoch, _check_number("start", start), _check_number("warmup", warmup), _check_number("value", value)
    )


def cosine_decay(
    total: float, value: float = 1.0, final: float = 0.0, start: float = 0.0, steps_per_epoch: int = 1
) -> Schedule:
    """``value`` until ``start``, then a cosine from ``value`` to ``final`` over ``total``, then ``final``."""
    total = _check_number("total", total)
    if total == 0:
        raise ValueError("`total` must be > 0, got 0")
    return _Cosine(
        steps_per_epoch, total, _check_number("value", value), _check_number("final", final), _check_number("start", start)
    )
