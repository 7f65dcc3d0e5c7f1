"""Device capabilities and the presets resolved against them (classes of machine simulated)."""

import pytest
import torch
from torch import nn

import fastloss
from fastloss import hardware
from fastloss.hardware import Capabilities


@pytest.fixture
def fresh_cache():
    hardware.capabilities.cache_clear()
    yield
    hardware.capabilities.cache_clear()


class TestCapabilities:
    def test_this_machine(self, fresh_cache):
        caps = hardware.capabilities("cpu")
        assert caps.device == "cpu" and hardware.cpu_model() in caps.name
        assert caps.is_native(torch.float32) and caps.cpu_capability == torch.backends.cpu.get_cpu_capability()
        assert caps.is_native(torch.bfloat16) == (torch.bfloat16 in caps.native_dtypes)

    @pytest.mark.parametrize("probes, expected", [
        ({}, ()),  # AVX2 only (Zen 3): bfloat16 would be emulated
        ({"_is_avx512_bf16_supported": True}, (torch.bfloat16,)),  # Zen 4/5, Cooper Lake
        ({"_is_amx_tile_supported": True, "_is_amx_fp16_supported": True}, (torch.bfloat16, torch.float16)),
    ], ids=["avx2", "avx512-bf16", "amx"])
    def test_x86_cpu_classes(self, monkeypatch, fresh_cache, probes, expected):
        monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
        monkeypatch.setattr(hardware, "conv_time_ratio", lambda dtype: 0.7)  # measured native (any CI machine)
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
            value = probes.get(name, False)
            monkeypatch.setattr(torch.cpu, name, lambda value=value: value, raising=False)
        caps = hardware.capabilities("cpu")
        assert caps.native_dtypes == expected
        assert caps.low_precision == (expected[0] if expected else None)
        assert caps.device_class == ("cpu-bf16" if torch.bfloat16 in expected else "cpu")

    def test_missing_private_helpers_count_as_not_native(self, monkeypatch, fresh_cache):
        monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
            monkeypatch.delattr(torch.cpu, name, raising=False)
        assert hardware.capabilities("cpu").native_dtypes == ()

    def test_arm_features(self, monkeypatch, fresh_cache):
        monkeypatch.setattr(hardware.platform, "machine", lambda: "aarch64")
        monkeypatch.setattr(hardware, "conv_time_ratio", lambda dtype: 0.7)
        monkeypatch.setattr(hardware, "_cpuinfo_flags", lambda: {"asimd", "asimdhp", "bf16", "sve"})
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"):
            monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
        assert set(hardware.capabilities("cpu").native_dtypes) == {torch.bfloat16, torch.float16}

    @pytest.mark.parametrize("ratio, native", [(0.7, True), (0.99, True), (1.0, False), (2.1, False), (35.0, False)])
    def test_listed_but_measured_slow_is_emulated(self, monkeypatch, fresh_cache, ratio, native):
        """The flags list bfloat16 but its convolution is not faster than float32's (oneDNN capped or off)."""
        monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
        for name in ("_is_amx_tile_supported", "_is_amx_fp16_supported"):
            monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
        monkeypatch.setattr(hardware, "conv_time_ratio", lambda dtype: ratio)
        caps = hardware.capabilities("cpu")
        assert caps.measured == (("bfloat16", ratio),)
        assert caps.native_dtypes == ((torch.bfloat16,) if native else ())
        assert caps.low_precision == (torch.bfloat16 if native else None)
        assert ("measured emulated: bfloat16" in caps.describe()) != native
        assert Capabilities.from_dict(caps.as_dict()) == caps

    def test_onednn_off_is_measured_on_this_machine(self, fresh_cache):
        """Real measurement: with oneDNN off, bfloat16 convolutions fall back to a slow path (~30x float32's on
        a Zen 4 with AVX512-BF16), so a CPU that lists bfloat16 no longer counts it native; on again, it does."""
        listed = hardware.capabilities("cpu")
        if not listed.measured:
            pytest.skip("this CPU lists no low-precision dtype: nothing is measured")
        was = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            off = hardware.capabilities("cpu")
            assert off.native_dtypes == () and off.low_precision is None, off.describe()
            assert all(ratio >= hardware.NATIVE_RATIO for _, ratio in off.measured)
            loss = fastloss.preset("balanced", vgg())
            loss(*images())
            assert loss.innermost().compute_dtype == torch.float32  # the preset does not pick the slow dtype
        finally:
            torch.backends.mkldnn.enabled = was
        assert hardware.capabilities("cpu") == listed  # the detection is cached per oneDNN on/off

    def test_conv_time_ratio_measures(self):
        ratio = hardware.conv_time_ratio(torch.float32, rounds=3)  # the same dtype on both sides
        assert 0.2 < ratio < 5.0

    @pytest.mark.parametrize("cc, expected", [((6, 1), ()), ((7, 0), (torch.float16,)),
                                              ((8, 0), (torch.bfloat16, torch.float16)),
                                              ((9, 0), (torch.bfloat16, torch.float16))])
    def test_cuda_compute_capability(self, monkeypatch, fresh_cache, cc, expected):
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: cc)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Simulated GPU")
        caps = hardware.capabilities("cuda")
        assert caps.device == "cuda:0" and caps.native_dtypes == expected and caps.compute_capability == cc
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
        assert hardware.capabilities("cuda:0").tf32_conv == (cc[0] >= 8)  # TF32 flags are read live
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        assert not hardware.capabilities("cuda:0").tf32_conv

    def test_cached_per_device(self, monkeypatch, fresh_cache):
        calls = []
        real = hardware._detect
        monkeypatch.setattr(hardware, "_detect", lambda device: calls.append(device) or real(device))
        for _ in range(3):
            hardware.capabilities("cpu")
        assert len(calls) == 1

    def test_record_round_trip(self):
        caps = Capabilities("cuda:0", "Simulated", (torch.bfloat16, torch.float16), True, False,
                            compute_capability=(9, 0))
        assert Capabilities.from_dict(caps.as_dict()) == caps
        assert "compute capability 9.0" in caps.describe() and "TF32 conv on" in caps.describe()


