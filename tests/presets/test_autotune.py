"""fastloss.autotune: the choice rule, early drops, the time budget and bad arguments."""

import time

import pytest
import torch
import torch.nn.functional as F
from fakes import Sleepy, spying_sleepy
from shapes import ring, soft_prediction
from torch import nn

import fastloss
from fastloss import AMPLoss, IntervalLoss
from fastloss.autotune import AutotunedLoss, choose
from fastloss.bench.results import CandidateResult


def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 1, 16, 16, generator=g), torch.rand(4, 1, 16, 16, generator=g)


def cand(name, status="passes", speedup=2.0):
    return CandidateResult(name, stack=name, status=status, speedup=speedup, speedup_low=speedup)


class TestChoiceRule:
    def test_fastest_passing_wins_ties_by_name(self):
        assert choose([cand("b", speedup=3.0), cand("a", speedup=3.0), cand("c", speedup=1.5)]).name == "a"
        assert choose([cand("slow", speedup=5.0, status="fails: loss error"), cand("ok", speedup=1.2)]).name == "ok"

    def test_nothing_passes_or_nothing_is_faster(self):
        assert choose([cand("a", status="fails: x"), cand("b", status="dropped: 81.0x slower")]) is None
        assert choose([cand("a", speedup=0.9)]) is None
        assert choose([cand("a", speedup=3.0, status="passes, not significantly faster")]) is None

    def test_same_measurements_same_choice(self):
        pool = [cand(n, speedup=s) for n, s in [("x", 2.0), ("y", 2.5), ("z", 2.5)]]
        assert {choose(list(reversed(pool))).name, choose(pool).name} == {"y"}

    def test_bounds(self):
        c = CandidateResult("c", stack="c", loss_error=0.01, grad_cosine=0.9, accumulated_cosine=0.6)
        assert c.passes(0.02, 0.85) == "accumulated gradient cosine 0.600 < 0.85"
        c.accumulated_cosine = 0.95
        assert c.passes(0.02, 0.85) is None and "loss error" in c.passes(0.005, 0.85)


