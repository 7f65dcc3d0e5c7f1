"""Every dimension of a 3D map at once: dims 0 and 2 by union-find on explicit cells, dim 1 by a cleared
coboundary reduction (the scheme of CubicalRipser, shrunk by what dims 0 and 2 give).

Cells live on the padded grid of :class:`fastloss.ph.sort.Filtration` (strides ``S = (sa, sb, 1)``):
a *V-edge* ``(q, a)`` has corners ``q, q + S[a]``; a *V-square* ``(q, o)`` (normal axis ``o``, spanning
the other two axes ``u < w``) has corners ``q + i S[u] + j S[w]``; a *V-cube* ``q`` has 8 corners.

- ``"V"``: voxels are vertices; the complex's edges, squares and cubes are the V-cells whose corners
  are all voxels, each entering at its highest-ranked corner.
- ``"T"``: voxels are cubes; the complex's cells are dual to the V-cells: a T-vertex is a V-cube, a
  T-edge a V-square, a T-square a V-edge, a T-cube a voxel; one exists when a corner of its V-cell is a
  voxel and enters at its lowest-ranked voxel corner.

Either way a cell's value is one voxel's, its *critical voxel* ``p`` (rank ``v``), and the cells sharing
``p`` are the few V-cells around ``p``. The total order on cells is ``(v, dim, idx)``, ``idx`` the
cell's place around ``p`` (edges ``2 a + i``: base ``p - i S[a]``; squares ``4 o + 2 i + j``: base
``p - i S[u] - j S[w]``; cubes ``4 l + 2 i + j``). :func:`cell_keys` writes every edge's and square's
key ``16 v + idx`` (``16 n``: no such cell): comparing keys is comparing cells.

- dim 0: Kruskal on the 1-skeleton in increasing order (``"V"``: voxels joined by edges,
  :func:`voxel_forest`; ``"T"``: V-cubes joined by V-squares, :func:`cube_forest`), elder rule.
- dim 2: Alexander duality, Kruskal on the dual graph in decreasing order with the outside as the
  eldest node (``"V"``: V-cubes and the outside joined by V-squares; ``"T"``: voxels and the outside
  joined by V-edges).
- dim 1 (:func:`loops`): cohomology, columns are the 1-cells (edges; ``"T"``: V-squares) in decreasing
  order, rows the 2-cells, a column's pivot its earliest row. What the two forests give shrinks it:
  the 1-cells of the dim-0 forest are cleared (their columns reduce to zero), and the 2-cells of the
  dual forest never enter as rows (the earliest 2-cell of a non-zero cocycle closes a cycle of the dual
  graph, so it is never a forest cell: dropping those rows keeps every pivot). What remains is square:
  one column and one row per dim-1 pair. A column whose pivot's latest column-face is the column
  itself is an *apparent pair*, final without reduction; those are found by one linear scan of the
  grid. The other columns are reduced in decreasing order with a heap (entries cancel in pairs, mod
  2), adding the coboundary of the column that owns the pivot (an apparent column's, or a reduced one
  kept in a bounded cache).

Every cell of the complex is in exactly one pair (dims 0, 1, 2) or the essential component, so the
kernels return every pair; the ones of zero persistence (equal levels) are not recorded.
"""

from __future__ import annotations

import numpy as np

from . import scratch
from ._jit import AHEAD, lowest_bit, njit, prefetch
from .cubical3d import prefetch_around
from .unionfind import find

# the reduced columns kept for reuse: at most this many entries per voxel (bounded memory; the pool's
# pages are only touched as it fills). The image reductions of a binary target in C need more: at 4 a
# voxel the T-construction's cache filled at 64^3 and the rest re-added boundaries (2.3x the entries).
CACHE_PER_VOXEL = 4
IMAGE_CACHE_PER_VOXEL = 8
# the place maps (cell_keys' emap, smap: a nibble per place) hold flags above their places: bit FLAGS + l is set
# by the forests when the cell of place l is a forest cell (one nibble of 15 stays between: the places end there)
EDGE_FLAGS = 28
SQUARE_FLAGS = 52


def _squares_of() -> np.ndarray:
    """Per set of a voxel's edges (bit ``g``: the edge of geometric index ``g = 2 a + i``), the set of its
    squares both of whose edges at the voxel are in it (bit ``4 o + 2 i + j``: the square of normal ``o``
    spanning edges ``2 u + i`` and ``2 w + j``, ``u < w`` the other axes)."""
    out = np.zeros(64, np.int64)
    for mine in range(64):
        for g in range(12):
            o = g >> 2
            u, w = [x for x in range(3) if x != o]
            if (mine >> (2 * u + ((g >> 1) & 1))) & (mine >> (2 * w + (g & 1))) & 1:
                out[mine] |= 1 << g
    return out


SQUARES_OF = _squares_of()


@njit
def _strides(sa: int, sb: int) -> np.ndarray:
    out = np.empty(3, np.int64)
    out[0] = sa
    out[1] = sb
    out[2] = 1
    return out


@njit
def _others(o: int) -> tuple[int, int]:
    """The two axes other than ``o``, ascending (arithmetic, not branches: ``o`` is data in the scans)."""
    return np.int64(o == 0), 2 - np.int64(o == 2)


@njit(inline=True)
def _edge_id(p: int, g: int, size: int, st: np.ndarray) -> int:
    """The id (``a * size + base``) of the edge of geometric index ``g`` (``2 a + i``) at voxel ``p``."""
    a = g >> 1
    return a * size + p - (g & 1) * st[a]


@njit(inline=True)
def _square_id(p: int, g: int, size: int, st: np.ndarray) -> int:
    """The id (``o * size + base``) of the square of geometric index ``g`` (``4 o + 2 i + j``) at voxel ``p``."""
    o = g >> 2
    u, w = _others(o)
    return o * size + p - ((g >> 1) & 1) * st[u] - (g & 1) * st[w]


@njit
def _sort6(x0, x1, x2, x3, x4, x5):
    """Six ints in increasing order, in registers and without branches: Batcher's odd-even merge network
    for 8 inputs with the exchanges that involve the two missing ones dropped (12 exchanges)."""
    x0, x1 = min(x0, x1), max(x0, x1)
    x2, x3 = min(x2, x3), max(x2, x3)
    x4, x5 = min(x4, x5), max(x4, x5)
    x0, x2 = min(x0, x2), max(x0, x2)
    x1, x3 = min(x1, x3), max(x1, x3)
    x1, x2 = min(x1, x2), max(x1, x2)
    x0, x4 = min(x0, x4), max(x0, x4)
    x1, x5 = min(x1, x5), max(x1, x5)
    x2, x4 = min(x2, x4), max(x2, x4)
    x3, x5 = min(x3, x5), max(x3, x5)
    x1, x2 = min(x1, x2), max(x1, x2)
    x3, x4 = min(x3, x4), max(x3, x4)
    return x0, x1, x2, x3, x4, x5


