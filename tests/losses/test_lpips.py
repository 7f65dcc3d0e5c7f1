import warnings

import lpips
import pytest
import torch
import torchvision

import fastloss


@pytest.fixture(scope="module")
def trunk_path(tmp_path_factory):
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(torchvision.models.vgg16().state_dict(), path)
    return path


def images(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g), torch.rand(b, 3, size, size, generator=g)


class TestLPIPSLoss:
    def test_matches_lpips_package(self, trunk_path):
        ours = fastloss.LPIPSLoss(weights=trunk_path, reduction="none")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        reference.net.load_state_dict(ours.trunk.state_dict())
        x, y = images()
        expected = reference(x, y, normalize=True).flatten()
        assert torch.allclose(ours(x, y), expected, rtol=1e-5, atol=1e-7)
        assert torch.equal(ours.lins[0].model[1].weight, reference.lins[0].model[1].weight)

    def test_linear_layers_come_from_package(self):
        loss = fastloss.LPIPSLoss(weights=None)
        # calibrated weights are non-negative; a random init would not be
        assert all((lin.model[1].weight >= 0).all() for lin in loss.lins)

    def test_trunk_loaded_from_path(self, trunk_path):
        state = torch.load(trunk_path, weights_only=True)
        loss = fastloss.LPIPSLoss(weights=str(trunk_path))
        assert torch.equal(loss.trunk.slice1[0].weight, state["features.0.weight"])
        assert torch.equal(loss.trunk.slice5._modules["28"].weight, state["features.28.weight"])

    def test_eval_locked(self):
        loss = fastloss.LPIPSLoss(weights=None)
        loss.train()
        assert not any(m.training for m in loss.modules())
        x, y = images()
        assert torch.equal(loss(x, y), loss(x, y))  # no dropout
        assert not any(p.requires_grad for p in loss.parameters())

    @pytest.mark.parametrize("reduction, shape", [("mean", ()), ("sum", ()), ("none", (2,))])
    def test_reduction_shapes(self, reduction, shape):
        x, y = images()
        assert fastloss.LPIPSLoss(weights=None, reduction=reduction)(x, y).shape == shape

    def test_zero_for_identical_and_gradient(self):
        loss = fastloss.LPIPSLoss(weights=None)
        x, y = images()
        assert loss(x, x).item() == 0.0
        x.requires_grad_()
        loss(x, y).backward()
        assert torch.isfinite(x.grad).all() and torch.count_nonzero(x.grad) > 0

    def test_input_range(self):
        a = fastloss.LPIPSLoss(weights=None)
        b = fastloss.LPIPSLoss(weights=None, input_range=(-1, 1))
        b.load_state_dict(a.state_dict())
        x, y = images()
        assert torch.allclose(a(x, y), b(2 * x - 1, 2 * y - 1), rtol=1e-5)

    def test_alex_trunk(self):
        x, y = images()
        assert fastloss.LPIPSLoss(backbone="alex", weights=None)(x, y) > 0

    def test_gradcheck(self):
        loss = fastloss.LPIPSLoss(weights=None).double()
        x, y = (t.double() for t in images(b=1, size=16))
        x.requires_grad_()
        assert torch.autograd.gradcheck(lambda a: loss(a, y), (x,), eps=1e-6, atol=1e-4, fast_mode=True)


class TestLPIPSLossErrors:
    def test_bad_backbone(self):
        with pytest.raises(ValueError, match=r"`backbone` must be one of \['vgg', 'alex', 'squeeze'\], got 'resnet'"):
            fastloss.LPIPSLoss(backbone="resnet", weights=None)

    def test_deprecated_names_still_work_with_a_warning(self):
        with pytest.warns(FutureWarning, match=r"LPIPSLoss\(net=...\) is deprecated: use backbone=..."):
            with pytest.warns(FutureWarning, match=r"backbone_weights=...\) is deprecated: use weights=..."):
                loss = fastloss.LPIPSLoss(net="alex", backbone_weights=None)
        assert loss.backbone_name == "alex" and loss.net_name == "alex"

    def test_weights_missing_trunk(self, tmp_path):
        path = tmp_path / "partial.pth"
        state = torchvision.models.vgg16().state_dict()
        torch.save({k: v for k, v in state.items() if not k.startswith("features.28")}, path)
        with pytest.raises(ValueError, match="`weights` lack trunk parameters for 'vgg16'"):
            fastloss.LPIPSLoss(weights=path)

    def test_bad_input(self):
        loss = fastloss.LPIPSLoss(weights=None)
        with pytest.raises(ValueError, match="`input` must be finite"):
            loss(torch.full((1, 3, 16, 16), float("nan")), torch.rand(1, 3, 16, 16))
        with pytest.raises(ValueError, match="same shape"):
            loss(torch.rand(1, 3, 16, 16), torch.rand(2, 3, 16, 16))
