"""IntervalLoss: one step in N, compensation, offsets, nesting periods."""

import pytest
import torch
import torch.nn.functional as F
from fakes import CountingLoss
from steps import batch, train
from torch import nn

from fastloss import IntervalLoss


class TestIntervalLoss:
    def test_every_four_calls_twice_in_eight_steps_with_gain(self):
        inner = CountingLoss()
        loss = IntervalLoss(inner, every=4)
        x, y = batch()
        values = train(loss, x, y, 8)
        assert inner.calls == 2
        exact = F.mse_loss(x, y)
        for step, v in enumerate(values):
            assert torch.allclose(v, 4 * exact if step % 4 == 0 else torch.zeros(()))
        assert int(loss.step) == 8

    def test_skipped_zero_backpropagates(self):
        loss = IntervalLoss(CountingLoss(), every=2)
        x, y = batch()
        loss(x.detach(), y)  # an input without grad: the clock advances at once
        skipped = loss(x, y)
        skipped.backward()
        assert skipped.item() == 0.0 and torch.count_nonzero(x.grad) == 0

    def test_skipped_zero_is_finite_for_nan_input(self):
        loss = IntervalLoss(CountingLoss(), every=2, offset=1)
        x = torch.full((1, 1, 4, 4), float("nan"), requires_grad=True)
        out = loss(x, torch.zeros(1, 1, 4, 4))
        out.backward()
        assert out.item() == 0.0 and torch.isfinite(x.grad).all()

    def test_offset_and_no_compensation(self):
        inner = CountingLoss()
        loss = IntervalLoss(inner, every=3, offset=2, compensate=False)
        x, y = batch()
        computed = [v.item() != 0 for v in train(loss, x, y, 6)]
        assert computed == [False, False, True, False, False, True]
        assert loss(x, y).item() == 0 and torch.isclose(IntervalLoss(CountingLoss(), 3, False)(x, y), F.mse_loss(x, y))
        assert loss.mean_gain() == pytest.approx(1 / 3) and IntervalLoss(CountingLoss(), 3).mean_gain() == 1

    def test_eval_and_no_grad_compute_every_call_with_gain_one(self):
        inner = CountingLoss()
        loss = IntervalLoss(inner, every=4)
        x, y = batch()
        loss.eval()
        assert all(torch.allclose(loss(x, y), F.mse_loss(x, y)) for _ in range(3))
        loss.train()
        with torch.no_grad():
            assert all(torch.allclose(loss(x, y), F.mse_loss(x, y)) for _ in range(3))
        assert inner.calls == 6 and int(loss.step) == 0

    @pytest.mark.parametrize("kwargs, error, message", [
        ({"every": 0}, ValueError, "`every` must be >= 1, got 0"),
        ({"every": 2.0}, TypeError, "`every` must be an int, got float"),
        ({"every": 2, "offset": 2}, ValueError, "`offset` must be an int in [0, 1], got 2"),
        ({"every": 2, "compensate": 1}, TypeError, "`compensate` must be a bool, got int"),
    ])
    def test_bad_arguments(self, kwargs, error, message):
        with pytest.raises(error) as info:
            IntervalLoss(CountingLoss(), **kwargs)
        assert message in str(info.value)

    def test_non_module_loss(self):
        with pytest.raises(TypeError, match="`loss` must be an nn.Module .* got function"):
            IntervalLoss(F.mse_loss)


class TestIntervalEdges:
    def test_default_period_and_active_at_a_given_step(self):
        loss = IntervalLoss(nn.MSELoss(), offset=1)
        assert loss.every == 4  # documented default
        assert [loss.active(s) for s in range(6)] == [False, True, False, False, False, True]
        assert not loss.active()  # the current step, 0

    def test_offset_must_be_an_int_not_a_bool(self):
        with pytest.raises(ValueError, match=r"^`offset` must be an int in \[0, 3\], got True$"):
            IntervalLoss(nn.MSELoss(), every=4, offset=True)
