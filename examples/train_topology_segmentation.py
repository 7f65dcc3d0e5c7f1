"""Train a small U-Net on synthetic thin structures with Dice + BCE + a topology loss.

Like a retinal-vessel or road-extraction project: curvilinear masks (lines, rings, branching trees),
images with gaps (occlusions), noise and a cluttered background; a seeded train/validation split.

    python examples/train_topology_segmentation.py --preset balanced --epochs 10

``--preset`` picks how the topology loss is computed (``exact``, ``balanced``, ``fastest``; ``none``
trains without it). Per epoch it prints the time per step split into forward, base loss, topology
loss and backward; at the end, validation Dice, Betti error (mean |b0 - b0*| + |b1 - b1*|),
skeleton recall (clDice's topology sensitivity) and the total time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastloss
from fastloss.bench.measure import StageTimer
from fastloss.bench.workloads import smooth_noise, thin_structures
from fastloss.losses.topological import betti_numbers

PRESETS = ("exact", "balanced", "fastest", "none")


def make_dataset(n: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Images (n, 1, size, size) and masks: structures with gaps, contrast changes and clutter."""
    g = torch.Generator().manual_seed(seed)
    masks = thin_structures(n, size, seed=seed, width=3)
    occlusion = (smooth_noise(tuple(masks.shape), 6, g) > 1.0).float()  # gaps in the visible structure
    contrast = 0.5 + 0.5 * torch.sigmoid(smooth_noise(tuple(masks.shape), 16, g))
    clutter = 0.25 * smooth_noise(tuple(masks.shape), 4, g)
    images = masks * contrast * (1 - 0.8 * occlusion) + clutter + 0.15 * torch.randn(masks.shape, generator=g)
    return images, masks


