"""Reports: JSON shaped like pytest-benchmark's, a markdown table, and a speedup-vs-fidelity plot."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path

from .._version import __version__
from ..hardware import machine_info
from .results import CandidateResult, Report

__all__ = ["fmt", "machine_info", "machine_summary", "markdown_table", "plot", "same_machine", "to_json", "write_json"]


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
        "stack": res.stack,
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


def fmt(v, spec: str = ".3f") -> str:
    """A figure for a table: ``-`` when missing, ``nan`` when NaN, a string as it is, else ``format(v, spec)``."""
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



def _accumulated(deviation: dict) -> str:
    """The accumulated cosine over the trajectory; for a stack with a cycle also over one cycle, with its value bias."""
    text = fmt(deviation.get("accumulated_grad_cosine"))
    cycle = deviation.get("cycle")
    if cycle:
        text += (f" (cycle of {cycle['steps']}: {fmt(cycle['cycle_grad_cosine'])}, "
                 f"bias {fmt(cycle['cycle_value_bias'], '+.2%')})")
    return text

def markdown_table(report: Report) -> str:
    """The report as a markdown table, the machine named in its header.

    One row per candidate: median speedup over the interleaved rounds with its bootstrap 95% interval
    (and against each baseline), step-time percentiles (ms), median / p95 value error, median / p5
    per-step gradient cosine, the accumulated-gradient cosine, the low-pass cosine, the ladder's Spearman
    correlation, peak memory and torch GFLOPs per step. Dropped or unmeasured candidates get one cell
    with the reason; an autotune report adds each candidate's verdict.

    Example:
        >>> from fastloss.bench.results import CandidateResult, Report
        >>> ref = CandidateResult("reference", round_times=[0.02], step_times=[0.02])
        >>> fast = CandidateResult("fast", round_times=[0.01], step_times=[0.01], speedups=[2.0]).summarise()
        >>> table = markdown_table(Report("MSELoss", "toy", "cpu", 1, 1, 1, ref, {"fast": fast}))
        >>> "| fast | 2.00 [2.00, 2.00] |" in table
        True
    """
    base_names = list(report.baselines)
    base_cols = "".join(f" speedup vs {b} |" for b in base_names)
    verdict_col = " status |" if report.verdicts else ""
    machine = machine_summary(report.machine) if report.machine else report.device
    lines = [
        f"### {report.loss} on {report.workload} ({report.device}, {report.threads} thread(s), "
        f"{report.rounds} rounds x {report.steps} steps)",
        "",
        f"Machine: {machine}.",
        "",
        f"| candidate | speedup [95% CI] |{base_cols} ms/step p50 / p95 / p99 | loss err med / p95 | grad cos med / p5 "
        f"| accum cos | low-pass cos | ladder Spearman | peak MiB | GFLOP/step |{verdict_col}",
        "|---|---|" + "---|" * len(base_names) + "---|---|---|---|---|---|---|---|" + ("---|" if report.verdicts else ""),
    ]
    ref = report.reference.step_summary()
    ref_vs = "".join(f" {fmt(_median(report.reference.round_times, report.baselines[b].round_times), '.2f')} |"
                     for b in base_names)
    ref_status = " reference |" if report.verdicts else ""
    lines.append(
        f"| reference | 1.00 |{ref_vs} {fmt(ref['p50'], '.1f')} / {fmt(ref['p95'], '.1f')} / {fmt(ref['p99'], '.1f')} "
        f"| 0 | 1 | 1 | 1 | 1 | {_bytes(report.reference.memory_bytes)} | {_flops(report.reference.flops_per_step)} |"
        f"{ref_status}"
    )
    for bname, bres in report.baselines.items():
        p = bres.step_summary()
        cells = "".join(" 1.00 |" if b == bname else f" {fmt(bres.speedup_summary(against=b)['median'], '.2f')} |"
                        for b in base_names)
        lines.append(
            f"| {bname} (baseline) | {fmt(bres.speedup_summary()['median'], '.2f')} |{cells} "
            f"{fmt(p['p50'], '.1f')} / {fmt(p['p95'], '.1f')} / {fmt(p['p99'], '.1f')} | - | - | - | - | - "
            f"| {_bytes(bres.memory_bytes)} | {_flops(bres.flops_per_step)} |" + (" baseline |" if report.verdicts else "")
        )
    for res in report.candidates.values():
        if res.dropped or (not res.speedups and not res.deviation):
            empty = " - |" * len(base_names)
            tail = f" {res.status} |" if report.verdicts else ""
            lines.append(f"| {res.name} | **{res.status}** |{empty} - | - | - | - | - | - | - | - |{tail}")
            continue
        s, p, d = res.speedup_summary(), res.step_summary(), res.deviation
        err, cos, low = d.get("loss_rel_error", {}), d.get("grad_cosine", {}), d.get("lowpass_grad_cosine", {})
        vs = "".join(f" {fmt(res.speedup_summary(against=b)['median'], '.2f')} |" for b in base_names)
        speed = f"{fmt(s['median'], '.2f')} [{fmt(s['ci95'][0], '.2f')}, {fmt(s['ci95'][1], '.2f')}]" if res.speedups else "-"
        lines.append(
            f"| {res.name} | {speed} |{vs} "
            f"{fmt(p['p50'], '.1f')} / {fmt(p['p95'], '.1f')} / {fmt(p['p99'], '.1f')} "
            f"| {fmt(err.get('median'), '.2%')} / {fmt(err.get('p95'), '.2%')} "
            f"| {fmt(cos.get('median'))} / {fmt(cos.get('p5'))} | {_accumulated(d)} "
            f"| {fmt(low.get('median'))} | {fmt(d.get('ladder_spearman'))} | {_bytes(res.memory_bytes)} "
            f"| {_flops(res.flops_per_step)} |" + (f" {res.status} |" if report.verdicts else "")
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


def label_box(label, renderer):
    """The box of an annotation's text alone (without its arrow), in display coordinates."""
    from matplotlib.text import Text

    label.update_positions(renderer)
    return Text.get_window_extent(label, renderer)


