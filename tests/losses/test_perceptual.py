import copy

import pytest
import torch
import torchvision

import fastloss
from fastloss.losses._backbones import resolve_weights


def images(b=2, c=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, size, size, generator=g), torch.rand(b, c, size, size, generator=g)


@pytest.fixture(scope="module", params=["vgg19", "vgg16", "resnet18"])
def backbone(request):
    return request.param


class TestPerceptualLoss:
    def test_smoke_and_zero_for_identical(self, backbone):
        loss = fastloss.PerceptualLoss(backbone, weights=None)
        x, y = images()
        assert loss(x, x).item() == 0.0
        assert loss(x, y).item() > 0

    @pytest.mark.parametrize("reduction, shape", [("mean", ()), ("sum", ()), ("none", (2,))])
    def test_reduction_shapes(self, reduction, shape):
        x, y = images()
        torch.manual_seed(0)
        out = fastloss.PerceptualLoss("vgg16", weights=None, reduction=reduction)(x, y)
        assert out.shape == shape and out.dtype == torch.float32

    def test_reductions_agree(self):
        x, y = images(b=3)
        torch.manual_seed(0)
        loss = fastloss.PerceptualLoss("resnet18", weights=None, reduction="none")
        per = loss(x, y)
        loss.reduction = "mean"
        assert torch.allclose(loss(x, y), per.mean())

    def test_frozen_eval_locked_and_truncated(self):
        loss = fastloss.PerceptualLoss("vgg19", weights=None)
        assert len(loss.features.body) == 30  # features[:30]: up to relu5_1
        assert not any(p.requires_grad for p in loss.parameters())
        loss.train()
        assert not loss.features.training and not any(m.training for m in loss.features.modules())
        short = fastloss.PerceptualLoss("vgg19", layers=["relu2_1"], weights=None)
        assert list(short.features.body._modules)[-1] == "relu2_1" and len(short.features.body) == 7
        res = fastloss.PerceptualLoss("resnet18", layers=["layer2"], weights=None)
        assert list(res.features.body._modules)[-1] == "layer2"

    def test_batchnorm_statistics_never_change(self):
        loss = fastloss.PerceptualLoss("resnet18", weights=None)
        before = loss.features.body.bn1.running_mean.clone()
        loss.train()
        x, y = images()
        loss(x * 5, y)
        assert torch.equal(before, loss.features.body.bn1.running_mean)

    def test_normalization_constants_are_buffers(self):
        loss = fastloss.PerceptualLoss("vgg16", weights=None)
        buffers = dict(loss.named_buffers())
        assert torch.allclose(buffers["mean"].flatten(), torch.tensor([0.485, 0.456, 0.406]))
        assert "std" in loss.state_dict()

    def test_gradient_reaches_input_only(self):
        loss = fastloss.PerceptualLoss("vgg16", weights=None)
        x, y = images()
        x.requires_grad_()
        loss(x, y).backward()
        assert x.grad is not None and torch.count_nonzero(x.grad) > 0
        assert all(p.grad is None for p in loss.parameters())

    def test_input_range_minus_one_one(self):
        torch.manual_seed(1)
        a = fastloss.PerceptualLoss("vgg16", weights=None)
        b = fastloss.PerceptualLoss("vgg16", weights=None, input_range=(-1, 1))
        b.load_state_dict(a.state_dict())
        x, y = images()
        assert torch.allclose(a(x, y), b(2 * x - 1, 2 * y - 1), rtol=1e-5)

    def test_grayscale_repeated(self):
        loss = fastloss.PerceptualLoss("vgg16", weights=None)
        x, y = images(c=1)
        assert torch.allclose(loss(x, y), loss(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))

    def test_l2_distance(self):
        """Independent reference: torchvision's own VGG16 ``features[:4]`` (conv1_1 .. relu1_2) by hand."""
        torch.manual_seed(0)
        l2 = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], distance="l2", weights=None)
        vgg = torchvision.models.vgg16()
        vgg.features[0].load_state_dict(l2.features.body.conv1_1.state_dict())
        vgg.features[2].load_state_dict(l2.features.body.conv1_2.state_dict())
        x, y = images()
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.no_grad():
            fx, fy = (vgg.features[:4]((t - mean) / std) for t in (x, y))
        assert torch.allclose(l2(x, y), (fx - fy).square().mean(), rtol=1e-5)

    def test_channels_last_matches(self):
        torch.manual_seed(0)
        a = fastloss.PerceptualLoss("vgg16", weights=None)
        b = fastloss.PerceptualLoss("vgg16", weights=None, channels_last=True)
        b.load_state_dict(a.state_dict())
        x, y = images()
        assert torch.allclose(a(x, y), b(x, y), rtol=1e-4)

    def test_gradcheck(self):
        # l2: |a - b| has a kink wherever a feature equals its target
        loss = fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_1"], distance="l2", weights=None).double()
        x, y = (t.double() for t in images(b=1, size=6))
        x.requires_grad_()
        assert torch.autograd.gradcheck(lambda a: loss(a, y), (x,), eps=1e-6, atol=1e-5)


