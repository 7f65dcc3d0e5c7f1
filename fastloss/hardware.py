"""What a device computes natively: low-precision dtypes, TF32, and the names that identify it.

``capabilities(device)`` answers, for a :class:`torch.device`, whether float16 and bfloat16 compute is
*native* there or emulated, and whether TF32 is enabled for convolutions and matmuls. fastloss uses it
so a wrapper never silently runs tens of times slower: bfloat16 autocast is about 2x faster than
float32 on a CPU with AVX512-BF16 or AMX, and about 80x *slower* on an AVX2-only CPU, where it is
emulated.

- CPU: bfloat16 is native with AVX512-BF16 or AMX tiles (x86) or the ``bf16`` feature (Arm); float16
  with AMX-FP16 / AVX512-FP16 (x86) or ``asimdhp`` (Arm). torch's detection helpers are private, so each
  is guarded: a helper that is missing counts as "not native". A dtype the flags list is then *measured*
  (one small convolution in that dtype and in float32, best of 5, about 10 ms): where it is not faster
  than float32 it counts as emulated, whatever the flags say. That happens when oneDNN's instruction set
  is capped (``ONEDNN_MAX_CPU_ISA=AVX2``: bfloat16 convolutions ~35x float32's time; ``AVX512_CORE``: ~2x)
  or oneDNN is off (``torch.backends.mkldnn.enabled = False``: ~30x), measured on a Zen 4 with AVX512-BF16.
  ``Capabilities.measured`` keeps each probed dtype's time ratio; the detection is cached per device and
  per ``torch.backends.mkldnn.enabled``, which is read live.
- CUDA: float16 tensor cores from compute capability 7.0, bfloat16 from 8.0; TF32 from 8.0 when torch
  allows it (``torch.backends.cudnn.allow_tf32`` for convolutions, the float32 matmul precision).

Results are cached per device (CPU: and per oneDNN on/off). Tests simulate other machines by patching :func:`_detect` and calling
``capabilities.cache_clear()``.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from dataclasses import dataclass, replace

import torch

__all__ = ["Capabilities", "capabilities", "cpu_model", "dtype_name", "machine_info", "normalise"]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (records and messages)."""
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Capabilities:
    """What one device computes natively."""

    device: str
    name: str
    native_dtypes: tuple[torch.dtype, ...] = ()
    tf32_conv: bool = False
    tf32_matmul: bool = False
    cpu_capability: str | None = None
    compute_capability: tuple[int, int] | None = None
    # CPU: (dtype name, its convolution time / float32's) for each low-precision dtype the flags listed
    measured: tuple[tuple[str, float], ...] = ()

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    def is_native(self, dtype: torch.dtype) -> bool:
        """Whether ``dtype`` compute is native here (float32/float64 always are)."""
        return dtype in (torch.float32, torch.float64) or dtype in self.native_dtypes

    @property
    def low_precision(self) -> torch.dtype | None:
        """The preferred native low-precision dtype: bfloat16 (no loss scaling needed), else float16, else None."""
        for dtype in (torch.bfloat16, torch.float16):
            if dtype in self.native_dtypes:
                return dtype
        return None

    @property
    def device_class(self) -> str:
        """A short class for tables: ``cpu``, ``cpu-bf16`` (native bfloat16) or ``cuda``, ``mps``..."""
        if self.device_type == "cpu":
            return "cpu-bf16" if torch.bfloat16 in self.native_dtypes else "cpu"
        return self.device_type

    def describe(self) -> str:
        low = ", ".join(dtype_name(d) for d in self.native_dtypes) or "none"
        parts = [f"{self.device} ({self.name})", f"native low precision: {low}"]
        if self.cpu_capability:
            parts.append(f"torch CPU capability {self.cpu_capability}")
        slow = [f"{name} ({ratio:.1f}x float32's convolution time)" for name, ratio in self.measured
                if getattr(torch, name) not in self.native_dtypes]
        if slow:
            parts.append(f"listed by the CPU but measured emulated: {', '.join(slow)}")
        if self.compute_capability:
            parts.append(f"compute capability {self.compute_capability[0]}.{self.compute_capability[1]}")
        if self.device_type == "cuda":
            parts.append(f"TF32 conv {'on' if self.tf32_conv else 'off'}, matmul {'on' if self.tf32_matmul else 'off'}")
        return "; ".join(parts)

    @classmethod
    def from_dict(cls, data: dict) -> Capabilities:
        """The inverse of :meth:`as_dict` (a record saved in a checkpoint)."""
        return cls(
            device=data["device"], name=data["name"],
            native_dtypes=tuple(getattr(torch, d) for d in data.get("native_dtypes", ())),
            tf32_conv=bool(data.get("tf32_conv", False)), tf32_matmul=bool(data.get("tf32_matmul", False)),
            cpu_capability=data.get("cpu_capability"),
            compute_capability=tuple(data["compute_capability"]) if data.get("compute_capability") else None,
            measured=tuple((str(name), float(ratio)) for name, ratio in data.get("measured", ())),
        )

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "name": self.name,
            "device_class": self.device_class,
            "native_dtypes": [dtype_name(d) for d in self.native_dtypes],
            "tf32_conv": self.tf32_conv,
            "tf32_matmul": self.tf32_matmul,
            "cpu_capability": self.cpu_capability,
            "compute_capability": list(self.compute_capability) if self.compute_capability else None,
            "measured": [[name, ratio] for name, ratio in self.measured],
        }


