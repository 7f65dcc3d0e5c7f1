"""CachedPH: cache persistent homology across visits of the same training sample.

Two caches, both LRU and bounded by ``max_entries``, keyed by a content hash of the target map (the
same sample comes back every epoch, with the same mask):

- **exact part**: the target's side: its Betti numbers (:class:`~fastloss.TopologicalLoss`), or its
  filtration, cell orders and barcode (:class:`~fastloss.BettiMatchingLoss`). Targets do not change, so
  this never changes the loss. Large sides are also bounded in bytes (``max_target_bytes``).
- **approximate part**: the prediction's pairing (which pixels are births/deaths, and which bars are
  kept or removed). It is reused for the next ``refresh_every - 1`` visits of that map; the loss is
  then evaluated by gathering the *current* prediction at the cached pixels, which is cheap. The
  values are current, only the pairing is stale. ``refresh_every=1`` is exact.

With ``refresh="async"`` a stale entry is refreshed in a background thread on a detached copy of the
prediction while training goes on, and the next visit of that map uses the result (waiting for it if
needed, so results depend only on the order of visits, never on thread timing).

Training steps use the caches; eval mode and ``torch.no_grad()`` compute the prediction's pairing
exactly (only the exact target cache is used), so validation numbers are exact.

Samples are recognised by their target mask alone: two samples with identical masks (e.g. two empty
masks) share one pairing entry. That only makes the approximate part coarser; the exact part is
unaffected.

Both caches are saved in ``state_dict`` (as tensors, via ``get_extra_state``), so a resumed run
continues bitwise like an uninterrupted one; a pending async refresh is completed before saving. The
configuration (``refresh_every``, ``max_entries``, ``refresh``) is saved too, but the constructor's wins
on load (with a ``UserWarning`` when they differ): a checkpoint never turns an exact CachedPH approximate.
:meth:`CachedPH.clear` drops pending refreshes, so nothing computed before it is served after it.
BettiMatchingLoss's target sides (arrays the size of the map) are not saved: they are exact and rebuilt
on the next visit.

The loss provides the pieces through the hooks of :class:`fastloss.losses._topology.CacheablePH`, so
CachedPH holds no loss-specific code: ``compute_with(input, target, select)`` (the loss around a
selection step), ``target_side(mask, dims)`` (exact, target only), ``select(f, side, dims)`` (one map's
fresh pairing), ``Selection`` (its dataclass of index arrays), ``workers``, ``target_key()`` (what
besides the mask a target side depends on) and ``uncacheable_reason()``.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from .._validation import check_choice, check_positive_int
from .._warnings import warn
from ..losses._topology import CacheablePH, run_per_map
from .base import LossWrapper

__all__ = ["CachedPH"]

REFRESH_MODES = ("sync", "async")


@dataclass
class _Pairing:
    selection: object  # the loss's Selection
    uses: int  # visits served by this pairing so far


def _shutdown(executor: ThreadPoolExecutor) -> None:
    executor.shutdown(wait=True, cancel_futures=True)


class CachedPH(LossWrapper):
    r"""Cache a topology loss's persistent homology across visits of a sample.

    See the module docstring for what is cached and when the result is exact.

    Args:
        loss: a :class:`fastloss.TopologicalLoss` or :class:`fastloss.BettiMatchingLoss` (any other
            loss is a ``TypeError``).
        refresh_every: recompute a map's pairing on one visit in ``refresh_every`` (1 = exact).
        max_entries: bound of each cache (LRU eviction beyond it; the target cache is also bounded by
            the class attribute ``max_target_bytes``, 1 GiB, for sides that report ``nbytes``).
        refresh: ``"sync"`` (recompute in the call) or ``"async"`` (recompute in a background thread,
            used at the next visit).

    Counters (:meth:`cache_info`): ``hits`` (pairing reused), ``misses`` (first visit of a map),
    ``refreshes`` (pairing recomputed), ``exact`` (eval-mode computations), ``target_hits`` /
    ``target_misses`` (target sides), ``evictions``, ``entries``.

    Example:
        >>> from fastloss import TopologicalLoss
        >>> target = torch.zeros(2, 1, 16, 16); target[0, :, 4:12, 4:12] = 1; target[1, :, 2:6, 2:6] = 1
        >>> loss = CachedPH(TopologicalLoss(), refresh_every=3)
        >>> pred = torch.full_like(target, 0.5).requires_grad_()
        >>> for _ in range(3):
        ...     _ = loss(pred, target)
        >>> loss.cache_info()["misses"], loss.cache_info()["hits"], loss.cache_info()["target_hits"]
        (2, 4, 4)
    """

    #: bound of the target cache in bytes, counting the sides that report ``nbytes``
    #: (BettiMatchingLoss's: about 33 bytes a pixel, 8.5 MiB at 512x512); Betti numbers count as 0
    max_target_bytes = 1 << 30

    def __init__(
        self,
        loss: CacheablePH,
        refresh_every: int = 5,
        max_entries: int = 4096,
        refresh: str = "sync",
    ) -> None:
        if not isinstance(loss, CacheablePH):
            raise TypeError(
                f"`loss` must be a fastloss.TopologicalLoss or fastloss.BettiMatchingLoss (CachedPH caches "
                f"persistent homology), got {type(loss).__name__}"
            )
        reason = loss.uncacheable_reason()
        if reason is not None:
            raise ValueError(f"CachedPH needs target masks to recognise samples; {reason}")
        check_positive_int("refresh_every", refresh_every)
        check_positive_int("max_entries", max_entries)
        check_choice("refresh", refresh, REFRESH_MODES)
        super().__init__(loss)
        self.refresh_every, self.max_entries, self.refresh = refresh_every, max_entries, refresh
        self._reset_runtime()
        self.clear()

    # --- cache bookkeeping --------------------------------------------------------------------
    def _reset_runtime(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._finalizer: weakref.finalize | None = None
        self._pending: dict[str, Future] = {}

    def clear(self) -> None:
        """Empty both caches, drop pending background refreshes (never served after this) and zero the counters."""
        for future in getattr(self, "_pending", {}).values():
            future.cancel()  # a refresh already running finishes in the background; its result is dropped
        self._pending = {}
        self._targets: OrderedDict[str, object] = OrderedDict()  # target sides (exact)
        self._target_bytes = 0
        self._pairings: OrderedDict[str, _Pairing] = OrderedDict()
        self._stats = dict.fromkeys(
            ("hits", "misses", "refreshes", "exact", "target_hits", "target_misses", "evictions"), 0
        )

    def cache_info(self) -> dict[str, int]:
        """Counters, the number of cached pairings and target sides, and the bytes the target sides hold
        (Betti matching's filtrations and barcodes; Betti numbers count as 0), bounded by ``max_target_bytes``."""
        return {**self._stats, "entries": len(self._pairings), "target_entries": len(self._targets),
                "target_bytes": self._target_bytes}

    def _put(self, cache: OrderedDict, key: str, value: object) -> None:
        if cache is self._targets:
            self._target_bytes += getattr(value, "nbytes", 0) - getattr(cache.get(key), "nbytes", 0)
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.max_entries or (
            cache is self._targets and len(cache) > 1 and self._target_bytes > self.max_target_bytes
        ):
            old, gone = cache.popitem(last=False)
            if cache is self._targets:
                self._target_bytes -= getattr(gone, "nbytes", 0)
            self._stats["evictions"] += 1
            if cache is self._pairings and old in self._pending:
                self._pending.pop(old).cancel()

    def _key(self, mask: np.ndarray) -> str:
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((mask.shape, self.loss.target_key())).encode())
        h.update(np.ascontiguousarray(mask).tobytes())
        return h.hexdigest()

    # --- background refresh -------------------------------------------------------------------
    def _submit(self, *args) -> Future:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastloss-cachedph")
            self._finalizer = weakref.finalize(self, _shutdown, self._executor)
        return self._executor.submit(self.loss.select, *args)

    def wait(self) -> None:
        """Finish pending background refreshes (their results are kept for the next visit)."""
        for future in list(getattr(self, "_pending", {}).values()):
            future.result()

    def close(self) -> None:
        """Stop the background thread (also done automatically when the object is collected)."""
        if self._finalizer is not None:
            self._finalizer()
        self._reset_runtime()

    # --- the loss -----------------------------------------------------------------------------
    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        return self.loss.compute_with(input, target, self._selections)

    def _selections(self, f_np: np.ndarray, masks: np.ndarray, dims) -> list:
        """The selection step of the loss, served from the caches (``masks``: the targets as the loss
        hands them to its selection step)."""
        keys = [self._key(m) for m in masks]
        sides = self._target_sides(keys, masks, dims)
        if not self.counting:  # validation: exact pairing, caches untouched
            self._stats["exact"] += len(keys)
            fresh = self._compute(f_np, sides, dims, range(len(keys)))
            return [fresh[i] for i in range(len(keys))]
        return self._plan(keys, f_np, sides, dims)

    def _compute(self, f_np, sides, dims, which) -> dict[int, object]:
        """Fresh pairings for maps ``which``, computed in the loss's thread pool."""
        which = list(which)
        out = run_per_map(
            lambda j: self.loss.select(f_np[which[j]], sides[which[j]], dims),
            len(which), self.loss.workers, "persistent homology", index=which,
        )
        return dict(zip(which, out, strict=True))

    def _target_sides(self, keys: list[str], masks: np.ndarray, dims) -> list[object]:
        # Read every hit before inserting anything: a batch larger than the cache's free room would
        # otherwise evict a hit before it is read.
        result: list[object | None] = []
        for key in keys:
            result.append(self._targets.get(key))
            if result[-1] is not None:
                self._targets.move_to_end(key)
        first_miss = {k: i for i, k in reversed(list(enumerate(keys))) if result[i] is None}
        missing = sorted(first_miss.values())
        self._stats["target_misses"] += len(missing)
        self._stats["target_hits"] += len(keys) - len(missing)
        computed = run_per_map(
            lambda j: self.loss.target_side(masks[missing[j]], dims),
            len(missing), self.loss.workers, "target persistent homology", index=missing,
        ) if missing else []
        found = {keys[i]: b for i, b in zip(missing, computed, strict=True)}
        for key, side in found.items():
            self._put(self._targets, key, side)
        return [found[k] if b is None else b for k, b in zip(keys, result, strict=True)]

    def _record(self, key: str, selection: object) -> None:
        self._stats["misses" if key not in self._pairings else "refreshes"] += 1
        self._put(self._pairings, key, _Pairing(selection, 1))

    def _plan(self, keys, f_np, sides, dims) -> list:
        """Decide per map: reuse the cached pairing, take a finished async refresh, or compute now."""
        chosen: dict[int, object] = {}
        compute_now: list[int] = []
        for i, key in enumerate(keys):
            entry = self._pairings.get(key)
            if entry is None:
                compute_now.append(i)
            elif key in self._pending:
                chosen[i] = self._pending.pop(key).result()
                self._stats["refreshes"] += 1
                self._put(self._pairings, key, _Pairing(chosen[i], 1))
            elif entry.uses < self.refresh_every:
                chosen[i] = entry.selection
                entry.uses += 1
                self._stats["hits"] += 1
                self._pairings.move_to_end(key)
                if self.refresh == "async" and entry.uses == self.refresh_every:
                    args = (f_np[i].copy(), sides[i], dims)
                    self._pending[key] = self._submit(*args)
            else:
                compute_now.append(i)
        if compute_now:
            fresh = self._compute(f_np, sides, dims, compute_now)
            for i in compute_now:
                chosen[i] = fresh[i]
                self._record(keys[i], fresh[i])
        return [chosen[i] for i in range(len(keys))]

    # --- state --------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        self.wait()
        pending = {k: f.result() for k, f in self._pending.items()}

        def pack(sel: object) -> list[Tensor]:
            return [torch.from_numpy(getattr(sel, f.name).copy()) for f in fields(sel)]

        return {
            "refresh_every": self.refresh_every,
            "max_entries": self.max_entries,
            "refresh": self.refresh,
            # small sides (tuples: Betti numbers) are saved; array sides are rebuilt (see the module docstring)
            "targets": [(k, list(v)) for k, v in self._targets.items() if isinstance(v, tuple)],
            "pairings": [(k, pack(p.selection), p.uses) for k, p in self._pairings.items()],
            "pending": [(k, pack(s)) for k, s in pending.items()],
            "stats": dict(self._stats),
        }

    def set_extra_state(self, state: dict) -> None:
        self.close()
        # The constructor's configuration wins: a checkpoint must never make an exact CachedPH approximate.
        differs = {k: (state[k], getattr(self, k)) for k in ("refresh_every", "max_entries", "refresh")
                   if state.get(k, getattr(self, k)) != getattr(self, k)}
        if differs:
            warn(
                "CachedPH: the checkpoint was saved with "
                + ", ".join(f"{k}={old!r}" for k, (old, _) in differs.items())
                + "; keeping this CachedPH's " + ", ".join(f"{k}={new!r}" for k, (_, new) in differs.items()),
            )

        def unpack(tensors: list[Tensor]) -> object:
            return self.loss.Selection(*(t.numpy().astype(np.int64) for t in tensors))

        saved = state["targets"] if "targets" in state else state["betti"]  # "betti": fastloss 0.2's name
        self._targets = OrderedDict((k, tuple(v)) for k, v in saved)
        self._target_bytes = 0
        self._pairings = OrderedDict((k, _Pairing(unpack(t), uses)) for k, t, uses in state["pairings"])
        for key, tensors in state["pending"]:
            done: Future = Future()
            done.set_result(unpack(tensors))
            self._pending[key] = done
        self._stats = dict(state["stats"])
        for cache in (self._targets, self._pairings):  # a smaller max_entries than the checkpoint's: evict LRU
            while len(cache) > self.max_entries:
                old, _ = cache.popitem(last=False)
                self._pending.pop(old, None)
                self._stats["evictions"] += 1

    def __getstate__(self) -> dict:
        # threads and futures do not copy or pickle: keep finished results, rebuild the rest lazily
        self.wait()
        state = super().__getstate__()
        state.update(_executor=None, _finalizer=None, _pending={k: f.result() for k, f in self._pending.items()})
        return state

    def __setstate__(self, state: dict) -> None:
        pending = state.pop("_pending", {})
        super().__setstate__(state)
        self._pending = {}
        for key, selection in pending.items():
            done: Future = Future()
            done.set_result(selection)
            self._pending[key] = done

    def summary(self) -> str:
        return f"{type(self).__name__}(refresh_every={self.refresh_every})"

    def extra_repr(self) -> str:
        return f"refresh_every={self.refresh_every}, max_entries={self.max_entries}, refresh={self.refresh!r}"
