"""Persistence pairs of a 2D map by two union-find passes over one filtration order.

Both constructions filter the cubical complex by the sublevel sets of ``f``, pixels in the total order
of :func:`fastloss.ph.sort.filtration` (value, then linear index). Every cell takes the value of one
pixel, so every bar's birth and death *are* pixels:

- ``"V"``: pixels are vertices; a cell's value is its max vertex. Sublevel components are 4-connected.
- ``"T"``: pixels are top cells (squares); a lower cell takes the min of its adjacent pixels. Sublevel
  components are 8-connected.

The kernels run in rank space (union-find nodes are ranks) on the padded grid of ranks, so neighbours
need no bounds checks. They return ``(birth_ranks, death_ranks)``, int32, in the order found.

dim 0 (:func:`components`): pixels in increasing order join their earlier 4- (or 8-) neighbours; when
components meet, the younger dies at the current pixel (elder rule). The oldest never dies (the
essential bar, added by the caller).

dim 1 (:func:`holes_v`, :func:`holes_t`): Alexander duality. Loops of the sublevel filtration are the
bounded components of its complement, i.e. components of a dual graph filtered in decreasing order, in
which the outside is the oldest vertex (it never dies). When a pixel p enters (decreasing), every dual
vertex around it becomes connected (p's open star leaves the sublevel complex), so a step merges:

- ``"V"``: the 4 squares around p (dual vertices; a square's value is its max corner, so its node is
  the max rank of its corners, the outside when a corner is padding). A square whose max corner is p
  is new (node p).
- ``"T"``: p itself with its 4-neighbours already there (the padding is the outside: every border
  pixel touches it).

Every component that loses a merge at p is a loop born at p's value (the edge joining it) and filled at
its oldest node's value: bar ``(p, node)``. Bars whose birth and death values are equal are not
recorded (zero persistence, as cripser).
"""

from __future__ import annotations

import numpy as np

from ._jit import AHEAD, njit, prefetch
from .unionfind import find


@njit(inline=True)
def _prefetch_rows(rank: np.ndarray, q: int, s: int) -> None:
    """Hint the three lines of ``rank`` around padded index ``q`` (its row and the rows above and below; ``s``
    the padded row length): what the pixel AHEAD steps on will read."""
    prefetch(rank, q - s)
    prefetch(rank, q)
    prefetch(rank, q + s)


@njit
def components(porder: np.ndarray, rank: np.ndarray, level: np.ndarray, w: int, conn8: bool):
    """dim-0 pairs (finite bars): 4-connected (``conn8=False``, "V") or 8-connected ("T")."""
    n = porder.size
    s = w + 2
    parent = np.empty(n, np.int32)
    births = np.empty(n, np.int32)
    deaths = np.empty(n, np.int32)
    m = 0
    for k in range(n):
        if k + AHEAD < n:
            _prefetch_rows(rank, porder[k + AHEAD], s)
        p = porder[k]
        parent[k] = k
        # the neighbours' nodes, or k itself for one not there yet (padding has rank n): a select, not
        # a branch, so the unpredictable presence test costs no misprediction (15% faster, measured)
        a = rank[p - 1]
        b = rank[p + 1]
        c = rank[p - s]
        d = rank[p + s]
        nodes = (a if a < k else k, b if b < k else k, c if c < k else k, d if d < k else k)
        if conn8:
            a = rank[p - s - 1]
            b = rank[p - s + 1]
            c = rank[p + s - 1]
            d = rank[p + s + 1]
            diagonal = (a if a < k else k, b if b < k else k, c if c < k else k, d if d < k else k)
        else:
            diagonal = (k, k, k, k)
        root = k
        for t in range(8 if conn8 else 4):
            r = find(parent, nodes[t] if t < 4 else diagonal[t - 4])
            if r == root:
                continue
            if r < root:  # the elder (smaller rank) survives
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
def _holes(porder: np.ndarray, rank: np.ndarray, level: np.ndarray, w: int, squares: bool):
    n = porder.size
    s = w + 2
    parent = np.empty(n + 1, np.int32)
    parent[n] = n
    births = np.empty(n, np.int32)
    deaths = np.empty(n, np.int32)
    m = 0
    for k in range(n - 1, -1, -1):
        if k >= AHEAD:
            _prefetch_rows(rank, porder[k - AHEAD], s)
        p = porder[k]
        parent[k] = k
        root = k
        if squares:  # "V": the 4 squares around p, each the max rank of its corners
            a = rank[p - s - 1]
            b = rank[p - s]
            c = rank[p - s + 1]
            d = rank[p - 1]
            e = rank[p + 1]
            f = rank[p + s - 1]
            g = rank[p + s]
            h = rank[p + s + 1]
            nodes = (max(max(a, b), max(d, k)), max(max(b, c), max(e, k)),
                     max(max(d, f), max(g, k)), max(max(e, g), max(h, k)))
        else:  # "T": the 4-neighbours already there (else k itself, see components())
            a = rank[p - 1]
            b = rank[p + 1]
            c = rank[p - s]
            d = rank[p + s]
            nodes = (a if a > k else k, b if b > k else k, c if c > k else k, d if d > k else k)
        for t in range(4):
            r = find(parent, nodes[t])
            if r == root:
                continue
            if r > root:  # the elder (larger rank; the outside is n) survives
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
def holes_v(porder: np.ndarray, rank: np.ndarray, level: np.ndarray, w: int):
    """dim-1 pairs of "V": the 4 squares around each pixel (node: max corner rank), decreasing order."""
    return _holes(porder, rank, level, w, True)


@njit
def holes_t(porder: np.ndarray, rank: np.ndarray, level: np.ndarray, w: int):
    """dim-1 pairs of "T": pixels 4-connected plus the outside (the padding), decreasing order."""
    return _holes(porder, rank, level, w, False)
