"""DownsampledLoss: resizing by factor or size, modes, pooling paths."""

import pytest
import torch
import torch.nn.functional as F
from fakes import CountingLoss
from shapes import ring, soft_prediction
from steps import batch, dataset
from torch import nn

import fastloss
from fastloss import DownsampledLoss


class TestDownsampledLoss:
    def test_equals_wrapped_loss_on_pooled_inputs(self):
        x, y = batch(shape=(2, 3, 16, 16))
        out = DownsampledLoss(CountingLoss(), factor=2)(x, y)
        assert torch.allclose(out, F.mse_loss(F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)))
        out.backward()
        assert x.grad.shape == x.shape and torch.count_nonzero(x.grad) == x.numel()

    def test_size_and_modes(self):
        x, y = batch(shape=(1, 1, 12, 12))
        assert torch.allclose(DownsampledLoss(CountingLoss(), size=(4, 4))(x, y),
                              F.mse_loss(F.adaptive_avg_pool2d(x, 4), F.adaptive_avg_pool2d(y, 4)))
        assert torch.allclose(DownsampledLoss(CountingLoss(), factor=3, mode="max")(x, y),
                              F.mse_loss(F.max_pool2d(x, 3), F.max_pool2d(y, 3)))
        bil = DownsampledLoss(CountingLoss(), factor=2, mode="bilinear")(x, y)
        assert torch.allclose(bil, F.mse_loss(F.interpolate(x, size=(6, 6), mode="bilinear", antialias=True),
                                              F.interpolate(y, size=(6, 6), mode="bilinear", antialias=True)))

    def test_ceil_keeps_border(self):
        x = torch.zeros(1, 1, 5, 5)
        x[..., 4, 4] = 1
        seen = {}

        class Spy(nn.Module):
            def forward(self, input, target):
                seen["input"] = input
                return input.sum()

        DownsampledLoss(Spy(), factor=2, mode="max")(x, x)
        assert seen["input"].shape[-2:] == (3, 3) and seen["input"][..., 2, 2] == 1

    def test_3d_and_per_dim_factor(self):
        x, y = batch(shape=(1, 1, 4, 8, 8))
        out = DownsampledLoss(CountingLoss(), factor=(1, 2, 2))(x, y)
        assert torch.allclose(out, F.mse_loss(F.avg_pool3d(x, (1, 2, 2)), F.avg_pool3d(y, (1, 2, 2))))

    def test_default_mode_follows_the_loss_kind(self):
        assert DownsampledLoss(fastloss.TopologicalLoss()).mode == "max"
        assert DownsampledLoss(CountingLoss()).mode == "area"
        target = ring(32, 8, 1)  # the default for topology keeps a 1-pixel ring binary: no error
        value = DownsampledLoss(fastloss.TopologicalLoss(), factor=2)(soft_prediction(target), target)
        assert torch.isfinite(value)

    def test_topology_max_mode_keeps_target_binary(self):
        target = ring(32, 8, 1)  # a 1-pixel ring: area pooling would make it fractional
        pred = soft_prediction(target).requires_grad_()
        out = DownsampledLoss(fastloss.TopologicalLoss(), factor=2, mode="max")(pred, target)
        out.backward()
        assert torch.isfinite(out) and pred.grad.shape == pred.shape
        with pytest.raises(ValueError, match="`target` must be a binary mask"):
            DownsampledLoss(fastloss.TopologicalLoss(), factor=2, mode="area")(pred, target)

    @pytest.mark.parametrize("kwargs, shape, message", [
        ({"factor": 4}, (1, 1, 3, 8), "`input` spatial size (3, 8) is too small to downsample by factor (4, 4)"),
        ({"size": (10, 10)}, (1, 1, 8, 8), "`size` (10, 10) must not exceed the input's spatial size (8, 8)"),
        ({"mode": "bilinear"}, (1, 1, 4, 4, 4), "`antialias=True` is not supported for 3D inputs"),
        ({"factor": (2, 2)}, (1, 1, 4, 4, 4), "`factor` must be a positive int or 3 positive ints, got (2, 2)"),
        ({}, (4, 8, 8), "`input` must have 4 or 5 dimensions"),
    ])
    def test_bad_input(self, kwargs, shape, message):
        with pytest.raises(ValueError) as info:
            DownsampledLoss(CountingLoss(), **kwargs)(torch.rand(shape), torch.rand(shape))
        assert message in str(info.value)

    @pytest.mark.parametrize("kwargs, message", [
        ({"mode": "nearest"}, "`mode` must be one of ['area', 'bilinear', 'max'], got 'nearest'"),
        ({"factor": 0}, "`factor` must be >= 1, got 0"),  # issue 16 item 7: the old "or 1 positive ints" read wrong
        ({"factor": 2, "size": (4, 4)}, "give either `factor` or `size`, not both"),
    ])
    def test_bad_arguments(self, kwargs, message):
        with pytest.raises(ValueError) as info:
            DownsampledLoss(CountingLoss(), **kwargs)
        assert message in str(info.value)


class Identity(nn.Module):
    """A "loss" that returns its (resized) input: what DownsampledLoss hands the loss, observable."""

    def forward(self, input, target):
        return input


class TestDownsampledEdges:
    @pytest.mark.parametrize("mode, pool2d, pool3d", [
        ("area", F.adaptive_avg_pool2d, F.adaptive_avg_pool3d),
        ("max", F.adaptive_max_pool2d, F.adaptive_max_pool3d),
    ])
    def test_size_uses_adaptive_pooling_in_2d_and_3d(self, mode, pool2d, pool3d):
        g = torch.Generator().manual_seed(0)
        x2, x3 = torch.rand(1, 2, 9, 7, generator=g), torch.rand(1, 1, 5, 9, 7, generator=g)
        assert torch.equal(DownsampledLoss(Identity(), size=(4, 3), mode=mode)(x2, None), pool2d(x2, (4, 3)))
        assert torch.equal(DownsampledLoss(Identity(), size=(2, 4, 3), mode=mode)(x3, None), pool3d(x3, (2, 4, 3)))

    @pytest.mark.parametrize("antialias", [True, False])
    def test_bilinear_honours_antialias_in_2d_and_is_trilinear_in_3d(self, antialias):
        x = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(1))
        out = DownsampledLoss(Identity(), factor=3, mode="bilinear", antialias=antialias)(x, None)
        assert torch.equal(out, F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False,
                                              antialias=antialias))
        v = torch.rand(1, 1, 6, 6, 6, generator=torch.Generator().manual_seed(2))
        out = DownsampledLoss(Identity(), factor=2, mode="bilinear", antialias=False)(v, None)
        assert torch.equal(out, F.interpolate(v, size=(3, 3, 3), mode="trilinear", align_corners=False))
        with pytest.raises(ValueError, match=r"^`antialias=True` is not supported for 3D inputs; use antialias=False "
                                             r"or mode='area'$"):
            DownsampledLoss(Identity(), factor=2, mode="bilinear")(v, None)

    def test_float64_stays_float64_gradcheck(self):
        x = torch.rand(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
        y = torch.rand(1, 1, 6, 6, dtype=torch.float64)
        loss = DownsampledLoss(nn.MSELoss(), factor=2)
        assert loss(x, y).dtype == torch.float64
        assert torch.autograd.gradcheck(lambda a: loss(a, y), (x,))

    @pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64])
    def test_integer_and_bool_topology_targets(self, dtype):
        target = torch.cat(dataset(2, size=16))
        pred = soft_prediction(target)
        down = DownsampledLoss(fastloss.TopologicalLoss(workers=1))
        assert torch.equal(down(pred, target.to(dtype)), down(pred, target))
