"""``compare``: speed and deviation of wrapped losses against the reference, side by side, in one run.

Protocol (recorded in every report; the timing is :func:`fastloss.bench.protocol.time_trajectories`):

- the workload's trajectory is materialised on the device first (data generation is never timed), and
  every wrapper builds what it builds lazily (:meth:`~fastloss.LossWrapper.materialise`: a preset
  resolves its stack) before anything is timed;
- one warm-up step of every loss, then ``rounds`` rounds; in each round every loss (reference and
  candidates, in an order rotated each round: A B C, B C A, ...) runs the *whole* trajectory from a
  fresh copy (cold caches, step 0), timing each training step (forward + backward w.r.t. the input)
  with a synchronised clock (CUDA events on a GPU). Whole trajectories amortise IntervalLoss and
  CachedPH fairly;
- the speedup of a round is reference time / candidate time over that round; the report gives the
  median over rounds and a bootstrap 95% interval, plus per-step p50/p95/p99;
- torch runs on ``threads`` threads (``torch.set_num_threads``); PH worker threads are the losses' own;
- ``baselines`` (other references, e.g. the seed's cripser-on-1-worker loss) are timed in the same
  interleaved rounds, and every candidate's speedup is also reported against each of them;
- early drop: a candidate that computes in a dtype the device only emulates (see
  :mod:`fastloss.hardware`) is dropped before it runs; one whose first timed step is more than
  ``drop_factor`` times the reference's slowest step (over its first round) is dropped after that step. Both are reported with the reason
  (and the measured ratio), never silently omitted;
- ``time_budget`` (seconds, optional): the whole call's budget, the untimed deviation passes included.
  From round ``min_rounds`` on, timing stops once another round plus what comes after it would not fit
  (predicted from the last round: the deviation, ladder and memory passes cost about
  ``AFTER_TIMING_ROUNDS`` rounds, measured on the default suite); ``min_rounds`` rounds always run, so a
  budget below their cost is overrun, never cut short of a spread. The report says how many rounds ran.

Deviation is measured in a separate, untimed pass over the same trajectory by
:func:`fastloss.bench.deviation.deviation` (the reference stepped through it once, its values and
gradients shared by every candidate; per-step value error and gradient cosines, the cosine of the
gradients accumulated over the trajectory, and the Spearman correlation of values over the workload's
degradation ladder). Torch FLOPs per step are counted in the same pass (``"n/a"`` where part of the work
runs outside torch, e.g. PH on the CPU).
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Callable

import torch
from torch import nn

from .. import hardware
from ..wrappers import CachedPH, LossWrapper
from ..wrappers.base import describe_stack
from .deviation import deviation, reference_run
from .measure import peak_memory, training_step
from .protocol import time_trajectories
from .results import CandidateResult, Report
from .workloads import Workload

__all__ = ["AFTER_TIMING_ROUNDS", "CandidateResult", "Report", "compare", "emulated_reason", "materialised"]

# What the passes after timing (deviation with FLOPs and the ladder, the cycles of sampling stacks, peak
# memory) cost, in timing rounds: 2.2 (LPIPS) to 3.0 (VGG19) on the default suite's perceptual cases (AMD
# EPYC Zen 4, 2 cores), where they are the largest share; the topology cases need less.
AFTER_TIMING_ROUNDS = 3.0


def emulated_reason(loss: nn.Module, device: torch.device) -> str | None:
    """Why ``loss`` would compute in a dtype ``device`` only emulates (``None`` if it would not).

    Looks at what can be known before running: every module's ``declared_compute_dtype()`` (an
    :class:`~fastloss.AMPLoss` with an explicit dtype, a feature loss whose backbone was cast to a low
    precision; a loss of yours can declare one too).
    """
    caps = hardware.capabilities(device)
    for m in loss.modules():
        declared = getattr(m, "declared_compute_dtype", None)
        dtype = declared() if callable(declared) else None
        if dtype is not None and not caps.is_native(dtype):
            return f"{hardware.dtype_name(dtype)} is emulated on {caps.device} ({caps.name})"
    return None


def materialised(loss: nn.Module, device: torch.device) -> nn.Module:
    """Let every wrapper in ``loss`` build what it builds lazily for ``device`` (a preset resolves its
    stack), so that exists, gains included, before timing; returns ``loss``."""
    for m in list(loss.modules()):
        if isinstance(m, LossWrapper):
            m.materialise(device)
    return loss


def _cache_info(loss: nn.Module) -> dict | None:
    caches = [m.cache_info() for m in loss.modules() if isinstance(m, CachedPH)]
    return caches[0] if caches else None


def compare(
    reference: nn.Module,
    candidates: dict[str, nn.Module],
    workload: Workload,
    device: str | torch.device | None = None,
    threads: int = 1,
    rounds: int = 5,
    ladder: bool = True,
    flops: bool = True,
    progress: Callable[[str], None] | None = None,
    name: str | None = None,
    baselines: dict[str, nn.Module] | None = None,
    drop_factor: float | None = 5.0,
    time_budget: float | None = None,
    min_rounds: int = 3,
) -> Report:
    """Measure every candidate against ``reference`` on ``workload``, speed and deviation side by side.

    Args:
        reference: the exact loss.
        candidates: ``{name: wrapped loss}``; each is a template (deep-copied for every measurement, so
            caches and steps start fresh; the caller's modules are never moved or stepped).
        workload: the seeded trajectory and degradation ladder (:mod:`fastloss.bench.workloads`).
        device: where to measure (default CPU); threads: ``torch.set_num_threads`` while measuring.
        rounds: interleaved timing rounds (``time_budget`` may stop earlier, never before ``min_rounds``).
        ladder, flops: also measure the ladder's Spearman correlation / torch FLOPs per step.
        progress: called with a short message as the measurement advances.
        name: the reference's name in the report (default: its class name).
        baselines: other references (``{name: loss}``) timed in the same rounds; every candidate's
            speedup is also reported against each.
        drop_factor: drop a candidate whose first timed step is this many times the reference's mean
            step (``None``: never).
        time_budget: seconds for the whole call, deviation included (see the module docstring); ``None``:
            ``rounds`` rounds. min_rounds: rounds that run whatever the budget.

    Returns:
        :class:`~fastloss.bench.Report` (render it with :func:`~fastloss.bench.markdown_table`,
        :func:`~fastloss.bench.plot`, :func:`~fastloss.bench.write_json`).

    Example:
        >>> import torch
        >>> from fastloss import IntervalLoss
        >>> from fastloss.bench import compare, markdown_table, workloads
        >>> wl = workloads.topology_workload(size=16, batch=1, samples=2, epochs=2)
        >>> loss = torch.nn.MSELoss()
        >>> # drop_factor=None: steps of microseconds, where one slow first step would drop the candidate
        >>> report = compare(loss, {"every 2": IntervalLoss(loss, every=2)}, wl, rounds=1, min_rounds=1,
        ...                  drop_factor=None)
        >>> sorted(report.candidates), report.candidates["every 2"].deviation["computed_steps"]
        (['every 2'], 2)
        >>> "| every 2 |" in markdown_table(report)
        True
    """
    if not candidates:
        raise ValueError("`candidates` must name at least one wrapped loss, got an empty dict")
    if rounds < 1:
        raise ValueError(f"`rounds` must be >= 1, got {rounds}")
    if drop_factor is not None and not drop_factor > 1:
        raise ValueError(f"`drop_factor` must be > 1 or None, got {drop_factor}")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"`time_budget` must be > 0 seconds or None, got {time_budget}")
    baselines = dict(baselines or {})
    clash = set(baselines) & ({"reference"} | set(candidates))
    if clash:
        raise ValueError(f"`baselines` names must differ from the candidates' and 'reference', got {sorted(clash)}")
    device = torch.device(device or "cpu")
    tick = progress or (lambda _: None)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        trajectory = [(x.to(device), t.to(device)) for x, t in workload.trajectory()]
        # copies: measuring must neither move nor step the caller's modules
        everything = {"reference": reference, **baselines, **candidates}
        templates = {k: materialised(copy.deepcopy(v).to(device), device) for k, v in everything.items()}
        results = {k: CandidateResult(k, stack=describe_stack(m)) for k, m in templates.items()}

        def fresh(key: str) -> nn.Module:
            return copy.deepcopy(templates[key]).train()

        for key in candidates:  # known before running: a dtype the device only emulates
            reason = emulated_reason(templates[key], device)
            if reason is not None:
                results[key].status = f"dropped: {reason} (typically tens of times slower; not run)"
        deadline = None if time_budget is None else started + time_budget

        def out_of_time(timings: dict) -> bool:  # one more round and the passes after timing would not fit
            if deadline is None:
                return False
            last = sum(t.rounds[-1] for t in timings.values() if t.rounds and t.rounds[-1] is not None)
            return time.perf_counter() + (1 + AFTER_TIMING_ROUNDS) * last * len(trajectory) > deadline

        timings = time_trajectories(
            {k: m for k, m in templates.items() if not results[k].dropped}, trajectory, "reference", rounds,
            device=device, drop_factor=drop_factor, droppable=list(candidates), min_rounds=min_rounds,
            deadline=deadline, progress=tick, stop=out_of_time,
        )
        for key, timing in timings.items():
            res = results[key]
            res.status, res.first_step_ratio = timing.status, timing.first_step_ratio
            if not res.dropped:
                res.round_times, res.step_times = timing.round_times, timing.steps
        done = len(timings["reference"].round_times)
        ref = results.pop("reference")
        base_results = {k: results.pop(k) for k in baselines}
        for res in [*results.values(), *base_results.values()]:
            if res.dropped:
                continue
            res.speedups = timings[res.name].ratios(timings["reference"])
            for bname in base_results:
                if bname != res.name:
                    res.speedups_vs[bname] = timings[res.name].ratios(timings[bname])

        ladder_data = None
        if ladder:
            target, preds, _ = workload.ladder()
            ladder_data = (target.to(device), [p.to(device) for p in preds])
        tick("reference: deviation pass")
        ref_run = reference_run(fresh("reference"), trajectory, ladder_data, count_flops=flops)  # once for all
        for key, res in [*base_results.items(), *results.items()]:
            if res.dropped:
                continue
            tick(f"{key}: deviation, memory, FLOPs")
            candidate = fresh(key)
            res.deviation = deviation(ref_run, candidate, trajectory, ladder_data, count_flops=flops)
            ref_flops, res.flops_per_step = res.deviation.pop("_flops", (None, None))
            if ref.flops_per_step is None:
                ref.flops_per_step = ref_flops
            res.cache = _cache_info(candidate)
        for key, res in [("reference", ref), *base_results.items(), *results.items()]:
            if not res.dropped:
                x, t = trajectory[0]
                loss = fresh(key)
                res.memory_bytes = peak_memory(lambda loss=loss, x=x, t=t: training_step(loss, x, t), device)
            res.summarise()
    finally:
        torch.set_num_threads(previous_threads)
    return Report(
        loss=name or type(reference).__name__,
        workload=workload.name,
        device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        threads=threads,
        rounds=done,
        steps=len(trajectory),
        reference=ref,
        candidates=results,
        notes=[f"python {platform.python_version()}, torch {torch.__version__}"],
        baselines=base_results,
        machine=hardware.machine_info(str(device), threads),
    )
