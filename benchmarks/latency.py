"""Per-call latency of the reference losses: ``python -m benchmarks.latency [--sizes 256 512] [--batch 1]``.

One training call (forward + backward w.r.t. the input) measured with ``torch.utils.benchmark.Timer``
(``blocked_autorange``: repeated blocks, synchronised on CUDA), on ``--threads`` torch threads.
Perceptual backbones use random weights (``weights=None``): the cost is the same as pretrained.

``--ph`` compares the persistent-homology backends per map instead (native engine vs cripser): the
diagram alone, the target's Betti numbers, and a whole loss call with a fresh target, interleaved
round by round so that both sides see the same machine load; it reports medians, IQRs and the
per-round speedup's median and IQR.

``--betti`` compares BettiMatchingLoss with topolosses' BettiMatchingLoss (the reference, dev extra) the
same way: a whole loss call (forward + backward) on a ``--batch`` of the topology workload per size,
interleaved, then the first-call compile time of the matching kernels in fresh processes (empty numba
cache, then the cache it wrote). The table rows ``betti`` and ``topolosses-betti`` time the same calls
one loss after the other.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.utils.benchmark as benchmark

import fastloss
from fastloss import hardware
from fastloss.bench import workloads
from fastloss.bench.measure import training_step
from fastloss.bench.protocol import time_calls
from fastloss.bench.report import machine_summary
from fastloss.losses import topological as topo

from .references import PERCEPTUAL, WEIGHTS_NOTE, seed_topology, topolosses_betti

LOSSES = {
    "topology": lambda: fastloss.TopologicalLoss(workers=1),
    "betti": lambda: fastloss.BettiMatchingLoss(workers=1),
    "topolosses-betti": topolosses_betti,
    "topology[cripser]": seed_topology,
    **PERCEPTUAL,
}


def inputs(key: str, size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    if key.startswith("topology") or "betti" in key:
        wl = workloads.topology_workload(size=size, batch=batch, samples=batch, epochs=1)
    else:
        wl = workloads.perceptual_workload(size=size, batch=batch, samples=batch, epochs=1)
    return next(wl.trajectory())


def machine() -> str:
    return machine_summary(hardware.machine_info("cpu"))


def interleaved(fns: dict[str, object], rounds: int) -> dict[str, np.ndarray]:
    """Seconds per call of each function, one call of each per round after one warm-up call (order rotated
    every round; :func:`fastloss.bench.protocol.time_calls`)."""
    return {k: np.array(t.round_times) for k, t in time_calls(fns, rounds).items()}


def ph_cases(size: int, dim: int) -> tuple[str, dict, list[tuple[str, str, str]]]:
    """The timed functions for one map of a topology workload and the (label, new, old) pairs to report."""
    x, t = inputs("topology", size, 1) if dim == 2 else next(
        workloads.topology_workload(size=size, batch=1, samples=1, epochs=1, dim=3).trajectory())
    f32 = (1 - x[0, 0]).numpy()
    mask = t[0, 0].numpy()
    dims = tuple(range(dim))
    native = fastloss.TopologicalLoss(workers=1, backend="auto")
    cripser = fastloss.TopologicalLoss(workers=1, backend="cripser")
    fns = {
        "ph native": lambda: topo.persistence_diagram(f32, "V", dims=dims, backend="auto"),
        "ph cripser": lambda: topo.persistence_diagram(f32, "V", dims=dims, backend="cripser"),
        "betti labelling": lambda: topo.betti_numbers(mask, "V", backend="auto"),
        "betti cripser": lambda: topo.betti_numbers(mask, "V", backend="cripser"),
        "loss native": lambda: training_step(native, x, t),
        "loss cripser": lambda: training_step(cripser, x, t),
    }
    if dim == 3:  # the two union-find passes alone (no dim 1)
        fns["ph native 0+2"] = lambda: topo.persistence_diagram(f32, "V", dims=(0, 2), backend="native")
    what = "dims 0+1" if dim == 2 else "dims 0+1+2"
    pairs = [(f"PH diagram ({what})", "ph native", "ph cripser"),
             ("target Betti numbers", "betti labelling", "betti cripser"),
             ("loss call, fresh target (fwd+bwd)", "loss native", "loss cripser")]
    if dim == 3:
        pairs.insert(1, ("PH diagram, dims 0+2 (native) vs cripser's run", "ph native 0+2", "ph cripser"))
    label = f"{size}x{size}" if dim == 2 else f"{size}^3"
    return label, fns, pairs


MEMORY_SNIPPET = """
import sys, threading, time, torch
import fastloss
from fastloss.bench import workloads
size = int(sys.argv[1])
torch.set_num_threads(1)
loss = fastloss.TopologicalLoss(workers=1)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
x, t = next(workloads.topology_workload(size=8, batch=1, samples=1, epochs=1, dim=3).trajectory())
loss(x.clone().requires_grad_(), t).backward()  # compile or load the kernels
x, t = next(workloads.topology_workload(size=size, batch=1, samples=1, epochs=1, dim=3).trajectory())
x = x.clone().requires_grad_()
base, peak, done = rss(), [0], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
th = threading.Thread(target=sample)
th.start()
loss(x, t).backward()
done[0] = True
th.join()
print(max(peak[0], rss()) - base, base)
"""


COMPILE3D_SNIPPET = """
import time, torch
import fastloss
x = torch.rand(1, 1, 16, 16, 16).requires_grad_()
t = (torch.rand(1, 1, 16, 16, 16) > 0.5).float()
t0 = time.perf_counter()
fastloss.TopologicalLoss(workers=1)(x, t).backward()
t1 = time.perf_counter()
fastloss.TopologicalLoss(workers=1)(x, t).backward()
print(t1 - t0, time.perf_counter() - t1)
"""


def peak_memory_3d(size: int) -> tuple[float, float]:
    """(peak bytes a TopologicalLoss call on a ``size``^3 map adds, per voxel; the RSS before) in a fresh
    process (resident memory sampled every 2 ms during the call, minus the RSS before it; kernels loaded)."""
    run = subprocess.run([sys.executable, "-c", MEMORY_SNIPPET, str(size)], capture_output=True, text=True,
                         check=True)
    added, before = (float(v) for v in run.stdout.split())
    return added / size**3, before


def compile_times(snippet: str) -> list[tuple[str, float, float]]:
    """(cache state, first call s, second call s) of ``snippet`` (which prints its last two figures as the first
    and second call) in fresh processes: an empty numba cache, then the cache the first one wrote."""
    out = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for state in ("cold (empty numba cache)", "warm (cache on disk)"):
            run = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, text=True,
                                 check=True)
            first, second = (float(v) for v in run.stdout.split()[-2:])
            out.append((state, first, second))
    return out


def _iqr(v: np.ndarray) -> str:
    return f"{np.median(v):.1f} ({np.percentile(v, 25):.1f}-{np.percentile(v, 75):.1f})"


def ratio_cells(new: np.ndarray, old: np.ndarray) -> str:
    """``new ms (IQR) | old ms (IQR) | old/new per round, median [IQR]`` for two interleaved series of seconds."""
    a, b = new * 1e3, old * 1e3
    ratio = b / a  # per round: both measured back to back
    return (f"{_iqr(a)} | {_iqr(b)} | {np.median(ratio):.2f}x "
            f"[{np.percentile(ratio, 25):.2f}, {np.percentile(ratio, 75):.2f}]")


def ph_main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; torch threads={args.threads}; one map (batch 1), construction V; "
          f"{args.rounds} interleaved rounds")
    print("| map | what | native ms (IQR) | cripser ms (IQR) | speedup median [IQR] |\n|---|---|---|---|---|")
    cases = [(s, 2) for s in args.sizes] + [(s, 3) for s in args.sizes3d]
    for size, dim in cases:
        label, fns, pairs = ph_cases(size, dim)
        times = interleaved(fns, args.rounds)
        for what, new, old in pairs:
            print(f"| {label} | {what} | {ratio_cells(times[new], times[old])} |", flush=True)
    if args.sizes3d and args.memory:
        print("\n| 3D map | TopologicalLoss call: peak memory added (bytes/voxel) | total (MiB) |\n|---|---|---|")
        for size in args.sizes3d:
            per_voxel, _ = peak_memory_3d(size)
            print(f"| {size}^3 | {per_voxel:.0f} | {per_voxel * size**3 / 2**20:.0f} |", flush=True)
        print("\n| numba cache | first 3D TopologicalLoss call s | second call s |\n|---|---|---|")
        for state, first, second in compile_times(COMPILE3D_SNIPPET):
            print(f"| {state} | {first:.2f} | {second:.3f} |", flush=True)
    return 0


COMPILE_SNIPPET = """
import time, torch
t0 = time.perf_counter()
import fastloss
t1 = time.perf_counter()
t = torch.zeros(1, 1, 32, 32); t[..., 8:24, 8:24] = 1; t[..., 12:20, 12:20] = 0
x = torch.rand(1, 1, 32, 32).requires_grad_()
fastloss.BettiMatchingLoss(workers=1)(x, t).backward()
t2 = time.perf_counter()
fastloss.BettiMatchingLoss(workers=1)(x, t).backward()
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def with_rings(t: torch.Tensor) -> torch.Tensor:
    """3D masks ``(B, C, n, n, n)`` with two solid tori added (a dim-1 loop each), so the target side has loops."""
    n = t.shape[-1]
    z, y, x = np.meshgrid(*(np.arange(n),) * 3, indexing="ij")
    out = t.clone()
    for centre, radius in ((n // 4, n // 5), (3 * n // 4, n // 6)):
        d = np.sqrt((np.sqrt((y - n / 2) ** 2 + (x - n / 2) ** 2) - radius) ** 2 + (z - centre) ** 2)
        out[..., torch.from_numpy(d < max(1.5, n / 32))] = 1
    return out


def betti_main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; torch threads={args.threads}; batch={args.batch}, construction V, "
          f"{args.rounds} interleaved rounds; forward + backward of the whole loss")
    print("| map | fastloss ms (IQR) | topolosses ms (IQR) | speedup median [IQR] |\n|---|---|---|---|")
    ours, ref = LOSSES["betti"](), topolosses_betti()
    maps = [(f"{s}x{s}", inputs("betti", s, args.batch)) for s in args.sizes]
    for s in args.sizes3d:  # the workload's 3D targets are tubes without loops: also with two rings added
        x, t = next(workloads.topology_workload(size=s, batch=args.batch, samples=args.batch, epochs=1,
                                                dim=3).trajectory())
        maps += [(f"{s}^3", (x, t)), (f"{s}^3, target with two rings added (loops)", (x, with_rings(t)))]
    for label, (x, t) in maps:  # 3D: every dim (dim 1 by reduction)
        times = interleaved({"ours": lambda x=x, t=t: training_step(ours, x, t),
                             "ref": lambda x=x, t=t: training_step(ref, x, t)}, args.rounds)
        print(f"| {label} | {ratio_cells(times['ours'], times['ref'])} |", flush=True)
    print("\n| numba cache | first call s (import excluded) | second call s |\n|---|---|---|")
    for state, first, second in compile_times(COMPILE_SNIPPET):
        print(f"| {state} | {first:.2f} | {second:.3f} |", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.splitlines()[0])
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES),
                        default=[k for k in LOSSES if k != "topolosses-betti"],
                        help="default: all but topolosses-betti (the reference, dev extra only)")
    parser.add_argument("--sizes", nargs="*", type=int, default=[256, 512])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--ph", action="store_true", help="native PH engine vs cripser, per map (see above)")
    parser.add_argument("--sizes3d", nargs="*", type=int, default=[64], help="3D map sides for --ph and --betti")
    parser.add_argument("--memory", action="store_true",
                        help="with --ph: peak memory of a 3D loss call per --sizes3d, and 3D first-call compile times")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds for --ph and --betti")
    parser.add_argument("--betti", action="store_true",
                        help="BettiMatchingLoss vs topolosses' (interleaved), and kernel compile time (see above)")
    args = parser.parse_args(argv)
    if args.ph:
        return ph_main(args)
    if args.betti:
        return betti_main(args)
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
