"""The named reference losses every benchmark script measures against, and what they are built with.

One owner for them: the suite (``python -m benchmarks``), ``benchmarks.latency`` and
``benchmarks.backbone`` all take their losses from here, so "vgg19" means the same loss everywhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

import fastloss

__all__ = [
    "PERCEPTUAL", "REFERENCE_BETTI", "SEED_BASELINE", "WEIGHTS_NOTE", "perceptual", "seed_topology",
    "topolosses_betti",
]

WEIGHTS_NOTE = "perceptual backbones use weights=None (random init): no pretrained weights can be downloaded here"
SEED_BASELINE = "seed: cripser, 1 worker"
REFERENCE_BETTI = "topolosses (C++ reference)"


def perceptual(backbone: str, seed: int = 0) -> nn.Module:
    """The perceptual reference ``backbone`` (``vgg16``, ``vgg19``, ``resnet18`` or ``lpips``), random init
    (see :data:`WEIGHTS_NOTE`; the cost is the same as pretrained), drawn from ``seed``: the same weights
    in every run, so deviation figures reproduce. The global random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backbone == "lpips":
            return fastloss.LPIPSLoss(weights=None)
        return fastloss.PerceptualLoss(backbone, weights=None)


#: name -> factory of each perceptual reference
PERCEPTUAL: dict[str, Callable[[], nn.Module]] = {
    name: (lambda name=name: perceptual(name)) for name in ("vgg19", "vgg16", "resnet18", "lpips")
}


def seed_topology() -> nn.Module:
    """The seed project's topology loss: cripser on one worker."""
    return fastloss.TopologicalLoss(workers=1, backend="cripser")


def topolosses_betti() -> nn.Module:
    """topolosses' BettiMatchingLoss as the reference: the Betti-matching term alone, every channel."""
    try:
        from topolosses.losses import BettiMatchingLoss
    except ImportError as exc:
        raise SystemExit("topolosses-betti needs topolosses (the dev extra): pip install topolosses") from exc
    warnings.filterwarnings("ignore", module="topolosses")
    loss = BettiMatchingLoss(use_base_loss=False, alpha=1.0, include_background=True)
    loss.runs_outside_torch = True  # its matching runs in C++: no FLOP count
    return loss
