"""Frozen torchvision feature extractors and the one way fastloss loads their weights.

``weights`` is resolved the same way for every backbone:

- ``None``: random initialisation (tests, offline benchmarks). Nothing is downloaded.
- ``"DEFAULT"``, a weight name such as ``"IMAGENET1K_V1"``, or a torchvision ``WeightsEnum``: torchvision's
  ImageNet weights, downloaded and cached by torchvision the usual way.
- a path (``str`` or ``os.PathLike``) to a local ``.pth`` holding the torchvision model's ``state_dict()``
  (optionally nested under ``"state_dict"``), for offline users. Loading is strict.
"""

from __future__ import annotations

import os
import urllib.error
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum

WeightsArg = str | os.PathLike | WeightsEnum | None


def _is_path(weights: object) -> bool:
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (weights.endswith((".pth", ".pt")) or os.sep in weights)


def resolve_weights(arch: str, weights: WeightsArg) -> WeightsEnum | Path | None:
    """Turn a ``weights`` argument into ``None``, a torchvision ``WeightsEnum`` or a local ``Path``, downloading nothing."""
    if weights is None:
        return None
    if _is_path(weights):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"`weights` path {str(path)!r} does not exist or is not a file")
        return path
    enum_cls = torchvision.models.get_model_weights(arch)
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum_cls):
            raise ValueError(f"`weights` must be a {enum_cls.__name__} for {arch!r}, got {weights!r}")
        return weights
    if isinstance(weights, str):
        try:
            return enum_cls[weights]
        except KeyError:
            names = ["DEFAULT", *enum_cls.__members__]
            raise ValueError(
                f"`weights` for {arch!r} must be None, a path to a .pth file or one of {names}, got {weights!r}"
            ) from None
    raise TypeError(f"`weights` must be None, a str, a path or a WeightsEnum, got {type(weights).__name__}")


def load_state_dict(arch: str, weights: WeightsArg) -> Mapping[str, Tensor] | None:
    """The torchvision ``state_dict`` of ``arch`` for ``weights`` (``None`` for random init)."""
    resolved = resolve_weights(arch, weights)
    if resolved is None:
        return None
    if isinstance(resolved, Path):
        state = torch.load(resolved, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError(f"`weights` file {str(resolved)!r} does not hold a state dict")
        return state
    try:
        return resolved.get_state_dict(progress=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:  # offline, or the server unreachable
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(resolved.url).name
        raise WeightsUnavailable(
            f"`weights`={_name(weights)} for {arch!r}: torchvision could not download {resolved.url} "
            f"({type(exc).__name__}: {exc}). Offline, pass weights=None (random init: tests, benchmarks) or "
            f"the path of a local .pth state dict (torchvision caches this one as {str(cache)!r})"
        ) from exc


class WeightsUnavailable(ConnectionError):
    """Pretrained weights were asked for but could not be downloaded (offline): the message says what to pass instead."""


def _name(weights: WeightsArg) -> str:
    return repr(weights) if isinstance(weights, str) else str(weights)


def torchvision_model(arch: str, weights: WeightsArg) -> nn.Module:
    """A torchvision classification model with ``weights`` loaded strictly (no download for ``None`` / a path)."""
    model = torchvision.models.get_model(arch, weights=None)
    state = load_state_dict(arch, weights)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"`weights` do not match torchvision's {arch!r}: {exc}") from exc
    return model


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def vgg_layer_names(features: nn.Sequential) -> list[str]:
    """``conv1_1, relu1_1, ..., pool1, conv2_1, ...`` for a torchvision VGG ``features`` block."""
    names, block, index = [], 1, 1
    for module in features:
        if isinstance(module, nn.Conv2d):
            names.append(f"conv{block}_{index}")
        elif isinstance(module, nn.ReLU):
            names.append(f"relu{block}_{index}")
            index += 1
        else:
            names.append(f"pool{block}")
            block, index = block + 1, 1
    return names


class FeatureExtractor(nn.Module):
    """A frozen backbone truncated after its last tap; ``forward`` returns the taps' outputs in order.

    The backbone stays in eval mode whatever ``.train()`` is called with (BatchNorm statistics and
    dropout of a frozen network must not change during training).
    """

    def __init__(self, stages: OrderedDict[str, nn.Module], taps: Sequence[str]) -> None:
        super().__init__()
        unknown = [t for t in taps if t not in stages]
        if unknown:
            raise ValueError(f"`layers` must be among {list(stages)}, got unknown {unknown}")
        last = max(list(stages).index(t) for t in taps)
        self.body = nn.Sequential(OrderedDict(list(stages.items())[: last + 1]))
        for stage in self.body:
            if isinstance(stage, nn.ReLU):  # an in-place ReLU would overwrite a tapped conv output
                stage.inplace = False
        self.taps = tuple(taps)
        freeze(self)

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        found = {}
        for name, stage in self.body.named_children():
            x = stage(x)
            if name in self.taps:
                found[name] = x
        return [found[t] for t in self.taps]


def smallest_input(trunk: nn.Module, limit: int = 256) -> int:
    """The smallest square input side a frozen trunk accepts (pooling without padding needs >= 2**k).

    Probed once on tiny zero images; lets the losses reject a too-small input with a clear error
    instead of torch's "Output size is too small" from deep inside the network.
    """
    side = 1
    with torch.no_grad():
        while side <= limit:
            try:
                trunk(torch.zeros(1, 3, side, side))
                return side
            except RuntimeError:
                side += 1
    raise ValueError(f"no input up to {limit}x{limit} runs through this backbone")


def named_stages(arch: str, model: nn.Module) -> OrderedDict[str, nn.Module]:
    """The backbone of ``model`` as named sequential stages that layers can be tapped at."""
    if arch.startswith("vgg"):
        return OrderedDict(zip(vgg_layer_names(model.features), model.features, strict=True))
    if arch.startswith("resnet"):
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        return OrderedDict((n, getattr(model, n)) for n in names)
    raise ValueError(f"`backbone` {arch!r} has no feature stages defined")
