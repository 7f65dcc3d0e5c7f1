"""The :class:`Diagram` type and the dispatch between the native kernels and cripser: :func:`resolve` picks
the engine for a map and its dims, :func:`persistence` (a :class:`Diagram`) and :func:`cripser_diagram`
(cripser's own rows) run it. fastloss reaches cripser for persistence diagrams only through this module."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .._validation import check_construction, check_map
from ._jit import HAVE_NUMBA, require_numba
from .sort import filtration

BACKENDS = ("auto", "native", "cripser")


def native_dims(ndim: int) -> tuple[int, ...]:
    """Homology dimensions the native engine computes for ``ndim``-dimensional maps: all of 2D and 3D."""
    return {2: (0, 1), 3: (0, 1, 2)}.get(ndim, ())


@dataclass(frozen=True)
class Diagram:
    """Persistence bars of one map with their critical pixels.

    ``birth_index``/``death_index`` are linear (C order) indices of the pixels whose values the birth
    and death cells take; an essential bar has ``death == inf`` and ``death_index == size``.
    """

    shape: tuple[int, ...]
    dim: np.ndarray
    birth: np.ndarray
    death: np.ndarray
    birth_index: np.ndarray
    death_index: np.ndarray

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.dim)

    def restrict(self, dims: Iterable[int]) -> Diagram:
        """The bars of dimensions ``dims`` (row order kept)."""
        keep = np.isin(self.dim, list(dims))
        return Diagram(self.shape, self.dim[keep], self.birth[keep], self.death[keep],
                       self.birth_index[keep], self.death_index[keep])

    @staticmethod
    def empty(shape: tuple[int, ...]) -> Diagram:
        z = np.zeros(0, np.int64)
        return Diagram(tuple(shape), z, z.astype(np.float64), z.astype(np.float64), z, z)

    def to_cripser(self) -> np.ndarray:
        """Rows ``[dim, birth, death, x1, y1, z1, x2, y2, z2]`` as ``cripser.compute_ph(location="yes")``
        returns them (coordinates along the array's axes, padded with 0 below 3D; an essential bar's
        death coordinates are -1)."""
        n, nd = len(self), len(self.shape)
        rows = np.zeros((n, 9), np.float64)
        rows[:, 0] = self.dim
        rows[:, 1] = self.birth
        rows[:, 2] = self.death
        finite = self.death_index < self.size
        rows[:, 3 : 3 + nd] = np.stack(np.unravel_index(self.birth_index, self.shape), axis=1)
        death = np.stack(np.unravel_index(np.where(finite, self.death_index, 0), self.shape), axis=1)
        rows[:, 6 : 6 + nd] = death
        rows[~finite, 6:9] = -1
        return rows

    @staticmethod
    def from_cripser(rows: np.ndarray, shape: tuple[int, ...]) -> Diagram:
        """Inverse of :meth:`to_cripser` (cripser's own rows)."""
        nd = len(shape)
        size = int(np.prod(shape))
        strides = np.cumprod((1,) + tuple(shape[:0:-1]))[::-1]
        birth_index = (np.rint(rows[:, 3 : 3 + nd]).astype(np.int64) * strides).sum(axis=1)
        death_index = (np.rint(rows[:, 6 : 6 + nd]).astype(np.int64) * strides).sum(axis=1)
        infinite = ~np.isfinite(rows[:, 2])
        death_index[infinite] = size
        death = np.where(infinite, np.inf, rows[:, 2])
        return Diagram(tuple(shape), rows[:, 0].astype(np.int64), rows[:, 1].astype(np.float64), death,
                       birth_index, death_index)


def _as_map(f: np.ndarray) -> np.ndarray:
    return check_map(f, "the native engine", allow_nan=False)


def native(f: np.ndarray, construction: str = "V", dims: Iterable[int] | None = None) -> Diagram:
    """The diagram of the sublevel filtration of ``f`` by the native engine (dims of :func:`native_dims`).

    Rows (cripser's order): dim 0's finite bars by increasing death, its essential bar, then dim 1 of a
    3D map by decreasing birth, then the top dimension's bars by decreasing birth. Dims 0 and the top
    one alone: two union-find passes (:mod:`~fastloss.ph.cubical2d`, :mod:`~fastloss.ph.cubical3d`).
    Dim 1 of a 3D map: :mod:`~fastloss.ph.loops3d` (all three dims from one set of cell keys).
    """
    require_numba()
    from . import cubical2d, cubical3d, loops3d

    f = _as_map(f)
    shape, nd = f.shape, f.ndim
    dims = native_dims(nd) if dims is None else tuple(dims)
    bad = sorted(set(dims) - set(native_dims(nd)))
    if bad:
        raise ValueError(f"the native engine computes dims {list(native_dims(nd))} of {nd}D maps, not {bad}")
    check_construction(construction)
    fl = filtration(f)
    args = (fl.porder, fl.rank, fl.level) + shape[1:]
    t = construction == "T"
    top = nd - 1
    parts = []
    if nd == 3 and 1 in dims:
        found = loops3d.pairs(fl, construction)
        for k in (0, 1, 2):
            if k in dims:
                b, d = found[k]
                if k == 0:  # the essential bar (rank 0, never dies)
                    b, d = np.append(b, 0), np.append(d, -1)
                parts.append((k, b, d))
    else:
        if nd == 2:
            low, high = cubical2d.components, (cubical2d.holes_t if t else cubical2d.holes_v)
        else:
            low, high = cubical3d.components, (cubical3d.voids_t if t else cubical3d.voids_v)
        if 0 in dims:
            b, d = low(*args, t)
            parts.append((0, np.append(b, 0), np.append(d, -1)))  # the essential bar (rank 0, never dies)
        if top in dims:
            parts.append((top, *high(*args)))
    if not parts:
        return Diagram.empty(shape)
    dim = np.concatenate([np.full(len(b), k, np.int64) for k, b, _ in parts])
    birth_index = fl.pixels(np.concatenate([b for _, b, _ in parts]))
    death_rank = np.concatenate([d for _, _, d in parts])
    finite = death_rank >= 0
    death_index = np.full(len(death_rank), f.size, np.int64)  # an essential bar's death index is the size
    death_index[finite] = fl.pixels(death_rank[finite])
    flat = f.reshape(-1)
    death = np.full(len(death_rank), np.inf)
    death[finite] = flat[death_index[finite]]
    return Diagram(shape, dim, flat[birth_index].astype(np.float64), death, birth_index, death_index)


def cripser_diagram(f: np.ndarray, construction: str = "V", maxdim: int | None = None) -> np.ndarray:
    """cripser's rows for the sublevel filtration of ``f`` (float64), dims ``0..maxdim``."""
    import cripser

    f = np.asarray(f, dtype=np.float64)
    maxdim = f.ndim - 1 if maxdim is None else maxdim
    return cripser.compute_ph(f, filtration=construction, maxdim=maxdim, location="yes")


def resolve(backend: str, ndim: int, dims: Iterable[int]) -> str:
    """Which engine computes ``dims`` of an ``ndim``-D map: ``"native"`` or ``"cripser"``.

    ``"auto"`` is native wherever numba is present (every dimension of 2D and 3D maps), else cripser.
    """
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "cripser":
        return "cripser"
    dims = set(dims)
    covered = ndim in (2, 3) and dims <= set(native_dims(ndim))
    if backend == "native":
        require_numba()
        if ndim not in (2, 3):
            raise ValueError(f"backend='native' computes 2D and 3D maps, got a {ndim}D map: use backend='cripser'")
        if not covered:
            raise ValueError(f"backend='native' computes dims {list(native_dims(ndim))} of {ndim}D maps, got dims "
                             f"{sorted(dims)}")
        return "native"
    return "native" if covered and HAVE_NUMBA else "cripser"


def persistence(f: np.ndarray, construction: str = "V", dims: Iterable[int] | None = None,
                backend: str = "auto") -> Diagram:
    """The persistence diagram of the sublevel filtration of ``f`` restricted to ``dims`` (default all).

    ``backend``: ``"native"`` (this package's kernels; every dim of 2D and 3D maps), ``"cripser"``, or
    ``"auto"`` (native where numba is present, else cripser).
    """
    f = np.asarray(f)
    dims = tuple(range(f.ndim)) if dims is None else tuple(dims)
    engine = resolve(backend, f.ndim, dims)
    if engine == "native":
        return native(f, construction, dims)
    return Diagram.from_cripser(cripser_diagram(f, construction), f.shape).restrict(dims)
