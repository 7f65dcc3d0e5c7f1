"""Reliability: bad input (property-based), resume, DDP, bounded memory, threads and concurrency."""

import gc
import os
import subprocess
import sys
import tempfile
import threading
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapes import ring, soft_prediction
from torch import nn

import fastloss
from benchmarks.memory import rss_mib
from fastloss import AMPLoss, CachedPH, DownsampledLoss, IntervalLoss, ScheduledWeight, schedules

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# weighted toward valid inputs, so both outcomes of the contract get exercised
DTYPES = [torch.float32, torch.float32, torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]
SPECIALS = [None, float("nan"), float("inf"), -float("inf")]


@st.composite
def tensors(draw, image: bool):
    """A random (input, target) pair: shapes, dtypes and values, valid or not."""
    ndim = draw(st.sampled_from([4, 4, 4, 3, 5] if not image else [4, 4, 4, 3, 2]))
    shape = [draw(st.sampled_from([1, 1, 2, 0]) if i == 0 else st.integers(1, 2 if i < 2 else 20)) for i in range(ndim)]
    if image and ndim == 4:
        shape[1] = draw(st.sampled_from([1, 3, 3, 2]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    low, high = draw(st.sampled_from([(0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (-3.0, 3.0)]))
    x = torch.rand(shape, generator=g) * (high - low) + low
    special = draw(st.sampled_from(SPECIALS + [None] * 6))
    if special is not None and x.numel():
        x.view(-1)[0] = special
    x = x.to(dtype) if dtype != torch.bool else x > 0.5
    tshape = shape if draw(st.integers(0, 4)) or not shape else [s + 1 for s in shape]
    t = (torch.rand(tshape, generator=g) > 0.7).float()
    if image:
        t = torch.rand(tshape, generator=g)
    if draw(st.integers(0, 4)) == 0:
        t = t * 0.5  # non-binary mask / darker image
    if draw(st.integers(0, 4)) == 0 and dtype.is_floating_point:
        t = t.to(dtype)
    return x, t


def assert_finite_or_typed_error(loss, x, t):
    """The contract: a finite loss with a finite gradient, or a TypeError/ValueError with a message."""
    if x.is_floating_point():
        x = x.detach().requires_grad_()
    try:
        value = loss(x, t)
    except (TypeError, ValueError) as exc:
        assert str(exc), "a typed error must say what is wrong"
        assert "`" in str(exc), f"the message should name the argument: {exc}"
        return
    assert torch.isfinite(value).all(), f"silent non-finite loss {value} for {x.dtype} {tuple(x.shape)}"
    if value.requires_grad:
        value.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


TOPOLOGY_STACKS = {
    "loss": lambda: fastloss.TopologicalLoss(workers=2),
    "down": lambda: DownsampledLoss(fastloss.TopologicalLoss(), factor=2, mode="max"),
    "interval": lambda: IntervalLoss(fastloss.TopologicalLoss(), every=2),
    "scheduled": lambda: ScheduledWeight(fastloss.TopologicalLoss(), schedules.linear_warmup(2)),
    "amp": lambda: AMPLoss(fastloss.TopologicalLoss()),
    "cached": lambda: CachedPH(fastloss.TopologicalLoss(), refresh_every=2),
    "fastest": lambda: fastloss.preset("fastest", fastloss.TopologicalLoss()),
}


@pytest.fixture(scope="module")
def image_losses():
    torch.manual_seed(0)
    vgg = fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None)
    return {
        "vgg16": vgg,
        "resnet18": fastloss.PerceptualLoss("resnet18", layers=["layer1"], weights=None),
        "lpips": fastloss.LPIPSLoss(weights=None),
        "amp-down-interval": IntervalLoss(DownsampledLoss(AMPLoss(vgg), factor=2), every=2),
    }


class TestPropertyBased:
    @pytest.mark.slow
    @pytest.mark.parametrize("name", list(TOPOLOGY_STACKS))
    @PROPERTY
    @given(pair=tensors(image=False))
    def test_topology_stacks(self, name, pair):
        assert_finite_or_typed_error(TOPOLOGY_STACKS[name](), *pair)

    @pytest.mark.slow
    @pytest.mark.parametrize("name", ["vgg16", "resnet18", "lpips", "amp-down-interval"])
    @PROPERTY
    @given(pair=tensors(image=True))
    def test_image_losses(self, image_losses, name, pair):
        assert_finite_or_typed_error(image_losses[name], *pair)

    @pytest.mark.parametrize("make", [
        lambda: fastloss.TopologicalLoss(), lambda: fastloss.PerceptualLoss("vgg16", weights=None),
        lambda: IntervalLoss(fastloss.TopologicalLoss()),
    ])
    def test_non_tensor_input(self, make):
        with pytest.raises(TypeError, match="`input` must be a torch.Tensor, got ndarray"):
            make()(np.zeros((1, 1, 8, 8)), torch.zeros(1, 1, 8, 8))

    def test_mixed_devices_are_rejected(self):
        meta = torch.empty(1, 1, 8, 8, device="meta")
        with pytest.raises(ValueError, match="must be on the same device, got cpu and meta"):
            fastloss.TopologicalLoss()(torch.rand(1, 1, 8, 8), meta)

    def test_image_dtype_mismatch(self):
        loss = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
        with pytest.raises(ValueError, match="same dtype, got torch.float64 and torch.float32"):
            loss(torch.rand(1, 3, 8, 8, dtype=torch.float64), torch.rand(1, 3, 8, 8))

    def test_too_small_for_backbone(self):
        with pytest.raises(ValueError, match=r"spatial size \(8, 8\) is too small for this backbone: it needs at least 16x16"):
            fastloss.PerceptualLoss("vgg19", weights=None)(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))

    def test_half_precision_images_are_computed_in_float32(self):
        loss = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
        x = torch.rand(1, 3, 8, 8).half().requires_grad_()
        value = loss(x, torch.rand(1, 3, 8, 8).half())
        value.backward()
        assert value.dtype == torch.float32 and x.grad.dtype == torch.float16


def perceptual_stack(kind):
    torch.manual_seed(0)
    base = fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None)
    return {
        "down": lambda: DownsampledLoss(base, factor=2),
        "interval": lambda: IntervalLoss(base, every=3, offset=1),
        "scheduled": lambda: ScheduledWeight(base, schedules.cosine_decay(6)),
        "amp": lambda: AMPLoss(base),
        "balanced": lambda: fastloss.preset("balanced", base),
        "fastest": lambda: fastloss.preset("fastest", base),
    }[kind]()


