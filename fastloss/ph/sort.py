"""The filtration order of a map: a stable sort of its values by LSD radix sort on integer keys.

Both persistence passes of a map share this one sort. Pixels are ordered by value, ties by linear index
(C order), so the order is a total order refining the filtration: a tie-free map gets exactly the pairing
of any other exact PH code, and a map with ties gets the same (dim, birth, death) values.

- float32 (what a network produces): 32-bit keys, two 16-bit passes.
- float64 whose values are all float32 numbers (e.g. a float32 map converted): the same float32 keys.
- other float64: 64-bit keys, 16-bit passes (a pass whose digit is constant is skipped).
- maps under ``SMALL`` pixels: numpy's stable argsort of the keys (the 65536-bucket histograms would
  dominate).

Keys map floats to unsigned integers monotonically (flip every bit of negatives, the sign bit of the
others) with ``-0.0`` folded onto ``+0.0`` (they are equal values). NaN is rejected before this point.

The kernels work in *rank space* on a grid padded with one ring of "outside" cells: see
:class:`Filtration`.
"""

from __future__ import annotations

import numpy as np

from ._jit import njit

SMALL = 4096
_DIGIT = 16
_BUCKETS = 1 << _DIGIT


@njit
def float32_keys(bits: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 values given as their uint32 bit patterns."""
    sign = np.uint32(0x80000000)
    keys = np.empty(bits.size, np.uint32)
    for i in range(bits.size):
        b = bits[i]
        if b == sign:  # -0.0
            b = np.uint32(0)
        keys[i] = ~b if b & sign else b | sign
    return keys


@njit
def float64_keys(bits: np.ndarray) -> np.ndarray:
    """Order-preserving uint64 keys of float64 values given as their uint64 bit patterns."""
    sign = np.uint64(0x8000000000000000)
    keys = np.empty(bits.size, np.uint64)
    for i in range(bits.size):
        b = bits[i]
        if b == sign:
            b = np.uint64(0)
        keys[i] = ~b if b & sign else b | sign
    return keys


@njit
def float32_exact(values: np.ndarray) -> bool:
    """Whether every float64 value is a float32 number (so float32 keys order them exactly)."""
    for i in range(values.size):
        if np.float64(np.float32(values[i])) != values[i]:
            return False
    return True


@njit
def padded_index(shape: np.ndarray) -> np.ndarray:
    """For every pixel (C order), its linear index in the grid padded by one cell on every side."""
    nd = shape.size
    n = 1
    for a in range(nd):
        n *= shape[a]
    out = np.empty(n, np.int32)
    coord = np.zeros(nd, np.int64)
    stride = np.ones(nd, np.int64)
    for a in range(nd - 2, -1, -1):
        stride[a] = stride[a + 1] * (shape[a + 1] + 2)
    for i in range(n):
        if i == 0 or coord[nd - 1] == shape[nd - 1]:  # start of a row: carry, then place it afresh
            a = nd - 1
            while a > 0 and coord[a] == shape[a]:
                coord[a] = 0
                a -= 1
                coord[a] += 1
            q = 0
            for b in range(nd):
                q += (coord[b] + 1) * stride[b]
        out[i] = q
        q += 1
        coord[nd - 1] += 1
    return out


@njit
def radix_sort32(keys: np.ndarray, labels: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, keys)`` sorted stably by the uint32 keys (two 16-bit LSD passes); also writes
    ``rank[label] = position`` on the way."""
    n = keys.size
    mask = np.uint32(_BUCKETS - 1)
    lo = np.zeros(_BUCKETS, np.int32)
    hi = np.zeros(_BUCKETS, np.int32)
    for i in range(n):
        k = keys[i]
        lo[k & mask] += 1
        hi[k >> np.uint32(_DIGIT)] += 1
    s_lo = 0
    s_hi = 0
    for d in range(_BUCKETS):
        c = lo[d]
        lo[d] = s_lo
        s_lo += c
        c = hi[d]
        hi[d] = s_hi
        s_hi += c
    tmp = np.empty(n, np.int32)
    tmp_key = np.empty(n, np.uint32)
    for i in range(n):  # pass 1: by the low digit
        k = keys[i]
        d = k & mask
        pos = lo[d]
        lo[d] = pos + 1
        tmp[pos] = labels[i]
        tmp_key[pos] = k
    out = np.empty(n, np.int32)
    out_key = np.empty(n, np.uint32)
    for j in range(n):  # pass 2: by the high digit, stable
        k = tmp_key[j]
        d = k >> np.uint32(_DIGIT)
        pos = hi[d]
        hi[d] = pos + 1
        label = tmp[j]
        out[pos] = label
        out_key[pos] = k
        rank[label] = pos
    return out, out_key


@njit
def radix_sort64(keys: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, keys)`` sorted stably by the uint64 keys: 16-bit LSD passes, constant digits skipped."""
    n = keys.size
    mask = np.uint64(_BUCKETS - 1)
    counts = np.zeros((4, _BUCKETS), np.int32)
    for i in range(n):
        k = keys[i]
        for p in range(4):
            counts[p, (k >> np.uint64(_DIGIT * p)) & mask] += 1
    lab = labels.copy()
    key = keys.copy()
    lab2 = np.empty(n, np.int32)
    key2 = np.empty(n, np.uint64)
    for p in range(4):
        c = counts[p]
        if c.max() == n:  # every key has the same digit here: the pass would not move anything
            continue
        s = 0
        for d in range(_BUCKETS):
            t = c[d]
            c[d] = s
            s += t
        shift = np.uint64(_DIGIT * p)
        for j in range(n):
            k = key[j]
            d = (k >> shift) & mask
            pos = c[d]
            c[d] = pos + 1
            lab2[pos] = lab[j]
            key2[pos] = k
        lab, lab2 = lab2, lab
        key, key2 = key2, key
    return lab, key


@njit
def levels(sorted_keys: np.ndarray) -> np.ndarray:
    """``level[k]``: index of the ``k``-th pixel's distinct value (non-decreasing), plus ``level[n] = -1``
    for the outside node of the dual passes. Two pixels tie exactly when their levels are equal."""
    n = sorted_keys.size
    level = np.empty(n + 1, np.int32)
    c = 0
    for k in range(n):
        if k > 0 and sorted_keys[k] != sorted_keys[k - 1]:
            c += 1
        level[k] = c
    level[n] = -1
    return level


@njit
def scatter_ranks(porder: np.ndarray, rank: np.ndarray) -> None:
    """``rank[porder[k]] = k`` (the sorts other than :func:`radix_sort32` leave it to this)."""
    for k in range(porder.size):
        rank[porder[k]] = k


class Filtration:
    """One map's filtration order as the kernels read it, int32 arrays in rank space.

    - ``porder[k]``: the index, in the grid padded by one cell on every side, of the ``k``-th pixel by
      increasing (value, linear index);
    - ``rank``: the flattened padded grid of ranks; padding cells hold ``n``, the node of the outside
      (never earlier in an increasing pass, always earlier in a decreasing one);
    - ``level[k]``: the ``k``-th pixel's distinct-value index (ties share a level), ``level[n] = -1``.
    """

    __slots__ = ("level", "porder", "rank", "shape")

    def __init__(self, shape: tuple[int, ...], porder: np.ndarray, rank: np.ndarray, level: np.ndarray):
        self.shape, self.porder, self.rank, self.level = shape, porder, rank, level

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(s + 2 for s in self.shape)

    def pixels(self, ranks: np.ndarray) -> np.ndarray:
        """Linear (unpadded, C order) indices of the pixels of the given ranks."""
        coords = np.unravel_index(self.porder[ranks], self.padded_shape)
        return np.ravel_multi_index(tuple(c - 1 for c in coords), self.shape).astype(np.int64)


def filtration(values: np.ndarray) -> Filtration:
    """Sort a float32/float64 map (any number of axes) into its :class:`Filtration`."""
    values = np.ascontiguousarray(values)
    shape = tuple(values.shape)
    flat = values.reshape(-1)
    if flat.size == 0:
        raise ValueError(f"cannot order an empty map of shape {shape}")
    padded_size = int(np.prod([s + 2 for s in shape]))
    if padded_size >= np.iinfo(np.int32).max - 8:
        raise ValueError(f"maps of fewer than 2**31 - 9 padded pixels are supported, got shape {shape}")
    labels = padded_index(np.array(shape, np.int64))
    rank = np.full(padded_size, flat.size, np.int32)  # padding: the outside, rank n
    if flat.dtype == np.float64 and float32_exact(flat):
        flat = flat.astype(np.float32)
    if flat.dtype == np.float32:
        keys = float32_keys(flat.view(np.uint32))
    elif flat.dtype == np.float64:
        keys = float64_keys(flat.view(np.uint64))
    else:
        raise TypeError(f"expected a float32 or float64 map, got {flat.dtype}")
    if flat.size < SMALL:
        o = np.argsort(keys, kind="stable")
        porder, skeys = labels[o], keys[o]
        scatter_ranks(porder, rank)
    elif keys.dtype == np.uint32:
        porder, skeys = radix_sort32(keys, labels, rank)
    else:
        porder, skeys = radix_sort64(keys, labels)
        scatter_ranks(porder, rank)
    return Filtration(shape, porder, rank, levels(skeys))
