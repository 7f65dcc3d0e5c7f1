"""Issue 16 item 10: installing prints no setuptools deprecation warning (pyproject's `license`)."""

import pathlib
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_pyproject_configures_without_deprecation_warnings(monkeypatch):
    setuptools = pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), "pyproject.toml")
    messages = [f"{type(w.message).__name__}: {str(w.message).splitlines()[0]}" for w in seen
                if issubclass(w.category, (DeprecationWarning, setuptools.SetuptoolsDeprecationWarning))]
    assert not messages
    assert dist.metadata.license_expression == "MIT"
