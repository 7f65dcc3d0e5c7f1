"""TiledLoss: one tile per training step, stratified; over a cycle the full image's loss and gradient."""

import copy

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from steps import run_cycle
from torch import nn

import fastloss
from fastloss import (
    CachedTarget,
    DownsampledLoss,
    IntervalLoss,
    PerceptualLoss,
    ScheduledWeight,
    TiledLoss,
    schedules,
)

# no shrinking: each example runs a backbone a few times, and a failure's example is printed as drawn
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    phases=[Phase.explicit, Phase.reuse, Phase.generate])


def relu1():  # VGG16 to relu1_2: receptive field 5, stride 1 (cheap)
    torch.manual_seed(0)
    return PerceptualLoss("vgg16", layers=["relu1_2"], weights=None).double()


def relu2():  # VGG16 to relu2_2: receptive field 14, stride 2 (alignment matters)
    torch.manual_seed(0)
    return PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None).double()


def images(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g, dtype=torch.float64), torch.rand(b, 3, h, w, generator=g, dtype=torch.float64)


def full(loss, x, y):
    leaf = x.detach().clone().requires_grad_()
    value = loss(leaf, y)
    value.sum().backward()
    return value.detach(), leaf.grad


class TestCycleIsTheFullImage:
    """With a margin covering the receptive field, a cycle's mean value and summed gradient / n are the
    full image's (the unwrapped loss is the independent reference)."""

    @SETTINGS
    @given(h=st.integers(8, 29), w=st.integers(8, 29), ky=st.integers(1, 3), kx=st.integers(1, 3),
           batch=st.integers(1, 3), per_sample=st.booleans(), reduction=st.sampled_from(["mean", "sum", "none"]))
    def test_relu1(self, h, w, ky, kx, batch, per_sample, reduction):
        if (ky, kx) == (1, 1):
            kx = 2
        base = relu1()
        base.reduction = reduction
        loss = TiledLoss(base, (ky, kx), margin=2, per_sample=per_sample)
        x, y = images(batch, h, w)
        n = ky * kx
        values, grad = run_cycle(loss, x, y, n)
        ref_value, ref_grad = full(base, x, y)
        assert values.shape[1:] == ref_value.shape
        torch.testing.assert_close(values.mean(0), ref_value, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad / n, ref_grad, rtol=1e-9, atol=1e-12)

    @SETTINGS
    @given(h=st.integers(8, 20), w=st.integers(8, 20), k=st.integers(2, 3), per_sample=st.booleans())
    def test_relu2_with_stride_alignment(self, h, w, k, per_sample):
        """Sides that are multiples of the deepest stride (2): every pixel reaches every tap."""
        h, w = 2 * h, 2 * w
        base = relu2()
        loss = TiledLoss(base, k, margin=8, per_sample=per_sample)
        x, y = images(2, h, w, seed=h * w)
        values, grad = run_cycle(loss, x, y, k * k)
        ref_value, ref_grad = full(base, x, y)
        torch.testing.assert_close(values.mean(0), ref_value, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(grad / (k * k), ref_grad, rtol=1e-8, atol=1e-12)

    def test_a_short_margin_leaves_a_bias_that_shrinks_with_it(self):
        base = relu2()
        x, y = images(2, 36, 36)
        ref = base(x, y).item()
        bias = {}
        for margin in (0, 2, 8):
            values, _ = run_cycle(TiledLoss(base, 3, margin=margin), x, y, 9)
            bias[margin] = abs(values.mean().item() - ref) / ref
        assert bias[0] > 1e-3 and bias[8] < 1e-9 and bias[0] > bias[2] > bias[8]

    @SETTINGS
    @given(h=st.integers(2, 13), w=st.integers(2, 13), ky=st.integers(1, 4), kx=st.integers(2, 4))
    def test_any_spatial_mean_loss_without_margin(self, h, w, ky, kx):
        """A plain loss (L1, mean) over uneven tiles: the area weighting makes the cycle exact."""
        ky, kx = min(ky, h), min(kx, w)
        if (ky, kx) == (1, 1):
            return
        loss = TiledLoss(nn.L1Loss(), (ky, kx), margin="auto")
        x, y = images(2, h, w)
        values, grad = run_cycle(loss, x, y, ky * kx)
        torch.testing.assert_close(values.mean(), nn.functional.l1_loss(x, y), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad / (ky * kx), full(nn.L1Loss(), x, y)[1], rtol=1e-12, atol=1e-14)


class TestOrder:
    def tiles_visited(self, loss, x, y, steps):
        seen = []
        for _ in range(steps):
            seen.append([tile for tile, _, _ in loss.plan(*x.shape[-2:], x.shape[0])])
            loss(x, y).backward()
        return seen

    def test_every_tile_once_per_cycle_in_a_shuffled_order(self):
        loss = TiledLoss(nn.MSELoss(), (2, 3))
        x, y = torch.rand(1, 1, 12, 12, requires_grad=True), torch.rand(1, 1, 12, 12)
        seen = [s[0] for s in self.tiles_visited(loss, x, y, 18)]
        cycles = [seen[i:i + 6] for i in range(0, 18, 6)]
        assert all(sorted(c) == sorted(loss.tiles_of(12, 12)) for c in cycles)
        assert len({tuple(c) for c in cycles}) > 1  # shuffled per cycle

    def test_per_sample_windows_cover_every_tile_per_sample(self):
        loss = TiledLoss(relu1(), 2, margin=1, per_sample=True)
        x, y = images(3, 10, 10)
        seen = self.tiles_visited(loss, x.requires_grad_(), y, 4)
        for b in range(3):
            assert sorted(step[b] for step in seen) == sorted(loss.tiles_of(10, 10))
        assert len({step[0] for step in seen[:1]} | {step[1] for step in seen[:1]}) == 2  # samples differ per step
        windows = [w for _, w, _ in loss.plan(10, 10, 3)]
        assert len({(w[2] - w[0], w[3] - w[1]) for w in windows}) == 1  # one size: one batch through the backbone

    def test_seed_changes_the_order_and_is_saved(self):
        a, b = TiledLoss(nn.MSELoss(), 3, seed=1), TiledLoss(nn.MSELoss(), 3, seed=2)
        order = [[w.plan(9, 9, 1, step=s)[0][0] for s in range(9)] for w in (a, b)]
        assert order[0] != order[1]
        c = TiledLoss(nn.MSELoss(), 3)
        c.load_state_dict(a.state_dict())
        assert c.seed == 1 and [c.plan(9, 9, 1, step=s)[0][0] for s in range(9)] == order[0]

    def test_resumed_run_is_bitwise_the_uninterrupted_one(self):
        g = torch.Generator().manual_seed(0)
        data = [images(2, 20, 20, seed=s) for s in range(11)]

        def train(model, loss, batches):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            out = []
            for x, y in batches:
                opt.zero_grad()
                value = loss(model(x), y)
                value.backward()
                opt.step()
                out.append(value.detach())
            return out

        model = nn.Conv2d(3, 3, 3, padding=1).double()
        nn.init.normal_(model.weight, std=0.1, generator=g)
        ref_model = copy.deepcopy(model)
        uninterrupted = train(ref_model, TiledLoss(CachedTarget(relu1()), 3, seed=5), data)
        first = TiledLoss(CachedTarget(relu1()), 3, seed=5)
        head = train(model, first, data[:4])
        saved = copy.deepcopy(first.state_dict())
        resumed = TiledLoss(CachedTarget(relu1()), 3)  # another seed until the checkpoint loads
        resumed.load_state_dict(saved)
        tail = train(model, resumed, data[4:])
        assert all(torch.equal(a, b) for a, b in zip(uninterrupted, head + tail, strict=True))


class TestModes:
    def test_eval_and_no_grad_compute_the_full_image_and_do_not_advance(self):
        base = relu1()
        loss = TiledLoss(base, 3)
        x, y = images(2, 12, 12)
        with torch.no_grad():
            assert torch.equal(loss(x, y), base(x, y))
        loss.eval()
        assert torch.equal(loss(x, y), base(x, y))
        assert int(loss.step) == 0

    def test_output_shape_and_skipped_steps_never_call_the_loss(self):
        calls = []

        class Spy(nn.L1Loss):
            def forward(self, input, target):
                calls.append(input.shape)
                return super().forward(input, target)

        loss = IntervalLoss(TiledLoss(Spy(), 2), every=3)
        x, y = torch.rand(2, 1, 8, 8, requires_grad=True), torch.rand(2, 1, 8, 8)
        for _ in range(24):
            loss(x, y).backward()
        assert len(calls) == 8 and all(s == (2, 1, 4, 4) for s in calls)  # computed steps only, on tiles
        per_sample = relu1()
        per_sample.reduction = "none"
        assert TiledLoss(per_sample, 2).output_shape(*images(3, 8, 8)) == (3,)

    def test_inside_an_interval_the_tiles_advance_on_computed_steps(self):
        inner = TiledLoss(nn.MSELoss(), 2)
        loss = IntervalLoss(inner, every=2)
        x, y = torch.rand(1, 1, 8, 8, requires_grad=True), torch.rand(1, 1, 8, 8)
        tiles = []
        for _ in range(8):
            if loss.active():
                tiles.append(inner.plan(8, 8, 1)[0][0])
            loss(x, y).backward()
        assert sorted(tiles) == sorted(inner.tiles_of(8, 8))  # 4 computed steps: each tile once
        assert loss.stack_gain() in (0.0, 2.0) and inner.mean_gain() == 1.0

    def test_cached_target_inside_hits_per_tile(self):
        cached = CachedTarget(relu1())
        loss = TiledLoss(cached, 2, margin=2)
        x, y = images(2, 12, 12)
        first, _ = run_cycle(loss, x, y, 4)
        assert cached.cache_info()["hits"] == 0
        second, _ = run_cycle(loss, x, y, 4)
        assert cached.cache_info()["hits"] == 8 and cached.cache_info()["misses"] == 8
        assert torch.allclose(first.sum(), second.sum(), rtol=1e-12)

    @pytest.mark.parametrize("outer", ["downsampled", "scheduled", "preset"])
    def test_composes(self, outer):
        x, y = images(2, 16, 16)
        if outer == "downsampled":  # the tiles are taken on the downsampled images
            loss, ref = DownsampledLoss(TiledLoss(relu1(), 2, margin=2)), DownsampledLoss(relu1())
        elif outer == "scheduled":
            loss = ScheduledWeight(TiledLoss(relu1(), 2, margin=2), schedules.constant(0.5))
            ref = ScheduledWeight(relu1(), schedules.constant(0.5))
        else:
            fastloss.register_preset("tiled-test", "perceptual", lambda loss: TiledLoss(CachedTarget(loss), 2, margin=2),
                                     overwrite=True)
            try:
                loss, ref = fastloss.preset("tiled-test", relu1()), relu1()
                values, _ = run_cycle(loss, x, y, 4)
            finally:
                fastloss.unregister_preset("tiled-test", "perceptual")
            torch.testing.assert_close(values.mean(), ref(x, y), rtol=1e-10, atol=0)
            return
        values, _ = run_cycle(loss, x, y, 4)
        with torch.no_grad():
            torch.testing.assert_close(values.mean(), ref(x, y), rtol=1e-10, atol=0)
        assert int(loss.step) == 4

    def test_fit_grid_uses_fewer_tiles_instead_of_failing(self):
        torch.manual_seed(0)
        deep = PerceptualLoss("vgg16", weights=None)  # minimum input 8 (three poolings)
        x, y = torch.rand(1, 3, 32, 20, requires_grad=True), torch.rand(1, 3, 32, 20)
        loss = TiledLoss(deep, 8, margin=0, fit_grid=True)
        assert loss.grid(32, 20) == (4, 2)
        assert loss(x, y).isfinite()
        whole = TiledLoss(deep, 3, margin=0, fit_grid=True)
        small = torch.rand(1, 3, 12, 12)
        assert whole.grid(12, 12) == (1, 1)
        torch.testing.assert_close(whole(small.requires_grad_(), small * 0.5), deep(small, small * 0.5))

    def test_tile_size_gives_the_grid(self):
        loss = TiledLoss(nn.MSELoss(), tile_size=(4, 5))
        assert loss.grid(9, 10) == (3, 2) and len(loss.tiles_of(9, 10)) == 6

    def test_auto_margin_from_the_receptive_field(self):
        base = relu2()
        assert base.receptive_field() == (14, 2)
        loss = TiledLoss(base, 3)
        assert loss.context(16, 16) == 4  # half the radius 6.5, rounded up to the stride 2
        assert loss.context(4, 4) == 2  # at most half a tile
        assert TiledLoss(nn.MSELoss(), 3).context(16, 16) == 0

    def test_compiles_and_matches_eager(self):
        x, y = images(2, 12, 12)
        eager, compiled = TiledLoss(relu1(), 2, margin=2), torch.compile(TiledLoss(relu1(), 2, margin=2), backend="eager")
        for loss_ in (eager, compiled):
            values, grad = run_cycle(loss_, x, y, 5)
            loss_.result = (values, grad)
        torch.testing.assert_close(eager.result[0], compiled.result[0])
        torch.testing.assert_close(eager.result[1], compiled.result[1])
        assert int(eager.step) == 5


class TestErrors:
    def test_arguments(self):
        with pytest.raises(ValueError, match="either `tiles` or `tile_size`"):
            TiledLoss(nn.MSELoss(), 2, tile_size=4)
        with pytest.raises(ValueError, match=r"`tiles` must be a positive int or two positive ints.*got \(0, 2\)"):
            TiledLoss(nn.MSELoss(), (0, 2))
        with pytest.raises(ValueError, match=r"more than one tile \(got \(1, 1\)"):
            TiledLoss(nn.MSELoss(), 1)
        with pytest.raises(ValueError, match="`margin` must be a non-negative int or 'auto', got -1"):
            TiledLoss(relu1(), 2, margin=-1)
        with pytest.raises(TypeError, match="`margin` needs a feature loss.*MSELoss.*margin=0"):
            TiledLoss(nn.MSELoss(), 2, margin=3)
        with pytest.raises(TypeError, match="`per_sample=True` needs a feature loss.*got MSELoss"):
            TiledLoss(nn.MSELoss(), 2, per_sample=True)
        with pytest.raises(ValueError, match="`seed` must be a non-negative int, got -3"):
            TiledLoss(nn.MSELoss(), 2, seed=-3)

    def test_inputs(self):
        x, y = images(1, 32, 32)
        deep = TiledLoss(PerceptualLoss("vgg16", weights=None), 8, margin=0)
        with pytest.raises(ValueError, match=r"a tile's window of 4x4 pixels is smaller than the backbone's minimum "
                                             r"input 8x8: use fewer `tiles`"):
            deep(x.float().requires_grad_(), y.float())
        with pytest.raises(ValueError, match="too fine for an input of 3x3|more tiles than pixels"):
            TiledLoss(nn.MSELoss(), 4)(torch.rand(1, 1, 3, 3, requires_grad=True), torch.rand(1, 1, 3, 3))
        with pytest.raises(ValueError, match="returns shape .* on a tile.*scalar or one value per sample"):
            TiledLoss(nn.L1Loss(reduction="none"), 2)(torch.rand(1, 1, 4, 4, requires_grad=True), torch.rand(1, 1, 4, 4))
        with pytest.raises(ValueError, match=r"`input` must have 4 dimensions \(B, C, H, W\)"):
            TiledLoss(nn.MSELoss(), 2)(torch.rand(1, 1, 4, 4, 4, requires_grad=True), torch.rand(1, 1, 4, 4, 4))
        with pytest.raises(ValueError, match="`target` must be a tensor of the input's shape"):
            TiledLoss(nn.MSELoss(), 2)(torch.rand(1, 1, 4, 4, requires_grad=True), torch.rand(1, 1, 4, 5))


def test_fit_grid_around_a_loss_without_feature_maps():
    # no backbone: no minimum input, so the grid is the one asked for; a loss may declare its own `min_size`
    loss = TiledLoss(nn.L1Loss(), 3, margin=0, fit_grid=True)
    assert loss.grid(6, 6) == (3, 3)

    class Coarse(nn.L1Loss):
        min_size = 4

    assert TiledLoss(Coarse(), 3, margin=0, fit_grid=True).grid(9, 12) == (2, 3)
    x, y = torch.rand(1, 1, 6, 6), torch.rand(1, 1, 6, 6)
    assert torch.allclose(sum(run_cycle(loss, x, y, 9)[0]) / 9, nn.L1Loss()(x, y))


class TestReusedGradients:
    """``reuse_gradients=True``: each step one tile's fresh term plus every other tile's last term for the same
    target (a stochastic average gradient over tiles); the plain estimator where the target changes."""

    def test_a_cycle_on_a_fixed_input_gives_the_full_loss_and_gradient_every_step_after(self):
        """With a margin covering the receptive field, once every tile has a term the returned value and its
        gradient are the full image's (the unwrapped loss is the reference), on every later step too."""
        base = relu1()
        x, y = images(2, 17, 14)
        ref_value, ref_grad = full(base, x, y)
        loss = TiledLoss(base, (2, 3), margin=2, reuse_gradients=True)
        for step in range(9):
            value, grad = full(loss, x, y)
            if step >= 5:  # a term for all 6 tiles
                torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
                torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)
        assert int(loss.step) == 9 and len(loss._reused.terms) == 6

    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_first_step_and_changing_targets_are_the_plain_estimator(self, reduction):
        base = relu1()
        base.reduction = reduction
        plain, reused = TiledLoss(base, 3, margin=2, seed=3), TiledLoss(copy.deepcopy(base), 3, margin=2, seed=3,
                                                                       reuse_gradients=True)
        for s in range(5):  # a new target every step: nothing is reused
            x, y = images(2, 12, 12, seed=s)
            (a, ga), (b, gb) = full(plain, x, y), full(reused, x, y)
            assert a.shape == b.shape == ((2,) if reduction == "none" else ())
            torch.testing.assert_close(b, a, rtol=1e-12, atol=0)
            torch.testing.assert_close(gb, ga, rtol=1e-12, atol=0)
            assert len(reused._reused.terms) == 1

    def test_the_other_tiles_terms_are_their_last_ones(self):
        """Step k's gradient is the sum of each tile's gradient at the input it last saw (not the current one)."""
        base = relu1()
        _, y = images(1, 12, 12)
        inputs = [images(1, 12, 12, seed=10 + s)[0] for s in range(6)]
        loss = TiledLoss(base, 2, margin=2, reuse_gradients=True)
        plain = TiledLoss(copy.deepcopy(base), 2, margin=2)
        last = {}
        for x in inputs:
            index = loss.plan(12, 12, 1)[0][0]
            _, g_plain = full(plain, x, y)  # the same tile, fresh: n * its term's gradient
            last[index] = g_plain / 4
            value, grad = full(loss, x, y)
            expected = sum(last.values()) * (4 / len(last))
            torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-13)
            assert value.ndim == 0 and value > 0

    def test_resumed_fit_is_bitwise_the_uninterrupted_one(self):
        _, y = images(1, 16, 16)

        def fit(model, loss, steps):
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            out = []
            for _ in range(steps):
                opt.zero_grad()
                value = loss(model(y.new_ones(1, 3, 16, 16)), y)
                value.backward()
                opt.step()
                out.append(value.detach())
            return out

        torch.manual_seed(1)
        model = nn.Conv2d(3, 3, 3, padding=1).double()
        ref_model = copy.deepcopy(model)
        uninterrupted = fit(ref_model, TiledLoss(relu1(), 2, margin=2, seed=4, reuse_gradients=True), 9)
        first = TiledLoss(relu1(), 2, margin=2, seed=4, reuse_gradients=True)
        head = fit(model, first, 3)
        saved = copy.deepcopy(first.state_dict())
        assert len(saved["_extra_state"]["reused"]["terms"]) == 3
        resumed = TiledLoss(relu1(), 2, margin=2, reuse_gradients=True)
        resumed.load_state_dict(saved)
        tail = fit(model, resumed, 6)
        assert all(torch.equal(a, b) for a, b in zip(uninterrupted, head + tail, strict=True))

    def test_memory_is_one_gradient_of_windows_and_one_target(self):
        x, y = images(2, 24, 24)
        loss = TiledLoss(relu1(), 3, margin=2, reuse_gradients=True)
        for _ in range(20):
            full(loss, x, y)
        terms = loss._reused
        assert len(terms.terms) == 9 and torch.equal(terms.target, y)
        held = sum(g.numel() for _, g, _ in terms.terms.values())
        windows = sum((w[2] - w[0]) * (w[3] - w[1]) for w in (loss.window_of(t, 24, 24) for t in loss.tiles_of(24, 24)))
        assert held == x.shape[0] * x.shape[1] * windows < 2 * x.numel()

    def test_eval_is_the_full_image_and_per_sample_is_refused(self):
        base = relu1()
        x, y = images(1, 12, 12)
        loss = TiledLoss(base, 2, margin=2, reuse_gradients=True).eval()
        assert torch.equal(loss(x, y), base(x, y)) and not loss._reused.terms
        with pytest.raises(ValueError, match=r"`reuse_gradients=True` needs one window per batch: use per_sample=False"):
            TiledLoss(base, 2, per_sample=True, reuse_gradients=True)
        with pytest.raises(TypeError, match="`reuse_gradients` must be a bool"):
            TiledLoss(base, 2, reuse_gradients=1)
        assert "reuse_gradients" in TiledLoss(base, 2, reuse_gradients=True).summary()

    def test_compiles_and_matches_eager(self):
        x, y = images(1, 12, 12)
        runs = []
        for loss in (TiledLoss(relu1(), 2, margin=2, reuse_gradients=True),
                     torch.compile(TiledLoss(relu1(), 2, margin=2, reuse_gradients=True), backend="eager")):
            runs.append(run_cycle(loss, x, y, 6))
        torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
        torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)

    def test_a_cached_target_inside_hits_per_tile(self):
        x, y = images(1, 12, 12)
        loss = TiledLoss(CachedTarget(relu1()), 2, margin=2, reuse_gradients=True)
        run_cycle(loss, x, y, 8)
        info = loss.loss.cache_info()
        assert (info["misses"], info["hits"]) == (4, 4)
