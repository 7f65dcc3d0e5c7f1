"""Every wrapper (and the presets, which build wrapper stacks) through the shared tester (tests/tester.py):
output_shape on computed and skipped steps, state_dict round trip, dtypes, devices, torch.compile."""

import torch
from tester import Case, LossTester, image_inputs, topology_inputs

import fastloss
from fastloss import (
    AMPLoss,
    BatchSampledLoss,
    CachedPH,
    CachedTarget,
    DownsampledLoss,
    IntervalLoss,
    ScheduledWeight,
    TiledLoss,
    schedules,
)
from fastloss.wrappers.base import LossWrapper


def topo(r):
    return fastloss.TopologicalLoss(workers=1, reduction=r)


def betti(r):
    return fastloss.BettiMatchingLoss(workers=1, reduction=r)


def vgg(r):
    return fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None, reduction=r)


def topology_case(make, **kwargs):
    return Case(make, topology_inputs, ties_move_gradient=True, **kwargs)


def image_case(make, **kwargs):
    return Case(make, image_inputs, computes_float64=False, target_follows_dtype=True, **kwargs)


# One compiled case per wrapper class (compile=False on the variants: each torch.compile costs seconds).
WRAPPERS = {
    "amp-topological": topology_case(lambda r: AMPLoss(topo(r)), compile=False),  # autocast leaves float64 alone
    "amp-perceptual": image_case(lambda r: AMPLoss(vgg(r))),
    "cached-ph-exact": topology_case(lambda r: CachedPH(topo(r), refresh_every=1)),
    # approximate: a pairing found on a rounded input is reused, so a bfloat16 run measures the approximation,
    # not the dtype (bfloat16 through CachedPH is checked by the exact cases)
    "cached-ph-reuse": topology_case(lambda r: CachedPH(topo(r), refresh_every=3), low_precision=(), compile=False),
    "cached-ph-async": topology_case(lambda r: CachedPH(topo(r), refresh_every=2, refresh="async"),
                                     low_precision=(), compile=False),
    "cached-ph-betti": topology_case(lambda r: CachedPH(betti(r), refresh_every=1), compile=False),
    "cached-target": image_case(lambda r: CachedTarget(vgg(r))),
    "cached-target-lpips": image_case(lambda r: CachedTarget(fastloss.LPIPSLoss("vgg", weights=None, reduction=r)),
                                      compile=False),
    "downsampled-topological": topology_case(lambda r: DownsampledLoss(topo(r), factor=2), compile=False),
    "downsampled-perceptual": image_case(lambda r: DownsampledLoss(vgg(r), factor=2)),
    "interval-topological": topology_case(lambda r: IntervalLoss(topo(r), every=2)),
    "interval-perceptual": image_case(lambda r: IntervalLoss(vgg(r), every=3, compensate=False, offset=1),
                                      compile=False),
    "scheduled-topological": topology_case(lambda r: ScheduledWeight(topo(r), schedules.piecewise([2], [0.5, 2.0])),
                                           compile=False),
    "scheduled-perceptual": image_case(lambda r: ScheduledWeight(vgg(r), schedules.linear_warmup(2))),
    "tiled-perceptual": image_case(lambda r: TiledLoss(vgg(r), tiles=2)),
    "tiled-topological": topology_case(lambda r: TiledLoss(topo(r), tiles=2), compile=False),
    "batch-sampled-topological": topology_case(lambda r: BatchSampledLoss(topo(r), k=1, reduction=r)),
    "batch-sampled-perceptual": image_case(lambda r: BatchSampledLoss(vgg(r), k=1), compile=False),
    "stack-readme": image_case(lambda r: IntervalLoss(DownsampledLoss(CachedTarget(vgg(r)), factor=2), every=2)),
    "preset-balanced-topological": topology_case(lambda r: fastloss.preset("balanced", topo(r)), compile=False),
    "preset-balanced-betti": topology_case(lambda r: fastloss.preset("balanced", betti(r)), compile=False),
    "preset-balanced-perceptual": image_case(lambda r: fastloss.preset("balanced", vgg(r))),
    "preset-fastest-perceptual": image_case(lambda r: fastloss.preset("fastest", vgg(r)), compile=False),
}


class TestEveryWrapper(LossTester):
    cases = WRAPPERS


def test_every_public_wrapper_has_a_case():
    """A new wrapper exported by fastloss must join the tester."""
    exported = {getattr(fastloss, n) for n in fastloss.__all__}
    wrappers = {c for c in exported if isinstance(c, type) and issubclass(c, LossWrapper) and c is not LossWrapper}
    covered = set()
    for case in WRAPPERS.values():
        covered |= {type(m) for m in case.build().modules()}
    assert wrappers <= covered, sorted(c.__name__ for c in wrappers - covered)


def test_a_skipped_step_has_the_dtype_of_a_computed_one():
    """A float64 input to a feature loss computes in float32: its skipped steps' zeros are float32 too."""
    loss = IntervalLoss(vgg("mean"), every=2)
    x, y = image_inputs(torch.float64, 0)
    computed = loss(x.requires_grad_(), y)
    computed.backward()
    skipped = loss(x, y)
    assert not skipped.any() and computed.dtype == torch.float32
    assert skipped.dtype == computed.dtype
