"""autotune chooses by significance, not by noise (issue 16, item 3)."""

from __future__ import annotations

import time

import torch
from fakes import Sleepy
from shapes import ring, soft_prediction

import fastloss
from fastloss.autotune import AutotunedLoss, default_candidates


class Jittery(Sleepy):
    """Exact (MSE), but each copy the harness makes is alternately fast and slow: a candidate whose few-round
    median says "5x faster" while it is no faster at all."""

    copies = 0

    def __init__(self):
        super().__init__(0.0)

    def __deepcopy__(self, memo):
        Jittery.copies += 1
        twin = Jittery()
        twin.seconds = 0.002 if Jittery.copies % 2 == 0 else 0.05
        return twin


def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)


def test_a_candidate_faster_only_by_noise_is_not_chosen():
    x, y = data()
    result = fastloss.autotune(Sleepy(0.01), x, y, candidates={"jittery": Jittery()}, time_budget=60, steps=2, rounds=3,
                               drop_factor=100.0)
    (entry,) = result.candidates
    assert entry.rounds >= 5 and entry.speedup_low is not None and entry.speedup_low < 1
    assert entry.status == "passes, not significantly faster" and result.chosen == "exact"


def test_a_clearly_faster_candidate_is_chosen_with_enough_rounds():
    x, y = data()
    result = fastloss.autotune(Sleepy(0.02), x, y, candidates={"quick": Sleepy(0.002)}, time_budget=60, steps=2, rounds=2)
    (entry,) = result.candidates
    assert entry.rounds >= 5 and entry.speedup_low > 1 and result.chosen == "quick" and entry.status == "chosen"


def test_too_little_time_for_significance_is_not_faster():
    x, y = data()
    started = time.perf_counter()
    result = fastloss.autotune(Sleepy(0.05), x, y, candidates={"quick": Sleepy(0.005)}, time_budget=0.8, steps=2, rounds=1)
    assert time.perf_counter() - started < 0.8 + 1.0
    (entry,) = result.candidates
    assert entry.speedup_low is None and result.chosen == "exact"
    assert entry.status in ("passes, not significantly faster", "not measured (deviation): time budget")


def test_the_same_computation_is_not_timed_as_a_candidate():
    target = torch.cat([ring(16, 3 + i, 2) for i in range(2)])
    topo = fastloss.TopologicalLoss(workers=1)  # native engine: balanced and fastest add nothing to it
    result = fastloss.autotune(topo, soft_prediction(target, noise=0.5), target, time_budget=60, steps=2, rounds=1,
                               max_rounds=2, drop_factor=100.0)
    by = {c.name: c for c in result.candidates}
    for name in ("preset:balanced", "preset:fastest"):
        assert by[name].status.startswith("same computation as the exact loss: not timed"), by[name].status
        assert not by[name].round_times and by[name].loss_error == 0  # deviation still measured: exactly 0
    assert result.chosen not in ("preset:balanced", "preset:fastest")


def test_pairing_reuse_is_not_offered_by_default():
    loss = fastloss.BettiMatchingLoss()
    assert "CachedPH(5)" not in default_candidates(loss)
    assert "CachedPH(5)" in default_candidates(loss, include_reuse=True)
    assert "CachedPH(1), workers=1" in default_candidates(loss)  # exact: still offered


def test_autotune_and_preset_auto_return_the_same_type_with_describe():
    mask = torch.zeros(2, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    x = mask * 0.8 + 0.1
    topo = fastloss.TopologicalLoss(workers=1)
    kwargs = dict(time_budget=10, steps=2, rounds=1, max_rounds=1, include_defaults=False,
                  candidates={"i": fastloss.IntervalLoss(topo, every=2)})
    chosen = fastloss.autotune(topo, x, mask, **kwargs).loss
    auto = fastloss.preset("auto", topo, example=(x, mask), **kwargs)
    assert type(chosen) is type(auto) is AutotunedLoss
    assert auto.describe().startswith("autotune chose ") and chosen.describe().startswith("autotune chose ")
    assert torch.equal(auto(x, mask), topo(x, mask))  # chose exact (1 round: nothing is significant) and says so
