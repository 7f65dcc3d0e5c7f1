"""Compare two benchmark result files: ``python -m benchmarks.compare --baseline A.json --current B.json``.

Exit code 1 with ``--fail-on-regression`` when a speedup or a deviation regressed (see
:mod:`fastloss.bench.regression` for the rule: threshold and significance).
"""

from __future__ import annotations

import argparse

from fastloss.bench.regression import compare_results, format_rows, load


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
    rows = compare_results(load(args.baseline), load(args.current), args.threshold, args.alpha)
    print(format_rows(rows))
    regressions = [r for r in rows if r.regression]
    print(f"\n{len(regressions)} regression(s) in {len(rows)} comparison(s) (threshold {args.threshold:.0%})")
    return 1 if regressions and args.fail_on_regression else 0


if __name__ == "__main__":
    raise SystemExit(main())
