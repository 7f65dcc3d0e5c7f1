import copy
import itertools
import threading
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from shapes import ring, soft_prediction
from torch import nn

import fastloss
from fastloss import AMPLoss, CachedPH, DownsampledLoss, IntervalLoss, ScheduledWeight, schedules
from fastloss.losses import topological as topo
from fastloss.wrappers.base import loss_output_shape


class CountingLoss(nn.MSELoss):
    """MSE that counts its calls."""

    def __init__(self, reduction="mean"):
        super().__init__(reduction=reduction)
        self.calls = 0

    def forward(self, input, target):
        self.calls += 1
        return super().forward(input, target)


def batch(seed=0, shape=(2, 1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g).requires_grad_(), torch.rand(shape, generator=g)


def train(loss, x, y, n):
    """``n`` training steps (forward + backward: the clock advances once per backward); the values."""
    values = []
    for _ in range(n):
        value = loss(x, y)
        value.sum().backward()
        values.append(value.detach())
    return values


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


def record_dtypes(loss):
    """Forward hooks on every convolution of ``loss``: the dtypes their outputs were computed in."""
    seen = []
    for m in loss.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


class TestAMPLoss:
    @pytest.mark.parametrize("machine, expected", [("bf16-cpu", torch.bfloat16), ("amx-cpu", torch.bfloat16)])
    def test_default_runs_in_the_native_dtype(self, simulate, machine, expected):
        simulate(machine)
        torch.manual_seed(0)
        ref = fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None)
        loss = AMPLoss(ref)
        seen = record_dtypes(ref)
        x, y = batch(shape=(2, 3, 16, 16))
        out = loss(x, y)
        assert seen and set(seen) == {expected}  # the convolutions really ran in low precision
        assert out.dtype == torch.float32 and torch.allclose(out, ref(x, y), rtol=5e-2)
        out.backward()
        assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()

    def test_no_native_dtype_falls_back_to_float32_with_one_warning(self, simulate):
        simulate("avx2-cpu")
        ref = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
        loss = AMPLoss(ref)
        seen = record_dtypes(ref)
        x, y = batch(shape=(1, 3, 16, 16))
        with pytest.warns(UserWarning, match=r"no native low-precision dtype on cpu \(AMD EPYC \(Zen 3.*emulated.*float32"):
            out = loss(x, y)
        assert set(seen) == {torch.float32} and torch.equal(out, ref(x, y))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # one-time: the second call is silent
            loss(x, y)
        assert loss.autocast_dtype(torch.device("cpu")) is None

    def test_explicit_emulated_dtype_is_honoured_with_a_warning(self, simulate):
        simulate("avx2-cpu")
        ref = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
        loss = AMPLoss(ref, dtype=torch.bfloat16)
        seen = record_dtypes(ref)
        with pytest.warns(UserWarning, match=r"torch.bfloat16 is emulated on cpu .*tens of times slower"):
            loss(*batch(shape=(1, 3, 16, 16)))
        assert set(seen) == {torch.bfloat16}

    def test_default_dtypes(self, simulate):
        simulate("amx-cpu")
        assert AMPLoss(CountingLoss()).autocast_dtype(torch.device("cpu")) == torch.bfloat16
        assert AMPLoss(CountingLoss(), dtype=torch.float16).autocast_dtype(torch.device("cpu")) == torch.float16
        simulate("avx2-cpu")
        with pytest.warns(UserWarning):
            assert AMPLoss(CountingLoss()).autocast_dtype(torch.device("cpu")) is None

    @pytest.mark.parametrize("images", ["zeros", "equal", "constant"])
    def test_lpips_fp16_normalize_trap(self, images, simulate):
        """lpips' eps=1e-10 vanishes in float16: all-zero features give 0/0. Ours stays finite."""
        simulate("amx-cpu")
        lp = fastloss.LPIPSLoss(weights=None)
        loss = AMPLoss(lp, dtype=torch.float16)
        seen = record_dtypes(lp.trunk)
        x = {"zeros": torch.zeros(1, 3, 32, 32), "equal": torch.rand(1, 3, 32, 32),
             "constant": torch.full((1, 3, 32, 32), 0.5)}[images]
        y = x.clone() if images != "zeros" else torch.zeros(1, 3, 32, 32)
        x.requires_grad_()
        out = loss(x, y)
        out.backward()
        assert set(seen) == {torch.float16}
        assert torch.isfinite(out) and out.item() == pytest.approx(0.0, abs=1e-6)
        assert torch.isfinite(x.grad).all()

    def test_grad_scaler(self, simulate):
        simulate("amx-cpu")
        torch.manual_seed(0)
        model = nn.Conv2d(3, 3, 3, padding=1)
        loss = AMPLoss(fastloss.PerceptualLoss("vgg16", layers=["relu2_2"], weights=None), dtype=torch.float16)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        x, y = batch(shape=(1, 3, 16, 16))
        before = model.weight.detach().clone()
        value = loss(model(x.detach()), y)
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()
        assert torch.isfinite(value) and not torch.equal(before, model.weight)

    def test_bad_dtype(self):
        with pytest.raises(ValueError, match=r"`dtype` must be one of \[None, torch.float16, torch.bfloat16\], got torch.float64"):
            AMPLoss(CountingLoss(), dtype=torch.float64)


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


