import copy
import json
import time

import pytest
import torch
from fakes import Sleepy, spying_sleepy

import fastloss
from benchmarks import compare as compare_cli
from fastloss import IntervalLoss
from fastloss.bench import compare, harness, markdown_table, plot, to_json, workloads
from fastloss.bench.deviation import cosine, spearman
from fastloss.bench.regression import compare_results


@pytest.fixture(scope="module")
def tiny_report():
    wl = workloads.topology_workload(size=32, batch=2, samples=4, epochs=2)
    loss = fastloss.TopologicalLoss(workers=1)
    cands = {"interval": IntervalLoss(loss, every=2), "cached": fastloss.CachedPH(loss, refresh_every=1)}
    # >= 4 rounds: Mann-Whitney can reach p < 0.05; no early drop: a loaded machine must not drop candidates here
    return compare(loss, cands, wl, rounds=4, name="topo", drop_factor=None)


class TestWorkloads:
    def test_seeded_and_shaped(self):
        wl = workloads.topology_workload(size=32, batch=3, samples=5, epochs=2)
        a, b = list(wl.trajectory()), list(wl.trajectory())
        assert len(a) == wl.steps == 4
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
        assert all(((t == 0) | (t == 1)).all() and (0 <= x).all() and (x <= 1).all() for x, t in a)

    def test_every_sample_once_per_epoch(self):
        wl = workloads.topology_workload(size=16, batch=2, samples=4, epochs=3)
        seen = [t.sum().item() for _, ts in wl.trajectory() for t in ts]
        masses = sorted(t.sum().item() for t in wl.targets)
        assert sorted(seen[:4]) == masses and sorted(seen[4:8]) == masses

    def test_predictions_approach_target(self):
        wl = workloads.perceptual_workload(size=32, batch=2, samples=2, epochs=3)
        errors = [(x - t).abs().mean().item() for x, t in wl.trajectory()]
        assert errors[-1] < errors[0] / 3

    def test_ladder_degrades_monotonically_for_exact_loss(self):
        wl = workloads.perceptual_workload(size=32, samples=1)
        target, preds, names = wl.ladder(levels=4)
        blur = [torch.mean((p - target) ** 2).item() for p, n in zip(preds, names, strict=True) if n.startswith("blur")]
        assert blur == sorted(blur) and len(preds) == 12

    def test_augmented_targets_never_repeat(self):
        wl = workloads.topology_workload(size=32, batch=2, samples=3, epochs=3, augment=True)
        targets = [t[i] for _, t in wl.trajectory() for i in range(len(t))]
        assert len(targets) == 9 and all(t.shape == (1, 32, 32) for t in targets)
        assert not any(torch.equal(a, b) for i, a in enumerate(targets) for b in targets[i + 1:])
        assert wl.name.endswith("-augmented") and wl.shape == (2, 1, 32, 32)

    def test_3d(self):
        wl = workloads.topology_workload(size=16, dim=3, batch=1, samples=2, epochs=1)
        x, t = next(wl.trajectory())
        assert x.shape == (1, 1, 16, 16, 16) and t.sum() > 0


class TestDeviationMetrics:
    def test_cosine(self):
        assert cosine(torch.ones(3), 2 * torch.ones(3)) == pytest.approx(1.0)
        assert cosine(torch.tensor([1.0, 0]), torch.tensor([0.0, 1])) == 0.0
        assert cosine(torch.zeros(3), torch.zeros(3)) == 1.0 and cosine(torch.zeros(3), torch.ones(3)) == 0.0

    def test_spearman(self):
        assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
        assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


