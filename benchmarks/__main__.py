"""Run the benchmark suite: ``python -m benchmarks [--full] [--losses ...] [--device ...] [--output DIR]``.

Prints a markdown table per loss and workload, writes ``results.json`` (pytest-benchmark-shaped) and one
PNG plot per loss/workload into the output directory (default ``results/bench/``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fastloss.bench import compare, markdown_table, plot, write_json

from .suite import CASES, WEIGHTS_NOTE, candidates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="add 512x512 and 3D workloads")
    parser.add_argument("--losses", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default="results/bench")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=None, help="cap the trajectory length (epochs x batches)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads during timing")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    out = Path(args.output)
    print(f"fastloss benchmark suite: losses={args.losses} device={args.device} threads={args.threads} "
          f"rounds={args.rounds}{' (full)' if args.full else ''}")
    print(f"note: {WEIGHTS_NOTE}")
    reports, started = [], time.perf_counter()
    jobs = [(key, wl) for key in args.losses for wl in CASES[key].make_workload(args.full)]
    with tqdm(total=len(jobs), desc="benchmarks", unit="workload", file=sys.stderr) as bar:
        for key, wl in jobs:
            case = CASES[key]
            if args.steps is not None:
                wl.epochs = max(1, min(wl.epochs, args.steps // max(1, wl.steps // wl.epochs)))
            loss = case.make_loss()
            report = compare(loss, candidates(loss, wl.steps), wl, device=args.device, threads=args.threads,
                             rounds=args.rounds, name=case.name,
                             progress=lambda msg, key=key: bar.set_postfix_str(f"{key}: {msg}"[:60]))
            reports.append(report)
            tqdm.write(markdown_table(report) + "\n", file=sys.stdout)
            plot(report, out / f"{key}-{wl.name}.png")
            bar.update()
    path = write_json(reports, out / "results.json", notes=[WEIGHTS_NOTE])
    print(f"wrote {path} and {len(reports)} plot(s) to {out}/ in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