def dataset(n=4, size=24):
    """n distinct ring-like targets (different ring sizes), as a list of (1, 1, size, size) masks."""
    return [ring(size, outer=2 + i, width=2) for i in range(n)]


def count_ph(monkeypatch):
    counter = {"n": 0}

    def counting(real):
        def counted(*args, **kwargs):
            counter["n"] += 1
            return real(*args, **kwargs)

        return counted

    # every diagram, CachedPH's too, goes through here; target Betti numbers by labelling through the second
    monkeypatch.setattr(topo, "persistence_diagram", counting(topo.persistence_diagram))
    monkeypatch.setattr(fastloss.ph, "betti_numbers", counting(fastloss.ph.betti_numbers))
    return counter


class TestCachedPH:
    def test_refresh_every_one_is_exact(self):
        targets = torch.cat(dataset())
        cached, exact = CachedPH(fastloss.TopologicalLoss(), refresh_every=1), fastloss.TopologicalLoss()
        for epoch in range(3):
            pred = soft_prediction(targets, seed=epoch, noise=0.6)
            a, b = pred.clone().requires_grad_(), pred.clone().requires_grad_()
            va, vb = cached(a, targets), exact(b, targets)
            va.backward()
            vb.backward()
            assert torch.equal(va, vb) and torch.equal(a.grad, b.grad)

    def test_repeated_target_computes_target_ph_once(self, monkeypatch):
        target = dataset(1)[0]
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=1)
        counter = count_ph(monkeypatch)
        for seed in range(5):
            loss(soft_prediction(target, seed=seed), target)
        info = loss.cache_info()
        assert info["target_misses"] == 1 and info["target_hits"] == 4
        assert counter["n"] == 1 + 5  # one target diagram, five prediction diagrams

    def test_pairing_reused_between_refreshes(self, monkeypatch):
        targets = torch.cat(dataset())
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=3)
        counter = count_ph(monkeypatch)
        for _ in range(7):
            loss(soft_prediction(targets, noise=0.6), targets)
        info = loss.cache_info()
        # visits 1, 4 and 7 compute (4 maps each), visits 2, 3, 5, 6 reuse
        assert (info["misses"], info["refreshes"], info["hits"]) == (4, 8, 16)
        assert counter["n"] == 4 + 12  # 4 target diagrams + 12 prediction diagrams

    def test_reuse_equals_exact_when_prediction_is_unchanged(self):
        targets = torch.cat(dataset())
        pred = soft_prediction(targets, noise=0.6)
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=4)
        exact = fastloss.TopologicalLoss()(pred, targets)
        for _ in range(4):
            assert torch.equal(loss(pred.clone().requires_grad_(), targets), exact)
        assert loss.cache_info()["hits"] == 12

    def test_stale_pairing_gathers_current_values(self):
        targets = torch.cat(dataset(2))
        loss = CachedPH(fastloss.TopologicalLoss(reduction="none"), refresh_every=2)
        p1 = soft_prediction(targets, seed=1, noise=0.6)
        loss(p1, targets)
        p2 = (p1 * 0.9).detach()  # same ordering of values: same pairing, different values
        assert torch.allclose(loss(p2, targets), fastloss.TopologicalLoss(reduction="none")(p2, targets))

    def test_eval_is_exact_and_leaves_pairings(self):
        targets = torch.cat(dataset())
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=10).eval()
        for seed in range(3):
            pred = soft_prediction(targets, seed=seed, noise=0.6)
            assert torch.equal(loss(pred, targets), fastloss.TopologicalLoss()(pred, targets))
        assert loss.cache_info()["entries"] == 0 and loss.cache_info()["exact"] == 12

    def test_async_is_deterministic_and_matches_schedule(self, monkeypatch):
        targets = torch.cat(dataset())

        def run(refresh):
            loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh=refresh)
            values = [loss(soft_prediction(targets, seed=s, noise=0.6), targets) for s in range(6)]
            info = loss.cache_info()
            loss.close()
            return torch.stack(values), info

        a, info = run("async")
        b, _ = run("async")
        assert torch.equal(a, b)
        # per map: visit 1 misses; visits 2, 4, 6 reuse and start a background refresh that
        # visits 3 and 5 pick up, so the foreground never computes a diagram after visit 1
        assert (info["misses"], info["hits"], info["refreshes"]) == (4, 12, 8)
        sync, _ = run("sync")
        assert torch.equal(a[:2], sync[:2])  # identical until the first refresh

    def test_async_thread_ends_with_the_object(self):
        import gc
        import threading

        targets = torch.cat(dataset(2))
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh="async")
        for s in range(3):
            loss(soft_prediction(targets, seed=s), targets)
        assert any(t.name.startswith("fastloss-cachedph") for t in threading.enumerate())
        del loss
        gc.collect()
        assert not any(t.name.startswith("fastloss-cachedph") for t in threading.enumerate())

    def test_bounded(self):
        loss = CachedPH(fastloss.TopologicalLoss(), max_entries=3)
        for t in dataset(6):
            loss(soft_prediction(t), t)
        info = loss.cache_info()
        assert info["entries"] == 3 and info["target_entries"] == 3 and info["evictions"] == 6

    def test_batch_larger_than_the_cache(self):
        """A hit and enough new masks in one batch to evict it: still exact, still bounded."""
        targets = torch.cat(dataset(4))
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=1, max_entries=2)
        loss(soft_prediction(targets[:1]), targets[:1])
        pred = soft_prediction(targets, seed=1, noise=0.6)
        assert torch.equal(loss(pred, targets), fastloss.TopologicalLoss()(pred, targets))
        assert loss.cache_info()["target_entries"] == 2 and loss.cache_info()["entries"] == 2

    def test_clear_drops_pending_refreshes(self):
        """A pairing computed before clear() is never served after it."""
        targets = torch.cat(dataset(2))
        loss = CachedPH(fastloss.TopologicalLoss(reduction="none"), refresh_every=2, refresh="async")
        stale = soft_prediction(targets, seed=0, noise=0.6)
        loss(stale, targets)
        loss(stale, targets)  # second visit: served from cache, and an async refresh of `stale` starts
        assert loss._pending
        loss.clear()
        assert not loss._pending and loss.cache_info()["entries"] == 0
        fresh = soft_prediction(targets, seed=5, noise=0.6)
        value = loss(fresh, targets)
        assert torch.equal(value, fastloss.TopologicalLoss(reduction="none")(fresh, targets))
        assert loss.cache_info()["misses"] == 2 and loss.cache_info()["refreshes"] == 0
        loss.close()

    def test_constructor_configuration_wins_over_the_checkpoint(self):
        targets = torch.cat(dataset(2))
        approximate = CachedPH(fastloss.TopologicalLoss(), refresh_every=5, max_entries=8)
        approximate(soft_prediction(targets), targets)
        exact = CachedPH(fastloss.TopologicalLoss(), refresh_every=1, max_entries=1)
        with pytest.warns(UserWarning, match=r"saved with refresh_every=5, max_entries=8; keeping this CachedPH's "
                                             r"refresh_every=1, max_entries=1"):
            exact.load_state_dict(approximate.state_dict())
        assert exact.refresh_every == 1 and exact.max_entries == 1 and exact.cache_info()["entries"] == 1
        for seed in range(3):  # still exact: the checkpoint's refresh_every=5 never applies
            pred = soft_prediction(targets, seed=seed, noise=0.6)
            assert torch.equal(exact(pred, targets), fastloss.TopologicalLoss()(pred, targets))

    @pytest.mark.parametrize("make, error, message", [
        (lambda: CachedPH(fastloss.PerceptualLoss("vgg16", weights=None)), TypeError,
         "`loss` must be a fastloss.TopologicalLoss or fastloss.BettiMatchingLoss (CachedPH caches persistent homology), got PerceptualLoss"),
        (lambda: CachedPH(fastloss.TopologicalLoss(betti=(1, 1))), ValueError, "CachedPH needs target masks"),
        (lambda: CachedPH(fastloss.TopologicalLoss(), refresh_every=0), ValueError, "`refresh_every` must be >= 1"),
        (lambda: CachedPH(fastloss.TopologicalLoss(), refresh="later"), ValueError, "`refresh` must be one of ['sync', 'async']"),
    ])
    def test_bad_arguments(self, make, error, message):
        with pytest.raises(error) as info:
            make()
        assert message in str(info.value)


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


