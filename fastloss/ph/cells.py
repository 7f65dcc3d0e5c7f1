"""The filtration order of a map's cells, for the Betti-matching passes (:mod:`fastloss.ph.induced`).

The persistence kernels (:mod:`fastloss.ph.cubical2d`) walk *pixels* in their filtration order and
merge each with its earlier neighbours. Induced matchings need more: the comparison passes follow one
image's union sequence while asking another image which component is the elder, and that sequence must
be exactly the reference's (Betti-Matching-3D, Stucki et al. 2024) or a map with several merges at one
pixel is matched differently. The reference orders *cells* (edges, squares) by (value, cell index), the
index ordering cells by their lowest corner (C order) and then by type. This module builds that order.

A *cell family* is a table of corner offsets on the padded grid of :class:`fastloss.ph.sort.Filtration`
(``corners[t]``: the corners of a type-``t`` cell based at padded position ``q``). Its cells are ids
``q * 16 + t`` (so the ids sort by (lowest corner, type), the reference's index order) with

- ``mode = MAX``: a cell exists when all its corners are pixels, its level is its corners' highest
  (the "V" construction; also the 8/26-adjacency edges of "T"): critical pixel = highest-ranked corner;
- ``mode = MIN``: a cell exists when at least one corner is a pixel, its level is the lowest over those
  (the faces between "T" pixels and the outside): critical pixel = lowest-ranked pixel corner.

:func:`cell_order` sorts a family's cells by (level, id) with a counting sort on levels: two linear
scans of the cells and one scatter. (A walk over the pixels in filtration order, emitting each pixel's
cells, needs no histogram but reads the grid in random order: measured 3x slower at 512x512.) Levels (:attr:`Filtration.level`) are distinct-value indices,
so ties in value are ties in level, exactly as the reference compares values.

:func:`top_levels` gives the top-dimensional cells (squares/cubes under "V", pixels under "T") their
level; positions that are no such cell (a square with a padding corner, a padding pixel) get -1 and the
dual passes send them to the outside node.
"""

from __future__ import annotations

import numpy as np

from ._jit import njit

OUTSIDE = 1 << 30  # the outside's level in the dual passes: above every level
SHIFT = 4  # cell id = q << SHIFT | type; at most 16 types (26-adjacency has 13)
MAX = 0
MIN = 1


def strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Strides (in cells) of the grid padded by one cell on every side, C order."""
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s + 2
    return tuple(reversed(out))


def families(shape: tuple[int, ...], construction: str) -> dict[str, object]:
    """The cell families of a 2D/3D map's complex, as offset tables on its padded grid.

    - ``primal`` (``corners``, ``mode``): the edges of dim 0 (pairs of pixels);
    - ``dual`` (``corners``, ``mode``, ``sides``): the codimension-1 cells of the top dimension, each
      separating the two top cells at ``q + sides[t, 0]`` and ``q + sides[t, 1]``;
    - ``top`` (``corners``, ``death``): the top cells; ``death`` is the rule for the critical pixel of
      a top cell (0: its highest-ranked corner; 1: its lowest-indexed corner among the highest level,
      the reference's rule for 3D cubes).
    """
    nd = len(shape)
    st = strides(shape)
    axes = range(nd)

    def table(rows: list[list[int]]) -> np.ndarray:
        return np.array(rows, dtype=np.int64)

    if construction == "V":
        primal = table([[0, st[a]] for a in axes])
        if nd == 2:  # the edges again; each separates the squares on its two sides
            dual = primal
            sides = table([[-st[1 - a], 0] for a in axes])
        else:  # squares perpendicular to axis a (reference type a), between the cubes along a
            dual = table([[0, st[b], st[c], st[b] + st[c]] for a in axes for b, c in [[x for x in axes if x != a]]])
            sides = table([[-st[a], 0] for a in axes])
        corners = [0]
        for a in axes:
            corners = corners + [c + st[a] for c in corners]
        top = table([sorted(corners)])
        return {"primal": (primal, MAX), "dual": (dual, MAX, sides), "top": (top, 1 if nd == 3 else 0)}
    if construction == "T":
        # dim 0: pixels joined to every pixel sharing a vertex (8/26-adjacency), the forward half
        offs = []
        for d in np.ndindex(*(3,) * nd):
            delta = np.array(d) - 1
            off = int(sum(int(delta[a]) * st[a] for a in axes))
            if off > 0:
                offs.append(off)
        primal = table([[0, o] for o in sorted(offs)])
        # top dimension: pixels and the outside, joined through the faces they share
        dual = table([[0, st[a]] for a in axes])
        sides = dual.copy()
        return {"primal": (primal, MAX), "dual": (dual, MIN, sides), "top": (table([[0]]), 0)}
    raise ValueError(f"`construction` must be one of ['V', 'T'], got {construction!r}")


@njit
def pixel_levels(rank: np.ndarray, level: np.ndarray) -> np.ndarray:
    """The level of every padded position (-1 on the padding)."""
    out = np.empty(rank.size, np.int32)
    for q in range(rank.size):
        out[q] = level[rank[q]]  # level[n] = -1
    return out


@njit
def _cell_levels(lv: np.ndarray, nlev: int, corners: np.ndarray, mode: int, top_corners: np.ndarray, with_top: bool):
    """The level of every cell ``q * k + t`` (-1: none) and, per level, where its cells start in the
    sorted order (exclusive prefix sums of the counts; entry ``nlev`` is the number of cells); with
    ``with_top``, also :func:`top_levels` (same scan: the corners are the ones just read)."""
    size = lv.size
    k, m = corners.shape
    span = 0
    for t in range(k):
        for j in range(m):
            span = max(span, corners[t, j])
    cell = np.full((size - span) * k, -1, np.int32)
    start = np.zeros(nlev + 1, np.int64)
    top = np.full(size + 1 if with_top else 0, -1, np.int32)
    top_span = 0
    for j in range(top_corners.size):
        top_span = max(top_span, top_corners[j])
    for q in range(size - span):
        if with_top and q < size - top_span:
            top[q] = _top_level(lv, q, top_corners)
        for t in range(k):
            if mode == MAX:
                best = lv[q + corners[t, 0]]
                for j in range(1, m):
                    x = lv[q + corners[t, j]]
                    if x < 0 or best < 0:
                        best = -1
                        break
                    best = max(best, x)
            else:
                best = -1
                for j in range(m):
                    x = lv[q + corners[t, j]]
                    if x >= 0 and (best < 0 or x < best):
                        best = x
            if best >= 0:
                cell[q * k + t] = best
                start[best + 1] += 1
    if with_top:
        for q in range(max(0, size - span), size - top_span):
            top[q] = _top_level(lv, q, top_corners)
        top[size] = OUTSIDE
    for i in range(nlev):
        start[i + 1] += start[i]
    return cell, start, top


@njit
def _scatter(cell: np.ndarray, start: np.ndarray, k: int, out: np.ndarray) -> None:
    """Place every cell's id at its level's next free slot (a stable counting sort: ids increase)."""
    i = 0
    for q in range(cell.size // k):  # nested loops: no division by the runtime k (measured 1.4x)
        for t in range(k):
            x = cell[i]
            if x >= 0:
                out[start[x]] = (q << SHIFT) | t
                start[x] += 1
            i += 1


def cell_order(fl, corners: np.ndarray, mode: int, lv: np.ndarray | None = None,
               top_corners: np.ndarray | None = None):
    """Ids (``q << SHIFT | type``) of a family's cells sorted by (level, id); ``fl`` a Filtration,
    ``lv`` its :func:`pixel_levels` (computed when not given). With ``top_corners``, returns
    ``(order, top_levels(lv, top_corners))``, computed in the same scan."""
    n = fl.porder.size
    lv = pixel_levels(fl.rank, fl.level) if lv is None else lv
    nlev = int(fl.level[n - 1]) + 1
    with_top = top_corners is not None
    tc = top_corners if with_top else np.zeros(1, np.int64)
    cell, start, top = _cell_levels(lv, nlev, corners, mode, tc, with_top)
    # int32 ids while they fit: every pass reads the order once, this halves that traffic
    dtype = np.int32 if (lv.size << SHIFT) < np.iinfo(np.int32).max else np.int64
    out = np.empty(int(start[nlev]), dtype)
    _scatter(cell, start, corners.shape[0], out)
    return (out, top) if with_top else out


@njit
def _top_level(lv: np.ndarray, q: int, corners: np.ndarray) -> int:
    best = lv[q + corners[0]]
    for j in range(1, corners.size):
        x = lv[q + corners[j]]
        if x < 0 or best < 0:
            return -1
        best = max(best, x)
    return best


@njit
def top_levels(lv: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """The level of the top cell based at every padded position (-1: none there: a square with a
    padding corner, a padding pixel), and one more entry at ``P`` (padded size) for the outside, higher
    than every level. ``lv``: :func:`pixel_levels`. The dual passes' elder rule is the reference's:
    higher level, then larger position."""
    size = lv.size
    out = np.full(size + 1, -1, np.int32)
    span = 0
    for j in range(corners.size):
        span = max(span, corners[j])
    for q in range(size - span):
        best = lv[q + corners[0]]
        for j in range(1, corners.size):
            x = lv[q + corners[j]]
            if x < 0 or best < 0:
                best = -1
                break
            best = max(best, x)
        out[q] = best
    out[size] = OUTSIDE
    return out
