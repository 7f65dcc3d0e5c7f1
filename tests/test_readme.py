"""The README's quick example runs as written."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quick_example_runs():
    block = re.search(r"```python\n(import torch, fastloss\n.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"]) and namespace["prob"].grad is not None
    assert int(namespace["lazy"].step) == 1


def test_every_python_snippet_runs():
    """Every ```python block of the README runs, in order, in one namespace (signatures are ```text)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    assert namespace["vgg"].resolved_for is not None and namespace["result"].chosen
    assert namespace["auto"] is not None


def test_two_commands_at_the_top():
    head = README.read_text().splitlines()[:6]
    assert any("make bench" in line for line in head) and any("make test" in line for line in head)
