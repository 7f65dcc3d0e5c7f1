"""Stacks of wrappers: composition, resume, and warnings that name the caller's line."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from fakes import CountingLoss
from shapes import ring, soft_prediction
from steps import batch, dataset, train
from torch import nn

import fastloss
from fastloss import AMPLoss, CachedPH, DownsampledLoss, IntervalLoss, ScheduledWeight, schedules

WRAPPERS = {
    "interval": lambda loss: IntervalLoss(loss, every=2),
    "down": lambda loss: DownsampledLoss(loss, factor=2),
    "amp": lambda loss: AMPLoss(loss),
    "sched": lambda loss: ScheduledWeight(loss, schedules.linear_warmup(2)),
}


class TestStacks:
    def test_whole_stack_shares_one_clock(self):
        inner = CountingLoss()
        stack = IntervalLoss(DownsampledLoss(AMPLoss(inner), factor=2), every=4)
        x, y = batch()
        train(stack, x, y, 5)
        assert inner.calls == 2 and int(stack.step) == 5
        assert all(w.step is stack.step for w in stack.wrappers())  # one source of truth
        assert [k for k in stack.state_dict() if k.endswith("step")] == ["step"]
        stack.set_step(42)
        assert [int(w.step) for w in stack.wrappers()] == [42, 42, 42]
        with pytest.raises(ValueError, match="`step` must be a non-negative int, got -1"):
            stack.set_step(-1)

    @pytest.mark.parametrize("order", list(itertools.permutations(WRAPPERS)))
    def test_nesting_in_any_order(self, order):
        inner = CountingLoss()
        stack = inner
        for name in order:
            stack = WRAPPERS[name](stack)
        x, y = batch(shape=(1, 1, 8, 8))
        values = train(stack, x, y, 4)
        # interval computes steps 0 and 2; the warm-up weight is 0 at step 0: one call at step 2
        assert inner.calls == 1
        expected = 2 * 1.0 * F.mse_loss(F.avg_pool2d(x, 2), F.avg_pool2d(y, 2))
        assert torch.allclose(values[2], expected, rtol=2e-2)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in values)

    def test_resume_is_identical(self):
        targets = torch.cat(dataset())

        def build():
            return ScheduledWeight(
                IntervalLoss(CachedPH(fastloss.TopologicalLoss(), refresh_every=3), every=2),
                schedules.linear_warmup(3),
            )

        def steps(loss, seeds):
            out = []
            for s in seeds:
                p = soft_prediction(targets, seed=s, noise=0.6).requires_grad_()
                v = loss(p, targets)
                v.backward()
                out.append((v.detach(), p.grad))
            return out

        uninterrupted = steps(build(), range(10))
        first = build()
        steps(first, range(5))
        state = first.state_dict()
        resumed = build()
        resumed.load_state_dict(state)
        rest = steps(resumed, range(5, 10))
        for (va, ga), (vb, gb) in zip(uninterrupted[5:], rest, strict=True):
            assert torch.equal(va, vb) and torch.equal(ga, gb)
        assert int(resumed.step) == 10 and resumed.loss.loss.cache_info()["hits"] > 0

    def test_state_dict_holds_steps_and_cache_config(self, tmp_path):
        loss = IntervalLoss(CachedPH(fastloss.TopologicalLoss(), refresh_every=7, max_entries=9), every=3)
        x = soft_prediction(ring())
        loss(x, ring())
        path = tmp_path / "state.pt"
        torch.save(loss.state_dict(), path)
        state = torch.load(path, weights_only=True)
        assert int(state["step"]) == 1 and "loss.step" not in state  # one clock: the outermost wrapper's
        extra = state["loss._extra_state"]
        assert extra["refresh_every"] == 7 and extra["max_entries"] == 9 and len(extra["pairings"]) == 1


def caller(warning):
    """The file a warning names; under mutation testing (mutmut) its trampoline stands between this test
    and fastloss, and is the first frame outside fastloss and torch."""
    return __file__ if "/mutmut/" in warning.filename else warning.filename


class TestWarningsNameTheCallersLine:
    """A wrapper's warning is raised frames deep; it must point at the user's line, however deep the stack."""

    @pytest.mark.parametrize("wrap", [lambda a: a, lambda a: IntervalLoss(DownsampledLoss(a), every=1)],
                             ids=["alone", "nested"])
    def test_amp(self, wrap):
        loss = wrap(AMPLoss(nn.MSELoss(), dtype=torch.float16))  # float16 is emulated on every CPU
        with pytest.warns(UserWarning, match="AMPLoss: torch.float16 is emulated") as rec:
            loss(*batch())
        assert [caller(w) for w in rec if "AMPLoss" in str(w.message)] == [__file__]

    def test_cached_ph_checkpoint(self):
        sync = CachedPH(fastloss.TopologicalLoss(), refresh_every=1)
        with pytest.warns(UserWarning, match="CachedPH: the checkpoint") as rec:
            sync.load_state_dict(CachedPH(fastloss.TopologicalLoss(), refresh_every=3).state_dict())
        assert [caller(w) for w in rec] == [__file__]