class TestAutotune:
    def test_drops_a_slow_candidate_and_fails_a_wrong_one(self):
        x, y = data()
        result = fastloss.autotune(
            # sleeps far apart: ratios that hold when a starved CI machine stalls a step by tens of ms
            Sleepy(0.05), x, y, time_budget=30, steps=4, rounds=2,
            candidates={"slow": Sleepy(0.5), "wrong": Sleepy(0.02, scale=2.0), "good": Sleepy(0.02)},
        )
        status = {c.name: c.status for c in result.candidates}
        assert status["slow"].startswith("dropped:") and "first timed step" in status["slow"]
        assert status["wrong"].startswith("fails: loss error 100.00%")
        assert status["good"] == "chosen" and result.chosen == "good"
        assert "| slow |" in result.table() and "autotune on cpu" in result.table()

    def test_exact_when_nothing_passes(self):
        x, y = data()
        loss = Sleepy(0.0)
        result = fastloss.autotune(loss, x, y, time_budget=30, steps=4, rounds=2,
                                   candidates={"wrong": Sleepy(0.0, scale=3.0)})
        assert result.chosen == "exact" and type(result.loss) is AutotunedLoss
        assert type(result.loss.loss) is Sleepy and result.loss.loss is not loss
        assert torch.equal(result.loss(x, y), loss(x, y))

    def test_time_budget_is_respected(self):
        x, y = data()
        started = time.perf_counter()
        result = fastloss.autotune(Sleepy(0.02), x, y, time_budget=1.0, steps=4, rounds=3,
                                   # six candidates that differ from the reference (identical ones are not timed)
                                   candidates={f"c{i}": Sleepy(0.02, scale=1 + 1e-3 * (i + 1)) for i in range(6)})
        elapsed = time.perf_counter() - started
        assert elapsed < 1.0 + 1.0  # the budget plus at most one trajectory of overrun (sleeps: load-proof)
        assert any(c.status.startswith("not measured") for c in result.candidates)

    def test_emulated_dtype_is_dropped_without_running(self, simulate):
        simulate("avx2-cpu")
        calls = []
        x, y = data()
        result = fastloss.autotune(Sleepy(), x, y, time_budget=30, steps=4, rounds=1,
                                   candidates={"bf16": AMPLoss(spying_sleepy(calls), dtype=torch.bfloat16)})
        (entry,) = result.candidates
        assert entry.status.startswith("dropped: bfloat16 is emulated on cpu") and not calls

    def test_topology_defaults_and_knobs(self):
        target = torch.cat([ring(24, 3 + i, 2) for i in range(2)])
        x = soft_prediction(target, noise=0.5)
        result = fastloss.autotune(fastloss.TopologicalLoss(), x, target, time_budget=60, steps=4, rounds=2,
                                   drop_factor=100.0)  # the drop rule has its own test; load must not drop here
        names = {c.name for c in result.candidates}
        assert {"preset:balanced", "preset:fastest", "IntervalLoss(4)", "workers=1"} <= names
        balanced = next(c for c in result.candidates if c.name == "preset:balanced")
        assert balanced.loss_error == 0 and balanced.grad_cosine == pytest.approx(1.0)  # exact preset
        interval = next(c for c in result.candidates if c.name == "IntervalLoss(4)")
        assert interval.accumulated_cosine is not None  # judged on what it adds up to, too

    def test_betti_matching(self):
        target = torch.cat([ring(24, 3 + i, 2) for i in range(2)])
        result = fastloss.autotune(fastloss.BettiMatchingLoss(), soft_prediction(target, noise=0.5), target,
                                   time_budget=60, steps=4, rounds=1, drop_factor=100.0)
        names = {c.name for c in result.candidates}
        assert {"preset:balanced", "workers=1", "CachedPH(1), workers=1"} <= names and "backend=cripser" not in names
        assert "CachedPH(5)" not in names  # pairing reuse drifts over more steps than autotune sees: not offered

    def test_preset_auto(self):
        x, y = data()

        class Kind(nn.MSELoss):
            preset_kind = "perceptual"

        chosen = fastloss.preset("auto", Kind(), example=(x, y), time_budget=20, steps=4, rounds=1)
        assert isinstance(chosen, nn.Module)
        with pytest.raises(ValueError, match="preset 'auto' measures on your data: pass example="):
            fastloss.preset("auto", Kind())
        with pytest.raises(TypeError, match="are for preset 'auto' only"):
            fastloss.preset("balanced", Kind(), example=(x, y))

    @pytest.mark.parametrize("kwargs, error, message", [
        ({"time_budget": 0}, ValueError, "`time_budget` must be a positive number of seconds, got 0"),
        ({"max_loss_error": -0.1}, ValueError, "`max_loss_error` must be a number in [0.0, inf], got -0.1"),
        ({"min_grad_cosine": 1.5}, ValueError, "`min_grad_cosine` must be a number in [-1.0, 1.0], got 1.5"),
        ({"steps": 1}, ValueError, "`steps` must be an int >= 2, got 1"),
        ({"candidates": {"x": 3}}, TypeError, "`candidates['x']` must be an nn.Module or a builder, got int"),
        ({"candidates": []}, TypeError, "`candidates` must be a dict"),
    ])
    def test_bad_arguments(self, kwargs, error, message):
        x, y = data()
        with pytest.raises(error) as info:
            fastloss.autotune(Sleepy(), x, y, **kwargs)
        assert message in str(info.value)

    def test_a_loss_without_kind_needs_candidates(self):
        x, y = data()
        with pytest.raises(TypeError, match="`loss` of type MSELoss has no `preset_kind`: pass your own `candidates=`"):
            fastloss.autotune(nn.MSELoss(), x, y)
        result = fastloss.autotune(nn.MSELoss(), x, y, candidates={"lazy": IntervalLoss(nn.MSELoss(), 2)},
                                   time_budget=20, steps=4, rounds=1)
        assert [c.name for c in result.candidates] == ["lazy"]
        with pytest.raises(TypeError, match="already wrapped"):
            fastloss.autotune(IntervalLoss(nn.MSELoss()), x, y)
        assert F.mse_loss(x, y) > 0
