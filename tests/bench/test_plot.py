"""The suite's plots rank by what sees skipping, with labels that can be read (issue 16, item 6)."""

from __future__ import annotations

import matplotlib
import pytest
import torch

from fastloss import DownsampledLoss, IntervalLoss
from fastloss.bench import compare, plot, workloads
from fastloss.bench.report import figure, label_box

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def report():
    wl = workloads.perceptual_workload(size=16, batch=1, samples=2, epochs=4)
    loss = torch.nn.MSELoss()
    cands = {"IntervalLoss(4)": IntervalLoss(loss, every=4), "IntervalLoss(2)": IntervalLoss(loss, every=2),
             "DownsampledLoss(2)": DownsampledLoss(loss, factor=2), "same": torch.nn.MSELoss()}
    return compare(loss, cands, wl, rounds=1, min_rounds=1, flops=False, drop_factor=None)


def test_y_is_the_accumulated_gradient_cosine(report):
    fig = figure(report)
    ax = fig.axes[0]
    assert "accumulated" in ax.get_ylabel()
    ys = {t.get_text(): t.xy[1] for t in ax.texts}
    for name in ("IntervalLoss(4)", "DownsampledLoss(2)"):
        assert ys[name] == pytest.approx(report.candidates[name].deviation["accumulated_grad_cosine"])


def test_labels_do_not_overprint(report):
    fig = figure(report)
    renderer = fig.canvas.get_renderer()
    boxes = [label_box(t, renderer) for t in fig.axes[0].texts]
    assert len(boxes) == 1 + len(report.candidates)  # the reference and every measured candidate
    assert not [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]


def test_tick_labels_are_plain(report):
    fig = figure(report)
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert labels and all(label.endswith("x") and float(label[:-1]) > 0 for label in labels)


def test_the_front_is_named_only_where_drawn_and_outside_the_points(report, tmp_path):
    fig = figure(report)
    ax = fig.axes[0]
    legend = ax.get_legend()
    drawn = [line for line in ax.get_lines() if line.get_label().startswith("Pareto front")]
    assert bool(drawn) == (legend is not None)
    if legend is not None:
        renderer = fig.canvas.get_renderer()
        assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1  # beside the axes
    assert plot(report, tmp_path / "p.png").stat().st_size > 0