@njit
def cell_keys(rank: np.ndarray, n: int, sa: int, sb: int, use_min: bool, ekey: np.ndarray, skey: np.ndarray,
              ckey: np.ndarray, emap: np.ndarray, smap: np.ndarray, by_index: bool, lean: bool = False) -> None:
    """Fill ``(ekey, skey, ckey, emap, smap)``: the keys of every edge, square and cube, and the places.

    A key is ``16 v + l``: ``v`` the rank of the cell's critical voxel (its highest corner under
    ``"V"``; its lowest voxel corner under ``"T"``, ``use_min``: padding has rank ``n``), ``l`` its
    place among the cells of its family sharing that voxel; ``16 n`` where the cell is not in the
    complex. Edges are ids ``a * P + q`` (``ekey``, ``3 P``), squares ``o * P + q`` (``skey``), cubes
    ``q`` (``ckey``, ``P``). Places order those cells by their other corners' ranks,
    colexicographically (``"V"``: sorted down, the next-highest first; ``"T"``: sorted up; two ranks
    decide, as three corners make a square), the order in which a lower star's cells pair off (most
    pairs are then apparent, see :func:`loops`); ties (padding corners, ``"T"``) by geometric index.
    ``by_index``: places by cell index instead (base position, then type), Betti-Matching-3D's order
    for cells of equal value (so that Betti matching reproduces it).
    ``emap[p]`` holds, in nibble ``l``, the geometric index (``2 a + i``: base ``p - i S[a]``) of the
    edge of place ``l`` at voxel ``p`` (15: none, and in nibble 6 always); ``smap[p]`` the same for squares
    (``4 o + 2 i + j``; 15 in nibble 12). The bits above (from ``EDGE_FLAGS``, ``SQUARE_FLAGS``) are left clear
    for :func:`forests`' flags; a padding cell's maps are -1.
    ``lean``: no edge keys (``ekey`` is not touched) and the square keys of normal axis 0 only (``skey`` of
    size ``P``, what the cube keys need); :func:`_edge_key`/:func:`_square_key` recompute any other key from
    the ranks and places where the reduction needs one (the diagram path: a few per hard column).
    """
    size = rank.size
    st = _strides(sa, sb)
    big = n * 16
    if not lean:
        ekey[:] = big
    skey[:] = big
    sort_key = np.empty(12, np.int64)
    geo = np.empty(12, np.int64)
    vx = np.empty(6, np.int64)  # the edges' other ends' ranks, by geometric index
    inf = np.int64(1) << 62  # after every edge key
    for p in range(size):
        k = rank[p]
        if k >= n:
            emap[p] = -1
            smap[p] = -1
            continue
        # edges whose critical voxel is p, by the other end's rank (ties, padding under "T", by geometric
        # index): keys (rank << 4 | g) sorted by a network, the other edges' keys after all of them
        mine = 0  # bit g: edge g is p's
        for g in range(6):
            a = g >> 1
            x = np.int64(rank[p + st[a] if g & 1 == 0 else p - st[a]])
            vx[g] = x
            b = np.int64((x > k) if use_min else (x < k))
            mine |= b << g
            e = ((p - (g & 1) * st[a]) * 4 + a) if by_index else x
            sort_key[g] = ((e << 4) | g) if b else inf | 15
        e0, e1, e2, e3, e4, e5 = _sort6(sort_key[0], sort_key[1], sort_key[2], sort_key[3], sort_key[4], sort_key[5])
        m = (np.int64(15) << 24) | (e0 & 15) | ((e1 & 15) << 4) | ((e2 & 15) << 8) | ((e3 & 15) << 12) \
            | ((e4 & 15) << 16) | ((e5 & 15) << 20)  # nibble 15: no edge; the flags above start clear
        emap[p] = m
        if not lean:
            for j in range(6):
                g = (m >> (4 * j)) & 15
                if g == 15:
                    break
                ekey[_edge_id(p, g, size, st)] = k * 16 + j
        # squares whose critical voxel is p: two of its edges (on two axes) and the corner opposite p
        # pass the same test, so only the squares of two of p's edges are candidates (SQUARES_OF[mine]);
        # by their other corners' ranks (the two highest under "V", sorted down; the two lowest under "T",
        # sorted up), ties by geometric index
        cand = SQUARES_OF[mine]
        c = 0
        while cand:
            g = lowest_bit(cand)
            cand &= cand - 1
            o = g >> 2
            u, w = _others(o)
            iu = (g >> 1) & 1
            iw = g & 1
            yd = np.int64(rank[p + (st[u] if iu == 0 else -st[u]) + (st[w] if iw == 0 else -st[w])])
            if (yd <= k) if use_min else (yd >= k):
                continue
            yu = vx[2 * u + iu]
            yw = vx[2 * w + iw]
            hi = max(yu, yw)
            lo = min(yu, yw)
            if use_min:  # the two lowest, sorted up
                key = (lo << 31) | min(hi, yd) if yd >= lo else (yd << 31) | lo
            else:  # the two highest, sorted down
                key = (hi << 31) | max(lo, yd) if yd <= hi else (yd << 31) | hi
            if by_index:
                key = (p - iu * st[u] - iw * st[w]) * 4 + o
            j = c  # candidates come in geometric order: insertion by key keeps ties in it
            while j > 0 and sort_key[j - 1] > key:
                sort_key[j] = sort_key[j - 1]
                geo[j] = geo[j - 1]
                j -= 1
            sort_key[j] = key
            geo[j] = g
            c += 1
        mm = (np.int64(1) << SQUARE_FLAGS) - 1  # 15 in every place; the flags above start clear
        for j in range(c):
            g = geo[j]
            if not lean or g >> 2 == 0:  # lean: normal axis 0 only
                skey[_square_id(p, g, size, st)] = k * 16 + j
            mm = (mm & ~(np.int64(15) << (4 * j))) | (g << (4 * j))
        smap[p] = mm
    s = st[0]
    for q in range(size):  # a cube's key: its two squares normal to axis 0 decide (elder rule only)
        if q + s >= size:
            ckey[q] = big
            continue
        s1 = skey[q]
        s2 = skey[q + s]
        if use_min:
            e, l0 = (s1, 0) if s1 < s2 else (s2, 1)
        else:
            e, l0 = (s1, 0) if s1 > s2 else (s2, 1)
            if s1 >= big or s2 >= big:
                e = big
        ckey[q] = big if e >= big else (e >> 4) * 16 + 8 * l0 + (e & 7)


