"""Test fixtures; the shared shapes live in shapes.py (importable from spawned processes too)."""

import pytest
import torch
from shapes import ring

torch.set_num_threads(1)


@pytest.fixture
def ring_mask() -> torch.Tensor:
    return ring()


# Classes of machine the device-aware code must handle, simulated by patching capability detection.
MACHINES = {
    "avx2-cpu": dict(name="AMD EPYC (Zen 3, simulated)", native_dtypes=(), cpu_capability="AVX2"),
    "bf16-cpu": dict(name="AMD EPYC (Zen 5, simulated)", native_dtypes=(torch.bfloat16,), cpu_capability="AVX512"),
    "amx-cpu": dict(name="Intel Xeon (Sapphire Rapids, simulated)", native_dtypes=(torch.bfloat16, torch.float16),
                    cpu_capability="AVX512"),
}


@pytest.fixture
def simulate(monkeypatch):
    """``simulate("avx2-cpu")``: make fastloss.hardware report that class of CPU for the rest of the test."""
    from fastloss import hardware

    def apply(machine: str) -> hardware.Capabilities:
        caps = hardware.Capabilities("cpu", **MACHINES[machine])
        real = hardware._detect
        monkeypatch.setattr(hardware, "_detect", lambda device: caps if device.type == "cpu" else real(device))
        hardware.capabilities.cache_clear()
        return caps

    yield apply
    hardware.capabilities.cache_clear()


@pytest.fixture
def registry():
    """Snapshot the preset registry and restore it: a test that registers presets can run any number of times."""
    from fastloss import presets

    saved = dict(presets._REGISTRY)
    yield presets._REGISTRY
    presets._REGISTRY.clear()
    presets._REGISTRY.update(saved)


def pytest_generate_tests(metafunc):
    """The shared loss tester (tester.py) parametrises its checks over the test class's cases."""
    generate = getattr(metafunc.cls, "generate", None)
    if generate is not None:
        generate(metafunc)
