r"""Perceptual (feature-matching) loss on frozen torchvision backbones.

.. math::

    L(x, y) = \sum_{l \in \text{layers}} w_l \, \frac{1}{C_l H_l W_l} \left\| \phi_l(x) - \phi_l(y) \right\|_p^p

with :math:`\phi_l` the activation of layer :math:`l` of an ImageNet backbone on ImageNet-normalised
input and :math:`p = 1` (``"l1"``) or :math:`p = 2` (``"l2"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._validation import check_choice, upcast
from ._backbones import FeatureExtractor, WeightsArg, named_stages, smallest_input, torchvision_model
from ._feature import FeatureLoss, to_unit_range

__all__ = ["BACKBONES", "PerceptualLoss", "feature_distance", "to_unit_range"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DISTANCES = ("l1", "l2")


@dataclass(frozen=True)
class BackboneSpec:
    layers: tuple[str, ...]
    layer_weights: tuple[float, ...]


BACKBONES = {
    "vgg19": BackboneSpec(
        ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    ),
    "vgg16": BackboneSpec(("relu1_2", "relu2_2", "relu3_3", "relu4_3"), (1.0, 1.0, 1.0, 1.0)),
    "resnet18": BackboneSpec(("layer1", "layer2", "layer3", "layer4"), (1.0, 1.0, 1.0, 1.0)),
}


def feature_distance(a: Tensor, b: Tensor, distance: str) -> Tensor:
    """Per-sample mean distance between two feature maps, computed in at least float32: shape ``(B,)``."""
    diff = upcast(a) - upcast(b)
    per = diff.abs() if distance == "l1" else diff.square()
    return per.flatten(1).mean(1)


class PerceptualLoss(FeatureLoss):
    r"""Perceptual loss on a frozen VGG16/VGG19/ResNet18 backbone from torchvision.

    Args:
        backbone: ``"vgg19"`` (taps relu1_1..relu5_1, weights 1/32, 1/16, 1/8, 1/4, 1), ``"vgg16"``
            (relu1_2, relu2_2, relu3_3, relu4_3, equal weights) or ``"resnet18"`` (layer1..layer4, equal).
        layers: tap names (e.g. ``"relu3_1"``, ``"conv4_2"``, ``"layer2"``); default the backbone's.
        layer_weights: one weight per layer; default the backbone's (equal weights for custom layers).
        distance: ``"l1"`` or ``"l2"`` between feature maps.
        input_range: pixel range of ``input``/``target``, e.g. ``(0, 1)`` or ``(-1, 1)``.
        weights: ``"DEFAULT"`` (torchvision ImageNet weights, downloaded by torchvision), ``None`` (random
            init: tests and offline benchmarks), a weight name, or a path to a local ``.pth`` state dict.
        reduction: ``"mean"`` | ``"sum"`` over the batch, or ``"none"`` for a ``(B,)`` tensor.
        channels_last: lay the backbone out in ``torch.channels_last`` once (``None``: channels-first,
            and a preset may choose per device).
        compute_dtype: cast the backbone's weights once to this dtype, e.g. ``torch.bfloat16``
            (``None``: float32, and a preset may choose a native low precision per device).

    The backbone is truncated after the last used tap, frozen and kept in eval mode; target features
    are computed under ``no_grad``. ImageNet mean/std are buffers. Per-layer distances and the reduction
    are computed in float32 whatever the backbone's dtype.

    Shape:
        - input, target: :math:`(B, C, H, W)` with :math:`C \in \{1, 3\}`.
        - output: scalar, or :math:`(B,)` with ``reduction="none"``.

    Example:
        >>> loss = PerceptualLoss("vgg16", weights=None)  # random init: no download
        >>> x = torch.rand(2, 3, 32, 32)
        >>> loss(x, x).item()
        0.0
    """

    def __init__(
        self,
        backbone: str = "vgg19",
        layers: Sequence[str] | None = None,
        layer_weights: Sequence[float] | None = None,
        distance: str = "l1",
        input_range: tuple[float, float] = (0, 1),
        weights: WeightsArg = "DEFAULT",
        reduction: str = "mean",
        channels_last: bool | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(input_range, reduction)
        check_choice("backbone", backbone, list(BACKBONES))
        check_choice("distance", distance, DISTANCES)
        spec = BACKBONES[backbone]
        if isinstance(layers, str):
            raise TypeError(f"`layers` must be a sequence of layer names, got the string {layers!r}")
        layers = spec.layers if layers is None else tuple(layers)
        if not layers:
            raise ValueError("`layers` must name at least one layer, got an empty sequence")
        if layer_weights is None:
            layer_weights = spec.layer_weights if layers == spec.layers else (1.0,) * len(layers)
        if len(layer_weights) != len(layers):
            raise ValueError(
                f"`layer_weights` must have one weight per layer ({len(layers)}), got {len(layer_weights)}"
            )
        self.backbone_name = backbone
        self.layers = layers
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.distance = distance
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        model = torchvision_model(backbone, weights)
        self.features = FeatureExtractor(named_stages(backbone, model), layers)
        self.rebuilt_modules = () if weights is None else ("features",)  # a random init is state: saved
        self.min_size = smallest_input(self.features)
        self._configure(channels_last, compute_dtype)

    frozen_modules = ("features",)

    def backbone(self) -> nn.Module:
        return self.features

    def prepare(self, x: Tensor) -> Tensor:
        return (to_unit_range(x, self.input_range) - self.mean) / self.std

    def extract(self, x: Tensor) -> list[Tensor]:
        return self.run_backbone(x)

    def layer_distance(self, index: int, a: Tensor, b: Tensor) -> Tensor:
        return feature_distance(a, b, self.distance)

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone_name!r}, layers={self.layers}, distance={self.distance!r}, "
            f"input_range={self.input_range}, reduction={self.reduction!r}, {self.settings_repr()}"
        )