def _separate(fig, labels: list, max_moves: int = 60) -> None:
    """Nudge annotation ``labels`` down (in points) until no two of their texts overlap (the crowded corner
    is the top, near the reference at cosine 1)."""
    renderer = fig.canvas.get_renderer()
    for _ in range(max_moves):
        boxes = [label_box(t, renderer) for t in labels]
        moved = False
        for i in range(len(labels)):
            for j in range(i):
                if boxes[i].overlaps(boxes[j]):
                    x, y = labels[i].xyann
                    labels[i].xyann = (x, y - (boxes[i].y1 - boxes[j].y0) * 72 / fig.dpi - 2)
                    boxes[i] = label_box(labels[i], renderer)
                    moved = True
        if not moved:
            return


def figure(report: Report):
    """The speedup-vs-fidelity figure of :func:`plot`, as a matplotlib ``Figure`` (for tests and notebooks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    points, labels = [(1.0, 1.0)], ["reference"]
    for res in report.candidates.values():
        acc = res.deviation.get("accumulated_grad_cosine")
        if res.dropped or not res.speedups or acc is None or acc != acc:
            continue
        points.append((res.speedup_summary()["median"], acc))
        labels.append(res.name)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    front = pareto_front(points)
    if len(front) >= 2:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:orange", zorder=2,
                label="Pareto front")
    texts = []
    for (x, y), label in sorted(zip(points, labels, strict=True), key=lambda p: (-p[0][1], p[0][0])):
        ax.scatter([x], [y], color="black" if label == "reference" else "tab:blue", zorder=3)
        texts.append(ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, -3), fontsize=8, zorder=4,
                                 bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
                                 arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5}))
    ax.set_xscale("log")
    xs = [p[0] for p in points]
    lo, hi = min(xs) / 1.3, max(xs) * 1.6
    ax.set_xlim(lo, hi)
    nice = [t for t in (0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7, 10, 20, 50, 100) if lo <= t <= hi]
    ax.xaxis.set_major_locator(FixedLocator(nice))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.set_xlabel("speedup vs reference (median over interleaved rounds, log scale)")
    ax.set_ylabel("cosine of the gradient accumulated\nover the trajectory, vs reference")
    ax.set_title(f"{report.loss} on {report.workload} ({report.device}, {report.threads} thread(s))", fontsize=9)
    ax.grid(True, alpha=0.3)
    if len(front) >= 2:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    _separate(fig, texts)
    return fig


def plot(report: Report, path: str | Path) -> Path:
    """Write the report's speedup-vs-fidelity plot to ``path`` (PNG): one point per measured candidate at
    (median speedup, accumulated-gradient cosine) — the measure that sees skipped steps — the reference
    at (1, 1), the Pareto front drawn and named outside the axes, labels kept apart."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = figure(report)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
