"""The one set of argument and input checks behind every loss, wrapper and schedule.

Every check raises a ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong value)
whose message names the argument, what was expected and what was given, so a bad call fails at the
library boundary instead of deep inside torch, numpy or cripser. Checks that normalise return the
value in its canonical form (an ``int``, a ``float``, a tuple). This module imports nothing from
fastloss: every layer may use it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")
#: cubical complex constructions: ``"V"`` (pixels are vertices) and ``"T"`` (pixels are top cells)
CONSTRUCTIONS = ("V", "T")


# --- scalars ------------------------------------------------------------------------------------
def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")


def check_reduction(reduction: object) -> None:
    check_choice("reduction", reduction, REDUCTIONS)


def check_construction(construction: object) -> None:
    check_choice("construction", construction, CONSTRUCTIONS)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_bool(name: str, value: object, *, allow_none: bool = False) -> bool | None:
    """Return ``value`` if it is a ``bool`` (or ``None`` when ``allow_none``); else ``TypeError``."""
    if isinstance(value, bool) or (allow_none and value is None):
        return value
    raise TypeError(f"`{name}` must be a bool{' or None' if allow_none else ''}, got {type(value).__name__}")


def check_int(
    name: str, value: object, minimum: int | None = None, maximum: int | None = None, *, expected: str | None = None
) -> int:
    """Return ``value`` as an ``int`` if it is an integer (not a bool) in ``[minimum, maximum]``.

    Without ``expected``: ``TypeError`` "`x` must be an int, got float (2.0)" for another type,
    ``ValueError`` "`x` must be >= 1, got 0" (or "an int in [0, 3]" with both bounds) out of range.
    With ``expected`` (e.g. ``"a non-negative int"``) every failure is one ``ValueError``
    "`x` must be <expected>, got <value>".
    """
    in_range = _is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if in_range:
        return int(value)
    if expected is not None:
        raise ValueError(f"`{name}` must be {expected}, got {value!r}")
    if not _is_int(value):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r})")
    if maximum is None:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    if minimum is None:
        raise ValueError(f"`{name}` must be <= {maximum}, got {value}")
    raise ValueError(f"`{name}` must be an int in [{minimum}, {maximum}], got {value}")


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum``."""
    return check_int(name, value, minimum)


def check_number(name: str, value: object, minimum: float | None = None, *, kind: str = "number") -> float:
    """Return ``value`` as a ``float`` if it is a finite real number (not a bool) ``>= minimum``.

    ``TypeError`` "`x` must be a number, got str ('a')" for another type; ``ValueError``
    "`x` must be a finite number >= 0.0, got -1" for NaN, inf or a value below ``minimum``.
    ``kind`` names the expected type in both (e.g. ``"float"``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a {kind}, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"`{name}` must be a finite {kind}{bound}, got {value!r}")
    return float(value)


# --- sequences ----------------------------------------------------------------------------------
def _is_sequence(value: object) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping, Tensor))


def as_tuple(value: Iterable | None) -> tuple | None:
    """``None`` stays ``None``; any other iterable becomes a tuple (scalars are left to the checks)."""
    if value is None or not _is_sequence(value):
        return value
    return tuple(value)


def check_ints(
    name: str, value: object, *, minimum: int | None = None, nonempty: bool = True, expected: str | None = None
) -> tuple[int, ...] | None:
    """Return ``value`` as a tuple of ints (``None`` stays ``None``): ``dims=[0, 1]``, ``betti=(1, 0)``.

    ``TypeError`` for a scalar or a string ("`dims` must be a non-empty sequence of ints, got int (1)"),
    ``ValueError`` naming the tuple for an empty one (when ``nonempty``), a non-int entry or an entry
    below ``minimum``.
    """
    if value is None:
        return None
    if expected is None:
        kind = "non-negative ints" if minimum == 0 else "ints" if minimum is None else f"ints >= {minimum}"
        expected = f"a {'non-empty ' if nonempty else ''}sequence of {kind}"
    if not _is_sequence(value):
        raise TypeError(f"`{name}` must be {expected}, got {type(value).__name__} ({value!r})")
    items = tuple(value)
    if (nonempty and not items) or not all(_is_int(v) and (minimum is None or v >= minimum) for v in items):
        raise ValueError(f"`{name}` must be {expected}, got {items!r}")
    return tuple(int(v) for v in items)


def check_floats(name: str, value: object, length: int | None = None) -> tuple[float, ...]:
    """A non-empty tuple of finite non-negative floats (of ``length`` entries when given)."""
    if not _is_sequence(value) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` must be a sequence of floats, got {type(value).__name__} ({value!r})")
    if length is not None and len(value) != length:
        raise ValueError(f"`{name}` must have {length} entries, got {len(value)} ({tuple(value)!r})")
    if not value:
        raise ValueError(f"`{name}` must not be empty, got {tuple(value)!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"`{name}` must hold floats, got {type(v).__name__} ({v!r}) in {tuple(value)!r}")
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"`{name}` must hold finite non-negative floats, got {tuple(value)!r}")
        out.append(float(v))
    return tuple(out)


def check_per_dim(name: str, value: object, n: int | None = None) -> tuple[int, ...]:
    """A positive int for every spatial dimension: an int (repeated ``n`` times) or a sequence of ``n`` ints
    (``n=None``: any length). E.g. ``DownsampledLoss``'s ``factor`` and ``size``."""
    expected = f"a positive int or {'a sequence of' if n is None else n} positive ints"
    if _is_int(value):
        check_int(name, value, 1)
        return (int(value),) * (1 if n is None else n)
    if not _is_sequence(value):
        raise TypeError(f"`{name}` must be {expected}, got {type(value).__name__} ({value!r})")
    values = tuple(value)
    bad = [v for v in values if not _is_int(v)]
    if bad:
        raise TypeError(f"`{name}` must be {expected}, got {type(bad[0]).__name__} entries in {values!r}")
    if (n is not None and len(values) != n) or not values or any(v < 1 for v in values):
        raise ValueError(f"`{name}` must be {expected}, got {value!r}")
    return tuple(int(v) for v in values)


