r"""Betti-matching topology loss: persistence bars of prediction and target matched *in space*.

Betti matching (Stucki et al. 2023, "Topologically faithful image segmentation via induced matching of
persistence barcodes"; Stucki et al. 2024, "Efficient Betti matching enables topology-aware 3D
segmentation via persistent homology") matches a bar of the prediction to a bar of the target when
both are induced, through the comparison image :math:`\min(f, g)`, onto the same bar: the two features
are the same feature *at the same place*. Betti-number matching (:class:`fastloss.TopologicalLoss`)
only counts features: any bar of the prediction may stand in for any bar of the target.

For each (b, c) map, with :math:`f` the prediction's filtration (superlevel: :math:`f = 1 - p`) and
:math:`g` the target's (:math:`1 - t`; the target is a binary mask or any map in [0, 1]),

.. math::

    L = \sum_{(i, j)\ \mathrm{matched}} 2 w_m \left((b_i - b'_j)^2 + (d_i - d'_j)^2\right)
        + \sum_{i\ \mathrm{unmatched}} w_u (b_i - d_i)^2 + \sum_{j\ \mathrm{unmatched}} (b'_j - d'_j)^2

over the finite bars of every dimension in ``dims`` (:math:`(b, d)` prediction bars read from
:math:`f`, :math:`(b', d')` target bars read from :math:`g`; each dimension's terms times its
``dim_weights`` entry). With ``push_unmatched_to_1_0`` an unmatched bar costs
:math:`2 w_u ((b - 1)^2 + d^2)` instead (target: :math:`2 ((b' - 1)^2 + d'^2)`). Unmatched prediction
bars with :math:`|b - d| \le` ``barcode_length_threshold`` are left out. :math:`(w_m, w_u)` =
``topology_weights``. Unmatched target terms are constants (no gradient) and unweighted.

This is ``topolosses.BettiMatchingLoss(use_base_loss=False)`` exactly (same matching pair for pair,
ties included; same formula, options and mean over maps), computed by the native engine
(:mod:`fastloss.ph.matching`, numba) instead of the C++ extension. Values enter autograd by gathering
:math:`f` at the critical pixels, so the gradient reaches exactly those pixels.

Essential bars: each map's one infinite bar (dim 0: its global minimum) is left out, as in the
reference. 3D maps: every dim; dim 1 (loops) by reductions of each image's coboundary matrix and of
the comparison image's boundary matrix with rows in the prediction's (target's) order (image
persistence, as the reference; :mod:`fastloss.ph.loops3d`).

Ties: which bars match depends on the order in which cells of equal value enter (a pixel joining
several components at once is such a tie: its edges all take its value). The engine takes them in the
reference's order (value, then cell index), hence the same matching, ties and binary masks included.
``construction="T"`` (the reference has only "V") takes the same rule on the "T" cells: there its lower
cells take their pixels' values, so cells tie even on maps without equal pixels, and another valid cell
order could match differently (checked: the reference run on the subdivided "T" complex, whose cells
it orders otherwise, differs on about a fifth of random 12x12 maps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from .. import ph as engine
from .._validation import (
    as_tuple,
    check_bool,
    check_choice,
    check_construction,
    check_finite,
    check_floats,
    check_ints,
    check_ndim,
    check_number,
    check_pair,
    check_positive_int,
    check_range,
    check_reduction,
    check_tensor,
    reduce_loss,
    upcast,
)
from ..ph import matching as bm
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
    "BettiMatchingConfig",
    "BettiMatchingLoss",
    "MatchSelection",
    "betti_matching_loss",
    "match_selection",
]

FILTRATIONS = ("superlevel", "sublevel")


@dataclass(frozen=True)
class MatchSelection:
    """The critical pixels of one map's Betti matching: linear (C order) indices into the map, and the
    homology dimension of every term. ``pred_*``/``target_*``: matched pairs (row ``i`` of each is one
    pair); ``unmatched_*``: the prediction's unmatched bars; ``missed_*``: the target's."""

    pred_birth: np.ndarray
    pred_death: np.ndarray
    target_birth: np.ndarray
    target_death: np.ndarray
    matched_dim: np.ndarray
    unmatched_birth: np.ndarray
    unmatched_death: np.ndarray
    unmatched_dim: np.ndarray
    missed_birth: np.ndarray
    missed_death: np.ndarray
    missed_dim: np.ndarray

    @property
    def num_bars(self) -> int:
        return 2 * len(self.pred_birth) + len(self.unmatched_birth) + len(self.missed_birth)


def match_selection(m: bm.Matching) -> MatchSelection:
    """The :class:`MatchSelection` of a :class:`fastloss.ph.matching.Matching`."""
    pm, tm = m.pred_matched, m.target_matched
    up, ut = m.unmatched("pred"), m.unmatched("target")
    p, t = m.pred, m.target
    return MatchSelection(
        p.birth_index[pm], p.death_index[pm], t.birth_index[tm], t.death_index[tm], p.dim[pm],
        p.birth_index[up], p.death_index[up], p.dim[up],
        t.birth_index[ut], t.death_index[ut], t.dim[ut],
    )


def _check_values(name: str, x: Tensor, what: str | None) -> None:
    """:func:`check_finite`, then :func:`check_range` to [0, 1] unless ``what`` is None, with their
    messages, in one pass over ``x`` when it passes (one ``aminmax``; NaN and inf show in it)."""
    if x.dtype == torch.bool:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        check_finite(name, x)
    if what is not None and (lo < 0.0 or hi > 1.0):
        check_range(name, x, 0.0, 1.0, what)


@dataclass(frozen=True)
class BettiMatchingConfig:
    """Validated settings of a Betti-matching loss, shared by the function, the module and CachedPH."""

    dims: tuple[int, ...] | None = None
    construction: str = "V"
    from_logits: bool = False
    reduction: str = "mean"
    workers: int | None = None
    filtration: str = "superlevel"
    push_unmatched_to_1_0: bool = False
    barcode_length_threshold: float = 0.0
    topology_weights: tuple[float, float] = (1.0, 1.0)
    dim_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        engine.require_numba()
        check_construction(self.construction)
        check_choice("filtration", self.filtration, FILTRATIONS)
        check_reduction(self.reduction)
        if self.workers is not None:
            check_positive_int("workers", self.workers)
        object.__setattr__(self, "dims", check_ints("dims", self.dims))
        for name in ("from_logits", "push_unmatched_to_1_0"):
            check_bool(name, getattr(self, name))
        check_number("barcode_length_threshold", self.barcode_length_threshold, 0, kind="float")
        object.__setattr__(self, "topology_weights", check_floats("topology_weights", self.topology_weights, 2))
        if self.dim_weights is not None:
            object.__setattr__(self, "dim_weights", check_floats("dim_weights", self.dim_weights))

    def dims_for(self, spatial_ndim: int) -> tuple[int, ...]:
        """The dims of ``spatial_ndim``-D maps (default every dim): a ValueError outside ``0..ndim-1``."""
        dims = tuple(range(spatial_ndim)) if self.dims is None else self.dims
        dims = bm.check_dims(spatial_ndim, dims)
        if self.dim_weights is not None and len(self.dim_weights) <= max(dims):
            raise ValueError(
                f"`dim_weights` holds one weight per homology dimension (index = dim) and must cover dims "
                f"{list(dims)}, got {len(self.dim_weights)} entries {self.dim_weights!r}"
            )
        return tuple(sorted(set(dims)))

    def check(self, input: object, target: object) -> tuple[Tensor, Tensor]:
        """Validate a call; returns ``input`` and ``target``."""
        input = check_tensor("input", input)
        check_ndim("input", input, (4, 5), "B, C, H, W or B, C, D, H, W")
        _check_values("input", input, None if self.from_logits else "probabilities")
        if target is None:
            raise ValueError("`target` is required: a binary mask or a map in [0, 1] of the input's shape")
        target = check_tensor("target", target, floating=False)
        check_pair(input, target)
        _check_values("target", target, "values (a binary mask or a map in [0, 1])")
        self.dims_for(input.ndim - 2)
        return input, target

    def maps(self, input: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The filtrations ``(f, g)`` of prediction and target, shape ``(B * C, *spatial)``, in the
        compute dtype (at least float32); ``g`` is detached."""
        with torch.autocast(input.device.type, enabled=False):
            x = upcast(input)
            p = torch.sigmoid(x) if self.from_logits else x
            t = target.detach().to(p.dtype)
            if self.filtration == "superlevel":
                p, t = 1 - p, 1 - t
        return p.reshape(-1, *input.shape[2:]), t.reshape(-1, *input.shape[2:])


