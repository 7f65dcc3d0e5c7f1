"""The examples and the end-to-end benchmark run, in a tiny configuration, so they cannot rot."""

import json

import pytest
import torch

from benchmarks import e2e


@pytest.fixture(scope="module")
def topology_example():
    return e2e.load_example("train_topology_segmentation.py")


@pytest.fixture(scope="module")
def perceptual_example():
    return e2e.load_example("fit_image_perceptual.py")


@pytest.fixture(scope="module")
def restoration_example():
    return e2e.load_example("train_perceptual_restoration.py")


TINY_TOPOLOGY = ["--epochs", "2", "--size", "32", "--train", "8", "--val", "4", "--topo-start-epoch", "1", "--quiet"]
TINY_PERCEPTUAL = ["--steps", "4", "--size", "32", "--quiet"]
TINY_RESTORATION = ["--steps", "4", "--size", "16", "--train", "4", "--val", "2", "--batch", "2", "--quiet"]


@pytest.mark.parametrize("preset", ["exact", "balanced", "fastest", "none"])
def test_topology_example_runs(topology_example, preset, tmp_path):
    out = tmp_path / "r.json"
    result = topology_example.main(["--preset", preset, "--json", str(out), *TINY_TOPOLOGY])
    assert 0 <= result["dice"] <= 1 and result["betti_error"] >= 0 and 0 <= result["skeleton_recall"] <= 1
    assert json.loads(out.read_text())["preset"] == preset
    assert (result["loss_s"] > 0) == (preset != "none")


def test_topology_example_with_betti_matching(topology_example):
    result = topology_example.main(["--preset", "balanced", "--matching", "betti", *TINY_TOPOLOGY])
    assert result["matching"] == "betti" and result["loss_s"] > 0 and 0 <= result["dice"] <= 1


def test_topology_balanced_trains_exactly_like_exact(topology_example):
    a = topology_example.main(["--preset", "exact", *TINY_TOPOLOGY])
    b = topology_example.main(["--preset", "balanced", *TINY_TOPOLOGY])
    assert (a["dice"], a["betti_error"]) == (b["dice"], b["betti_error"])


def test_skeleton_of_a_bar_is_thin(topology_example):
    mask = torch.zeros(1, 1, 9, 20)
    mask[..., 3:6, 2:18] = 1
    skel = topology_example.skeleton(mask)
    assert skel.sum() > 0 and (skel <= mask).all() and skel[..., 4, :].sum() == skel.sum()


@pytest.mark.parametrize("preset", ["exact", "fastest", "none"])
def test_perceptual_example_runs(perceptual_example, preset):
    result = perceptual_example.main(["--preset", preset, *TINY_PERCEPTUAL])
    assert result["psnr"] > 0 and -1 <= result["ssim"] <= 1 and result["exact_perceptual"] >= 0


def test_perceptual_example_lpips(perceptual_example):
    result = perceptual_example.main(["--preset", "balanced", "--loss", "lpips", *TINY_PERCEPTUAL])
    assert result["loss"] == "lpips" and result["loss_s"] > 0


RESTORATION_PRESETS = e2e.load_example("train_perceptual_restoration.py").PRESETS


@pytest.mark.parametrize("preset", RESTORATION_PRESETS)
def test_restoration_example_runs(restoration_example, preset, tmp_path):
    out = tmp_path / "r.json"
    result = restoration_example.main(["--preset", preset, "--json", str(out), *TINY_RESTORATION])
    assert 0 < result["psnr"] < 100 and -1 <= result["ssim"] <= 1 and result["exact_perceptual"] >= 0
    assert json.loads(out.read_text())["preset"] == preset
    assert (result["loss_s"] > 0) == (preset != "none")
    if preset == "none":  # nothing to learn from: the net stays the identity it starts as
        assert result["psnr"] == result["input_psnr"]
        assert result["exact_perceptual"] == result["input_exact_perceptual"]
    else:  # the perceptual term moved the net towards the clean images
        assert result["exact_perceptual"] < result["input_exact_perceptual"]


def test_restoration_example_keeps_the_callers_threads(restoration_example):
    before = torch.get_num_threads()
    restoration_example.main(["--preset", "none", "--threads", "1", *TINY_RESTORATION])
    assert torch.get_num_threads() == before


def test_restoration_example_resnet18_and_lpips(restoration_example):
    for loss in ("resnet18", "lpips"):
        result = restoration_example.main(["--preset", "balanced", "--loss", loss, *TINY_RESTORATION])
        assert result["loss"] == loss and result["loss_s"] > 0


def test_e2e_restoration_task(tmp_path, capsys):
    code = e2e.main(["--tasks", "restoration", "--presets", "exact", "none", "--seeds", "1", "--output", str(tmp_path),
                     "--restoration-args", " ".join(TINY_RESTORATION)])
    assert code == 0
    summary = json.loads((tmp_path / "e2e.json").read_text())["summary"]["restoration"]
    assert set(summary) == {"exact", "none"} and summary["exact"]["seeds"] == 1
    assert "exact_perceptual" in summary["none"] and summary["none"]["loss_s"]["mean"] == 0
    out = capsys.readouterr().out
    assert "### restoration" in out and "| preset | psnr | ssim | exact_perceptual | total s |" in out
    assert "| none |" in out


