r"""The one base behind the feature-matching losses (:class:`PerceptualLoss`, :class:`LPIPSLoss`).

.. math::

    L(x, y) = \sum_l w_l \, D_l\big(\phi_l(x), \phi_l(y)\big)

with :math:`\phi_l` the taps of a frozen backbone and :math:`D_l` a per-sample distance. The base owns
everything the two losses share: input validation, the target's features (under ``no_grad``; also
reachable through :meth:`FeatureLoss.target_features` so :class:`fastloss.CachedTarget` can cache
them), the weighted sum and its float32 reduction, the eval lock, and the backbone's fast path:

- ``channels_last``: the backbone's weights are converted once and its input made channels-last
  on entry (no per-call weight re-layout);
- ``compute_dtype``: the backbone's weights are cast once to a low-precision dtype; inputs are cast on
  entry, and the per-layer distances and the reduction stay in float32. This replaces autocast, which
  re-casts every weight on every call.

Both start unset (``None``): the loss then runs channels-first in float32, and a preset may choose
them for the device it runs on. A value given explicitly is never overridden by a preset.

An opt-in static-shape path, :meth:`FeatureLoss.use_static_shapes`, compiles the frozen backbone with
``torch.compile`` for repeated input shapes (``mode="reduce-overhead"`` on CUDA, which replays CUDA
Graphs); after ``max_shapes`` distinct shapes it falls back to eager execution with a warning, instead
of recompiling without end.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validation import (
    check_bool,
    check_float_dtype,
    check_images,
    check_input_range,
    check_int,
    check_reduction,
    far_outside,
    reduce_loss,
    upcast,
)
from .._warnings import warn

__all__ = ["FeatureLoss", "to_unit_range"]


def _drop_rebuilt(module: FeatureLoss, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """``state_dict`` hook: leave out the frozen networks the constructor rebuilds from ``weights``."""
    heads = tuple(f"{prefix}{name}." for name in module.rebuilt_modules)
    for key in [k for k in state_dict if k.startswith(heads)]:
        del state_dict[key]


def _keep_rebuilt(module: FeatureLoss, state_dict: dict, prefix: str, *args) -> None:
    """``load_state_dict`` pre-hook: the networks rebuilt from ``weights`` keep their values (a checkpoint
    that still holds them, fastloss <= 0.2, loads with that copy ignored); a frozen network missing from
    the checkpoint keeps its own (a checkpoint of a loss whose weights were rebuilt, loaded into a random one)."""
    heads = tuple(f"{prefix}{name}." for name in module.rebuilt_modules)
    for key in [k for k in state_dict if k.startswith(heads)]:
        del state_dict[key]
    for name in module.frozen_modules:
        for key, value in getattr(module, name).state_dict(keep_vars=True).items():
            state_dict.setdefault(f"{prefix}{name}.{key}", value)



def _first(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else int(value)


def _scaled(start: int, stop: int, features: int, pixels: int) -> tuple[int, int]:
    """``[start, stop)`` in input pixels of a window ``pixels`` wide, in a map ``features`` wide."""
    scale = features / pixels
    lo = min(int(round(start * scale)), features - 1)
    return lo, max(lo + 1, min(features, int(round(stop * scale))))


def to_unit_range(x: Tensor, input_range: tuple[float, float]) -> Tensor:
    """Map ``x`` from ``input_range`` to [0, 1] and repeat a single channel to three."""
    low, high = input_range
    if (low, high) != (0.0, 1.0):
        x = (x - low) / (high - low)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class FeatureLoss(nn.Module):
    """Base class: subclasses build a frozen backbone and implement :meth:`backbone`, :meth:`extract`
    and :meth:`layer_distance`, and set ``layer_weights``."""

    preset_kind = "perceptual"
    layer_weights: tuple[float, ...]
    #: submodules holding frozen networks
    frozen_modules: tuple[str, ...] = ()
    #: those of them the constructor rebuilds from ``weights`` (torchvision's or a file; not a random init):
    #: they are left out of ``state_dict``
    rebuilt_modules: tuple[str, ...] = ()

    def __init__(self, input_range: tuple[float, float], reduction: str) -> None:
        super().__init__()
        check_reduction(reduction)
        self.input_range = check_input_range(input_range)
        self.reduction = reduction
        self.channels_last = False
        self.explicit: dict[str, object] = {}  # settings the user gave: presets never override them
        # the fast-path settings as set (by the user or a preset); None: never set, the default applies
        self.settings: dict[str, object] = {"channels_last": None, "compute_dtype": None}
        self.min_size = 1
        self.register_state_dict_post_hook(_drop_rebuilt)
        self.register_load_state_dict_pre_hook(_keep_rebuilt)

    def _configure(self, channels_last: bool | None, compute_dtype: torch.dtype | None) -> None:
        """Apply the fast-path settings given to the constructor (call once the backbone exists)."""
        if channels_last is not None:
            check_bool("channels_last", channels_last, allow_none=True)
            self.explicit["channels_last"] = channels_last
            self.use_channels_last(channels_last)
        if compute_dtype is not None:
            self.explicit["compute_dtype"] = compute_dtype
            self.use_dtype(compute_dtype)

    def summary(self) -> str:
        """The loss, its backbone and its compute settings in a few words (for stack descriptions)."""
        dtype = str(self.compute_dtype).replace("torch.", "")
        return f"{type(self).__name__}({self.backbone_name}, {dtype}{', channels_last' if self.channels_last else ''})"

    # --- subclass API -------------------------------------------------------------------------
    def backbone(self) -> nn.Module:
        """The frozen network whose weights the fast path casts and re-lays out."""
        raise NotImplementedError

    def extract(self, x: Tensor) -> list[Tensor]:
        """The taps' outputs for images ``x`` already in [0, 1] with 3 channels (any dtype/layout)."""
        raise NotImplementedError

    def layer_distance(self, index: int, a: Tensor, b: Tensor) -> Tensor:
        """Per-sample distance ``(B,)`` between input and target features of tap ``index``, in float32."""
        raise NotImplementedError

    # --- the fast path ------------------------------------------------------------------------
    def use_channels_last(self, enabled: bool = True) -> FeatureLoss:
        """Lay the backbone's weights out channels-last once (and its inputs on entry); returns ``self``."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for module in self.backbone().modules():
            for param in module.parameters(recurse=False):
                if param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=fmt)
        self.channels_last = enabled
        self._settings()["channels_last"] = enabled
        return self

    def use_dtype(self, dtype: torch.dtype) -> FeatureLoss:
        """Cast the backbone's weights once to ``dtype`` (e.g. ``torch.bfloat16``); returns ``self``.

        Inputs are cast to it on entry; distances and the reduction stay in float32.
        """
        check_float_dtype("compute_dtype", dtype)
        self.backbone().to(dtype)
        self._settings()["compute_dtype"] = dtype
        if self.channels_last:
            self.use_channels_last(True)
        return self

    def use_static_shapes(self, enabled: bool = True, max_shapes: int = 4, backend: str = "inductor",
                          mode: str | None = None) -> FeatureLoss:
        """Run the backbone through ``torch.compile`` (one graph per input shape; ``mode`` defaults to
        ``"reduce-overhead"`` on CUDA — CUDA Graphs — and ``"default"`` elsewhere). After ``max_shapes``
        distinct shapes, fall back to eager with a one-time warning. Returns ``self``."""
        if enabled:
            check_int("max_shapes", max_shapes, 1, expected="a positive int")
        self.static_shapes = {"backend": backend, "mode": mode, "max_shapes": max_shapes} if enabled else None
        self.__dict__["_compiled"] = {}  # plain attribute: never in state_dict, rebuilt per device
        self.__dict__["_shapes_seen"] = set()
        return self

    def run_backbone(self, x: Tensor):
        """The backbone on ``x``: compiled for its shape on the static-shape path, eager otherwise."""
        static = getattr(self, "static_shapes", None)
        backbone = self.backbone()
        if not static or torch.compiler.is_compiling():
            return backbone(x)
        seen = self.__dict__.setdefault("_shapes_seen", set())
        signature = (tuple(x.shape), x.dtype, x.device.type, torch.is_grad_enabled())
        if signature not in seen:
            if len(seen) >= static["max_shapes"]:
                if not self.__dict__.get("_static_warned"):
                    self.__dict__["_static_warned"] = True
                    warn(
                        f"{type(self).__name__}: the static-shape path has seen {len(seen)} input shapes "
                        f"(max_shapes={static['max_shapes']}); shape {tuple(x.shape)} runs eagerly",
                    )
                return backbone(x)
            seen.add(signature)
        compiled = self.__dict__.setdefault("_compiled", {})
        key = x.device.type
        if key not in compiled:
            mode = static["mode"] or ("reduce-overhead" if x.device.type == "cuda" else "default")
            compiled[key] = torch.compile(backbone, backend=static["backend"], mode=mode if static["backend"] == "inductor"
                                          else None, dynamic=False)
        return compiled[key](x)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_compiled", None)  # compiled graphs do not copy; a copy compiles its own
        state.pop("_shapes_seen", None)
        return state

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the backbone computes in (its weights' dtype)."""
        return next(self.backbone().parameters()).dtype

    def _settings(self) -> dict[str, object]:
        return self.__dict__.setdefault("settings", {"channels_last": None, "compute_dtype": None})  # older pickles

    def settings_repr(self) -> str:
        """``channels_last=None, compute_dtype=None`` for defaults (a preset may choose them), else the values
        set, marked ``(explicit)`` when the user gave them (presets never override those)."""
        parts = []
        for name in ("channels_last", "compute_dtype"):
            value = self._settings().get(name)
            mark = " (explicit)" if name in self.explicit else ""
            parts.append(f"{name}={value}{mark}")
        return ", ".join(parts)

    def declared_compute_dtype(self) -> torch.dtype | None:
        """The low precision this loss is set to compute in, known before running (``None``: float32/64);
        a benchmark drops it where the device only emulates that dtype."""
        dtype = self.compute_dtype
        return dtype if dtype in (torch.float16, torch.bfloat16) else None

    # --- shared computation -------------------------------------------------------------------
    def _buffer_dtype(self) -> torch.dtype:
        buffers = list(self.buffers(recurse=False))
        return buffers[0].dtype if buffers else torch.float32

    def check(self, input: object, target: object) -> tuple[Tensor, Tensor]:
        """Validate a call; returns the images in the loss's float dtype (float32, or float64 after ``.double()``).

        Images reaching far outside ``input_range`` give a one-time warning per loss: the target more
        than half the range's width beyond it (0..255 or -1..1 pixels with ``input_range=(0, 1)``),
        the input more than twice the width (an unconstrained network's output may overshoot for a
        while: an error would stop a correct run, and a warning for that would be noise). Data in the
        wrong range would otherwise give a wrong loss without a word.
        """
        input, target = check_images(input, target, self.min_size, self._buffer_dtype())
        if not self.__dict__.get("_range_warned"):
            low, high = self.input_range
            for name, x, margin in (("target", target, 0.5), ("input", input, 2.0)):
                seen = far_outside(x, low, high, margin)
                if seen is not None:
                    self.__dict__["_range_warned"] = True
                    warn(
                        f"{type(self).__name__}: `{name}` values lie in [{seen[0]:.4g}, {seen[1]:.4g}], far outside "
                        f"input_range={self.input_range}; the loss reads them as if they were in that range. Pass "
                        "the images' range, e.g. input_range=(0, 255) for 8-bit pixels (warned once)"
                    )
                    break
        return input, target

    def prepare(self, x: Tensor) -> Tensor:
        """Images from ``input_range`` to what the backbone takes (subclasses add their normalisation)."""
        return to_unit_range(x, self.input_range)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The taps' outputs for validated images ``x`` (normalised in float32, then cast and laid out)."""
        x = self.prepare(x)
        dtype = self.compute_dtype
        if x.dtype != dtype:
            x = x.to(dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.extract(x)

    def target_features(self, target: Tensor) -> list[Tensor]:
        """The target's features, without autograd (they are constants of the loss)."""
        with torch.no_grad():
            return self.feature_maps(target)

    def combine(self, input_feats: list[Tensor], target_feats: list[Tensor]) -> Tensor:
        """The weighted sum of per-layer distances, reduced in float32."""
        per_sample = sum(
            w * upcast(self.layer_distance(i, a, b))
            for i, (w, a, b) in enumerate(zip(self.layer_weights, input_feats, target_feats, strict=True))
        )
        return reduce_loss(per_sample, self.reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        input, target = self.check(input, target)
        target_feats = self.target_features(target)
        return self.combine(self.feature_maps(input), target_feats)

    # --- windows (the hook behind fastloss.TiledLoss) ---------------------------------------------
    def receptive_field(self) -> tuple[int, int]:
        """``(size, stride)`` in input pixels of the deepest tap: the side of the input square one
        feature of the last tap depends on, and how many input pixels one step of its map spans.

        Computed from the backbone's convolutions and poolings in order (a ResNet's ``downsample``
        branch runs beside its block and is not counted), so it is the theoretical field; the part that
        matters in practice (the effective receptive field) is much smaller.
        """
        size, jump = 1, 1
        skip: set[int] = set()
        for name, module in self.backbone().named_modules():
            if name.endswith("downsample"):
                skip.update(id(m) for m in module.modules())
            if id(module) in skip or not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                continue
            k, s, d = (_first(getattr(module, a, 1)) for a in ("kernel_size", "stride", "dilation"))
            size += (d * (k - 1)) * jump
            jump *= s
        return size, jump

    def window_distance(self, input_feats: list[Tensor], target_feats: list[Tensor],
                        boxes: tuple[int, int, int, int] | list[tuple[int, int, int, int]],
                        size: tuple[int, int]) -> Tensor:
        """The weighted per-sample distance ``(B,)`` (float32) on a box of each window, unreduced.

        ``input_feats``/``target_feats`` are the taps' outputs for windows of spatial ``size``;
        ``boxes`` is one ``(top, left, bottom, right)`` in the windows' input pixels (shared by the
        batch) or one per sample. Each tap's maps are cropped to the box scaled to their resolution
        (rounded; at least one feature), so the distance is taken on the box only and the window's
        margin around it is context. With the whole window as box this is the loss's per-sample value.
        """
        height, width = size
        per_sample = isinstance(boxes, list)
        total = 0.0
        for i, (w, a, b) in enumerate(zip(self.layer_weights, input_feats, target_feats, strict=True)):
            h, wd = a.shape[-2:]
            if per_sample:
                parts = []
                for n, box in enumerate(boxes):
                    (y0, y1), (x0, x1) = _scaled(box[0], box[2], h, height), _scaled(box[1], box[3], wd, width)
                    parts.append(upcast(self.layer_distance(i, a[n:n + 1, :, y0:y1, x0:x1],
                                                            b[n:n + 1, :, y0:y1, x0:x1])))
                dist = torch.cat(parts)
            else:
                (y0, y1), (x0, x1) = _scaled(boxes[0], boxes[2], h, height), _scaled(boxes[1], boxes[3], wd, width)
                dist = upcast(self.layer_distance(i, a[..., y0:y1, x0:x1], b[..., y0:y1, x0:x1]))
            total = total + w * dist
        return total

    def output_shape(self, input: Tensor, target: Tensor | None = None) -> torch.Size:
        """``(B,)`` with ``reduction="none"``, else a scalar (read from shapes only)."""
        return torch.Size((input.shape[0],) if self.reduction == "none" else ())

    def train(self, mode: bool = True) -> FeatureLoss:
        """Always eval: a frozen backbone's BatchNorm statistics and dropout never change."""
        return super().train(False)
