r"""TiledLoss: evaluate a loss on one tile of a grid per training step (spatial sampling).

A perceptual loss's cost grows with the image's area, and its gradient over one step is a sum over
the image's locations. ``TiledLoss`` splits the image into a ``ky x kx`` grid of tiles and, on each
training step, evaluates the wrapped loss on one tile only (the same window of input and target). The
tiles are visited in a *stratified* order: every tile exactly once per cycle of ``ky * kx`` steps, in
an order shuffled per cycle by a seeded generator, so over a cycle the mean value and the accumulated
gradient are the full image's (below), while each step costs about one tile's share of the loss.

Each step's value is the tile's loss times ``n * area / (H * W)`` (``n`` tiles; ``area`` the tile's
pixels), so that over a cycle the mean value is

.. math::

    \frac{1}{n} \sum_t n \frac{|T_t|}{HW} L(T_t) = \sum_t \frac{|T_t|}{HW} L(T_t),

the area-weighted mean of the tiles' losses: the full image's loss exactly for a loss that is a spatial
mean of local terms (a feature loss whose tiles see their whole receptive field).

**Margin.** A deep feature at a tile's border depends on pixels outside it: computed on the tile alone it
sees zero padding instead. With a feature loss (:class:`~fastloss.PerceptualLoss`, :class:`~fastloss.LPIPSLoss`,
or :class:`~fastloss.CachedTarget` around one) the backbone sees the tile plus ``margin`` pixels of
context on each side (clipped at the image border) and the distance is taken on the tile's interior only
(:meth:`FeatureLoss.window_distance`). Tile borders and windows are aligned to the deepest tap's stride, so
with a margin that covers the receptive field the interior features equal the full image's and a
cycle's mean is the full loss up to float rounding (for sides that are multiples of the deepest stride;
otherwise the pixels a pooling drops at the border weigh their tile's share by up to ``stride / side``). A
smaller margin leaves a bias that
:func:`fastloss.bench.cycle_deviation` measures. ``margin="auto"`` (default) is half the tapped
backbone's theoretical receptive-field radius, at most half a tile (see the docs for the measurements).

**Reusing the other tiles' gradients** (``reuse_gradients=True``). A model that renders one image (a
coordinate network, splatting) gets from a plain tile a gradient for that tile's region only: every other
region waits ``n - 1`` steps of ``n``, as under an :class:`~fastloss.IntervalLoss` of period ``n``. With
``reuse_gradients`` each training step computes one tile's term and its input gradient (its backward runs
inside the call) and returns, for every other tile, its term as last computed (its value and input gradient:
a stochastic average gradient over the tiles), so every region gets a gradient every step; the value is the
sum of the tiles' terms (their area-weighted losses), scaled by ``n / seen`` in the first cycle. The terms are
kept while the target stays the same from one step to the next (one image fitted for many steps); when it
changes (or the input's shape does) they are dropped, so on targets that change every step this is the plain
estimator. Memory: the tiles' windows of one input gradient (about the input's size, more with a margin) and
a copy of the target; both are in ``state_dict``, so a resumed fit reuses exactly what the uninterrupted one
would. One window per batch only (``per_sample=False``).

**Windows per sample or per batch.** ``per_sample=False`` (default) uses one tile for the whole batch;
``per_sample=True`` gives sample ``b`` the tile ``b`` places further in the cycle's order (every sample
still visits every tile once per cycle), so one step's gradient covers several image regions. Per-sample
windows are all the same size (shifted inside the image at the borders) and need a feature loss.

Works on 2D images ``(B, C, H, W)`` of any size whose tiles (with their margin) are at least the backbone's
minimum input; anything else is a ``ValueError`` naming the sizes. In eval mode or under ``torch.no_grad()``
the wrapped loss is computed on the whole image (validation is exact). The order depends only on the
seed and the stack's step, both in ``state_dict``, so a resumed run visits exactly the tiles the
uninterrupted one would. Inside an :class:`~fastloss.IntervalLoss` the tiles advance on the computed
steps (the phase); a sampling wrapper inside a ``TiledLoss`` advances once per cycle of tiles (and a
``TiledLoss`` inside a :class:`~fastloss.BatchSampledLoss` once per cycle of groups), so nested they visit
every (tile, group) pair once per ``n_tiles * n_groups`` steps. Tiles repeat, so a :class:`~fastloss.CachedTarget` inside hits per tile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._validation import check_bool, check_int, reduce_loss
from ..losses._feature import FeatureLoss
from ._sampling import SamplingWrapper
from .base import loss_output_shape
from .cached_target import CachedTarget

__all__ = ["TiledLoss"]

Box = tuple[int, int, int, int]


def _feature_access(loss: nn.Module) -> tuple[FeatureLoss, object] | None:
    """``(feature loss, target-features function)`` where ``loss`` exposes features, else ``None``."""
    if isinstance(loss, FeatureLoss):
        return loss, loss.target_features
    if isinstance(loss, CachedTarget):
        return loss.loss, loss.target_features
    return None


def _edges(length: int, parts: int, align: int) -> list[int]:
    """``parts + 1`` increasing borders of ``[0, length)``, inner ones on multiples of ``align``."""
    edges = [0] + [int(round(i * length / parts / align)) * align for i in range(1, parts)] + [length]
    return edges


class _Terms:
    """The tiles' last terms for one target: per tile index its window, the window of its input gradient and
    its value (the tile's area-weighted loss), with the target they were computed for (its shape fixes the
    grid, so the terms of one target always belong to one grid)."""

    def __init__(self) -> None:
        self.target: Tensor | None = None
        self.terms: dict[int, tuple[Box, Tensor, Tensor]] = {}

    def holds(self, target: Tensor) -> bool:
        """Whether the kept terms belong to ``target`` (same shape, dtype, device and values)."""
        kept = self.target
        return (kept is not None and kept.shape == target.shape and kept.dtype == target.dtype
                and kept.device == target.device and torch.equal(kept, target.detach()))

    def reset(self, target: Tensor) -> None:
        self.target, self.terms = target.detach().clone(), {}

    def put(self, index: int, window: Box, grad: Tensor, value: Tensor) -> None:
        self.terms[index] = (window, grad, value)

    def sum(self, input: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """``(value, input gradient)`` of the kept terms of ``n`` tiles, scaled by ``n / kept`` until every tile
        has one."""
        scale = n / len(self.terms)
        grad = torch.zeros_like(input)
        value = None
        for (top, left, bottom, right), g, v in self.terms.values():
            grad[..., top:bottom, left:right] += g
            value = v if value is None else value + v
        return value * scale, grad.mul_(scale)

    def state(self) -> dict:
        return {"target": self.target,
                "terms": {i: (list(w), g, v) for i, (w, g, v) in self.terms.items()}}

    @classmethod
    def from_state(cls, state: dict | None) -> _Terms:
        terms = cls()
        if state:
            terms.target = state["target"]
            terms.terms = {int(i): (tuple(w), g, v) for i, (w, g, v) in state["terms"].items()}
        return terms


class TiledLoss(SamplingWrapper):
    r"""Evaluate ``loss`` on one tile of a grid per training step, every tile once per cycle.

    See the module docstring for the estimator, the margin and the order.

    Args:
        loss: the loss to wrap. A feature loss (``PerceptualLoss``, ``LPIPSLoss``, or ``CachedTarget``
            around one) gets the margin and per-sample windows; any other loss is evaluated on the tile
            crop itself (``margin`` must then be 0) and must return a scalar or one value per sample.
        tiles: the grid ``(ky, kx)`` (an int for a square grid); default ``(3, 3)``.
        tile_size: instead of ``tiles``, the tile side(s) in pixels: the grid is ``ceil(H / h) x ceil(W / w)``.
        margin: context pixels around the tile the backbone sees (int >= 0), or ``"auto"`` (feature
            losses: half the receptive-field radius, at most half a tile; other losses: 0).
        per_sample: one tile per sample (``True``) or one per batch (``False``).
        seed: seed of the visiting order (saved in ``state_dict``).
        fit_grid: use fewer tiles along an axis where a tile would be smaller than the backbone's minimum
            input (down to the whole image: then the loss itself), instead of raising (the presets use it).
        reuse_gradients: add, every step, each other tile's term as last computed for the same target (see
            the module docstring); for a target that repeats from step to step, e.g. a single-image fit.

    Shape:
        - input, target: :math:`(B, C, H, W)`.
        - output: the wrapped loss's output for the whole image (a scalar, or :math:`(B,)` with
          ``reduction="none"``).

    Example:
        >>> from fastloss import PerceptualLoss
        >>> loss = TiledLoss(PerceptualLoss("vgg16", layers=["relu1_2"], weights=None), tiles=2, margin=2)
        >>> x, y = torch.rand(1, 3, 32, 32, requires_grad=True), torch.rand(1, 3, 32, 32)
        >>> values = []
        >>> for _ in range(4):  # one cycle: each of the 4 tiles once
        ...     value = loss(x, y)
        ...     value.backward()
        ...     values.append(value.item())
        >>> full = loss.loss(x, y).item()
        >>> abs(sum(values) / 4 - full) < 1e-5 * full  # the margin covers relu1_2's field (5 px)
        True
    """

    def __init__(
        self,
        loss: nn.Module,
        tiles: int | Sequence[int] | None = None,
        *,
        tile_size: int | Sequence[int] | None = None,
        margin: int | str = "auto",
        per_sample: bool = False,
        seed: int = 0,
        fit_grid: bool = False,
        reuse_gradients: bool = False,
    ) -> None:
        if tiles is not None and tile_size is not None:
            raise ValueError(f"give either `tiles` or `tile_size`, not both (got {tiles!r} and {tile_size!r})")
        self.tiles = None if tile_size is not None else self._pair("tiles", (3, 3) if tiles is None else tiles)
        self.tile_size = None if tile_size is None else self._pair("tile_size", tile_size)
        if self.tiles is not None and self.tiles == (1, 1):
            raise ValueError("`tiles` must have more than one tile (got (1, 1): that is the loss itself)")
        if margin != "auto":
            margin = check_int("margin", margin, 0, expected="a non-negative int or 'auto'")
        check_bool("per_sample", per_sample)
        check_bool("fit_grid", fit_grid)
        check_bool("reuse_gradients", reuse_gradients)
        if reuse_gradients and per_sample:
            raise ValueError("`reuse_gradients=True` needs one window per batch: use per_sample=False")
        access = _feature_access(loss)
        if access is None and isinstance(margin, int) and margin > 0:
            raise TypeError(
                f"`margin` needs a feature loss (PerceptualLoss, LPIPSLoss, or CachedTarget around one) to crop its "
                f"feature maps; {type(loss).__name__} is evaluated on the tile itself: use margin=0"
            )
        if access is None and per_sample:
            raise TypeError(
                f"`per_sample=True` needs a feature loss (PerceptualLoss, LPIPSLoss, or CachedTarget around one), "
                f"got {type(loss).__name__}"
            )
        super().__init__(loss, seed)  # validate first: joining a stack changes the wrappers inside
        self.margin = margin
        self.per_sample = per_sample
        self.fit_grid = fit_grid
        self.reuse_gradients = reuse_gradients
        self._reused = _Terms()

    @staticmethod
    def _pair(name: str, value: int | Sequence[int]) -> tuple[int, int]:
        pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
            raise ValueError(f"`{name}` must be a positive int or two positive ints (rows, columns), got {value!r}")
        return pair

    # --- the grid -----------------------------------------------------------------------------
    def _features(self) -> tuple[FeatureLoss, object] | None:
        return _feature_access(self.loss)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The grid ``(ky, kx)`` for images of ``height x width``."""
        if self.tiles is not None:
            ky, kx = self.tiles
        else:
            ky, kx = math.ceil(height / self.tile_size[0]), math.ceil(width / self.tile_size[1])
        if self.fit_grid:  # fewer tiles where a tile would be smaller than the backbone's minimum input
            access = self._features()
            low = access[0].min_size if access else getattr(self.innermost(), "min_size", 1)
            ky, kx = max(1, min(ky, height // low)), max(1, min(kx, width // low))
        return ky, kx

    def stride(self) -> int:
        """The alignment of tile borders and windows: the deepest tap's stride (1 for other losses)."""
        access = self._features()
        return access[0].receptive_field()[1] if access else 1

    def context(self, tile_height: int, tile_width: int) -> int:
        """The margin in pixels for tiles of this size (``margin``, or the ``"auto"`` rule)."""
        access = self._features()
        if access is None:
            return 0
        stride = access[0].receptive_field()[1]
        if self.margin == "auto":
            radius = (access[0].receptive_field()[0] - 1) / 2
            margin = min(radius / 2, min(tile_height, tile_width) / 2)
        else:
            margin = self.margin
        return int(math.ceil(margin / stride) * stride)

    def tiles_of(self, height: int, width: int) -> list[Box]:
        """Every tile ``(top, left, bottom, right)`` of an image ``height x width``, row-major."""
        ky, kx = self.grid(height, width)
        if ky > height or kx > width:
            raise ValueError(f"`tiles` {(ky, kx)} has more tiles than pixels for an input of {height}x{width}")
        align = self.stride()
        ys, xs = (_edges(length, k, max(1, min(align, 2 ** int(math.log2(max(1, length // k))))))
                  for length, k in ((height, ky), (width, kx)))
        if any(b <= a for a, b in zip(ys, ys[1:], strict=False)) or any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
            raise ValueError(f"`tiles` {(ky, kx)} is too fine for an input of {height}x{width}: a tile would be empty")
        return [(ys[i], xs[j], ys[i + 1], xs[j + 1]) for i in range(ky) for j in range(kx)]

    def window_of(self, tile: Box, height: int, width: int, uniform: bool = False) -> Box:
        """The window the backbone sees for ``tile``: the tile plus the margin, clipped to the image (or,
        with ``uniform``, shifted inside it so every window of the grid has the same size)."""
        top, left, bottom, right = tile
        tiles = self.tiles_of(height, width)
        th = max(t[2] - t[0] for t in tiles) if uniform else bottom - top
        tw = max(t[3] - t[1] for t in tiles) if uniform else right - left
        m = self.context(min(t[2] - t[0] for t in tiles), min(t[3] - t[1] for t in tiles))
        if not uniform:
            return max(0, top - m), max(0, left - m), min(height, bottom + m), min(width, right + m)
        wh, ww = min(height, th + 2 * m), min(width, tw + 2 * m)
        y0 = min(max(0, top - m), height - wh)
        x0 = min(max(0, left - m), width - ww)
        y0, x0 = min(y0, top), min(x0, left)  # the window always holds its tile
        return y0, x0, max(y0 + wh, bottom), max(x0 + ww, right)

    @torch.compiler.disable
    def plan(self, height: int, width: int, batch: int, step: int | None = None) -> list[tuple[Box, Box, float]]:
        """For training step ``step`` (default: now): per sample (or one entry for the batch) the tile, its
        window and the tile's weight ``n * area / (H * W)``."""
        tiles = self.tiles_of(height, width)
        n = len(tiles)
        if step is None:
            self._cycle = n
        phase = self.phase(step)
        order = self.cycle_order(phase, n)
        picks = [order[(phase + b) % n] for b in range(batch)] if self.per_sample else [order[phase % n]]
        out = []
        for index in picks:
            tile = tiles[index]
            area = (tile[2] - tile[0]) * (tile[3] - tile[1])
            out.append((tile, self.window_of(tile, height, width, uniform=self.per_sample), n * area / (height * width)))
        return out

    # --- the loss -----------------------------------------------------------------------------
    def _check_window(self, window: Box, min_size: int) -> None:
        h, w = window[2] - window[0], window[3] - window[1]
        if min(h, w) < min_size:
            raise ValueError(
                f"a tile's window of {h}x{w} pixels is smaller than the backbone's minimum input {min_size}x{min_size}: "
                f"use fewer `tiles`, a larger `tile_size` or a larger `margin`"
            )

    def compute(self, input: Tensor, target: Tensor | None) -> Tensor:
        if not self.counting:
            return self.loss(input, target)
        if input.ndim != 4:
            raise ValueError(f"`input` must have 4 dimensions (B, C, H, W), got shape {tuple(input.shape)}")
        if target is None or target.shape != input.shape:
            got = None if target is None else tuple(target.shape)
            raise ValueError(f"`target` must be a tensor of the input's shape {tuple(input.shape)}, got {got}")
        plan = self.plan(input.shape[-2], input.shape[-1], input.shape[0])
        if self.reuse_gradients and torch.is_grad_enabled():
            return self._with_reused_terms(input, target, plan)
        return self._tile_value(input, target, plan)

    @torch.compiler.disable
    def _with_reused_terms(self, input: Tensor, target: Tensor, plan: list[tuple[Box, Box, float]]) -> Tensor:
        """This step's tile term with its input gradient, plus every other tile's last term (module docstring)."""
        tile, window, _ = plan[0]
        tiles = self.tiles_of(input.shape[-2], input.shape[-1])
        n = len(tiles)
        terms = self._reused
        if not terms.holds(target):
            terms.reset(target)
        leaf = input.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self._tile_value(leaf, target, plan)
            (grad,) = torch.autograd.grad(value.sum(), leaf)
        top, left, bottom, right = window
        terms.put(tiles.index(tile), window,
                  grad[..., top:bottom, left:right] / n, value.detach() / n)  # the tile's term: 1/n of the estimator
        total, step_grad = terms.sum(input, n)
        moved = (input - input.detach()) * step_grad  # zero, with the reused gradient as its own
        return total + (moved.flatten(1).sum(1) if total.ndim == 1 else moved.sum())

    def _tile_value(self, input: Tensor, target: Tensor, plan: list[tuple[Box, Box, float]]) -> Tensor:
        height, width = input.shape[-2:]
        access = self._features()
        if access is None:
            tile, _, weight = plan[0]
            self._check_window(tile, getattr(self.innermost(), "min_size", 1))
            top, left, bottom, right = tile
            out = self.loss(input[..., top:bottom, left:right], target[..., top:bottom, left:right])
            full = self.output_shape(input, target)
            if out.shape != full:
                raise ValueError(
                    f"{type(self.loss).__name__} returns shape {tuple(out.shape)} on a tile, not its shape for the whole "
                    f"image {tuple(full)}: TiledLoss needs a loss that returns a scalar or one value per sample"
                )
            return out * weight
        loss, target_features = access
        input, target = loss.check(input, target)
        for _, window, _ in plan:
            self._check_window(window, loss.min_size)
        if self.per_sample:
            windows = [w for _, w, _ in plan]
            size = (windows[0][2] - windows[0][0], windows[0][3] - windows[0][1])
            x = torch.stack([input[b, :, w[0]:w[2], w[1]:w[3]] for b, w in enumerate(windows)])
            y = torch.stack([target[b, :, w[0]:w[2], w[1]:w[3]] for b, w in enumerate(windows)])
            boxes = [(t[0] - w[0], t[1] - w[1], t[2] - w[0], t[3] - w[1]) for t, w, _ in plan]
            weights = [wt for _, _, wt in plan]
        else:
            tile, w, weight = plan[0]
            size = (w[2] - w[0], w[3] - w[1])
            x, y = input[..., w[0]:w[2], w[1]:w[3]], target[..., w[0]:w[2], w[1]:w[3]]
            boxes = (tile[0] - w[0], tile[1] - w[1], tile[2] - w[0], tile[3] - w[1])
            weights = weight
        target_feats = target_features(y)
        per = loss.window_distance(loss.feature_maps(x), target_feats, boxes, size)
        if isinstance(weights, list):
            weights = torch.tensor(weights, dtype=per.dtype, device=per.device)
        return reduce_loss(per * weights, loss.reduction)

    def get_extra_state(self) -> dict:
        state = super().get_extra_state()
        if self.reuse_gradients:
            state["reused"] = self._reused.state()
        return state

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self._reused = _Terms.from_state(state.get("reused"))

    def output_shape(self, input: Tensor, target: Tensor | None) -> torch.Size:
        if self._features() is not None:
            return loss_output_shape(self._features()[0], input, target)
        return loss_output_shape(self.loss, input, target)

    def summary(self) -> str:
        grid = f"{self.tiles[0]}x{self.tiles[1]}" if self.tiles is not None else f"tile_size={self.tile_size}"
        flags = (", per_sample" if self.per_sample else "") + (", reuse_gradients" if self.reuse_gradients else "")
        return f"{type(self).__name__}({grid}, margin={self.margin}{flags})"

    def extra_repr(self) -> str:
        grid = f"tiles={self.tiles}" if self.tiles is not None else f"tile_size={self.tile_size}"
        return (f"{grid}, margin={self.margin!r}, per_sample={self.per_sample}, seed={self.seed}, "
                f"fit_grid={self.fit_grid}, reuse_gradients={self.reuse_gradients}")