def new_keys(fl, use_min: bool, by_index: bool = False, lean: bool = False):
    """Allocate and fill :func:`cell_keys`' arrays for a :class:`~fastloss.ph.sort.Filtration`:
    ``(ekey, skey, ckey, emap, smap)``, keys int32 while ``16 n`` fits. ``lean``: ``ekey`` empty and
    ``skey`` the axis-0 squares' only (see :func:`cell_keys`)."""
    _, h, w = fl.shape
    n, size = fl.porder.size, fl.rank.size
    kt = np.int32 if 16 * n < np.iinfo(np.int32).max else np.int64
    ekey, skey = np.empty(0 if lean else 3 * size, kt), np.empty(size if lean else 3 * size, kt)
    ckey = np.empty(size, kt)
    emap, smap = np.empty(size, np.int64), np.empty(size, np.int64)
    cell_keys(fl.rank, n, (h + 2) * (w + 2), w + 2, use_min, ekey, skey, ckey, emap, smap, by_index, lean)
    return ekey, skey, ckey, emap, smap


@njit
def voxel_forest(porder: np.ndarray, rank: np.ndarray, level: np.ndarray, emap: np.ndarray, sa: int, sb: int,
                 increasing: bool, paired: np.ndarray, egrid: np.ndarray, grid: bool = False):
    """Kruskal on voxels joined by V-edges: dim 0 of ``"V"`` (``increasing``: at each voxel the edges
    whose highest corner it is) or dim 2 of ``"T"`` (decreasing: the edges whose lowest voxel corner
    it is, the padding being the outside, rank ``n``), edges in :func:`cell_keys`' order. ``emap``: its
    places by rank (``emap[porder]``: read in filtration order, the loads are sequential). Sets bit ``a``
    of ``paired[q]`` for every forest edge ``(q, a)``, and bit ``EDGE_FLAGS + l`` of ``egrid[p]`` (the places
    in grid order) for the forest edge of place ``l`` at its critical voxel ``p``; returns the pairs
    ``(birth_ranks, death_ranks)`` of non-zero persistence. ``grid``: ``emap`` in grid order instead (read at
    ``porder[k]``, prefetched with the neighbourhood)."""
    n = porder.size
    st = _strides(sa, sb)
    parent = np.empty(n + 1, np.int32)
    parent[n] = n
    births = np.empty(n, np.int32)
    deaths = np.empty(n, np.int32)
    m = 0
    for step in range(n):
        k = step if increasing else n - 1 - step
        if step + AHEAD < n:
            q = porder[k + AHEAD if increasing else k - AHEAD]
            prefetch_around(rank, q, sa, sb, False)
            prefetch(paired, q)
            prefetch(egrid, q)
        p = porder[k]
        parent[k] = k
        root = k
        places = emap[p] if grid else emap[k]
        c = _count(places)
        chosen = 0
        for t in range(c):
            place = t if increasing else c - 1 - t
            g = (places >> (4 * place)) & 15
            a = g >> 1
            nb = p + st[a] if g & 1 == 0 else p - st[a]
            r = find(parent, rank[nb])
            if r == root:
                continue
            if (r < root) if increasing else (r > root):
                young = root
                root = r
            else:
                young = r
            parent[young] = root
            base = p if g & 1 == 0 else nb
            paired[base] |= np.uint8(1 << a)
            chosen |= 1 << place
            if level[young] != level[k]:
                births[m] = young if increasing else k
                deaths[m] = k if increasing else young
                m += 1
        egrid[p] |= chosen << EDGE_FLAGS
    return births[:m].copy(), deaths[:m].copy()


@njit
def cube_forest(porder: np.ndarray, level: np.ndarray, smap: np.ndarray, ckey: np.ndarray, sa: int, sb: int,
                increasing: bool, paired: np.ndarray, sgrid: np.ndarray, grid: bool = False):
    """Kruskal on V-cubes joined by V-squares: dim 0 of ``"T"`` (``increasing``) or dim 2 of ``"V"``
    (decreasing; a cube outside the complex is the outside node, the eldest), squares in
    :func:`cell_keys`' order, ``smap`` by rank (``smap[porder]``). Sets bit ``3 + o`` of ``paired[q]`` for
    every forest square ``(q, o)`` and bit ``SQUARE_FLAGS + l`` of ``sgrid[p]`` for the forest square of place
    ``l`` at its critical voxel ``p``; returns the pairs of non-zero persistence. ``grid``: ``smap`` in grid
    order (as :func:`voxel_forest`)."""
    n = porder.size
    size = ckey.size
    st = _strides(sa, sb)
    big = np.int64(n) * 16
    # per cube: its parent, or at a root -(key + 1) (one load gives the root and its key); cubes
    # outside the complex point to the outside (node ``size``, the eldest: key 16 n)
    node = np.empty(size + 1, ckey.dtype)  # int32 while keys are (16 n < 2**31)
    for q in range(size):
        node[q] = -(ckey[q] + 1) if ckey[q] < big else size
    node[size] = -(big + 1)
    births = np.empty(n, np.int32)
    deaths = np.empty(n, np.int32)
    m = 0
    for step in range(n):
        k = step if increasing else n - 1 - step
        if step + AHEAD < n:  # the cubes and squares around that voxel: 4 lines each
            q = porder[k + AHEAD if increasing else k - AHEAD]
            for d in (0, sb, sa, sa + sb):
                prefetch(node, q - d)
                prefetch(paired, q - d)
            prefetch(sgrid, q)
        p = porder[k]
        places = smap[p] if grid else smap[k]
        c = _count(places)
        chosen = 0
        for t in range(c):
            place = t if increasing else c - 1 - t
            g = (places >> (4 * place)) & 15
            o = g >> 2
            u, w = _others(o)
            base = p - ((g >> 1) & 1) * st[u] - (g & 1) * st[w]
            x = _root(node, base)
            y = _root(node, base - st[o])
            if x == y:
                continue
            kx = -node[x] - 1
            ky = -node[y] - 1
            if (kx < ky) if increasing else (kx > ky):
                elder, young, kyoung = x, y, ky
            else:
                elder, young, kyoung = y, x, kx
            node[young] = elder
            paired[base] |= np.uint8(8 << o)
            chosen |= 1 << place
            vy = kyoung >> 4
            if level[vy] != level[k]:
                births[m] = vy if increasing else k
                deaths[m] = k if increasing else vy
                m += 1
        sgrid[p] |= chosen << SQUARE_FLAGS
    return births[:m].copy(), deaths[:m].copy()


@njit
def _root(node: np.ndarray, x: int) -> int:
    """Root of ``x`` in a forest whose roots hold negative keys, halving the path on the way."""
    while True:
        p = node[x]
        if p < 0:
            return x
        g = node[p]
        if g < 0:
            return p
        node[x] = g
        x = g


