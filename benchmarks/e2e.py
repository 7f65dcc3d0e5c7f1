"""End-to-end fidelity: does a preset change the trained model? ``python -m benchmarks.e2e``.

Runs ``examples/train_topology_segmentation.py``, ``examples/fit_image_perceptual.py`` and
``examples/train_perceptual_restoration.py`` for every preset with the same seeds, then writes ``e2e.json`` and ``e2e.png`` (final quality vs wall time, one
point per preset, error bars over seeds) and prints a table: loss-call time share, total time,
quality metrics, and the difference from ``exact``. The goal reported against: ``balanced`` ends
within 2% of ``exact`` on the task metric (Dice; the fit's exact perceptual distance; validation PSNR) at a
fraction of the loss's time ("vs exact" is signed so that negative is worse, whichever way the metric runs).
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
    # task: (script, task metric, other metrics, the script's arguments that define the task)
    "topology": ("train_topology_segmentation.py", "dice", ("betti_error", "skeleton_recall"), ()),
    # one image fitted by a renderer (batch 1, as in a splatting run). Judged on the exact perceptual distance of
    # the result, the thing the term is for: on PSNR `none` is as good as exact (better on every seed at 128 px,
    # w 1.0: the term trades pixel fidelity for features), and at the example's 64 px, w 0.1 the seeds spread
    # more than the term moves the distance (`none` beat exact on seed 0). At 128 px, w 1.0, `none` ends 22-28%
    # farther than exact on every seed: the task can gate.
    "perceptual": ("fit_image_perceptual.py", "exact_perceptual", ("psnr", "ssim"),
                   ("--size", "128", "--perceptual-weight", "1.0")),
    "restoration": ("train_perceptual_restoration.py", "psnr", ("ssim", "exact_perceptual"), ()),
    # the same denoiser taught by VGG19's deep taps relu1_1..relu5_1 at 96 px, where a tile's border features
    # depend on a wide context (receptive field 156 px). Equal tap weights: with the default ones (1/32..1, most on
    # relu5_1) a random-init VGG19 teaches nothing here (13.9 dB after 80 steps, below the noisy input's 14.8).
    # 240 steps: after 80, exact was still early in training (15.7 dB, 1 dB above `none`, seed spread 0.37 dB,
    # wider than the 2% gate); after 240 it is trained (22.3 dB, 7.5 dB above `none`, spread < 0.1 dB).
    "restoration-deep": ("train_perceptual_restoration.py", "psnr", ("ssim", "exact_perceptual"),
                         ("--layers", "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", "--layer-weights", "1,1,1,1,1",
                          "--size", "96", "--batch", "2", "--steps", "240")),
}
PERCEPTUAL_TASKS = ("perceptual", "restoration", "restoration-deep")
LOWER_IS_BETTER = frozenset({"exact_perceptual", "betti_error"})
GOAL = 0.02


def _gain(value: float, ref: float, metric: str) -> float:
    """``value``'s relative difference from ``ref``, signed so that negative is worse (either direction)."""
    if not ref:
        return 0.0
    return (ref - value) / abs(ref) if metric in LOWER_IS_BETTER else (value - ref) / abs(ref)


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
        exact_loss_s = {r.get("seed"): r["loss_s"] for r in by_preset["exact"]}
        for preset, s in summary.items():
            s["metric_rel_diff"] = _gain(s[metric]["mean"], ref[metric]["mean"], metric)  # negative: worse
            s["loss_time_vs_exact"] = s["loss_s"]["mean"] / max(ref["loss_s"]["mean"], 1e-9)
            # per seed, against the exact run of the same seed (run next to it: robust to a machine's changing load)
            paired = [r["loss_s"] / exact_loss_s[r.get("seed")] for r in by_preset[preset]
                      if exact_loss_s.get(r.get("seed"), 0) > 0]
            if paired:
                s["loss_time_ratio"] = _stats(paired)
            s["within_goal"] = abs(s["metric_rel_diff"]) <= GOAL
        if "none" in summary:  # can the task gate at all?
            exact_metric = {r.get("seed"): r[metric] for r in by_preset["exact"]}
            worse_every_seed = all(_gain(r[metric], exact_metric[r.get("seed")], metric) < 0 for r in by_preset["none"]
                                   if r.get("seed") in exact_metric)
            summary["none"]["clearly_worse"] = worse_every_seed and summary["none"]["metric_rel_diff"] < -GOAL
    return summary


