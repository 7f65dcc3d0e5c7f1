"""Issue 16 item 5: frozen backbones are not in state_dict (they are rebuilt from `weights`); a checkpoint
that still holds them loads (ignored, no error). Item 7: offline default weights give a clear error."""

import io
import urllib.error

import pytest
import torch
import torchvision

from fastloss import CachedTarget, LPIPSLoss, PerceptualLoss, preset

ARCH = {"VGG19_Weights": "vgg19", "VGG16_Weights": "vgg16", "ResNet18_Weights": "resnet18"}


@pytest.fixture
def downloaded(monkeypatch):
    """torchvision's "DEFAULT" weights without a network: a fixed state dict per architecture."""
    made = {}

    def get_state_dict(self, *args, **kwargs):
        arch = ARCH[type(self).__name__]
        if arch not in made:
            torch.manual_seed(0)
            made[arch] = torchvision.models.get_model(arch).state_dict()
        return made[arch]

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", get_state_dict)


@pytest.fixture
def resnet18_file(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


MAKERS = {
    "vgg19": lambda path: PerceptualLoss("vgg19"),
    "resnet18-file": lambda path: PerceptualLoss("resnet18", weights=path),
    "lpips": lambda path: LPIPSLoss(),
}
CONSTANTS = {"vgg19": {"mean", "std"}, "resnet18-file": {"mean", "std"}, "lpips": {"shift", "scale"}}


def saved_bytes(module):
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def frozen_state(loss):
    return {f"{m}.{k}": v for m in loss.frozen_modules for k, v in getattr(loss, m).state_dict().items()}


@pytest.mark.parametrize("name", list(MAKERS))
def test_state_dict_holds_no_backbone(name, downloaded, resnet18_file):
    loss = MAKERS[name](resnet18_file)
    assert set(loss.state_dict()) == CONSTANTS[name]
    assert saved_bytes(loss) < 16384  # two constants and torch's per-module metadata (VGG19's weights: 80 MB)


@pytest.mark.parametrize("name", list(MAKERS))
def test_an_old_checkpoint_with_the_backbone_loads_and_is_ignored(name, downloaded, resnet18_file):
    loss = MAKERS[name](resnet18_file)
    frozen = frozen_state(loss)
    assert len(frozen) > 4
    old = {**loss.state_dict(), **{k: v + 1 if v.is_floating_point() else v for k, v in frozen.items()}}
    result = loss.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    after = frozen_state(loss)
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # the checkpoint's copy is ignored


def test_a_resumed_loss_rebuilds_the_same_backbone(resnet18_file):
    first = PerceptualLoss("resnet18", weights=resnet18_file)
    resumed = PerceptualLoss("resnet18", weights=resnet18_file)
    resumed.load_state_dict(first.state_dict(), strict=True)
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert torch.equal(first(x, y), resumed(x, y))


def test_a_random_backbone_is_state_and_is_saved():
    """weights=None: nothing could rebuild the random init, so it stays in state_dict (exact resume)."""
    torch.manual_seed(5)
    first = PerceptualLoss("vgg16", layers=["relu2_2"], weights=None)
    resumed = PerceptualLoss("vgg16", layers=["relu2_2"], weights=None)
    assert any(k.startswith("features.") for k in first.state_dict())
    resumed.load_state_dict(first.state_dict(), strict=True)
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert torch.equal(first(x, y), resumed(x, y))
    lpips = LPIPSLoss(weights=None)
    assert not any(k.startswith("lins.") for k in lpips.state_dict())  # lpips' calibration is rebuilt


def test_a_checkpoint_without_the_backbone_loads_into_a_random_one(downloaded):
    saved = PerceptualLoss("vgg16", layers=["relu2_2"]).state_dict()
    random = PerceptualLoss("vgg16", layers=["relu2_2"], weights=None)
    before = frozen_state(random)
    assert not random.load_state_dict(saved, strict=True).missing_keys
    assert all(torch.equal(before[k], v) for k, v in frozen_state(random).items())


@pytest.mark.parametrize("wrap", [lambda loss: preset("balanced", loss), lambda loss: CachedTarget(loss),
                                  lambda loss: preset("fastest", loss)], ids=["balanced", "cached", "fastest"])
def test_stacks_save_no_backbone(wrap, downloaded):
    stack = wrap(PerceptualLoss("vgg19"))
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    stack(x, torch.rand(1, 3, 32, 32)).backward()  # resolve the preset
    assert saved_bytes(stack) < 16384
    fresh = wrap(PerceptualLoss("vgg19"))
    fresh(x, torch.rand(1, 3, 32, 32))
    fresh.load_state_dict(stack.state_dict(), strict=True)


def test_offline_default_weights_name_the_way_out(monkeypatch):
    from fastloss.losses._backbones import WeightsUnavailable

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsUnavailable, match=r"`weights`='DEFAULT' for 'resnet18': torchvision could not download "
                                                 r"https://.*resnet18.*URLError.*Offline, pass weights=None .* a local "
                                                 r"\.pth state dict") as info:
        PerceptualLoss("resnet18")
    assert isinstance(info.value, ConnectionError) and isinstance(info.value.__cause__, urllib.error.URLError)
    with pytest.raises(WeightsUnavailable, match="for 'vgg16'"):
        LPIPSLoss()


def test_other_download_failures_are_not_masked(monkeypatch):
    def corrupt(self, *args, **kwargs):
        raise RuntimeError("invalid hash value")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", corrupt)
    with pytest.raises(RuntimeError, match="^invalid hash value$"):
        PerceptualLoss("resnet18")