class TestWeights:
    def test_local_path(self, tmp_path):
        torch.manual_seed(123)
        reference = torchvision.models.vgg16()
        path = tmp_path / "vgg16.pth"
        torch.save(reference.state_dict(), path)
        loss = fastloss.PerceptualLoss("vgg16", weights=str(path))
        assert torch.equal(loss.features.body.conv1_1.weight, reference.features[0].weight)
        assert torch.equal(loss.features.body.conv4_3.bias, reference.features[28].bias)
        nested = tmp_path / "nested.pth"
        torch.save({"state_dict": reference.state_dict()}, nested)
        assert torch.equal(fastloss.PerceptualLoss("vgg16", weights=nested).features.body.conv2_1.weight,
                           reference.features[5].weight)

    def test_mismatched_state_dict(self, tmp_path):
        path = tmp_path / "resnet.pth"
        torch.save(torchvision.models.resnet18().state_dict(), path)
        with pytest.raises(ValueError, match="`weights` do not match torchvision's 'vgg19'"):
            fastloss.PerceptualLoss("vgg19", weights=path)

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="`weights` path .*nope.pth' does not exist"):
            fastloss.PerceptualLoss("vgg19", weights=str(tmp_path / "nope.pth"))

    def test_default_resolves_to_torchvision_enum_without_download(self):
        assert resolve_weights("vgg19", "DEFAULT") is torchvision.models.VGG19_Weights.IMAGENET1K_V1
        assert resolve_weights("resnet18", torchvision.models.ResNet18_Weights.IMAGENET1K_V1).name == "IMAGENET1K_V1"
        assert resolve_weights("vgg16", None) is None

    def test_bad_weight_name(self):
        with pytest.raises(ValueError, match=r"`weights` for 'vgg16' must be None, a path to a .pth file or one of \['DEFAULT', 'IMAGENET1K_V1'"):
            fastloss.PerceptualLoss("vgg16", weights="IMAGENET9K")

    def test_wrong_enum(self):
        with pytest.raises(ValueError, match="must be a VGG16_Weights"):
            fastloss.PerceptualLoss("vgg16", weights=torchvision.models.VGG19_Weights.DEFAULT)


class TestPerceptualLossErrors:
    @pytest.mark.parametrize(
        "kwargs, error, message",
        [
            ({"backbone": "vgg11"}, ValueError, "`backbone` must be one of ['vgg19', 'vgg16', 'resnet18'], got 'vgg11'"),
            ({"layers": ["relu9_9"]}, ValueError, "`layers` must be among ['conv1_1', 'relu1_1'"),
            ({"layers": "relu1_1"}, TypeError, "`layers` must be a sequence of layer names"),
            ({"layers": ["relu1_1"], "layer_weights": [1, 2]}, ValueError, "one weight per layer (1), got 2"),
            ({"distance": "l3"}, ValueError, "`distance` must be one of ['l1', 'l2'], got 'l3'"),
            ({"reduction": "max"}, ValueError, "`reduction` must be one of"),
            ({"input_range": (1, 0)}, ValueError, "`input_range` must satisfy high > low"),
        ],
    )
    def test_bad_arguments(self, kwargs, error, message):
        with pytest.raises(error) as info:
            fastloss.PerceptualLoss(**{"weights": None, **kwargs})
        assert message in str(info.value)

    @pytest.mark.parametrize(
        "input, target, error, message",
        [
            (torch.rand(1, 2, 16, 16), torch.rand(1, 2, 16, 16), ValueError, "`input` must have 1 or 3 channels, got 2"),
            (torch.rand(3, 16, 16), torch.rand(3, 16, 16), ValueError, "`input` must have 4 dimensions (B, C, H, W), got 3"),
            (torch.rand(1, 3, 16, 16), torch.rand(1, 3, 8, 8), ValueError, "same shape, got (1, 3, 16, 16) and (1, 3, 8, 8)"),
            (torch.full((1, 3, 16, 16), float("inf")), torch.rand(1, 3, 16, 16), ValueError, "`input` must be finite"),
            (torch.rand(1, 3, 16, 16), torch.full((1, 3, 16, 16), float("nan")), ValueError, "`target` must be finite"),
            (torch.randint(0, 255, (1, 3, 16, 16)), torch.rand(1, 3, 16, 16), TypeError, "`input` must be a floating-point tensor"),
        ],
    )
    def test_bad_input(self, input, target, error, message):
        loss = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
        with pytest.raises(error) as info:
            loss(input, target)
        assert message in str(info.value)