def table(task: str, summary: dict[str, dict]) -> str:
    metric, others = TASKS[task][1], TASKS[task][2]
    head = (f"| preset | {metric} | " + " | ".join(others)
            + " | total s | loss s | loss share | loss time / exact | vs exact | within 2% |")
    lines = [f"### {task}", "", head, "|" + "---|" * (head.count("|") - 1)]
    for preset, s in summary.items():
        def fmt(k: str, s: dict = s) -> str:
            return f"{s[k]['mean']:.4g} ± {s[k]['std']:.2g}"

        diff = f"{100 * s['metric_rel_diff']:+.2f}%" if "metric_rel_diff" in s else "-"
        ok = ("yes" if s["within_goal"] else "NO") if "within_goal" in s else "-"
        ratio = f"{s['loss_time_ratio']['mean']:.3f} ± {s['loss_time_ratio']['std']:.3f}" if "loss_time_ratio" in s else "-"
        lines.append(f"| {preset} | {fmt(metric)} | " + " | ".join(fmt(o) for o in others)
                     + f" | {fmt('total_s')} | {fmt('loss_s')} | {100 * s['loss_share']['mean']:.0f}% | {ratio} | {diff} | {ok} |")
    if summary.get("none", {}).get("clearly_worse") is False:
        lines.append(f"\n`none` is NOT clearly worse than exact here (worse on every seed and by more than "
                     f"{GOAL:.0%}): this task cannot tell a faithful preset from dropping the term.")
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


# candidates of the perceptual fast tier, each around the perceptual `balanced` stack (`--candidates`)
CANDIDATES = {
    "tiled2": ("TiledLoss(2x2) o balanced", lambda b: _tiled(b, tiles=2)),
    "tiled3": ("TiledLoss(3x3) o balanced", lambda b: _tiled(b, tiles=3)),
    "tiled4": ("TiledLoss(4x4) o balanced", lambda b: _tiled(b, tiles=4)),
    "tiled3-m0": ("TiledLoss(3x3, margin=0) o balanced", lambda b: _tiled(b, tiles=3, margin=0)),
    "tiled3-full-margin": ("TiledLoss(3x3, margin = the receptive-field radius) o balanced",
                           lambda b: _tiled(b, tiles=3, margin="field")),
    "tiled3-ps": ("TiledLoss(3x3, per_sample) o balanced", lambda b: _tiled(b, tiles=3, per_sample=True)),
    "tiled2-ps": ("TiledLoss(2x2, per_sample) o balanced", lambda b: _tiled(b, tiles=2, per_sample=True)),
    "tiled4-ps": ("TiledLoss(4x4, per_sample) o balanced", lambda b: _tiled(b, tiles=4, per_sample=True)),
    "tiled2-m0": ("TiledLoss(2x2, margin=0) o balanced", lambda b: _tiled(b, tiles=2, margin=0)),
    "tiled2-ps-m0": ("TiledLoss(2x2, margin=0, per_sample) o balanced",
                     lambda b: _tiled(b, tiles=2, margin=0, per_sample=True)),
    "tiled3-ps-m0": ("TiledLoss(3x3, margin=0, per_sample) o balanced",
                     lambda b: _tiled(b, tiles=3, margin=0, per_sample=True)),
    "batch-half": ("BatchSampledLoss(k=B/2) o balanced", lambda b: _batch(b, 0.5)),
    "batch-quarter": ("BatchSampledLoss(k=B/4) o balanced", lambda b: _batch(b, 0.25)),
    "tiled2-batch-half": ("TiledLoss(2x2) o BatchSampledLoss(k=B/2) o balanced",
                          lambda b: _tiled(_batch(b, 0.5), tiles=2, margin=0)),
    "down2": ("DownsampledLoss(2) o balanced (the whole image at half resolution)", lambda b: _down(b, 2)),
    "tiled4-m32-reuse": ("TiledLoss(4x4, margin=32, reuse_gradients) o balanced (a single-image fit's other tiles "
                         "keep their last term)", lambda b: _tiled(b, tiles=4, margin=32, reuse=True)),
    "tiled3-m16-reuse": ("TiledLoss(3x3, margin=16, reuse_gradients) o balanced",
                         lambda b: _tiled(b, tiles=3, margin=16, reuse=True)),
}


