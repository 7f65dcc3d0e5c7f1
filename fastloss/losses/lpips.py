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
- everything is frozen and eval-locked: the linear layers' dropout never comes back with ``.train()``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_images, check_input_range, check_reduction, reduce_loss, upcast
from ._backbones import WeightsArg, freeze, load_state_dict, smallest_input
from .perceptual import to_unit_range

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
        raise ValueError(f"`backbone_weights` lack trunk parameters for {arch!r}: {missing[:4]}")
    trunk.load_state_dict(mapped, strict=True)


def unit_normalize(feat: Tensor) -> Tensor:
    """Channel-wise unit normalisation in at least float32 (safe under float16 autocast)."""
    feat = upcast(feat)
    return feat / (torch.linalg.vector_norm(feat, dim=1, keepdim=True) + _EPS)


class LPIPSLoss(nn.Module):
    r"""Learned perceptual image patch similarity as a training loss.

    Args:
        net: trunk, ``"vgg"`` (the usual choice for a loss), ``"alex"`` or ``"squeeze"``.
        input_range: pixel range of the images, e.g. ``(0, 1)`` or ``(-1, 1)``.
        backbone_weights: ``"DEFAULT"`` (torchvision ImageNet weights, downloaded by torchvision),
            ``None`` (random trunk: tests and offline benchmarks) or a path to a local ``.pth`` holding
            the torchvision model's state dict. The linear layers always come from the lpips package.
        reduction: ``"mean"`` | ``"sum"`` over the batch, or ``"none"`` for a ``(B,)`` tensor.

    Shape:
        - input, target: :math:`(B, C, H, W)`, :math:`C \in \{1, 3\}`.
        - output: scalar, or :math:`(B,)` with ``reduction="none"``.

    Example:
        >>> loss = LPIPSLoss(backbone_weights=None)  # random trunk: no download
        >>> x = torch.rand(1, 3, 32, 32)
        >>> loss(x, x).item()
        0.0
    """

    preset_kind = "perceptual"

    def __init__(
        self,
        net: str = "vgg",
        input_range: tuple[float, float] = (0, 1),
        backbone_weights: WeightsArg = "DEFAULT",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_choice("net", net, list(LPIPS_NETS))
        check_reduction(reduction)
        self.net_name = net
        self.input_range = check_input_range(input_range)
        self.reduction = reduction
        lpips = _import_lpips()
        with warnings.catch_warnings():  # lpips builds its random trunk with torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        _load_trunk(model.net, LPIPS_NETS[net], backbone_weights)
        self.scaling = model.scaling_layer
        self.trunk = model.net
        self.lins = model.lins
        freeze(self)
        self.min_size = smallest_input(self.trunk)

    def train(self, mode: bool = True) -> LPIPSLoss:
        return super().train(False)

    def _features(self, x: Tensor) -> list[Tensor]:
        x = to_unit_range(x, self.input_range) * 2 - 1
        return [unit_normalize(f) for f in self.trunk(self.scaling(x))]

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        input, target = check_images(input, target, self.min_size, self.scaling.shift.dtype)
        with torch.no_grad():
            target_feats = self._features(target)
        input_feats = self._features(input)
        per_sample = sum(
            upcast(lin((a - b).square())).mean(dim=(1, 2, 3))
            for lin, a, b in zip(self.lins, input_feats, target_feats, strict=True)
        )
        return reduce_loss(per_sample, self.reduction)

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, input_range={self.input_range}, reduction={self.reduction!r}"
