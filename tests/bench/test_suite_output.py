"""The suite's output when stdout is not a terminal: tables whole, no progress bar between them (issue 16, item 10)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_no_progress_bar_in_a_log(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks", "--losses", "topology", "--rounds", "1", "--steps", "2",
           "--output", str(tmp_path)]
    run = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # both streams into one pipe, as in a log
    assert run.returncode == 0, run.stdout
    assert "\r" not in run.stdout and "workload/s" not in run.stdout and "it/s" not in run.stdout
    tables = [line for line in run.stdout.splitlines() if line.startswith("|")]
    assert tables and all(line.endswith("|") for line in tables)  # every table row whole
