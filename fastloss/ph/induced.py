"""Union-find passes of Betti matching: each image's barcode and the induced matchings through the comparison.

Betti matching (Stucki et al. 2023, 2024) compares a prediction P and a target T through the comparison
image C = min(P, T), whose sublevel sets contain both of theirs. A bar of P is matched to a bar of T when
both are matched, by the matchings induced by the inclusions, to the same bar of C. Stucki et al. 2024
compute this for dim 0 and the top dimension with union-find alone; these kernels follow that
algorithm, on the cell orders of :mod:`fastloss.ph.cells`, so they reproduce the reference
(Betti-Matching-3D) pair for pair, ties included:

- dim 0 (:func:`primal_bars`, :func:`primal_match`): edges in increasing (level, id). Each image's pass
  gives its bars (the younger root dies at the edge; elder = lower rank) and, for every bar, the vertex
  it is born at. The comparison pass runs C's union-find and carries, for every component, its oldest
  vertex in P's and in T's order (the roots a union-find of P or T run along C's merges would have):
  when C's merge is a bar, the younger of the two P-roots and of the two T-roots name the bars of P and
  T induced onto it; if both are bars, they are matched.
- top dimension (:func:`dual_bars`, :func:`dual_match`): by Alexander duality, components of the dual
  graph (top cells and the outside) in decreasing order; elder = larger key (level, then position).
  Each image's pass carries, for every dual component, its oldest top cell in C's order: the younger of
  the two at a merge that is a bar of the image is the C-component that bar is induced onto, recorded
  per top cell. C's own pass matches its bar at a merge to the bars of P and T recorded for the younger
  root.

Node numbering: dim 0 nodes are ranks (so the elder is the smaller number); dual nodes are padded
positions of top cells plus the outside at position ``P`` (padded size). Bars are returned as ranks of
their critical pixels (birth, death) in the image's own filtration; a bar of equal birth and death level
is not recorded (zero persistence, as the reference).
"""

from __future__ import annotations

import numpy as np

from ._jit import njit
from .cells import MAX, SHIFT
from .unionfind import find

_TYPE = (1 << SHIFT) - 1


@njit
def _critical(rank: np.ndarray, n: int, q: int, corners: np.ndarray, t: int, mode: int) -> int:
    """Rank of a type-``t`` cell's critical pixel: its highest corner (MAX) or its lowest pixel corner (MIN)."""
    if mode == MAX:
        best = -1
        for j in range(corners.shape[1]):
            r = rank[q + corners[t, j]]
            if r > best:
                best = r
        return best
    best = n
    for j in range(corners.shape[1]):
        r = rank[q + corners[t, j]]
        if r < best:
            best = r
    return best


@njit
def _at_level(key: int, lv: int, size: int) -> bool:
    """Whether a top-cell key (``level * size + position``) is at level ``lv`` (no division)."""
    low = np.int64(lv) * size
    return low <= key < low + size


@njit
def _top_death(rank: np.ndarray, level: np.ndarray, u: int, corners: np.ndarray, rule: int) -> int:
    """Rank of the critical pixel of the top cell at ``u`` (corners ``corners[0]``): its highest corner
    (rule 0), or its lowest-indexed corner of the highest level (rule 1, the reference's rule for cubes)."""
    best = -1
    for j in range(corners.shape[1]):
        r = rank[u + corners[0, j]]
        if r > best:
            best = r
    if rule == 0:
        return best
    top = level[best]
    for j in range(corners.shape[1]):  # corners are sorted by offset, i.e. by linear index
        r = rank[u + corners[0, j]]
        if level[r] == top:
            return r
    return best


@njit
def primal_bars(order: np.ndarray, corners: np.ndarray, porder: np.ndarray, rank: np.ndarray, level: np.ndarray):
    """dim-0 bars of one image: ``(birth_ranks, death_ranks, bar_of)``, ``bar_of[r]`` the bar born at
    rank ``r`` (-1 if none)."""
    n = porder.size
    parent = np.arange(n).astype(np.int32)
    births = np.empty(n, np.int32)
    deaths = np.empty(n, np.int32)
    bar_of = np.full(n, -1, np.int32)
    m = 0
    for i in range(order.size):
        e = order[i]
        q = e >> SHIFT
        t = e & _TYPE
        a = rank[q + corners[t, 0]]
        b = rank[q + corners[t, 1]]
        ra = find(parent, a)
        rb = find(parent, b)
        if ra == rb:
            continue
        if ra < rb:
            young = rb
            parent[rb] = ra
        else:
            young = ra
            parent[ra] = rb
        top = max(a, b)
        if level[young] != level[top]:
            births[m] = young
            deaths[m] = top
            bar_of[young] = m
            m += 1
    return births[:m].copy(), deaths[:m].copy(), bar_of


