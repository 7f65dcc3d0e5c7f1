"""One tester that every loss and every wrapper runs through, as torchmetrics' ``MetricTester`` does.

A :class:`Case` says how to build a module (under a fixed seed, so random-init backbones are the same in
every copy), how to make its inputs for a training step, and what it supports. :class:`LossTester` holds
the checks; a test class lists its cases and inherits every check, parametrised over them by
:meth:`LossTester.generate` (called from conftest's ``pytest_generate_tests``):

- ``test_functional_equals_module`` (losses with a functional form): values and gradients bitwise equal;
- ``test_output_shape``: ``loss_output_shape(module, input, target)`` (what skipped steps rely on) equals
  the real output's shape, every reduction, every step (computed or skipped), two batch sizes;
- ``test_state_dict_round_trip``: save after some steps (``torch.save``/``torch.load(weights_only=True)``),
  load into a fresh module, and the following steps' values and gradients are bitwise equal to the
  uninterrupted module's;
- ``test_dtypes``: float64 input (float64 output where the loss computes in it, else float32) and
  low-precision input where supported (float32 output), close to the float32 run (tolerances below);
- ``test_devices``: the output and gradients live on the input's device; on CUDA (when available) the
  values are close to the CPU's;
- ``test_compile`` (marked slow; one case per class): ``torch.compile`` (``aot_eager``) gives the eager values
  and gradients step by step, and really compiled a graph.

Inputs are small (16x16 masks, 32x32 images, batch 2) and every step revisits one of two targets, so the
caches hit and miss within a few steps.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from shapes import ring, soft_prediction
from torch import Tensor, nn

from fastloss.wrappers.base import loss_output_shape

# Tolerances, relative to the float32 run of the same module on the same inputs.
FLOAT64_RTOL = 1e-4  # float64 vs float32 arithmetic (observed <= 1e-6 on these inputs)
LOW_PRECISION_RTOL = 2e-2  # a bfloat16 input keeps 8 bits of mantissa (values: observed <= 0.3%)
LOW_PRECISION_GRAD_COSINE = 0.98  # gradient of a bfloat16 input vs float32 (observed >= 0.995)
LOW_PRECISION_GRAD_SUMS_RTOL = 0.1  # PH losses: rounding ties pixels and may re-pair bars (observed <= 6%, 3D)
COMPILE_RTOL, COMPILE_ATOL = 1e-5, 1e-6  # aot_eager runs the same kernels; only the op order may differ
CUDA_RTOL, CUDA_ATOL = 1e-3, 1e-5  # other kernels (cuDNN), TF32 off
STEPS = 4  # training steps per check
COMPILE_STEPS = 3  # enough for a skipped step and a cache hit; each step may recompile


def topology_inputs(dtype: torch.dtype, seed: int, batch: int = 2, ndim: int = 2) -> tuple[Tensor, Tensor]:
    """A soft prediction of one of two mask batches (rings of two sizes): targets repeat every other step."""
    if ndim == 2:
        masks = [ring(16, outer=3 + (seed % 2), width=2) for _ in range(batch)]
    else:
        m = torch.zeros(1, 1, 8, 8, 8)
        m[..., 2:6, 2:6, 2:6] = 1
        m[..., 3:5, 3:5, 3:5] = 0 if seed % 2 else 1
        masks = [m] * batch
    target = torch.cat(masks)
    return soft_prediction(target, seed=seed).to(dtype), target


def image_inputs(dtype: torch.dtype, seed: int, batch: int = 2, size: int = 32) -> tuple[Tensor, Tensor]:
    """A noisy render of one of two image batches: targets repeat every other step."""
    g = torch.Generator().manual_seed(seed % 2)
    target = torch.rand(batch, 3, size, size, generator=g)
    noise = torch.rand(target.shape, generator=torch.Generator().manual_seed(100 + seed))
    return (0.7 * target + 0.3 * noise).to(dtype), target.to(dtype)


@dataclass
class Case:
    """How to build and feed one loss or wrapper stack.

    ``make(reduction)`` builds a fresh module; ``inputs(dtype, seed)`` gives one step's (input, target);
    ``functional(input, target, reduction)`` is the functional form, where one exists.
    """

    make: Callable[[str], nn.Module]
    inputs: Callable[[torch.dtype, int], tuple[Tensor, Tensor]]
    functional: Callable[[Tensor, Tensor, str], Tensor] | None = None
    reductions: tuple[str, ...] = ("mean", "sum", "none")
    computes_float64: bool = True  # float64 input -> float64 output (feature losses compute in float32)
    low_precision: tuple[torch.dtype, ...] = (torch.bfloat16,)
    target_follows_dtype: bool = False  # the target must have the input's dtype (image losses)
    ties_move_gradient: bool = False  # PH losses: a rounded input ties pixels, the gradient may move to a twin
    compile: bool = True  # False for variants of a class another case already compiles (CI time)
    marks: list = field(default_factory=list)

    def build(self, reduction: str = "mean") -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return self.make(reduction)

    def batch(self, dtype: torch.dtype, seed: int) -> tuple[Tensor, Tensor]:
        x, y = self.inputs(dtype, seed)
        return x, (y.to(dtype) if self.target_follows_dtype else y)


def train(module: nn.Module, batches, device: str = "cpu") -> list[tuple[Tensor, Tensor]]:
    """One training step per (input, target): forward, backward of the sum; the values and input gradients."""
    out = []
    for x, y in batches:
        leaf = x.to(device).detach().clone().requires_grad_()
        value = module(leaf, y.to(device))
        value.sum().backward()
        out.append((value.detach(), leaf.grad))
    return out


def trajectory(case: Case, dtype: torch.dtype = torch.float32, start: int = 0, steps: int = STEPS):
    return [case.batch(dtype, seed) for seed in range(start, start + steps)]


def assert_bitwise(a: list[tuple[Tensor, Tensor]], b: list[tuple[Tensor, Tensor]]) -> None:
    assert len(a) == len(b)
    for i, ((va, ga), (vb, gb)) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(va, vb), f"step {i}: value {va} != {vb}"
        assert torch.equal(ga, gb), f"step {i}: gradients differ (max |diff| {(ga - gb).abs().max():.3g})"


def assert_close(a, b, rtol: float, atol: float = 0.0, what: str = "", grad: str = "pixels") -> None:
    """Values within ``rtol``/``atol``; gradients compared by ``grad``:

    - ``"pixels"``: every entry within ``rtol`` of the largest one (most of a topology gradient is exactly 0);
    - ``"cosine"``: cosine similarity >= ``LOW_PRECISION_GRAD_COSINE`` (a rounded input perturbs every pixel);
    - ``"sums"``: sum and L1 norm within ``LOW_PRECISION_GRAD_SUMS_RTOL`` (a rounded input ties pixels: a
      bar's gradient may move to a twin pixel of the same value, or a bar pair with another).
    """
    for i, ((va, ga), (vb, gb)) in enumerate(zip(a, b, strict=True)):
        va, vb, ga, gb = (t.double().cpu() for t in (va, vb, ga, gb))
        assert torch.allclose(va, vb, rtol=rtol, atol=atol), f"{what} step {i}: value {va} vs {vb}"
        scale = max(float(gb.abs().max()), 1e-12)
        if grad == "pixels":
            assert float((ga - gb).abs().max()) <= rtol * scale + atol, f"{what} step {i}: gradients differ"
        elif grad == "cosine":
            if scale > 1e-12:
                cosine = float(torch.nn.functional.cosine_similarity(ga.flatten(), gb.flatten(), dim=0))
                assert cosine >= LOW_PRECISION_GRAD_COSINE, f"{what} step {i}: gradient cosine {cosine:.4f}"
        else:
            for stat in (torch.sum, lambda g: g.abs().sum()):
                sa, sb = float(stat(ga)), float(stat(gb))
                bound = LOW_PRECISION_GRAD_SUMS_RTOL * max(abs(sb), scale) + atol
                assert abs(sa - sb) <= bound, f"{what} step {i}: gradient {sa} vs {sb}"


class LossTester:
    """The checks every loss and wrapper case goes through; subclasses set ``cases = {id: Case}``."""

    cases: dict[str, Case] = {}

    @classmethod
    def generate(cls, metafunc) -> None:
        """Parametrise each check over the class's cases (and reductions / dtypes where it takes them)."""
        if "case" not in metafunc.fixturenames:
            return
        name, params = metafunc.function.__name__, []
        for cid, case in cls.cases.items():
            if name == "test_functional_equals_module" and case.functional is None:
                continue
            if name == "test_compile" and not case.compile:
                continue
            marks = list(case.marks)
            if name == "test_compile":
                marks.append(pytest.mark.slow)  # 4-40 s each: Dynamo traces around the PH and backbone code
            if "reduction" in metafunc.fixturenames:
                params += [pytest.param(case, r, id=f"{cid}-{r}", marks=marks) for r in case.reductions]
            elif "dtype" in metafunc.fixturenames:
                dtypes = (torch.float64, *case.low_precision)
                params += [pytest.param(case, d, id=f"{cid}-{str(d)[6:]}", marks=marks) for d in dtypes]
            else:
                params.append(pytest.param(case, id=cid, marks=marks))
        argnames = ["case"] + [a for a in ("reduction", "dtype") if a in metafunc.fixturenames]
        metafunc.parametrize(argnames, params)

    def test_functional_equals_module(self, case: Case, reduction: str):
        batches = trajectory(case, steps=2)
        module = train(case.build(reduction), batches)
        functional = []
        for x, y in batches:
            leaf = x.detach().clone().requires_grad_()
            value = case.functional(leaf, y, reduction)
            value.sum().backward()
            functional.append((value.detach(), leaf.grad))
        assert_bitwise(module, functional)

    def test_output_shape(self, case: Case, reduction: str):
        module = case.build(reduction)
        assert callable(getattr(module, "output_shape", None)), "every fastloss loss and wrapper declares it"
        for seed in range(STEPS):
            x, y = case.batch(torch.float32, seed)
            if seed == STEPS - 1:
                x, y = x[:1], y[:1]  # another batch size
            expected = loss_output_shape(module, x, y)
            leaf = x.requires_grad_()
            value = module(leaf, y)
            value.sum().backward()
            assert value.shape == expected, f"step {seed}: output {tuple(value.shape)}, declared {tuple(expected)}"
            if reduction != "none":
                assert value.shape == ()

    def test_state_dict_round_trip(self, case: Case):
        uninterrupted = case.build()
        first, rest = trajectory(case, steps=STEPS // 2), trajectory(case, start=STEPS // 2)
        train(uninterrupted, first)
        buffer = io.BytesIO()
        torch.save(uninterrupted.state_dict(), buffer)
        buffer.seek(0)
        resumed = case.build()
        resumed.load_state_dict(torch.load(buffer, weights_only=True))
        assert set(resumed.state_dict()) == set(uninterrupted.state_dict())
        assert_bitwise(train(resumed, rest), train(uninterrupted, rest))

    def test_dtypes(self, case: Case, dtype: torch.dtype):
        reference = train(case.build(), trajectory(case))
        low = trajectory(case, dtype)
        out = train(case.build(), low)
        expected = torch.float64 if dtype == torch.float64 and case.computes_float64 else torch.float32
        computed = [value for value, grad in out if value.any() or grad.any()]  # skipped steps: exact zeros
        assert computed, "no step was computed"
        for value in computed:
            assert value.dtype == expected, f"{dtype} input: output {value.dtype}, expected {expected}"
        for value, grad in out:
            # a skipped step before any computed one with this signature has only a derived shape: its zero takes the input's dtype
            assert value.dtype in (expected, dtype) and grad.dtype == dtype
            assert torch.isfinite(value).all() and torch.isfinite(grad).all()
        low_precision = dtype != torch.float64
        rtol = LOW_PRECISION_RTOL if low_precision else FLOAT64_RTOL
        grad = "pixels" if not low_precision else "sums" if case.ties_move_gradient else "cosine"
        assert_close(out, reference, rtol=rtol, atol=rtol * 1e-3, what=str(dtype), grad=grad)

    def test_devices(self, case: Case):
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        batches, results = trajectory(case), {}
        for device in devices:
            module = case.build().to(device)
            results[device] = train(module, batches, device)
            for value, grad in results[device]:
                assert value.device.type == device and grad.device.type == device
        if "cuda" in results:
            assert_close(results["cuda"], results["cpu"], rtol=CUDA_RTOL, atol=CUDA_ATOL, what="cuda vs cpu")

    def test_compile(self, case: Case):
        batches = trajectory(case, steps=COMPILE_STEPS)
        eager = train(case.build(), batches)
        torch._dynamo.reset()  # no cache from another case: a recompile limit must not turn this into eager
        torch._dynamo.utils.counters.clear()
        compiled = train(torch.compile(case.build(), backend="aot_eager"), batches)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
        assert_close(compiled, eager, rtol=COMPILE_RTOL, atol=COMPILE_ATOL, what="compiled")


__all__ = ["Case", "LossTester", "image_inputs", "topology_inputs"]
