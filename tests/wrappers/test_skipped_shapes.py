"""Skipped steps (IntervalLoss, ScheduledWeight at weight 0) return a zero shaped like a computed step's
output: every reduction, changing batches, offsets, fastloss' and torch's losses, losses outside torch."""

import pytest
import torch
from shapes import ring, soft_prediction
from steps import step, xy
from torch import nn

import fastloss
from fastloss import DownsampledLoss, IntervalLoss, ScheduledWeight, schedules
from fastloss.wrappers.base import loss_output_shape


class TestSkippedShapes:
    """Defect 3: a skipped step's zero is shaped like a computed step's output, from the input alone.

    How the shape is found: shortcuts for torch's losses, ``output_shape`` for fastloss' losses, fake tensors
    for the rest, an error naming the cause when none works."""

    @pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
    def test_interval_offset_and_changing_batch(self, reduction):
        loss = IntervalLoss(nn.MSELoss(reduction=reduction), every=2, offset=1)
        for batch in (4, 3, 4, 2):
            x, y = xy((batch, 3))
            computed = nn.MSELoss(reduction=reduction)(x, y)
            value = step(loss, (x, y))[0]
            assert value.shape == computed.shape

    def test_a_skipped_step_is_zero_even_for_non_finite_input(self):
        loss = IntervalLoss(nn.MSELoss(reduction="none"), every=2, offset=1)
        x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 1.0]], requires_grad=True)
        value = loss(x, torch.zeros(1, 4))
        value.sum().backward()
        assert torch.equal(value.detach().abs(), torch.zeros(1, 4)) and torch.equal(x.grad, torch.zeros(1, 4))
        assert value.dtype == torch.float32 and value.grad_fn is not None  # attached to the graph (DDP)

    def test_scheduled_weight_zero_and_one(self):
        loss = ScheduledWeight(nn.L1Loss(reduction="none"), schedules.piecewise([1], [0.0, 1.0]))
        x, y = xy((2, 1))
        assert [tuple(step(loss, (x, y))[0].shape) for _ in range(2)] == [(2, 1), (2, 1)]

    def test_fastloss_losses_and_downsampling(self):
        topo = IntervalLoss(fastloss.TopologicalLoss(reduction="none"), every=2, offset=1)
        target = torch.cat([ring(), ring()])
        pred = soft_prediction(target).requires_grad_()
        assert step(topo, (pred, target))[0].shape == (2, 1)
        down = IntervalLoss(DownsampledLoss(nn.MSELoss(reduction="none"), factor=2), every=2, offset=1)
        x, y = xy((1, 1, 8, 8))
        assert step(down, (x, y))[0].shape == (1, 1, 4, 4)
        vgg = ScheduledWeight(fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None, reduction="none"),
                              schedules.constant(0.0))
        assert vgg(*xy((3, 3, 16, 16))).shape == (3,)

    def test_downsampled_shapes_in_3d_without_target_and_bad_input(self):
        down = DownsampledLoss(nn.MSELoss(reduction="none"), factor=2)
        x = torch.rand(1, 2, 4, 6, 6)
        assert down.output_shape(x, x) == (1, 2, 2, 3, 3)
        assert loss_output_shape(IntervalLoss(DownsampledLoss(fastloss.TopologicalLoss(reduction="none"))), x, None) == (1, 2)
        with pytest.raises(ValueError, match=r"`input` must have 4 or 5 dimensions \(B, C, H, W or B, C, D, H, W\)"):
            down.output_shape(torch.rand(2, 6, 6), None)

    def test_unknown_loss_shape_from_fake_tensors_without_data(self):
        class Rowwise(nn.Module):
            def forward(self, input, target):
                return (input - target).abs().sum(dim=-1)

        x, y = xy((5, 7))
        assert loss_output_shape(Rowwise(), x, y) == (5,)
        loss = IntervalLoss(Rowwise(), every=2, offset=1)
        assert step(loss, (x, y))[0].shape == (5,)

    def test_a_loss_that_leaves_torch_needs_output_shape(self):
        class NumpyLoss(nn.Module):
            def forward(self, input, target):
                return torch.tensor(float((input.detach().numpy() - target.numpy()).sum()))

        loss = IntervalLoss(NumpyLoss(), every=2, offset=1)
        with pytest.raises(TypeError, match="cannot derive the output shape of NumpyLoss.*`output_shape"):
            loss(*xy((2, 2)))

    @pytest.mark.parametrize("loss, shape", [
        (nn.MSELoss(), ()), (nn.L1Loss(reduction="sum"), ()), (nn.KLDivLoss(reduction="batchmean"), ()),
        (nn.MSELoss(reduction="none"), (2, 3, 4)), (nn.SmoothL1Loss(reduction="none"), (2, 3, 4)),
    ])
    def test_torch_losses_never_need_fake_tensors(self, monkeypatch, loss, shape):
        import torch._subclasses.fake_tensor as fake

        def refuse(*args, **kwargs):
            raise AssertionError("FakeTensorMode used for a loss whose shape is known")

        monkeypatch.setattr(fake, "FakeTensorMode", refuse)
        x, y = torch.rand(2, 3, 4), torch.rand(1, 3, 4)  # broadcasting
        assert loss_output_shape(loss, x, y) == shape

    def test_a_loss_with_a_cpu_buffer_under_downsampling(self):
        class Weighted(nn.Module):  # no output_shape: found by running it on fake tensors
            def __init__(self):
                super().__init__()
                self.register_buffer("w", torch.tensor([1.0, 2.0]))

            def forward(self, input, target):
                return ((input - target) ** 2).mean(dim=(2, 3)) * self.w

        loss = IntervalLoss(DownsampledLoss(Weighted(), factor=2), every=2, offset=1)
        x, y = torch.rand(3, 2, 8, 8, requires_grad=True), torch.rand(3, 2, 8, 8)
        skipped = loss(x, y)  # DownsampledLoss hands meta tensors down: the fake run must still meet the buffer
        assert skipped.shape == (3, 2) and torch.equal(skipped.detach(), torch.zeros(3, 2))

    def test_the_error_names_the_cause(self):
        class Leaves(nn.Module):
            def forward(self, input, target):
                return torch.tensor(float(input.detach().numpy().sum()))

        with pytest.raises(TypeError, match=r"returning the shape its forward returns \((RuntimeError|TypeError|"
                                            r"NotImplementedError|AttributeError|ValueError): "):
            loss_output_shape(Leaves(), torch.rand(2), torch.rand(2))
