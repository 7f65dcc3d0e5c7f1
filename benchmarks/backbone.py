"""The perceptual backbones' fast path, variant by variant: ``python -m benchmarks.backbone``.

For each loss (VGG19, ResNet18, LPIPS), size and batch, one training call (forward + backward to the
input) in each variant, timed interleaved (``--rounds`` rounds, the variants' order rotated each round;
synchronised clock, CUDA events on a GPU), with peak memory and the gradient cosine / value error
against float32:

- ``fp32``: float32, channels-first (on CUDA also ``fp32-tf32``: TF32 convolutions and matmuls on,
  and plain ``fp32`` with TF32 off);
- ``autocast``: :class:`fastloss.AMPLoss` in the device's native low precision (skipped where none is);
- ``cast-once``: the backbone's weights cast once to the native low precision + channels_last
  (what the ``balanced`` preset does; skipped where none is native);
- ``cast-once+static``: the same through the static-shape path (``torch.compile``; CUDA Graphs on CUDA);
- ``cached-target``: ``cast-once`` (or ``fp32`` where no low precision is native) behind
  :class:`fastloss.CachedTarget`, the target repeating (steady state of an epoch-based run).

Timing: :func:`fastloss.bench.protocol.time_calls` (``--calls`` calls per variant per round).

Prints a markdown table (machine named) and writes ``--output`` (JSON). Random-init backbones
(``weights=None``): the cost is the same as pretrained.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import fastloss
from fastloss import hardware
from fastloss.bench.deviation import cosine
from fastloss.bench.measure import peak_memory, training_step
from fastloss.bench.protocol import time_calls
from fastloss.bench.report import machine_summary
from fastloss.hardware import machine_info

from .references import PERCEPTUAL, WEIGHTS_NOTE

LOSSES = {name: PERCEPTUAL[name] for name in ("vgg19", "resnet18", "lpips")}


def variants(make, device: torch.device, static: bool) -> dict[str, tuple]:
    """name -> (loss, TF32 on?) for this device."""
    caps = hardware.capabilities(device)
    low = caps.low_precision
    out: dict[str, tuple] = {"fp32": (make(), False)}
    if device.type == "cuda" and caps.compute_capability and caps.compute_capability[0] >= 8:
        out["fp32-tf32"] = (make(), True)
    if low is not None:
        out["autocast"] = (fastloss.AMPLoss(make()), True)
        out["cast-once"] = (make().use_dtype(low).use_channels_last(), True)
        if static:
            out["cast-once+static"] = (make().use_dtype(low).use_channels_last().use_static_shapes(), True)
    fast = make().use_dtype(low).use_channels_last() if low is not None else make()
    out["cached-target"] = (fastloss.CachedTarget(fast), True)
    return out


class _TF32:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.enabled

    def __exit__(self, *exc: object) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def measure(name: str, size: int, batch: int, device: torch.device, rounds: int, calls: int, static: bool) -> list[dict]:
    template = LOSSES[name]()  # seeded (benchmarks.references)
    make = lambda: copy.deepcopy(template)  # noqa: E731 - the same weights in every variant
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    y = torch.rand(batch, 3, size, size, generator=g).to(device)
    table = {k: (loss.to(device), tf32) for k, (loss, tf32) in variants(make, device, static).items()}
    with _TF32(False):
        ref_value, ref_grad = training_step(table["fp32"][0], x, y)
    rows = {}
    for key, (loss, tf32) in table.items():
        with _TF32(tf32):
            started = time.perf_counter()
            value, grad = training_step(loss, x, y)  # warm-up (compiles on the static path)
            training_step(loss, x, y)
            rows[key] = {"variant": key, "first_calls_s": time.perf_counter() - started, "times": [],
                         "grad_cosine": cosine(grad, ref_grad),
                         "value_rel_error": abs(float(value) - float(ref_value)) / max(abs(float(ref_value)), 1e-12),
                         "peak_mib": (peak_memory(lambda loss=loss: training_step(loss, x, y), device) or 0) / 2**20}
    def call(loss, tf32: bool) -> None:
        with _TF32(tf32):
            training_step(loss, x, y)

    timings = time_calls({k: (lambda loss=loss, tf32=tf32: call(loss, tf32)) for k, (loss, tf32) in table.items()},
                         rounds, device=device, calls=calls, reference="fp32", warmup=False)  # warmed up above
    for key, timing in timings.items():
        rows[key]["times"] = timing.round_times
    base = rows["fp32"]["times"]
    out = []
    for row in rows.values():
        ratios = sorted(b / t for b, t in zip(base, row["times"], strict=True))
        row.update(loss=name, size=size, batch=batch, ms=1e3 * sorted(row["times"])[len(row["times"]) // 2],
                   speedup=ratios[len(ratios) // 2], speedup_range=[ratios[0], ratios[-1]])
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backbone", description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES), default=list(LOSSES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="training calls per variant per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-static", action="store_true", help="skip the static-shape path (compile time)")
    parser.add_argument("--output", default="results/backbone.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine_info(str(device), args.threads)
    print(f"note: {WEIGHTS_NOTE}\nmachine: {machine_summary(info)}; torch threads={args.threads}; "
          "one training call = forward + backward to the input\n")
    print("| loss | size | batch | variant | ms/call | speedup vs fp32 [range] | peak MiB | grad cos vs fp32 "
          "| value error | first 2 calls s |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.losses:
        for size in args.sizes:
            for batch in args.batches:
                for row in measure(name, size, batch, device, args.rounds, args.calls, not args.no_static):
                    rows.append(row)
                    print(f"| {name} | {size} | {batch} | {row['variant']} | {row['ms']:.1f} | {row['speedup']:.2f} "
                          f"[{row['speedup_range'][0]:.2f}, {row['speedup_range'][1]:.2f}] | {row['peak_mib']:.0f} "
                          f"| {row['grad_cosine']:.4f} | {row['value_rel_error']:.2%} | {row['first_calls_s']:.1f} |",
                          flush=True)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine_info": info, "note": WEIGHTS_NOTE, "rows": rows}, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
