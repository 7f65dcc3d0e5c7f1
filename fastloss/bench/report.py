"""Reports: JSON shaped like pytest-benchmark's, a markdown table, and a speedup-vs-fidelity plot."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

from .._version import __version__
from ..hardware import machine_info
from .results import CandidateResult, Report

__all__ = ["machine_info", "machine_summary", "markdown_table", "plot", "same_machine", "to_json", "write_json"]


def machine_summary(info: dict) -> str:
    """One line naming the machine a result came from (for table headers and comparisons)."""
    low = ", ".join(info.get("cpu_native_low_precision") or []) or "none"
    line = (f"{info.get('cpu_model', info.get('processor', '?'))}, {info.get('cpu_count', '?')} cores, "
            f"torch CPU capability {info.get('cpu_capability', '?')}, native CPU low precision: {low}")
    if info.get("cuda"):
        cc = info.get("cuda_compute_capability")
        line = f"{info['cuda']}" + (f" (compute capability {cc[0]}.{cc[1]})" if cc else "") + f"; host: {line}"
    return line


def same_machine(a: dict, b: dict) -> list[str]:
    """The fields that differ between two ``machine_info`` records (empty: the same kind of machine)."""
    keys = ("cpu_model", "cpu_capability", "cpu_native_low_precision", "cpu_count", "cuda", "torch_threads", "device")
    return [k for k in keys if a.get(k) != b.get(k)]


def commit_info() -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"id": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain")), "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def _entry(report: Report, res: CandidateResult, reference: bool) -> dict:
    import numpy as np

    data = np.asarray(res.round_times if res.round_times else [float("nan")])
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
        extra["status"] = res.status
        if res.first_step_ratio is not None:
            extra["first_step_ratio"] = res.first_step_ratio
        extra["speedup"] = res.speedup_summary()
        extra["speedup_vs"] = {name: res.speedup_summary(against=name) for name in res.speedups_vs}
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
        "machine_info": first.machine if first is not None and first.machine else machine_info(),
        "commit_info": commit_info(),
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": __version__,
        "notes": list(notes or []),
        "benchmarks": [
            entry for r in reports
            for entry in [_entry(r, r.reference, True), *(_entry(r, b, True) for b in r.baselines.values()),
                          *(_entry(r, c, False) for c in r.candidates.values())]
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
    """One row per candidate: speedup (95% CI, also against each baseline), step-time percentiles,
    deviation figures; dropped candidates with their reason. The header names the machine."""
    base_names = list(report.baselines)
    base_cols = "".join(f" speedup vs {b} |" for b in base_names)
    machine = machine_summary(report.machine) if report.machine else report.device
    lines = [
        f"### {report.loss} on {report.workload} ({report.device}, {report.threads} thread(s), "
        f"{report.rounds} rounds x {report.steps} steps)",
        "",
        f"Machine: {machine}.",
        "",
        f"| candidate | speedup [95% CI] |{base_cols} ms/step p50 / p95 / p99 | loss err med / p95 | grad cos med / p5 "
        "| accum cos | low-pass cos | ladder Spearman | peak MiB | GFLOP/step |",
        "|---|---|" + "---|" * len(base_names) + "---|---|---|---|---|---|---|---|",
    ]
    ref = report.reference.step_summary()
    ref_vs = "".join(f" {_fmt(_median(report.reference.round_times, report.baselines[b].round_times), '.2f')} |"
                     for b in base_names)
    lines.append(
        f"| reference | 1.00 |{ref_vs} {_fmt(ref['p50'], '.1f')} / {_fmt(ref['p95'], '.1f')} / {_fmt(ref['p99'], '.1f')} "
        f"| 0 | 1 | 1 | 1 | 1 | {_bytes(report.reference.memory_bytes)} | {_flops(report.reference.flops_per_step)} |"
    )
    for bname, bres in report.baselines.items():
        p = bres.step_summary()
        cells = "".join(" 1.00 |" if b == bname else f" {_fmt(bres.speedup_summary(against=b)['median'], '.2f')} |"
                        for b in base_names)
        lines.append(
            f"| {bname} (baseline) | {_fmt(bres.speedup_summary()['median'], '.2f')} |{cells} "
            f"{_fmt(p['p50'], '.1f')} / {_fmt(p['p95'], '.1f')} / {_fmt(p['p99'], '.1f')} | - | - | - | - | - "
            f"| {_bytes(bres.memory_bytes)} | {_flops(bres.flops_per_step)} |"
        )
    for res in report.candidates.values():
        if res.dropped:
            empty = " - |" * len(base_names)
            lines.append(f"| {res.name} | **{res.status}** |{empty} - | - | - | - | - | - | - | - |")
            continue
        s, p, d = res.speedup_summary(), res.step_summary(), res.deviation
        err, cos, low = d.get("loss_rel_error", {}), d.get("grad_cosine", {}), d.get("lowpass_grad_cosine", {})
        vs = "".join(f" {_fmt(res.speedup_summary(against=b)['median'], '.2f')} |" for b in base_names)
        lines.append(
            f"| {res.name} | {_fmt(s['median'], '.2f')} [{_fmt(s['ci95'][0], '.2f')}, {_fmt(s['ci95'][1], '.2f')}] |{vs} "
            f"{_fmt(p['p50'], '.1f')} / {_fmt(p['p95'], '.1f')} / {_fmt(p['p99'], '.1f')} "
            f"| {_fmt(err.get('median'), '.2%')} / {_fmt(err.get('p95'), '.2%')} "
            f"| {_fmt(cos.get('median'))} / {_fmt(cos.get('p5'))} | {_fmt(d.get('accumulated_grad_cosine'))} "
            f"| {_fmt(low.get('median'))} | {_fmt(d.get('ladder_spearman'))} | {_bytes(res.memory_bytes)} "
            f"| {_flops(res.flops_per_step)} |"
        )
    return "\n".join(lines)


def _median(reference_times: list[float], other_times: list[float]) -> float | None:
    """Median per-round speedup of the reference over another loss."""
    import numpy as np

    if not reference_times or len(reference_times) != len(other_times):
        return None
    return float(np.median([o / r for r, o in zip(reference_times, other_times, strict=True)]))


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
        if res.dropped:
            continue
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
