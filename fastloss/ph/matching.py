"""Betti matching of two maps: :func:`betti_matching` → :class:`Matching`, with a cacheable target side.

The prediction P and the target T (any maps of the same shape; the loss passes ``1 - p`` and
``1 - t``) are compared through C = min(P, T) (:mod:`fastloss.ph.induced`). Everything that depends on
T alone (its filtration, cell orders, dual keys and dim-0 bars) is :class:`TargetSide`, computed once
by :func:`target_side` and reusable for every prediction against that target
(:class:`fastloss.CachedPH` caches it).

Dims: every dimension of 2D and 3D maps (:func:`fastloss.ph.native_dims`). Dim 1 of a 3D map is not
a union-find computation: it reduces each image's coboundary matrix (:mod:`fastloss.ph.loops3d`, cells
in the reference's order: value, then cell index) and the boundary matrix of C with rows in P's (T's)
order (image persistence); a bar of C is induced from the bar of P (T) born at its column's pivot.

The reference's conventions, kept here so the loss reproduces it:
- only finite bars: the one essential bar of each map (dim 0, its global minimum) is not in the
  barcode, and is never matched (the reference leaves it out);
- bars of zero persistence (birth and death at equal values) are not in the barcode;
- critical pixels: a bar's birth and death are the pixels whose values the birth and death cells take
  (ties: the reference's choice of pixel, see :mod:`fastloss.ph.induced`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import CONSTRUCTIONS, check_construction, check_map
from . import loops3d
from ._jit import require_numba
from .cells import MAX, OUTSIDE, cell_order, families, pixel_levels
from .diagram import native_dims
from .induced import dual_bars, dual_match, primal_bars, primal_match
from .sort import Filtration, filtration


def check_dims(ndim: int, dims) -> tuple[int, ...]:
    """``dims`` as a tuple (default: :func:`fastloss.ph.native_dims`, every dimension), or a ValueError
    naming what is supported."""
    if ndim not in (2, 3):
        raise ValueError(f"Betti matching computes 2D and 3D maps, got {ndim}D")
    dims = native_dims(ndim) if dims is None else tuple(int(d) for d in dims)
    bad = [d for d in dims if not 0 <= d < ndim]
    if bad:
        raise ValueError(f"`dims` must lie in [0, {ndim - 1}] for {ndim}D maps, got {list(dims)}")
    return dims


@dataclass(frozen=True)
class Barcode:
    """Finite bars of one map: dimension, and the linear (C order) indices of the birth and death pixels."""

    shape: tuple[int, ...]
    dim: np.ndarray
    birth_index: np.ndarray
    death_index: np.ndarray

    def __len__(self) -> int:
        return len(self.dim)


@dataclass(frozen=True)
class Matching:
    """The Betti matching of a prediction and a target: their barcodes and the matched bar pairs.

    ``pred_matched[i]`` and ``target_matched[i]`` are rows of ``pred`` and ``target`` matched to each
    other (same dimension); the other rows are unmatched.
    """

    pred: Barcode
    target: Barcode
    pred_matched: np.ndarray
    target_matched: np.ndarray

    def unmatched(self, side: str) -> np.ndarray:
        """Rows of ``side`` (``"pred"`` or ``"target"``) that are not matched."""
        bars = self.pred if side == "pred" else self.target
        rows = self.pred_matched if side == "pred" else self.target_matched
        keep = np.ones(len(bars), bool)
        keep[rows] = False
        return np.flatnonzero(keep)


def _as_map(f: np.ndarray) -> np.ndarray:
    # the passes' int32 nodes hold positions and levels
    return check_map(f, "Betti matching", max_pixels=OUTSIDE)


class _Image:
    """One map's filtration, cell orders and dual keys (the pieces the passes read)."""

    __slots__ = ("dual_order", "fl", "lv", "primal_order", "top")

    def __init__(self, f: np.ndarray, fam: dict, dims: tuple[int, ...], top: int) -> None:
        self.fl: Filtration = filtration(f)
        self.lv = lv = pixel_levels(self.fl.rank, self.fl.level)
        primal, pmode = fam["primal"]
        dual, dmode, _ = fam["dual"]
        self.primal_order = self.dual_order = self.top = None
        top_corners = fam["top"][0][0]
        if top in dims:  # the top cells' levels come out of the same scan as the dual cells' order
            self.dual_order, self.top = cell_order(self.fl, dual, dmode, lv, top_corners)
        if 0 in dims:
            same = dual is primal and dmode == pmode and self.dual_order is not None
            self.primal_order = self.dual_order if same else cell_order(self.fl, primal, pmode, lv)


