"""Issue 16 item 2: the feature losses accept a half-precision input next to a float32 target (and the
reverse), as a network under torch.autocast gives, computing in the loss's compute dtype."""

import pytest
import torch
from torch import nn

from fastloss import CachedTarget, LPIPSLoss, PerceptualLoss, preset

HALF = [torch.bfloat16, torch.float16]


def vgg(**kw):
    torch.manual_seed(0)
    return PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None, **kw)


def lpips(**kw):
    torch.manual_seed(0)
    return LPIPSLoss(weights=None, **kw)


LOSSES = {"vgg16": vgg, "lpips": lpips}


def images(n=2, side=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g), torch.rand(n, 3, side, side, generator=g)


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("which", ["input", "target"])
def test_a_half_precision_side_is_computed_in_the_compute_dtype(name, half, which):
    loss = LOSSES[name]()
    x, y = images()
    x, y = (x.to(half), y) if which == "input" else (x, y.to(half))
    leaf = x.clone().requires_grad_()
    value = loss(leaf, y)
    value.backward()
    # the half side is cast to the loss's float32 on entry: exactly the float32 computation of those values
    assert value.dtype == torch.float32 and torch.equal(value, loss(x.float(), y.float()))
    assert leaf.grad.dtype == x.dtype and torch.isfinite(leaf.grad.float()).all()


def test_float64_next_to_float32_is_still_refused():
    with pytest.raises(ValueError, match=r"same dtype, got torch.float32 and torch.float64 \(a float16/bfloat16 one"):
        vgg()(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16, dtype=torch.float64))


def net():
    torch.manual_seed(2)
    return nn.Conv2d(3, 3, 3, padding=1)


STACKS = {
    "vgg16": vgg,
    "lpips": lpips,
    "balanced-vgg16": lambda: preset("balanced", vgg()),
    "balanced-lpips": lambda: preset("balanced", lpips()),
    "cached-vgg16": lambda: CachedTarget(vgg()),
    "fastest-vgg16": lambda: preset("fastest", vgg()),
}


@pytest.mark.parametrize("name", list(STACKS))
def test_under_cpu_autocast(name):
    loss, model = STACKS[name](), net()
    x, y = images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        assert out.dtype == torch.bfloat16 and y.dtype == torch.float32
        value = loss(out, y)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the same stack given the float32 copy of the input
        reference = STACKS[name]()(out.detach().float(), y)
    if name.startswith("fastest"):  # DownsampledLoss pools the bfloat16 input in bfloat16: last bits differ
        assert value.item() == pytest.approx(reference.item(), rel=1e-2)
    else:
        assert torch.equal(value.detach(), reference)


def test_cached_target_under_autocast_has_no_false_miss():
    loss, model = CachedTarget(vgg()), net()
    x, y = images(n=3)
    values = []
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            values.append(loss(model(x), y))
    info = loss.cache_info()
    assert (info["misses"], info["hits"]) == (3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        uncached = loss.loss(model(x), y)
    assert all(torch.equal(v, uncached) for v in values)
