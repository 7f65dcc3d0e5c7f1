"""Issue 16 item 8: no silently wrong values. Images far outside `input_range` warn once; the float32
topology losses sum their terms in float64 (the result's dtype unchanged)."""

import warnings

import pytest
import torch

from fastloss import BettiMatchingLoss, LPIPSLoss, PerceptualLoss, TopologicalLoss


def vgg():
    return PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)


@pytest.mark.parametrize("make", [vgg, lambda: LPIPSLoss(weights=None)], ids=["vgg16", "lpips"])
def test_8bit_images_with_a_unit_range_warn_once(make):
    loss = make()
    x, y = torch.rand(1, 3, 16, 16) * 255, torch.rand(1, 3, 16, 16) * 255
    with pytest.warns(UserWarning, match=r"`target` values lie in \[.*\], far outside input_range=\(0.0, 1.0\); "
                                         r"the loss reads them as if they were in that range\. Pass the images' range, "
                                         r"e.g\. input_range=\(0, 255\)"):
        loss(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(x, y)  # once per loss
        make()(x / 255, y / 255)  # in range: silent


@pytest.mark.parametrize("x_scale, y_range, warns", [
    (1.0, (0, 1), False),
    (1.8, (0, 1), False),   # an unconstrained network's overshoot on the input: no noise
    (4.0, (0, 1), True),    # the input far beyond
    (1.0, (-1, 1), True),   # -1..1 data given to a (0, 1) loss
])
def test_what_counts_as_far(x_scale, y_range, warns):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16) * x_scale
    low, high = y_range
    y = torch.rand(1, 3, 16, 16) * (high - low) + low
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        vgg()(x, y)
    assert any("far outside input_range" in str(w.message) for w in seen) == warns


def test_the_right_range_is_silent_and_the_value_right():
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    loss = PerceptualLoss("vgg16", layers=["relu1_2"], weights=None, input_range=(0, 255))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = loss(x * 255, y * 255)
    reference = PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
    reference.load_state_dict(loss.state_dict())
    reference.features.load_state_dict(loss.features.state_dict())
    assert value.item() == pytest.approx(reference(x, y).item(), rel=1e-5)


def noisy_map(side=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(1, 1, side, side, generator=g) > 0.5).float()
    pred = (0.5 * target + 0.5 * torch.rand(1, 1, side, side, generator=g)).clamp(0, 1)
    return pred, target


@pytest.mark.parametrize("make", [TopologicalLoss, lambda: TopologicalLoss(reduction="sum"),
                                  lambda: TopologicalLoss(construction="T"), BettiMatchingLoss],
                         ids=["rank", "rank-sum", "rank-T", "betti-matching"])
def test_the_float32_sum_is_float64_accurate(make):
    pred, target = noisy_map()
    loss = make()
    value = loss(pred, target)
    exact = loss(pred.double(), target.double())  # the same bars (float32 values are exact in float64)
    assert value.dtype == torch.float32 and exact.dtype == torch.float64
    assert abs(value.double().item() - exact.item()) / exact.item() < 2e-6


def test_the_gradient_is_unchanged(monkeypatch):
    """Accumulating in float64 changes the value's last bits, not the gradient (d sum / d term = 1)."""
    from fastloss.losses import topological

    pred, target = noisy_map(128)
    a = pred.clone().requires_grad_()
    TopologicalLoss()(a, target).backward()

    def float32_sum(like, n, terms):  # the former accumulation: index_add in the values' dtype
        out = like.new_zeros(n)
        for owner, values in terms:
            out = out.index_add(0, owner, values)
        return out

    monkeypatch.setattr(topological, "sum_per_map", float32_sum)
    b = pred.clone().requires_grad_()
    TopologicalLoss()(b, target).backward()
    assert a.grad.dtype == torch.float32 and torch.equal(a.grad, b.grad)
