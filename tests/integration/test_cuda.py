"""CUDA paths: skipped without a GPU (CI has none); run them on a GPU machine with `pytest tests/integration/test_cuda.py`."""

import pytest
import torch
from shapes import ring, soft_prediction

import fastloss
from fastloss import AMPLoss, CachedPH, DownsampledLoss, IntervalLoss, ScheduledWeight, schedules
from fastloss.bench import compare, workloads

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def grads(loss, x, t):
    x = x.detach().clone().requires_grad_()
    value = loss(x, t)
    value.backward()
    return value.detach(), x.grad


def test_topology_on_cuda_equals_cpu():
    target = torch.cat([ring(32, 4 + i, 2) for i in range(3)])
    pred = soft_prediction(target, noise=0.6)
    v_cpu, g_cpu = grads(fastloss.TopologicalLoss(), pred, target)
    v_gpu, g_gpu = grads(fastloss.TopologicalLoss(), pred.to(CUDA), target.to(CUDA))
    assert v_gpu.device.type == "cuda" and g_gpu.device.type == "cuda"
    assert torch.allclose(v_cpu, v_gpu.cpu(), atol=1e-6) and torch.allclose(g_cpu, g_gpu.cpu(), atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda: fastloss.PerceptualLoss("vgg19", weights=None),
    lambda: fastloss.PerceptualLoss("resnet18", weights=None),
    lambda: fastloss.LPIPSLoss(weights=None),
])
def test_image_losses_on_cuda_close_to_cpu(make):
    torch.manual_seed(0)
    loss = make()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    v_cpu, g_cpu = grads(loss, x, y)
    loss.to(CUDA)
    v_gpu, g_gpu = grads(loss, x.to(CUDA), y.to(CUDA))
    # cuDNN may use TF32 for convolutions: compare at TF32-level tolerance
    assert torch.allclose(v_cpu, v_gpu.cpu(), rtol=1e-2)
    cos = torch.nn.functional.cosine_similarity(g_cpu.flatten(), g_gpu.cpu().flatten(), dim=0)
    assert cos > 0.99


def test_amp_default_native_dtype_on_cuda_and_lpips_trap():
    loss = AMPLoss(fastloss.LPIPSLoss(weights=None), dtype=torch.float16).to(CUDA)
    caps = fastloss.hardware.capabilities(CUDA)
    assert AMPLoss(torch.nn.MSELoss()).autocast_dtype(CUDA) == caps.low_precision
    assert caps.low_precision == (torch.bfloat16 if caps.compute_capability[0] >= 8 else torch.float16)
    for x, y in [(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)), (torch.full((1, 3, 64, 64), 0.5),) * 2]:
        value, grad = grads(loss, x.to(CUDA), y.to(CUDA))
        assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(grad).all()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 64, 64, generator=g).to(CUDA), torch.rand(2, 3, 64, 64, generator=g).to(CUDA)
    exact = loss.loss(x, y)
    assert torch.allclose(loss(x, y), exact, rtol=5e-2)


def test_grad_scaler_on_cuda():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 3, padding=1).to(CUDA)
    loss = fastloss.preset("balanced", fastloss.PerceptualLoss("vgg16", weights=None)).to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    x, y = torch.rand(2, 3, 32, 32, device=CUDA), torch.rand(2, 3, 32, 32, device=CUDA)
    before = model.weight.detach().clone()
    for _ in range(3):
        value = loss(model(x), y)
        opt.zero_grad()
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()
    assert torch.isfinite(value) and not torch.equal(before, model.weight)


def test_stacks_step_and_resume_on_cuda(tmp_path):
    target = torch.cat([ring(32, 4 + i, 2) for i in range(3)]).to(CUDA)

    def build():
        return ScheduledWeight(IntervalLoss(DownsampledLoss(CachedPH(fastloss.TopologicalLoss(), refresh_every=2),
                                                            factor=2, mode="max"), every=2),
                               schedules.linear_warmup(2)).to(CUDA)

    preds = [soft_prediction(target.cpu(), seed=s, noise=0.6).to(CUDA) for s in range(8)]
    full = [grads(build_stack, p, target) for build_stack in [build()] for p in preds]
    first = build()
    for p in preds[:4]:
        grads(first, p, target)
    assert first.step.device.type == "cpu" and int(first.step) == 4  # the clock never lives on the GPU
    torch.save(first.state_dict(), tmp_path / "s.pt")
    resumed = build()
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for (va, ga), p in zip(full[4:], preds[4:], strict=True):
        vb, gb = grads(resumed, p, target)
        assert torch.equal(va, vb) and torch.equal(ga, gb)


