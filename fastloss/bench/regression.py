"""Baseline comparison: did speedups or deviations regress between two result files?

Speedups are compared, never raw times, so a baseline from another machine stays meaningful. A speed
regression needs both: the median speedup fell by more than ``threshold`` (relative), and the per-round
speedup samples are significantly lower (one-sided Mann-Whitney U, p < ``alpha``, as asv does).
Deviation figures are deterministic for a seeded workload, so a change beyond ``threshold`` (absolute,
on median gradient cosine and median loss error) is a regression by itself.

With fewer than 4 rounds on each side the smallest one-sided p-value is 0.05, so nothing can be
significant at ``alpha=0.05``: the suite defaults to 5 rounds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import mannwhitneyu

__all__ = ["Comparison", "compare_results", "load"]


@dataclass
class Comparison:
    name: str
    metric: str
    baseline: float | None
    current: float | None
    p_value: float | None
    regression: bool
    note: str = ""


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def _candidates(results: dict) -> dict[str, dict]:
    return {b["fullname"]: b["extra_info"] for b in results["benchmarks"]
            if not b["params"].get("reference") and not str(b["extra_info"].get("status", "")).startswith("dropped")}


def compare_results(baseline: dict, current: dict, threshold: float = 0.05, alpha: float = 0.05) -> list[Comparison]:
    rows = []
    base, cur = _candidates(baseline), _candidates(current)
    for name in sorted(base.keys() & cur.keys()):
        b, c = base[name], cur[name]
        bs, cs = b["speedup"]["samples"], c["speedup"]["samples"]
        b_med, c_med = b["speedup"]["median"], c["speedup"]["median"]
        p = float(mannwhitneyu(cs, bs, alternative="less").pvalue) if len(bs) > 1 and len(cs) > 1 else None
        slower = c_med < b_med * (1 - threshold)
        significant = p is not None and p < alpha
        note = "" if not slower or significant else "slower but not significant"
        rows.append(Comparison(name, "speedup", b_med, c_med, p, slower and significant, note))
        for metric, key, worse in (("grad_cosine", "median", -1), ("loss_rel_error", "median", 1)):
            bv, cv = b["deviation"].get(metric, {}).get(key), c["deviation"].get(metric, {}).get(key)
            if bv is None or cv is None:
                continue
            rows.append(Comparison(name, f"{metric}.{key}", bv, cv, None, (cv - bv) * worse > threshold))
    for name in sorted(base.keys() - cur.keys()):
        rows.append(Comparison(name, "missing", None, None, None, False, "in baseline only"))
    return rows


def format_rows(rows: list[Comparison]) -> str:
    lines = ["| benchmark | metric | baseline | current | p | status |", "|---|---|---|---|---|---|"]
    for r in rows:
        status = "REGRESSION" if r.regression else (r.note or "ok")
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append(f"| {r.name} | {r.metric} | {fmt(r.baseline)} | {fmt(r.current)} | {fmt(r.p_value)} | {status} |")
    return "\n".join(lines)
