"""CachedTarget: exact target-feature cache for the feature losses."""

import copy

import pytest
import torch

import fastloss
from fastloss import AMPLoss, CachedTarget, DownsampledLoss, IntervalLoss


def vgg(**kwargs):
    torch.manual_seed(0)
    return fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2", "relu3_3"], weights=None, **kwargs)


def dataset(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def trajectory(targets, steps=8, batch=2, seed=1):
    """Batches of repeated targets in changing compositions, with drifting predictions."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(steps):
        index = torch.randperm(len(targets), generator=g)[:batch]
        t = targets[index]
        out.append(((t + 0.2 * (1 - s / steps) * torch.randn(t.shape, generator=g)).clamp(0, 1), t))
    return out


def run(loss, steps):
    values, grads = [], []
    for x, t in steps:
        x = x.clone().requires_grad_()
        v = loss(x, t)
        v.backward()
        values.append(v.detach())
        grads.append(x.grad)
    return values, grads


@pytest.mark.parametrize("make, bitwise", [
    (lambda: vgg(), True),
    (lambda: vgg(compute_dtype=torch.bfloat16, channels_last=True), True),
    (lambda: fastloss.LPIPSLoss(weights=None), True),
    (lambda: fastloss.PerceptualLoss("resnet18", layers=["layer1", "layer2"], weights=None), False),
], ids=["vgg", "vgg-bf16-channels-last", "lpips", "resnet18"])
def test_values_and_gradients_equal_the_wrapped_loss(make, bitwise):
    torch.manual_seed(0)
    exact = make()
    cached = CachedTarget(copy.deepcopy(exact))
    steps = trajectory(dataset(), steps=8)
    (va, ga), (vb, gb) = run(exact, steps), run(cached, steps)
    for a, b, g, h in zip(va, vb, ga, gb, strict=True):
        if bitwise:
            assert torch.equal(a, b) and torch.equal(g, h)
        else:  # another batch composition may pick another convolution algorithm: last bits only
            assert torch.allclose(a, b, rtol=1e-5) and torch.allclose(g, h, rtol=1e-4, atol=1e-8)
    info = cached.cache_info()
    assert info["hits"] > 0 and info["hits"] + info["misses"] == 16 and info["misses"] == 4


def test_counters_and_the_byte_bound():
    targets = dataset(6)
    one = CachedTarget(vgg())
    one(targets[:1], targets[:1])
    per_sample = one.cache_info()["bytes"]
    loss = CachedTarget(vgg(), max_bytes=int(2.5 * per_sample))
    for i in range(6):
        loss(targets[i:i + 1], targets[i:i + 1])
        assert loss.cache_info()["bytes"] <= loss.max_bytes
    info = loss.cache_info()
    assert info["entries"] == 2 and info["evictions"] == 4 and info["misses"] == 6
    loss(targets[5:6], targets[5:6])  # most recent: still there
    loss(targets[0:1], targets[0:1])  # evicted long ago
    assert loss.cache_info()["hits"] == 1 and loss.cache_info()["misses"] == 7
    loss.clear()
    assert loss.cache_info() == {"hits": 0, "misses": 0, "collisions": 0, "evictions": 0, "entries": 0, "bytes": 0}


def test_one_pixel_makes_a_different_target():
    target = dataset(1)
    loss = CachedTarget(vgg())
    loss(target, target)
    other = target.clone()
    other[0, 1, 5, 7] += 1e-3
    value = loss(target, other)
    assert torch.equal(value, vgg()(target, other)) and loss.cache_info()["misses"] == 2


def test_no_false_hit_even_when_fingerprints_collide(monkeypatch):
    loss = CachedTarget(vgg())
    monkeypatch.setattr(loss, "_fingerprints", lambda target: [0.0] * target.shape[0])
    a, b = dataset(2).split(1)
    loss(a, a)
    assert torch.equal(loss(a, b), vgg()(a, b))
    assert loss.cache_info()["collisions"] == 1 and loss.cache_info()["misses"] == 2
    assert torch.equal(loss(a, a), vgg()(a, a)) and loss.cache_info()["hits"] == 1


def test_inside_downsampling_it_keys_on_what_it_receives():
    targets = dataset(2, size=64)
    stack = DownsampledLoss(CachedTarget(vgg()), factor=2)
    exact = DownsampledLoss(vgg(), factor=2)
    for _ in range(2):
        x = targets.clone().requires_grad_()
        assert torch.equal(stack(x, targets), exact(x, targets))
    cached = stack.loss
    assert cached.cache_info()["hits"] == 2
    entry = next(iter(cached._cache.values()))[0]
    assert entry.target.shape == (3, 32, 32)  # the downsampled target


def test_eval_and_no_grad_use_the_cache_and_stay_exact():
    targets = dataset(2)
    loss = CachedTarget(vgg()).eval()
    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(loss(targets.flip(-1), targets), vgg()(targets.flip(-1), targets))
    assert loss.cache_info()["hits"] == 2


def test_features_are_stored_in_the_compute_dtype_and_where_asked():
    targets = dataset(2)
    loss = CachedTarget(vgg(compute_dtype=torch.bfloat16), device="cpu")
    loss(targets, targets)
    entry = next(iter(loss._cache.values()))[0]
    assert all(f.dtype == torch.bfloat16 and f.device.type == "cpu" for f in entry.features)


def test_autocast_and_new_weights_are_different_contexts():
    targets = dataset(1)
    inner = CachedTarget(vgg())
    amp = AMPLoss(inner, dtype=torch.bfloat16)
    inner(targets, targets)
    amp(targets, targets)  # features under autocast are other features
    assert inner.cache_info()["misses"] == 2
    inner.loss.load_state_dict(vgg().state_dict())  # new weights (same values, new version)
    inner(targets, targets)
    assert inner.cache_info()["misses"] == 3


def test_state_dict_holds_no_cache_and_a_resumed_run_is_exact(tmp_path):
    steps = trajectory(dataset(), steps=6)
    values, grads = run(IntervalLoss(CachedTarget(vgg()), every=2), steps)
    first = IntervalLoss(CachedTarget(vgg()), every=2)
    run(first, steps[:3])
    state = first.state_dict()
    assert set(state) == {"step", *(f"loss.loss.{k}" for k in vgg().state_dict())}  # no cache in it
    torch.save(state, tmp_path / "s.pt")
    resumed = IntervalLoss(CachedTarget(vgg()), every=2)
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    rest_values, rest_grads = run(resumed, steps[3:])
    assert all(torch.equal(a, b) for a, b in zip(values[3:], rest_values, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(grads[3:], rest_grads, strict=True))
    clone = copy.deepcopy(first).loss
    assert clone.cache_info()["entries"] == 0 and clone.cache_info()["bytes"] == 0  # a copy starts empty
    assert first.loss.cache_info()["bytes"] > 0 and clone._probes == {}


@pytest.mark.parametrize("make, error, message", [
    (lambda: CachedTarget(torch.nn.MSELoss()), TypeError,
     "`loss` must be a feature loss (fastloss.PerceptualLoss or LPIPSLoss: CachedTarget caches target features), "
     "got MSELoss"),
    (lambda: CachedTarget(vgg(), max_bytes=0), ValueError, "`max_bytes` must be >= 1, got 0"),
    (lambda: CachedTarget(vgg(), device="cuda:1"), ValueError, "`device` must be one of [None, 'cpu'], got 'cuda:1'"),
])
def test_bad_arguments(make, error, message):
    with pytest.raises(error) as info:
        make()
    assert message in str(info.value)