class TestPresets:
    def test_list(self):
        assert {"exact", "balanced", "fastest"} <= set(fastloss.list_presets("topology"))
        assert {"exact", "balanced", "fastest"} <= set(fastloss.list_presets("perceptual"))

    def test_betti_matching_presets(self):
        base = fastloss.BettiMatchingLoss()
        target = ring()
        pred = soft_prediction(target, noise=0.6)
        for name in ("exact", "balanced", "fastest"):
            stack = fastloss.preset(name, base)
            for _ in range(2):  # the second call hits the target cache
                assert torch.equal(stack(pred, target), base(pred, target))
        assert isinstance(stack.loss, CachedPH) and stack.loss.cache_info()["target_hits"] == 1

    def test_topology_presets(self):
        base = fastloss.TopologicalLoss(workers=1)
        target = ring()
        pred = soft_prediction(target, noise=0.6)
        for name in ("exact", "balanced", "fastest"):
            stack = fastloss.preset(name, base)
            assert torch.equal(stack(pred, target), base(pred, target))  # all exact
            # rank matching on the native engine: the target side is cheaper than caching it
            assert isinstance(stack.loss, fastloss.TopologicalLoss) and stack.loss is not base
            assert stack.loss.config.workers == 1  # the user's explicit workers=1 is kept
        cripser = fastloss.preset("balanced", fastloss.TopologicalLoss(backend="cripser"))
        assert torch.equal(cripser(pred, target), base(pred, target))
        assert isinstance(cripser.loss, CachedPH) and cripser.loss.refresh_every == 1  # costly target side: cached
        assert base.config.workers == 1  # the original is untouched

    def test_perceptual_presets(self, simulate):
        simulate("bf16-cpu")
        base = fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None)
        balanced = fastloss.preset("balanced", base)
        x, y = batch(shape=(1, 3, 32, 32))
        assert torch.allclose(balanced(x, y), base(x, y), rtol=5e-2)
        assert balanced.innermost().channels_last and balanced.innermost().compute_dtype == torch.bfloat16
        assert isinstance(balanced.loss, fastloss.CachedTarget)  # exact: the target's features are cached
        assert not base.channels_last and base.compute_dtype == torch.float32  # the original is untouched
        lpips = fastloss.preset("fastest", fastloss.LPIPSLoss(weights=None))
        lpips(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
        assert isinstance(lpips.loss, IntervalLoss)
        assert lpips.innermost().channels_last  # one channels_last switch reaches LPIPS too

    def test_presets_never_override_explicit_settings(self, simulate):
        simulate("bf16-cpu")
        base = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None, channels_last=False,
                                       compute_dtype=torch.float32)
        balanced = fastloss.preset("balanced", base)
        balanced(*batch(shape=(1, 3, 16, 16)))
        assert not balanced.innermost().channels_last and balanced.innermost().compute_dtype == torch.float32

    def test_wrapped_loss_is_rejected(self):
        """preset() builds its own stack: a wrapped loss (or a preset) is a TypeError, never a silent nesting."""
        with pytest.raises(TypeError, match=r"`loss` is already wrapped \(IntervalLoss around TopologicalLoss\)"):
            fastloss.preset("balanced", IntervalLoss(fastloss.TopologicalLoss()))
        vgg = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
        with pytest.raises(TypeError, match=r"already wrapped \(PresetLoss around PerceptualLoss\)"):
            fastloss.preset("fastest", fastloss.preset("fastest", vgg))

    def test_unknown_name_and_loss(self):
        with pytest.raises(ValueError, match=r"unknown preset 'turbo' for topology losses; known: \['balanced', 'exact', 'fastest'"):
            fastloss.preset("turbo", fastloss.TopologicalLoss())
        with pytest.raises(TypeError, match="`loss` of type MSELoss has no `preset_kind`"):
            fastloss.preset("exact", nn.MSELoss())

    def test_register(self, registry):
        class MyLoss(nn.MSELoss):
            preset_kind = "mine"

        fastloss.register_preset("lazy", "mine", lambda loss: IntervalLoss(loss, every=8))
        lazy = fastloss.preset("lazy", MyLoss())
        x, y = batch()
        assert torch.allclose(lazy(x, y), 8 * F.mse_loss(x, y))
        assert isinstance(lazy.loss, IntervalLoss) and lazy.loss.every == 8
        assert fastloss.list_presets("mine") == ["auto", "lazy"]  # "auto" (measured) applies to every kind
        assert fastloss.list_presets("mine", include_measured=False) == ["lazy"]
        with pytest.raises(ValueError, match="already registered"):
            fastloss.register_preset("lazy", "mine", lambda loss: loss)
        with pytest.raises(ValueError, match=r"^`name` 'auto' is reserved: it is resolved by fastloss.autotune$"):
            fastloss.register_preset("auto", "mine", lambda loss: loss)

    def test_register_can_run_twice(self, registry):
        """Each test restores the registry, so registering the same name in two tests never collides."""
        fastloss.register_preset("lazy", "mine", lambda loss: loss)
        assert ("lazy", "mine") in registry