def target_side(cfg: BettiMatchingConfig, g: np.ndarray, dims: tuple[int, ...]) -> bm.TargetSide:
    """Everything about one target map that does not depend on the prediction (exact)."""
    return bm.target_side(g, cfg.construction, dims)


def fresh_match(f: np.ndarray, side: bm.TargetSide) -> MatchSelection:
    """The exact Betti matching of one prediction map against a target side (its dims are the side's)."""
    return match_selection(bm.betti_matching(f, side))


# (cfg, f of shape (N, *spatial), g of the same shape, dims) -> one selection per map
Selector = Callable[[BettiMatchingConfig, np.ndarray, np.ndarray, tuple[int, ...]], list[MatchSelection]]


def exact_matchings(cfg: BettiMatchingConfig, f: np.ndarray, g: np.ndarray, dims) -> list[MatchSelection]:
    """Every map's matching (target side included), in the loss's thread pool."""
    return run_per_map(lambda i: fresh_match(f[i], target_side(cfg, g[i], dims)), len(f), cfg.workers,
                       "Betti matching")


def matching_loss(f: Tensor, g: Tensor, selections: Sequence[MatchSelection], cfg: BettiMatchingConfig) -> Tensor:
    """Differentiable loss of each map, shape ``(N,)``: ``f`` (with grad) and ``g`` gathered at the
    selected pixels. Runs in at least float32 with autocast off."""
    with torch.autocast(f.device.type, enabled=False):
        f, g = upcast(f), upcast(g).to(upcast(f).dtype)
        n = f.shape[0]
        ff, gg = f.reshape(-1), g.reshape(-1)
        numel = ff.numel() // max(n, 1)
        device, dtype = f.device, f.dtype

        def index(name: str) -> Tensor:
            return selection_index(selections, name, numel, device)

        def owner(name: str) -> Tensor:
            return selection_owner(selections, name, device)

        def weights(name: str) -> Tensor | float:
            if cfg.dim_weights is None:
                return 1.0
            w = torch.tensor(cfg.dim_weights, dtype=dtype, device=device)
            dim = np.concatenate([getattr(s, name) for s in selections]).astype(np.int64)
            return w[torch.from_numpy(dim).to(device)]

        w_m, w_u = cfg.topology_weights
        push = cfg.push_unmatched_to_1_0
        pb, pd = torch.take(ff, index("pred_birth")), torch.take(ff, index("pred_death"))
        tb, td = torch.take(gg, index("target_birth")), torch.take(gg, index("target_death"))
        matched = 2 * w_m * ((pb - tb).square() + (pd - td).square()) * weights("matched_dim")
        ub, ud = torch.take(ff, index("unmatched_birth")), torch.take(ff, index("unmatched_death"))
        if push:
            unmatched = 2 * w_u * ((ub - 1).square() + ud.square())
        else:
            unmatched = w_u * (ub - ud).square()
        long_enough = (ub - ud).detach().abs() > cfg.barcode_length_threshold
        unmatched = torch.where(long_enough, unmatched, torch.zeros_like(unmatched)) * weights("unmatched_dim")
        mb, md = torch.take(gg, index("missed_birth")), torch.take(gg, index("missed_death"))
        missed = (2 * ((mb - 1).square() + md.square()) if push else (mb - md).square()) * weights("missed_dim")
        return sum_per_map(f, n, ((owner("pred_birth"), matched), (owner("unmatched_birth"), unmatched),
                                  (owner("missed_birth"), missed)))