ONES = 0x1111111111111111  # one in every nibble


@njit(inline=True)
def _place_of(places: int, g: int) -> int:
    """The place (nibble) holding geometric index ``g`` (< 15, present) in a voxel's places, without a loop:
    the lowest zero nibble of ``places ^ g * ONES`` (a borrow only runs upward from a zero nibble)."""
    x = places ^ (g * ONES)
    t = (x - ONES) & ~x & (ONES << 3)
    return lowest_bit(t) >> 2


@njit(inline=True)
def _count(places: int) -> int:
    """How many cells a voxel's places hold: the places before the first nibble of 15 (nibble 6 of an edge map,
    12 of a square map, always is), found without a loop as the lowest zero nibble of ``~places``. The
    decreasing passes then start at the last cell instead of skipping empty places."""
    x = ~places
    t = (x - ONES) & ~x & (ONES << 3)
    return lowest_bit(t) >> 2


@njit
def _edge_key(q: int, a: int, size: int, st: np.ndarray, rank: np.ndarray, emap: np.ndarray, n: int,
              use_min: bool) -> int:
    """:func:`cell_keys`' key of edge ``(q, a)`` from the ranks and the places (``emap`` in grid order): its
    critical voxel is the higher corner ("V": both voxels) or the lower voxel corner ("T"); ``16 n`` when
    the edge is not in the complex."""
    q2 = q + st[a]
    big = np.int64(n) * 16
    if q < 0 or q2 >= size:
        return big
    prefetch(emap, q)  # the places of either corner: loaded while the ranks decide
    prefetch(emap, q2)
    x1 = np.int64(rank[q]) << 1  # rank << 1 | corner: the extreme one without branches
    x2 = (np.int64(rank[q2]) << 1) | 1
    x = min(x1, x2) if use_min else max(x1, x2)
    k = x >> 1
    if k >= n:  # "V": a padding corner; "T": no voxel corner
        return big
    return k * 16 + _place_of(emap[q + (x & 1) * st[a]], 2 * a + (x & 1))


@njit
def _square_key(q: int, o: int, size: int, st: np.ndarray, rank: np.ndarray, smap: np.ndarray, n: int,
                use_min: bool) -> int:
    """:func:`cell_keys`' key of square ``(q, o)`` (as :func:`_edge_key`: the highest corner, all four voxels,
    or the lowest voxel corner)."""
    u, w = _others(o)
    big = np.int64(n) * 16
    su, sw = st[u], st[w]
    if q < 0 or q + su + sw >= size:
        return big
    for c in range(4):
        prefetch(smap, q + (c >> 1) * su + (c & 1) * sw)
    x0 = np.int64(rank[q]) << 2  # rank << 2 | corner (2 i + j: base + i S[u] + j S[w])
    x1 = (np.int64(rank[q + sw]) << 2) | 1
    x2 = (np.int64(rank[q + su]) << 2) | 2
    x3 = (np.int64(rank[q + su + sw]) << 2) | 3
    x = min(min(x0, x1), min(x2, x3)) if use_min else max(max(x0, x1), max(x2, x3))
    k = x >> 2
    if k >= n:
        return big
    c = x & 3
    return k * 16 + _place_of(smap[q + (c >> 1) * su + (c & 1) * sw], 4 * o + c)


@njit(inline=True)
def _around(q: int, typ: int, of_edge: bool, size: int, st: np.ndarray, ekey: np.ndarray, skey: np.ndarray,
            paired: np.ndarray, big: int, ids: np.ndarray, keys: np.ndarray, lean: bool, rank: np.ndarray,
            emap: np.ndarray, smap: np.ndarray, use_min: bool) -> int:
    """The unpaired neighbours of a cell: the squares containing edge ``(q, typ)`` (``of_edge``) or the
    edges of square ``(q, typ)``; writes their ids and keys, returns how many. ``lean``: keys recomputed
    (:func:`_edge_key`, :func:`_square_key` over ``rank, emap, smap`` in grid order, ``use_min``: "T")
    instead of read from ``ekey, skey``."""
    m = 0
    n = big >> 4
    if of_edge:
        a = typ
        for b in range(3):
            if b == a:
                continue
            o = 3 - a - b
            for h in range(2):
                base = q - h * st[b]
                if base < 0:
                    continue
                if lean:
                    if (paired[base] >> (3 + o)) & 1:
                        continue
                    key = _square_key(base, o, size, st, rank, smap, n, use_min)
                else:
                    key = skey[o * size + base]
                if key >= big or (paired[base] >> (3 + o)) & 1:
                    continue
                ids[m] = o * size + base
                keys[m] = key
                m += 1
        return m
    o = typ
    u, w = _others(o)
    for h in range(4):
        if h < 2:
            a = u
            base = q + h * st[w]
        else:
            a = w
            base = q + (h - 2) * st[u]
        if base >= size:
            continue
        if lean:
            if (paired[base] >> a) & 1:
                continue
            key = _edge_key(base, a, size, st, rank, emap, n, use_min)
        else:
            key = ekey[a * size + base]
        if key >= big or (paired[base] >> a) & 1:
            continue
        ids[m] = a * size + base
        keys[m] = key
        m += 1
    return m


@njit
def _row_id(key: int, edges: bool, porder: np.ndarray, places: np.ndarray, size: int, st: np.ndarray) -> int:
    """The id of the edge (``edges``) or square of key ``key``: its critical voxel, and its geometric
    index from ``places`` (:func:`cell_keys`' ``emap`` or ``smap`` by rank, ``emap[porder]``: the two
    loads are independent)."""
    v = key >> 4
    p = porder[v]
    g = (places[v] >> (4 * (key & 15))) & 15
    return _edge_id(p, g, size, st) if edges else _square_id(p, g, size, st)


@njit
def _heap_push(heap: np.ndarray, size: int, x: int) -> None:
    i = size
    heap[i] = x
    while i > 0:
        up = (i - 1) >> 1
        if heap[up] <= x:
            break
        heap[i] = heap[up]
        i = up
    heap[i] = x


@njit
def _heap_pop(heap: np.ndarray, size: int) -> int:
    """Remove the minimum (the caller reads ``heap[0]`` first); returns the new size."""
    size -= 1
    x = heap[size]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and heap[c + 1] < heap[c]:
            c += 1
        if heap[c] >= x:
            break
        heap[i] = heap[c]
        i = c
    if size > 0:
        heap[i] = x
    return size