class TestPresetRegistryAndDescriptions:
    @pytest.mark.parametrize("args, error, message", [
        (("", "mine"), ValueError, "`name` and `kind` must be non-empty strings, got '' and 'mine'"),
        (("lazy", ""), ValueError, "`name` and `kind` must be non-empty strings, got 'lazy' and ''"),
        ((1, "mine"), ValueError, "got 1 and 'mine'"),
        (("lazy", 2), ValueError, "got 'lazy' and 2"),
    ])
    def test_names(self, registry, args, error, message):
        with pytest.raises(error) as info:
            fastloss.register_preset(*args, lambda loss: loss)
        assert message in str(info.value)

    def test_builder_and_description(self, registry):
        with pytest.raises(TypeError, match=r"`builder` must be callable \(loss -> wrapped loss\), got int"):
            fastloss.register_preset("lazy", "mine", 3)
        fastloss.register_preset("lazy", "mine", lambda loss: loss, "does nothing")
        entry = fastloss.presets.entry("lazy", "mine")
        assert (entry.name, entry.kind, entry.description) == ("lazy", "mine", "does nothing")
        assert fastloss.presets.describe("lazy", "mine") == "does nothing"
        fastloss.register_preset("lazy", "mine", lambda loss: IntervalLoss(loss, every=2), overwrite=True)
        assert fastloss.presets.describe("lazy", "mine") == ""

    def test_perceptual_fastest_is_interval_4_over_downsampled_2(self, simulate):
        simulate("bf16-cpu")
        fastest = fastloss.preset("fastest", fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None))
        fastest(*batch(shape=(1, 3, 32, 32)))
        interval, down = fastest.loss, fastest.loss.loss
        assert isinstance(interval, IntervalLoss) and interval.every == 4 and interval.compensate
        assert isinstance(down, DownsampledLoss) and down.factor == 2 and down.mode == "area"

    def test_stack_descriptions(self, simulate):
        from fastloss.wrappers.base import describe_stack as stack_description

        simulate("bf16-cpu")
        topo = fastloss.preset("balanced", fastloss.TopologicalLoss(workers=1, backend="cripser"))
        topo(soft_prediction(ring()), ring())
        assert stack_description(topo) == (
            "preset 'balanced' o CachedPH(refresh_every=1) o TopologicalLoss(workers=1, backend=cripser)")
        assert "resolved_for='cpu'" in repr(topo) and "resolved_for='unresolved'" in repr(
            fastloss.preset("exact", fastloss.TopologicalLoss()))
        vgg = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
        stack = IntervalLoss(DownsampledLoss(fastloss.CachedTarget(vgg, max_bytes=2**21, device="cpu"), size=(8, 8)), 3)
        assert stack_description(stack) == (
            "IntervalLoss(3) o DownsampledLoss((8, 8), area) o CachedTarget(2 MiB, host) o PerceptualLoss(vgg16, float32)")
        fast = fastloss.preset("balanced", vgg)
        fast(*batch(shape=(1, 3, 16, 16)))
        assert stack_description(fast.loss) == "CachedTarget(1024 MiB) o PerceptualLoss(vgg16, bfloat16, channels_last)"
        assert stack_description(DownsampledLoss(nn.MSELoss(), factor=3)) == "DownsampledLoss(3, area) o MSELoss"

    def test_a_users_topology_loss_gets_exact_presets(self):
        class MyTopo(nn.MSELoss):
            preset_kind = "topology"  # no config, not a fastloss topology loss: nothing to cache

        for name in ("balanced", "fastest"):
            p = fastloss.preset(name, MyTopo())
            x, y = batch()
            assert torch.equal(p(x, y), F.mse_loss(x, y)) and type(p.loss) is MyTopo

    def test_a_users_loss_with_a_config_of_its_own(self):
        class Configured(nn.MSELoss):
            config = {"anything": 1}  # not a topology config: no `workers`

        from fastloss.wrappers.base import describe_stack as stack_description

        assert stack_description(IntervalLoss(Configured(), every=2)) == "IntervalLoss(2) o Configured"

    def test_downsampled_repr(self):
        assert DownsampledLoss(fastloss.TopologicalLoss()).extra_repr() == "factor=2, mode='max', antialias=True"
        down = DownsampledLoss(nn.MSELoss(), size=(8, 8), antialias=False)
        assert repr(down).splitlines()[1].strip() == "size=(8, 8), mode='area', antialias=False"


