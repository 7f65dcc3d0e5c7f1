"""Betti numbers of binary masks by labelling (fastloss.ph.betti_numbers) against cripser's diagram."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fastloss
from fastloss import ph
from fastloss.losses import topological as topo

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cripser_betti(mask: np.ndarray, construction: str) -> tuple[int, ...]:
    """The loss's cripser definition: bars of 1 - mask with persistence >= 0.5.

    A 2D mask one pixel wide goes to cripser as a 3D array with a singleton axis under "V" (cripser
    0.0.37 drops the edges of 1-pixel-wide 2D maps under "V"; see test_ph_engine.py).
    """
    if mask.ndim == 2 and construction == "V" and min(mask.shape) == 1:
        return topo.betti_numbers(mask[None], "V", backend="cripser")[:2]
    return topo.betti_numbers(mask, construction, backend="cripser")


@st.composite
def masks(draw, ndim: int, max_side: int):
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(ndim))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.sampled_from([0.0, 0.2, 0.5, 0.7, 0.9, 1.0]))
    return (rng.random(shape) < density).astype(draw(st.sampled_from([np.uint8, np.float32, bool])))


@SETTINGS
@given(masks(2, 24), st.sampled_from("VT"))
@example(np.zeros((5, 7), np.uint8), "V")
@example(np.ones((5, 7), np.uint8), "T")
@example(np.array([[1, 0, 1, 1, 0, 1]], np.uint8), "V")
def test_2d(mask, construction):
    assert ph.betti_numbers(mask, construction) == cripser_betti(mask, construction)


@SETTINGS
@given(masks(3, 8), st.sampled_from("VT"))
@example(np.zeros((3, 4, 5), np.uint8), "V")
@example(np.ones((3, 4, 5), np.uint8), "T")
def test_3d(mask, construction):
    assert ph.betti_numbers(mask, construction) == cripser_betti(mask, construction)


@pytest.mark.parametrize("construction, expected", [("V", (2, 0)), ("T", (1, 0))])
def test_diagonal_pixels(construction, expected):
    """Two diagonal foreground pixels: two components under "V" (4-connected), one under "T" (8)."""
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 1] = mask[2, 2] = 1
    assert ph.betti_numbers(mask, construction) == expected
    assert topo.betti_numbers(mask, construction, backend="cripser") == expected


@pytest.mark.parametrize("construction, expected", [("V", (4, 0)), ("T", (1, 1))])
def test_diagonal_gap_in_a_ring(construction, expected):
    """A ring that closes only through diagonal steps: one loop under "T"; four pieces, no loop, under "V"."""
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 2:4] = mask[4, 2:4] = mask[2:4, 1] = mask[2:4, 4] = 1  # a square ring without its corners
    assert ph.betti_numbers(mask, construction) == expected == topo.betti_numbers(mask, construction, backend="cripser")


@pytest.mark.parametrize("construction", ["V", "T"])
def test_solid_torus_3d(construction):
    """A thick square ring extruded in depth: one component, one tunnel, no void."""
    mask = np.zeros((5, 12, 12), np.uint8)
    mask[1:4, 2:10, 2:10] = 1
    mask[1:4, 5:7, 5:7] = 0
    assert ph.betti_numbers(mask, construction) == (1, 1, 0) == cripser_betti(mask, construction)


def test_loss_target_betti_by_labelling(monkeypatch):
    """auto and native compute the target's Betti numbers by labelling, never with cripser."""
    target = torch.zeros(2, 1, 20, 20)
    target[0, :, 4:16, 4:16] = 1
    target[0, :, 7:13, 7:13] = 0
    calls = []
    real = ph.betti_numbers
    monkeypatch.setattr(ph, "betti_numbers", lambda *a: calls.append(a) or real(*a))
    for backend in ("auto", "native"):
        assert fastloss.TopologicalLoss(backend=backend)(target.clone(), target).item() == 0.0
    assert len(calls) == 4


def test_bad_mask():
    with pytest.raises(ValueError, match="2D or 3D"):
        ph.betti_numbers(np.zeros(5), "V")
    with pytest.raises(ValueError, match="construction"):
        ph.betti_numbers(np.zeros((3, 3)), "X")
