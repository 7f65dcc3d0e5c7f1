"""cycle_deviation: the harness's view of stochastic and gated stacks (a whole cycle, not one step)."""

import torch
from torch import nn

from fastloss import BatchSampledLoss, DownsampledLoss, IntervalLoss, PerceptualLoss, TiledLoss
from fastloss.bench.deviation import cycle_deviation, cycle_length


def test_cycle_length_is_the_product_of_the_periods():
    x = torch.rand(6, 1, 12, 12)
    assert cycle_length(nn.MSELoss(), x) == 1
    assert cycle_length(DownsampledLoss(nn.MSELoss()), x) == 1
    assert cycle_length(IntervalLoss(TiledLoss(BatchSampledLoss(nn.MSELoss(), 4), (2, 3)), every=2), x) == 2 * 6 * 2


def test_exact_over_a_cycle_and_biased_without_margin():
    torch.manual_seed(0)
    base = PerceptualLoss("vgg16", layers=["relu1_2"], weights=None).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    exact = cycle_deviation(base, TiledLoss(base, 2, margin=2), x, y)
    assert exact["steps"] == 4
    assert exact["cycle_grad_cosine"] > 1 - 1e-12 and abs(exact["cycle_value_bias"]) < 1e-12
    assert abs(exact["cycle_grad_norm_ratio"] - 1) < 1e-12
    assert exact["step_grad_cosine"]["median"] < 0.8  # one tile alone is far from the full gradient
    biased = cycle_deviation(base, TiledLoss(base, 2, margin=0), x, y)
    assert biased["cycle_value_bias"] < -1e-3 and biased["cycle_grad_cosine"] < 1 - 1e-6
    gated = cycle_deviation(base, IntervalLoss(base, every=3), x, y)
    assert gated["steps"] == 3 and gated["cycle_grad_cosine"] > 1 - 1e-12 and gated["step_grad_cosine"]["p5"] == 0.0


def test_the_candidate_is_not_advanced():
    loss = TiledLoss(nn.MSELoss(), 2)
    cycle_deviation(nn.MSELoss(), loss, torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))
    assert int(loss.step) == 0
