"""Every loss through the shared tester (tests/tester.py): functional == module, output_shape, state_dict,
dtypes, devices, torch.compile."""

from functools import partial

import torch
from tester import Case, LossTester, image_inputs, topology_inputs

import fastloss
from fastloss import functional as F
from fastloss.wrappers.base import LossWrapper

LOSSES = {
    "topological": Case(
        lambda r: fastloss.TopologicalLoss(workers=1, reduction=r), topology_inputs, ties_move_gradient=True,
        functional=lambda x, y, r: F.topological_loss(x, y, workers=1, reduction=r)),
    "topological-T": Case(
        lambda r: fastloss.TopologicalLoss(construction="T", workers=1, reduction=r), topology_inputs,
        ties_move_gradient=True, compile=False,
        functional=lambda x, y, r: F.topological_loss(x, y, construction="T", workers=1, reduction=r)),
    "topological-3d": Case(
        lambda r: fastloss.TopologicalLoss(workers=1, reduction=r), partial(topology_inputs, ndim=3),
        ties_move_gradient=True, compile=False,
        functional=lambda x, y, r: F.topological_loss(x, y, workers=1, reduction=r)),
    "betti-matching": Case(
        lambda r: fastloss.BettiMatchingLoss(workers=1, reduction=r), topology_inputs, ties_move_gradient=True,
        functional=lambda x, y, r: F.betti_matching_loss(x, y, workers=1, reduction=r)),
    "perceptual-vgg16": Case(
        lambda r: fastloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None, reduction=r),
        image_inputs, computes_float64=False, target_follows_dtype=True),
    "perceptual-resnet18": Case(
        lambda r: fastloss.PerceptualLoss("resnet18", layers=["layer1"], weights=None, reduction=r),
        image_inputs, computes_float64=False, target_follows_dtype=True),
    "lpips": Case(
        lambda r: fastloss.LPIPSLoss("vgg", weights=None, reduction=r),
        image_inputs, computes_float64=False, target_follows_dtype=True),
}


class TestEveryLoss(LossTester):
    cases = LOSSES


def test_every_public_loss_has_a_case():
    """A new loss exported by fastloss must join the tester."""
    exported = {getattr(fastloss, n) for n in fastloss.__all__}
    losses = {c for c in exported if isinstance(c, type) and issubclass(c, torch.nn.Module)
              and not issubclass(c, LossWrapper) and isinstance(getattr(c, "preset_kind", None), str)}
    covered = {type(case.build()) for case in LOSSES.values()}
    assert losses <= covered, sorted(c.__name__ for c in losses - covered)
