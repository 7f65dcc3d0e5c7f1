import cripser
import pytest
import torch
from shapes import ring, soft_prediction

import fastloss
from fastloss.functional import topological_loss
from fastloss.losses import topological as topo


def broken_ring(gap_prob: float = 0.3) -> torch.Tensor:
    """The ring with a weak gap: the loop closes only at the filtration value 1 - gap_prob."""
    p = ring()
    p[..., 8:11, 15:17] = gap_prob
    return p


def shell3d(size: int = 12) -> torch.Tensor:
    """A hollow cube (beta_0 = 1, beta_1 = 0, beta_2 = 1) as a (1, 1, D, H, W) mask."""
    m = torch.zeros(1, 1, size, size, size)
    m[..., 2:-2, 2:-2, 2:-2] = 1
    m[..., 4:-4, 4:-4, 4:-4] = 0
    return m


class TestTopologicalLoss:
    def test_zero_for_clean_target(self, ring_mask):
        assert fastloss.TopologicalLoss()(ring_mask.clone(), ring_mask).item() == 0.0

    def test_positive_for_broken_ring(self, ring_mask):
        value = fastloss.TopologicalLoss()(broken_ring(0.3), ring_mask)
        # the loop is born at f = 0.7 and must be pushed to birth 0: cost 0.7**2 (dim 1), nothing else
        assert value.item() == pytest.approx(0.49, abs=1e-6)

    def test_loss_decreases_as_gap_closes(self, ring_mask):
        values = [fastloss.TopologicalLoss()(broken_ring(g), ring_mask).item() for g in (0.1, 0.4, 0.7, 1.0)]
        assert values == sorted(values, reverse=True) and values[-1] == 0.0

    @pytest.mark.parametrize("reduction, shape", [("mean", ()), ("sum", ()), ("none", (2, 3))])
    def test_reduction_shapes(self, reduction, shape):
        target = ring().repeat(2, 3, 1, 1)
        out = fastloss.TopologicalLoss(reduction=reduction)(soft_prediction(target), target)
        assert out.shape == shape

    def test_reductions_agree(self):
        target = ring().repeat(2, 2, 1, 1)
        pred = soft_prediction(target, noise=0.5)
        per_map = topological_loss(pred, target, reduction="none")
        assert torch.allclose(topological_loss(pred, target, reduction="sum"), per_map.sum())
        assert torch.allclose(topological_loss(pred, target, reduction="mean"), per_map.mean())

    def test_function_equals_module(self, ring_mask):
        pred = soft_prediction(ring_mask, noise=0.6)
        module = fastloss.TopologicalLoss(dims=[1], construction="T")
        assert torch.equal(module(pred, ring_mask), topological_loss(pred, ring_mask, dims=[1], construction="T"))

    def test_from_logits(self, ring_mask):
        logits = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
        a = fastloss.TopologicalLoss(from_logits=True)(logits, ring_mask)
        b = fastloss.TopologicalLoss()(torch.sigmoid(logits), ring_mask)
        assert torch.allclose(a, b)

    def test_betti_prior(self, ring_mask):
        assert fastloss.TopologicalLoss(betti=(1, 1))(ring_mask, None).item() == 0.0
        # a prior of "no loop" penalises the ring's loop: it must be pushed onto the diagonal
        assert fastloss.TopologicalLoss(betti=(1, 0))(ring_mask, None).item() == pytest.approx(1.0)

    def test_target_betti_numbers(self):
        assert topo.betti_numbers(ring()[0, 0].numpy()) == (1, 1)
        two = torch.zeros(20, 20)
        two[2:5, 2:5] = 1
        two[10:15, 10:15] = 1
        assert topo.betti_numbers(two.numpy()) == (2, 0)
        assert topo.betti_numbers(shell3d()[0, 0].numpy()) == (1, 0, 1)

    def test_gradient_reaches_only_critical_pixels(self, ring_mask):
        pred = broken_ring(0.3).requires_grad_()
        fastloss.TopologicalLoss()(pred, ring_mask).backward()
        nonzero = pred.grad.nonzero()
        # the only cost is the loop's birth, at one gap pixel: d/dp (1 - p)^2 = -2 * 0.7
        assert len(nonzero) == 1
        assert pred.grad[tuple(nonzero[0])].item() == pytest.approx(-1.4)
        assert 8 <= nonzero[0, 2] < 11 and 15 <= nonzero[0, 3] < 17

    @pytest.mark.parametrize("construction", ["V", "T"])
    def test_gradient_matches_cripser_torch(self, construction):
        """Same selection through cripser.compute_ph_torch's own autograd gives the same gradient.

        The prediction has ties (clamped to 0 and 1), where only cripser itself picks cripser's pixels:
        the native engine's version of this test is in test_ph_engine.py (tie-free maps).
        """
        target = ring()
        pred = soft_prediction(target, seed=3, noise=0.7)
        ours = pred.clone().requires_grad_()
        topological_loss(ours, target, construction=construction, reduction="sum", backend="cripser").backward()

        ref = pred.clone().requires_grad_()
        ph = cripser.compute_ph_torch((1 - ref)[0, 0], filtration=construction, maxdim=1, location="yes")
        betti = topo.betti_numbers(target[0, 0].numpy(), construction)
        birth = ph[:, 1]
        death = torch.where(torch.isinf(ph[:, 2]), torch.ones_like(ph[:, 2]), ph[:, 2])
        persistence = (death - birth).detach()
        total = 0
        for k in (0, 1):
            rows = torch.nonzero(ph[:, 0] == k).flatten()
            ranked = rows[torch.argsort(-persistence[rows], stable=True)]
            keep, drop = ranked[: betti[k]], ranked[betti[k] :]
            total = total + (birth[keep] ** 2 + (1 - death[keep]) ** 2).sum() + ((death[drop] - birth[drop]) ** 2).sum()
        total.backward()
        assert torch.count_nonzero(ref.grad) > 10
        assert torch.allclose(ours.grad, ref.grad.float(), atol=1e-6)

    def test_gradcheck(self):
        g = torch.Generator().manual_seed(0)
        pred = (0.05 + 0.9 * torch.rand(1, 2, 9, 9, generator=g, dtype=torch.float64)).requires_grad_()
        target = ring(9, outer=1, width=2).double().repeat(1, 2, 1, 1)
        assert torch.autograd.gradcheck(lambda p: topological_loss(p, target), (pred,), eps=1e-7, atol=1e-5)

    def test_3d(self):
        target = shell3d()
        assert fastloss.TopologicalLoss()(target.clone(), target).item() == 0.0
        pred = target.clone()
        pred[..., 2:4, 5:7, 5:7] = 0.2  # a weak hole through the shell: the void is born late
        pred.requires_grad_()
        value = fastloss.TopologicalLoss()(pred, target)
        assert value.item() == pytest.approx(0.8**2)
        value.backward()
        assert torch.count_nonzero(pred.grad) == 1

    def test_workers_do_not_change_result(self):
        target = ring().repeat(3, 2, 1, 1)
        pred = soft_prediction(target, seed=5, noise=0.8)
        results = []
        for workers in (1, 2, 4, None):
            p = pred.clone().requires_grad_()
            value = topological_loss(p, target, workers=workers, reduction="none")
            value.sum().backward()
            results.append((value.detach(), p.grad))
        for value, grad in results[1:]:
            assert torch.equal(value, results[0][0]) and torch.equal(grad, results[0][1])

    def test_worker_error_surfaces(self, monkeypatch):
        real = topo.persistence_diagram

        def flaky(f, *args, **kwargs):
            if abs(f[0, 0] - 0.875) < 1e-12:  # the marked map
                raise MemoryError("boom")
            return real(f, *args, **kwargs)

        monkeypatch.setattr(topo, "persistence_diagram", flaky)
        target = ring().repeat(4, 1, 1, 1)
        pred = soft_prediction(target)
        pred[2, 0, 0, 0] = 0.125  # f = 0.875 on map 2
        with pytest.raises(RuntimeError, match=r"persistent homology failed on map 2: MemoryError: boom"):
            topological_loss(pred, target, workers=2)


