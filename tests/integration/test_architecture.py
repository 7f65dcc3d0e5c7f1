"""The layout the code promises: imports in one direction, no cycles, the harness loaded only when used."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is a dev dependency: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[2]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages under ``root`` with ``root``'s pyproject contracts, in a fresh process."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout and "5 kept" in run.stdout


@pytest.mark.parametrize("file, line, broken", [
    # an upward import inside a function: a lower layer reaching for a higher one
    ("fastloss/losses/_feature.py", "def _up():\n    from fastloss import presets\n", "fastloss layers, bottom to top"),
    # the harness naming the preset loss again
    ("fastloss/bench/harness.py", "def _up():\n    from fastloss.presets import PresetLoss\n", "the harness never names a preset"),
    # a cycle between two sibling scripts
    ("benchmarks/references.py", "def _up():\n    from benchmarks import suite\n", "no cycles between sibling modules"),
    # fastloss importing the scripts above it
    ("fastloss/autotune.py", "def _up():\n    import benchmarks.suite\n", "benchmarks sit on top of fastloss"),
])
def test_a_reversed_arrow_breaks_a_contract(tmp_path, file, line, broken):
    for part in ("fastloss", "benchmarks"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / file, "a") as f:
        f.write("\n\n" + line)
    run = lint_imports(tmp_path)
    assert run.returncode != 0
    assert f"{broken}" in run.stdout and "BROKEN" in run.stdout


LAZY = """
import sys
import fastloss
assert "fastloss.bench" not in sys.modules, "import fastloss loaded the harness"
assert "auto" in fastloss.list_presets("topology")
fastloss.preset("balanced", fastloss.TopologicalLoss())
assert "fastloss.bench" not in sys.modules, "a preset loaded the harness"
import torch
mask = torch.zeros(1, 1, 12, 12); mask[..., 3:9, 3:9] = 1
fastloss.autotune(fastloss.TopologicalLoss(workers=1), mask * 0.8 + 0.1, mask, time_budget=5, steps=2, rounds=1,
                  candidates={"interval": fastloss.IntervalLoss(fastloss.TopologicalLoss(workers=1), every=2)})
assert "fastloss.bench" in sys.modules, "autotune measured without the harness"
print("ok")
"""


def test_import_fastloss_does_not_load_the_harness():
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", LAZY], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_the_harness_is_an_attribute_on_first_use():
    code = "import sys, fastloss; b = fastloss.bench; print(b.__name__, 'fastloss.bench' in sys.modules)"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["fastloss.bench", "True"], run.stdout + run.stderr
