"""The one set of argument checks (fastloss._validation) and the typed errors it gives the losses.

Issue 16 item 7 and issue 17: every bad argument is a TypeError/ValueError naming the argument, what was
expected and what was given; the checks live in one module and the losses use it.
"""

import math
import pathlib
import re

import numpy as np
import pytest
import torch

import fastloss
from fastloss import _validation as v


class TestChecks:
    def test_int(self):
        assert v.check_int("n", 3, 1) == 3 and type(v.check_int("n", np.int64(3), 1)) is int
        with pytest.raises(TypeError, match=r"^`n` must be an int, got float \(2.0\)$"):
            v.check_int("n", 2.0, 1)
        with pytest.raises(TypeError, match=r"^`n` must be an int, got bool \(True\)$"):
            v.check_int("n", True, 1)
        with pytest.raises(ValueError, match=r"^`n` must be >= 1, got 0$"):
            v.check_int("n", 0, 1)
        with pytest.raises(ValueError, match=r"^`n` must be an int in \[0, 3\], got 4$"):
            v.check_int("n", 4, 0, 3)
        with pytest.raises(ValueError, match=r"^`n` must be a non-negative int, got 1.5$"):
            v.check_int("n", 1.5, 0, expected="a non-negative int")

    def test_number(self):
        assert v.check_number("x", 2, 0.0) == 2.0 and isinstance(v.check_number("x", np.float32(0.5)), float)
        with pytest.raises(TypeError, match=r"^`x` must be a number, got str \('a'\)$"):
            v.check_number("x", "a")
        with pytest.raises(ValueError, match=r"^`x` must be a finite number >= 0.0, got -1$"):
            v.check_number("x", -1, 0.0)
        with pytest.raises(ValueError, match=r"^`x` must be a finite float, got inf$"):
            v.check_number("x", math.inf, kind="float")

    def test_bool(self):
        assert v.check_bool("b", False) is False and v.check_bool("b", None, allow_none=True) is None
        with pytest.raises(TypeError, match=r"^`b` must be a bool, got int$"):
            v.check_bool("b", 1)
        with pytest.raises(TypeError, match=r"^`b` must be a bool or None, got str$"):
            v.check_bool("b", "yes", allow_none=True)

    def test_ints(self):
        assert v.check_ints("dims", [0, 1]) == (0, 1) and v.check_ints("dims", np.array([1])) == (1,)
        assert v.check_ints("dims", None) is None and v.check_ints("betti", (), nonempty=False) == ()
        with pytest.raises(TypeError, match=r"^`dims` must be a non-empty sequence of ints, got int \(1\)$"):
            v.check_ints("dims", 1)
        with pytest.raises(TypeError, match=r"got str \('01'\)$"):
            v.check_ints("dims", "01")
        with pytest.raises(ValueError, match=r"^`dims` must be a non-empty sequence of ints, got \(0, True\)$"):
            v.check_ints("dims", (0, True))
        with pytest.raises(ValueError, match=r"^`betti` must be a sequence of non-negative ints, got \(1, -1\)$"):
            v.check_ints("betti", [1, -1], minimum=0, nonempty=False)

    def test_per_dim(self):
        assert v.check_per_dim("factor", 2, 3) == (2, 2, 2) and v.check_per_dim("factor", [2, 1]) == (2, 1)
        with pytest.raises(TypeError, match=r"^`factor` must be a positive int or a sequence of positive ints, "
                                            r"got float \(1.5\)$"):
            v.check_per_dim("factor", 1.5)
        with pytest.raises(TypeError, match=r"got float entries in \(2, 1.5\)$"):
            v.check_per_dim("factor", (2, 1.5))
        with pytest.raises(ValueError, match=r"^`factor` must be >= 1, got 0$"):
            v.check_per_dim("factor", 0)
        with pytest.raises(ValueError, match=r"^`size` must be a positive int or 2 positive ints, got \(4, 4, 4\)$"):
            v.check_per_dim("size", (4, 4, 4), 2)

    def test_floats(self):
        assert v.check_floats("w", [1, 0.5], 2) == (1.0, 0.5)
        with pytest.raises(ValueError, match=r"^`w` must not be empty, got \(\)$"):
            v.check_floats("w", ())

    def test_map(self):
        out = v.check_map(np.zeros((3, 4), np.float16), "the engine")
        assert out.dtype == np.float32 and out.flags.c_contiguous
        assert v.check_map(np.zeros((2, 2, 2)), "the engine").dtype == np.float64
        with pytest.raises(ValueError, match=r"^the engine computes 2D and 3D maps, got 1D$"):
            v.check_map(np.zeros(3), "the engine")
        with pytest.raises(ValueError, match=r"^the engine cannot compute a map with NaN values$"):
            v.check_map(np.full((2, 2), np.nan), "the engine", allow_nan=False)
        with pytest.raises(ValueError, match=r"fewer than 2\*\*4 padded pixels, got shape \(2, 2\)$"):
            v.check_map(np.zeros((2, 2)), "the engine", max_pixels=16)

    def test_float_dtype(self):
        assert v.check_float_dtype("compute_dtype", torch.bfloat16) is torch.bfloat16
        with pytest.raises(TypeError, match=r"^`compute_dtype` must be a floating-point torch.dtype, got 'half'$"):
            v.check_float_dtype("compute_dtype", "half")


