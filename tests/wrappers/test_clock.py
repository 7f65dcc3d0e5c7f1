"""The wrapper layer's foundations: one step clock per stack, nesting that keeps the expected value, and
torch.compile (skipped steps shaped like computed ones: test_skipped_shapes.py)."""

import copy
import gc
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from shapes import ring, soft_prediction
from steps import step, xy
from torch import nn

import fastloss
from fastloss import AMPLoss, CachedPH, DownsampledLoss, IntervalLoss, ScheduledWeight, schedules


class TestClock:
    def test_one_call_per_step_advances_once_per_backward(self):
        loss = IntervalLoss(nn.MSELoss(), every=2)
        x, y = xy()
        values = [step(loss, (x, y))[0].item() for _ in range(4)]
        assert [v != 0 for v in values] == [True, False, True, False] and int(loss.step) == 4

    def test_deep_supervision_heads_share_a_step(self):
        """Two heads in one step see the same step: both get a gradient on the computed steps (defect 7)."""
        loss = IntervalLoss(nn.MSELoss(), every=2)
        for i in range(4):
            a, b = xy(seed=2 * i), xy(seed=2 * i + 1)
            va, vb = step(loss, a, b)
            assert (va != 0) == (vb != 0) == (i % 2 == 0)
            assert (a[0].grad.abs().sum() > 0) == (b[0].grad.abs().sum() > 0) == (i % 2 == 0)
        assert int(loss.step) == 4

    def test_gradient_accumulation_with_an_optimizer(self):
        model = nn.Linear(4, 4)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        loss = IntervalLoss(nn.MSELoss(), every=2).attach(opt)
        assert loss.clock == "optimizer"
        computed = []
        for _ in range(3):  # 3 optimizer steps of 2 micro-batches each
            gains = []
            for _ in range(2):
                gains.append(loss.stack_gain())
                loss(model(torch.rand(2, 4)), torch.zeros(2, 4)).backward()
            opt.step()
            opt.zero_grad()
            computed.append(gains)
        assert computed == [[2.0, 2.0], [0.0, 0.0], [2.0, 2.0]] and int(loss.step) == 3
        loss.detach()
        assert loss.clock == "backward" and not loss._optimizer_hooks

    def test_the_optimizer_holds_no_strong_reference(self):
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        loss = IntervalLoss(nn.MSELoss()).attach(opt)
        ref = weakref.ref(loss)
        del loss
        gc.collect()
        assert ref() is None
        opt.step()  # the hook of a collected stack does nothing

    def test_a_copy_is_not_attached(self):
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        loss = IntervalLoss(nn.MSELoss()).attach(opt)
        clone = copy.deepcopy(loss)
        opt.step()
        assert int(loss.step) == 1 and int(clone.step) == 0 and clone.clock == "backward"

    def test_calls_and_manual_modes(self):
        x, y = xy()
        calls = IntervalLoss(nn.MSELoss(), every=2).set_clock("calls")
        assert [calls(x, y).item() != 0 for _ in range(4)] == [True, False, True, False]
        manual = IntervalLoss(nn.MSELoss(), every=2).set_clock("manual")
        assert all(step(manual, (x, y))[0].item() != 0 for _ in range(3)) and int(manual.step) == 0
        manual.advance()
        assert step(manual, (x, y))[0].item() == 0
        with pytest.raises(ValueError, match="`mode` must be one of"):
            manual.set_clock("epochs")
        with pytest.raises(ValueError, match=r"^clock 'optimizer' needs an optimizer: call attach\(optimizer\)$"):
            manual.set_clock("optimizer")
        with pytest.raises(TypeError, match="`optimizer` must be a torch.optim.Optimizer, got Linear"):
            manual.attach(nn.Linear(1, 1))

    def test_writing_the_buffer_takes_effect(self):
        """`step.fill_` on the stack or on an inner wrapper is the step (defect 7: it used to be ignored)."""
        stack = ScheduledWeight(IntervalLoss(nn.MSELoss(), every=2), schedules.piecewise([5], [0.0, 1.0]))
        x, y = xy()
        stack.step.fill_(1)
        assert stack.loss.active() is False and stack.stack_gain() == 0
        stack.loss.step.fill_(6)  # an inner wrapper's step is the stack's
        assert int(stack.step) == 6 and stack.stack_gain() == 2.0
        assert torch.allclose(step(stack, (x, y))[0], 2 * F.mse_loss(x, y))

    def test_eval_and_no_grad_never_advance(self):
        loss = IntervalLoss(nn.MSELoss(), every=3)
        x, y = xy()
        loss.eval()
        loss(x, y).backward()
        loss.train()
        with torch.no_grad():
            loss(x, y)
        assert int(loss.step) == 0

    def test_an_input_without_grad_advances_at_once(self):
        loss = IntervalLoss(nn.MSELoss(), every=2)
        x, y = xy()
        values = [loss(x.detach(), y).item() for _ in range(4)]
        assert [v != 0 for v in values] == [True, False, True, False]

    def test_the_clock_stays_on_the_cpu(self):
        loss = IntervalLoss(DownsampledLoss(nn.MSELoss()), every=2).to(torch.float64)
        assert loss.step.device.type == "cpu" and loss.step.dtype == torch.int64

    def test_fastloss_01_checkpoints_load(self):
        """0.1 saved a step per wrapper; the outermost one is the stack's."""
        stack = IntervalLoss(AMPLoss(nn.MSELoss()), every=2)
        stack.load_state_dict({"step": torch.tensor(3), "loss.step": torch.tensor(3)})
        assert int(stack.step) == 3


