"""AMPLoss: run a loss under autocast in the device's *native* low precision, return float32."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import hardware
from .._validation import check_choice, upcast
from .._warnings import warn
from .base import LossWrapper

__all__ = ["AMPLoss"]

DTYPES = (None, torch.float16, torch.bfloat16)


class AMPLoss(LossWrapper):
    r"""Run ``loss`` under ``torch.autocast`` for the input's device and return float32.

    ``dtype=None`` (default) picks the device's native low-precision dtype (bfloat16 where it is native,
    else float16; see :func:`fastloss.hardware.capabilities`). Where neither is native — an AVX2-only CPU,
    where bfloat16 is emulated and typically tens of times slower — the loss runs in float32 and a
    one-time ``UserWarning`` says why. An explicit ``dtype`` is honoured even where it is emulated, with a
    one-time ``UserWarning`` naming the device and the dtype.

    fastloss' own losses reduce in float32 inside autocast (per-layer distances, LPIPS' channel
    normalisation), so the result is finite for inputs in range; the returned value is float32. Use it
    with ``torch.amp.GradScaler`` as usual when the dtype is float16.

    Args:
        loss: the loss to wrap.
        dtype: ``torch.float16``, ``torch.bfloat16`` or ``None`` for the device's native one.

    Example:
        >>> loss = AMPLoss(torch.nn.MSELoss(), dtype=torch.bfloat16)
        >>> loss(torch.ones(4), torch.zeros(4)).dtype
        torch.float32
    """

    def __init__(self, loss: nn.Module, dtype: torch.dtype | None = None) -> None:
        check_choice("dtype", dtype, DTYPES)
        super().__init__(loss)
        self.dtype = dtype
        self._warned: set[tuple[str, str]] = set()

    def _warn_once(self, device: torch.device, key: str, message: str) -> None:
        if (device.type, key) not in self._warned:
            self._warned.add((device.type, key))
            warn(message)

    @torch.compiler.disable
    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype used on ``device`` (``None``: float32, no autocast)."""
        caps = hardware.capabilities(device)
        if self.dtype is None:
            if caps.low_precision is None:
                self._warn_once(
                    device, "fallback",
                    f"AMPLoss: no native low-precision dtype on {caps.device} ({caps.name}): bfloat16 and float16 "
                    "are emulated there (typically tens of times slower), so the loss runs in float32",
                )
            return caps.low_precision
        if not caps.is_native(self.dtype):
            self._warn_once(
                device, str(self.dtype),
                f"AMPLoss: {self.dtype} is emulated on {caps.device} ({caps.name}), typically tens of times slower "
                "than float32; pass dtype=None to use the native dtype (or float32 where none is)",
            )
        return self.dtype

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        device_type = input.device.type
        if not torch.amp.is_autocast_available(device_type):
            raise ValueError(f"`input` is on device type {device_type!r}, where torch.autocast is not available")
        dtype = self.autocast_dtype(input.device)
        if dtype is None:
            return upcast(self.loss(input, target))
        with torch.autocast(device_type, dtype=dtype):
            out = self.loss(input, target)
        return upcast(out)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_warned"] = set()
        return state

    def declared_compute_dtype(self) -> torch.dtype | None:
        """The dtype given to the constructor (``None``: the device's native one, chosen at run time)."""
        return self.dtype

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"
