"""The built-in presets: ``exact``, ``balanced`` and ``fastest`` for topology and perceptual losses.

How they are chosen (figures: docs, ``python -m benchmarks`` and ``python -m benchmarks.e2e``):

- balanced: the fastest stack that computes the loss on every step with median gradient cosine >= 0.85
  and median loss error <= 2%, using low precision only where the device computes it natively;
- fastest: the fastest stack that meets the end-to-end goal (``python -m benchmarks.e2e``: the task metric
  within 2% of exact, 3 seeds); for perceptual losses also at most 1/8 of the exact loss's time where it can
  (docs/benchmarks.md says where it does and where not).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ph
from ..hardware import Capabilities
from ..losses import BettiMatchingLoss, TopologicalLoss
from ..losses._feature import FeatureLoss
from ..wrappers import CachedPH, CachedTarget, TiledLoss
from .registry import register_preset

__all__ = ["perceptual_fast_path", "target_cache_bytes"]


def _cheap_target_side(loss: nn.Module) -> bool:
    """Whether the loss's target side costs less than caching it would: rank matching on the native
    engine labels a mask in O(n), less than hashing it for the cache."""
    return isinstance(loss, TopologicalLoss) and loss.config.backend != "cripser" and ph.HAVE_NUMBA


def _topology_balanced(loss: nn.Module) -> nn.Module:
    # Exact: the target's side is cached only where it pays (Betti matching, the cripser backend); reusing
    # a prediction's pairing (refresh_every > 1) fails the contract (docs/presets.md). A user's workers=1 is kept.
    if not isinstance(loss, (TopologicalLoss, BettiMatchingLoss)):  # a user's loss of kind "topology"
        return loss
    return loss if _cheap_target_side(loss) else CachedPH(loss, refresh_every=1)


def _topology_fastest(loss: nn.Module) -> nn.Module:
    # = balanced: no IntervalLoss period met the end-to-end goal (`python -m benchmarks.e2e`, docs).
    return _topology_balanced(loss)


def perceptual_fast_path(loss: nn.Module, caps: Capabilities) -> nn.Module:
    """The backbone's fast path for ``caps``: weights cast once to the native low precision (none where
    it would be emulated) and laid out channels-last, unless the user set either explicitly."""
    if not isinstance(loss, FeatureLoss):
        return loss
    low = caps.low_precision
    if "compute_dtype" not in loss.explicit and low is not None:
        loss.use_dtype(low)
    if "channels_last" not in loss.explicit and low is not None:
        loss.use_channels_last(True)
    return loss


def target_cache_bytes(caps: Capabilities) -> int:
    """The target cache's bound in presets: 1 GiB of host memory; on a GPU at most 5% of its memory."""
    limit = 1 << 30
    if caps.device_type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(torch.device(caps.device)).total_memory
        limit = min(limit, total // 20)
    return limit


def _perceptual_balanced(loss: nn.Module, caps: Capabilities) -> nn.Module:
    # Exact: the target's features are cached (training targets repeat every epoch); the backbone
    # runs in the native low precision where there is one, float32 elsewhere.
    loss = perceptual_fast_path(loss, caps)
    return CachedTarget(loss, max_bytes=target_cache_bytes(caps)) if isinstance(loss, FeatureLoss) else loss


def _perceptual_fastest(loss: nn.Module, caps: Capabilities) -> nn.Module:
    # one tile of nine per step, no margin: the cheapest candidate within the end-to-end goal (docs/benchmarks.md)
    balanced = _perceptual_balanced(loss, caps)
    return TiledLoss(balanced, 3, margin=0, fit_grid=True) if isinstance(loss, FeatureLoss) else balanced


register_preset("exact", "topology", lambda loss: loss, "no wrapper: the reference loss")
register_preset("balanced", "topology", _topology_balanced,
                "exact: CachedPH(refresh_every=1) where the target's side is costly (Betti matching, the cripser "
                "backend); the bare loss for rank matching on the native engine")
register_preset("fastest", "topology", _topology_fastest,
                "= balanced: no IntervalLoss period met the end-to-end goal (docs)")
register_preset("exact", "perceptual", lambda loss: loss, "no wrapper: the reference loss")
register_preset(
    "balanced", "perceptual", _perceptual_balanced,
    "CachedTarget o backbone cast once to the native low precision + channels_last (float32 where none is native)",
)
register_preset("fastest", "perceptual", _perceptual_fastest,
                "TiledLoss(3x3, margin=0) o balanced: one tile per step, every tile once per cycle")