LAYERS = st.one_of(
    st.tuples(st.just("interval"), st.integers(1, 4), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("sched"), st.sampled_from([0.5, 1.0, 2.0])),
    st.tuples(st.just("down")),
    st.tuples(st.just("amp")),
)


def build(layers):
    """A stack from the innermost MSE outwards; its documented mean gain."""
    loss, gain, downs = nn.MSELoss(), 1.0, 0
    for layer in layers:
        if layer[0] == "interval":
            every, offset, compensate = layer[1], layer[2] % layer[1], layer[3]
            loss = IntervalLoss(loss, every=every, offset=offset, compensate=compensate)
            gain *= 1.0 if compensate else 1.0 / every  # the documented gains, not the object's own account
        elif layer[0] == "sched":
            loss = ScheduledWeight(loss, schedules.constant(layer[1]))
            gain *= layer[1]
        elif layer[0] == "down":
            loss = DownsampledLoss(loss, factor=2)
            downs += 1
        else:
            loss = AMPLoss(loss, dtype=torch.bfloat16)
    return loss, gain


class TestNesting:
    def test_nested_intervals_keep_mean_gain_one(self):
        """Defect 1: every=2 inside every=2 gave [4, 0, 4, 0] (mean gain 2)."""
        loss = IntervalLoss(IntervalLoss(nn.L1Loss(), every=2), every=2)
        x = torch.ones(3, requires_grad=True)
        values = [step(loss, (x, torch.zeros(3)))[0].item() for _ in range(8)]
        assert values == [4.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0]
        inner2_outer4 = IntervalLoss(IntervalLoss(nn.L1Loss(), every=2), every=4)
        values = [step(inner2_outer4, (x, torch.zeros(3)))[0].item() for _ in range(16)]
        assert sum(values) / 16 == 1.0 and values[0] == 8.0 and values.count(0.0) == 14

    def test_fastest_of_fastest_is_refused(self):
        vgg = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
        with pytest.raises(TypeError, match="already wrapped"):
            fastloss.preset("fastest", fastloss.preset("fastest", vgg))

    @settings(max_examples=40, deadline=None)
    @given(layers=st.lists(LAYERS, min_size=1, max_size=4).filter(lambda ls: sum(x[0] == "down" for x in ls) <= 2))
    def test_mean_over_a_window_is_the_exact_loss_times_the_documented_gains(self, layers):
        loss, gain = build(layers)
        # the stack's own account of its documented gains agrees with the documentation
        assert math.prod(w.mean_gain() for w in loss.wrappers()) == pytest.approx(gain)
        window = math.prod(layer[1] for layer in layers if layer[0] == "interval")
        g = torch.Generator().manual_seed(len(layers))
        # constant on 4x4 blocks: area downsampling (up to twice) leaves the MSE unchanged
        up = lambda t: F.interpolate(t, scale_factor=4, mode="nearest")  # noqa: E731
        x, y = up(torch.rand(1, 1, 4, 4, generator=g)), up(torch.rand(1, 1, 4, 4, generator=g))
        exact = F.mse_loss(x, y).item()
        values = []
        for _ in range(window):
            expected_gain = loss.stack_gain() if isinstance(loss, fastloss.LossWrapper) else 1.0
            value = step(loss, (x.clone().requires_grad_(), y))[0].item()
            values.append(value)
            assert value == pytest.approx(expected_gain * exact, rel=2e-2, abs=1e-7)
        assert sum(values) / window == pytest.approx(exact * gain, rel=2e-2, abs=1e-7)

    def test_one_instance_in_two_stacks_is_refused(self):
        shared = IntervalLoss(nn.MSELoss(), every=2)
        AMPLoss(shared)
        with pytest.raises(ValueError, match="IntervalLoss already belongs to the stack of AMPLoss: a wrapper is in "
                                             "one stack only"):
            DownsampledLoss(shared)

    def test_one_instance_twice_in_a_stack_is_refused(self):
        class Heads(nn.Module):
            def __init__(self, a, b):
                super().__init__()
                self.a, self.b = a, b

            def forward(self, input, target):
                return self.a(input, target) + self.b(input, target)

        shared = IntervalLoss(nn.MSELoss(), every=2)
        with pytest.raises(ValueError, match="IntervalLoss appears twice in the stack of ScheduledWeight"):
            ScheduledWeight(Heads(shared, shared), schedules.constant(1.0))

    def test_a_failed_construction_leaves_the_inner_stack_alone(self):
        inner = IntervalLoss(nn.MSELoss(), every=2)
        with pytest.raises(ValueError):
            IntervalLoss(inner, every=0)
        assert inner.root is inner and "step" in inner._buffers




