"""Measuring one training step: time (synchronised, CUDA events on GPU) and peak memory; whether FLOPs can be
counted (:func:`uses_outside_torch`; they are counted in :func:`fastloss.bench.deviation.deviation`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["StageTimer", "StepClock", "peak_memory", "training_step", "uses_outside_torch"]


def training_step(loss: nn.Module, input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Forward and backward of ``loss`` w.r.t. ``input`` (a fresh leaf): returns (value, gradient)."""
    x = input.detach().requires_grad_()
    value = loss(x, target)
    if value.requires_grad:
        value.backward()
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    return value.detach(), grad


class StepClock:
    """Times a callable: CUDA events on a GPU (after synchronising), ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000.0
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by torch while ``fn`` runs.

    CUDA: the caching allocator's ``max_memory_allocated`` above the starting level. CPU: the running
    sum, in time order, of every profiler event's own allocations minus frees (``torch.profiler`` with
    ``profile_memory=True``); allocations freed inside one op are netted, so it can under-read.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated(device) - base)
    # kineto writes two lines per profile() to stderr (and an error line on CUDA builds without a GPU):
    # silenced unless the user set a level of their own
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    level = peak = 0
    records = sorted(prof.events(), key=lambda e: e.time_range.start)
    for e in records:
        level += e.self_cpu_memory_usage
        peak = max(peak, level)
    return int(peak) if records else None


def uses_outside_torch(loss: nn.Module) -> bool:
    """Whether part of the loss's work runs outside torch (persistent homology in numba or cripser, a C++
    extension), where FLOPs cannot be counted: a module says so with ``runs_outside_torch = True``."""
    return any(getattr(m, "runs_outside_torch", False) for m in loss.modules())


class StageTimer:
    """Accumulates wall time per named stage of a training step (synchronising CUDA first).

    >>> timer = StageTimer(torch.device("cpu"))
    >>> with timer("forward"):
    ...     _ = torch.ones(3) * 2
    >>> timer.steps = 1; sorted(timer.ms_per_step())
    ['forward']
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = {}
        self.steps = 0

    def __call__(self, stage: str) -> _Stage:
        return _Stage(self, stage)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def ms_per_step(self) -> dict[str, float]:
        return {k: 1e3 * v / max(1, self.steps) for k, v in self.totals.items()}

    def reset(self) -> None:
        self.totals.clear()
        self.steps = 0


class _Stage:
    def __init__(self, timer: StageTimer, stage: str) -> None:
        self.timer, self.stage = timer, stage

    def __enter__(self) -> None:
        self.timer.sync()
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.sync()
        self.timer.totals[self.stage] = self.timer.totals.get(self.stage, 0.0) + time.perf_counter() - self.start