class TestFastPath:
    """The backbone cast once to a compute dtype and laid out channels-last once (no per-call re-cast)."""

    @pytest.mark.parametrize("make", [
        lambda **kw: fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None, **kw),
        lambda **kw: fastloss.LPIPSLoss(weights=None, **kw),
    ], ids=["perceptual", "lpips"])
    def test_compute_dtype(self, make):
        torch.manual_seed(0)
        exact = make()
        fast = make(compute_dtype=torch.bfloat16, channels_last=True)
        fast.load_state_dict(exact.state_dict())  # load casts into the bfloat16 weights
        seen = []
        for m in fast.backbone().modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_hook(lambda mod, args, out: seen.append((out.dtype, out.is_contiguous(
                    memory_format=torch.channels_last))))
        weight = next(fast.backbone().parameters())
        assert weight.dtype == torch.bfloat16 and fast.compute_dtype == torch.bfloat16
        pointer = weight.data_ptr()
        x, y = images(size=32)
        x.requires_grad_()
        value = fast(x, y)
        value.backward()
        assert seen and all(dtype == torch.bfloat16 and cl for dtype, cl in seen)
        assert value.dtype == torch.float32 and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
        assert torch.allclose(value, exact(x, y), rtol=3e-2)
        assert weight.data_ptr() == pointer  # the weights were cast once, not per call
        assert fast.explicit == {"channels_last": True, "compute_dtype": torch.bfloat16}
        if isinstance(fast, fastloss.LPIPSLoss):
            assert all(p.dtype == torch.float32 for p in fast.lins.parameters())  # calibration stays float32

    def test_bad_compute_dtype(self):
        with pytest.raises(TypeError, match="`compute_dtype` must be a floating-point torch.dtype, got torch.int64"):
            fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None, compute_dtype=torch.int64)
        with pytest.raises(TypeError, match="`channels_last` must be a bool or None, got str"):
            fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None, channels_last="yes")


class TestStaticShapes:
    def test_compiled_backbone_matches_eager_and_falls_back_when_shapes_change(self):
        torch.manual_seed(0)
        eager = fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None)
        static = fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None)
        static.load_state_dict(eager.state_dict())
        static.use_static_shapes(max_shapes=2, backend="aot_eager")
        for size in (16, 16):
            x, y = images(size=size)
            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
            va, vb = eager(a, y), static(b, y)
            va.backward()
            vb.backward()
            assert torch.allclose(va, vb, rtol=1e-5) and torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-8)
        assert len(static._shapes_seen) == 2  # (16 with grad, 16 without): the target runs under no_grad
        x, y = images(size=24)
        with pytest.warns(UserWarning, match=r"static-shape path has seen 2 input shapes \(max_shapes=2\)"):
            assert torch.allclose(static(x, y), eager(x, y), rtol=1e-5)
        assert "_compiled" not in static.state_dict() and copy.deepcopy(static).static_shapes is not None

    def test_bad_max_shapes(self):
        with pytest.raises(ValueError, match="`max_shapes` must be a positive int, got 0"):
            fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None).use_static_shapes(max_shapes=0)