def _probe(name: str) -> bool:
    """A private ``torch.cpu._is_*_supported`` helper, guarded (missing or failing: False)."""
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if callable(fn) else False
    except Exception:  # pragma: no cover - depends on the torch build
        return False


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_capability() -> str | None:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover
        return None


# a low-precision dtype counts as native on a CPU only where its convolution takes less than this share of
# float32's (measured on a Zen 4 with AVX512-BF16: 0.67-0.88 native; 2.1 with oneDNN capped at AVX512_CORE,
# 15-35 capped at AVX2 or with oneDNN off)
NATIVE_RATIO = 1.0


def conv_time_ratio(dtype: torch.dtype, rounds: int = 5) -> float:
    """One 3x3 convolution (32 channels, 32x32) in ``dtype`` over the same in float32 on this CPU, best of
    ``rounds`` each, interleaved (about 10 ms where ``dtype`` is native, 0.15 s where it is emulated)."""
    with torch.no_grad():
        x, w = torch.rand(1, 32, 32, 32), torch.rand(32, 32, 3, 3)
        pairs = ((x, w), (x.to(dtype), w.to(dtype)))
        best = [float("inf"), float("inf")]
        for a, b in pairs:  # warm-up: oneDNN builds its kernels on the first call
            torch.conv2d(a, b, padding=1)
        for _ in range(rounds):
            for i, (a, b) in enumerate(pairs):
                start = time.perf_counter()
                torch.conv2d(a, b, padding=1)
                best[i] = min(best[i], time.perf_counter() - start)
    return best[1] / max(best[0], 1e-9)


def _detect(device: torch.device) -> Capabilities:
    if device.type == "cpu":
        listed = []
        arm = platform.machine().lower() in ("aarch64", "arm64")
        flags = _cpuinfo_flags() if arm else set()
        if _probe("_is_avx512_bf16_supported") or _probe("_is_amx_tile_supported") or "bf16" in flags:
            listed.append(torch.bfloat16)
        if _probe("_is_amx_fp16_supported") or "asimdhp" in flags:
            listed.append(torch.float16)
        measured = tuple((dtype_name(d), round(conv_time_ratio(d), 3)) for d in listed)
        native = tuple(d for d, (_, ratio) in zip(listed, measured, strict=True) if ratio < NATIVE_RATIO)
        return Capabilities("cpu", f"{cpu_model()}, {os.cpu_count()} cores", native,
                            cpu_capability=_cpu_capability(), measured=measured)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        native = []
        if major >= 8:
            native.append(torch.bfloat16)
        if major >= 7:
            native.append(torch.float16)
        tf32_conv = major >= 8 and bool(getattr(torch.backends.cudnn, "allow_tf32", False))
        tf32_matmul = major >= 8 and torch.get_float32_matmul_precision() != "highest"
        return Capabilities(f"cuda:{index}", torch.cuda.get_device_name(index), tuple(native), tf32_conv, tf32_matmul,
                            compute_capability=(major, minor))
    if device.type == "mps":
        return Capabilities("mps", "Apple GPU", (torch.float16,))
    return Capabilities(str(device), str(device), ())  # an unknown device type: no low precision assumed native


@functools.cache
def _cached(device_type: str, index: int | None, onednn: bool = True) -> Capabilities:
    return _detect(torch.device(device_type, index) if index is not None else torch.device(device_type))


def _tf32_now(caps: Capabilities) -> Capabilities:
    """TF32 flags are torch settings a user may change at any time: read them now, not from the cache."""
    if caps.compute_capability is None or caps.compute_capability[0] < 8:
        return caps
    conv = bool(getattr(torch.backends.cudnn, "allow_tf32", False))
    matmul = torch.get_float32_matmul_precision() != "highest"
    return caps if (conv, matmul) == (caps.tf32_conv, caps.tf32_matmul) else replace(caps, tf32_conv=conv, tf32_matmul=matmul)


def normalise(device: torch.device | str) -> torch.device:
    """``device`` with an explicit index on CUDA (``cuda`` -> ``cuda:<current>``): the one way fastloss
    decides whether two devices are the same."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def capabilities(device: torch.device | str = "cpu") -> Capabilities:
    """What ``device`` computes natively (cached per device; TF32 flags read live)."""
    device = normalise(device)
    onednn = device.type != "cpu" or bool(torch.backends.mkldnn.enabled)  # a user may switch oneDNN off at any time
    return _tf32_now(_cached(device.type, device.index, onednn))


capabilities.cache_clear = _cached.cache_clear  # type: ignore[attr-defined]


def machine_info(device: str = "cpu", threads: int = 1) -> dict:
    """Where a figure was measured: the CPU model, torch's CPU capability, the native low-precision
    dtypes, and on CUDA the GPU's name and compute capability."""
    cpu = capabilities("cpu")
    info = {
        "node": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "system": platform.system(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "cpu_model": cpu_model(),
        "cpu_capability": cpu.cpu_capability,
        "cpu_native_low_precision": [dtype_name(d) for d in cpu.native_dtypes],
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": device,
        "cuda": None,
    }
    if torch.device(device).type == "cuda":
        caps = capabilities(device)
        info["cuda"] = caps.name
        info["cuda_compute_capability"] = list(caps.compute_capability) if caps.compute_capability else None
        info["cuda_native_low_precision"] = [dtype_name(d) for d in caps.native_dtypes]
        info["tf32"] = {"conv": caps.tf32_conv, "matmul": caps.tf32_matmul}
    return info
