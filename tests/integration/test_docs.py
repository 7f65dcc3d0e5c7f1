"""The README and the manual in docs/ tell the truth: every ```python block runs, and the manual builds.

Blocks run in order, one namespace per page (a page's later blocks may use names from its earlier ones);
signatures and shell commands are ```text / ```bash and are not run. Pages are found by globbing, so a
new page's blocks run without editing this file.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


WITH_CODE = [page for page in PAGES if python_blocks(page)]


def run_page(page: Path) -> dict:
    namespace: dict = {}
    for i, block in enumerate(python_blocks(page)):
        exec(compile(block, f"{page.relative_to(ROOT)} python block {i}", "exec"), namespace)
    return namespace


def _quickstart_ran(namespace: dict) -> None:
    assert torch.isfinite(namespace["loss"]) and namespace["prob"].grad is not None
    assert int(namespace["lazy"].step) == 1


# What each page's blocks must leave behind, beyond running without an exception.
CHECKS = {
    "README.md": _quickstart_ran,
    "index.md": _quickstart_ran,
}


def _presets_ran(namespace: dict) -> None:
    assert namespace["vgg"].resolved_for is not None and namespace["result"].chosen
    assert namespace["auto"] is not None


def _benchmark_ran(namespace: dict) -> None:
    report, table = namespace["report"], namespace["markdown_table"](namespace["report"])
    assert set(report.candidates) == {"DownsampledLoss(2)", "IntervalLoss(2)"}
    assert all(len(c.speedups) >= 1 and c.deviation for c in report.candidates.values())
    assert "Machine:" in table and "IntervalLoss(2)" in table
    assert namespace["png"].is_file() and namespace["png"].stat().st_size > 0


CHECKS["presets.md"] = _presets_ran
CHECKS["benchmarks.md"] = _benchmark_ran


def test_quick_example_runs():
    block = re.search(r"```python\n(import torch, fastloss\n.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    _quickstart_ran(namespace)


def test_there_are_snippets_to_run():
    """The README and the manual keep their runnable examples (the pages below are not all empty)."""
    counts = {page.name: len(python_blocks(page)) for page in PAGES}
    assert sum(counts.values()) >= 5, counts
    assert all(counts[name] >= 1 for name in CHECKS), counts


@pytest.mark.parametrize("page", WITH_CODE, ids=[str(p.relative_to(ROOT)) for p in WITH_CODE])
def test_every_python_snippet_runs(page):
    """Every ```python block of the page runs, in order, in one namespace."""
    namespace = run_page(page)
    check = CHECKS.get(page.name)
    if check is not None:
        check(namespace)


def test_two_commands_at_the_top():
    head = README.read_text().splitlines()[:6]
    assert any("make bench" in line for line in head) and any("make test" in line for line in head)


def test_readme_is_the_front_door():
    """Under 250 lines, with a table of presets that names all of them, and links into every docs/ page."""
    text = README.read_text()
    assert len(text.splitlines()) < 250
    for name in ('"exact"', '"balanced"', '"fastest"', '"auto"'):
        assert f"| `{name}` |" in text, name
    for page in DOCS.glob("*.md"):
        assert f"(docs/{page.name})" in text or f"(docs/{page.name}#" in text, page.name


def test_relative_links_of_the_readme_exist():
    for target in re.findall(r"\]\(((?!https?:)[^)#\s]+)(?:#[^)]*)?\)", README.read_text()):
        assert (ROOT / target).exists(), target


def test_docs_build_strictly(tmp_path):
    """`mkdocs build --strict` fails on a broken link or anchor, a page missing from the nav, a bad config.

    Offline: the default theme and the search plugin need nothing from the network. mkdocs is in the dev
    extra, so a missing install fails here rather than skipping the check.
    """
    site = tmp_path / "site"
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    for page in DOCS.glob("*.md"):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), built
    shutil.rmtree(site)