def compiled_matches_eager(make, pairs, backend="aot_eager"):
    eager, compiled = make(), torch.compile(make(), backend=backend)
    for x, y in pairs:
        out = []
        for loss in (eager, compiled):
            leaf = x.detach().clone().requires_grad_()
            value = loss(leaf, y)
            value.sum().backward()
            out.append((value.detach(), leaf.grad))
        (va, ga), (vb, gb) = out
        assert torch.allclose(va, vb, atol=1e-6) and torch.allclose(ga, gb, atol=1e-6)
    return eager


class TestCompile:
    """Defect 2: every wrapper failed under torch.compile (a thread-local drove the stepping)."""

    @pytest.mark.parametrize("make", [
        lambda: IntervalLoss(nn.MSELoss(), every=2),
        lambda: ScheduledWeight(nn.MSELoss(), schedules.linear_warmup(3)),
        lambda: DownsampledLoss(nn.MSELoss(), factor=2),
        lambda: AMPLoss(nn.MSELoss(), dtype=torch.bfloat16),
        lambda: IntervalLoss(DownsampledLoss(AMPLoss(nn.MSELoss(), dtype=torch.bfloat16)), every=3),
    ], ids=["interval", "scheduled", "downsampled", "amp", "stack"])
    def test_wrapper_compiles_and_matches_eager(self, make):
        g = torch.Generator().manual_seed(0)
        pairs = [(torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)) for _ in range(5)]
        eager = compiled_matches_eager(make, pairs)
        assert int(eager.step) == 5

    def test_cached_ph_compiles_and_matches_eager(self):
        target = torch.cat([ring(16, 2, 2), ring(16, 3, 2)])
        pairs = [(soft_prediction(target, seed=s, noise=0.6), target) for s in range(3)]
        compiled_matches_eager(lambda: CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=2), pairs)

    def test_compiled_train_step(self):
        torch.manual_seed(0)
        model_a = nn.Conv2d(1, 1, 3, padding=1)
        model_b = copy.deepcopy(model_a)
        g = torch.Generator().manual_seed(1)
        data = [(torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)) for _ in range(4)]

        def make_step(model):
            stack = IntervalLoss(ScheduledWeight(nn.MSELoss(), schedules.linear_warmup(2)), every=2)
            opt = torch.optim.SGD(model.parameters(), lr=0.5)

            def train_step(x, y):
                opt.zero_grad()
                value = stack(model(x), y) + stack(model(x).flip(-1), y)  # two heads, one step
                value.backward()
                opt.step()
                return value.detach()

            return stack, train_step

        stack_a, eager_step = make_step(model_a)
        stack_b, compiled = make_step(model_b)
        compiled = torch.compile(compiled, backend="aot_eager")
        for x, y in data:
            assert torch.allclose(eager_step(x, y), compiled(x, y), atol=1e-6)
        assert int(stack_a.step) == int(stack_b.step) == 4
        assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True))

    @pytest.mark.slow
    def test_inductor(self):
        g = torch.Generator().manual_seed(0)
        pairs = [(torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)) for _ in range(3)]
        compiled_matches_eager(lambda: IntervalLoss(DownsampledLoss(nn.MSELoss()), every=2), pairs, backend="inductor")