@njit
def _pop_pivot(heap: np.ndarray, size: int) -> tuple[int, int]:
    """``(pivot, size)``: the earliest entry left after cancelling equal pairs (mod 2), taken out of the
    heap; pivot -1 when the column is zero."""
    while size > 0:
        top = heap[0]
        size = _heap_pop(heap, size)
        if size > 0 and heap[0] == top:
            size = _heap_pop(heap, size)
            continue
        return top, size
    return -1, 0


@njit
def _grow(a: np.ndarray, need: int) -> np.ndarray:
    if need <= a.size:
        return a
    b = np.empty(max(need, 2 * a.size), a.dtype)
    b[: a.size] = a
    return b


@njit
def _id_bits(size: int, big: int) -> int:
    """How far the reductions shift a key to pack a cell id (``< 3 size``) below it in one int64: heap and
    cache entries ``key << bits | id``, ordered as their keys (a key names one cell), so a pivot's row needs
    no lookup. 0 (keys alone, ids looked up by :func:`_row_id`) where they would not fit (beyond 2^27 voxels)."""
    bits = 1
    while (1 << bits) < 3 * size:
        bits += 1
    return bits if bits + 1 + _bit_length(big) <= 62 else 0


@njit
def _bit_length(x: int) -> int:
    b = 0
    while x > 0:
        b += 1
        x >>= 1
    return b


@njit
def _new_cache(size: int, n: int, per_voxel: int):
    """The bounded cache of reduced columns of :func:`_reduce_column`: ``(pool, start, counts)``, the
    slots' entries back to back (at most ``per_voxel`` a voxel; slot ``s`` is
    ``pool[start[s]:start[s + 1]]``), and ``counts`` = (slots, entries added to columns from their
    pivots' owners). A row owned by a cached column holds ``-2 - slot`` in ``own``."""
    cap = per_voxel * n
    pool = np.empty(cap, np.int64)  # pages are only touched as slots fill
    start = np.empty(cap + 1, np.int64)
    start[0] = 0
    counts = np.zeros(2, np.int64)
    return pool, start, counts


@njit(inline=True)
def _reduce_column(cid: int, columns_are_edges: bool, flip: bool, big: int, size: int, st: np.ndarray,
                   ekey: np.ndarray, skey: np.ndarray, paired: np.ndarray, rporder: np.ndarray, rmap: np.ndarray,
                   own: np.ndarray, heap: np.ndarray, ids: np.ndarray, keys: np.ndarray, pool: np.ndarray,
                   start: np.ndarray, counts: np.ndarray, sh: int, lean: bool, rank: np.ndarray, emap: np.ndarray,
                   smap: np.ndarray, use_min: bool):
    """Reduce column ``cid`` (its neighbours by :func:`_around` over ``ekey, skey, paired``; rows found by
    :func:`_row_id` over ``rporder, rmap``) with a heap, mod 2: while its pivot has an owner (``own``:
    per row its owner column, -1 none, ``-2 - slot`` a cached one), add the owner's reduced column where
    the cache (:func:`_new_cache`) holds it, else the owner's own neighbours. The pivot is the earliest row key (``flip``: the latest, the heap holding ``big - key``).
    Makes ``cid`` its pivot's owner and, when it needed additions and the cache has room, keeps its
    reduced column (cancelled, sorted). Returns ``(row key, row id, heap)``; ``(-1, -1, heap)`` when the
    column reduces to zero. ``sh``: :func:`_id_bits` (entries carry their row ids; 0: looked up). ``lean``
    and the rest: :func:`_around`'s."""
    off, sgn = (big, -1) if flip else (0, 1)  # heap entries (off + sgn * key) << sh | id
    mask = (np.int64(1) << sh) - 1
    q_t = cid // size
    r = _around(cid - q_t * size, q_t, columns_are_edges, size, st, ekey, skey, paired, big, ids, keys, lean, rank,
                emap, smap, use_min)
    hsize = 0
    for t in range(r):
        _heap_push(heap, hsize, ((off + sgn * keys[t]) << sh) | (ids[t] & mask))
        prefetch(own, ids[t])  # each entry may become the pivot, whose owner is looked up next
        hsize += 1
    added = 0
    while True:
        # the pivot is held outside the heap: the owner's column holds it too (its pivot), so adding that
        # column cancels it instead of pushing it back and cancelling the pair later
        piv, hsize = _pop_pivot(heap, hsize)
        if piv < 0:
            return -1, -1, heap
        row_key = off + sgn * (piv >> sh)
        rid = piv & mask if sh > 0 else _row_id(row_key, not columns_are_edges, rporder, rmap, size, st)
        j = own[rid]
        if j == -1:
            own[rid] = cid
            slots = counts[0]
            used = start[slots]
            if added > 0 and used + hsize + 1 <= pool.size:  # keep the reduced column (cancelled, sorted)
                pool[used] = piv
                used += 1
                while True:
                    x, hsize = _pop_pivot(heap, hsize)
                    if x < 0:
                        break
                    pool[used] = x
                    used += 1
                start[slots + 1] = used
                own[rid] = -2 - slots
                counts[0] = slots + 1
            return row_key, rid, heap
        added += 1
        held = True  # piv, until an entry of the added column cancels it
        if j < 0:
            a, b = start[-2 - j], start[-1 - j]
            heap = _grow(heap, hsize + b - a + 1)
            for t in range(a, b):
                x = pool[t]
                if held and x == piv:
                    held = False
                    continue
                _heap_push(heap, hsize, x)
                prefetch(own, x & mask)
                hsize += 1
            counts[1] += b - a
        else:
            jt = j // size
            c = _around(j - jt * size, jt, columns_are_edges, size, st, ekey, skey, paired, big, ids, keys, lean,
                        rank, emap, smap, use_min)
            heap = _grow(heap, hsize + c + 1)
            for t in range(c):
                x = ((off + sgn * keys[t]) << sh) | (ids[t] & mask)
                if held and x == piv:
                    held = False
                    continue
                _heap_push(heap, hsize, x)
                prefetch(own, ids[t])
                hsize += 1
            counts[1] += c
        if held:  # an unreduced owner's boundary need not hold it (an owner the full cache could not keep)
            _heap_push(heap, hsize, piv)
            hsize += 1


