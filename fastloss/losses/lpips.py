r"""LPIPS (Zhang et al. 2018) over the ``lpips`` package, with an offline-loadable frozen backbone.

.. math::

    L(x, y) = \sum_l \frac{1}{H_l W_l} \sum_{h, w} \left\| w_l \odot
        \left(\hat\phi_l(x)_{hw} - \hat\phi_l(y)_{hw}\right) \right\|_2^2

where :math:`\hat\phi_l` are unit-normalised channel activations of the backbone and :math:`w_l` the
linear calibration layers shipped inside the ``lpips`` package (no download).

Differences from calling ``lpips.LPIPS`` directly, none of which change its value in float32:

- the channel normalisation runs in float32 (``lpips.normalize_tensor`` adds ``eps=1e-10``, which is
  zero in float16, so an all-zero feature map gives 0/0 = NaN under autocast);
- the backbone weights come from torchvision's enum or a local path, never from a silent download;
- everything is frozen and eval-locked: the linear layers' dropout never comes back with ``.train()``;
- it shares :class:`PerceptualLoss`'s vocabulary and fast path (``backbone=``, ``weights=``,
  ``channels_last``, ``compute_dtype``: the trunk is cast once, the linear layers stay float32).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_choice, upcast
from ._backbones import WeightsArg, freeze, load_state_dict, smallest_input
from ._feature import FeatureLoss, to_unit_range

__all__ = ["LPIPSLoss"]

# lpips' trunk name -> torchvision architecture whose ``features`` it slices.
LPIPS_NETS = {"vgg": "vgg16", "alex": "alexnet", "squeeze": "squeezenet1_1"}
_EPS = 1e-10


def _import_lpips():
    try:
        import lpips
    except ImportError as exc:  # pragma: no cover - lpips is a runtime dependency
        raise ImportError("LPIPSLoss needs the `lpips` package: pip install lpips") from exc
    return lpips


def _load_trunk(trunk: nn.Module, arch: str, weights: WeightsArg) -> None:
    """Load torchvision ``features.*`` weights into lpips' sliced trunk (``slice{k}.{i}.*``)."""
    state = load_state_dict(arch, weights)
    if state is None:
        return
    prefix = {}
    for slice_name, part in trunk.named_children():
        for child in part._modules:
            prefix[f"features.{child}."] = f"{slice_name}.{child}."
    mapped = {}
    for key, value in state.items():
        head = ".".join(key.split(".")[:2]) + "."
        if head in prefix:
            mapped[prefix[head] + key[len(head) :]] = value
    missing = sorted(set(trunk.state_dict()) - set(mapped))
    if missing:
        raise ValueError(f"`weights` lack trunk parameters for {arch!r}: {missing[:4]}")
    trunk.load_state_dict(mapped, strict=True)


def unit_normalize(feat: Tensor) -> Tensor:
    """Channel-wise unit normalisation in at least float32 (safe under float16 autocast)."""
    feat = upcast(feat)
    return feat / (torch.linalg.vector_norm(feat, dim=1, keepdim=True) + _EPS)


_UNSET: Any = object()


class LPIPSLoss(FeatureLoss):
    r"""Learned perceptual image patch similarity as a training loss.

    Args:
        backbone: trunk, ``"vgg"`` (the usual choice for a loss), ``"alex"`` or ``"squeeze"``.
        input_range: pixel range of the images, e.g. ``(0, 1)`` or ``(-1, 1)``.
        weights: the trunk's weights: ``"DEFAULT"`` (torchvision ImageNet weights, downloaded by
            torchvision), ``None`` (random trunk: tests and offline benchmarks) or a path to a local
            ``.pth`` holding the torchvision model's state dict. The linear layers always come from the
            lpips package.
        reduction: ``"mean"`` | ``"sum"`` over the batch, or ``"none"`` for a ``(B,)`` tensor.
        channels_last: lay the trunk out channels-last once (``None``: a preset may choose).
        compute_dtype: cast the trunk's weights once to this dtype (``None``: float32; a preset may choose).
        net, backbone_weights: deprecated names of ``backbone`` and ``weights`` (fastloss 0.1).

    Shape:
        - input, target: :math:`(B, C, H, W)`, :math:`C \in \{1, 3\}`.
        - output: scalar, or :math:`(B,)` with ``reduction="none"``.

    Example:
        >>> loss = LPIPSLoss(weights=None)  # random trunk: no download
        >>> x = torch.rand(1, 3, 32, 32)
        >>> loss(x, x).item()
        0.0
    """

    def __init__(
        self,
        backbone: str = "vgg",
        input_range: tuple[float, float] = (0, 1),
        weights: WeightsArg = "DEFAULT",
        reduction: str = "mean",
        channels_last: bool | None = None,
        compute_dtype: torch.dtype | None = None,
        *,
        net: str | None = None,
        backbone_weights: WeightsArg = _UNSET,
    ) -> None:
        if net is not None:
            warnings.warn("LPIPSLoss(net=...) is deprecated: use backbone=...", FutureWarning, stacklevel=2)
            backbone = net
        if backbone_weights is not _UNSET:
            warnings.warn("LPIPSLoss(backbone_weights=...) is deprecated: use weights=...", FutureWarning, stacklevel=2)
            weights = backbone_weights
        super().__init__(input_range, reduction)
        check_choice("backbone", backbone, list(LPIPS_NETS))
        self.backbone_name = backbone
        lpips = _import_lpips()
        with warnings.catch_warnings():  # lpips builds its random trunk with torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(pretrained=True, net=backbone, pnet_rand=True, verbose=False)
        _load_trunk(model.net, LPIPS_NETS[backbone], weights)
        self.register_buffer("shift", model.scaling_layer.shift.detach().clone())
        self.register_buffer("scale", model.scaling_layer.scale.detach().clone())
        self.trunk = model.net
        self.lins = model.lins  # always lpips' calibration: rebuilt; a random trunk is state: saved
        self.rebuilt_modules = ("lins",) if weights is None else ("trunk", "lins")
        self.layer_weights = (1.0,) * len(self.lins)
        freeze(self)
        self.min_size = smallest_input(self.trunk)
        self._configure(channels_last, compute_dtype)

    frozen_modules = ("trunk", "lins")

    @property
    def net_name(self) -> str:  # fastloss 0.1 name
        return self.backbone_name

    def backbone(self) -> nn.Module:
        return self.trunk

    def prepare(self, x: Tensor) -> Tensor:
        return (to_unit_range(x, self.input_range) * 2 - 1 - self.shift) / self.scale

    def extract(self, x: Tensor) -> list[Tensor]:
        return [unit_normalize(f) for f in self.run_backbone(x)]

    def layer_distance(self, index: int, a: Tensor, b: Tensor) -> Tensor:
        lin = self.lins[index]
        diff = (a - b).square()
        weight = lin.model[-1].weight
        return upcast(lin(diff.to(weight.dtype))).mean(dim=(1, 2, 3))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for old, new in (("scaling.shift", "shift"), ("scaling.scale", "scale")):  # fastloss 0.1 names
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone_name!r}, input_range={self.input_range}, reduction={self.reduction!r}, "
            f"{self.settings_repr()}"
        )
