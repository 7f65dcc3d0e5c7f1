"""Make `torch` available to the docstring examples that pytest runs (--doctest-modules)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_torch(doctest_namespace):
    doctest_namespace["torch"] = torch
