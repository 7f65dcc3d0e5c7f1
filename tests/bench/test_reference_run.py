"""reference_run: the reference's side of `deviation` computed once gives the same figures as stepping it
beside each candidate, and a run that does not match what it is compared on is refused."""

import copy

import pytest
import torch
from torch import nn

from fastloss import BatchSampledLoss, DownsampledLoss, IntervalLoss, PerceptualLoss, TiledLoss
from fastloss.bench.deviation import ReferenceRun, cycle_deviation, deviation, reference_run


def _trajectory(steps=4, batch=2, size=16):
    g = torch.Generator().manual_seed(3)
    return [(torch.rand(batch, 3, size, size, generator=g), torch.rand(batch, 3, size, size, generator=g))
            for _ in range(steps)]


def _ladder(size=16):
    g = torch.Generator().manual_seed(4)
    target = torch.rand(1, 3, size, size, generator=g)
    return target, [target + s * torch.rand(1, 3, size, size, generator=g) for s in (0.05, 0.2, 0.5)]


@pytest.mark.parametrize("flops", [False, True])
def test_shared_run_gives_the_same_figures_as_a_fresh_reference(flops):
    torch.manual_seed(0)
    base = PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None)
    trajectory, ladder = _trajectory(), _ladder()
    candidates = [DownsampledLoss(base, 2), IntervalLoss(base, every=2), TiledLoss(base, 2, margin=0),
                  BatchSampledLoss(base, 1)]
    shared = reference_run(copy.deepcopy(base), trajectory, ladder, count_flops=flops)
    for cand in candidates:
        alone = deviation(copy.deepcopy(base), copy.deepcopy(cand), trajectory, ladder, count_flops=flops)
        reused = deviation(shared, copy.deepcopy(cand), trajectory, ladder, count_flops=flops)
        assert reused == alone, type(cand).__name__


def test_cycle_deviation_with_a_reference_step_equals_the_module():
    torch.manual_seed(0)
    base = PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
    x, y = _trajectory(1)[0]
    value = base(x.requires_grad_(), y)
    value.backward()
    step = (float(value.detach()), x.grad.clone())
    x = x.detach()
    cand = TiledLoss(base, 2, margin=0)
    assert cycle_deviation(None, cand, x, y, reference_step=step) == cycle_deviation(base, cand, x, y)
    with pytest.raises(TypeError, match="`reference` module or a `reference_step`"):
        cycle_deviation(None, cand, x, y)


def test_a_run_that_does_not_match_is_refused():
    trajectory = _trajectory(3, size=8)
    run = reference_run(nn.MSELoss(), trajectory)
    assert isinstance(run, ReferenceRun) and len(run.steps) == 3 and run.flops is None and run.ladder_values is None
    with pytest.raises(ValueError, match="ReferenceRun of 3 steps, but `trajectory` has 2"):
        deviation(run, nn.MSELoss(), trajectory[:2])
    with pytest.raises(ValueError, match="no ladder values"):
        deviation(run, nn.MSELoss(), trajectory, _ladder(8))
    with pytest.raises(ValueError, match="did not count FLOPs"):
        deviation(run, nn.MSELoss(), trajectory, count_flops=True)
