"""AMPLoss: the device's native low precision, emulated dtypes, GradScaler."""

import copy
import warnings

import pytest
import torch
from fakes import CountingLoss
from steps import batch
from torch import nn

import fastloss
from fastloss import AMPLoss


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