class TestCachedPHState:
    def targets(self):
        return torch.cat(dataset(2))

    def pending_loss(self):
        """An async CachedPH with a refresh pending (started at the second visit)."""
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh="async")
        for seed in range(2):
            loss(soft_prediction(self.targets(), seed=seed, noise=0.6), self.targets())
        assert loss._pending
        return loss

    def test_a_pending_refresh_survives_a_checkpoint(self, tmp_path):
        original, resumed = self.pending_loss(), CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh="async")
        torch.save(original.state_dict(), tmp_path / "s.pt")
        resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
        assert set(resumed._pending) == set(original._pending)
        pred = soft_prediction(self.targets(), seed=9, noise=0.6)
        assert torch.equal(resumed(pred, self.targets()), original(pred, self.targets()))
        assert resumed.cache_info()["refreshes"] == original.cache_info()["refreshes"] > 0
        original.close()
        resumed.close()

    def test_a_copy_keeps_pending_results(self):
        original = self.pending_loss()
        clone = copy.deepcopy(original)
        assert set(clone._pending) == set(original._pending) and clone._executor is None
        pred = soft_prediction(self.targets(), seed=9, noise=0.6)
        assert torch.equal(clone(pred, self.targets()), original(pred, self.targets()))
        original.close()

    def test_a_smaller_bound_trims_the_loaded_cache(self):
        big = CachedPH(fastloss.TopologicalLoss(), refresh_every=3, max_entries=8)
        for t in dataset(3):
            big(soft_prediction(t), t)
        small = CachedPH(fastloss.TopologicalLoss(), refresh_every=3, max_entries=2)
        with pytest.warns(UserWarning, match="max_entries=8; keeping this CachedPH's max_entries=2"):
            small.load_state_dict(big.state_dict())
        info = small.cache_info()
        assert info["entries"] == 2 and info["target_entries"] == 2 and info["evictions"] == 2
        newest = dataset(3)[2]  # LRU: the oldest entry went, the newest stayed
        small(soft_prediction(newest), newest)
        assert small.cache_info()["hits"] == 1

    def test_wait_finishes_pending_refreshes(self, monkeypatch):
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh="async")
        finished = []
        real = loss.loss.select

        def slow_select(*args):
            time.sleep(0.3)
            result = real(*args)
            finished.append(1)
            return result

        for seed in range(2):
            loss(soft_prediction(self.targets(), seed=seed, noise=0.6), self.targets())
        monkeypatch.setattr(loss.loss, "select", slow_select)
        loss(soft_prediction(self.targets(), seed=2, noise=0.6), self.targets())  # a third visit: refresh starts
        loss(soft_prediction(self.targets(), seed=3, noise=0.6), self.targets())
        assert loss._pending
        loss.wait()
        assert len(finished) == len(loss._pending) > 0  # every pending refresh has finished
        loss.close()

    def test_close_stops_the_background_thread(self):
        def workers():
            return [t for t in threading.enumerate() if t.name.startswith("fastloss-cachedph") and t.is_alive()]

        before = len(workers())
        loss = self.pending_loss()
        assert len(workers()) == before + 1
        loss.close()
        deadline = time.monotonic() + 5
        while len(workers()) > before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(workers()) == before

    def test_target_bytes_are_accounted_and_reset_by_a_checkpoint(self):
        from fastloss.ph.matching import target_side

        g = torch.Generator().manual_seed(0)
        masks = [(torch.rand(1, 1, 16, 16, generator=g) < 0.4).float() for _ in range(3)]
        loss = CachedPH(fastloss.BettiMatchingLoss(), refresh_every=1, max_entries=2)
        for t in masks:
            loss(torch.rand(1, 1, 16, 16, generator=g).requires_grad_(), t)
        kept = masks[1:]  # LRU bound 2: the first target's side went
        expected = sum(target_side((1 - t[0, 0]).numpy()).nbytes for t in kept)
        info = loss.cache_info()
        assert info["target_entries"] == 2 and info["target_bytes"] == expected > 0
        resumed = CachedPH(fastloss.BettiMatchingLoss(), refresh_every=1, max_entries=2)
        resumed.load_state_dict(loss.state_dict())  # target sides are not saved: rebuilt on demand
        assert resumed.cache_info()["target_bytes"] == 0
        assert CachedPH(fastloss.TopologicalLoss()).cache_info()["target_bytes"] == 0

    def test_refresh_mode_mismatch_is_named(self):
        sync = CachedPH(fastloss.TopologicalLoss(), refresh="sync")
        with pytest.warns(UserWarning, match=r"^CachedPH: the checkpoint was saved with refresh='async'; "
                                             r"keeping this CachedPH's refresh='sync'"):
            sync.load_state_dict(CachedPH(fastloss.TopologicalLoss(), refresh="async").state_dict())


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


