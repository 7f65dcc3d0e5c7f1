"""Per-call latency of the reference losses: ``python -m benchmarks.latency [--sizes 256 512] [--batch 1]``.

One training call (forward + backward w.r.t. the input) measured with ``torch.utils.benchmark.Timer``
(``blocked_autorange``: repeated blocks, synchronised on CUDA), on ``--threads`` torch threads.
Perceptual backbones use random weights (``weights=None``): the cost is the same as pretrained.
"""

from __future__ import annotations

import argparse

import torch
import torch.utils.benchmark as benchmark

import fastloss
from fastloss.bench import workloads
from fastloss.bench.measure import training_step

from .suite import WEIGHTS_NOTE

LOSSES = {
    "topology": lambda: fastloss.TopologicalLoss(workers=1),
    "vgg19": lambda: fastloss.PerceptualLoss("vgg19", weights=None),
    "vgg16": lambda: fastloss.PerceptualLoss("vgg16", weights=None),
    "resnet18": lambda: fastloss.PerceptualLoss("resnet18", weights=None),
    "lpips": lambda: fastloss.LPIPSLoss(weights=None),
}


def inputs(key: str, size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    if key == "topology":
        wl = workloads.topology_workload(size=size, batch=batch, samples=batch, epochs=1)
    else:
        wl = workloads.perceptual_workload(size=size, batch=batch, samples=batch, epochs=1)
    return next(wl.trajectory())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES), default=list(LOSSES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-run-time", type=float, default=2.0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"note: {WEIGHTS_NOTE}; device={args.device}; torch threads={args.threads}; batch={args.batch}")
    print("| loss | size | median ms | IQR ms | runs |\n|---|---|---|---|---|")
    for key in args.losses:
        loss = LOSSES[key]().to(device)
        for size in args.sizes:
            x, t = (v.to(device) for v in inputs(key, size, args.batch))
            timer = benchmark.Timer(
                stmt="training_step(loss, x, t)",
                globals={"training_step": training_step, "loss": loss, "x": x, "t": t},
                num_threads=args.threads, label=key, sub_label=f"{size}x{size}",
            )
            m = timer.blocked_autorange(min_run_time=args.min_run_time)
            print(f"| {key} | {size}x{size} | {m.median * 1e3:.1f} | {m.iqr * 1e3:.1f} | {len(m.times)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
