"""The suite is seeded: the same command on the same machine gives the same deviation figures (issue 16, item 4)."""

from __future__ import annotations

import json

from benchmarks import compare as compare_cli
from benchmarks.suite import CASES, candidates
from fastloss.bench import compare, to_json, workloads
from fastloss.bench.regression import compare_results


def deviations(data: dict) -> dict:
    return {b["fullname"]: b["extra_info"]["deviation"] for b in data["benchmarks"] if "deviation" in b["extra_info"]}


def run_once() -> dict:
    wl = workloads.perceptual_workload(size=32, batch=1, samples=2, epochs=1)
    loss = CASES["resnet18"].make_loss()  # random init (weights=None): seeded by benchmarks.references
    # drop_factor=None: a 32x32 step takes a few ms, and one slow first step on a busy host would drop a
    # candidate in one run and not the other (this test is about the deviation figures, not the timing)
    report = compare(loss, candidates(loss, wl.steps), wl, rounds=1, min_rounds=1, flops=False, name="resnet18",
                     drop_factor=None)
    return to_json([report])


def test_two_runs_give_identical_deviation_figures(tmp_path):
    first, second = run_once(), run_once()
    assert deviations(first) and deviations(first) == deviations(second)
    assert not [r for r in compare_results(first, second) if r.regression and r.metric != "speedup"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(first))
    b.write_text(json.dumps(second))
    assert compare_cli.main(["--baseline", str(a), "--current", str(a), "--fail-on-regression"]) == 0


def test_building_a_reference_leaves_the_global_random_state_alone():
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    CASES["lpips"].make_loss()
    assert torch.equal(torch.rand(3), expected)