class UNet(nn.Module):
    """A two-level U-Net: small enough for a CPU, deep enough to bridge a gap of a few pixels."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(4, o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.GroupNorm(4, o), nn.ReLU())

        self.enc1, self.enc2, self.mid = block(1, width), block(width, 2 * width), block(2 * width, 4 * width)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, 2), block(4 * width, 2 * width)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * width, width, 2, 2), block(2 * width, width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def dice_loss(prob: Tensor, target: Tensor) -> Tensor:
    inter = (prob * target).sum((1, 2, 3))
    return 1 - ((2 * inter + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)).mean()


def skeleton(mask: Tensor) -> Tensor:
    """Morphological (Lantuejoul) skeleton of a binary (N, 1, H, W) mask, 3x3 structuring element."""
    def erode(x: Tensor) -> Tensor:
        return -F.max_pool2d(-x, 3, 1, 1)

    def dilate(x: Tensor) -> Tensor:
        return F.max_pool2d(x, 3, 1, 1)

    skel, x = torch.zeros_like(mask), mask
    while x.sum() > 0:
        skel = torch.maximum(skel, (x - dilate(erode(x))).clamp(min=0))
        x = erode(x)
    return skel


def evaluate(model: nn.Module, images: Tensor, masks: Tensor) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        pred = (torch.sigmoid(model(images)) > 0.5).float()
    model.train()
    inter = (pred * masks).sum((1, 2, 3))
    dice = ((2 * inter + 1) / (pred.sum((1, 2, 3)) + masks.sum((1, 2, 3)) + 1)).mean().item()
    betti_err = sum(
        sum(abs(a - b) for a, b in zip(betti_numbers(p[0].numpy()), betti_numbers(m[0].numpy()), strict=True))
        for p, m in zip(pred, masks, strict=True)
    ) / len(masks)
    skel = skeleton(masks)
    recall = ((skel * pred).sum() / skel.sum().clamp(min=1)).item()
    return {"dice": dice, "betti_error": betti_err, "skeleton_recall": recall}


MATCHINGS = {"rank": fastloss.TopologicalLoss, "betti": fastloss.BettiMatchingLoss}


def build_topology_loss(preset: str, weight: float, start_epoch: int, steps_per_epoch: int,
                        matching: str = "rank") -> nn.Module | None:
    if preset == "none":
        return None
    loss = fastloss.preset(preset, MATCHINGS[matching]())  # the default loss: PH on every core
    schedule = fastloss.schedules.delayed(start_epoch, value=weight, steps_per_epoch=steps_per_epoch)
    return fastloss.ScheduledWeight(loss, schedule)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="balanced",
                        help="a registered topology preset (" + ", ".join(fastloss.list_presets("topology", include_measured=False)) + ") or none")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--train", type=int, default=32, help="training images")
    parser.add_argument("--val", type=int, default=48, help="validation images")
    parser.add_argument("--matching", choices=list(MATCHINGS), default="rank",
                        help="rank: TopologicalLoss (Betti-number matching); betti: BettiMatchingLoss")
    parser.add_argument("--topo-weight", type=float, default=0.05)
    parser.add_argument("--topo-start-epoch", type=int, default=3, help="ScheduledWeight delayed start")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the final metrics here")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = leave torch's default)")
    args = parser.parse_args(argv)
    if args.preset not in (*fastloss.list_presets("topology", include_measured=False), "none"):
        parser.error(f"--preset must be one of {[*fastloss.list_presets('topology', include_measured=False), 'none']}, got {args.preset!r}")
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)  # leave the caller's setting as it was (benchmarks.e2e runs several examples)


def run(args: argparse.Namespace) -> dict:
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    torch.manual_seed(args.seed)
    images, masks = make_dataset(args.train + args.val, args.size, seed=1000 + args.seed)
    train_x, train_y, val_x, val_y = images[: args.train], masks[: args.train], images[args.train :], masks[args.train :]
    steps_per_epoch = -(-args.train // args.batch)
    model = UNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    topo = build_topology_loss(args.preset, args.topo_weight, args.topo_start_epoch, steps_per_epoch, args.matching)
    timer, g = StageTimer(torch.device("cpu")), torch.Generator().manual_seed(args.seed)
    say(f"preset={args.preset} epochs={args.epochs} size={args.size} batch={args.batch} steps/epoch={steps_per_epoch}")
    say("epoch | forward ms | base loss ms | topology ms | backward ms | step ms | train loss")
    started, topo_total = time.perf_counter(), 0.0
    for epoch in range(args.epochs):
        timer.reset()
        order, running = torch.randperm(args.train, generator=g), 0.0
        for start in range(0, args.train, args.batch):
            idx = order[start : start + args.batch]
            x, y = train_x[idx], train_y[idx]
            with timer("forward"):
                logits = model(x)
            with timer("base loss"):
                prob = torch.sigmoid(logits)
                loss = F.binary_cross_entropy_with_logits(logits, y) + dice_loss(prob, y)
            if topo is not None:
                with timer("topology"):
                    loss = loss + topo(prob, y)
            with timer("backward"):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            timer.steps += 1
            running += loss.item()
        ms = timer.ms_per_step()
        topo_total += ms.get("topology", 0.0) * timer.steps / 1e3
        say(f"{epoch:5d} | {ms['forward']:10.1f} | {ms['base loss']:12.1f} | {ms.get('topology', 0.0):11.1f} | "
            f"{ms['backward']:11.1f} | {sum(ms.values()):7.1f} | {running / timer.steps:.4f}")
    total = time.perf_counter() - started
    result = {"preset": args.preset, "seed": args.seed, "matching": args.matching, **evaluate(model, val_x, val_y),
              "total_s": total, "loss_s": topo_total, "loss_share": topo_total / total}
    say(f"validation: Dice {result['dice']:.4f}, Betti error {result['betti_error']:.3f}, "
        f"skeleton recall {result['skeleton_recall']:.4f}; total {total:.1f} s "
        f"(topology loss {topo_total:.1f} s, {100 * result['loss_share']:.0f}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
