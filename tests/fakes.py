"""Fake losses shared by the tests: deterministic cost (sleep), chosen error (scale), counted calls."""

import time

from torch import nn


class Sleepy(nn.MSELoss):
    """MSE that sleeps ``seconds`` per call and is multiplied by ``scale`` (a fake slow or wrong candidate)."""

    preset_kind = "mine"

    def __init__(self, seconds=0.0, scale=1.0):
        super().__init__()
        self.seconds, self.scale = seconds, scale

    def forward(self, input, target):
        time.sleep(self.seconds)
        return self.scale * super().forward(input, target)


def spying_sleepy(calls: list):
    """A Sleepy that appends to ``calls`` when run; the list is shared by every copy the harness makes."""

    class Spy(Sleepy):
        def forward(self, input, target):
            calls.append(1)
            return super().forward(input, target)

    return Spy()


class CountingLoss(nn.MSELoss):
    """MSE that counts its calls."""

    def __init__(self, reduction="mean"):
        super().__init__(reduction=reduction)
        self.calls = 0

    def forward(self, input, target):
        self.calls += 1
        return super().forward(input, target)
