"""BatchSampledLoss: k of B samples per training step, stratified; over a cycle the whole batch's loss."""

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from steps import run_cycle
from torch import nn

from fastloss import BatchSampledLoss, IntervalLoss, TiledLoss

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def batch(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 2, 3, generator=g, dtype=torch.float64), torch.rand(b, 2, 3, generator=g, dtype=torch.float64)


class PerSample(nn.Module):
    """A per-sample loss (mean of squares per sample) with a batch reduction: the independent reference."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):
        per = (input - target).square().flatten(1).mean(1)
        return {"mean": per.mean(), "sum": per.sum(), "none": per}[self.reduction]


@SETTINGS
@given(b=st.integers(1, 9), k=st.integers(1, 9), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_a_cycle_is_the_whole_batch_for_every_reduction(b, k, reduction):
    loss = BatchSampledLoss(PerSample(reduction), k)
    x, y = batch(b, seed=b * 10 + k)
    n = math.ceil(b / min(k, b))
    values, grad = run_cycle(loss, x, y, n)
    ref = PerSample(reduction)
    leaf = x.detach().clone().requires_grad_()
    expected = ref(leaf, y)
    expected.sum().backward()
    assert values.shape[1:] == expected.shape  # "none": (B,) as documented
    torch.testing.assert_close(values.mean(0), expected.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad / n, leaf.grad, rtol=1e-12, atol=1e-14)


def test_every_position_once_per_cycle_and_k_per_step():
    loss = BatchSampledLoss(PerSample(), 3, seed=4)
    x, y = batch(8)
    x.requires_grad_()
    cycles = []
    for _ in range(3):
        picked = []
        for _ in range(3):  # ceil(8 / 3) = 3 steps per cycle
            picked.append(loss.positions(8))
            loss(x, y).backward()
        assert sorted(p for step in picked for p in step) == list(range(8))
        assert [len(p) for p in picked] == [3, 3, 2]
        cycles.append(picked)
    assert cycles[0] != cycles[1] or cycles[1] != cycles[2]  # shuffled per cycle


def test_fraction_and_small_batches():
    loss = BatchSampledLoss(PerSample(), 0.25)
    assert loss.samples(8) == 2 and loss.samples(3) == 1
    calls = []

    class Spy(PerSample):
        def forward(self, input, target):
            calls.append(input.shape[0])
            return super().forward(input, target)

    whole = BatchSampledLoss(Spy(), 4)
    x, y = batch(3)
    assert torch.equal(whole(x.requires_grad_(), y), PerSample()(x, y))  # B <= k: the loss itself
    assert calls == [3]


def test_eval_no_grad_and_skipped_steps():
    calls = []

    class Spy(PerSample):
        def forward(self, input, target):
            calls.append(input.shape[0])
            return super().forward(input, target)

        def output_shape(self, input, target):  # what a skipped step reads (no call)
            return input.shape[:1]

    loss = BatchSampledLoss(Spy("none"), 2)
    x, y = batch(6)
    with torch.no_grad():
        assert torch.equal(loss(x, y), PerSample("none")(x, y))
    assert calls == [6] and int(loss.step) == 0
    gated = IntervalLoss(BatchSampledLoss(Spy("none"), 2), every=2)
    x.requires_grad_()
    shapes = [gated(x, y).shape for _ in range(1)]
    for _ in range(5):
        gated(x, y).sum().backward()
    assert calls == [6, 2, 2, 2, 2] and shapes == [(6,)]  # skipped steps never call the loss; shape kept


def test_resume_is_bitwise():
    data = [batch(6, seed=s) for s in range(9)]

    def run(loss, batches):
        return [loss(x.requires_grad_(), y).detach() for x, y in batches if (loss.advance() or True)]

    a = BatchSampledLoss(PerSample(), 2, seed=7)
    a.set_clock("manual")
    ref = run(a, data)
    b = BatchSampledLoss(PerSample(), 2, seed=7)
    b.set_clock("manual")
    head = run(b, data[:4])
    c = BatchSampledLoss(PerSample(), 2)
    c.set_clock("manual")
    c.load_state_dict(copy.deepcopy(b.state_dict()))
    assert c.seed == 7
    assert all(torch.equal(p, q) for p, q in zip(ref, head + run(c, data[4:]), strict=True))


class SpatialMean(nn.Module):
    """Per-sample spatial mean of |x - y| over (C, H, W) images, mean over the batch."""

    reduction = "mean"

    def forward(self, input, target):
        return (input - target).abs().flatten(1).mean(1).mean()


@pytest.mark.parametrize("nesting", ["batch-outside", "tiles-outside"])
def test_nested_with_tiles_every_pair_is_visited(nesting):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64), torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64)
    if nesting == "batch-outside":
        loss = BatchSampledLoss(TiledLoss(SpatialMean(), 2), 2)
    else:
        loss = TiledLoss(BatchSampledLoss(SpatialMean(), 2), 2)
    steps = 3 * 4  # three groups of two, four tiles: every (group, tile) pair once
    values, grad = run_cycle(loss, x, y, steps)
    leaf = x.detach().clone().requires_grad_()
    expected = SpatialMean()(leaf, y)
    expected.backward()
    torch.testing.assert_close(values.mean(), expected.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad / steps, leaf.grad, rtol=1e-12, atol=1e-15)


def test_errors():
    with pytest.raises(ValueError, match=r"`k` as a fraction of the batch must be in \(0, 1\), got 1.5"):
        BatchSampledLoss(PerSample(), 1.5)
    with pytest.raises(ValueError, match="`k` must be >= 1, got 0"):
        BatchSampledLoss(PerSample(), 0)
    with pytest.raises(TypeError, match="`k` must be an int"):
        BatchSampledLoss(PerSample(), "2")

    class NoReduction(nn.Module):
        def forward(self, input, target):
            return (input - target).abs().mean()

    with pytest.raises(ValueError, match="NoReduction has no `reduction` attribute: give `reduction`"):
        BatchSampledLoss(NoReduction(), 2)
    assert BatchSampledLoss(NoReduction(), 2, reduction="mean").reduction == "mean"
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        BatchSampledLoss(NoReduction(), 2, reduction="batchmean")
    loss = BatchSampledLoss(PerSample(), 2)
    with pytest.raises(ValueError, match="`target` must have the input's batch size 4, got shape"):
        loss(torch.rand(4, 3, requires_grad=True), torch.rand(3, 3))


def test_cycle_orders_are_a_function_of_seed_and_cycle_only():
    from fastloss.wrappers._sampling import cycle_order

    assert cycle_order(3, 2, 64) == cycle_order(3, 2, 64)
    assert sorted(cycle_order(3, 2, 64)) == list(range(64))
    # every (seed, cycle) pair its own order: seeds that agree modulo a small number do not collide
    orders = {tuple(cycle_order(seed, cycle, 64)) for seed in (0, 1, 125, 250) for cycle in range(3)}
    assert len(orders) == 12
