"""Presets: the registry, policies per device, descriptions, builder signatures."""

import pytest
import torch
import torch.nn.functional as F
from shapes import ring, soft_prediction
from steps import batch
from torch import nn

import fastloss
from fastloss import CachedPH, DownsampledLoss, IntervalLoss


class TestPresets:
    def test_list(self):
        assert {"exact", "balanced", "fastest"} <= set(fastloss.list_presets("topology"))
        assert {"exact", "balanced", "fastest"} <= set(fastloss.list_presets("perceptual"))

    def test_betti_matching_presets(self):
        base = fastloss.BettiMatchingLoss()
        target = ring()
        pred = soft_prediction(target, noise=0.6)
        for name in ("exact", "balanced", "fastest"):
            stack = fastloss.preset(name, base)
            for _ in range(2):  # the second call hits the target cache
                assert torch.equal(stack(pred, target), base(pred, target))
        assert isinstance(stack.loss, CachedPH) and stack.loss.cache_info()["target_hits"] == 1

    def test_topology_presets(self):
        base = fastloss.TopologicalLoss(workers=1)
        target = ring()
        pred = soft_prediction(target, noise=0.6)
        for name in ("exact", "balanced", "fastest"):
            stack = fastloss.preset(name, base)
            assert torch.equal(stack(pred, target), base(pred, target))  # all exact
            # rank matching on the native engine: the target side is cheaper than caching it
            assert isinstance(stack.loss, fastloss.TopologicalLoss) and stack.loss is not base
            assert stack.loss.config.workers == 1  # the user's explicit workers=1 is kept
        cripser = fastloss.preset("balanced", fastloss.TopologicalLoss(backend="cripser"))
        assert torch.equal(cripser(pred, target), base(pred, target))
        assert isinstance(cripser.loss, CachedPH) and cripser.loss.refresh_every == 1  # costly target side: cached
        assert base.config.workers == 1  # the original is untouched

    def test_perceptual_presets(self, simulate):
        simulate("bf16-cpu")
        base = fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None)
        balanced = fastloss.preset("balanced", base)
        x, y = batch(shape=(1, 3, 32, 32))
        assert torch.allclose(balanced(x, y), base(x, y), rtol=5e-2)
        assert balanced.innermost().channels_last and balanced.innermost().compute_dtype == torch.bfloat16
        assert isinstance(balanced.loss, fastloss.CachedTarget)  # exact: the target's features are cached
        assert not base.channels_last and base.compute_dtype == torch.float32  # the original is untouched
        lpips = fastloss.preset("fastest", fastloss.LPIPSLoss(weights=None))
        lpips(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
        assert isinstance(lpips.loss, fastloss.TiledLoss) and isinstance(lpips.loss.loss, fastloss.CachedTarget)
        assert lpips.innermost().channels_last  # one channels_last switch reaches LPIPS too

    def test_presets_never_override_explicit_settings(self, simulate):
        simulate("bf16-cpu")
        base = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None, channels_last=False,
                                       compute_dtype=torch.float32)
        balanced = fastloss.preset("balanced", base)
        balanced(*batch(shape=(1, 3, 16, 16)))
        assert not balanced.innermost().channels_last and balanced.innermost().compute_dtype == torch.float32

    def test_wrapped_loss_is_rejected(self):
        """preset() builds its own stack: a wrapped loss (or a preset) is a TypeError, never a silent nesting."""
        with pytest.raises(TypeError, match=r"`loss` is already wrapped \(IntervalLoss around TopologicalLoss\)"):
            fastloss.preset("balanced", IntervalLoss(fastloss.TopologicalLoss()))
        vgg = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
        with pytest.raises(TypeError, match=r"already wrapped \(PresetLoss around PerceptualLoss\)"):
            fastloss.preset("fastest", fastloss.preset("fastest", vgg))

    def test_unknown_name_and_loss(self):
        with pytest.raises(ValueError, match=r"unknown preset 'turbo' for topology losses; known: \['balanced', 'exact', 'fastest'"):
            fastloss.preset("turbo", fastloss.TopologicalLoss())
        with pytest.raises(TypeError, match="`loss` of type MSELoss has no `preset_kind`"):
            fastloss.preset("exact", nn.MSELoss())

    def test_register(self, registry):
        class MyLoss(nn.MSELoss):
            preset_kind = "mine"

        fastloss.register_preset("lazy", "mine", lambda loss: IntervalLoss(loss, every=8))
        lazy = fastloss.preset("lazy", MyLoss())
        x, y = batch()
        assert torch.allclose(lazy(x, y), 8 * F.mse_loss(x, y))
        assert isinstance(lazy.loss, IntervalLoss) and lazy.loss.every == 8
        assert fastloss.list_presets("mine") == ["auto", "lazy"]  # "auto" (measured) applies to every kind
        assert fastloss.list_presets("mine", include_measured=False) == ["lazy"]
        with pytest.raises(ValueError, match="already registered"):
            fastloss.register_preset("lazy", "mine", lambda loss: loss)
        with pytest.raises(ValueError, match=r"^`name` 'auto' is reserved: it is resolved by fastloss.autotune$"):
            fastloss.register_preset("auto", "mine", lambda loss: loss)

    def test_register_can_run_twice(self, registry):
        """Each test restores the registry, so registering the same name in two tests never collides."""
        fastloss.register_preset("lazy", "mine", lambda loss: loss)
        assert ("lazy", "mine") in registry