class TestCachedPHDefaultsAndBounds:
    def test_documented_defaults_and_messages(self):
        loss = CachedPH(fastloss.TopologicalLoss())
        assert (loss.refresh_every, loss.max_entries, loss.refresh) == (5, 4096, "sync")
        with pytest.raises(ValueError, match=r"^CachedPH needs target masks to recognise samples; a `betti` prior "
                                             r"has none$"):
            CachedPH(fastloss.TopologicalLoss(betti=(1, 0)))
        with pytest.raises(ValueError, match=r"^`max_entries` must be >= 1, got 0$"):
            CachedPH(fastloss.TopologicalLoss(), max_entries=0)

    def sides(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        return [(torch.rand(1, 1, 16, 16, generator=g) < 0.4).float() for _ in range(n)]

    @staticmethod
    def nbytes(t):
        from fastloss.ph.matching import target_side

        return target_side((1 - t[0, 0]).numpy()).nbytes

    @pytest.mark.parametrize("room, kept", [(2.0, 2), (2.5, 2), (1.5, 1), (0.5, 1)])
    def test_target_byte_bound(self, monkeypatch, room, kept):
        masks = self.sides(3)
        loss = CachedPH(fastloss.BettiMatchingLoss(workers=1), refresh_every=1)
        bound = int(room * max(self.nbytes(t) for t in masks))
        monkeypatch.setattr(loss, "max_target_bytes", bound)
        for t in masks:
            loss(torch.rand(1, 1, 16, 16).requires_grad_(), t)
        info = loss.cache_info()
        # the newest side always stays (a bound below one side still caches the side in use)
        assert info["target_entries"] == kept
        assert info["target_bytes"] == sum(self.nbytes(t) for t in masks[-kept:])
        assert kept == 1 or info["target_bytes"] <= bound
        loss(torch.rand(1, 1, 16, 16).requires_grad_(), masks[-1])
        assert loss.cache_info()["target_hits"] == 1  # LRU: the newest is the one kept

    def test_rank_matching_sides_hold_no_bytes(self):
        loss = CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=1)
        for t in self.sides(3):
            loss(torch.rand(1, 1, 16, 16).requires_grad_(), t)
        assert loss.cache_info()["target_entries"] == 3 and loss.cache_info()["target_bytes"] == 0

    def test_evicting_a_pairing_drops_its_pending_refresh(self):
        masks = self.sides(2, seed=3)
        loss = CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=2, max_entries=1, refresh="async")
        for _ in range(2):  # the second visit starts a refresh of the first mask
            loss(torch.rand(1, 1, 16, 16).requires_grad_(), masks[0])
        assert len(loss._pending) == 1
        loss(torch.rand(1, 1, 16, 16).requires_grad_(), masks[1])  # evicts the first mask's pairing
        assert not loss._pending and loss.cache_info()["evictions"] >= 1
        loss.close()