@dataclass(frozen=True)
class TargetSide:
    """Everything about the target that Betti matching needs, independent of the prediction."""

    shape: tuple[int, ...]
    construction: str
    dims: tuple[int, ...]
    f: np.ndarray  # the target map (float32/float64), C is min(prediction, f)
    image: _Image
    primal: tuple | None  # dim-0 (birth_ranks, death_ranks, bar_of)
    dual_order: np.ndarray | None  # the cells of its dual pass (cleared: only the dual's merges, 2D "V")
    loops: loops3d.Complex | None = None  # 3D with dim 1: its cells, forests and dim-1 bars

    @property
    def nbytes(self) -> int:
        """Memory held by the side's arrays (about 33 bytes a pixel for a 2D "V" map)."""
        im = self.image
        arrays = [self.f, im.fl.porder, im.fl.rank, im.fl.level, im.lv, im.top, self.dual_order, *(self.primal or ())]
        if self.loops is not None:
            lp = self.loops
            arrays += [lp.ekey, lp.skey, lp.ckey, lp.emap, lp.smap, lp.paired, *lp.dims[1]]
        return int(sum(a.nbytes for a in arrays if a is not None))


def target_side(f_target: np.ndarray, construction: str = "V", dims=None) -> TargetSide:
    """Precompute the target's part of :func:`betti_matching` (reusable for every prediction)."""
    require_numba()
    f = _as_map(f_target)
    check_construction(construction)
    dims = check_dims(f.ndim, dims)
    fam = families(f.shape, construction)
    image = _Image(f, fam, dims, f.ndim - 1)
    primal, dual_order = None, image.dual_order
    if 0 in dims:
        clear = _clearing(fam, dims, f.ndim - 1)
        *primal, kept = primal_bars(image.primal_order, fam["primal"][0], image.fl.rank, image.lv,
                                    image.fl.porder.size, clear)
        if clear:
            dual_order = kept
    image.primal_order = image.dual_order = None  # held by the side only as needed
    loops = _loops(image.fl, construction, dims)
    return TargetSide(tuple(f.shape), construction, dims, f, image, tuple(primal) if primal else None, dual_order,
                      loops)


def _loops(fl: Filtration, construction: str, dims: tuple[int, ...]) -> loops3d.Complex | None:
    """A 3D map's dim-1 complex in the reference's cell order, when dim 1 is asked for."""
    if len(fl.shape) != 3 or 1 not in dims:
        return None
    return loops3d.complex_of(fl, construction, by_index=True)


def _clearing(fam: dict, dims: tuple[int, ...], top: int) -> bool:
    """Whether one family's cells serve both passes (2D "V"), so that each pass clears the other's."""
    return 0 in dims and top in dims and fam["dual"][0] is fam["primal"][0]


def _linear(fl: Filtration, ranks: np.ndarray) -> np.ndarray:
    return fl.pixels(ranks.astype(np.int64)) if len(ranks) else np.zeros(0, np.int64)