class TestPresetRegistryAndDescriptions:
    @pytest.mark.parametrize("args, error, message", [
        (("", "mine"), ValueError, "`name` and `kind` must be non-empty strings, got '' and 'mine'"),
        (("lazy", ""), ValueError, "`name` and `kind` must be non-empty strings, got 'lazy' and ''"),
        ((1, "mine"), ValueError, "got 1 and 'mine'"),
        (("lazy", 2), ValueError, "got 'lazy' and 2"),
    ])
    def test_names(self, registry, args, error, message):
        with pytest.raises(error) as info:
            fastloss.register_preset(*args, lambda loss: loss)
        assert message in str(info.value)

    def test_builder_and_description(self, registry):
        with pytest.raises(TypeError, match=r"`builder` must be callable \(loss -> wrapped loss\), got int"):
            fastloss.register_preset("lazy", "mine", 3)
        fastloss.register_preset("lazy", "mine", lambda loss: loss, "does nothing")
        entry = fastloss.presets.entry("lazy", "mine")
        assert (entry.name, entry.kind, entry.description) == ("lazy", "mine", "does nothing")
        assert fastloss.presets.describe("lazy", "mine") == "does nothing"
        fastloss.register_preset("lazy", "mine", lambda loss: IntervalLoss(loss, every=2), overwrite=True)
        assert fastloss.presets.describe("lazy", "mine") == ""

    def test_perceptual_fastest_is_tiles_over_balanced(self, simulate):
        simulate("bf16-cpu")
        fastest = fastloss.preset("fastest", fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None))
        fastest(*batch(shape=(1, 3, 32, 32)))
        tiled, cached = fastest.loss, fastest.loss.loss
        assert isinstance(tiled, fastloss.TiledLoss) and tiled.tiles == (3, 3) and tiled.margin == 0
        assert not tiled.per_sample
        assert isinstance(cached, fastloss.CachedTarget) and cached.loss.compute_dtype == torch.bfloat16

    def test_stack_descriptions(self, simulate):
        from fastloss.wrappers.base import describe_stack as stack_description

        simulate("bf16-cpu")
        topo = fastloss.preset("balanced", fastloss.TopologicalLoss(workers=1, backend="cripser"))
        topo(soft_prediction(ring()), ring())
        assert stack_description(topo) == (
            "preset 'balanced' o CachedPH(refresh_every=1) o TopologicalLoss(workers=1, backend=cripser)")
        assert "resolved_for='cpu'" in repr(topo) and "resolved_for='unresolved'" in repr(
            fastloss.preset("exact", fastloss.TopologicalLoss()))
        vgg = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
        stack = IntervalLoss(DownsampledLoss(fastloss.CachedTarget(vgg, max_bytes=2**21, device="cpu"), size=(8, 8)), 3)
        assert stack_description(stack) == (
            "IntervalLoss(3) o DownsampledLoss((8, 8), area) o CachedTarget(2 MiB, host) o PerceptualLoss(vgg16, float32)")
        fast = fastloss.preset("balanced", vgg)
        fast(*batch(shape=(1, 3, 16, 16)))
        assert stack_description(fast.loss) == "CachedTarget(1024 MiB) o PerceptualLoss(vgg16, bfloat16, channels_last)"
        assert stack_description(DownsampledLoss(nn.MSELoss(), factor=3)) == "DownsampledLoss(3, area) o MSELoss"

    def test_a_users_topology_loss_gets_exact_presets(self):
        class MyTopo(nn.MSELoss):
            preset_kind = "topology"  # no config, not a fastloss topology loss: nothing to cache

        for name in ("balanced", "fastest"):
            p = fastloss.preset(name, MyTopo())
            x, y = batch()
            assert torch.equal(p(x, y), F.mse_loss(x, y)) and type(p.loss) is MyTopo

    def test_a_users_loss_with_a_config_of_its_own(self):
        class Configured(nn.MSELoss):
            config = {"anything": 1}  # not a topology config: no `workers`

        from fastloss.wrappers.base import describe_stack as stack_description

        assert stack_description(IntervalLoss(Configured(), every=2)) == "IntervalLoss(2) o Configured"

    def test_downsampled_repr(self):
        assert DownsampledLoss(fastloss.TopologicalLoss()).extra_repr() == "factor=2, mode='max', antialias=True"
        down = DownsampledLoss(nn.MSELoss(), size=(8, 8), antialias=False)
        assert repr(down).splitlines()[1].strip() == "size=(8, 8), mode='area', antialias=False"


class TestTargetCacheBytes:
    def test_bound_per_device(self, monkeypatch):
        from fastloss.hardware import Capabilities
        from fastloss.presets import target_cache_bytes
        from fastloss.presets.policies import _perceptual_balanced

        cpu = Capabilities("cpu", "test CPU", ())
        assert target_cache_bytes(cpu) == 1 << 30
        gpu = Capabilities("cuda:0", "fake GPU", (torch.bfloat16,), compute_capability=(9, 0))
        asked = []

        class Props:
            def __init__(self, total):
                self.total_memory = total

        for total, expected in [(8 << 30, (8 << 30) // 20), (80 << 30, 1 << 30)]:
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
            monkeypatch.setattr(torch.cuda, "get_device_properties",
                                lambda d, total=total: asked.append(d) or Props(total))
            assert target_cache_bytes(gpu) == expected
            vgg = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
            assert _perceptual_balanced(vgg, gpu).max_bytes == expected
        assert asked[0] == torch.device("cuda:0")


class TestBuilderSignatures:
    def test_which_builders_take_the_capabilities(self):
        from fastloss.presets.registry import _takes_capabilities

        assert _takes_capabilities(lambda loss, c: loss)
        assert _takes_capabilities(lambda loss, caps=None: loss)
        assert _takes_capabilities(lambda loss, *, capabilities: loss)
        assert not _takes_capabilities(lambda loss, n=4: loss)
        assert not _takes_capabilities(lambda loss: loss)
        assert not _takes_capabilities(map)  # a builtin without a signature