RESUME_CASES = [("topology", k) for k in TOPOLOGY_STACKS] + [
    ("topology", "balanced"), ("topology", "async"),
] + [("perceptual", k) for k in ("down", "interval", "scheduled", "amp", "balanced", "fastest")]


def build(kind, name):
    if kind == "perceptual":
        return perceptual_stack(name)
    if name == "balanced":
        return fastloss.preset("balanced", fastloss.TopologicalLoss())
    if name == "async":
        return CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh="async")
    return TOPOLOGY_STACKS[name]()


def trajectory(kind, n):
    g = torch.Generator().manual_seed(1)
    if kind == "topology":
        targets = torch.cat([ring(24, 2 + i, 2) for i in range(3)])
        return [(soft_prediction(targets, seed=s, noise=0.6), targets) for s in range(n)]
    targets = torch.rand(2, 3, 16, 16, generator=g)
    return [((targets + 0.2 * torch.randn(targets.shape, generator=g)).clamp(0, 1), targets) for _ in range(n)]


def run(loss, steps):
    out = []
    for x, t in steps:
        x = x.clone().requires_grad_()
        value = loss(x, t)
        value.backward()
        out.append((value.detach(), x.grad))
    return out


class TestResume:
    @pytest.mark.parametrize("kind, name", RESUME_CASES)
    def test_resume_is_bitwise_identical(self, kind, name, tmp_path):
        steps = trajectory(kind, 8)
        uninterrupted = run(build(kind, name), steps)
        first = build(kind, name)
        run(first, steps[:5])
        torch.save(first.state_dict(), tmp_path / "state.pt")
        resumed = build(kind, name)
        resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
        for (va, ga), (vb, gb) in zip(uninterrupted[5:], run(resumed, steps[5:]), strict=True):
            assert torch.equal(va, vb) and torch.equal(ga, gb)


