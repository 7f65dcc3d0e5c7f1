"""AMPLoss: run a loss under autocast, return float32."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validation import check_choice, upcast
from .base import LossWrapper

__all__ = ["AMPLoss"]

DTYPES = (None, torch.float16, torch.bfloat16)


class AMPLoss(LossWrapper):
    r"""Run ``loss`` under ``torch.autocast`` for the input's device and return float32.

    The default dtype is float16 on CUDA and bfloat16 elsewhere. fastloss' own losses reduce in
    float32 even inside autocast (per-layer distances, LPIPS' channel normalisation), so the result is
    finite for inputs in range; the returned value is cast to float32. Use it with
    ``torch.amp.GradScaler`` as usual (``scaler.scale(total).backward()``).

    Args:
        loss: the loss to wrap.
        dtype: ``torch.float16``, ``torch.bfloat16`` or ``None`` for the device default.

    Example:
        >>> loss = AMPLoss(torch.nn.MSELoss())
        >>> loss(torch.ones(4), torch.zeros(4)).dtype
        torch.float32
    """

    def __init__(self, loss: nn.Module, dtype: torch.dtype | None = None) -> None:
        super().__init__(loss)
        check_choice("dtype", dtype, DTYPES)
        self.dtype = dtype

    def autocast_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        return torch.float16 if device.type == "cuda" else torch.bfloat16

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        device_type = input.device.type
        if not torch.amp.is_autocast_available(device_type):
            raise ValueError(f"`input` is on device type {device_type!r}, where torch.autocast is not available")
        with torch.autocast(device_type, dtype=self.autocast_dtype(input.device)):
            out = self.loss(input, target)
        return upcast(out)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"