class TestTopologicalLossErrors:
    @pytest.mark.parametrize(
        "input, target, error, message",
        [
            (torch.ones(1, 1, 8, 8, dtype=torch.long), ring(8, 1, 2), TypeError, "`input` must be a floating-point tensor, got dtype torch.int64"),
            ([0.5], ring(8, 1, 2), TypeError, "`input` must be a torch.Tensor, got list"),
            (torch.rand(8, 8), torch.ones(8, 8), ValueError, "`input` must have 4 or 5 dimensions (B, C, H, W or B, C, D, H, W), got 2"),
            (torch.rand(1, 1, 8, 8), ring(9, 1, 2), ValueError, "same shape, got (1, 1, 8, 8) and (1, 1, 9, 9)"),
            (torch.full((1, 1, 8, 8), float("nan")), ring(8, 1, 2), ValueError, "`input` must be finite, got 64 NaN/Inf"),
            (torch.full((1, 1, 8, 8), 1.5), ring(8, 1, 2), ValueError, "`input` probabilities must lie in [0.0, 1.0], got values in [1.5, 1.5]"),
            (torch.rand(1, 1, 8, 8), ring(8, 1, 2) * 0.5, ValueError, "`target` must be a binary mask with values in {0, 1}"),
            (torch.rand(1, 1, 8, 8), None, ValueError, "`target` is required"),
            (torch.rand(0, 1, 8, 8), torch.rand(0, 1, 8, 8), ValueError, "`input` must not be empty"),
        ],
    )
    def test_bad_input(self, input, target, error, message):
        with pytest.raises(error) as info:
            fastloss.TopologicalLoss()(input, target)
        assert message in str(info.value)

    @pytest.mark.parametrize(
        "kwargs, error, message",
        [
            ({"reduction": "avg"}, ValueError, "`reduction` must be one of ['mean', 'sum', 'none'], got 'avg'"),
            ({"construction": "X"}, ValueError, "`construction` must be one of ['V', 'T'], got 'X'"),
            ({"workers": 0}, ValueError, "`workers` must be >= 1, got 0"),
            ({"workers": 1.5}, TypeError, "`workers` must be an int, got float"),
            ({"betti": (1, -1)}, ValueError, "`betti` must be a tuple of non-negative ints"),
        ],
    )
    def test_bad_arguments(self, kwargs, error, message):
        with pytest.raises(error) as info:
            fastloss.TopologicalLoss(**kwargs)
        assert message in str(info.value)

    def test_dims_out_of_range(self, ring_mask):
        with pytest.raises(ValueError, match=r"`dims` must lie in \[0, 1\] for 2D maps, got \[2\]"):
            fastloss.TopologicalLoss(dims=[2])(ring_mask, ring_mask)

    def test_target_with_prior(self, ring_mask):
        with pytest.raises(ValueError, match="`target` must be None when a topological prior"):
            fastloss.TopologicalLoss(betti=(1, 1))(ring_mask, ring_mask)

    def test_logits_skip_range_check(self, ring_mask):
        assert torch.isfinite(fastloss.TopologicalLoss(from_logits=True)(ring_mask * 20 - 10, ring_mask))
