"""Train a small denoiser whose main loss is a perceptual loss (the perceptual term drives the result).

    python examples/train_perceptual_restoration.py --preset balanced --steps 150

A small convolutional denoiser (DnCNN-style: five 3x3 convs, residual) restores images corrupted by
Gaussian noise. The only pixel loss is a weak low-resolution consistency term: L1 between the output and
the noisy input, both area-downsampled x``--pool``; it keeps the mean colours in place and says nothing
about the noise, which averages out at low resolution. What the network learns about removing the noise
comes from the perceptual loss against the clean image. ``--preset`` picks how that loss (VGG19 on
relu1_2 + relu2_2 by default, ResNet18 or LPIPS) is computed: any registered perceptual preset, or
``none``, which trains without it and so leaves the network nothing to learn from (it starts as the
identity, which already satisfies the consistency term, and stays the identity).

The data are seeded synthetic natural-looking images (``fastloss.bench.workloads.natural_images``) with
a train/validation split; validation images are never trained on (their noise is drawn once, seeded). It
prints the time per step split into forward, base loss, perceptual loss and backward, and at the end, on
the validation images, PSNR, SSIM and the *exact* (unwrapped) perceptual loss of the result, with the
noisy input's PSNR for reference, plus the total time and the perceptual loss's share of it.

Offline note: backbones use ``weights=None`` (random init) unless ``--weights`` names a local .pth
or ``DEFAULT`` (torchvision download). Random-init VGG19 features at shallow taps keep most of the image
content, which is why they can teach denoising; the default VGG19 taps (weight mostly on relu5_1) do not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fastloss
from fastloss.bench.measure import StageTimer
from fastloss.bench.workloads import natural_images


def preset_names() -> tuple[str, ...]:
    """Every registered perceptual preset (exact, balanced, fastest, ...) plus ``none``."""
    names = fastloss.list_presets("perceptual", include_measured=False)
    head = [n for n in ("exact", "balanced", "fastest") if n in names]
    return (*head, *sorted(set(names) - set(head)), "none")


PRESETS = preset_names()


class Denoiser(nn.Module):
    """A small DnCNN-style residual net: ``depth`` 3x3 convs at full resolution, output = input + residual.

    The last conv starts at zero, so an untrained net returns its input unchanged.
    """

    def __init__(self, width: int = 32, depth: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        tail = nn.Conv2d(width, 3, 3, padding=1)
        nn.init.zeros_(tail.weight)
        nn.init.zeros_(tail.bias)
        self.body = nn.Sequential(*layers, tail)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def ssim(x: Tensor, y: Tensor, window: int = 7) -> Tensor:
    """Mean SSIM with a uniform window (images in [0, 1])."""
    c1, c2 = 0.01**2, 0.03**2

    def pool(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, window, 1, window // 2, count_include_pad=False)

    mx, my = pool(x), pool(y)
    vx, vy, cov = pool(x * x) - mx**2, pool(y * y) - my**2, pool(x * y) - mx * my
    return (((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()


def psnr(x: Tensor, y: Tensor) -> float:
    """Mean over images of the per-image PSNR (images in [0, 1])."""
    mse = ((x - y) ** 2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse)).mean())


DEFAULT_LAYERS = {"vgg19": ("relu1_2", "relu2_2"), "resnet18": ("layer1",)}


def make_perceptual(kind: str, weights: str | None, layers: tuple[str, ...] | None = None,
                    layer_weights: tuple[float, ...] | None = None) -> nn.Module:
    if kind == "lpips":
        return fastloss.LPIPSLoss(weights=weights)
    return fastloss.PerceptualLoss(kind, layers=layers or DEFAULT_LAYERS[kind], layer_weights=layer_weights,
                                   weights=weights)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="balanced")
    parser.add_argument("--loss", choices=("vgg19", "lpips", "resnet18"), default="vgg19")
    parser.add_argument("--layers", help="comma-separated taps (default relu1_2,relu2_2 for vgg19, layer1 for resnet18)")
    parser.add_argument("--layer-weights", help="comma-separated weights, one per tap (default: the backbone's for its "
                        "default taps, else equal)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--size", type=int, default=48, help="image side (a multiple of 2 and of --pool)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train", type=int, default=64, help="training images")
    parser.add_argument("--val", type=int, default=16, help="validation images")
    parser.add_argument("--noise", type=float, default=0.2, help="std of the Gaussian noise (images in [0, 1])")
    parser.add_argument("--perceptual-weight", type=float, default=1.0)
    parser.add_argument("--pixel-weight", type=float, default=0.1, help="weight of the low-resolution L1 term")
    parser.add_argument("--pool", type=int, default=4, help="downsampling factor of the low-resolution L1 term")
    parser.add_argument("--weights", default=None, help="backbone weights: a local .pth, DEFAULT, or omit (random)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = leave torch's default)")
    parser.add_argument("--json", help="write the final metrics here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    if args.size % 2 or args.size % args.pool:
        parser.error(f"--size {args.size} must be a multiple of 2 and of --pool {args.pool}")
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return train(args, say)
    finally:
        torch.set_num_threads(threads)  # leave the caller's setting as it was (benchmarks.e2e runs several examples)


def train(args: argparse.Namespace, say: Callable[..., None]) -> dict:
    layers = tuple(args.layers.split(",")) if args.layers else None
    layer_weights = tuple(float(w) for w in args.layer_weights.split(",")) if args.layer_weights else None

    torch.manual_seed(0)  # one random-init backbone for every seed and preset: the same exact loss everywhere
    reference = make_perceptual(args.loss, args.weights, layers, layer_weights)  # the exact loss, for the final report
    torch.manual_seed(args.seed)
    clean = natural_images(args.train + args.val, args.size, seed=2000 + args.seed)
    train_y, val_y = clean[: args.train], clean[args.train :]
    g = torch.Generator().manual_seed(args.seed)
    val_x = val_y + args.noise * torch.randn(val_y.shape, generator=torch.Generator().manual_seed(3000 + args.seed))
    model = Denoiser()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    perceptual = None if args.preset == "none" else fastloss.preset(args.preset, reference)
    timer = StageTimer(torch.device("cpu"))
    say(f"preset={args.preset} loss={args.loss} layers={getattr(reference, 'layers', '-')} steps={args.steps} "
        f"size={args.size} batch={args.batch} noise={args.noise} weights={args.weights or 'None (random init)'}")
    started, order, pos = time.perf_counter(), torch.randperm(args.train, generator=g), 0
    for step in range(args.steps):
        if pos + args.batch > args.train:
            order, pos = torch.randperm(args.train, generator=g), 0
        y = train_y[order[pos : pos + args.batch]]
        pos += args.batch
        x = y + args.noise * torch.randn(y.shape, generator=g)  # fresh noise every step
        with timer("forward"):
            out = model(x)
        with timer("base loss"):  # low-resolution consistency with the noisy input: no information on the noise
            loss = args.pixel_weight * F.l1_loss(F.avg_pool2d(out, args.pool), F.avg_pool2d(x, args.pool))
        if perceptual is not None:
            with timer("perceptual"):
                loss = loss + args.perceptual_weight * perceptual(out, y)
        with timer("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        timer.steps += 1
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            ms = timer.ms_per_step()
            say(f"step {step:5d} | forward {ms['forward']:.1f} ms | base {ms['base loss']:.1f} ms | "
                f"perceptual {ms.get('perceptual', 0.0):.1f} ms | backward {ms['backward']:.1f} ms | "
                f"loss {loss.item():.4f}")
    total = time.perf_counter() - started
    loss_s = timer.totals.get("perceptual", 0.0)
    model.eval()
    reference.eval()
    with torch.no_grad():
        out = model(val_x).clamp(0, 1)
        noisy = val_x.clamp(0, 1)
        result = {"preset": args.preset, "loss": args.loss, "seed": args.seed, "psnr": psnr(out, val_y),
                  "ssim": float(ssim(out, val_y)), "exact_perceptual": float(reference(out, val_y)),
                  "input_psnr": psnr(noisy, val_y), "input_exact_perceptual": float(reference(noisy, val_y)),
                  "total_s": total, "loss_s": loss_s, "loss_share": loss_s / total}
    say(f"validation: PSNR {result['psnr']:.2f} dB (noisy input {result['input_psnr']:.2f}), SSIM {result['ssim']:.4f}, "
        f"exact {args.loss} loss {result['exact_perceptual']:.4f} (noisy input {result['input_exact_perceptual']:.4f}); "
        f"total {total:.1f} s (perceptual loss {loss_s:.1f} s, {100 * result['loss_share']:.0f}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