def _betti_matching_loss(cfg: BettiMatchingConfig, input: object, target: object,
                         select: Selector = exact_matchings) -> Tensor:
    """The loss around a pluggable selection step (:class:`fastloss.CachedPH` passes a caching one)."""
    input, target = cfg.check(input, target)
    f, g = cfg.maps(input, target)
    dims = cfg.dims_for(f.ndim - 1)
    selections = select(cfg, to_numpy(f), to_numpy(g), dims)
    per_map = matching_loss(f, g, selections, cfg).reshape(input.shape[:2])
    return reduce_loss(per_map, cfg.reduction)


def _config(dims, construction, from_logits, reduction, workers, filtration, push_unmatched_to_1_0,
            barcode_length_threshold, topology_weights, dim_weights) -> BettiMatchingConfig:
    return BettiMatchingConfig(
        as_tuple(dims), construction, from_logits, reduction, workers, filtration, push_unmatched_to_1_0,
        barcode_length_threshold, topology_weights, as_tuple(dim_weights),
    )


def betti_matching_loss(
    input: Tensor,
    target: Tensor,
    *,
    dims: Sequence[int] | None = None,
    construction: str = "V",
    from_logits: bool = False,
    reduction: str = "mean",
    workers: int | None = None,
    filtration: str = "superlevel",
    push_unmatched_to_1_0: bool = False,
    barcode_length_threshold: float = 0.0,
    topology_weights: Sequence[float] = (1.0, 1.0),
    dim_weights: Sequence[float] | None = None,
) -> Tensor:
    r"""Functional form of :class:`BettiMatchingLoss`; see it for the arguments.

    Example:
        >>> target = torch.zeros(1, 1, 16, 16); target[..., 4:12, 4:12] = 1; target[..., 6:10, 6:10] = 0
        >>> betti_matching_loss(target.clone(), target).item()
        0.0
    """
    cfg = _config(dims, construction, from_logits, reduction, workers, filtration, push_unmatched_to_1_0,
                  barcode_length_threshold, topology_weights, dim_weights)
    return _betti_matching_loss(cfg, input, target)