class TestCompare:
    def test_report_contents(self, tiny_report):
        r = tiny_report
        assert set(r.candidates) == {"interval", "cached"} and r.steps == 4 and r.rounds == 4
        interval = r.candidates["interval"]
        assert len(interval.speedups) == 4 and all(s > 0 for s in interval.speedups)
        d = interval.deviation
        # IntervalLoss is exact on the steps it computes (value / gain equals the reference)
        assert d["computed_steps"] == 2 and d["loss_rel_error"]["max"] == pytest.approx(0.0, abs=1e-6)
        assert d["grad_cosine"]["median"] == pytest.approx(1.0)
        assert d["ladder_spearman"] == pytest.approx(1.0)
        assert interval.flops_per_step == "n/a"  # cripser work is outside torch: never a fake zero
        assert r.candidates["cached"].cache["misses"] == 4

    def test_flops_counted_for_torch_losses(self):
        wl = workloads.perceptual_workload(size=32, batch=1, samples=1, epochs=2)
        loss = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
        r = compare(loss, {"interval": IntervalLoss(loss, every=2)}, wl, rounds=1, ladder=False, drop_factor=None)
        ref_flops, cand_flops = r.reference.flops_per_step, r.candidates["interval"].flops_per_step
        assert ref_flops > 0 and cand_flops == pytest.approx(ref_flops / 2, rel=0.01)
        assert r.reference.memory_bytes is None or r.reference.memory_bytes > 0

    def test_no_fake_zero_flops_when_either_side_leaves_torch(self):
        """Betti matching's PH runs in numba; a baseline outside torch makes the reference's count n/a too."""
        wl = workloads.topology_workload(size=16, batch=1, samples=1, epochs=2)
        betti = fastloss.BettiMatchingLoss(workers=1)
        r = compare(betti, {"interval": IntervalLoss(betti, every=2)}, wl, rounds=1, ladder=False, drop_factor=None)
        assert r.reference.flops_per_step == "n/a" and r.candidates["interval"].flops_per_step == "n/a"

        class Mse(torch.nn.Module):
            def forward(self, input, target):
                return torch.nn.functional.mse_loss(input, target)

        foreign = Mse()
        foreign.runs_outside_torch = True  # stands for a C++ extension's loss
        r = compare(Mse(), {"foreign": foreign}, wl, rounds=1, ladder=False, drop_factor=None)
        assert r.reference.flops_per_step == "n/a" and r.candidates["foreign"].flops_per_step == "n/a"
        r = compare(Mse(), {"plain": Mse()}, wl, rounds=1, ladder=False, drop_factor=None)
        assert isinstance(r.reference.flops_per_step, float)  # counted (FlopCounterMode counts no MSE FLOPs)

    def test_templates_untouched(self):
        wl = workloads.topology_workload(size=16, batch=2, samples=2, epochs=2)
        loss = fastloss.TopologicalLoss(workers=1)
        cand = IntervalLoss(loss, every=2)
        compare(loss, {"i": cand}, wl, rounds=1, ladder=False, flops=False)
        assert int(cand.step) == 0

    def test_threads_restored_and_bad_args(self):
        before = torch.get_num_threads()
        wl = workloads.topology_workload(size=16, batch=2, samples=2, epochs=1)
        loss = fastloss.TopologicalLoss(workers=1)
        compare(loss, {"i": IntervalLoss(loss)}, wl, rounds=1, ladder=False, flops=False, threads=2)
        assert torch.get_num_threads() == before
        with pytest.raises(ValueError, match="`candidates` must name at least one"):
            compare(loss, {}, wl)

    def test_outputs(self, tiny_report, tmp_path):
        table = markdown_table(tiny_report)
        assert "| interval |" in table and "speedup [95% CI]" in table and "n/a" in table
        data = to_json([tiny_report], notes=["weights=None"])
        assert {"machine_info", "commit_info", "benchmarks"} <= set(data)
        entry = next(b for b in data["benchmarks"] if b["name"] == "interval")
        assert entry["stats"]["rounds"] == 4 and len(entry["stats"]["data"]) == 4
        assert {"speedup", "deviation", "memory_bytes", "flops_per_step"} <= set(entry["extra_info"])
        json.dumps(data)
        png = plot(tiny_report, tmp_path / "p.png")
        assert png.read_bytes()[:4] == b"\x89PNG"


class TestRegression:
    def test_identical_passes_doctored_fails(self, tiny_report, tmp_path):
        data = to_json([tiny_report])
        base, cur = tmp_path / "base.json", tmp_path / "cur.json"
        cur.write_text(json.dumps(data))
        base.write_text(json.dumps(data))
        assert compare_cli.main(["--baseline", str(base), "--current", str(cur), "--fail-on-regression"]) == 0
        doctored = copy.deepcopy(data)
        for b in doctored["benchmarks"]:
            if "speedup" in b["extra_info"]:
                s = b["extra_info"]["speedup"]
                s["samples"] = [v * 100 for v in s["samples"]]  # far beyond any round-to-round noise
                s["median"] *= 100
        base.write_text(json.dumps(doctored))
        assert compare_cli.main(["--baseline", str(base), "--current", str(cur), "--fail-on-regression"]) == 1
        assert compare_cli.main(["--baseline", str(base), "--current", str(cur)]) == 0

    def test_not_significant_is_not_a_regression(self, tiny_report):
        data = to_json([tiny_report])
        noisy = copy.deepcopy(data)
        for b in noisy["benchmarks"]:
            if "speedup" in b["extra_info"]:
                s = b["extra_info"]["speedup"]
                s["samples"] = [s["samples"][0] * 10, *[v * 0.5 for v in s["samples"][1:]]]
                s["median"] *= 1.5
        rows = [r for r in compare_results(noisy, data) if r.metric == "speedup"]
        assert rows and not any(r.regression for r in rows)

    def test_deviation_regression(self, tiny_report):
        data = to_json([tiny_report])
        worse = copy.deepcopy(data)
        for b in worse["benchmarks"]:
            if "deviation" in b["extra_info"]:
                b["extra_info"]["deviation"]["grad_cosine"]["median"] -= 0.2
        rows = compare_results(data, worse)
        assert any(r.regression and r.metric == "grad_cosine.median" for r in rows)


