"""Persistence pairs of a 3D map, dims 0 and 2, by two union-find passes over one filtration order.

The scheme of :mod:`fastloss.ph.cubical2d` one dimension up (rank space, padded grid):

- dim 0 (:func:`components`): voxels in increasing order, 6-connected ("V": voxels are vertices, a
  cell takes its max vertex) or 26-connected ("T": voxels are top cells, a cell takes the min of its
  adjacent voxels); elder rule.
- dim 2 (:func:`voids_v`, :func:`voids_t`): Alexander duality, decreasing order, the outside (padding,
  rank n) as the oldest dual vertex. When voxel p enters, every dual vertex around it merges: "V" the
  8 cubes around p (a cube's node is the max rank of its 8 corners), "T" p and its 6-neighbours.

dim 1 of a 3D map is not a union-find computation: :mod:`fastloss.ph.loops3d` (which also gives dims 0 and 2
on the way, from explicit cells) computes it; these two passes serve ``dims`` without 1.
"""

from __future__ import annotations

import numpy as np

from ._jit import AHEAD, njit, prefetch
from .unionfind import find


@njit
def _offsets(h: int, w: int, conn26: bool) -> np.ndarray:
    """Padded-index offsets of the 6 or 26 neighbours."""
    sa = (h + 2) * (w + 2)
    sb = w + 2
    out = np.empty(26 if conn26 else 6, np.int64)
    i = 0
    for da in range(-1, 2):
        for db in range(-1, 2):
            for dc in range(-1, 2):
                nz = (da != 0) + (db != 0) + (dc != 0)
                if nz == 0 or (not conn26 and nz > 1):
                    continue
                out[i] = da * sa + db * sb + dc
                i += 1
    return out


@njit(inline=True)
def prefetch_around(rank: np.ndarray, q: int, sa: int, sb: int, block: bool) -> None:
    """Hint the lines of ``rank`` around padded index ``q``: its 3x3x3 block (``block``: 9 lines) or its
    6-neighbourhood (5 lines; a line holds both neighbours along the last axis). Also loops3d's voxel forest."""
    prefetch(rank, q)
    prefetch(rank, q + sb)
    prefetch(rank, q - sb)
    prefetch(rank, q + sa)
    prefetch(rank, q - sa)
    if block:
        prefetch(rank, q + sa + sb)
        prefetch(rank, q + sa - sb)
        prefetch(rank, q - sa + sb)
        prefetch(rank, q - sa - sb)


@njit
def components(porder: np.ndarray, rank: np.ndarray, level: np.ndarray, h: int, w: int, conn26: bool):
    """dim-0 pairs (finite bars): 6-connected (``conn26=False``, "V") or 26-connected ("T")."""
    n = porder.size
    off = _offsets(h, w, conn26)
    parent = np.empty(n, np.int32)
    births = np.empty(n, np.int32)
    deaths = np.empty(n, np.int32)
    sa = (h + 2) * (w + 2)
    sb = w + 2
    m = 0
    for k in range(n):
        if k + AHEAD < n:  # the neighbourhood of the voxel AHEAD steps on (its lines of the rank grid)
            prefetch_around(rank, porder[k + AHEAD], sa, sb, conn26)
        p = porder[k]
        parent[k] = k
        root = k
        for t in range(off.size):
            r = rank[p + off[t]]
            if r >= k:
                continue
            r = find(parent, r)
            if r == root:
                continue
            if r < root:
                young = root
                root = r
            else:
                young = r
            parent[young] = root
            if level[young] != level[k]:
                births[m] = young
                deaths[m] = k
                m += 1
    return births[:m].copy(), deaths[:m].copy()


@njit
def _voids(porder: np.ndarray, rank: np.ndarray, level: np.ndarray, h: int, w: int, cubes: bool):
    n = porder.size
    sa = (h + 2) * (w + 2)
    sb = w + 2
    off = _offsets(h, w, False)
    parent = np.empty(n + 1, np.int32)
    parent[n] = n
    births = np.empty(n, np.int32)
    deaths = np.empty(n, np.int32)
    m2 = np.empty((3, 3, 2), np.int64)
    m4 = np.empty((3, 2, 2), np.int64)
    nodes = np.empty(8, np.int64)
    count = 8 if cubes else 6
    m = 0
    for k in range(n - 1, -1, -1):
        if k >= AHEAD:
            prefetch_around(rank, porder[k - AHEAD], sa, sb, cubes)
        p = porder[k]
        parent[k] = k
        root = k
        if cubes:  # "V": the 8 cubes around p, each the max rank of its 8 corners (separable max)
            for a in range(3):
                for b in range(3):
                    base = p + (a - 1) * sa + (b - 1) * sb
                    x1 = rank[base]
                    m2[a, b, 0] = max(rank[base - 1], x1)
                    m2[a, b, 1] = max(x1, rank[base + 1])
            for a in range(3):
                for c in range(2):
                    m4[a, 0, c] = max(m2[a, 0, c], m2[a, 1, c])
                    m4[a, 1, c] = max(m2[a, 1, c], m2[a, 2, c])
            for a in range(2):
                for b in range(2):
                    for c in range(2):
                        nodes[4 * a + 2 * b + c] = max(m4[a, b, c], m4[a + 1, b, c])
        else:  # "T": the 6-neighbours
            for t in range(6):
                nodes[t] = rank[p + off[t]]
        for t in range(count):
            r = nodes[t]
            if r <= k:
                continue
            r = find(parent, r)
            if r == root:
                continue
            if r > root:
                young = root
                root = r
            else:
                young = r
            parent[young] = root
            if level[young] != level[k]:
                births[m] = k
                deaths[m] = young
                m += 1
    return births[:m].copy(), deaths[:m].copy()


@njit
def voids_v(porder: np.ndarray, rank: np.ndarray, level: np.ndarray, h: int, w: int):
    """dim-2 pairs of "V": the 8 cubes around each voxel (node: max corner rank), decreasing order."""
    return _voids(porder, rank, level, h, w, True)


@njit
def voids_t(porder: np.ndarray, rank: np.ndarray, level: np.ndarray, h: int, w: int):
    """dim-2 pairs of "T": voxels 6-connected plus the outside (the padding), decreasing order."""
    return _voids(porder, rank, level, h, w, False)