class BettiMatchingLoss(ConfigTopologyLoss):
    r"""Betti-matching topology loss for 2D and 3D segmentation (Stucki et al. 2023, 2024).

    Matches the persistence bars of prediction and target *by location* (through the comparison image
    ``min(f, g)``), then pulls matched bars together and unmatched bars onto the diagonal. See the module
    docstring for the formula; it equals ``topolosses.BettiMatchingLoss(use_base_loss=False)``.

    Prefer it to :class:`fastloss.TopologicalLoss` (Betti-number matching) when *where* a component or
    loop is matters, not only how many there are: Betti-number matching is satisfied by a spurious loop
    anywhere standing in for a missing one; Betti matching is not. It costs more per call: three
    filtrations and six union-find passes per map instead of one and two (figures: docs/benchmarks.md).

    Args:
        dims: homology dimensions to match; default all (2D: 0 and 1; 3D: 0, 1 and 2).
        construction: ``"V"`` (default, as the reference: pixels are vertices; foreground 4/6-connected)
            or ``"T"`` (pixels are top cells; foreground 8/26-connected). The reference has only ``"V"``.
        from_logits: ``input`` holds logits; a sigmoid is applied first.
        reduction: ``"mean"`` | ``"sum"`` over the (B, C) maps, or ``"none"`` for a (B, C) tensor.
        workers: threads computing the maps' matchings in parallel; ``None`` uses one per core (up to the
            number of maps), ``1`` is sequential. The result does not depend on it.
        filtration: ``"superlevel"`` (default: of the probabilities, i.e. the sublevel filtration of
            ``1 - p``) or ``"sublevel"`` (of ``p`` itself).
        push_unmatched_to_1_0: unmatched bars cost ``2((b - 1)^2 + d^2)`` (pushed to (1, 0)) instead of
            ``(b - d)^2`` (pushed to the diagonal).
        barcode_length_threshold: unmatched prediction bars with ``|b - d|`` at most this are left out.
        topology_weights: ``(matched, unmatched prediction)`` weights.
        dim_weights: a weight per homology dimension (index = dim), multiplying that dimension's terms.

    Shape:
        - input: :math:`(B, C, H, W)` or :math:`(B, C, D, H, W)`, foreground probabilities in [0, 1]
          (or logits when ``from_logits``).
        - target: same shape, a binary mask or any map in [0, 1] (any dtype).
        - output: scalar, or :math:`(B, C)` with ``reduction="none"``.

    Example:
        >>> ring = torch.zeros(1, 1, 32, 32); ring[..., 8:24, 8:24] = 1; ring[..., 11:21, 11:21] = 0
        >>> loss = BettiMatchingLoss()
        >>> loss(ring.clone(), ring).item(), loss(torch.zeros_like(ring), ring).item()  # the missing loop: 1
        (0.0, 1.0)
    """

    preset_kind = "topology"
    runs_outside_torch = True  # its PH runs in numba or cripser: no FLOP count (benchmarks say n/a)
    Selection = MatchSelection

    def __init__(
        self,
        dims: Sequence[int] | None = None,
        construction: str = "V",
        from_logits: bool = False,
        reduction: str = "mean",
        workers: int | None = None,
        filtration: str = "superlevel",
        push_unmatched_to_1_0: bool = False,
        barcode_length_threshold: float = 0.0,
        topology_weights: Sequence[float] = (1.0, 1.0),
        dim_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.config = _config(dims, construction, from_logits, reduction, workers, filtration,
                              push_unmatched_to_1_0, barcode_length_threshold, topology_weights, dim_weights)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return _betti_matching_loss(self.config, input, target)

    # --- the other hooks CachedPH caches through (fastloss.losses._topology.CacheablePH) -----------
    def uncacheable_reason(self) -> str | None:
        return None

    def compute_with(self, input: Tensor, target: Tensor, select: SelectionStep) -> Tensor:
        """The loss with ``select`` as its selection step."""
        return _betti_matching_loss(self.config, input, target, lambda _cfg, f, g, dims: select(f, g, dims))

    def target_side(self, g: np.ndarray, dims: tuple[int, ...]) -> bm.TargetSide:
        """The exact target-only part of one map (its filtration, cell orders and barcode)."""
        return target_side(self.config, g, dims)

    def select(self, f: np.ndarray, side: bm.TargetSide, dims: tuple[int, ...]) -> MatchSelection:
        """One map's exact matching against a cached target side."""
        return fresh_match(f, side)

    def summary(self) -> str:
        """The loss and its speed knobs in a few words (for stack descriptions)."""
        knobs = [f"workers={self.config.workers}"]
        if getattr(self.config, "backend", None) is not None:
            knobs.append(f"backend={self.config.backend}")
        return f"{type(self).__name__}({', '.join(knobs)})"

    def extra_repr(self) -> str:
        c = self.config
        return ", ".join(f"{f.name}={getattr(c, f.name)!r}" for f in fields(c))
