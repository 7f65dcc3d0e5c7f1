"""CachedPH memory soak: ``python -m benchmarks.memory [--targets 10000] [--size 64] [--max-entries 4096]``.

Feeds ``--targets`` distinct target masks (8 per call) through ``CachedPH`` and prints the cache size and
the process's resident memory as it goes: with the cache bounded, resident memory levels off.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch

import fastloss


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-entries", type=int, default=4096)
    args = parser.parse_args(argv)
    loss = fastloss.CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=5, max_entries=args.max_entries)
    g = torch.Generator().manual_seed(0)
    print("| targets seen | cache entries | resident MiB |\n|---|---|---|")
    calls = args.targets // 8
    for i in range(calls):
        target = (torch.nn.functional.avg_pool2d(torch.rand(8, 1, args.size, args.size, generator=g), 5, 1, 2) > 0.55).float()
        loss(torch.rand(target.shape, generator=g), target)
        if (i + 1) % max(1, calls // 10) == 0:
            gc.collect()
            print(f"| {8 * (i + 1)} | {loss.cache_info()['entries']} | {rss_mib():.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
