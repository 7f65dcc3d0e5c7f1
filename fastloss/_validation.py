"""Shared input checks and reductions behind every loss and wrapper.

Every check raises a ``TypeError`` or ``ValueError`` whose message names the argument, what was
expected and what was given, so a bad call fails at the library boundary instead of deep inside
torch or cripser.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")


def check_reduction(reduction: object) -> None:
    check_choice("reduction", reduction, REDUCTIONS)


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def check_tensor(name: str, x: object, *, floating: bool = True) -> Tensor:
    """Check that ``x`` is a non-empty tensor (and floating point when ``floating``)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(x.shape)}")
    return x


def check_ndim(name: str, x: Tensor, allowed: Sequence[int], layout: str) -> None:
    if x.ndim not in allowed:
        raise ValueError(
            f"`{name}` must have {' or '.join(map(str, allowed))} dimensions ({layout}), "
            f"got {x.ndim} dimensions with shape {tuple(x.shape)}"
        )


def check_pair(input: Tensor, target: Tensor) -> None:
    """``input`` and ``target`` must agree in shape and device."""
    if input.shape != target.shape:
        raise ValueError(
            f"`input` and `target` must have the same shape, got {tuple(input.shape)} and {tuple(target.shape)}"
        )
    if input.device != target.device:
        raise ValueError(
            f"`input` and `target` must be on the same device, got {input.device} and {target.device}"
        )


def check_finite(name: str, x: Tensor) -> None:
    finite = torch.isfinite(x.detach())
    if not bool(finite.all()):
        n_bad = int((~finite).sum())
        raise ValueError(f"`{name}` must be finite, got {n_bad} NaN/Inf value(s)")


def check_range(name: str, x: Tensor, low: float, high: float, what: str = "values") -> None:
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo < low or hi > high:
        raise ValueError(f"`{name}` {what} must lie in [{low}, {high}], got values in [{lo:.4g}, {hi:.4g}]")


def check_binary(name: str, x: Tensor) -> None:
    if not bool(((x == 0) | (x == 1)).all()):
        sample = torch.unique(x.detach().flatten())[:5].tolist()
        raise ValueError(f"`{name}` must be a binary mask with values in {{0, 1}}, got values such as {sample}")


def check_input_range(input_range: object) -> tuple[float, float]:
    """Validate an ``(low, high)`` pixel range such as ``(0, 1)`` or ``(-1, 1)``."""
    if not isinstance(input_range, Sequence) or len(input_range) != 2:
        raise ValueError(f"`input_range` must be a pair (low, high), got {input_range!r}")
    low, high = (float(v) for v in input_range)
    if not high > low:
        raise ValueError(f"`input_range` must satisfy high > low, got {input_range!r}")
    return low, high


def check_images(
    input: object, target: object, min_size: int = 1, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """Checks shared by the image losses: (B, C, H, W) float images with C in {1, 3}, at least
    ``min_size`` pixels on each side, same dtype, finite. Returns them cast to ``dtype`` (the
    backbone's), so e.g. float16 images run through a float32 network."""
    input = check_tensor("input", input)
    target = check_tensor("target", target)
    check_ndim("input", input, (4,), "B, C, H, W")
    check_pair(input, target)
    if input.dtype != target.dtype:
        raise ValueError(f"`input` and `target` must have the same dtype, got {input.dtype} and {target.dtype}")
    if min(input.shape[-2:]) < min_size:
        raise ValueError(
            f"`input` spatial size {tuple(input.shape[-2:])} is too small for this backbone: "
            f"it needs at least {min_size}x{min_size}"
        )
    if input.shape[1] not in (1, 3):
        raise ValueError(f"`input` must have 1 or 3 channels, got {input.shape[1]} (shape {tuple(input.shape)})")
    check_finite("input", input)
    check_finite("target", target)
    if dtype is not None and input.dtype != dtype:
        input, target = input.to(dtype), target.to(dtype)
    return input, target


def upcast(x: Tensor) -> Tensor:
    """Half-precision (float16/bfloat16) values to float32; float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def reduce_loss(per_item: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` in float32 (or float64 when the values already are).

    Reducing in at least float32 keeps the final number exact when the per-item values come from a
    half-precision computation (see :class:`fastloss.AMPLoss`).
    """
    per_item = upcast(per_item)
    if reduction == "mean":
        return per_item.mean()
    if reduction == "sum":
        return per_item.sum()
    return per_item