def vgg(**kwargs):
    torch.manual_seed(0)
    return fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None, **kwargs)


def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, 32, 32, generator=g).requires_grad_(), torch.rand(1, 3, 32, 32, generator=g)


class TestPresetResolution:
    @pytest.mark.parametrize("machine, dtype, channels_last", [
        ("avx2-cpu", torch.float32, False), ("bf16-cpu", torch.bfloat16, True), ("amx-cpu", torch.bfloat16, True),
    ])
    def test_perceptual_balanced_per_cpu_class(self, simulate, machine, dtype, channels_last):
        simulate(machine)
        loss = fastloss.preset("balanced", vgg())
        x, y = images()
        value = loss(x, y)
        assert loss.innermost().compute_dtype == dtype and loss.innermost().channels_last == channels_last
        assert torch.allclose(value, vgg()(x, y), rtol=3e-2)
        assert f"{machine.split('-')[0].upper()}" in loss.describe() or "simulated" in loss.describe()
        assert str(dtype).replace("torch.", "") in loss.describe()

    def test_fastest_uses_no_emulated_dtype(self, simulate):
        simulate("avx2-cpu")
        loss = fastloss.preset("fastest", fastloss.LPIPSLoss(weights=None))
        loss(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
        assert loss.innermost().compute_dtype == torch.float32
        assert fastloss.bench.harness.emulated_reason(loss, torch.device("cpu")) is None

    def test_resolved_stack_is_visible_and_saved(self, simulate, tmp_path):
        simulate("bf16-cpu")
        loss = fastloss.preset("balanced", vgg())
        assert "not resolved yet" in loss.describe() and "unresolved" in repr(loss)
        x, y = images()
        loss(x, y)
        assert "resolved_for='cpu'" in repr(loss) and "bfloat16" in loss.describe()
        torch.save(loss.state_dict(), tmp_path / "s.pt")
        resumed = fastloss.preset("balanced", vgg())
        resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
        assert resumed.describe() == loss.describe()  # resolved the same way, before any call
        assert torch.equal(resumed(x, y), loss(x, y))

    def test_checkpoint_from_another_device_resolves_again(self, simulate):
        simulate("bf16-cpu")
        gpu = Capabilities("cuda:0", "Simulated GPU", (torch.bfloat16, torch.float16), compute_capability=(9, 0))
        saved = fastloss.preset("balanced", vgg())
        saved.resolve(gpu)  # as if resolved on a GPU
        state = saved.state_dict()
        simulate("avx2-cpu")
        resumed = fastloss.preset("balanced", vgg())
        resumed.load_state_dict(state)
        assert resumed.resolved_for == gpu and resumed.innermost().compute_dtype == torch.bfloat16
        resumed(*images())  # the first call is on the CPU: resolved again, for this CPU
        assert resumed.resolved_for.device == "cpu" and resumed.innermost().compute_dtype == torch.float32

    def test_steps_survive_resolution(self):
        loss = fastloss.preset("fastest", fastloss.BettiMatchingLoss())
        loss.set_step(6)
        target = torch.zeros(1, 1, 16, 16)
        target[..., 4:12, 4:12] = 1
        loss(target * 0.8 + 0.1, target)
        assert int(loss.step) == 7 and loss.loss.step is loss.step

    def test_a_preset_inside_other_wrappers_joins_their_stack(self, registry):
        """The resolved stack's wrappers are adopted by the outermost wrapper: one clock, composed phases."""
        fastloss.register_preset("lazy4", "topology",
                                 lambda loss: fastloss.IntervalLoss(fastloss.CachedPH(loss, refresh_every=1), every=4))
        outer = fastloss.IntervalLoss(fastloss.preset("lazy4", fastloss.TopologicalLoss()), every=2)
        target = torch.zeros(1, 1, 16, 16)
        target[..., 4:12, 4:12] = 1
        values = []
        for _ in range(8):
            x = (target * 0.6 + 0.2).requires_grad_()
            value = outer(x, target)
            value.backward()
            values.append(value.item())
        inner = outer.loss.loss  # the preset's IntervalLoss(4)
        assert isinstance(inner, fastloss.IntervalLoss) and inner.root is outer and inner.step is outer.step
        assert [v != 0 for v in values] == [True] + [False] * 7  # one step in 2 x 4 = 8, gain 8
        assert values[0] == pytest.approx(8 * fastloss.TopologicalLoss()(target * 0.6 + 0.2, target).item())

    def test_mismatched_checkpoint(self):
        a = fastloss.preset("balanced", fastloss.TopologicalLoss())
        b = fastloss.preset("fastest", fastloss.TopologicalLoss())
        with pytest.raises(ValueError, match="the checkpoint holds preset 'balanced'"):
            b.load_state_dict(a.state_dict(), strict=False)

    def test_builder_with_capabilities(self, simulate, registry):
        seen = []

        class Mine(nn.MSELoss):
            preset_kind = "mine"

        fastloss.register_preset("probe", "mine", lambda loss, caps: seen.append(caps.device_class) or loss)
        fastloss.register_preset("every", "mine", lambda loss, n=3: fastloss.IntervalLoss(loss, every=n))
        simulate("avx2-cpu")
        fastloss.preset("probe", Mine())(torch.rand(3), torch.rand(3))
        assert seen == ["cpu"]
        lazy = fastloss.preset("every", Mine())  # a defaulted second parameter is not the capabilities
        lazy(torch.rand(3), torch.rand(3))
        assert lazy.loss.every == 3
