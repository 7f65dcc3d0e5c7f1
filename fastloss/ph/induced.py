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

Clearing (as the reference): under "V" in 2D the dual's cells *are* the edges, and each edge either
merges two dual components or two primal ones, never both nor neither (the greedy forests of a planar
graph and of its dual, under one total order, are complements). The dual passes run first and hand the
edges that merged nothing (``kept``) to the dim-0 passes: half the edges, every one a merge. The
target goes the other way (its dim-0 pass is part of the cached target side, and keeps the edges for
its dual pass, which depends on the prediction and runs every call).

Memory layout (what makes the passes fast: they visit cells in filtration order, i.e. all over the
grid, so every access is a cache miss unless it shares a line): union-find nodes are padded positions
(pixels for dim 0; top cells, plus the outside at position ``P`` = padded size, for the dual), so a
cell's nodes share cache lines; a root's parent slot holds its key instead (``-(rank + 1)`` for dim 0,
``-(level + 1)`` for the dual); per-root attributes follow the parent slot, and the last slot of node
``q`` is the level of *pixel* ``q`` (the cell's corners are at the nodes' positions, so a cell's level
comes from lines the finds load anyway: measured 1.2x on a pass at 512x512). Bars are returned as ranks of their critical
pixels (birth, death) in the image's own filtration; a bar of equal birth and death level is not
recorded (zero persistence, as the reference).
"""

from __future__ import annotations

import numpy as np

from ._jit import njit
from .cells import MAX, SHIFT

_TYPE = (1 << SHIFT) - 1


@njit
def _root(node: np.ndarray, x: int, stride: int) -> int:
    """Root of ``x`` in a forest of nodes of ``stride`` entries, the parent at ``node[stride * x]`` (a
    negative value marks a root), halving the path on the way."""
    while True:
        p = node[stride * x]
        if p < 0:
            return x
        g = node[stride * p]
        if g < 0:
            return p
        node[stride * x] = g
        x = g


@njit
def _cell_level(node: np.ndarray, stride: int, q: int, corners: np.ndarray, t: int, mode: int) -> int:
    """Level of the type-``t`` cell at ``q`` (pixel levels in the nodes' last slots): its highest corner
    (MAX) or its lowest pixel corner (MIN)."""
    last = stride - 1
    best = node[stride * (q + corners[t, 0]) + last]
    if mode == MAX:
        for j in range(1, corners.shape[1]):
            best = max(best, node[stride * (q + corners[t, j]) + last])
        return best
    for j in range(1, corners.shape[1]):
        x = node[stride * (q + corners[t, j]) + last]
        if x >= 0 and (best < 0 or x < best):
            best = x
    return best


@njit
def _critical(rank: np.ndarray, n: int, q: int, corners: np.ndarray, t: int, mode: int) -> int:
    """Rank of a type-``t`` cell's critical pixel: its highest corner (MAX) or its lowest pixel corner (MIN)."""
    if mode == MAX:
        best = -1
        for j in range(corners.shape[1]):
            best = max(best, rank[q + corners[t, j]])
        return best
    best = n
    for j in range(corners.shape[1]):
        best = min(best, rank[q + corners[t, j]])
    return best


@njit
def _top_death(rank: np.ndarray, lv: np.ndarray, u: int, corners: np.ndarray, rule: int) -> int:
    """Rank of the critical pixel of the top cell at ``u`` (corners ``corners[0]``): its highest corner
    (rule 0), or its lowest-indexed corner of the highest level (rule 1, the reference's rule for cubes)."""
    best = -1
    for j in range(corners.shape[1]):
        best = max(best, rank[u + corners[0, j]])
    if rule == 0:
        return best
    top = -1
    for j in range(corners.shape[1]):
        top = max(top, lv[u + corners[0, j]])
    for j in range(corners.shape[1]):  # corners are sorted by offset, i.e. by linear index
        if lv[u + corners[0, j]] == top:
            return rank[u + corners[0, j]]
    return best


@njit
def primal_bars(order: np.ndarray, corners: np.ndarray, rank: np.ndarray, lv: np.ndarray, n: int, keep: bool):
    """dim-0 bars of one image (``n`` pixels): ``(birth_ranks, death_ranks, bar_of, kept)``, ``bar_of[r]``
    the bar born at rank ``r`` (-1 if none). Elder: the lower rank. ``keep``: also return the edges that
    merged nothing, in ``order``'s order (the dual's merges, see the clearing above)."""
    size = rank.size
    node = np.empty(2 * size, np.int32)  # per pixel: parent or -(rank + 1); its level
    for q in range(size):
        node[2 * q] = -rank[q] - 1
        node[2 * q + 1] = lv[q]
    births = np.empty(n, np.int32)
    deaths = np.empty(n, np.int32)
    bar_of = np.full(n, -1, np.int32)
    kept = np.empty(order.size if keep else 0, order.dtype)
    w = 0
    m = 0
    for i in range(order.size):
        e = order[i]
        q = e >> SHIFT
        t = e & _TYPE
        a = q + corners[t, 0]
        b = q + corners[t, 1]
        ra = _root(node, a, 2)
        rb = _root(node, b, 2)
        if ra == rb:
            if keep:
                kept[w] = e
                w += 1
            continue
        ka = -node[2 * ra] - 1
        kb = -node[2 * rb] - 1
        if ka < kb:
            young = rb
            k_young = kb
            node[2 * rb] = ra
        else:
            young = ra
            k_young = ka
            node[2 * ra] = rb
        if node[2 * young + 1] != max(node[2 * a + 1], node[2 * b + 1]):
            births[m] = k_young
            deaths[m] = max(rank[a], rank[b])
            bar_of[k_young] = m
            m += 1
    return births[:m].copy(), deaths[:m].copy(), bar_of, kept[:w].copy()


@njit
def primal_match(order: np.ndarray, corners: np.ndarray, rank: np.ndarray, lv: np.ndarray,
                 rank_p: np.ndarray, rank_t: np.ndarray, bar_p: np.ndarray, bar_t: np.ndarray):
    """dim-0 matches ``(bars of P, bars of T)``: C's pass (its order, ranks, pixel levels), carrying per
    component its lowest P-rank and lowest T-rank beside the parent slot."""
    size = rank.size
    node = np.empty(4 * size, np.int32)  # parent or -(rank + 1); lowest P-rank; lowest T-rank; level
    for q in range(size):
        node[4 * q] = -rank[q] - 1
        node[4 * q + 1] = rank_p[q]
        node[4 * q + 2] = rank_t[q]
        node[4 * q + 3] = lv[q]
    cap = min(bar_p.size, bar_t.size)
    mp = np.empty(cap, np.int32)
    mt = np.empty(cap, np.int32)
    m = 0
    for i in range(order.size):
        e = order[i]
        q = e >> SHIFT
        t = e & _TYPE
        a = q + corners[t, 0]
        b = q + corners[t, 1]
        ra = _root(node, a, 4)
        rb = _root(node, b, 4)
        if ra == rb:
            continue
        if node[4 * ra] > node[4 * rb]:  # -(rank + 1): the larger slot holds the lower rank
            young = rb
            elder = ra
        else:
            young = ra
            elder = rb
        node[4 * young] = elder
        pa = node[4 * ra + 1]
        pb = node[4 * rb + 1]
        ta = node[4 * ra + 2]
        tb = node[4 * rb + 2]
        node[4 * elder + 1] = min(pa, pb)
        node[4 * elder + 2] = min(ta, tb)
        if node[4 * young + 3] != max(node[4 * a + 3], node[4 * b + 3]):
            i_p = bar_p[max(pa, pb)]
            i_t = bar_t[max(ta, tb)]
            if i_p >= 0 and i_t >= 0:
                mp[m] = i_p
                mt[m] = i_t
                m += 1
    return mp[:m].copy(), mt[:m].copy()


@njit
def _dual_forest(top: np.ndarray, top_c: np.ndarray, lv: np.ndarray, stride: int) -> np.ndarray:
    """Dual nodes (top cells by padded position, the outside last), ``stride`` entries each: a top cell
    starts as a root holding ``-(level + 1)``, a position that is no top cell points to the outside; with
    ``stride`` 4, a root's oldest top cell in C's order and its C level follow (itself at first); the
    last slot is the level of the pixel at that position."""
    size = top.size - 1
    node = np.empty(stride * (size + 1), np.int32)
    for u in range(size + 1):
        level = top[u]
        node[stride * u] = -(level + 1) if level >= 0 else size
        if stride == 4:
            node[4 * u + 1] = u
            node[4 * u + 2] = top_c[u]
        node[stride * u + stride - 1] = lv[u] if u < size else -1
    return node


@njit
def dual_bars(order: np.ndarray, corners: np.ndarray, mode: int, sides: np.ndarray, top: np.ndarray,
              top_c: np.ndarray, rank: np.ndarray, lv: np.ndarray, n: int, cell: np.ndarray, rule: int,
              keep: bool):
    """Top-dimensional bars of one image: ``(birth_ranks, death_ranks, bar_at, kept)``; ``bar_at[u]`` is
    the bar whose component was, at its death, the younger one in C's order, as C's top cell ``u`` (-1:
    none). ``top``/``top_c``: :func:`fastloss.ph.cells.top_levels` of this image and of C; ``cell``:
    the top cells' corners (for the death pixel, by ``rule``). Elder: higher (level, position).
    ``keep``: also return the cells that merged nothing, in ``order``'s order (see the clearing above)."""
    size = top.size - 1  # the outside's node
    # per node: parent or -(level + 1); at a root, its top cell with the highest (level, position) in C
    # (the root C's union-find would have for that component) and that level; the pixel level
    node = _dual_forest(top, top_c, lv, 4)
    births = np.empty(n, np.int32)
    deaths = np.empty(n, np.int32)
    bar_at = np.full(size + 1, -1, np.int32)
    kept = np.empty(order.size if keep else 0, order.dtype)
    w = kept.size
    m = 0
    for i in range(order.size - 1, -1, -1):
        e = order[i]
        q = e >> SHIFT
        t = e & _TYPE
        ru = _root(node, q + sides[t, 0], 4)
        rv = _root(node, q + sides[t, 1], 4)
        if ru == rv:
            if keep:
                w -= 1
                kept[w] = e
            continue
        lu = -node[4 * ru] - 1
        lw = -node[4 * rv] - 1
        if lu > lw or (lu == lw and ru > rv):
            young = rv
            elder = ru
            young_level = lw
        else:
            young = ru
            elder = rv
            young_level = lu
        node[4 * young] = elder
        cu = node[4 * ru + 1]
        cv = node[4 * rv + 1]
        lcu = node[4 * ru + 2]
        lcv = node[4 * rv + 2]
        if lcu > lcv or (lcu == lcv and cu > cv):
            c_young = cv
            node[4 * elder + 1] = cu
            node[4 * elder + 2] = lcu
        else:
            c_young = cu
            node[4 * elder + 1] = cv
            node[4 * elder + 2] = lcv
        if young_level != _cell_level(node, 4, q, corners, t, mode):
            births[m] = _critical(rank, n, q, corners, t, mode)
            deaths[m] = _top_death(rank, lv, young, cell, rule)
            bar_at[c_young] = m
            m += 1
    return births[:m].copy(), deaths[:m].copy(), bar_at, kept[w:].copy()


@njit
def dual_match(order: np.ndarray, corners: np.ndarray, mode: int, sides: np.ndarray, top: np.ndarray,
               lv: np.ndarray, bar_p: np.ndarray, bar_t: np.ndarray, keep: bool):
    """Top-dimensional matches ``(bars of P, bars of T, kept)``: C's dual pass (its order, top levels,
    pixel levels), matching at each of its bars the bars of P and T recorded (:func:`dual_bars`) for its
    younger component; ``kept`` as :func:`dual_bars`."""
    node = _dual_forest(top, top, lv, 2)
    cap = lv.size
    mp = np.empty(cap, np.int32)
    mt = np.empty(cap, np.int32)
    kept = np.empty(order.size if keep else 0, order.dtype)
    w = kept.size
    m = 0
    for i in range(order.size - 1, -1, -1):
        e = order[i]
        q = e >> SHIFT
        t = e & _TYPE
        ru = _root(node, q + sides[t, 0], 2)
        rv = _root(node, q + sides[t, 1], 2)
        if ru == rv:
            if keep:
                w -= 1
                kept[w] = e
            continue
        lu = -node[2 * ru] - 1
        lw = -node[2 * rv] - 1
        if lu > lw or (lu == lw and ru > rv):
            young = rv
            node[2 * rv] = ru
            young_level = lw
        else:
            young = ru
            node[2 * ru] = rv
            young_level = lu
        if young_level != _cell_level(node, 2, q, corners, t, mode):
            i_p = bar_p[young]
            i_t = bar_t[young]
            if i_p >= 0 and i_t >= 0:
                mp[m] = i_p
                mt[m] = i_t
                m += 1
    return mp[:m].copy(), mt[:m].copy(), kept[w:].copy()
