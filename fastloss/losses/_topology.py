"""What both topology losses and :class:`fastloss.CachedPH` share: running work per map, the numpy copy
PH reads, the index gather into a batch of maps, and :class:`CacheablePH`, the hooks CachedPH caches
through.

A topology loss computes in three parts: a *target side* (exact, depends on the target only), a
*selection* (which pixels carry the loss, from the prediction's persistent homology and the target
side) and a cheap differentiable part that gathers the filtration at the selected pixels. CachedPH
caches the first two through :class:`CacheablePH`, with no code of its own for either loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CacheablePH", "ConfigTopologyLoss", "SelectionStep", "run_per_map", "selection_index", "selection_owner", "sum_per_map", "to_numpy",
]


def run_per_map(fn: Callable[[int], object], n: int, workers: int | None, what: str,
                index: Sequence[int] | None = None) -> list:
    """Run ``fn(i)`` for ``i < n`` in a thread pool (both PH engines release the GIL); ``workers=1`` is sequential.

    A worker's exception surfaces here as a ``RuntimeError`` naming the map it failed on: ``index[i]`` (the
    map's place in the batch, when ``fn`` runs over a subset of it), else ``i``.
    """
    workers = min(n, os.cpu_count() or 1) if workers is None else min(workers, n)

    def guarded(i: int) -> object:
        try:
            return fn(i)
        except Exception as exc:  # re-raised below with the map index
            where = i if index is None else index[i]
            raise RuntimeError(f"{what} failed on map {where}: {type(exc).__name__}: {exc}") from exc

    if workers <= 1:
        return [guarded(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastloss-ph") as pool:
        return list(pool.map(guarded, range(n)))


def to_numpy(x: Tensor) -> np.ndarray:
    """A detached CPU copy, float64 for float64 tensors and float32 otherwise (exact for every float
    dtype torch has below 64 bits; the native engine sorts float32 keys, cripser upcasts)."""
    return x.detach().to("cpu", torch.float64 if x.dtype == torch.float64 else torch.float32).numpy()


def selection_index(selections: Sequence[object], name: str, stride: int, device: torch.device) -> Tensor:
    """Field ``name`` (linear indices into one map) of every map's selection, offset by ``stride`` per map:
    indices into the batch's maps laid end to end."""
    parts = [getattr(s, name) + i * stride for i, s in enumerate(selections)]
    return torch.from_numpy(np.concatenate(parts).astype(np.int64)).to(device)


def selection_owner(selections: Sequence[object], name: str, device: torch.device) -> Tensor:
    """The map each entry of :func:`selection_index` (for field ``name``) belongs to."""
    ids = [np.full(len(getattr(s, name)), i, np.int64) for i, s in enumerate(selections)]
    return torch.from_numpy(np.concatenate(ids)).to(device)


def sum_per_map(like: Tensor, n: int, terms) -> Tensor:
    """``(n,)`` sums of ``(owner, values)`` term pairs (``values[i]`` belongs to map ``owner[i]``), in the
    dtype of ``like``. A map has up to ~10^5 terms: float32 values are accumulated in float64 (where the
    device has it), so the sum is float64-accurate (float32 ``index_add`` drifted 1.3e-5 relative)."""
    wide = torch.float64 if like.dtype in (torch.float32, torch.float64) and like.device.type != "mps" else like.dtype
    out = torch.zeros(n, dtype=wide, device=like.device)
    for owner, values in terms:
        out = out.index_add(0, owner, values.to(wide))
    return out.to(like.dtype)


#: ``(f of shape (N, *spatial), target data of the same shape or None, dims) -> one selection per map``:
#: the selection step a loss runs around (its own exact one, or CachedPH's caching one)
SelectionStep = Callable[[np.ndarray, "np.ndarray | None", tuple[int, ...]], list]


@runtime_checkable
class CacheablePH(Protocol):
    """The hooks :class:`fastloss.CachedPH` relies on (both topology losses provide them)."""

    #: the dataclass of index arrays one map's selection is (rebuilt from a checkpoint by field order)
    Selection: type

    @property
    def workers(self) -> int | None:
        """Threads for per-map work (``None``: one per core)."""

    def target_key(self) -> str:
        """The settings, besides the mask itself, that a target side depends on (part of the cache key)."""

    def uncacheable_reason(self) -> str | None:
        """Why this loss cannot be cached by target (e.g. a prior without target masks), else ``None``."""

    def compute_with(self, input: Tensor, target: Tensor | None, select: SelectionStep) -> Tensor:
        """The loss with ``select`` as its selection step."""

    def target_side(self, mask: np.ndarray, dims: tuple[int, ...]) -> object:
        """The exact target-only part of one map."""

    def select(self, f: np.ndarray, side: object, dims: tuple[int, ...]) -> object:
        """One map's exact selection from its filtration and a (cached) target side."""


class ConfigTopologyLoss(nn.Module):
    """The parts of a topology loss read from its frozen ``config`` (``reduction``, ``workers``,
    ``construction``), shared by both losses: the output shape and the cache hooks that depend on them."""

    config: object

    def output_shape(self, input: Tensor, target: Tensor | None = None) -> torch.Size:
        """``(B, C)`` with ``reduction="none"``, else a scalar (read from shapes only)."""
        return torch.Size(tuple(input.shape[:2]) if self.config.reduction == "none" else ())

    # --- the hooks CachedPH caches through (CacheablePH) that come from the config ------------------
    @property
    def workers(self) -> int | None:
        return self.config.workers

    def target_key(self) -> str:
        return self.config.construction