@njit
def loops(porder: np.ndarray, rank: np.ndarray, level: np.ndarray, ekey: np.ndarray, skey: np.ndarray,
          emap: np.ndarray, smap: np.ndarray, eranked: np.ndarray, sranked: np.ndarray, paired: np.ndarray,
          own: np.ndarray, sa: int, sb: int, columns_are_edges: bool, lean: bool = False):
    """dim-1 pairs ``(birth_keys, death_keys, stats)`` of non-zero persistence (the keys of the 1-cell and
    the 2-cell; ``key >> 4`` is the critical voxel's rank), by decreasing birth key; ``stats[0]`` counts
    columns that reduced to zero (none in a box; a check), then the columns reduced, entries added,
    reduced columns cached and their entries.
    ``columns_are_edges``: ``"V"`` (columns V-edges, rows the V-squares containing them); else ``"T"``
    (columns V-squares, rows their V-edges). ``emap``/``smap``: the places as :func:`cell_keys` writes
    them (the scan reads them in grid order), ``eranked``/``sranked`` the same by rank (for the lookups
    by key, only where ids do not fit beside keys: :func:`_id_bits`). ``paired`` and the flag bits of
    ``emap``/``smap``: the forest cells, by cell and by place at their critical voxels (:func:`forests`).
    ``own``: scratch of ``3 P`` int32 (overwritten; :func:`owner_table`), per row the column
    whose pivot it is.
    ``lean``: ``ekey``/``skey`` are not read, the keys are recomputed (:func:`new_keys` ``lean``)."""
    n = porder.size
    size = paired.size
    st = _strides(sa, sb)
    big = np.int64(n) * 16
    cmap = eranked if columns_are_edges else sranked
    rmap = sranked if columns_are_edges else eranked
    sh = _id_bits(size, big)  # hard columns and heap entries: key << sh | id
    mask = (np.int64(1) << sh) - 1
    use_min = not columns_are_edges  # "T"
    own[:] = -1  # per row: the column whose pivot it is
    ids = np.empty(4, np.int64)
    keys = np.empty(4, np.int64)
    ids2 = np.empty(4, np.int64)
    keys2 = np.empty(4, np.int64)
    pb = np.empty(1024, np.int64)
    pd = np.empty(1024, np.int64)
    m = 0
    hard = np.empty(1024, np.int64)
    nh = 0
    # apparent pairs: one linear scan over the voxels. Most columns find their pivot among the cells of
    # their own critical voxel p (the earliest possible rows), and whether it is apparent is decided
    # there too (the other faces / cofaces of the pivot have earlier keys): places and the forests' flags
    # only, no key lookups. The others look their rows up (_around).
    eg = np.empty(6, np.int64)  # per edge place at p: geometric index
    sg = np.empty(12, np.int64)  # per square place at p: geometric index, and its two edges' places
    s1 = np.empty(12, np.int64)
    s2 = np.empty(12, np.int64)
    eplace = np.empty(6, np.int64)  # per geometric edge at p: its place (read only for a square's edges at p)
    rows_of = np.empty(6, np.int64)  # per edge place: the places of the squares at p on it, not forest ones
    for p in range(size):
        k = rank[p]
        if k >= n:
            continue
        places = emap[p]
        fe = places >> EDGE_FLAGS  # which of p's edges, squares (by place) the forests took: no lookups by cell
        ce = _count(places)
        for j in range(ce):
            g = (places >> (4 * j)) & 15
            eg[j] = g
            eplace[g] = j
            rows_of[j] = 0
        places = smap[p]
        fs = places >> SQUARE_FLAGS
        cs = _count(places)
        for j in range(cs):
            g = (places >> (4 * j)) & 15
            o = g >> 2
            u, w = _others(o)
            sg[j] = g
            e1 = eplace[2 * u + ((g >> 1) & 1)]  # a square at p spans two of p's edges
            e2 = eplace[2 * w + (g & 1)]
            s1[j] = e1
            s2[j] = e2
            free = ((fs >> j) & 1) ^ 1
            rows_of[e1] |= free << j
            rows_of[e2] |= free << j
        for l in range(ce if columns_are_edges else cs):  # noqa: E741 - a place, as in cell_keys
            if ((fe if columns_are_edges else fs) >> l) & 1:
                continue  # cleared
            key = np.int64(k) * 16 + l
            local = -1  # the pivot's place at p
            apparent = False
            if columns_are_edges:  # "V": rows are the squares at p containing the edge, the first one the pivot
                if rows_of[l]:
                    local = lowest_bit(rows_of[l])
                    other = s1[local] + s2[local] - l
                    apparent = ((fe >> other) & 1) == 1 or other < l
                    row = _square_id(p, sg[local], size, st)
                    cid = _edge_id(p, eg[l], size, st)
            else:  # "T": rows are the square's two edges at p, the earlier free one the pivot
                l1 = s1[l]
                l2 = s2[l]
                if (fe >> l1) & 1:
                    local = -1 if (fe >> l2) & 1 else l2
                else:
                    local = l1 if ((fe >> l2) & 1 or l1 < l2) else l2
                if local >= 0:
                    apparent = (rows_of[local] >> (l + 1)) == 0  # no later square at p has that edge
                    row = _edge_id(p, eg[local], size, st)
                    cid = _square_id(p, sg[l], size, st)
            if local >= 0:
                if apparent:  # zero persistence: nothing to record but the owner
                    own[row] = cid
                else:
                    if nh == hard.size:
                        hard = _grow(hard, nh + 1)
                    hard[nh] = (key << sh) | (cid & mask)
                    nh += 1
                continue
            # the pivot lies elsewhere: look the rows up
            # the column's id from its geometric index at p (what _row_id gives)
            cid = _edge_id(p, eg[l], size, st) if columns_are_edges else _square_id(p, sg[l], size, st)
            typ = cid // size
            q = cid - typ * size
            r = _around(q, typ, columns_are_edges, size, st, ekey, skey, paired, big, ids, keys, lean, rank, emap, smap,
                        use_min)
            best = 0
            for t in range(1, r):
                if keys[t] < keys[best]:
                    best = t
            apparent = r > 0
            if apparent:
                rt = ids[best] // size
                c = _around(ids[best] - rt * size, rt, not columns_are_edges, size, st, ekey, skey, paired, big,
                            ids2, keys2, lean, rank, emap, smap, use_min)
                for t in range(c):
                    if keys2[t] > key:
                        apparent = False
                        break
            if apparent:
                own[ids[best]] = cid
                if level[key >> 4] != level[keys[best] >> 4]:
                    if m == pb.size:
                        pb = _grow(pb, m + 1)
                        pd = _grow(pd, m + 1)
                    pb[m] = key
                    pd[m] = keys[best]
                    m += 1
            else:
                if nh == hard.size:
                    hard = _grow(hard, nh + 1)
                hard[nh] = (key << sh) | (cid & mask)
                nh += 1
    # the rest: reduction in decreasing column order
    hard = np.sort(hard[:nh])
    pool, start, counts = _new_cache(size, n, CACHE_PER_VOXEL)
    heap = np.empty(64, np.int64)
    unreduced = 0
    for h in range(nh - 1, -1, -1):
        key = hard[h] >> sh
        cid = hard[h] & mask if sh > 0 else _row_id(key, columns_are_edges, porder, cmap, size, st)
        piv, _, heap = _reduce_column(cid, columns_are_edges, False, big, size, st, ekey, skey, paired, porder, rmap,
                                      own, heap, ids, keys, pool, start, counts, sh, lean, rank, emap, smap, use_min)
        if piv < 0:
            unreduced += 1
            continue
        if level[key >> 4] != level[piv >> 4]:
            if m == pb.size:
                pb = _grow(pb, m + 1)
                pd = _grow(pd, m + 1)
            pb[m] = key
            pd[m] = piv
            m += 1
    order = np.argsort(-pb[:m])
    births = np.empty(m, np.int64)
    deaths = np.empty(m, np.int64)
    for t in range(m):
        births[t] = pb[order[t]]
        deaths[t] = pd[order[t]]
    slots = counts[0]
    return births, deaths, np.array([unreduced, nh, counts[1], slots, start[slots]], np.int64)


