r"""Persistent-homology topology loss (Betti-number matching, by rank) on cubical complexes.

Not to be confused with *Betti matching* (Stucki et al. 2023), which matches bars by location through a
comparison image: :class:`fastloss.BettiMatchingLoss`.

For each (b, c) map the prediction ``p`` is turned into the sublevel filtration :math:`f = 1 - p`
(foreground appears first). Persistent homology of ``f`` is computed on the CPU on a detached copy, by
the native engine :mod:`fastloss.ph` (numba; every dim of 2D and 3D maps) or by
cripser (``backend``, through :mod:`fastloss.ph.diagram`); each bar :math:`(b_i, d_i)` of dimension :math:`k` has
persistence :math:`d_i - b_i` (an infinite death counts as 1). With :math:`\beta_k` the target's
Betti number, the bars are ranked by persistence and

.. math::

    L_k = \sum_{i \le \beta_k} \left(b_i^2 + (1 - d_i)^2\right) + \sum_{i > \beta_k} (d_i - b_i)^2

(Hu et al. 2019, Clough et al. 2019): the :math:`\beta_k` most persistent bars are pushed to
:math:`(0, 1)`, every other bar onto the diagonal. Values enter autograd by gathering ``f`` at the
birth/death pixel indices of the diagram, so the gradient reaches exactly the critical pixels.

Both engines give the same diagram (dimensions, values, critical pixels) on maps without ties; with
ties the same (dim, birth, death) values, possibly at other pixels of the same value (tested). The
target's Betti numbers are exact either way: the native path labels the mask's components (O(n)).

The module is split so that :class:`fastloss.CachedPH` can reuse its parts: :func:`betti_numbers`
(target side, exact), :func:`select_bars` (which pixels, from a prediction's diagram) and
:func:`selection_loss` (the differentiable part, cheap).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import ph as engine
from .._validation import (
    as_tuple,
    check_binary,
    check_bool,
    check_choice,
    check_construction,
    check_finite,
    check_ints,
    check_ndim,
    check_pair,
    check_positive_int,
    check_range,
    check_reduction,
    check_tensor,
    reduce_loss,
    upcast,
)
from ..ph.diagram import cripser_diagram
from ._topology import (
    ConfigTopologyLoss,
    SelectionStep,
    run_per_map,
    selection_index,
    selection_owner,
    sum_per_map,
    to_numpy,
)

__all__ = [
    "BarSelection",
    "TopologicalLoss",
    "betti_numbers",
    "persistence_diagram",
    "select_bars",
    "selection_loss",
    "topological_loss",
]

BACKENDS = engine.BACKENDS
# A target bar counts towards the Betti number when its persistence is at least this.
TARGET_PERSISTENCE = 0.5


@dataclass(frozen=True)
class BarSelection:
    """The critical pixels of one map's diagram, split into bars to keep and bars to remove.

    Indices are linear (C order) into the map; a death index equal to the map's size stands for an
    infinite death, which reads as the constant 1.
    """

    keep_birth: np.ndarray
    keep_death: np.ndarray
    drop_birth: np.ndarray
    drop_death: np.ndarray

    @property
    def num_bars(self) -> int:
        return len(self.keep_birth) + len(self.drop_birth)


def persistence_diagram(
    f: np.ndarray,
    construction: str = "V",
    maxdim: int | None = None,
    *,
    dims: Sequence[int] | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """The diagram of the sublevel filtration of ``f`` in cripser's format: rows ``[dim, birth, death,
    birth xyz, death xyz]`` (an essential bar: death ``inf``, death coordinates -1).

    ``dims`` (default ``0..maxdim``, ``maxdim`` default ``f.ndim - 1``) are the dimensions needed; the
    cripser backend computes ``0..maxdim`` as before. ``backend``: see :class:`TopologicalLoss`.
    """
    f = np.asarray(f)
    maxdim = f.ndim - 1 if maxdim is None else maxdim
    dims = tuple(range(maxdim + 1)) if dims is None else tuple(dims)
    if engine.resolve(backend, f.ndim, dims) == "cripser":
        return cripser_diagram(f, construction, maxdim)
    return engine.persistence(f, construction, dims, backend).to_cripser()


def _persistence(ph: np.ndarray) -> np.ndarray:
    death = np.where(np.isfinite(ph[:, 2]), ph[:, 2], 1.0)
    return death - ph[:, 1]


def betti_numbers(mask: np.ndarray, construction: str = "V", backend: str = "auto") -> tuple[int, ...]:
    """Betti numbers ``(beta_0, ..., beta_{n-1})`` of a binary mask: bars of ``1 - mask`` with persistence >= 0.5.

    Those are the bars born at 0, i.e. the homology of the foreground complex. ``"auto"``/``"native"``
    count it by labelling (:func:`fastloss.ph.betti_numbers`, O(n)); ``"cripser"`` from its diagram.
    """
    mask = np.asarray(mask)
    if engine.resolve(backend, mask.ndim, ()) != "cripser":
        return engine.betti_numbers(mask, construction)
    diagram = persistence_diagram(1.0 - np.asarray(mask, dtype=np.float64), construction, backend="cripser")
    strong = _persistence(diagram) >= TARGET_PERSISTENCE
    return tuple(int(np.count_nonzero(strong & (diagram[:, 0] == k))) for k in range(mask.ndim))


def _linear_indices(coords: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    strides = np.cumprod((1,) + tuple(shape[:0:-1]))[::-1]
    return (np.rint(coords).astype(np.int64) * strides).sum(axis=1)


def select_bars(ph: np.ndarray, betti: Sequence[int], dims: Sequence[int], shape: Sequence[int]) -> BarSelection:
    """Rank each dimension's bars by persistence; the top ``betti[k]`` are kept, the rest removed.

    Ties are broken by the diagram's row order (stable sort), so the selection is deterministic.
    """
    ndim = len(shape)
    numel = int(np.prod(shape))
    birth = _linear_indices(ph[:, 3 : 3 + ndim], shape)
    death = _linear_indices(ph[:, 6 : 6 + ndim], shape)
    death[~np.isfinite(ph[:, 2])] = numel
    pers = _persistence(ph)
    keep, drop = [], []
    for k in dims:
        rows = np.flatnonzero(ph[:, 0] == k)
        ranked = rows[np.argsort(-pers[rows], kind="stable")]
        keep.append(ranked[: betti[k]])
        drop.append(ranked[betti[k] :])
    keep_rows = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    drop_rows = np.concatenate(drop) if drop else np.zeros(0, np.int64)
    return BarSelection(birth[keep_rows], death[keep_rows], birth[drop_rows], death[drop_rows])


def selection_loss(f: Tensor, selections: Sequence[BarSelection]) -> Tensor:
    """Differentiable loss of each map, shape ``(N,)``, from ``f`` of shape ``(N, *spatial)``.

    This is the only part autograd sees: ``f`` is gathered at the selected birth/death pixels. It runs
    in at least float32 with autocast off (the diagram's values are float64 anyway; nothing to gain).
    """
    with torch.autocast(f.device.type, enabled=False):
        return _selection_loss(upcast(f), selections)


def _selection_loss(f: Tensor, selections: Sequence[BarSelection]) -> Tensor:
    n = f.shape[0]
    flat = f.reshape(n, -1)
    stride = flat.shape[1] + 1
    # A trailing column of ones stands for infinite deaths.
    ext = torch.cat([flat, flat.new_ones(n, 1)], dim=1).reshape(-1)

    def gather(name: str) -> tuple[Tensor, Tensor]:
        index = selection_index(selections, name, stride, f.device)
        return torch.take(ext, index), selection_owner(selections, name, f.device)

    kb, keep_owner = gather("keep_birth")
    kd, _ = gather("keep_death")
    db, drop_owner = gather("drop_birth")
    dd, _ = gather("drop_death")
    return sum_per_map(f, n, ((keep_owner, kb.square() + (1 - kd).square()), (drop_owner, (dd - db).square())))



@dataclass(frozen=True)
class TopologyConfig:
    """Validated settings of a topology loss, shared by the function, the module and CachedPH."""

    dims: tuple[int, ...] | None = None
    construction: str = "V"
    from_logits: bool = False
    reduction: str = "mean"
    workers: int | None = None
    betti: tuple[int, ...] | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", check_ints("dims", self.dims))
        betti = check_ints("betti", self.betti, minimum=0, nonempty=False, expected="a tuple of non-negative ints")
        object.__setattr__(self, "betti", betti)
        check_construction(self.construction)
        check_choice("backend", self.backend, BACKENDS)
        if self.backend == "native":
            engine.require_numba()
        check_reduction(self.reduction)
        if self.workers is not None:
            check_positive_int("workers", self.workers)
        check_bool("from_logits", self.from_logits)

    def dims_for(self, spatial_ndim: int) -> tuple[int, ...]:
        n_betti = spatial_ndim if self.betti is None else len(self.betti)
        dims = tuple(range(n_betti)) if self.dims is None else self.dims
        bad = [d for d in dims if not 0 <= d < n_betti]
        if bad:
            raise ValueError(
                f"`dims` must lie in [0, {n_betti - 1}] for {spatial_ndim}D maps"
                f"{'' if self.betti is None else f' and betti={self.betti}'}, got {list(dims)}"
            )
        engine.resolve(self.backend, spatial_ndim, dims)  # backend="native" without the dims: a ValueError now
        return dims

    def check(self, input: object, target: object) -> tuple[Tensor, Tensor | None]:
        """Validate a call; returns ``input`` and ``target`` (``None`` in prior mode)."""
        input = check_tensor("input", input)
        check_ndim("input", input, (4, 5), "B, C, H, W or B, C, D, H, W")
        check_finite("input", input)
        if not self.from_logits:
            check_range("input", input, 0.0, 1.0, "probabilities")
        if self.betti is not None:
            if target is not None:
                raise ValueError("`target` must be None when a topological prior `betti` is given")
            if len(self.betti) > input.ndim - 2:
                raise ValueError(
                    f"`betti` has {len(self.betti)} entries but {input.ndim - 2}D maps have at most {input.ndim - 2}"
                )
            self.dims_for(input.ndim - 2)
            return input, None
        if target is None:
            raise ValueError("`target` is required (a binary mask), or construct the loss with a prior `betti=(...)`")
        target = check_tensor("target", target, floating=False)
        check_pair(input, target)
        check_binary("target", target)
        self.dims_for(input.ndim - 2)
        return input, target

    def filtration(self, input: Tensor) -> Tensor:
        """``f = 1 - p`` with shape ``(B * C, *spatial)``."""
        p = torch.sigmoid(input) if self.from_logits else input
        return (1 - p).reshape(-1, *input.shape[2:])


def fresh_selection(
    f: np.ndarray, betti: Sequence[int], dims: Sequence[int], construction: str, backend: str = "auto"
) -> BarSelection:
    """The exact bar selection of one map: its diagram now, ranked against ``betti``."""
    return select_bars(persistence_diagram(f, construction, dims=dims, backend=backend), betti, dims, f.shape)


# (cfg, f of shape (N, *spatial), target masks of the same shape or None, dims) -> one selection per map
Selector = Callable[[TopologyConfig, np.ndarray, "np.ndarray | None", tuple[int, ...]], list[BarSelection]]


def exact_selections(cfg: TopologyConfig, f: np.ndarray, masks: np.ndarray | None, dims) -> list[BarSelection]:
    """Target Betti numbers and the prediction's selection of every map, in the loss's thread pool."""

    def job(i: int) -> BarSelection:
        betti = cfg.betti if masks is None else betti_numbers(masks[i], cfg.construction, cfg.backend)
        return fresh_selection(f[i], betti, dims, cfg.construction, cfg.backend)

    return run_per_map(job, len(f), cfg.workers, "persistent homology")


def _topological_loss(cfg: TopologyConfig, input: object, target: object, select: Selector = exact_selections) -> Tensor:
    """The loss around a pluggable selection step (:class:`fastloss.CachedPH` passes a caching one)."""
    input, target = cfg.check(input, target)
    f = cfg.filtration(input)
    dims = cfg.dims_for(f.ndim - 1)
    masks = None if target is None else to_numpy(target.reshape(f.shape)).astype(np.uint8)  # binary (checked)
    selections = select(cfg, to_numpy(f), masks, dims)
    per_map = selection_loss(f, selections).reshape(input.shape[:2])
    return reduce_loss(per_map, cfg.reduction)


def topological_loss(
    input: Tensor,
    target: Tensor | None = None,
    *,
    betti: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
    construction: str = "V",
    from_logits: bool = False,
    reduction: str = "mean",
    workers: int | None = None,
    backend: str = "auto",
) -> Tensor:
    r"""Functional form of :class:`TopologicalLoss`; see it for the arguments.

    Example:
        >>> target = torch.zeros(1, 1, 16, 16); target[..., 4:12, 4:12] = 1; target[..., 6:10, 6:10] = 0
        >>> topological_loss(target.clone(), target).item()
        0.0
    """
    cfg = TopologyConfig(as_tuple(dims), construction, from_logits, reduction, workers, as_tuple(betti), backend)
    return _topological_loss(cfg, input, target)


class TopologicalLoss(ConfigTopologyLoss):
    r"""Persistent-homology topology loss by Betti-number (rank) matching, for 2D and 3D segmentation.

    Each dimension's bars are ranked by persistence and the target's Betti number of them is kept, the
    rest removed: only *how many* features there are is compared, not where they are (any loop of the
    prediction may stand in for the target's). :class:`fastloss.BettiMatchingLoss` matches bars by
    location instead (Betti matching, Stucki et al.). See the module docstring for the formulation.

    Args:
        dims: homology dimensions to match; default all (``0..ndim-1``: components, loops, voids).
        construction: cubical complex construction, ``"V"`` (pixels are vertices, a cell takes its max
            vertex: foreground components are 4-connected in 2D, 6-connected in 3D; holes 8/26) or
            ``"T"`` (pixels are top cells, a lower cell takes the min of its pixels: foreground
            8/26-connected; holes 4/6). Two diagonal foreground pixels: two components under ``"V"``,
            one under ``"T"``.
        from_logits: ``input`` holds logits; a sigmoid is applied first.
        reduction: ``"mean"`` | ``"sum"`` over the (B, C) maps, or ``"none"`` for a (B, C) tensor.
        workers: threads computing the maps' diagrams in parallel; ``None`` uses one per core (up to
            the number of maps), ``1`` is sequential. The result does not depend on it.
        betti: a topological prior ``(beta_0, beta_1, ...)`` used instead of a target mask
            (call with ``target=None``).
        backend: persistent-homology engine. ``"auto"`` (default): the native engine
            (:mod:`fastloss.ph`, numba; every dim of 2D and 3D maps), cripser without numba.
            ``"native"``: the native engine only (``ImportError`` without numba). ``"cripser"``: cripser for
            everything (the reference). The target's Betti numbers come from labelling the mask
            unless ``"cripser"``. The loss value is the same with every backend, the gradient too
            unless the map has ties (then another pixel of the same value may carry it). One
            exception: cripser gets 2D maps one pixel wide wrong under ``"V"`` (no edges), the
            native engine does not.

    Shape:
        - input: :math:`(B, C, H, W)` or :math:`(B, C, D, H, W)`, foreground probabilities in [0, 1]
          (or logits when ``from_logits``).
        - target: same shape, binary mask (any dtype), or ``None`` with ``betti``.
        - output: scalar, or :math:`(B, C)` with ``reduction="none"``.

    Example:
        >>> ring = torch.zeros(1, 1, 32, 32); ring[..., 8:24, 8:24] = 1; ring[..., 11:21, 11:21] = 0
        >>> broken = ring.clone(); broken[..., 8:11, 15:17] = 0.3  # a weak gap: the loop is born late
        >>> loss = TopologicalLoss()
        >>> bool(loss(broken, ring) > 0), loss(ring.clone(), ring).item()
        (True, 0.0)
    """

    preset_kind = "topology"
    runs_outside_torch = True  # its PH runs in numba or cripser: no FLOP count (benchmarks say n/a)

    def __init__(
        self,
        dims: Sequence[int] | None = None,
        construction: str = "V",
        from_logits: bool = False,
        reduction: str = "mean",
        workers: int | None = None,
        betti: Sequence[int] | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.config = TopologyConfig(
            as_tuple(dims), construction, from_logits, reduction, workers, as_tuple(betti), backend
        )

    Selection = BarSelection

    def forward(self, input: Tensor, target: Tensor | None = None) -> Tensor:
        return _topological_loss(self.config, input, target)

    # --- the other hooks CachedPH caches through (fastloss.losses._topology.CacheablePH) -----------
    def uncacheable_reason(self) -> str | None:
        return None if self.config.betti is None else "a `betti` prior has none"

    def compute_with(self, input: Tensor, target: Tensor | None, select: SelectionStep) -> Tensor:
        """The loss with ``select`` as its selection step."""
        return _topological_loss(self.config, input, target, lambda _cfg, f, masks, dims: select(f, masks, dims))

    def target_side(self, mask: np.ndarray, dims: Sequence[int]) -> tuple[int, ...]:
        """The exact target-only part of one map: its Betti numbers."""
        return betti_numbers(mask, self.config.construction, self.config.backend)

    def select(self, f: np.ndarray, side: Sequence[int], dims: Sequence[int]) -> BarSelection:
        """One map's exact bar selection against the target's Betti numbers."""
        return fresh_selection(f, side, dims, self.config.construction, self.config.backend)

    def summary(self) -> str:
        """The loss and its speed knobs in a few words (for stack descriptions)."""
        knobs = [f"workers={self.config.workers}"]
        if getattr(self.config, "backend", None) is not None:
            knobs.append(f"backend={self.config.backend}")
        return f"{type(self).__name__}({', '.join(knobs)})"

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"dims={c.dims}, construction={c.construction!r}, from_logits={c.from_logits}, "
            f"reduction={c.reduction!r}, workers={c.workers}, betti={c.betti}, backend={c.backend!r}"
        )
