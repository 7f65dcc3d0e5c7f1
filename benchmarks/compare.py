"""Compare two benchmark result files: ``python -m benchmarks.compare --baseline A.json --current B.json``.

Exit code 1 with ``--fail-on-regression`` when a speedup or a deviation regressed (see
:mod:`fastloss.bench.regression` for the rule: threshold and significance).
"""

from __future__ import annotations

import argparse
import warnings

from fastloss.bench.regression import compare_results, format_rows, load
from fastloss.bench.report import machine_summary, same_machine


def _percent(text: str) -> float:
    value = float(text.rstrip("%"))
    return value / 100 if text.endswith("%") or value > 1 else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--current", required=True)
    parser.add_argument("--threshold", type=_percent, default=0.05, help="e.g. 5%% (default)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the Mann-Whitney U test")
    parser.add_argument("--fail-on-regression", action="store_true")
    args = parser.parse_args(argv)
    baseline, current = load(args.baseline), load(args.current)
    differ = same_machine(baseline.get("machine_info", {}), current.get("machine_info", {}))
    if differ:
        message = (f"the two results come from different machines ({', '.join(differ)} differ): "
                   f"baseline = {machine_summary(baseline.get('machine_info', {}))}; "
                   f"current = {machine_summary(current.get('machine_info', {}))}. Speedups are ratios, but "
                   "they still depend on the machine (e.g. native bfloat16 or not)")
        warnings.warn(message, UserWarning, stacklevel=1)
        print(f"WARNING: {message}\n")
    rows = compare_results(baseline, current, args.threshold, args.alpha)
    print(format_rows(rows))
    regressions = [r for r in rows if r.regression]
    print(f"\n{len(regressions)} regression(s) in {len(rows)} comparison(s) (threshold {args.threshold:.0%})")
    return 1 if regressions and args.fail_on_regression else 0


if __name__ == "__main__":
    raise SystemExit(main())