def test_e2e_defaults_to_three_seeds(monkeypatch, tmp_path):
    seeds = []

    class FakeExample:
        @staticmethod
        def main(argv):
            seeds.append(argv[argv.index("--seed") + 1])
            return {"preset": argv[argv.index("--preset") + 1], "psnr": 20.0, "ssim": 0.5, "exact_perceptual": 0.1,
                    "total_s": 1.0, "loss_s": 0.5, "loss_share": 0.5}

    monkeypatch.setattr(e2e, "load_example", lambda script: FakeExample)
    monkeypatch.setattr(e2e, "plot", lambda summaries, path: None)
    assert e2e.main(["--tasks", "restoration", "--presets", "exact", "--output", str(tmp_path)]) == 0
    assert seeds == ["0", "0", "1", "2"]  # one untimed warm-up run, then the three reported seeds
    runs = json.loads((tmp_path / "e2e.json").read_text())["runs"]["restoration"]
    assert len(runs) == 3


def test_e2e_says_when_none_is_not_clearly_worse():
    def run(preset, seed, psnr):
        return {"preset": preset, "seed": seed, "psnr": psnr, "ssim": 0.5, "exact_perceptual": 0.1, "total_s": 1.0,
                "loss_s": 0.5 if preset == "exact" else 0.0, "loss_share": 0.5}

    # none 30% worse on every seed: the task can gate
    clear = e2e.summarise([run("exact", s, 20.0) for s in range(3)] + [run("none", s, 14.0) for s in range(3)],
                          "restoration")
    assert clear["none"]["clearly_worse"] is True
    assert "NOT clearly worse" not in e2e.table("restoration", clear)
    # worse on average, but better than exact on one seed: it cannot
    mixed = e2e.summarise([run("exact", s, 20.0) for s in range(3)]
                          + [run("none", 0, 20.5), run("none", 1, 15.0), run("none", 2, 15.0)], "restoration")
    assert mixed["none"]["metric_rel_diff"] < -e2e.GOAL and mixed["none"]["clearly_worse"] is False
    assert "NOT clearly worse" in e2e.table("restoration", mixed)
    # within the goal on every seed: it cannot either
    close = e2e.summarise([run("exact", s, 20.0) for s in range(3)] + [run("none", s, 19.9) for s in range(3)],
                          "restoration")
    assert close["none"]["clearly_worse"] is False


def test_e2e_fit_task_gates_on_a_distance_where_lower_is_better():
    assert e2e.TASKS["perceptual"][1] == "exact_perceptual" and "exact_perceptual" in e2e.LOWER_IS_BETTER

    def run(preset, seed, distance):
        return {"preset": preset, "seed": seed, "psnr": 30.0, "ssim": 0.9, "exact_perceptual": distance,
                "total_s": 1.0, "loss_s": 0.5 if preset == "exact" else 0.0, "loss_share": 0.5}

    runs = ([run("exact", s, 0.0075) for s in range(3)] + [run("none", s, 0.0093) for s in range(3)]
            + [run("close", s, 0.0076) for s in range(3)] + [run("closer", s, 0.0070) for s in range(3)])
    summary = e2e.summarise(runs, "perceptual")
    # a larger distance is worse: negative "vs exact", and `none` is clearly worse on every seed
    assert summary["none"]["metric_rel_diff"] == pytest.approx(-(0.0093 - 0.0075) / 0.0075)
    assert summary["none"]["clearly_worse"] is True and summary["none"]["within_goal"] is False
    assert summary["close"]["metric_rel_diff"] == pytest.approx(-0.1 / 7.5) and summary["close"]["within_goal"] is True
    assert summary["closer"]["metric_rel_diff"] > 0
    # a smaller distance than exact's on one seed: `none` cannot gate
    mixed = e2e.summarise([run("exact", s, 0.0075) for s in range(3)]
                          + [run("none", 0, 0.0070), run("none", 1, 0.0093), run("none", 2, 0.0093)], "perceptual")
    assert mixed["none"]["clearly_worse"] is False


def test_e2e_summary_and_outputs(tmp_path, capsys):
    code = e2e.main(["--tasks", "topology", "--presets", "exact", "none", "--seeds", "1", "--output", str(tmp_path),
                     "--topology-args", " ".join(TINY_TOPOLOGY)])
    assert code == 0
    data = json.loads((tmp_path / "e2e.json").read_text())
    runs = {r["preset"]: r for r in data["runs"]["topology"]}
    summary = data["summary"]["topology"]
    # the summary against exact, recomputed from the raw runs
    expected = (runs["none"]["dice"] - runs["exact"]["dice"]) / abs(runs["exact"]["dice"])
    assert summary["none"]["metric_rel_diff"] == pytest.approx(expected)
    assert summary["none"]["within_goal"] == (abs(expected) <= e2e.GOAL)
    assert summary["none"]["loss_s"]["mean"] == 0 and runs["exact"]["loss_s"] > 0
    assert summary["none"]["loss_time_vs_exact"] == 0
    assert (tmp_path / "e2e.png").read_bytes()[:4] == b"\x89PNG"
    assert "| none |" in capsys.readouterr().out