def _down(balanced, factor):
    import fastloss

    return fastloss.DownsampledLoss(balanced, factor)


def _tiled(balanced, tiles, margin="auto", per_sample=False, reuse=False):
    import fastloss

    if margin == "field":
        feature = balanced.loss if isinstance(balanced, fastloss.CachedTarget) else balanced
        margin = (feature.receptive_field()[0] + 1) // 2
    return fastloss.TiledLoss(balanced, tiles, margin=margin, per_sample=per_sample, reuse_gradients=reuse)


def _batch(balanced, k):
    import fastloss

    return fastloss.BatchSampledLoss(balanced, k)


def register_candidates(names: list[str]) -> list[str]:
    """Register the perceptual fast-tier candidates ``names`` (see ``CANDIDATES``) for this process."""
    import fastloss
    from fastloss.presets import entry

    balanced = entry("balanced", "perceptual")
    for name in names:
        if name not in CANDIDATES:
            raise SystemExit(f"--candidates: unknown {name!r}; known: {list(CANDIDATES)}")
        description, build = CANDIDATES[name]
        fastloss.register_preset(name, "perceptual", lambda loss, caps, f=build: f(balanced.build(loss, caps)),
                                 description, overwrite=True)
    return list(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--presets", nargs="+", default=["exact", "balanced", "fastest", "none"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--output", default="results/e2e")
    parser.add_argument("--topology-args", default="", help="extra arguments for the topology example")
    parser.add_argument("--perceptual-args", default="", help="extra arguments for the perceptual example")
    parser.add_argument("--restoration-args", default="", help="extra arguments for the restoration example")
    parser.add_argument("--restoration-deep-args", default="", help="extra arguments for the deep-taps restoration task")
    parser.add_argument("--candidates", nargs="*", default=[], choices=list(CANDIDATES),
                        help="also run these perceptual fast-tier candidates (tile and batch sampling around balanced)")
    parser.add_argument("--intervals", nargs="*", type=int, default=[],
                        help="also run IntervalLoss(N) o balanced (compensated and not) for these N: how the "
                             "topology `fastest` preset is chosen")
    args = parser.parse_args(argv)
    presets = list(args.presets)
    for n in args.intervals:
        presets += register_interval_candidates(n)
    presets += register_candidates(args.candidates)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    summaries, all_runs = {}, {}
    for task in args.tasks:
        module = load_example(TASKS[task][0])
        extra = [*TASKS[task][3], *getattr(args, f"{task.replace('-', '_')}_args").split()]
        runs = []
        # one untimed run first: imports, numba's cache loading and allocator warm-up are not the first
        # preset's cost
        print(f"{task}: warm-up run (not reported)", file=sys.stderr, flush=True)
        short = ["--steps", "3"] if task in PERCEPTUAL_TASKS else []  # warm-up: a few steps are enough
        module.main(["--preset", presets[0], "--seed", "0", "--quiet", *extra, *short])
        for seed in range(args.seeds):  # presets interleaved per seed: a machine's changing load hits them alike
            for preset in presets:
                if task == "topology" and preset in args.candidates:
                    continue
                print(f"{task}: preset={preset} seed={seed}", file=sys.stderr, flush=True)
                runs.append(module.main(["--preset", preset, "--seed", str(seed), "--quiet", *extra]))
                with open(out / "runs.jsonl", "a") as log:  # each run as it ends: a stopped sweep keeps its runs
                    log.write(json.dumps({"task": task, **runs[-1]}) + "\n")
        all_runs[task] = runs
        summaries[task] = summarise(runs, task)
        print(table(task, summaries[task]) + "\n", flush=True)
    (out / "e2e.json").write_text(json.dumps({"runs": all_runs, "summary": summaries, "goal": GOAL}, indent=2))
    plot(summaries, out / "e2e.png")
    print(f"wrote {out / 'e2e.json'} and {out / 'e2e.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
