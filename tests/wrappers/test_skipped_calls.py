"""Issue 16 item 1: a skipped step never calls the wrapped loss once its output shape for that input
signature is known (from computed steps); a fake-tensor run at most once per signature, before any
computed step; the remembered shapes are bounded."""

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from fastloss import DownsampledLoss, IntervalLoss, ScheduledWeight


class Spy(nn.Module):
    """A custom loss without ``output_shape``: counts real and fake calls."""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = reduction
        self.real = self.fake = 0

    def forward(self, input, target):
        if isinstance(input, FakeTensor) or input.device.type == "meta":
            self.fake += 1
        else:
            self.real += 1
        per = (input - target).square().flatten(1).mean(1)
        return per if self.reduction == "none" else per.mean()


class NumpyDice(nn.Module):
    """A loss that leaves torch: it cannot run on fake tensors."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, input, target):
        p, t = input.detach().numpy(), target.numpy()  # fails on fake tensors, before the count
        self.calls += 1
        return torch.tensor(1 - 2 * float((p * t).sum()) / float(p.sum() + t.sum() + 1e-6))


def train(loss, batches):
    values = []
    for x, y in batches:
        x = x.clone().requires_grad_()
        value = loss(x, y)
        if value.requires_grad:  # a numpy loss's value has no graph: the clock advances on the call
            value.sum().backward()
        values.append(value.detach())
    return values


def batches(n, shape=(4, 3, 8, 8)):
    torch.manual_seed(0)
    return [(torch.rand(shape), torch.rand(shape)) for _ in range(n)]


def test_interval_calls_the_loss_only_on_computed_steps():
    spy = Spy()
    values = train(IntervalLoss(spy, every=4), batches(12))
    assert (spy.real, spy.fake) == (3, 0)
    assert [v.item() != 0 for v in values] == [True, False, False, False] * 3


def test_scheduled_weight_zero_runs_the_loss_once_on_fake_tensors():
    spy = Spy()
    values = train(ScheduledWeight(spy, lambda step: 0.0), batches(6))
    assert (spy.real, spy.fake) == (0, 1) and all(v.item() == 0 for v in values)


def test_a_skipped_first_step_runs_fake_tensors_once_per_signature():
    spy = Spy(reduction="none")
    loss = IntervalLoss(spy, every=4, offset=1)
    small = batches(12, (2, 3, 8, 8))
    values = train(loss, batches(12)[:6] + small[:6])
    # step 0 is skipped before any computed step: one fake run for (4, ...); the batch of 2 first arrives
    # at step 6, a skipped step: one more fake run; every other skipped step is answered from memory
    assert (spy.real, spy.fake) == (3, 2)
    assert [tuple(v.shape) for v in values] == [(4,)] * 6 + [(2,)] * 6


def test_the_signature_includes_dtype_and_reduction():
    spy = Spy()
    loss = IntervalLoss(spy, every=2)
    x, y = batches(1)[0]
    train(loss, [(x, y), (x, y)])
    assert (spy.real, spy.fake) == (1, 0)
    spy.reduction = "none"  # the user changes the reduction: the remembered scalar shape no longer holds
    assert [tuple(v.shape) for v in train(loss, [(x, y), (x, y)])] == [(4,), (4,)]
    assert [tuple(v.shape) for v in train(loss, [(x.double(), y.double())] * 2)] == [(4,), (4,)]
    assert (spy.real, spy.fake) == (3, 0)


def test_nested_and_downsampled_stacks_do_not_call_the_loss_on_skipped_steps():
    spy = Spy()
    loss = IntervalLoss(DownsampledLoss(ScheduledWeight(spy, lambda s: 1.0), factor=2), every=3)
    train(loss, batches(9))
    assert (spy.real, spy.fake) == (3, 0)


def test_the_remembered_shapes_are_bounded():
    loss = IntervalLoss(Spy(), every=2)
    loss.max_shapes = 5
    for side in range(8, 40):
        train(loss, batches(1, (1, 1, side, side)))
        assert len(loss._shapes()) <= 5
    assert len(loss._shapes()) == 5


def test_shapes_are_not_state_and_copies_start_empty():
    loss = IntervalLoss(Spy(), every=2)
    train(loss, batches(2))
    assert list(loss.state_dict()) == ["step"] and len(loss._shapes()) == 1
    for clone in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        assert len(clone._shapes()) == 0 and clone.state_dict()["step"].item() == 2


def test_side_effects_of_the_loss_run_on_computed_steps_only():
    dice = NumpyDice()
    x = (torch.rand(12, 2, 1, 8, 8) > 0.5).float()
    values = train(IntervalLoss(dice, every=4), [(x[i], x[i]) for i in range(12)])
    assert dice.calls == 3 and all(v.item() == 0 for v in values[1:4])


def test_a_numpy_loss_works_once_a_step_was_computed():
    """Item 7's last case: it used to fail at the first skipped step."""
    dice = NumpyDice()
    loss = IntervalLoss(dice, every=2)
    train(loss, batches(3))  # steps 0 and 2 computed, 1 skipped from memory
    assert dice.calls == 2
    # a smaller last batch arriving on a skipped step: its shape is learnt by one real (no_grad) call, once
    last = batches(1, (1, 3, 8, 8))[0]
    with pytest.warns(UserWarning, match=r"NumpyDice cannot run on fake tensors, so a skipped step with a new "
                                         r"input shape \(1, 3, 8, 8\) computed it once"):
        first = loss(*last)
    assert first.shape == () and first.item() == 0 and dice.calls == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(loss, [last, last])  # computed, then skipped from memory: no second warning, no extra call
    assert dice.calls == 4


def test_a_numpy_loss_skipped_at_its_first_call_is_a_clear_error():
    loss = ScheduledWeight(NumpyDice(), lambda step: 0.0)
    with pytest.raises(TypeError, match=r"cannot derive the output shape of NumpyDice .* `output_shape\(input, target\)`"):
        loss(*batches(1)[0])