class TestLossArguments:
    """Issue 16 item 7: what used to escape as a bare TypeError from deep inside the constructor."""

    @pytest.mark.parametrize("make", [fastloss.TopologicalLoss, fastloss.BettiMatchingLoss])
    def test_scalar_dims(self, make):
        with pytest.raises(TypeError, match=r"^`dims` must be a non-empty sequence of ints, got int \(1\)$"):
            make(dims=1)

    def test_scalar_betti(self):
        with pytest.raises(TypeError, match=r"^`betti` must be a tuple of non-negative ints, got int \(2\)$"):
            fastloss.TopologicalLoss(betti=2)

    def test_functional_scalar_dims(self):
        x = torch.rand(1, 1, 8, 8)
        with pytest.raises(TypeError, match="`dims` must be a non-empty sequence of ints, got int"):
            fastloss.functional.topological_loss(x, (x > 0.5).float(), dims=1)

    def test_numpy_dims_are_accepted(self):
        target = torch.zeros(1, 1, 8, 8)
        target[..., 2:6, 2:6] = 1
        loss = fastloss.TopologicalLoss(dims=np.array([0, 1]))
        assert loss.config.dims == (0, 1) and all(type(d) is int for d in loss.config.dims)
        assert loss(target.clone(), target).item() == 0.0

    def test_bool_dims_are_rejected(self):
        with pytest.raises(ValueError, match=r"`dims` must be a non-empty sequence of ints, got \(True,\)"):
            fastloss.TopologicalLoss(dims=[True])

    def test_from_logits_must_be_bool(self):
        with pytest.raises(TypeError, match=r"^`from_logits` must be a bool, got str$"):
            fastloss.TopologicalLoss(from_logits="yes")


def test_one_definition_of_the_shared_checks():
    """Issue 17: CONSTRUCTIONS defined once (the ph engine and both losses share it), no private copies of
    the sequence/number checks left in the package."""
    assert fastloss.ph.CONSTRUCTIONS is v.CONSTRUCTIONS
    root = pathlib.Path(fastloss.__file__).parent
    offenders = []
    # autotune.py is being rebuilt on these checks in its own change; drop it from here when that lands
    pending = {"autotune.py"}
    for path in root.rglob("*.py"):
        if path.name == "_validation.py" or str(path.relative_to(root)) in pending:
            continue
        text = path.read_text()
        for pattern in (r"\(\s*\"V\",\s*\"T\"\s*\)", r"def _as_tuple\(", r"def _floats\(", r"def _per_dim\(",
                        r"isinstance\(\w+(\.\w+)?, bool\) or not isinstance\("):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(root)}: {pattern}")
    assert not offenders, offenders
