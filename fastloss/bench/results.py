"""What a measurement produces: one candidate's figures and verdict (:class:`CandidateResult`, the one
result type of ``compare()`` and ``autotune()``) and a workload's report (:class:`Report`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .deviation import quantiles

__all__ = ["PERCENTILES", "CandidateResult", "Report", "median_lower_bound"]

PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


def median_lower_bound(samples: list[float], confidence: float = 0.95) -> float | None:
    """A distribution-free one-sided lower confidence bound of the median of ``samples``: the k-th
    smallest sample, k the largest with ``P(Binomial(n, 1/2) < k) <= 1 - confidence``. ``None`` when
    there are too few samples for any (at 95%: fewer than 5; all 5 above 1 is a 97% claim)."""
    n, alpha = len(samples), 1 - confidence
    k, below = 0, 0.0
    while k < n:
        below += math.comb(n, k) / 2**n  # P(X < k + 1)
        if below > alpha:
            break
        k += 1
    return float(sorted(samples)[k - 1]) if k >= 1 else None


@dataclass
class CandidateResult:
    """One candidate's measurements (per-round speedups, step times, deviation, memory, FLOPs) and, from
    :func:`fastloss.autotune`, its verdict.

    ``speedup``, ``ci95``, ``speedup_low`` (the one-sided 95% lower bound of the median speedup),
    ``loss_error``, ``grad_cosine`` and ``accumulated_cosine`` are the headline figures, filled from the
    raw measurements by :meth:`summarise` (for a sampling stack, ``TiledLoss`` or ``BatchSampledLoss``, from
    its deviation over one cycle: ``deviation["cycle"]``).
    """

    name: str
    stack: str = ""  # the stack in one line (LossWrapper.describe)
    status: str = "measured"  # "measured", "dropped: ...", "not measured: ...", or autotune's verdict
    round_times: list[float] = field(default_factory=list)  # mean seconds per step, one per round
    step_times: list[float] = field(default_factory=list)  # every timed step, all rounds
    speedups: list[float] = field(default_factory=list)  # reference / candidate, one per round both ran
    deviation: dict = field(default_factory=dict)
    memory_bytes: int | None = None
    flops_per_step: float | str | None = None
    cache: dict | None = None
    speedups_vs: dict[str, list[float]] = field(default_factory=dict)  # baseline name -> per-round speedups
    first_step_ratio: float | None = None  # first timed step / the reference's slowest step
    speedup: float | None = None
    ci95: tuple[float, float] | None = None
    speedup_low: float | None = None
    loss_error: float | None = None  # median relative value error
    grad_cosine: float | None = None  # median per computed step
    accumulated_cosine: float | None = None
    loss: nn.Module | None = field(default=None, repr=False)  # autotune: the chosen stack

    @property
    def dropped(self) -> bool:
        return self.status.startswith("dropped")

    @property
    def rounds(self) -> int:
        return len(self.speedups)

    def summarise(self) -> CandidateResult:
        """Fill the headline figures from the raw measurements; returns ``self``."""
        if self.speedups:
            s = self.speedup_summary()
            self.speedup, self.ci95, self.speedup_low = s["median"], tuple(s["ci95"]), s["lower95"]
        d = self.deviation
        if d:
            self.loss_error = d.get("loss_rel_error", {}).get("median")
            self.grad_cosine = d.get("grad_cosine", {}).get("median")
            self.accumulated_cosine = d.get("accumulated_grad_cosine")
            cycle = d.get("cycle")
            if cycle and cycle.get("sampling"):  # one step sees one tile / group by design: the cycle is the headline
                self.loss_error = abs(cycle["cycle_value_bias"])
                self.grad_cosine = self.accumulated_cosine = cycle["cycle_grad_cosine"]
        return self

    def passes(self, max_loss_error: float, min_grad_cosine: float) -> str | None:
        """``None`` if the deviation is within the bounds, else why not."""
        if self.loss_error is None or self.grad_cosine is None:
            return "no deviation measured"
        if self.loss_error > max_loss_error:
            return f"loss error {self.loss_error:.2%} > {max_loss_error:.2%}"
        if self.grad_cosine < min_grad_cosine:
            return f"gradient cosine {self.grad_cosine:.3f} < {min_grad_cosine}"
        if self.accumulated_cosine is not None and self.accumulated_cosine < min_grad_cosine:
            return f"accumulated gradient cosine {self.accumulated_cosine:.3f} < {min_grad_cosine}"
        return None

    def speedup_summary(self, seed: int = 0, against: str | None = None) -> dict:
        """Median, bootstrap 95% interval (descriptive), distribution-free one-sided 95% lower bound
        (``lower95``, ``None`` below 5 rounds), range and samples of the per-round speedups."""
        s = np.asarray(self.speedups if against is None else self.speedups_vs.get(against, []))
        rng = np.random.default_rng(seed)
        boot = np.median(rng.choice(s, size=(2000, len(s))), axis=1) if len(s) else np.array([np.nan])
        return {
            "median": float(np.median(s)) if len(s) else None,
            "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            "lower95": median_lower_bound([float(v) for v in s]),
            "min": float(s.min()) if len(s) else None,
            "max": float(s.max()) if len(s) else None,
            "samples": [float(v) for v in s],
        }

    def step_summary(self) -> dict:
        return {k: v * 1e3 if v is not None else None for k, v in quantiles(self.step_times, PERCENTILES).items()}


@dataclass
class Report:
    """The result of :func:`fastloss.bench.compare` (and of the measuring part of :func:`fastloss.autotune`):
    one reference and its candidates on one workload, with the machine it ran on."""

    loss: str
    workload: str
    device: str
    threads: int
    rounds: int
    steps: int
    reference: CandidateResult
    candidates: dict[str, CandidateResult]
    notes: list[str] = field(default_factory=list)
    baselines: dict[str, CandidateResult] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    verdicts: bool = False  # autotune's: the table shows each candidate's status

    @property
    def protocol(self) -> str:
        return (
            f"interleaved rounds (order rotated each round), {self.rounds} rounds x {self.steps} training steps "
            f"(forward + backward) per loss, fresh copy per round, 1 warm-up step, torch threads={self.threads}, "
            f"device={self.device}, synchronised clock"
        )