def betti_matching(f_pred: np.ndarray, target: np.ndarray | TargetSide, construction: str = "V",
                   dims=None) -> Matching:
    """The Betti matching of the sublevel filtrations of ``f_pred`` and of the target.

    ``target`` is the target map or its :func:`target_side` (then ``construction`` and ``dims`` are
    the side's). The comparison image is ``min(f_pred, f_target)``.
    """
    require_numba()
    side = target if isinstance(target, TargetSide) else target_side(target, construction, dims)
    f = _as_map(f_pred)
    if f.shape != side.shape:
        raise ValueError(f"prediction and target must have the same shape, got {f.shape} and {side.shape}")
    fam = families(side.shape, side.construction)
    dims, top, n = side.dims, f.ndim - 1, f.size
    ft = side.f
    if f.dtype != ft.dtype:  # compare in the wider type (exact: float32 values are float64 values)
        f, ft = f.astype(np.float64), ft.astype(np.float64)
    p, t = _Image(f, fam, dims, top), side.image
    c = _Image(np.minimum(f, ft), fam, dims, top)
    parts = {"pred": [], "target": []}
    matched_p, matched_t = [], []
    offsets = {"pred": 0, "target": 0}

    def add(which: str, fl: Filtration, dim: int, births: np.ndarray, deaths: np.ndarray) -> int:
        start = offsets[which]
        parts[which].append((np.full(len(births), dim, np.int64), _linear(fl, births), _linear(fl, deaths)))
        offsets[which] += len(births)
        return start

    clear = _clearing(fam, dims, top)  # 2D "V": see induced
    p_rest = c_rest = None
    if top in dims:
        corners, mode, sides = fam["dual"]
        tc, rule = fam["top"]
        pb, pd, p_at, p_rest = dual_bars(p.dual_order, corners, mode, sides, p.top, c.top, p.fl.rank, p.lv, n,
                                         tc, rule, clear)
        tb, td, t_at, _ = dual_bars(side.dual_order, corners, mode, sides, t.top, c.top, t.fl.rank, t.lv, n,
                                    tc, rule, False)
        mp, mt, c_rest = dual_match(c.dual_order, corners, mode, sides, c.top, c.lv, p_at, t_at, clear)
        dual = (pb, pd, tb, td, mp, mt)
    if 0 in dims:
        corners = fam["primal"][0]
        pb, pd, p_of, _ = primal_bars(p_rest if clear else p.primal_order, corners, p.fl.rank, p.lv, n, False)
        tb, td, t_of = side.primal
        mp, mt = primal_match(c_rest if clear else c.primal_order, corners, c.fl.rank, c.lv, p.fl.rank,
                              t.fl.rank, p_of, t_of)
        op, ot = add("pred", p.fl, 0, pb, pd), add("target", t.fl, 0, tb, td)
        matched_p.append(mp.astype(np.int64) + op)
        matched_t.append(mt.astype(np.int64) + ot)
    if side.loops is not None:
        p_loops = _loops(p.fl, side.construction, dims)
        if len(p_loops.dims[1][0]) and len(side.loops.dims[1][0]):
            mp, mt = loops3d.loop_matching(p_loops, side.loops, _loops(c.fl, side.construction, dims))
        else:  # no bar on one side: nothing to match, C's complex is not needed
            mp = mt = np.zeros(0, np.int64)
        (pb, pd), (tb, td) = p_loops.dims[1], side.loops.dims[1]
        op, ot = add("pred", p.fl, 1, pb >> 4, pd >> 4), add("target", t.fl, 1, tb >> 4, td >> 4)
        matched_p.append(mp + op)
        matched_t.append(mt + ot)
    if top in dims:
        pb, pd, tb, td, mp, mt = dual
        op, ot = add("pred", p.fl, top, pb, pd), add("target", t.fl, top, tb, td)
        matched_p.append(mp.astype(np.int64) + op)
        matched_t.append(mt.astype(np.int64) + ot)

    def barcode(which: str) -> Barcode:
        if not parts[which]:
            z = np.zeros(0, np.int64)
            return Barcode(side.shape, z, z, z)
        return Barcode(side.shape, *(np.concatenate([x[i] for x in parts[which]]) for i in range(3)))

    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)  # noqa: E731
    return Matching(barcode("pred"), barcode("target"), cat(matched_p), cat(matched_t))


__all__ = ["CONSTRUCTIONS", "MAX", "Barcode", "Matching", "TargetSide", "betti_matching", "check_dims",
           "target_side"]
