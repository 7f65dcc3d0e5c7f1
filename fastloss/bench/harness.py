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
- torch runs on ``threads`` threads (``torch.set_num_threads``); PH worker threads are the losses' own.

Deviation is measured in a separate, untimed pass over the same trajectory: per step, the candidate's
value divided by its stack gain (IntervalLoss compensation, schedule weight) against the reference's
value (relative error, the denominator floored at 1% of the trajectory's median reference value), the cosine of the input gradients, the cosine after 4x average pooling (what downsampling
keeps), the cosine of gradients accumulated over the trajectory (what IntervalLoss promises), and the
Spearman correlation of values (eval mode) over the workload's degradation ladder.
"""

from __future__ import annotations

import copy
import platform
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..wrappers import CachedPH, LossWrapper
from .deviation import cosine, low_pass, quantiles, spearman
from .measure import StepClock, flops_per_step, peak_memory, training_step
from .workloads import Workload

__all__ = ["CandidateResult", "Report", "compare"]

PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


@dataclass
class CandidateResult:
    name: str
    round_times: list[float] = field(default_factory=list)  # mean seconds per step, one per round
    step_times: list[float] = field(default_factory=list)  # every timed step, all rounds
    speedups: list[float] = field(default_factory=list)  # reference / candidate, one per round
    deviation: dict = field(default_factory=dict)
    memory_bytes: int | None = None
    flops_per_step: float | str | None = None
    cache: dict | None = None
    description: str = ""

    def speedup_summary(self, seed: int = 0) -> dict:
        s = np.asarray(self.speedups)
        rng = np.random.default_rng(seed)
        boot = np.median(rng.choice(s, size=(2000, len(s))), axis=1) if len(s) else np.array([np.nan])
        return {
            "median": float(np.median(s)) if len(s) else None,
            "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            "min": float(s.min()) if len(s) else None,
            "max": float(s.max()) if len(s) else None,
            "samples": [float(v) for v in s],
        }

    def step_summary(self) -> dict:
        return {k: v * 1e3 if v is not None else None for k, v in quantiles(self.step_times, PERCENTILES).items()}


@dataclass
class Report:
    """The result of :func:`compare`: one reference and its candidates on one workload."""

    loss: str
    workload: str
    device: str
    threads: int
    rounds: int
    steps: int
    reference: CandidateResult
    candidates: dict[str, CandidateResult]
    notes: list[str] = field(default_factory=list)

    @property
    def protocol(self) -> str:
        return (
            f"interleaved rounds (order rotated each round), {self.rounds} rounds x {self.steps} training steps "
            f"(forward + backward) per loss, fresh copy per round, 1 warm-up step, torch threads={self.threads}, "
            f"device={self.device}, synchronised clock"
        )


def _stack_gain(loss: nn.Module) -> float:
    return loss.stack_gain() if isinstance(loss, LossWrapper) else 1.0


def _cache_info(loss: nn.Module) -> dict | None:
    caches = [m.cache_info() for m in loss.modules() if isinstance(m, CachedPH)]
    return caches[0] if caches else None


def _deviation(reference: nn.Module, candidate: nn.Module, trajectory, ladder) -> dict:
    values, cosines, lowpass = [], [], []
    acc_ref = acc_cand = None
    computed = 0
    for x, t in trajectory:
        gain = _stack_gain(candidate)
        v_ref, g_ref = training_step(reference, x, t)
        v_cand, g_cand = training_step(candidate, x, t)
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
) -> Report:
    """Measure every candidate against ``reference`` on ``workload``; see the module docstring.

    ``candidates`` maps a name to a wrapped loss (used as a template: each measurement deep-copies it,
    so caches and steps start fresh).
    """
    if not candidates:
        raise ValueError("`candidates` must name at least one wrapped loss, got an empty dict")
    if rounds < 1:
        raise ValueError(f"`rounds` must be >= 1, got {rounds}")
    device = torch.device(device or "cpu")
    tick = progress or (lambda _: None)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trajectory = [(x.to(device), t.to(device)) for x, t in workload.trajectory()]
        # copies: measuring must neither move nor step the caller's modules
        templates = {k: copy.deepcopy(v).to(device) for k, v in {"reference": reference, **candidates}.items()}
        results = {k: CandidateResult(k) for k in templates}
        clock = StepClock(device)

        def fresh(key: str) -> nn.Module:
            return copy.deepcopy(templates[key]).train()

        for key in templates:  # warm-up: one step of each
            x, t = trajectory[0]
            training_step(fresh(key), x, t)
        names = list(templates)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for key in order:
                tick(f"{key}: timing round {r + 1}/{rounds}")
                loss = fresh(key)
                times = [clock(lambda loss=loss, x=x, t=t: training_step(loss, x, t)) for x, t in trajectory]
                results[key].step_times += times
                results[key].round_times.append(sum(times) / len(times))
        ref = results.pop("reference")
        for res in results.values():
            res.speedups = [a / b for a, b in zip(ref.round_times, res.round_times, strict=True)]

        ladder_data = None
        if ladder:
            target, preds, _ = workload.ladder()
            ladder_data = (target.to(device), [p.to(device) for p in preds])
        for key, res in [("reference", ref), *results.items()]:
            tick(f"{key}: deviation, memory, FLOPs")
            if key != "reference":
                candidate = fresh(key)
                res.deviation = _deviation(fresh("reference"), candidate, trajectory, ladder_data)
                res.cache = _cache_info(candidate)
            x, t = trajectory[0]
            loss = fresh(key)
            res.memory_bytes = peak_memory(lambda loss=loss, x=x, t=t: training_step(loss, x, t), device)
            if flops:
                loss = fresh(key)

                def run(loss=loss) -> int:
                    for x, t in trajectory:
                        training_step(loss, x, t)
                    return len(trajectory)

                res.flops_per_step = flops_per_step(run, loss)
    finally:
        torch.set_num_threads(previous_threads)
    return Report(
        loss=name or type(reference).__name__,
        workload=workload.name,
        device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        threads=threads,
        rounds=rounds,
        steps=len(trajectory),
        reference=ref,
        candidates=results,
        notes=[f"python {platform.python_version()}, torch {torch.__version__}"],
    )
