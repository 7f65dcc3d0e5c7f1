"""What the default suite measures: for each loss, every wrapper alone and every preset.

References: each loss is measured against its default-constructed self (what a user gets from
``fastloss.TopologicalLoss()``); the topology loss is also reported against the seed project's
baseline (cripser on one worker), and Betti matching against topolosses' C++ implementation (where the
dev extra installed it), so both speedups are visible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

import fastloss
from fastloss import (
    AMPLoss,
    BatchSampledLoss,
    CachedPH,
    CachedTarget,
    DownsampledLoss,
    IntervalLoss,
    ScheduledWeight,
    TiledLoss,
    schedules,
)
from fastloss.bench import workloads

from .references import (
    REFERENCE_BETTI,
    SEED_BASELINE,
    WEIGHTS_NOTE,
    perceptual,
    seed_topology,
    topolosses_betti,
)

__all__ = ["CASES", "WEIGHTS_NOTE", "Case", "candidates"]


@dataclass
class Case:
    name: str
    make_loss: Callable[[], nn.Module]
    make_workload: Callable[[bool], list[workloads.Workload]]  # full -> workloads
    make_baselines: Callable[[], dict[str, nn.Module]] = field(default=dict)


def _warmup(steps: int) -> schedules.Schedule:
    return schedules.linear_warmup(max(1, steps // 2))


def candidates(loss: nn.Module, steps: int) -> dict[str, nn.Module]:
    """Each wrapper alone, then each preset (descriptions in the presets registry)."""
    topology = getattr(loss, "preset_kind", None) == "topology"
    out = {
        "DownsampledLoss(2)": DownsampledLoss(loss, factor=2),
        "IntervalLoss(4)": IntervalLoss(loss, every=4),
        "ScheduledWeight(warm-up)": ScheduledWeight(loss, _warmup(steps)),
    }
    if topology:
        out["CachedPH(5)"] = CachedPH(loss, refresh_every=5)
    else:  # autocast does nothing for PH on the CPU; for networks it runs the native dtype (or float32)
        out["AMPLoss"] = AMPLoss(loss)
        out["CachedTarget"] = CachedTarget(loss)
        # the sampling wrappers: one tile / half the batch per step, judged over a cycle (deviation["cycle"])
        out["TiledLoss(3x3)"] = TiledLoss(loss, 3)
        out["BatchSampledLoss(k=B/2)"] = BatchSampledLoss(loss, 0.5)
    for name in ("balanced", "fastest"):
        out[f"preset:{name}"] = fastloss.preset(name, loss)
    return out


def _topolosses_betti() -> dict[str, nn.Module]:
    """The C++ reference of Betti matching (topolosses, dev extra) as a baseline, where it is installed."""
    try:
        return {REFERENCE_BETTI: topolosses_betti()}
    except (ImportError, SystemExit):
        return {}


def _betti_workloads(full: bool) -> list[workloads.Workload]:
    wl = [workloads.topology_workload(size=256, batch=4, samples=8, epochs=3)]
    if full:
        wl += [workloads.topology_workload(size=512, batch=4, samples=8, epochs=3),
               workloads.topology_workload(size=64, dim=3, batch=2, samples=4, epochs=3)]
    return wl


def _topology_workloads(full: bool) -> list[workloads.Workload]:
    wl = [workloads.topology_workload(size=256, batch=4, samples=8, epochs=5),
          # targets never repeat (random crops and flips): what the engine gives without the target cache
          workloads.topology_workload(size=256, batch=4, samples=8, epochs=3, augment=True)]
    if full:
        wl += [workloads.topology_workload(size=512, batch=4, samples=8, epochs=5),
               workloads.topology_workload(size=64, dim=3, batch=2, samples=4, epochs=5)]
    return wl


def _perceptual_workloads(full: bool) -> list[workloads.Workload]:
    wl = [workloads.perceptual_workload(size=128, batch=2, samples=4, epochs=3)]
    if full:
        wl.append(workloads.perceptual_workload(size=512, batch=1, samples=2, epochs=2))
    return wl


CASES = {
    "topology": Case("TopologicalLoss", lambda: fastloss.TopologicalLoss(), _topology_workloads,
                     lambda: {SEED_BASELINE: seed_topology()}),
    "betti": Case("BettiMatchingLoss", lambda: fastloss.BettiMatchingLoss(), _betti_workloads, _topolosses_betti),
    "vgg19": Case("PerceptualLoss(vgg19)", lambda: perceptual("vgg19"), _perceptual_workloads),
    "resnet18": Case("PerceptualLoss(resnet18)", lambda: perceptual("resnet18"), _perceptual_workloads),
    "lpips": Case("LPIPSLoss(vgg)", lambda: perceptual("lpips"), _perceptual_workloads),
}
