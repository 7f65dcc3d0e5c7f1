"""Warnings that point at the user's line, not at fastloss's or torch's internals.

A wrapper's warning is raised several frames deep (``nn.Module.__call__``, the wrapper stack,
``torch.compiler.disable``, ``load_state_dict``), and how deep depends on the nesting, so a fixed
``stacklevel`` cannot name the user's call: :func:`warn` walks the stack to the first frame outside both packages.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

_INTERNAL = tuple(os.path.dirname(os.path.abspath(f)) + os.sep for f in (__file__, torch.__file__))


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first caller outside fastloss and torch."""
    frame, level = sys._getframe(1), 2  # level 2 = warn's caller
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