def _ddp_worker(rank, world, init_file, out_dir):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(nn.Conv2d(1, 1, 3, padding=1))
        topo = IntervalLoss(ScheduledWeight(CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=2),
                                            schedules.delayed(2)), every=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        targets = torch.cat([ring(16, 2 + i, 2) for i in range(4)])
        log = []
        for step in range(8):
            g = torch.Generator().manual_seed(100 * rank + step)  # each rank sees different data
            x = targets[rank * 2 : rank * 2 + 2] + 0.3 * torch.rand(2, 1, 16, 16, generator=g)
            prob = torch.sigmoid(model(x))
            gain = topo.stack_gain()
            loss = F.binary_cross_entropy(prob, targets[rank * 2 : rank * 2 + 2]) + 0.1 * topo(prob, targets[rank * 2 : rank * 2 + 2])
            opt.zero_grad()
            loss.backward()
            opt.step()
            log.append(gain)
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save({"gains": log, "params": params, "steps": [int(w.step) for w in topo.wrappers()],
                    "cache": topo.loss.loss.cache_info()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    """2 processes, gloo, DDP: wrappers stay in step on every rank and gradients are synchronised."""
    import torch.multiprocessing as mp

    init_file = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_ddp_worker, args=(2, init_file, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["gains"] == r1["gains"] == [0.0, 0.0, 2.0, 0.0, 2.0, 0.0, 2.0, 0.0]
    assert r0["steps"] == r1["steps"] == [8, 8, 8]
    assert torch.equal(r0["params"], r1["params"])  # synchronised gradients keep replicas identical
    assert r0["cache"]["misses"] == 2 and r1["cache"]["misses"] == 2  # a CachedPH per rank


class TestMemoryAndThreads:
    @pytest.mark.slow
    def test_cached_ph_bounded_over_10000_targets(self):
        loss = CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=3, max_entries=256)
        g = torch.Generator().manual_seed(0)

        for i in range(1250):  # 10,000 distinct 8x8 targets, 8 per call
            targets = (torch.rand(8, 1, 8, 8, generator=g) > 0.5).float()
            loss(soft_prediction(targets, seed=i), targets)
            if i == 250:
                gc.collect()
                start = rss_mib()
        gc.collect()
        info = loss.cache_info()
        assert info["entries"] == 256 and info["target_entries"] == 256
        assert info["misses"] == 10_000 and info["evictions"] == 2 * (10_000 - 256)
        assert rss_mib() - start < 20, "resident memory grew past the cache bound"

    def test_no_reference_cycles_keep_inputs_alive(self):
        for make in [*TOPOLOGY_STACKS.values(), lambda: CachedPH(fastloss.TopologicalLoss(), refresh="async")]:
            loss = make()
            gc.disable()
            try:
                x = soft_prediction(ring()).requires_grad_()
                ref = weakref.ref(x)
                value = loss(x, ring())
                value.backward()
                del x, value
                assert ref() is None, f"{type(loss).__name__} keeps its input alive"
            finally:
                gc.enable()

    def test_async_thread_never_outlives_the_process(self):
        code = (
            "import torch, fastloss\n"
            "from fastloss import CachedPH\n"
            "loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=1 + 1, refresh='async')\n"
            "t = torch.zeros(1, 1, 32, 32); t[..., 8:24, 8:24] = 1\n"
            "for s in range(5):\n"
            "    loss(torch.rand(1, 1, 32, 32), t)\n"
            "print('done')\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr

    def test_threads_end_after_every_call(self):
        before = {t.ident for t in threading.enumerate()}
        target = torch.cat([ring()] * 4)
        fastloss.TopologicalLoss(workers=4)(soft_prediction(target), target)
        assert {t.ident for t in threading.enumerate()} <= before


class TestConcurrency:
    @pytest.mark.slow
    @settings(max_examples=25, deadline=None)
    @given(seed=st.integers(0, 10_000), workers=st.integers(2, 6), n=st.integers(1, 7),
           size=st.integers(4, 40), noise=st.floats(0.0, 1.0))
    def test_workers_match_sequential(self, seed, workers, n, size, noise):
        g = torch.Generator().manual_seed(seed)
        target = (torch.rand(n, 1, size, size, generator=g) > 0.6).float()
        pred = (target * (1 - noise) + noise * torch.rand(target.shape, generator=g)).clamp(0, 1)
        results = []
        for w in (1, workers):
            p = pred.clone().requires_grad_()
            v = fastloss.TopologicalLoss(workers=w, reduction="none")(p, target)
            v.sum().backward()
            results.append((v.detach(), p.grad))
        assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       st.integers(1, 500), st.sampled_from([float("nan"), float("inf"), -float("inf")]), st.data())
def test_check_finite_finds_any_non_finite_value(dtype, n, bad, data):
    """The one-reduction finiteness check (min and max) agrees with isfinite() for every float dtype and place."""
    from fastloss._validation import check_finite

    x = torch.rand(n, dtype=torch.float64).to(dtype)
    check_finite("input", x)  # finite: no error
    x[data.draw(st.integers(0, n - 1))] = bad
    with pytest.raises(ValueError, match=r"`input` must be finite, got 1 NaN/Inf value\(s\)"):
        check_finite("input", x)
    z = torch.zeros(n, dtype=torch.complex64)
    z[0] = complex(0.0, bad)
    with pytest.raises(ValueError, match="must be finite"):
        check_finite("input", z)
    check_finite("mask", torch.ones(n, dtype=torch.int64))  # integers and booleans are always finite
    check_finite("mask", torch.ones(n, dtype=torch.bool))
