"""What a measurement produces: one candidate's figures (:class:`CandidateResult`) and a workload's
report (:class:`Report`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .deviation import quantiles

__all__ = ["PERCENTILES", "CandidateResult", "Report"]

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
    speedups_vs: dict[str, list[float]] = field(default_factory=dict)  # baseline name -> per-round speedups
    status: str = "measured"  # or "dropped: <reason>"
    first_step_ratio: float | None = None  # first timed step / the reference's

    @property
    def dropped(self) -> bool:
        return self.status.startswith("dropped")

    def speedup_summary(self, seed: int = 0, against: str | None = None) -> dict:
        s = np.asarray(self.speedups if against is None else self.speedups_vs.get(against, []))
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
    baselines: dict[str, CandidateResult] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return (
            f"interleaved rounds (order rotated each round), {self.rounds} rounds x {self.steps} training steps "
            f"(forward + backward) per loss, fresh copy per round, 1 warm-up step, torch threads={self.threads}, "
            f"device={self.device}, synchronised clock"
        )
