"""Reports: JSON shaped like pytest-benchmark's, a markdown table, and a speedup-vs-fidelity plot."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from .harness import CandidateResult, Report

__all__ = ["machine_info", "markdown_table", "plot", "to_json", "write_json"]


def machine_info(device: str = "cpu", threads: int = 1) -> dict:
    info = {
        "node": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "system": platform.system(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def commit_info() -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"id": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain")), "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def _entry(report: Report, res: CandidateResult, reference: bool) -> dict:
    import numpy as np

    data = np.asarray(res.round_times)
    q1, q3 = (float(np.quantile(data, q)) for q in (0.25, 0.75))
    stats = {
        "min": float(data.min()), "max": float(data.max()), "mean": float(data.mean()),
        "stddev": float(data.std(ddof=1)) if len(data) > 1 else 0.0, "median": float(np.median(data)),
        "q1": q1, "q3": q3, "iqr": q3 - q1, "rounds": len(data), "iterations": report.steps,
        "ops": float(1 / data.mean()), "data": [float(v) for v in data],
    }
    extra = {
        "unit": "seconds per training step (forward + backward), mean over one trajectory per round",
        "per_step_ms": res.step_summary(),
        "memory_bytes": res.memory_bytes,
        "flops_per_step": res.flops_per_step,
        "description": res.description,
    }
    if not reference:
        extra["speedup"] = res.speedup_summary()
        extra["deviation"] = res.deviation
        if res.cache is not None:
            extra["cache"] = res.cache
    return {
        "group": f"{report.loss} @ {report.workload}",
        "name": res.name,
        "fullname": f"{report.loss}/{report.workload}/{res.name}",
        "params": {"loss": report.loss, "workload": report.workload, "reference": reference},
        "stats": stats,
        "extra_info": extra,
        "options": {"protocol": report.protocol, "threads": report.threads, "device": report.device},
    }


def to_json(reports: list[Report], notes: list[str] | None = None) -> dict:
    first = reports[0] if reports else None
    return {
        "machine_info": machine_info(first.device if first else "cpu", first.threads if first else 1),
        "commit_info": commit_info(),
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": __import__("fastloss").__version__,
        "notes": list(notes or []),
        "benchmarks": [
            entry for r in reports
            for entry in [_entry(r, r.reference, True), *(_entry(r, c, False) for c in r.candidates.values())]
        ],
    }


def write_json(reports: list[Report], path: str | Path, notes: list[str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(reports, notes), indent=2))
    return path


def _fmt(v, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v != v:  # NaN
        return "nan"
    return format(v, spec)


def _bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def _flops(f) -> str:
    return f if isinstance(f, str) else ("-" if f is None else f"{f / 1e9:.2f}")


def markdown_table(report: Report) -> str:
    """One row per candidate: speedup (95% CI), step-time percentiles and deviation figures."""
    lines = [
        f"### {report.loss} on {report.workload} ({report.device}, {report.threads} thread(s), "
        f"{report.rounds} rounds x {report.steps} steps)",
        "",
        "| candidate | speedup [95% CI] | ms/step p50 / p95 / p99 | loss err med / p95 | grad cos med / p5 "
        "| accum cos | low-pass cos | ladder Spearman | peak MiB | GFLOP/step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = report.reference.step_summary()
    lines.append(
        f"| reference | 1.00 | {_fmt(ref['p50'], '.1f')} / {_fmt(ref['p95'], '.1f')} / {_fmt(ref['p99'], '.1f')} "
        f"| 0 | 1 | 1 | 1 | 1 | {_bytes(report.reference.memory_bytes)} | {_flops(report.reference.flops_per_step)} |"
    )
    for res in report.candidates.values():
        s, p, d = res.speedup_summary(), res.step_summary(), res.deviation
        err, cos, low = d.get("loss_rel_error", {}), d.get("grad_cosine", {}), d.get("lowpass_grad_cosine", {})
        lines.append(
            f"| {res.name} | {_fmt(s['median'], '.2f')} [{_fmt(s['ci95'][0], '.2f')}, {_fmt(s['ci95'][1], '.2f')}] "
            f"| {_fmt(p['p50'], '.1f')} / {_fmt(p['p95'], '.1f')} / {_fmt(p['p99'], '.1f')} "
            f"| {_fmt(err.get('median'), '.2%')} / {_fmt(err.get('p95'), '.2%')} "
            f"| {_fmt(cos.get('median'))} / {_fmt(cos.get('p5'))} | {_fmt(d.get('accumulated_grad_cosine'))} "
            f"| {_fmt(low.get('median'))} | {_fmt(d.get('ladder_spearman'))} | {_bytes(res.memory_bytes)} "
            f"| {_flops(res.flops_per_step)} |"
        )
    return "\n".join(lines)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated in (speedup, cosine), both to maximise, sorted by speedup."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(front)


def plot(report: Report, path: str | Path) -> Path:
    """Speedup (log x) vs median gradient cosine, one point per candidate, the Pareto front drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    points, labels = [(1.0, 1.0)], ["reference"]
    for res in report.candidates.values():
        cos = res.deviation.get("grad_cosine", {}).get("median")
        points.append((res.speedup_summary()["median"], cos if cos is not None else float("nan")))
        labels.append(res.name)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, ((x, y), label) in enumerate(zip(points, labels, strict=True)):
        ax.scatter([x], [y], color="black" if label == "reference" else "tab:blue", zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4 if i % 2 else -11), fontsize=8)
    front = pareto_front([p for p in points if p[1] == p[1]])
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="pre", color="tab:orange", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("speedup vs reference (log)")
    ax.set_ylabel("median gradient cosine vs reference")
    ax.set_title(f"{report.loss} on {report.workload} ({report.device}, {report.threads} thread(s))", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
