"""CachedTarget: an exact cache of a feature loss's target features across visits of the same target.

Ground-truth images repeat every epoch (views of a scene, frames of a video, a fixed training set),
and a perceptual loss recomputes their features each time: a whole forward pass of the backbone per
step. ``CachedTarget`` keeps them, per sample, and returns exactly what the wrapped loss computes.

- **Never a false hit.** The lookup key is a cheap fingerprint computed on the target's own device
  (one float64 matrix-vector product per batch and a transfer of one number per sample), plus everything
  the features depend on (shape, dtype, device, the backbone's dtype, layout and weight version, the
  autocast state). A candidate hit is then confirmed by exact equality with the stored target
  (``torch.equal``), so two targets that differ in one pixel never share features.
- **Bounded by bytes** (LRU over targets and their features). Features are stored as the loss computes
  them (the compute dtype for :class:`PerceptualLoss`; LPIPS' normalised features are float32), on the
  target's device or, with ``device="cpu"``, in host memory (copied back on a hit). A miss costs the
  fingerprint and one copy of the features (small next to the forward pass it would save); the hit
  rate is in :meth:`cache_info` — when targets never repeat (augmentation), leave the cache out.
- **Placement.** It sits directly on the feature loss, so it keys on what that loss receives:
  ``DownsampledLoss(CachedTarget(loss))`` caches the *downsampled* target's features. It is used in
  training and in eval / ``no_grad`` alike (the features are the same).
- **State.** The cache is derived data and is not saved in ``state_dict``: a resumed run recomputes
  features on first visits and is exactly as exact.

Only a batch whose targets are all cached skips the target's forward pass; a batch with any new target
computes the whole batch, as the wrapped loss would, and stores the new ones. Values therefore equal the
wrapped loss's bitwise whenever the cached features were computed in a batch of the same size (a
backend may pick another convolution algorithm for another batch size, which changes last bits only).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_positive_int
from ..losses._feature import FeatureLoss
from .base import LossWrapper

__all__ = ["CachedTarget"]

STORAGE = (None, "cpu")


@dataclass
class _Entry:
    target: Tensor  # the sample, for the exact check
    features: list[Tensor]
    nbytes: int


def _nbytes(tensors: list[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class CachedTarget(LossWrapper):
    r"""Cache the target features of a :class:`~fastloss.PerceptualLoss` or :class:`~fastloss.LPIPSLoss`.

    See the module docstring for what is cached and why it is exact.

    Args:
        loss: a feature loss (``PerceptualLoss``, ``LPIPSLoss``); any other loss is a ``TypeError``.
        max_bytes: bound of the cache, targets and features together (LRU eviction beyond it).
        device: ``None`` (store on the target's device) or ``"cpu"`` (host memory; useful on a GPU).

    Counters (:meth:`cache_info`): ``hits``, ``misses``, ``collisions`` (same fingerprint, different
    target: counted as a miss), ``evictions``, ``entries``, ``bytes``.

    Example:
        >>> from fastloss import PerceptualLoss
        >>> loss = CachedTarget(PerceptualLoss("vgg16", layers=["relu1_2"], weights=None), max_bytes=2**26)
        >>> x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
        >>> bool(loss(x, y) == loss.loss(x, y)), bool(loss(x, y) == loss.loss(x, y))
        (True, True)
        >>> loss.cache_info()["misses"], loss.cache_info()["hits"]
        (2, 2)
    """

    def __init__(self, loss: FeatureLoss, max_bytes: int = 1 << 30, device: str | None = None) -> None:
        if not isinstance(loss, FeatureLoss):
            raise TypeError(
                f"`loss` must be a feature loss (fastloss.PerceptualLoss or LPIPSLoss: CachedTarget caches target "
                f"features), got {type(loss).__name__}"
            )
        check_positive_int("max_bytes", max_bytes)
        if device not in STORAGE:
            raise ValueError(f"`device` must be one of {list(STORAGE)}, got {device!r}")
        super().__init__(loss)
        self.max_bytes = max_bytes
        self.storage = device
        self._probes: dict[tuple, Tensor] = {}
        self.clear()

    # --- bookkeeping --------------------------------------------------------------------------
    def clear(self) -> None:
        """Empty the cache and zero the counters."""
        self._cache: OrderedDict[tuple, list[_Entry]] = OrderedDict()
        self._bytes = 0
        self._stats = dict.fromkeys(("hits", "misses", "collisions", "evictions"), 0)

    def cache_info(self) -> dict[str, int]:
        return {**self._stats, "entries": sum(len(v) for v in self._cache.values()), "bytes": self._bytes}

    def _context(self, target: Tensor) -> tuple:
        """What the features depend on besides the pixels."""
        backbone = self.loss.backbone()
        params = list(backbone.parameters())
        version = sum(p._version for p in params)
        autocast = torch.is_autocast_enabled(target.device.type)
        dtype = torch.get_autocast_dtype(target.device.type) if autocast else None
        return (tuple(target.shape[1:]), target.dtype, str(target.device), params[0].dtype, self.loss.channels_last,
                params[0].data_ptr(), version, autocast, dtype)

    def _fingerprints(self, target: Tensor) -> list[float]:
        """One number per sample: its float64 dot product with a fixed random vector, on its device, rounded
        to 9 significant digits so that summation order (which can differ with the batch's composition)
        does not change it. Equal targets give equal keys; unequal ones are told apart by the exact check."""
        flat = target.reshape(target.shape[0], -1)
        key = (flat.shape[1], str(flat.device))
        probe = self._probes.get(key)
        if probe is None:
            g = torch.Generator().manual_seed(flat.shape[1])
            probe = (torch.rand(flat.shape[1], generator=g, dtype=torch.float64) + 0.5).to(flat.device)
            self._probes = {key: probe}  # one shape at a time: bounded
        return [float(f"{v:.9e}") for v in (flat.double() @ probe).tolist()]

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._cache:
            key, bucket = next(iter(self._cache.items()))
            entry = bucket.pop(0)
            self._bytes -= entry.nbytes
            self._stats["evictions"] += 1
            if not bucket:
                del self._cache[key]

    def _store(self, key: tuple, target: Tensor, features: list[Tensor]) -> None:
        where = torch.device(self.storage) if self.storage else target.device
        feats = [f.detach().to(where, copy=True) for f in features]
        entry = _Entry(target.detach().clone(), feats, _nbytes(feats) + target.numel() * target.element_size())
        if entry.nbytes > self.max_bytes:
            return
        self._cache.setdefault(key, []).append(entry)
        self._cache.move_to_end(key)
        self._bytes += entry.nbytes
        self._evict()

    def _lookup(self, key: tuple, target: Tensor) -> _Entry | None:
        bucket = self._cache.get(key)
        if not bucket:
            return None
        for entry in bucket:
            if torch.equal(entry.target, target):
                self._cache.move_to_end(key)
                return entry
        self._stats["collisions"] += 1
        return None

    # --- the loss -----------------------------------------------------------------------------
    @torch.compiler.disable
    def target_features(self, target: Tensor) -> list[Tensor]:
        """The target's features, from the cache where it holds them, computed (and stored) otherwise."""
        context = self._context(target)
        keys = [(context, fp) for fp in self._fingerprints(target)]
        found = [self._lookup(key, target[i]) for i, key in enumerate(keys)]
        missing = [i for i, entry in enumerate(found) if entry is None]
        self._stats["misses"] += len(missing)
        self._stats["hits"] += len(keys) - len(missing)
        if missing:  # compute the whole batch, as the wrapped loss would (the same bits), and store the new ones
            features = self.loss.target_features(target)
            for i in missing:
                self._store(keys[i], target[i], [f[i] for f in features])
            return features
        out = []
        for layer in zip(*[[f.to(target.device, non_blocking=True) for f in e.features] for e in found], strict=True):
            stacked = torch.stack(layer)
            if self.loss.channels_last and stacked.dim() == 4:
                stacked = stacked.contiguous(memory_format=torch.channels_last)
            out.append(stacked)
        return out

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        loss = self.loss
        input, target = loss.check(input, target)
        target_feats = self.target_features(target)
        return loss.combine(loss.feature_maps(input), target_feats)

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # a copy starts empty: the cache is derived data
        state["_cache"], state["_bytes"], state["_probes"] = OrderedDict(), 0, {}
        return state

    def summary(self) -> str:
        return f"{type(self).__name__}({self.max_bytes / 2**20:.0f} MiB{', host' if self.storage else ''})"

    def extra_repr(self) -> str:
        return f"max_bytes={self.max_bytes}, device={self.storage!r}"
