"""Run the benchmark suite: ``python -m benchmarks [--full] [--losses ...] [--device ...] [--output DIR]``.

Prints a markdown table per loss and workload, writes ``results.json`` (pytest-benchmark-shaped) and one
PNG plot per workload into the output directory (default ``results/bench/``). Seeded: the same command on
the same machine gives the same deviation figures (speedups are timings: they vary within their interval).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fastloss.bench import compare, markdown_table, plot, write_json
from fastloss.bench.report import machine_summary
from fastloss.hardware import machine_info

from .references import WEIGHTS_NOTE
from .suite import CASES, candidates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="add 512x512 and 3D workloads")
    parser.add_argument("--losses", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="results/bench")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=None, help="cap the trajectory length (epochs x batches)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads during timing")
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds for the whole suite, deviation passes included: each workload gets an equal "
                             "share of what is left and runs fewer timing rounds to fit it (never below 3)")
    parser.add_argument("--drop-factor", type=float, default=5.0,
                        help="skip a candidate whose first timed step is this many times slower than the reference")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    out = Path(args.output)
    print(f"fastloss benchmark suite: losses={args.losses} device={args.device} threads={args.threads} "
          f"rounds={args.rounds}{' (full)' if args.full else ''}")
    print(f"note: {WEIGHTS_NOTE}")
    print(f"machine: {machine_summary(machine_info(args.device, args.threads))}")
    reports, started = [], time.perf_counter()
    jobs = [(key, wl) for key in args.losses for wl in CASES[key].make_workload(args.full)]
    # A progress bar only where both streams are terminals: in a log or a pipe it would interleave with
    # the tables. With only stderr on a terminal, one line per workload goes there.
    bar_ok = sys.stdout.isatty() and sys.stderr.isatty()
    with tqdm(total=len(jobs), desc="benchmarks", unit="workload", file=sys.stderr, disable=not bar_ok) as bar:
        for i, (key, wl) in enumerate(jobs):
            if not bar_ok and sys.stderr.isatty():
                print(f"[{i + 1}/{len(jobs)}] {key} on {wl.name}", file=sys.stderr, flush=True)
            case = CASES[key]
            if args.steps is not None:
                wl.epochs = max(1, min(wl.epochs, args.steps // max(1, wl.steps // wl.epochs)))
            loss = case.make_loss()
            job_started = time.perf_counter()
            # an equal share of what is left, for the workload's timing and deviation passes together
            left = args.budget - (time.perf_counter() - started)
            share = max(1.0, left / (len(jobs) - i))
            report = compare(loss, candidates(loss, wl.steps), wl, device=args.device, threads=args.threads,
                             rounds=args.rounds, name=case.name, baselines=case.make_baselines(),
                             drop_factor=args.drop_factor, time_budget=share,
                             progress=lambda msg, key=key: bar.set_postfix_str(f"{key}: {msg}"[:60]))
            reports.append(report)
            text = (f"{markdown_table(report)}\n({key} on {wl.name}: {time.perf_counter() - job_started:.0f} s of a "
                    f"{share:.0f} s share, {report.rounds} timing rounds)\n")
            if bar_ok:
                tqdm.write(text, file=sys.stdout)
            else:
                print(text, flush=True)
            plot(report, out / f"{key}-{wl.name}.png")
            bar.update()
    path = write_json(reports, out / "results.json", notes=[WEIGHTS_NOTE])
    print(f"wrote {path} and {len(reports)} plot(s) to {out}/ in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
