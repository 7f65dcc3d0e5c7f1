"""Synthetic, seeded workloads: training-like trajectories of (input, target) and degradation ladders.

Nothing is downloaded. A workload is a dataset of ``samples`` targets visited for ``epochs`` epochs in
shuffled batches (so a cache meets each sample once per epoch, as in real training), with predictions
that drift toward the target over the trajectory the way a network's do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Workload", "batch_trajectory", "natural_images", "perceptual_workload", "smooth_noise", "thin_structures",
    "topology_workload",
]


def smooth_noise(shape: tuple[int, ...], scale: int, g: torch.Generator) -> Tensor:
    """Noise of shape ``(N, C, *spatial)`` smoothed by upsampling a coarse grid ``scale`` times smaller."""
    n, c, *spatial = shape
    coarse = [max(1, s // scale) for s in spatial]
    x = torch.randn(n, c, *coarse, generator=g)
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(x, size=spatial, mode=mode, align_corners=False)


def _draw(canvas: Tensor, points: Tensor) -> None:
    """Set the pixels under ``points`` (K, ndim) (clipped to the canvas) to 1."""
    idx = points.round().long()
    for d, s in enumerate(canvas.shape):
        idx[:, d] = idx[:, d].clamp(0, s - 1)
    canvas[tuple(idx.T)] = 1


def _segment(a: Tensor, b: Tensor) -> Tensor:
    n = int((b - a).abs().max().item() * 2) + 2
    t = torch.linspace(0, 1, n).unsqueeze(1)
    return a + t * (b - a)


def thin_structures(n: int, size: int | tuple[int, ...], seed: int = 0, width: int = 1) -> Tensor:
    """``n`` binary masks of curvilinear structures: lines, rings and branching trees (2D) or tubes (3D).

    ``size`` is an int (2D square) or a spatial shape; returns ``(n, 1, *shape)`` float masks.
    """
    shape = (size, size) if isinstance(size, int) else tuple(size)
    g = torch.Generator().manual_seed(seed)
    ndim, side = len(shape), min(shape)
    masks = torch.zeros(n, 1, *shape)

    def rand(*s: int) -> Tensor:
        return torch.rand(*s, generator=g)

    dims = torch.tensor(shape, dtype=torch.float32) - 1
    for i in range(n):
        canvas = masks[i, 0]
        kind = i % 3
        if kind == 0 or ndim == 3:  # random polylines / tubes
            for _ in range(2 + int(rand(1) * 3)):
                pts = rand(4, ndim) * dims
                for a, b in zip(pts[:-1], pts[1:], strict=True):
                    _draw(canvas, _segment(a, b))
        if kind == 1 and ndim == 2:  # rings (loops)
            for _ in range(1 + int(rand(1) * 3)):
                r = side * (0.08 + 0.15 * rand(1))
                c = r + 2 + rand(2) * (dims - 2 * r - 4)
                t = torch.linspace(0, 2 * math.pi, int(8 * r) + 16)
                _draw(canvas, c + r * torch.stack([t.cos(), t.sin()], 1))
        if kind == 2 and ndim == 2:  # branching trees (vessel-like)
            stack = [(dims * torch.tensor([1.0, 0.5]), torch.tensor(-math.pi / 2), side * 0.3, 0)]
            while stack:
                start, angle, length, depth = stack.pop()
                end = start + length * torch.stack([angle.sin(), angle.cos()]) * torch.tensor([1.0, 1.0])
                end = torch.minimum(torch.maximum(end, torch.zeros(2)), dims)
                _draw(canvas, _segment(start, end))
                if depth < 4:
                    for sign in (-1, 1):
                        stack.append((end, angle + sign * (0.3 + 0.5 * rand(1)[0]), length * 0.7, depth + 1))
    if width > 1:
        pool = F.max_pool2d if ndim == 2 else F.max_pool3d
        k = 2 * (width // 2) + 1
        masks = pool(masks, k, 1, k // 2)
    return masks


def natural_images(n: int, size: int, seed: int = 0) -> Tensor:
    """``n`` natural-looking RGB images in [0, 1]: 1/f-like smooth fields, hard-edged shapes, texture."""
    g = torch.Generator().manual_seed(seed)
    img = sum(smooth_noise((n, 3, size, size), s, g) / (1 + i) for i, s in enumerate((32, 8, 2)))
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        for _ in range(6):
            cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([size, size, size / 4])).tolist()
            shape = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if torch.rand(1, generator=g) < 0.5 else (
                ((yy - cy).abs() < r) & ((xx - cx).abs() < r / 2))
            img[i, :, shape] = torch.randn(3, 1, generator=g) * 0.8
    img = img + 0.1 * torch.randn(img.shape, generator=g)  # texture
    return torch.sigmoid(img * 1.5)


@dataclass
class Workload:
    """A seeded training-like trajectory and a degradation ladder for one loss kind: what
    :func:`fastloss.bench.compare` measures on.

    :meth:`trajectory` yields :attr:`steps` ``(input, target)`` pairs: the ``targets`` visited for
    ``epochs`` epochs in shuffled batches of ``batch`` (so a cache meets each sample once per epoch),
    with predictions that drift toward their targets; :meth:`ladder` gives a target and predictions of
    increasing degradation (for rank correlation). The same seed gives the same tensors, every time.
    Build one with :func:`topology_workload` or :func:`perceptual_workload`, or directly from your own
    targets.

    Attributes:
        name: short name used in reports.
        kind: ``"topology"`` or ``"perceptual"``.
        targets: ``(S, C, *spatial)`` dataset targets.
        batch: batch size; ``epochs``: passes over the dataset.
        seed: seeds the order, the predictions' errors and the ladder.
        crop: augmented workloads: every visit is a random crop of this side, with random flips.

    Example:
        >>> wl = topology_workload(size=16, batch=2, samples=4, epochs=1)
        >>> wl.steps, wl.shape
        (2, (2, 1, 16, 16))
        >>> x, t = next(wl.trajectory())
        >>> tuple(x.shape) == wl.shape and bool(((0 <= x) & (x <= 1)).all())
        True
    """

    name: str
    kind: str
    targets: Tensor
    batch: int
    epochs: int
    seed: int = 0
    crop: int | None = None  # augmented: every visit is a random crop (this size) with random flips
    errors: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed + 1)
        scale = 8 if self.kind == "topology" else 4
        # a per-sample error that persists across visits (what a network gets wrong about a sample)
        self.errors = smooth_noise(tuple(self.targets.shape), scale, g)

    @property
    def steps(self) -> int:
        return self.epochs * math.ceil(len(self.targets) / self.batch)

    @property
    def shape(self) -> tuple[int, ...]:
        spatial = self.targets.shape[2:] if self.crop is None else (self.crop,) * (self.targets.ndim - 2)
        return (self.batch, self.targets.shape[1], *spatial)

    def _augment(self, target: Tensor, error: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """A random crop of side ``crop`` and random flips, the same for a sample's target and error field."""
        out_t, out_e = [], []
        for t, e in zip(target, error, strict=True):
            starts = [int(torch.randint(0, s - self.crop + 1, (1,), generator=g)) for s in t.shape[1:]]
            window = (slice(None), *(slice(a, a + self.crop) for a in starts))
            t, e = t[window], e[window]
            flips = [d + 1 for d in range(t.ndim - 1) if bool(torch.rand(1, generator=g) < 0.5)]
            if flips:
                t, e = t.flip(flips), e.flip(flips)
            out_t.append(t)
            out_e.append(e)
        return torch.stack(out_t), torch.stack(out_e)

    def prediction(self, index: Tensor, progress: float, g: torch.Generator,
                   target: Tensor | None = None, error: Tensor | None = None) -> Tensor:
        """The prediction for samples ``index`` at ``progress`` in [0, 1] of training."""
        if target is None:
            target, error = self.targets[index], self.errors[index]
        if self.kind == "topology":
            # a network's output is spatially smooth: what changes between visits is a smooth field too
            jitter = smooth_noise(tuple(target.shape), 4, g)
            sharp = 2 + 10 * progress
            noise = (1.2 - progress) * error + 0.25 * jitter
            return torch.sigmoid(sharp * (target - 0.5) + 2 * noise)
        jitter = torch.randn(target.shape, generator=g)
        amount = 0.35 * (1 - progress) + 0.03
        return (target + amount * error + 0.02 * jitter).clamp(0, 1)

    def trajectory(self) -> Iterator[tuple[Tensor, Tensor]]:
        """``steps`` (input, target) pairs; the same sequence on every call (seeded)."""
        g = torch.Generator().manual_seed(self.seed)
        step, total = 0, max(1, self.steps - 1)
        for _ in range(self.epochs):
            order = torch.randperm(len(self.targets), generator=g)
            for start in range(0, len(order), self.batch):
                index = order[start : start + self.batch]
                target, error = self.targets[index], self.errors[index]
                if self.crop is not None:
                    target, error = self._augment(target, error, g)
                yield self.prediction(index, step / total, g, target, error), target
                step += 1

    def ladder(self, levels: int = 5) -> tuple[Tensor, list[Tensor], list[str]]:
        """A target and predictions of increasing degradation (several kinds), for rank correlation."""
        g = torch.Generator().manual_seed(self.seed + 2)
        target = self.targets[:1]
        if self.crop is not None:
            target = target[(slice(None), slice(None), *(slice(0, self.crop),) * (target.ndim - 2))]
        preds, names = [], []
        for level in range(1, levels + 1):
            s = level / levels
            if self.kind == "topology":
                base = torch.sigmoid(8 * (target - 0.5))
                noisy = (base + 0.45 * s * smooth_noise(tuple(target.shape), 4, g)).clamp(0, 1)
                keep = (torch.rand(target.shape, generator=g) > 0.5 * s).float()  # random breaks
                preds += [noisy, base * (1 - s * 0.9 * (1 - keep))]
                names += [f"noise{level}", f"breaks{level}"]
            else:
                k = 2 * level + 1
                blur = F.avg_pool2d(F.pad(target, (k // 2,) * 4, mode="replicate"), k, 1)
                noise = (target + 0.08 * s * torch.randn(target.shape, generator=g)).clamp(0, 1)
                b = 2 * level + 2  # JPEG-like: blocks flattened toward their mean
                blocks = F.interpolate(F.avg_pool2d(target, b, ceil_mode=True), scale_factor=b, mode="nearest")
                jpeg = (1 - 0.6 * s) * target + 0.6 * s * blocks[..., : target.shape[-2], : target.shape[-1]]
                preds += [blur, noise, jpeg]
                names += [f"blur{level}", f"noise{level}", f"jpeg{level}"]
        return target, preds, names


def topology_workload(size: int = 256, batch: int = 4, samples: int = 8, epochs: int = 3, dim: int = 2,
                      seed: int = 0, augment: bool = False) -> Workload:
    """Thin-structure masks (2D ``size``², or 3D ``size``³) with drifting soft predictions.

    ``augment=True``: the masks are drawn 1.5x larger and every visit is a random ``size`` crop with random
    flips, so targets never repeat (what augmented training does to a target cache).
    """
    canvas = size if not augment else size + size // 2
    targets = thin_structures(samples, (canvas,) * dim, seed=seed, width=3)
    name = f"topology-{dim}d-{size}" + ("-augmented" if augment else "")
    return Workload(name, "topology", targets, batch, epochs, seed, crop=size if augment else None)


def perceptual_workload(size: int = 128, batch: int = 2, samples: int = 4, epochs: int = 2, seed: int = 0) -> Workload:
    """Natural-looking images with predictions approaching the target over the trajectory."""
    return Workload(f"perceptual-{size}", "perceptual", natural_images(samples, size, seed), batch, epochs, seed)


# --- a trajectory from one user batch (what autotune measures on) -----------------------------------------
def _variants(x: Tensor) -> list[tuple[int, ...]]:
    """The flips of the last two axes that keep ``x``'s shape (identity first): four for images and maps."""
    if x.ndim < 2:
        return [()]
    return [(), (-1,), (-2,), (-2, -1)]


def batch_trajectory(input: Tensor, target: Tensor | None, steps: int, seed: int = 0) -> list[tuple[Tensor, Tensor | None]]:
    """``steps`` training steps built from one batch, as an epoch-based run sees it: the batch in four
    flipped variants visited in turn (so each target comes back every fourth step, as samples do every
    epoch, and consecutive steps see different content, as different batches would), the input drifting
    toward the target with fresh smooth noise each step, within the input's own value range."""
    x0 = input.detach()
    if not x0.is_floating_point():
        return [(x0.clone(), target) for _ in range(steps)]
    g = torch.Generator().manual_seed(seed)
    low, high = float(x0.min()), float(x0.max())
    sigma = 0.1 * float(x0.float().std()) if x0.numel() > 1 else 0.0
    paired = target is not None and target.shape == x0.shape
    flips = _variants(x0) if paired else [()]
    out = []
    for t, a in enumerate(np.linspace(0.0, 0.25, steps)):
        dims = flips[t % len(flips)]
        xt, tt = (x0.flip(dims), target.flip(dims)) if dims else (x0, target)
        x = (1 - a) * xt + a * tt.detach().to(x0.dtype) if paired else xt.clone()
        noise = torch.randn(x0.shape, generator=g).to(x0.dtype)
        if x0.ndim >= 4:  # spatially smooth, like a network's output
            pool = F.avg_pool2d if x0.ndim == 4 else F.avg_pool3d
            noise = pool(noise.float(), 5, 1, 2).to(x0.dtype) * 5
        out.append(((x + sigma * noise.to(x0.device)).clamp(low, high), tt))
    return out
