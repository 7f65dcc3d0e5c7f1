"""End-to-end fidelity: does a preset change the trained model? ``python -m benchmarks.e2e``.

Runs ``examples/train_topology_segmentation.py``, ``examples/fit_image_perceptual.py`` and
``examples/train_perceptual_restoration.py`` for every preset with the same seeds, then writes ``e2e.json`` and ``e2e.png`` (final quality vs wall time, one
point per preset, error bars over seeds) and prints a table: loss-call time share, total time,
quality metrics, and the difference from ``exact``. The goal reported against: ``balanced`` ends
within 2% of ``exact`` on the task metric (Dice; PSNR; validation PSNR) at a fraction of the loss's time.
The ``restoration`` task is the one where the perceptual term drives the result (a denoiser whose only
pixel loss carries no information on the noise), so there ``none`` is the floor, not a peer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TASKS = {
    # task: (script, task metric, other metrics, higher is better for the task metric)
    "topology": ("train_topology_segmentation.py", "dice", ("betti_error", "skeleton_recall")),
    "perceptual": ("fit_image_perceptual.py", "psnr", ("ssim", "exact_perceptual")),
    "restoration": ("train_perceptual_restoration.py", "psnr", ("ssim", "exact_perceptual")),
}
GOAL = 0.02


def load_example(script: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def summarise(runs: list[dict], task: str) -> dict[str, dict]:
    metric, others = TASKS[task][1], TASKS[task][2]
    by_preset: dict[str, list[dict]] = {}
    for r in runs:
        by_preset.setdefault(r["preset"], []).append(r)
    summary = {}
    for preset, rs in by_preset.items():
        summary[preset] = {k: _stats([r[k] for r in rs]) for k in (metric, *others, "total_s", "loss_s", "loss_share")}
        summary[preset]["seeds"] = len(rs)
    if "exact" in summary:
        ref = summary["exact"]
        for s in summary.values():
            s["metric_rel_diff"] = (s[metric]["mean"] - ref[metric]["mean"]) / abs(ref[metric]["mean"])
            s["loss_time_vs_exact"] = s["loss_s"]["mean"] / max(ref["loss_s"]["mean"], 1e-9)
            s["within_goal"] = abs(s["metric_rel_diff"]) <= GOAL
    return summary


def table(task: str, summary: dict[str, dict]) -> str:
    metric, others = TASKS[task][1], TASKS[task][2]
    head = f"| preset | {metric} | " + " | ".join(others) + " | total s | loss s | loss share | vs exact | within 2% |"
    lines = [f"### {task}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for preset, s in summary.items():
        def fmt(k: str, s: dict = s) -> str:
            return f"{s[k]['mean']:.4g} ± {s[k]['std']:.2g}"

        diff = f"{100 * s['metric_rel_diff']:+.2f}%" if "metric_rel_diff" in s else "-"
        ok = ("yes" if s["within_goal"] else "NO") if "within_goal" in s else "-"
        lines.append(f"| {preset} | {fmt(metric)} | " + " | ".join(fmt(o) for o in others)
                     + f" | {fmt('total_s')} | {fmt('loss_s')} | {100 * s['loss_share']['mean']:.0f}% | {diff} | {ok} |")
    return "\n".join(lines)


def plot(summaries: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(6 * len(summaries), 4.2), squeeze=False)
    for ax, (task, summary) in zip(axes[0], summaries.items(), strict=True):
        metric = TASKS[task][1]
        for preset, s in summary.items():
            ax.errorbar(s["total_s"]["mean"], s[metric]["mean"], xerr=s["total_s"]["std"], yerr=s[metric]["std"],
                        fmt="o", capsize=3, label=preset)
            ax.annotate(preset, (s["total_s"]["mean"], s[metric]["mean"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.set_xlabel("total training time (s)")
        ax.set_ylabel(metric)
        ax.set_title(f"{task}: final {metric} vs wall time (mean ± std over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register_interval_candidates(every: int) -> list[str]:
    """Register ``interval{N}`` and ``interval{N}-uncompensated`` (IntervalLoss around each kind's
    ``balanced`` stack) for this process; their names."""
    import fastloss
    from fastloss.presets import entry

    names = []
    for compensate, name in ((True, f"interval{every}"), (False, f"interval{every}-uncompensated")):
        for kind in ("topology", "perceptual"):
            balanced = entry("balanced", kind)
            fastloss.register_preset(
                name, kind, lambda loss, caps, b=balanced, c=compensate: fastloss.IntervalLoss(b.build(loss, caps), every,
                                                                                              compensate=c),
                f"IntervalLoss({every}, compensate={compensate}) o balanced", overwrite=True)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--presets", nargs="+", default=["exact", "balanced", "fastest", "none"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", default="results/e2e")
    parser.add_argument("--topology-args", default="", help="extra arguments for the topology example")
    parser.add_argument("--perceptual-args", default="", help="extra arguments for the perceptual example")
    parser.add_argument("--restoration-args", default="", help="extra arguments for the restoration example")
    parser.add_argument("--intervals", nargs="*", type=int, default=[],
                        help="also run IntervalLoss(N) o balanced (compensated and not) for these N: how the "
                             "topology `fastest` preset is chosen")
    args = parser.parse_args(argv)
    presets = list(args.presets)
    for n in args.intervals:
        presets += register_interval_candidates(n)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    summaries, all_runs = {}, {}
    for task in args.tasks:
        module = load_example(TASKS[task][0])
        extra = getattr(args, f"{task}_args").split()
        runs = []
        # one untimed run first: imports, numba's cache loading and allocator warm-up are not the first
        # preset's cost
        print(f"{task}: warm-up run (not reported)", file=sys.stderr, flush=True)
        module.main(["--preset", presets[0], "--seed", "0", "--quiet", *extra])
        for preset in presets:
            for seed in range(args.seeds):
                print(f"{task}: preset={preset} seed={seed}", file=sys.stderr, flush=True)
                runs.append(module.main(["--preset", preset, "--seed", str(seed), "--quiet", *extra]))
        all_runs[task] = runs
        summaries[task] = summarise(runs, task)
        print(table(task, summaries[task]) + "\n", flush=True)
    (out / "e2e.json").write_text(json.dumps({"runs": all_runs, "summary": summaries, "goal": GOAL}, indent=2))
    plot(summaries, out / "e2e.png")
    print(f"wrote {out / 'e2e.json'} and {out / 'e2e.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
