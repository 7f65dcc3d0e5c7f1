"""Fit a coordinate MLP to target images with L1 + SSIM + a perceptual loss (neural-rendering style).

    python examples/fit_image_perceptual.py --preset balanced --steps 200

A Fourier-feature MLP "renders" each target image from pixel coordinates (as in neural fields /
splatting pipelines, where the renderer is the model). ``--preset`` picks how the perceptual loss
(VGG19 or LPIPS) is computed; ``none`` trains without it. It prints the time per step split into
render, base losses, perceptual loss and backward, and at the end PSNR, SSIM and the *exact*
(unwrapped) perceptual loss of the result, plus the total time.

Offline note: backbones use ``weights=None`` (random init) unless ``--weights`` names a local .pth
or ``DEFAULT`` (torchvision download).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastloss
from fastloss.bench.measure import StageTimer
from fastloss.bench.workloads import natural_images

PRESETS = ("exact", "balanced", "fastest", "none")


class FourierMLP(nn.Module):
    """pixel coordinates -> RGB, through random Fourier features and a small MLP."""

    def __init__(self, features: int = 64, hidden: int = 128, scale: float = 10.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("B", torch.randn(2, features, generator=g) * scale)
        self.net = nn.Sequential(nn.Linear(2 * features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 3))

    def forward(self, size: int, batch: int) -> Tensor:
        ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
        proj = 2 * math.pi * torch.stack([ys, xs], -1).to(self.B.device) @ self.B
        rgb = torch.sigmoid(self.net(torch.cat([proj.sin(), proj.cos()], -1)))
        return rgb.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1)


def ssim(x: Tensor, y: Tensor, window: int = 7) -> Tensor:
    """Mean SSIM with a uniform window (images in [0, 1])."""
    c1, c2 = 0.01**2, 0.03**2

    def pool(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, window, 1, window // 2, count_include_pad=False)

    mx, my = pool(x), pool(y)
    vx, vy, cov = pool(x * x) - mx**2, pool(y * y) - my**2, pool(x * y) - mx * my
    return (((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()


def psnr(x: Tensor, y: Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(x, y)))


def make_perceptual(kind: str, weights: str | None) -> nn.Module:
    if kind == "lpips":
        return fastloss.LPIPSLoss(weights=weights)
    return fastloss.PerceptualLoss("vgg19", weights=weights)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="balanced",
                        help="a registered perceptual preset (" + ", ".join(fastloss.list_presets("perceptual", include_measured=False)) + ") or none")
    parser.add_argument("--loss", choices=("vgg19", "lpips"), default="vgg19")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--perceptual-weight", type=float, default=0.1)
    parser.add_argument("--weights", default=None, help="backbone weights: a local .pth, DEFAULT, or omit (random)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the final metrics here")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = leave torch's default)")
    args = parser.parse_args(argv)
    if args.preset not in (*fastloss.list_presets("perceptual", include_measured=False), "none"):
        parser.error(f"--preset must be one of {[*fastloss.list_presets('perceptual', include_measured=False), 'none']}, got {args.preset!r}")
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
    target = natural_images(1, args.size, seed=100 + args.seed)
    model = FourierMLP(seed=args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    reference = make_perceptual(args.loss, args.weights)  # the exact loss, for the final report
    perceptual = None if args.preset == "none" else fastloss.preset(args.preset, reference)
    timer = StageTimer(torch.device("cpu"))
    say(f"preset={args.preset} loss={args.loss} steps={args.steps} size={args.size} "
        f"weights={args.weights or 'None (random init)'}")
    started = time.perf_counter()
    for step in range(args.steps):
        with timer("render"):
            image = model(args.size, 1)
        with timer("base losses"):
            loss = F.l1_loss(image, target) + 0.2 * (1 - ssim(image, target))
        if perceptual is not None:
            with timer("perceptual"):
                loss = loss + args.perceptual_weight * perceptual(image, target)
        with timer("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        timer.steps += 1
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            ms = timer.ms_per_step()
            say(f"step {step:5d} | render {ms['render']:.1f} ms | base {ms['base losses']:.1f} ms | "
                f"perceptual {ms.get('perceptual', 0.0):.1f} ms | backward {ms['backward']:.1f} ms | loss {loss.item():.4f}")
    total = time.perf_counter() - started
    loss_s = timer.totals.get("perceptual", 0.0)
    with torch.no_grad():
        image = model(args.size, 1)
        result = {"preset": args.preset, "loss": args.loss, "seed": args.seed, "psnr": psnr(image, target),
                  "ssim": float(ssim(image, target)), "exact_perceptual": float(reference.eval()(image, target)),
                  "total_s": total, "loss_s": loss_s, "loss_share": loss_s / total}
    say(f"result: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}, exact {args.loss} loss "
        f"{result['exact_perceptual']:.4f}; total {total:.1f} s (perceptual loss {loss_s:.1f} s, "
        f"{100 * result['loss_share']:.0f}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
