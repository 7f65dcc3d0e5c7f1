"""Every stack describes itself: ``describe()`` on any wrapper, each wrapper's own ``summary()``."""

from __future__ import annotations

from torch import nn

import fastloss
from fastloss import AMPLoss, CachedPH, CachedTarget, DownsampledLoss, IntervalLoss, ScheduledWeight


def test_every_hand_built_stack_has_describe():
    topo = fastloss.TopologicalLoss(workers=1)
    vgg = fastloss.PerceptualLoss("vgg16", layers=["relu1_2"], weights=None)
    stacks = {
        IntervalLoss(CachedPH(topo, refresh_every=2), every=3):
            "IntervalLoss(3) o CachedPH(refresh_every=2) o TopologicalLoss(workers=1, backend=auto)",
        ScheduledWeight(AMPLoss(nn.MSELoss()), lambda s: 1.0): "ScheduledWeight o AMPLoss o MSELoss",
        DownsampledLoss(CachedTarget(vgg, max_bytes=2**20), factor=2):
            "DownsampledLoss(2, area) o CachedTarget(1 MiB) o PerceptualLoss(vgg16, float32)",
        CachedPH(fastloss.BettiMatchingLoss(workers=2)): "CachedPH(refresh_every=5) o BettiMatchingLoss(workers=2)",
    }
    for stack, text in stacks.items():
        assert stack.describe() == text
        assert stack.loss.describe() == text.split(" o ", 1)[1] if isinstance(stack.loss, fastloss.LossWrapper) else True


def test_a_users_wrapper_describes_itself_without_the_library_knowing_it():
    class Halved(fastloss.LossWrapper):
        def compute(self, input, target):
            return self.loss(input, target) / 2

        def summary(self) -> str:
            return "Halved(1/2)"

    class Plain(fastloss.LossWrapper):
        def compute(self, input, target):
            return self.loss(input, target)

    assert IntervalLoss(Halved(Plain(nn.L1Loss())), every=2).describe() == "IntervalLoss(2) o Halved(1/2) o Plain o L1Loss"