def check_float_dtype(name: str, dtype: object) -> torch.dtype:
    """Return ``dtype`` if it is a floating-point ``torch.dtype``; else ``TypeError``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"`{name}` must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


# --- arrays -------------------------------------------------------------------------------------
def check_map(f: object, who: str, *, allow_nan: bool = True, max_pixels: int | None = None) -> np.ndarray:
    """A 2D or 3D non-empty map as a C-contiguous float32 (float16/float32 input) or float64 array.

    ``who`` names the computation in the messages ("the native engine", "Betti matching").
    ``max_pixels`` bounds the padded size (``prod(shape + 2)``) when given.
    """
    f = np.asarray(f)
    if f.ndim not in (2, 3):
        raise ValueError(f"{who} computes 2D and 3D maps, got {f.ndim}D")
    if f.size == 0:
        raise ValueError(f"{who} cannot compute an empty map of shape {f.shape}")
    if max_pixels is not None and np.prod([d + 2 for d in f.shape]) >= max_pixels:
        bound = f"2**{max_pixels.bit_length() - 1}" if max_pixels & (max_pixels - 1) == 0 else str(max_pixels)
        raise ValueError(f"{who} supports maps of fewer than {bound} padded pixels, got shape {f.shape}")
    f = np.ascontiguousarray(f, dtype=np.float32 if f.dtype in (np.float16, np.float32) else np.float64)
    if not allow_nan and np.isnan(f).any():
        raise ValueError(f"{who} cannot compute a map with NaN values")
    return f


# --- tensors ------------------------------------------------------------------------------------
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
    x = x.detach()
    if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0:
        return  # integers and booleans are always finite
    if not x.is_complex():  # one reduction: NaN and +-Inf reach the min or the max (10x cheaper than isfinite().all())
        lo, hi = (float(v) for v in torch.aminmax(x))
        if math.isfinite(lo) and math.isfinite(hi):
            return
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        n_bad = int((~finite).sum())
        raise ValueError(f"`{name}` must be finite, got {n_bad} NaN/Inf value(s)")


def check_range(name: str, x: Tensor, low: float, high: float, what: str = "values") -> None:
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo < low or hi > high:
        raise ValueError(f"`{name}` {what} must lie in [{low}, {high}], got values in [{lo:.4g}, {hi:.4g}]")


def far_outside(x: Tensor, low: float, high: float, margin: float = 0.5) -> tuple[float, float] | None:
    """``(min, max)`` of ``x`` when it reaches further than ``margin`` times ``high - low`` outside
    ``[low, high]`` (e.g. 0..255 pixels given as 0..1), else ``None``."""
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    slack = margin * (high - low)
    return (lo, hi) if lo < low - slack or hi > high + slack else None


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


LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_images(
    input: object, target: object, min_size: int = 1, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """Checks shared by the image losses: (B, C, H, W) float images with C in {1, 3}, at least
    ``min_size`` pixels on each side, finite. Returns them cast to ``dtype`` (the loss's), so e.g.
    float16 images run through a float32 network.

    Their dtypes must agree, except that either may be float16/bfloat16 (what a network under
    ``torch.autocast`` returns, next to a float32 target): both are then cast to ``dtype`` (or to
    float32 without one). float64 next to float32 is refused: a float64 pipeline is deliberate.
    """
    input = check_tensor("input", input)
    target = check_tensor("target", target)
    check_ndim("input", input, (4,), "B, C, H, W")
    check_pair(input, target)
    if input.dtype != target.dtype:
        if input.dtype not in LOW_PRECISION and target.dtype not in LOW_PRECISION:
            raise ValueError(
                f"`input` and `target` must have the same dtype, got {input.dtype} and {target.dtype} "
                "(a float16/bfloat16 one next to float32, as under torch.autocast, is accepted)"
            )
        if dtype is None:
            dtype = torch.promote_types(upcast(input).dtype, upcast(target).dtype)
    if min(input.shape[-2:]) < min_size:
        raise ValueError(
            f"`input` spatial size {tuple(input.shape[-2:])} is too small for this backbone: "
            f"it needs at least {min_size}x{min_size}"
        )
    if input.shape[1] not in (1, 3):
        raise ValueError(f"`input` must have 1 or 3 channels, got {input.shape[1]} (shape {tuple(input.shape)})")
    check_finite("input", input)
    check_finite("target", target)
    if dtype is not None:
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