class Complex:
    """One map's cells as the dim-1 passes read them (:func:`complex_of`): keys, places (by rank),
    forest bits, and its dim-0/1/2 pairs. A ``lean`` complex (the diagram path) keeps the pairs and
    forest bits (and ``ckey``) only: ``ekey`` and ``skey`` are None there, and so are ``emap`` and ``smap``
    (except on maps beyond about 2^27 voxels, see :func:`_id_bits`)."""

    __slots__ = ("ckey", "construction", "dims", "ekey", "emap", "fl", "paired", "sa", "sb", "skey", "smap")

    def cell_ids(self, keys: np.ndarray, edges: bool) -> np.ndarray:
        """Ids (``type * P + q``) of the edges (``edges``) or squares of the given keys."""
        return cell_ids(keys, edges, self.fl.porder, self.emap if edges else self.smap, self.paired.size, self.sa,
                        self.sb)


@njit
def by_rank(emap: np.ndarray, smap: np.ndarray, porder: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(emap[porder], smap[porder])``: the places in filtration order (one loop, no index conversion)."""
    n = porder.size
    er = np.empty(n, emap.dtype)
    sr = np.empty(n, smap.dtype)
    for k in range(n):
        p = porder[k]
        er[k] = emap[p]
        sr[k] = smap[p]
    return er, sr


def forests(fl, use_min: bool, ckey: np.ndarray, eranked: np.ndarray, sranked: np.ndarray, paired: np.ndarray,
            emap: np.ndarray, smap: np.ndarray, grid: bool = False):
    """dims 0 and 2 of a 3D map (``use_min``: "T"), pairs ``(birth_ranks, death_ranks)`` each, marking
    the forest cells in ``paired`` (by cell) and in the flag bits of the places in grid order ``emap``,
    ``smap`` (by place at their critical voxels: :func:`loops`' scan reads them there).
    ``eranked``/``sranked``: the places by rank (:func:`by_rank`): the Kruskal passes read them in
    filtration order (gathered in grid order inside the passes, each load would wait on ``porder``).
    ``grid``: the places in grid order instead (no gathered copy; the passes prefetch them ahead)."""
    _, h, w = fl.shape
    sa, sb = (h + 2) * (w + 2), w + 2
    if use_min:
        zero = cube_forest(fl.porder, fl.level, sranked, ckey, sa, sb, True, paired, smap, grid)
        two = voxel_forest(fl.porder, fl.rank, fl.level, eranked, sa, sb, False, paired, emap, grid)
    else:
        zero = voxel_forest(fl.porder, fl.rank, fl.level, eranked, sa, sb, True, paired, emap, grid)
        two = cube_forest(fl.porder, fl.level, sranked, ckey, sa, sb, False, paired, smap, grid)
    return zero, two


def owner_table(size: int) -> np.ndarray:
    """The reductions' row-owner table for a padded grid of ``size`` cells: this thread's scratch of ``3 size``
    int32 (:func:`fastloss.ph.scratch.take`; :func:`loops` and :func:`image_pivots` overwrite it)."""
    return scratch.take("own", 3 * size, np.int32)


def complex_of(fl, construction: str, by_index: bool = False, lean: bool = False) -> Complex:
    """Keys, forests and the dim-1 reduction of a 3D map's :class:`~fastloss.ph.sort.Filtration`
    (``by_index``: see :func:`cell_keys`). ``lean``: without the edge and square key arrays and the by-rank
    places (see :class:`Complex`; the pairs are the same): what :func:`pairs` needs, not the image
    reductions."""
    _, h, w = fl.shape
    sa, sb = (h + 2) * (w + 2), w + 2
    t = construction == "T"
    ekey, skey, ckey, emap, smap = new_keys(fl, t, by_index, lean)
    paired = np.zeros(fl.rank.size, np.uint8)
    # lean: the places stay in grid order (the forests prefetch them; the reduction carries ids with its
    # keys) unless ids do not fit beside keys
    grid = lean and _id_bits(fl.rank.size, 16 * fl.porder.size) > 0
    er, sr = (emap, smap) if grid else by_rank(emap, smap, fl.porder)
    zero, two = forests(fl, t, ckey, er, sr, paired, emap, smap, grid)
    own = owner_table(fl.rank.size)
    b, d, stats = loops(fl.porder, fl.rank, fl.level, ekey, skey, emap, smap, er, sr, paired, own, sa, sb, not t,
                        lean)
    if lean:
        ekey = skey = None
    if grid:
        er = sr = None
    if stats[0]:  # pragma: no cover - a box has no essential loop; this would be a bug
        raise RuntimeError(f"dim-1 reduction left {stats[0]} columns unpaired")
    c = Complex()
    c.fl, c.construction, c.sa, c.sb = fl, construction, sa, sb
    c.ekey, c.skey, c.ckey, c.emap, c.smap, c.paired = ekey, skey, ckey, er, sr, paired  # places by rank
    c.dims = {0: zero, 1: (b, d), 2: two}
    return c


def pairs(fl, construction: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Every dimension's pairs ``dim -> (birth_ranks, death_ranks)`` of a 3D map's
    :class:`fastloss.ph.sort.Filtration` (dim 0 without its essential bar), in cripser's row order
    (dim 0 by increasing death, dims 1 and 2 by decreasing birth)."""
    c = complex_of(fl, construction, lean=True)
    b, d = c.dims[1]
    return {0: c.dims[0], 1: ((b >> 4).astype(np.int32), (d >> 4).astype(np.int32)), 2: c.dims[2]}


@njit
def cell_ids(keys: np.ndarray, edges: bool, porder: np.ndarray, places: np.ndarray, size: int, sa: int,
             sb: int) -> np.ndarray:
    """:func:`_row_id` of every key (``places`` by rank, ``size`` the padded grid's)."""
    st = _strides(sa, sb)
    out = np.empty(keys.size, np.int64)
    for i in range(keys.size):
        out[i] = _row_id(keys[i], edges, porder, places, size, st)
    return out


@njit
def image_pivots(c_keys2: np.ndarray, c_keys1: np.ndarray, c_paired: np.ndarray, c_porder: np.ndarray,
                 c_places2: np.ndarray, x_keys1: np.ndarray, x_paired: np.ndarray, x_porder: np.ndarray,
                 x_places1: np.ndarray, own: np.ndarray, n: int, sa: int, sb: int, squares: bool) -> np.ndarray:
    """Image persistence of a map X in the comparison image C (sublevel sets of X inside C's): per
    2-cell id of C, the 1-cell (id) its column's pivot is in the reduction of C's boundary matrix with
    columns in C's order and rows in X's order (-1: no column). A C bar dying at a 2-cell is induced
    from the X bar born at that 1-cell (Betti matching's image pairs).

    Homology, columns by increasing C key, pivot a column's latest face in X's order; clearing: C's dual
    forest 2-cells (they reduce to zero: the column space is C's) are no columns, X's dim-0 forest
    1-cells are no rows (a cycle's latest 1-cell in X's order is never in X's forest). ``squares``:
    ``"V"`` (2-cells are V-squares, faces their V-edges); else ``"T"`` (2-cells V-edges, faces the
    V-squares containing them). Apparent pairs (a column is its pivot's earliest coface in C) are
    taken in one linear scan, the rest reduced with a heap (of ``16 n - key``: latest first), adding the
    reduced column of the pivot's owner where a bounded cache keeps it (as :func:`loops`), else its
    boundary. The scan leaves each hard column's first pivot in ``out``: a column whose pivot is still
    free when its turn comes is final without a lookup (two thirds of a binary target's hard columns
    in C at 64^3, "V")."""
    size = c_paired.size
    st = _strides(sa, sb)
    big = np.int64(n) * 16
    own[:] = -1  # per 1-cell: the column whose pivot it is (see _reduce_column); owner_table(P)
    out = np.full(3 * size, -1, np.int32)
    ids = np.empty(4, np.int64)
    keys = np.empty(4, np.int64)
    ids2 = np.empty(4, np.int64)
    keys2 = np.empty(4, np.int64)
    hard = np.empty(1024, np.int64)
    nh = 0
    sh = _id_bits(size, big)  # hard columns and heap entries: key << sh | id
    mask = (np.int64(1) << sh) - 1
    shift = 3 if squares else 0  # C's dual-forest bits for the 2-cells
    for typ in range(3):
        for q in range(size):
            cid = typ * size + q
            key = c_keys2[cid]
            if key >= big or (c_paired[q] >> (shift + typ)) & 1:
                continue
            r = _around(q, typ, not squares, size, st, x_keys1 if squares else c_keys2,
                        c_keys2 if squares else x_keys1, x_paired, big, ids, keys, False, c_porder, c_places2,
                        c_places2, False)
            best = -1
            for t in range(r):
                if best < 0 or keys[t] > keys[best]:
                    best = t
            apparent = best >= 0
            if apparent:
                rt = ids[best] // size
                c = _around(ids[best] - rt * size, rt, squares, size, st, c_keys1 if squares else c_keys2,
                            c_keys2 if squares else c_keys1, c_paired, big, ids2, keys2, False, c_porder, c_places2,
                            c_places2, False)
                for t in range(c):
                    if keys2[t] < key:
                        apparent = False
                        break
            if best >= 0:
                out[cid] = ids[best]  # a hard column's first pivot, for the reduction below
            if apparent:
                own[ids[best]] = cid
            else:
                if nh == hard.size:
                    hard = _grow(hard, nh + 1)
                hard[nh] = (key << sh) | (cid & mask)
                nh += 1
    hard = np.sort(hard[:nh])
    heap = np.empty(64, np.int64)
    pool, start, counts = _new_cache(size, n, IMAGE_CACHE_PER_VOXEL)
    e1, e2 = (x_keys1, c_keys2) if squares else (c_keys2, x_keys1)  # _around's edge and square keys
    for h in range(nh):
        cid = hard[h] & mask if sh > 0 else _row_id(hard[h] >> sh, not squares, c_porder, c_places2, size, st)
        first = out[cid]
        if first >= 0 and own[first] == -1:  # its pivot is still free: final as it is (most of a binary target's)
            own[first] = cid
            continue
        _, rid, heap = _reduce_column(cid, not squares, True, big, size, st, e1, e2, x_paired, x_porder, x_places1,
                                      own, heap, ids, keys, pool, start, counts, sh, False, c_porder, c_places2,
                                      c_places2, False)
        if rid >= 0:  # always: C's non-forest 2-cells never reduce to zero
            out[cid] = rid
    return out


def image_of(c: Complex, x: Complex) -> np.ndarray:
    """:func:`image_pivots` of map ``x`` in the comparison image ``c`` (same shape and construction)."""
    sq = c.construction == "V"
    one = (lambda m: m.ekey) if sq else (lambda m: m.skey)
    two = (lambda m: m.skey) if sq else (lambda m: m.ekey)
    places1 = x.emap if sq else x.smap
    places2 = c.smap if sq else c.emap
    own = owner_table(c.paired.size)
    return image_pivots(two(c), one(c), c.paired, c.fl.porder, places2, one(x), x.paired, x.fl.porder, places1, own,
                        c.fl.porder.size, c.sa, c.sb, sq)


def loop_matching(p: Complex, t: Complex, c: Complex) -> tuple[np.ndarray, np.ndarray]:
    """Betti matching of dim 1: rows of ``p.dims[1]`` and ``t.dims[1]`` matched to each other. A bar of
    C (dying at 2-cell s) is induced from the bar of P born at the pivot of s's column in the image
    reduction of P in C, and from T's likewise; when both are bars (non-zero persistence), they match."""
    if not (len(p.dims[1][0]) and len(t.dims[1][0]) and len(c.dims[1][0])):  # nothing to match: no image needed
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sq = c.construction == "V"
    _, c_death = c.dims[1]
    s = c.cell_ids(c_death, not sq)
    found = []
    for x in (p, t):
        births, _ = x.dims[1]
        bar_at = np.full(3 * x.fl.rank.size, -1, np.int64)
        bar_at[x.cell_ids(births, sq)] = np.arange(len(births))
        pivot = image_of(c, x)[s]
        found.append(np.where(pivot >= 0, bar_at[np.maximum(pivot, 0)], -1))
    both = (found[0] >= 0) & (found[1] >= 0)
    return found[0][both], found[1][both]
