"""CachedPH holds no loss-specific code: any loss with the CacheablePH hooks is cached through them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import fastloss
from fastloss import CachedPH
from fastloss.losses._topology import CacheablePH, selection_index, to_numpy


@dataclass(frozen=True)
class Peak:
    index: np.ndarray  # the pixel carrying the loss


class PeakLoss(nn.Module):
    """A toy 'topology' loss: each map's loss is its value at its highest pixel, times the target's area."""

    Selection = Peak
    preset_kind = "topology"

    def __init__(self):
        super().__init__()
        self.selects = 0
        self.sides = 0

    @property
    def workers(self):
        return 1

    def target_key(self) -> str:
        return "peak"

    def uncacheable_reason(self):
        return None

    def target_side(self, mask, dims):
        self.sides += 1
        return (int(mask.sum()),)

    def select(self, f, side, dims):
        self.selects += 1
        return Peak(np.array([int(np.argmax(f))], np.int64))

    def compute_with(self, input, target, select):
        n = input.shape[0] * input.shape[1]
        f = input.reshape(n, -1)
        masks = to_numpy(target.reshape(n, -1)).astype(np.uint8)
        selections = select(to_numpy(f), masks, (0,))
        picked = torch.take(f.reshape(-1), selection_index(selections, "index", f.shape[1], f.device))
        area = torch.tensor([float(m.sum()) for m in masks])
        return (picked * area).mean()

    def forward(self, input, target):
        return self.compute_with(input, target, lambda f, m, dims: [
            self.select(f[i], self.target_side(m[i], dims), dims) for i in range(len(f))])


def batch():
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 1, 6, 6, generator=g) > 0.5).float()
    return torch.rand(2, 1, 6, 6, generator=g), target


def test_the_protocol_names_what_both_topology_losses_provide():
    assert isinstance(fastloss.TopologicalLoss(), CacheablePH) and isinstance(fastloss.BettiMatchingLoss(), CacheablePH)
    assert isinstance(PeakLoss(), CacheablePH) and not isinstance(nn.MSELoss(), CacheablePH)


def test_a_foreign_loss_with_the_hooks_is_cached():
    x, t = batch()
    loss = PeakLoss()
    exact = loss(x, t).item()
    cached = CachedPH(PeakLoss(), refresh_every=2)
    for _ in range(2):
        value = cached(x.clone().requires_grad_(), t)
    info = cached.cache_info()
    assert value.item() == pytest.approx(exact)
    assert (info["misses"], info["hits"], info["target_hits"]) == (2, 2, 2) and cached.loss.sides == 2
    state = cached.state_dict()
    again = CachedPH(PeakLoss(), refresh_every=2)
    again.load_state_dict(state)
    assert again.cache_info()["entries"] == 2 and again(x.clone().requires_grad_(), t).item() == pytest.approx(exact)
    assert again.loss.selects == 2  # the restored pairings had served their 2 visits: the third refreshes both maps


def test_a_loss_without_the_hooks_is_refused():
    with pytest.raises(TypeError, match="must be a fastloss.TopologicalLoss or fastloss.BettiMatchingLoss"):
        CachedPH(nn.MSELoss())
    with pytest.raises(ValueError, match="CachedPH needs target masks to recognise samples; a `betti` prior has none"):
        CachedPH(fastloss.TopologicalLoss(betti=(1, 0)))
