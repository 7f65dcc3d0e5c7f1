"""DownsampledLoss's `factor` and `size`: typed errors naming the argument (issue 16 item 7)."""

import pytest
import torch

from fastloss import DownsampledLoss


@pytest.mark.parametrize("kwargs, error, message", [
    ({"factor": 1.5}, TypeError, "`factor` must be a positive int or a sequence of positive ints, got float (1.5)"),
    ({"size": 16.5}, TypeError, "`size` must be a positive int or a sequence of positive ints, got float (16.5)"),
    ({"factor": 0}, ValueError, "`factor` must be >= 1, got 0"),
    ({"factor": (2, 0)}, ValueError, "`factor` must be a positive int or a sequence of positive ints, got (2, 0)"),
    ({"size": (8, 8.0)}, TypeError, "`size` must be a positive int or a sequence of positive ints, got float entries"),
    ({"factor": "2"}, TypeError, "`factor` must be a positive int or a sequence of positive ints, got str ('2')"),
    ({"antialias": 1}, TypeError, "`antialias` must be a bool, got int"),
])
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error) as info:
        DownsampledLoss(torch.nn.MSELoss(), **kwargs)
    assert message in str(info.value)


def test_int_size_means_every_dimension():
    loss = DownsampledLoss(torch.nn.MSELoss(reduction="sum"), size=4, mode="area")
    x = torch.rand(1, 1, 8, 8)
    expected = torch.nn.functional.mse_loss(
        torch.nn.functional.adaptive_avg_pool2d(x, 4), torch.zeros(1, 1, 4, 4), reduction="sum")
    assert loss.size == 4 and torch.allclose(loss(x, torch.zeros_like(x)), expected)
    assert loss.output_size((8, 8, 8)) == (4, 4, 4)
