"""DownsampledLoss: evaluate a loss on downsampled input and target."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_bool, check_choice, check_ndim, check_per_dim
from .base import LossWrapper, _meta, loss_output_shape

__all__ = ["DownsampledLoss"]

MODES = ("area", "bilinear", "max")


class DownsampledLoss(LossWrapper):
    r"""Evaluate ``loss`` on ``input`` and ``target`` downsampled by ``factor`` (or to ``size``).

    The gradient flows back to full resolution through the resampling. Works for 2D
    :math:`(B, C, H, W)` and 3D :math:`(B, C, D, H, W)` inputs.

    Args:
        loss: the loss to wrap.
        factor: downsampling factor, an int or one per spatial dimension (default 2). A trailing
            partial window is kept (``ceil``), so no border structure is dropped.
        size: output spatial size instead of ``factor``: an int (every spatial dimension) or one per dimension.
        mode: ``"area"`` (average pooling; images), ``"bilinear"`` (bilinear/trilinear interpolation)
            or ``"max"`` (max pooling; for topology: keeps thin foreground connected; the target mask is
            max-pooled too so it stays binary). ``None`` (default) picks by the wrapped loss's kind:
            ``"max"`` for topology losses, ``"area"`` otherwise.
        antialias: low-pass before bilinear downsampling (2D only; torch has no 3D antialias).

    Example:
        >>> loss = DownsampledLoss(torch.nn.MSELoss(), factor=2)
        >>> loss(torch.ones(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)).item()
        1.0
    """

    def __init__(
        self,
        loss: nn.Module,
        factor: int | Sequence[int] | None = None,
        size: int | Sequence[int] | None = None,
        mode: str | None = None,
        antialias: bool = True,
    ) -> None:
        if mode is None:
            mode = "max" if getattr(loss, "preset_kind", None) == "topology" else "area"
        check_choice("mode", mode, MODES)
        if factor is not None and size is not None:
            raise ValueError(f"give either `factor` or `size`, not both (got factor={factor!r}, size={size!r})")
        factor = 2 if factor is None and size is None else factor
        if factor is not None:
            per_dim = check_per_dim("factor", factor)  # an int stays an int: one factor for every dimension
            factor = per_dim[0] if isinstance(factor, numbers.Integral) else per_dim
        else:
            per_dim = check_per_dim("size", size)
            size = per_dim[0] if isinstance(size, numbers.Integral) else per_dim
        check_bool("antialias", antialias)
        super().__init__(loss)  # validate first: joining a stack changes the wrappers inside
        self.factor, self.size, self.mode, self.antialias = factor, size, mode, antialias

    def output_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The spatial size the wrapped loss sees for an input of spatial size ``spatial``."""
        n = len(spatial)
        if self.size is not None:
            size = check_per_dim("size", self.size, n)
            if any(s > t for s, t in zip(size, spatial, strict=True)):
                raise ValueError(f"`size` {size} must not exceed the input's spatial size {tuple(spatial)}")
            return size
        factor = check_per_dim("factor", self.factor, n)
        if any(s < k for s, k in zip(spatial, factor, strict=True)):
            raise ValueError(
                f"`input` spatial size {tuple(spatial)} is too small to downsample by factor {factor}: "
                "every spatial dimension must be at least the factor"
            )
        return tuple(math.ceil(s / k) for s, k in zip(spatial, factor, strict=True))

    def resize(self, x: Tensor, size: tuple[int, ...]) -> Tensor:
        n = len(size)
        if not x.is_floating_point():
            x = x.float()
        if self.mode == "bilinear":
            if n == 3 and self.antialias:
                raise ValueError("`antialias=True` is not supported for 3D inputs; use antialias=False or mode='area'")
            mode = "bilinear" if n == 2 else "trilinear"
            return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=self.antialias and n == 2)
        if self.size is not None:
            pool = {("area", 2): F.adaptive_avg_pool2d, ("area", 3): F.adaptive_avg_pool3d,
                    ("max", 2): F.adaptive_max_pool2d, ("max", 3): F.adaptive_max_pool3d}[self.mode, n]
            return pool(x, size)
        factor = check_per_dim("factor", self.factor, n)
        pool = {("area", 2): F.avg_pool2d, ("area", 3): F.avg_pool3d,
                ("max", 2): F.max_pool2d, ("max", 3): F.max_pool3d}[self.mode, n]
        return pool(x, factor, factor, ceil_mode=True)

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        check_ndim("input", input, (4, 5), "B, C, H, W or B, C, D, H, W")
        size = self.output_size(input.shape[2:])
        small_target = None if target is None else self.resize(target, size)
        return self.loss(self.resize(input, size), small_target)

    def output_shape(self, input: Tensor, target: Tensor | None) -> torch.Size:
        check_ndim("input", input, (4, 5), "B, C, H, W or B, C, D, H, W")
        size = self.output_size(input.shape[2:])
        small = (*input.shape[:2], *size)
        small_target = None if target is None else _meta((*target.shape[:2], *size), target)
        return loss_output_shape(self.loss, _meta(small, input), small_target)

    def summary(self) -> str:
        return f"{type(self).__name__}({self.factor if self.size is None else self.size}, {self.mode})"

    def extra_repr(self) -> str:
        how = f"size={self.size}" if self.size is not None else f"factor={self.factor}"
        return f"{how}, mode={self.mode!r}, antialias={self.antialias}"