class TestClockEdges:
    """Edges of the clock API that a careless change would break silently (found by mutation testing)."""

    def test_set_clock_to_another_mode_removes_the_optimizer_hooks(self):
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        loss = IntervalLoss(nn.MSELoss()).attach(opt)
        loss.set_clock("manual")
        opt.step()
        assert int(loss.step) == 0 and loss.clock == "manual" and not loss._optimizer_hooks

    def test_set_clock_optimizer_when_attached_keeps_the_hooks(self):
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        loss = IntervalLoss(nn.MSELoss()).attach(opt).set_clock("optimizer")
        opt.step()
        assert int(loss.step) == 1 and loss.clock == "optimizer"

    def test_a_copy_of_an_attached_stack_is_not_attached(self):
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        loss = IntervalLoss(nn.MSELoss()).attach(opt)
        clone = copy.deepcopy(loss)
        assert clone.clock == "backward"
        with pytest.raises(ValueError, match="needs an optimizer"):  # no dead hooks pretend it is attached
            clone.set_clock("optimizer")
        clone.detach()
        opt.step()
        assert int(loss.step) == 1 and int(clone.step) == 0

    def test_detach_then_attach_again_and_a_copy_can_attach(self):
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        loss = IntervalLoss(nn.MSELoss()).attach(opt).detach().attach(opt)
        opt.step()
        assert int(loss.step) == 1
        clone = copy.deepcopy(loss).attach(opt)
        opt.step()
        assert int(clone.step) == 2 and int(loss.step) == 2  # the clone was at 1 when copied

    def test_set_step_zero_and_types(self):
        loss = IntervalLoss(nn.MSELoss())
        loss.set_step(3)
        loss.set_step(0)
        assert int(loss.step) == 0
        for bad in (-1, 1.0, True):
            with pytest.raises(ValueError, match="`step` must be a non-negative int"):
                loss.set_step(bad)

    def test_moving_the_stack_moves_everything_but_the_clock(self):
        class WithBuffer(nn.MSELoss):
            def __init__(self):
                super().__init__()
                self.register_buffer("scale", torch.ones(1))

        stack = IntervalLoss(DownsampledLoss(WithBuffer()), every=2)
        stack.to("meta")
        assert stack.step.device.type == "cpu" and stack.innermost().scale.device.type == "meta"

    def test_nested_offsets_compute_on_the_composed_steps(self):
        """Outer every=3 offset=2 around inner every=2 offset=1: the inner counts the outer's computed steps
        (5, 8, 11, ... are phases 1, 2, 3, ...) and computes on odd phases: steps 5, 11, 17."""
        loss = IntervalLoss(IntervalLoss(nn.L1Loss(), every=2, offset=1), every=3, offset=2)
        x = torch.ones(2, requires_grad=True)
        computed = [s for s in range(18) if step(loss, (x, torch.zeros(2)))[0].item() != 0]
        assert computed == [5, 11, 17]
        assert [loss.loss.phase(s) for s in (5, 8, 11)] == [1, 2, 3]