def test_suite_cli_runs(tmp_path, capsys):
    from benchmarks.__main__ import main

    assert main(["--losses", "topology", "--rounds", "1", "--steps", "2", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "weights=None" in out and "| preset:balanced |" in out
    assert (tmp_path / "results.json").exists() and list(tmp_path.glob("*.png"))


def test_suite_betti_against_the_cpp_reference(tmp_path, capsys):
    pytest.importorskip("topolosses", reason="the C++ reference baseline comes with the dev extra")
    from benchmarks.__main__ import main

    assert main(["--losses", "betti", "--rounds", "1", "--steps", "2", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "speedup vs topolosses (C++ reference)" in out and "| topolosses (C++ reference) (baseline) |" in out


class TestEarlyDrop:
    def test_slow_and_emulated_candidates_are_dropped_and_reported(self, simulate, tmp_path):
        simulate("avx2-cpu")
        calls = []
        wl = workloads.perceptual_workload(size=16, batch=1, samples=2, epochs=2)
        # sleeps, not compute, and far apart: a starved CI machine stalls a step by tens of ms, not 0.2 s
        report = compare(Sleepy(0.05), {"slow": Sleepy(1.0), "bf16": fastloss.AMPLoss(spying_sleepy(calls), dtype=torch.bfloat16),
                                        "fine": Sleepy(0.05)}, wl, rounds=2, ladder=False, flops=False)
        slow, bf16, fine = (report.candidates[k] for k in ("slow", "bf16", "fine"))
        assert slow.dropped and "first timed step" in slow.status and slow.first_step_ratio > 5
        assert not slow.round_times and not slow.deviation  # skipped for the remaining rounds
        assert bf16.dropped and "bfloat16 is emulated on cpu" in bf16.status and not calls
        assert not fine.dropped and len(fine.speedups) == 2
        table = markdown_table(report)
        assert "| slow | **dropped: first timed step" in table and "| bf16 | **dropped: bfloat16 is emulated" in table
        entry = {b["name"]: b for b in to_json([report])["benchmarks"]}
        assert entry["slow"]["extra_info"]["status"].startswith("dropped") and entry["slow"]["extra_info"]["first_step_ratio"] > 5
        rows = compare_results(to_json([report]), to_json([report]))
        assert not any("slow" in r.name for r in rows)  # dropped candidates are not compared as regressions

    def test_time_budget_stops_rounds_but_not_below_the_minimum(self):
        wl = workloads.perceptual_workload(size=16, batch=1, samples=2, epochs=1)
        report = compare(Sleepy(0.01), {"same": Sleepy(0.01)}, wl, rounds=10, time_budget=0.05, min_rounds=3, drop_factor=None,
                         ladder=False, flops=False)
        assert report.rounds == 3 and len(report.candidates["same"].speedups) == 3

    def test_time_budget_leaves_room_for_the_passes_after_timing(self, monkeypatch):
        # a round of both entries over 2 steps sleeps 0.08 s: a 1.2 s budget fits about 14 rounds without a
        # reserve for what follows timing, about 7 with a reserve of 6 rounds; never fewer than min_rounds
        wl = workloads.perceptual_workload(size=16, batch=1, samples=2, epochs=1)
        rounds = {}
        for reserve in (0.0, 6.0):
            monkeypatch.setattr(harness, "AFTER_TIMING_ROUNDS", reserve)
            started = time.perf_counter()
            report = compare(Sleepy(0.02), {"same": Sleepy(0.02)}, wl, rounds=40, time_budget=1.2, min_rounds=3,
                             drop_factor=None, ladder=False, flops=False)
            rounds[reserve] = report.rounds
            assert time.perf_counter() - started < 1.2 + 1.0  # the whole call about within its budget (CI slack)
        assert 3 <= rounds[6.0] < rounds[0.0] < 40, rounds

    def test_machine_is_named_and_compared(self, tiny_report, tmp_path, capsys):
        data = to_json([tiny_report])
        info = data["machine_info"]
        assert {"cpu_model", "cpu_capability", "cpu_native_low_precision"} <= set(info)
        assert info["cpu_model"] in markdown_table(tiny_report)
        other = copy.deepcopy(data)
        other["machine_info"].update(cpu_model="AMD EPYC (Zen 3)", cpu_native_low_precision=[])
        base, cur = tmp_path / "base.json", tmp_path / "cur.json"
        base.write_text(json.dumps(other))
        cur.write_text(json.dumps(data))
        with pytest.warns(UserWarning, match="different machines \\(cpu_model, cpu_native_low_precision differ\\)"):
            compare_cli.main(["--baseline", str(base), "--current", str(cur)])
        assert "WARNING: the two results come from different machines" in capsys.readouterr().out
