"""fastloss.bench.protocol: the one implementation of interleaved rounds, and who composes it."""

from __future__ import annotations

import time

import pytest
import torch
from fakes import Sleepy

import fastloss
from fastloss.bench import protocol, workloads
from fastloss.bench.results import median_lower_bound


def recording(order: list, key: str, seconds: float = 0.0, drop_in_round: int | None = None):
    def run(r: int) -> list[float]:
        order.append((r, key))
        if drop_in_round == r:
            raise protocol.Dropped("too slow")
        time.sleep(seconds)
        return [seconds + 1e-9]
    return run


class TestInterleave:
    def test_rotation_with_the_reference_first_in_round_zero(self):
        order: list = []
        keys = ["a", "ref", "b"]
        protocol.interleave({k: recording(order, k) for k in keys}, "ref", 3)
        by_round = [[k for r, k in order if r == i] for i in range(3)]
        assert by_round[0] == ["ref", "a", "b"]  # every first step can be compared with the reference's
        assert by_round[1] == ["ref", "b", "a"] and by_round[2] == ["b", "a", "ref"]  # names rotated

    def test_warm_up_runs_once_before_the_rounds(self):
        order: list = []
        warm = []
        protocol.interleave({"ref": recording(order, "ref")}, "ref", 2, warmup={"ref": lambda: warm.append(len(order))})
        assert warm == [0] and len(order) == 2

    def test_a_dropped_entry_runs_no_more(self):
        order: list = []
        t = protocol.interleave({"ref": recording(order, "ref"), "x": recording(order, "x", drop_in_round=0)}, "ref", 3)
        assert t["x"].status == "dropped: too slow" and [k for _, k in order].count("x") == 1
        assert len(t["ref"].round_times) == 3

    def test_deadline_never_cuts_below_min_rounds(self):
        order: list = []
        runners = {"ref": recording(order, "ref", 0.01), "x": recording(order, "x", 0.01)}
        t = protocol.interleave(runners, "ref", 50, min_rounds=3, deadline=time.perf_counter() + 0.001)
        assert len(t["ref"].round_times) == 3 and len(t["x"].ratios(t["ref"])) == 3

    def test_stop_ends_the_rounds_early(self):
        order: list = []
        t = protocol.interleave({"ref": recording(order, "ref")}, "ref", 50,
                                stop=lambda timings: len(timings["ref"].round_times) >= 4)
        assert len(t["ref"].round_times) == 4

    def test_ratios_pair_rounds_where_both_ran(self):
        a, b = protocol.Timing("a", [1.0, None, 2.0]), protocol.Timing("b", [2.0, 3.0, None])
        assert a.ratios(b) == [2.0]

    def test_unknown_reference(self):
        with pytest.raises(ValueError, match="`reference` 'nope' must be one of the runners"):
            protocol.interleave({"a": lambda r: [1.0]}, "nope", 1)


def test_trajectories_drop_against_the_reference_slowest_step():
    wl = workloads.perceptual_workload(size=8, batch=1, samples=1, epochs=3)
    traj = list(wl.trajectory())
    t = protocol.time_trajectories({"ref": Sleepy(0.01), "slow": Sleepy(0.2), "fine": Sleepy(0.01)}, traj, "ref", 2,
                                   device=torch.device("cpu"), drop_factor=5.0)
    assert t["slow"].dropped and t["slow"].first_step_ratio > 5 and "first timed step" in t["slow"].status
    assert len(t["fine"].ratios(t["ref"])) == 2 and 0.2 < t["fine"].first_step_ratio < 5


class TestMedianLowerBound:
    def test_too_few_rounds_support_no_claim(self):
        assert median_lower_bound([3.0, 3.1, 2.9, 3.2]) is None  # 4 rounds: at best 1/16 = 6% error
        assert median_lower_bound([3.0, 3.1, 2.9, 3.2, 3.05]) == 2.9  # 5 rounds: all above 2.9 is a 97% claim

    def test_coverage_against_the_binomial(self):
        from math import comb

        for n in range(5, 30):
            k = next(j for j in range(n, 0, -1) if sum(comb(n, i) for i in range(j)) / 2**n <= 0.05)
            assert median_lower_bound([float(i) for i in range(n)]) == float(k - 1)


def test_compare_and_autotune_are_compositions_of_the_protocol(monkeypatch):
    calls = []
    real = protocol.interleave

    def spy(runners, reference, rounds, **kwargs):
        calls.append(reference)
        return real(runners, reference, rounds, **kwargs)

    monkeypatch.setattr(protocol, "interleave", spy)
    x, y = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    fastloss.autotune(Sleepy(), x, y, candidates={"c": Sleepy(0.001)}, time_budget=10, steps=2, rounds=1, max_rounds=1)
    wl = workloads.perceptual_workload(size=8, batch=1, samples=1, epochs=2)
    fastloss.bench.compare(Sleepy(), {"c": Sleepy(0.001)}, wl, rounds=1, min_rounds=1, ladder=False, flops=False)
    from benchmarks import latency

    latency.interleaved({"a": lambda: None, "b": lambda: None}, 2)
    assert calls == ["exact", "reference", "a"]


def test_a_loss_declaring_an_emulated_dtype_is_dropped_without_running(simulate):
    from fastloss.bench.harness import emulated_reason

    class Declares(Sleepy):
        def declared_compute_dtype(self):
            return torch.bfloat16

    simulate("avx2-cpu")
    assert emulated_reason(Declares(), torch.device("cpu")).startswith("bfloat16 is emulated on cpu")
    assert emulated_reason(fastloss.IntervalLoss(Sleepy()), torch.device("cpu")) is None
    simulate("bf16-cpu")
    assert emulated_reason(Declares(), torch.device("cpu")) is None