@njit
def primal_match(order: np.ndarray, corners: np.ndarray, porder: np.ndarray, rank: np.ndarray, level: np.ndarray,
                 rank_p: np.ndarray, rank_t: np.ndarray, bar_p: np.ndarray, bar_t: np.ndarray):
    """dim-0 matches ``(bars of P, bars of T)`` through the comparison image (its order, ranks, levels)."""
    n = porder.size
    parent = np.arange(n).astype(np.int32)
    oldest_p = np.empty(n, np.int32)  # per C-root: the lowest P-rank in its component
    oldest_t = np.empty(n, np.int32)
    for k in range(n):
        q = porder[k]
        oldest_p[k] = rank_p[q]
        oldest_t[k] = rank_t[q]
    mp = np.empty(n, np.int32)
    mt = np.empty(n, np.int32)
    m = 0
    for i in range(order.size):
        e = order[i]
        q = e >> SHIFT
        t = e & _TYPE
        a = rank[q + corners[t, 0]]
        b = rank[q + corners[t, 1]]
        ra = find(parent, a)
        rb = find(parent, b)
        if ra == rb:
            continue
        if ra < rb:
            young = rb
            elder = ra
        else:
            young = ra
            elder = rb
        parent[young] = elder
        pa = oldest_p[ra]
        pb = oldest_p[rb]
        ta = oldest_t[ra]
        tb = oldest_t[rb]
        oldest_p[elder] = min(pa, pb)
        oldest_t[elder] = min(ta, tb)
        if level[young] != level[max(a, b)]:
            i_p = bar_p[max(pa, pb)]
            i_t = bar_t[max(ta, tb)]
            if i_p >= 0 and i_t >= 0:
                mp[m] = i_p
                mt[m] = i_t
                m += 1
    return mp[:m].copy(), mt[:m].copy()


@njit
def dual_bars(order: np.ndarray, corners: np.ndarray, mode: int, sides: np.ndarray, key: np.ndarray,
              key_c: np.ndarray, rank: np.ndarray, level: np.ndarray, top: np.ndarray, rule: int):
    """Top-dimensional bars of one image: ``(birth_ranks, death_ranks, bar_at)``; ``bar_at[u]`` is the
    bar whose component was, at its death, the younger one in C's order, as C's top cell ``u`` (-1:
    none). ``key``/``key_c``: :func:`fastloss.ph.cells.top_keys` of this image and of C."""
    size = key.size - 1  # the outside's node
    n = level.size - 1
    parent = np.arange(size + 1).astype(np.int32)
    oldest_c = np.arange(size + 1).astype(np.int32)  # per root: its top cell with the largest C key
    births = np.empty(n, np.int32)
    deaths = np.empty(n, np.int32)
    bar_at = np.full(size + 1, -1, np.int32)
    m = 0
    for i in range(order.size - 1, -1, -1):
        e = order[i]
        q = e >> SHIFT
        t = e & _TYPE
        u = q + sides[t, 0]
        v = q + sides[t, 1]
        if key[u] < 0:
            u = size
        if key[v] < 0:
            v = size
        ru = find(parent, u)
        rv = find(parent, v)
        if ru == rv:
            continue
        if key[ru] > key[rv]:
            young = rv
            elder = ru
        else:
            young = ru
            elder = rv
        parent[young] = elder
        cu = oldest_c[ru]
        cv = oldest_c[rv]
        if key_c[cu] > key_c[cv]:
            c_young = cv
            oldest_c[elder] = cu
        else:
            c_young = cu
            oldest_c[elder] = cv
        birth = _critical(rank, n, q, corners, t, mode)
        if not _at_level(key[young], level[birth], size):
            births[m] = birth
            deaths[m] = _top_death(rank, level, young, top, rule)
            bar_at[c_young] = m
            m += 1
    return births[:m].copy(), deaths[:m].copy(), bar_at


@njit
def dual_match(order: np.ndarray, corners: np.ndarray, mode: int, sides: np.ndarray, key: np.ndarray,
               rank: np.ndarray, level: np.ndarray, bar_p: np.ndarray, bar_t: np.ndarray):
    """Top-dimensional matches ``(bars of P, bars of T)``: C's dual pass, matching at each of its bars the
    bars of P and T recorded (:func:`dual_bars`) for its younger component."""
    size = key.size - 1
    n = level.size - 1
    parent = np.arange(size + 1).astype(np.int32)
    mp = np.empty(n, np.int32)
    mt = np.empty(n, np.int32)
    m = 0
    for i in range(order.size - 1, -1, -1):
        e = order[i]
        q = e >> SHIFT
        t = e & _TYPE
        u = q + sides[t, 0]
        v = q + sides[t, 1]
        if key[u] < 0:
            u = size
        if key[v] < 0:
            v = size
        ru = find(parent, u)
        rv = find(parent, v)
        if ru == rv:
            continue
        if key[ru] > key[rv]:
            young = rv
            parent[rv] = ru
        else:
            young = ru
            parent[ru] = rv
        if not _at_level(key[young], level[_critical(rank, n, q, corners, t, mode)], size):
            i_p = bar_p[young]
            i_t = bar_t[young]
            if i_p >= 0 and i_t >= 0:
                mp[m] = i_p
                mt[m] = i_t
                m += 1
    return mp[:m].copy(), mt[:m].copy()