class TestTargetCacheBytes:
    def test_bound_per_device(self, monkeypatch):
        from fastloss.hardware import Capabilities
        from fastloss.presets import target_cache_bytes
        from fastloss.presets.policies import _perceptual_balanced

        cpu = Capabilities("cpu", "test CPU", ())
        assert target_cache_bytes(cpu) == 1 << 30
        gpu = Capabilities("cuda:0", "fake GPU", (torch.bfloat16,), compute_capability=(9, 0))
        asked = []

        class Props:
            def __init__(self, total):
                self.total_memory = total

        for total, expected in [(8 << 30, (8 << 30) // 20), (80 << 30, 1 << 30)]:
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
            monkeypatch.setattr(torch.cuda, "get_device_properties",
                                lambda d, total=total: asked.append(d) or Props(total))
            assert target_cache_bytes(gpu) == expected
            vgg = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
            assert _perceptual_balanced(vgg, gpu).max_bytes == expected
        assert asked[0] == torch.device("cuda:0")


class TestCachedPHEdges:
    """What a careless change to CachedPH would break silently (found by mutation testing)."""

    def test_same_bytes_different_shape_is_no_hit(self):
        wide = torch.zeros(1, 1, 4, 8)
        wide[..., :2] = wide[..., 6:] = 1  # two bars: 2 components
        tall = wide.reshape(1, 1, 8, 4)  # the same bytes, another image: 8 diagonal pieces
        assert topo.betti_numbers(wide[0, 0].numpy()) != topo.betti_numbers(tall[0, 0].numpy())
        cached, exact = CachedPH(fastloss.TopologicalLoss(reduction="none"), refresh_every=1), \
            fastloss.TopologicalLoss(reduction="none")
        for t in (wide, tall):
            pred = soft_prediction(t, seed=1, noise=0.4)
            assert torch.equal(cached(pred, t), exact(pred, t))
        assert cached.cache_info()["target_misses"] == 2

    def test_a_failure_names_the_map_in_the_batch(self, monkeypatch):
        targets = torch.cat(dataset(2))
        loss = CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=5)
        loss(soft_prediction(targets[:1]), targets[:1])  # map 0 cached: the next call computes map 1 only
        monkeypatch.setattr(loss.loss, "select", lambda *a: (_ for _ in ()).throw(ValueError("boom")))
        with pytest.raises(RuntimeError, match=r"^persistent homology failed on map 1: ValueError: boom$"):
            loss(soft_prediction(targets), targets)
        monkeypatch.setattr(loss.loss, "target_side", lambda *a: (_ for _ in ()).throw(ValueError("bad mask")))
        fresh = torch.cat([targets[:1], ring(24, outer=9, width=2)])
        with pytest.raises(RuntimeError, match=r"^target persistent homology failed on map 1: ValueError: bad mask$"):
            loss(soft_prediction(fresh), fresh)

    def test_workers_one_runs_on_the_calling_thread(self, monkeypatch):
        loss = CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=1)
        threads = []
        for name in ("select", "target_side"):
            real = getattr(loss.loss, name)
            monkeypatch.setattr(loss.loss, name, lambda *a, real=real: threads.append(threading.current_thread())
                                or real(*a))
        targets = torch.cat(dataset(3))
        loss(soft_prediction(targets), targets)
        assert len(threads) == 6 and set(threads) == {threading.current_thread()}

    def test_clear_cancels_queued_refreshes(self, monkeypatch):
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh="async")
        targets = torch.cat(dataset(3))
        calls = []
        real = loss.loss.select

        def slow(*args):
            calls.append(1)
            time.sleep(0.2)
            return real(*args)

        loss(soft_prediction(targets, seed=0, noise=0.6), targets)
        monkeypatch.setattr(loss.loss, "select", slow)
        loss(soft_prediction(targets, seed=1, noise=0.6), targets)  # 3 refreshes queued on one thread
        assert len(loss._pending) == 3
        loss.clear()
        loss.close()  # waits for the one already running
        assert len(calls) <= 1 and loss.cache_info()["entries"] == 0


