"""ScheduledWeight: the weight of the training step, zero weight skips."""

import pytest
import torch
import torch.nn.functional as F
from fakes import CountingLoss
from steps import batch, train

from fastloss import ScheduledWeight, schedules


class TestScheduledWeight:
    def test_weight_zero_never_calls(self):
        inner = CountingLoss()
        loss = ScheduledWeight(inner, schedules.delayed(start=3))
        x, y = batch()
        values = train(loss, x, y, 5)
        assert inner.calls == 2
        assert [v.item() == 0 for v in values] == [True, True, True, False, False]
        assert torch.allclose(values[-1], F.mse_loss(x, y))

    def test_weight_multiplies(self):
        loss = ScheduledWeight(CountingLoss(), schedules.linear_warmup(4))
        x, y = batch()
        values = train(loss, x, y, 6)
        for step, v in enumerate(values):
            assert torch.allclose(v, min(step / 4, 1.0) * F.mse_loss(x, y))

    def test_epochs(self):
        s = schedules.delayed(start=60, steps_per_epoch=18)
        assert s(60 * 18 - 1) == 0.0 and s(60 * 18) == 1.0
        c = schedules.cosine_decay(total=10, steps_per_epoch=2)
        assert c(0) == 1.0 and c(10) == pytest.approx(0.5) and c(20) == pytest.approx(0.0) and c(99) == pytest.approx(0.0)
        p = schedules.piecewise([1, 2], [0.0, 0.5, 1.0], steps_per_epoch=10)
        assert (p(9), p(10), p(25)) == (0.0, 0.5, 1.0)
        assert schedules.constant(0.3)(12345) == 0.3
        assert schedules.constant(0.3, steps_per_epoch=7)(5) == 0.3  # every schedule takes steps_per_epoch

    def test_bad_schedule_values(self):
        x, y = batch()
        with pytest.raises(ValueError, match=r"`schedule\(0\)` must return a finite, non-negative weight, got -1.0"):
            ScheduledWeight(CountingLoss(), lambda s: -1)(x, y)
        with pytest.raises(TypeError, match=r"`schedule\(0\)` must return a number, got str"):
            ScheduledWeight(CountingLoss(), lambda s: "one")(x, y)
        with pytest.raises(TypeError, match=r"^`schedule` must be callable \(step -> weight\), got float$"):
            ScheduledWeight(CountingLoss(), 1.0)

    def test_weight_at_a_given_step(self):
        loss = ScheduledWeight(CountingLoss(), schedules.linear_warmup(10))
        assert loss.weight() == 0.0 and loss.weight(5) == pytest.approx(0.5) and loss.weight(20) == 1.0

    @pytest.mark.parametrize("call, message", [
        (lambda: schedules.piecewise([1, 2], [1.0]), "`values` must have len(boundaries) + 1 = 3 entries, got 1"),
        (lambda: schedules.piecewise([2, 1], [0, 1, 2]), "`boundaries` must be increasing"),
        (lambda: schedules.delayed(-1), "`start` must be a finite number >= 0.0, got -1"),
        (lambda: schedules.constant(float("nan")), "`value` must be a finite number"),
        (lambda: schedules.cosine_decay(0), "`total` must be > 0"),
        (lambda: schedules.delayed(1, steps_per_epoch=0), "`steps_per_epoch` must be a positive int, got 0"),
    ])
    def test_bad_schedules(self, call, message):
        with pytest.raises(ValueError) as info:
            call()
        assert message in str(info.value)
