"""Issue 16 item 10: a default feature loss's repr shows which fast-path settings are unset (a preset may
choose them) and which the user gave (a preset never overrides them)."""

import torch

from fastloss import LPIPSLoss, PerceptualLoss, preset
from fastloss.hardware import Capabilities
from fastloss.presets import perceptual_fast_path


def vgg(**kw):
    return PerceptualLoss("vgg16", layers=["relu1_2"], weights=None, **kw)


def test_defaults_read_as_unset():
    for loss in (vgg(), LPIPSLoss(weights=None)):
        assert repr(loss).count("channels_last=None, compute_dtype=None") == 1
        assert loss.compute_dtype == torch.float32 and loss.channels_last is False  # what None means


def test_explicit_settings_are_marked_and_distinct_from_defaults():
    explicit = vgg(compute_dtype=torch.float32, channels_last=False)
    assert "channels_last=False (explicit), compute_dtype=torch.float32 (explicit)" in repr(explicit)
    assert repr(explicit) != repr(vgg())


def test_a_preset_choice_shows_and_never_overrides_an_explicit_one():
    caps = Capabilities("cpu", name="simulated", native_dtypes=(torch.bfloat16,), cpu_capability="AVX512")
    chosen = perceptual_fast_path(vgg(), caps)
    assert "channels_last=True, compute_dtype=torch.bfloat16" in repr(chosen)
    kept = perceptual_fast_path(vgg(compute_dtype=torch.float32), caps)
    assert "channels_last=True, compute_dtype=torch.float32 (explicit)" in repr(kept)
    assert kept.compute_dtype == torch.float32


def test_wrappers_is_a_list_outermost_first():
    stack = preset("fastest", vgg())
    stack(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    found = stack.wrappers()
    assert isinstance(found, list) and found[0] is stack and len(found) == len(stack.wrappers()) >= 3
