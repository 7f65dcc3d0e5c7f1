"""Exact Betti numbers of a binary mask's foreground complex by labelling, in O(n).

The loss filters ``f = 1 - mask``: the foreground enters at 0, the background at 1, and a target bar
counts when its persistence is at least 0.5, i.e. when it is born at 0. Those bars are the homology of
the foreground complex X, so the Betti numbers are X's:

- beta_0: components of the foreground; 4-connected (2D) / 6-connected (3D) under "V" (pixels are
  vertices, cells need all their vertices), 8/26-connected under "T" (pixels are closed squares/cubes).
- top dimension (beta_1 in 2D, beta_2 in 3D), by Alexander duality: components of the background padded
  with one ring of background (so the outside is one component), minus that outside component. The
  background's connectivity is the complementary one: 8/26 under "V", 4/6 under "T".
- beta_1 in 3D: beta_0 - beta_1 + beta_2 = chi, with the Euler characteristic chi counted from X's
  cells (vertices - edges + squares - cubes).
"""

from __future__ import annotations

import numpy as np

from .._validation import check_construction
from ._jit import njit, require_numba
from .unionfind import union_count


@njit
def _runs(grid: np.ndarray, value: int):
    """Maximal runs of ``value`` along the last axis of a C-contiguous array viewed as rows.

    Returns ``(row_start, run_begin, run_end)``: the runs of row ``r`` are ``row_start[r]`` to
    ``row_start[r + 1] - 1``, each covering columns ``run_begin..run_end`` (inclusive).
    """
    w = grid.shape[-1]
    rows = grid.size // w
    flat = grid.reshape(rows, w)
    row_start = np.empty(rows + 1, np.int32)
    begin = np.empty(grid.size // 2 + rows, np.int32)
    end = np.empty(grid.size // 2 + rows, np.int32)
    m = 0
    for r in range(rows):
        row_start[r] = m
        j = 0
        while j < w:
            if flat[r, j] != value:
                j += 1
                continue
            begin[m] = j
            while j < w and flat[r, j] == value:
                j += 1
            end[m] = j - 1
            m += 1
    row_start[rows] = m
    return row_start, begin, end


@njit
def _join_rows(parent, row_start, begin, end, r: int, q: int, reach: int) -> int:
    """Union every run of row ``r`` with the runs of row ``q`` it touches (``reach`` 0: sharing a column,
    1: also diagonally); returns the number of successful unions."""
    joined = 0
    i = row_start[r]
    i_end = row_start[r + 1]
    j = row_start[q]
    j_end = row_start[q + 1]
    while i < i_end and j < j_end:
        if begin[j] <= end[i] + reach and begin[i] <= end[j] + reach:
            joined += union_count(parent, i, j)
        # advance the run that ends first
        if end[i] < end[j]:
            i += 1
        else:
            j += 1
    return joined


@njit
def _count_2d(grid: np.ndarray, value: int, conn8: bool) -> int:
    """Number of components of the pixels equal to ``value`` (4- or 8-connected), by runs."""
    h = grid.shape[0]
    row_start, begin, end = _runs(grid, value)
    count = row_start[h]
    parent = np.arange(count).astype(np.int32)
    reach = 1 if conn8 else 0
    for r in range(1, h):
        count -= _join_rows(parent, row_start, begin, end, r, r - 1, reach)
    return count


@njit
def _count_3d(grid: np.ndarray, value: int, conn26: bool) -> int:
    """Number of components of the voxels equal to ``value`` (6- or 26-connected), by runs."""
    d, h, _ = grid.shape
    row_start, begin, end = _runs(grid, value)
    count = row_start[d * h]
    parent = np.arange(count).astype(np.int32)
    reach = 1 if conn26 else 0
    for a in range(d):
        for b in range(h):
            r = a * h + b
            if b > 0:
                count -= _join_rows(parent, row_start, begin, end, r, r - 1, reach)
            if a > 0:
                count -= _join_rows(parent, row_start, begin, end, r, r - h, reach)
                if conn26:
                    if b > 0:
                        count -= _join_rows(parent, row_start, begin, end, r, r - h - 1, 1)
                    if b + 1 < h:
                        count -= _join_rows(parent, row_start, begin, end, r, r - h + 1, 1)
    return count


@njit
def _euler_v(m: np.ndarray) -> int:
    """Euler characteristic of the "V" complex of a 3D foreground: cells whose corners are all foreground."""
    d, h, w = m.shape
    chi = 0
    for a in range(d):
        for b in range(h):
            for c in range(w):
                if not m[a, b, c]:
                    continue
                chi += 1
                ea = a + 1 < d and m[a + 1, b, c]
                eb = b + 1 < h and m[a, b + 1, c]
                ec = c + 1 < w and m[a, b, c + 1]
                chi -= ea + eb + ec
                fab = ea and eb and m[a + 1, b + 1, c]
                fac = ea and ec and m[a + 1, b, c + 1]
                fbc = eb and ec and m[a, b + 1, c + 1]
                chi += fab + fac + fbc
                if fab and fac and fbc and m[a + 1, b + 1, c + 1]:
                    chi -= 1
    return chi


@njit
def _euler_t(p: np.ndarray) -> int:
    """Euler characteristic of the "T" complex (union of closed foreground voxels) of a padded 3D mask.

    ``p`` has one ring of background; lattice point (a, b, c) (0..D etc.) touches the voxels
    ``p[a:a+2, b:b+2, c:c+2]``; a cell is in the complex when it touches a foreground voxel.
    """
    d, h, w = p.shape
    chi = 0
    for a in range(d - 1):
        for b in range(h - 1):
            for c in range(w - 1):
                # vertex at lattice (a, b, c): the 8 voxels around it
                if (p[a, b, c] or p[a + 1, b, c] or p[a, b + 1, c] or p[a + 1, b + 1, c] or p[a, b, c + 1]
                        or p[a + 1, b, c + 1] or p[a, b + 1, c + 1] or p[a + 1, b + 1, c + 1]):
                    chi += 1
                # edges from (a, b, c) along each axis (their 4 voxels), if the edge is inside the box
                if a + 2 < d and (p[a + 1, b, c] or p[a + 1, b + 1, c] or p[a + 1, b, c + 1] or p[a + 1, b + 1, c + 1]):
                    chi -= 1
                if b + 2 < h and (p[a, b + 1, c] or p[a + 1, b + 1, c] or p[a, b + 1, c + 1] or p[a + 1, b + 1, c + 1]):
                    chi -= 1
                if c + 2 < w and (p[a, b, c + 1] or p[a + 1, b, c + 1] or p[a, b + 1, c + 1] or p[a + 1, b + 1, c + 1]):
                    chi -= 1
                # squares from (a, b, c) spanning two axes (their 2 voxels)
                if b + 2 < h and c + 2 < w and (p[a, b + 1, c + 1] or p[a + 1, b + 1, c + 1]):
                    chi += 1
                if a + 2 < d and c + 2 < w and (p[a + 1, b, c + 1] or p[a + 1, b + 1, c + 1]):
                    chi += 1
                if a + 2 < d and b + 2 < h and (p[a + 1, b + 1, c] or p[a + 1, b + 1, c + 1]):
                    chi += 1
                # the cube from (a, b, c) is voxel (a, b, c) of the mask
                if a + 2 < d and b + 2 < h and c + 2 < w and p[a + 1, b + 1, c + 1]:
                    chi -= 1
    return chi


def betti_numbers(mask: np.ndarray, construction: str = "V") -> tuple[int, ...]:
    """``(beta_0, ..., beta_{n-1})`` of the foreground (nonzero pixels) of a 2D or 3D binary mask."""
    require_numba()
    check_construction(construction)
    m = np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)
    if m.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D mask, got {m.ndim}D")
    if m.size == 0:
        raise ValueError(f"cannot compute Betti numbers of an empty mask of shape {m.shape}")
    padded = np.pad(m, 1)
    fine = construction == "T"  # the foreground's connectivity is the fine one (8/26) under "T"
    if m.ndim == 2:
        b0 = _count_2d(m, 1, fine)
        b1 = _count_2d(padded, 0, not fine) - 1
        return (b0, b1)
    b0 = _count_3d(m, 1, fine)
    b2 = _count_3d(padded, 0, not fine) - 1
    chi = _euler_t(padded) if fine else _euler_v(m)
    return (b0, b0 + b2 - chi, b2)
