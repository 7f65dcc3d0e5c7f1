"""``compare``: speed and deviation of wrapped losses against the reference, side by side, in one run.

Protocol (recorded in every report):

- the workload's trajectory is materialised on the device first (data generation is never timed);
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
  ``drop_factor`` times the reference's is dropped after that step. Both are reported with the reason
  (and the measured ratio), never silently omitted;
- ``time_budget`` (seconds, optional): timing rounds stop early once another round would not fit, but
  never before ``min_rounds``; the report says how many rounds ran.

Deviation is measured in a separate, untimed pass over the same trajectory: per step, the candidate's
value divided by its stack gain (IntervalLoss compensation, schedule weight) against the reference's
value (relative error, the denominator floored at 1% of the trajectory's median reference value), the cosine of the input gradients, the cosine after 4x average pooling (what downsampling
keeps), the cosine of gradients accumulated over the trajectory (what IntervalLoss promises), and the
Spearman correlation of values (eval mode) over the workload's degradation ladder. Torch FLOPs per step
are counted in the same pass (``"n/a"`` where part of the work runs outside torch, e.g. PH on the CPU).
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .. import hardware
from ..losses._feature import FeatureLoss
from ..wrappers import AMPLoss, CachedPH, LossWrapper
from .deviation import cosine, low_pass, quantiles, spearman
from .measure import StepClock, peak_memory, training_step, uses_outside_torch
from .results import CandidateResult, Report
from .workloads import Workload

__all__ = ["CandidateResult", "Report", "compare", "emulated_reason", "materialised"]

def emulated_reason(loss: nn.Module, device: torch.device) -> str | None:
    """Why ``loss`` would compute in a dtype ``device`` only emulates (``None`` if it would not).

    Looks at what can be known before running: an :class:`~fastloss.AMPLoss` with an explicit dtype and
    a feature loss whose backbone was cast to a low precision.
    """
    caps = hardware.capabilities(device)
    for m in loss.modules():
        dtype = None
        if isinstance(m, AMPLoss) and m.dtype is not None:
            dtype = m.dtype
        elif isinstance(m, FeatureLoss) and m.compute_dtype in (torch.float16, torch.bfloat16):
            dtype = m.compute_dtype
        if dtype is not None and not caps.is_native(dtype):
            return f"{str(dtype).replace('torch.', '')} is emulated on {caps.device} ({caps.name})"
    return None


def materialised(loss: nn.Module, device: torch.device) -> nn.Module:
    """Let every wrapper in ``loss`` build what it builds lazily for ``device`` (a preset resolves its
    stack), so that exists, gains included, before timing; returns ``loss``."""
    for m in list(loss.modules()):
        if isinstance(m, LossWrapper):
            m.materialise(device)
    return loss


def _stack_gain(loss: nn.Module) -> float:
    return loss.stack_gain() if isinstance(loss, LossWrapper) else 1.0


def _cache_info(loss: nn.Module) -> dict | None:
    caches = [m.cache_info() for m in loss.modules() if isinstance(m, CachedPH)]
    return caches[0] if caches else None


def _deviation(reference: nn.Module, candidate: nn.Module, trajectory, ladder, count_flops: bool = False) -> dict:
    values, cosines, lowpass = [], [], []
    acc_ref = acc_cand = None
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

    for x, t in trajectory:
        gain = _stack_gain(candidate)
        v_ref, g_ref = step("reference", reference, x, t)
        v_cand, g_cand = step("candidate", candidate, x, t)
        acc_ref = g_ref.clone() if acc_ref is None else acc_ref + g_ref
        acc_cand = g_cand.clone() if acc_cand is None else acc_cand + g_cand
        if gain == 0:
            continue
        computed += 1
        values.append((float(v_cand) / gain, float(v_ref)))
        cosines.append(cosine(g_cand, g_ref))
        lowpass.append(cosine(low_pass(g_cand), low_pass(g_ref)))
    # relative to the step's reference value, floored at 1% of the trajectory's median |reference|
    # (late in training the reference can approach 0, where a per-step ratio means nothing)
    floor = max(float(np.median([abs(r) for _, r in values])) * 0.01, 1e-12) if values else 1.0
    errors = [abs(c - r) / max(abs(r), floor) for c, r in values]
    out = {
        "computed_steps": computed,
        "loss_rel_error": quantiles(errors, {"median": 0.5, "p95": 0.95, "max": 1.0}),
        "grad_cosine": quantiles(cosines, {"median": 0.5, "p5": 0.05}),
        "lowpass_grad_cosine": quantiles(lowpass, {"median": 0.5, "p5": 0.05}),
        "accumulated_grad_cosine": cosine(acc_cand, acc_ref) if acc_ref is not None else None,
    }
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
    """Measure every candidate against ``reference`` on ``workload``; see the module docstring.

    ``candidates`` maps a name to a wrapped loss (used as a template: each measurement deep-copies it,
    so caches and steps start fresh). ``baselines`` maps a name to another reference to report speedups
    against. ``drop_factor=None`` disables the early drop.
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
        results = {k: CandidateResult(k) for k in templates}
        clock = StepClock(device)

        def fresh(key: str) -> nn.Module:
            return copy.deepcopy(templates[key]).train()

        for key in candidates:  # known before running: a dtype the device only emulates
            reason = emulated_reason(templates[key], device)
            if reason is not None:
                results[key].status = f"dropped: {reason} (typically tens of times slower; not run)"
        for key in templates:  # warm-up: one step of each
            if not results[key].dropped:
                x, t = trajectory[0]
                training_step(fresh(key), x, t)
        names = list(templates)
        ref_first: float | None = None
        done = 0
        for r in range(rounds):
            round_started = time.perf_counter()
            order = names[r % len(names) :] + names[: r % len(names)]
            if r == 0:  # the reference first, so every candidate's first step can be compared with it
                order = ["reference", *[k for k in names if k != "reference"]]
            for key in order:
                res = results[key]
                if res.dropped:
                    continue
                tick(f"{key}: timing round {r + 1}/{rounds}")
                loss = fresh(key)
                times = []
                for x, t in trajectory:
                    times.append(clock(lambda loss=loss, x=x, t=t: training_step(loss, x, t)))
                    if len(times) == 1 and r == 0:
                        if key == "reference":
                            ref_first = times[0]
                        elif ref_first:
                            res.first_step_ratio = times[0] / ref_first
                            if drop_factor is not None and res.first_step_ratio > drop_factor and key in candidates:
                                res.status = (f"dropped: first timed step {res.first_step_ratio:.1f}x slower than "
                                              f"the reference (limit {drop_factor:g}x)")
                                break
                if res.dropped:
                    continue
                res.step_times += times
                res.round_times.append(sum(times) / len(times))
            done = r + 1
            elapsed = time.perf_counter() - started
            if time_budget is not None and done >= min_rounds and done < rounds:
                if elapsed + (time.perf_counter() - round_started) > time_budget:
                    break
        ref = results.pop("reference")
        base_results = {k: results.pop(k) for k in baselines}
        for res in [*results.values(), *base_results.values()]:
            if res.dropped:
                continue
            res.speedups = [a / b for a, b in zip(ref.round_times, res.round_times, strict=True)]
            for bname, bres in base_results.items():
                if bres is not res:
                    res.speedups_vs[bname] = [a / b for a, b in zip(bres.round_times, res.round_times, strict=True)]

        ladder_data = None
        if ladder:
            target, preds, _ = workload.ladder()
            ladder_data = (target.to(device), [p.to(device) for p in preds])
        for key, res in [*base_results.items(), *results.items()]:
            if res.dropped:
                continue
            tick(f"{key}: deviation, memory, FLOPs")
            candidate = fresh(key)
            res.deviation = _deviation(fresh("reference"), candidate, trajectory, ladder_data, count_flops=flops)
            ref_flops, res.flops_per_step = res.deviation.pop("_flops", (None, None))
            if ref.flops_per_step is None:
                ref.flops_per_step = ref_flops
            res.cache = _cache_info(candidate)
        for key, res in [("reference", ref), *base_results.items(), *results.items()]:
            if not res.dropped:
                x, t = trajectory[0]
                loss = fresh(key)
                res.memory_bytes = peak_memory(lambda loss=loss, x=x, t=t: training_step(loss, x, t), device)
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