def test_balanced_perceptual_on_cuda_casts_once_and_caches_targets():
    torch.manual_seed(0)
    base = fastloss.PerceptualLoss("vgg19", weights=None).to(CUDA)
    loss = fastloss.preset("balanced", base)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 128, 128, generator=g).to(CUDA), torch.rand(2, 3, 128, 128, generator=g).to(CUDA)
    exact_value, exact_grad = grads(base, x, y)
    for _ in range(2):
        value, grad = grads(loss, x, y)
    caps = fastloss.hardware.capabilities(CUDA)
    assert loss.innermost().compute_dtype == caps.low_precision and loss.innermost().channels_last
    assert loss.loss.cache_info()["hits"] == 2 and value.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(grad.flatten(), exact_grad.flatten(), dim=0)
    assert cos > 0.95 and torch.allclose(value, exact_value, rtol=5e-2)


def test_static_shapes_on_cuda_match_eager():
    torch.manual_seed(0)
    eager = fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None).to(CUDA)
    static = fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None).to(CUDA)
    static.load_state_dict(eager.state_dict())
    static.use_static_shapes()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.rand(2, 3, 64, 64, generator=g).to(CUDA), torch.rand(2, 3, 64, 64, generator=g).to(CUDA)
        (va, ga), (vb, gb) = grads(eager, x, y), grads(static, x, y)
        assert torch.allclose(va, vb, rtol=1e-3) and torch.allclose(ga, gb, rtol=1e-2, atol=1e-6)


def test_compare_on_cuda_uses_allocator_stats():
    wl = workloads.perceptual_workload(size=64, batch=2, samples=2, epochs=2)
    loss = fastloss.PerceptualLoss("resnet18", weights=None)
    report = compare(loss, {"balanced": fastloss.preset("balanced", loss)}, wl, device="cuda", rounds=4, drop_factor=None)
    assert report.device == torch.cuda.get_device_name(0)
    assert report.reference.memory_bytes > 0 and report.candidates["balanced"].memory_bytes > 0
    assert all(t > 0 for t in report.reference.step_times)
    assert report.candidates["balanced"].deviation["grad_cosine"]["median"] > 0.85


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [
    lambda: fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None),
    lambda: fastloss.LPIPSLoss(weights=None),
    lambda: fastloss.preset("balanced", fastloss.PerceptualLoss("vgg16", layers=["relu2_2"], weights=None)),
    lambda: fastloss.CachedTarget(fastloss.PerceptualLoss("vgg16", layers=["relu2_2"], weights=None)),
], ids=["vgg16", "lpips", "balanced", "cached-target"])
def test_feature_losses_under_cuda_autocast(make, dtype):
    """Issue 16 item 2: a float16/bfloat16 network output next to a float32 target, under CUDA autocast."""
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    torch.manual_seed(0)
    loss, model = make().to(CUDA), torch.nn.Conv2d(3, 3, 3, padding=1).to(CUDA)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 64, 64, generator=g).to(CUDA), torch.rand(2, 3, 64, 64, generator=g).to(CUDA)
    values = []
    for _ in range(2):
        with torch.autocast("cuda", dtype=dtype):
            out = model(x)
            assert out.dtype == dtype and y.dtype == torch.float32
            value = loss(out, y)
        value.backward()
        values.append(value.detach())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in values)
    assert torch.isfinite(model.weight.grad).all()
    if isinstance(loss, fastloss.CachedTarget):  # the float32 target is found again: no false miss
        assert (loss.cache_info()["misses"], loss.cache_info()["hits"]) == (2, 2)