class TestIntervalEdges:
    def test_default_period_and_active_at_a_given_step(self):
        loss = IntervalLoss(nn.MSELoss(), offset=1)
        assert loss.every == 4  # documented default
        assert [loss.active(s) for s in range(6)] == [False, True, False, False, False, True]
        assert not loss.active()  # the current step, 0

    def test_offset_must_be_an_int_not_a_bool(self):
        with pytest.raises(ValueError, match=r"^`offset` must be an int in \[0, 3\], got True$"):
            IntervalLoss(nn.MSELoss(), every=4, offset=True)


class TestBuilderSignatures:
    def test_which_builders_take_the_capabilities(self):
        from fastloss.presets.registry import _takes_capabilities

        assert _takes_capabilities(lambda loss, c: loss)
        assert _takes_capabilities(lambda loss, caps=None: loss)
        assert _takes_capabilities(lambda loss, *, capabilities: loss)
        assert not _takes_capabilities(lambda loss, n=4: loss)
        assert not _takes_capabilities(lambda loss: loss)
        assert not _takes_capabilities(map)  # a builtin without a signature


class TestSkippedStepShapes:
    """How a skipped step's shape is found: shortcuts for torch's losses, fake tensors for the rest."""

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


class TestAMPEdges:
    def test_a_device_without_autocast(self):
        with pytest.raises(ValueError, match="`input` is on device type 'meta', where torch.autocast is not available"):
            AMPLoss(nn.MSELoss())(torch.empty(2, device="meta"), torch.empty(2, device="meta"))

    def test_a_copy_warns_again_once(self, simulate):
        simulate("avx2-cpu")
        loss = AMPLoss(CountingLoss())
        x, y = batch()
        with pytest.warns(UserWarning, match="runs in float32"):
            loss(x, y)
        clone = copy.deepcopy(loss)
        with pytest.warns(UserWarning, match="runs in float32"):
            clone(x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            clone(x, y)
