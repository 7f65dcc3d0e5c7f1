"""Betti matching of 3D maps in every dimension (dim 1 by reduction, fastloss.ph.loops3d) against the
reference, topolosses' BettiMatchingLoss over Betti-Matching-3D: pair for pair on tie-free volumes, the
loss within 1e-5 relative with the same gradient, and the target side cached by CachedPH."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastloss
from fastloss.ph import loops3d, sort
from fastloss.ph.matching import betti_matching, target_side

topolosses = pytest.importorskip("topolosses.losses", reason="topolosses (the reference) is not installed")

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def lin(coords, shape) -> np.ndarray:
    coords = np.asarray(coords).reshape(-1, len(shape))
    return np.ravel_multi_index(tuple(coords.T), shape) if len(coords) else np.zeros(0, np.int64)


def reference_sets(pred, target, dim):
    """Matched (pred birth, pred death, target birth, target death), unmatched pred, unmatched target
    of one dim, as sets of linear voxel indices, from the reference's C++ matching."""
    from topolosses.losses.betti_matching.src import betti_matching as bm

    r = bm.compute_matching([np.ascontiguousarray(pred, np.float64)], [np.ascontiguousarray(target, np.float64)])[0]
    s = pred.shape
    matched = set(zip(*(lin(c[dim], s) for c in (
        r.input1_matched_birth_coordinates, r.input1_matched_death_coordinates,
        r.input2_matched_birth_coordinates, r.input2_matched_death_coordinates)), strict=True))
    u1 = set(zip(lin(r.input1_unmatched_birth_coordinates[dim], s), lin(r.input1_unmatched_death_coordinates[dim], s),
                 strict=True))
    u2 = set(zip(lin(r.input2_unmatched_birth_coordinates[dim], s), lin(r.input2_unmatched_death_coordinates[dim], s),
                 strict=True))
    return matched, u1, u2


def our_sets(m, dim):
    p, t = m.pred, m.target
    matched = {(p.birth_index[i], p.death_index[i], t.birth_index[j], t.death_index[j])
               for i, j in zip(m.pred_matched, m.target_matched, strict=True) if p.dim[i] == dim}
    u1 = {(p.birth_index[i], p.death_index[i]) for i in m.unmatched("pred") if p.dim[i] == dim}
    u2 = {(t.birth_index[i], t.death_index[i]) for i in m.unmatched("target") if t.dim[i] == dim}
    return matched, u1, u2


@st.composite
def tie_free_pairs(draw, max_side: int):
    """Prediction and target volumes whose values are all distinct (so C = min is tie-free too)."""
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = int(np.prod(shape))
    v = (rng.permutation(2 * n) + 0.5 + 0.25 * rng.random(2 * n)) / (2 * n + 1)
    return v[:n].reshape(shape), v[n:].reshape(shape)


def reference_loss():
    return topolosses.BettiMatchingLoss(use_base_loss=False, alpha=1.0, include_background=True)


def value_and_grad(loss, x, t):
    x = x.detach().clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # topolosses warns about single-channel inputs
        v = loss(x, t)
    v.backward()
    return v.detach(), x.grad


class TestMatching:
    @SETTINGS
    @given(tie_free_pairs(10))
    def test_every_dim_pair_for_pair(self, pt):
        p, t = pt
        m = betti_matching(p, t)  # default dims: 0, 1, 2
        for dim in (0, 1, 2):
            assert our_sets(m, dim) == reference_sets(p, t, dim)

    @pytest.mark.parametrize("shape", [(16, 16, 16), (12, 20, 7)])
    def test_larger_volumes(self, shape):
        rng = np.random.default_rng(sum(shape))
        n = int(np.prod(shape))
        v = (rng.permutation(2 * n) + 0.5) / (2 * n)
        p, t = v[:n].reshape(shape), v[n:].reshape(shape)
        m = betti_matching(p, t)
        assert our_sets(m, 1) == reference_sets(p, t, 1)
        assert len(m.pred_matched) > 0

    @pytest.mark.parametrize("loops_in", ["pred", "target"])
    def test_one_side_without_loops(self, loops_in):
        """When one volume has no dim-1 bar (a ramp: every sublevel set is contractible), nothing is matched
        in dim 1 and the image reductions are skipped: still the reference's pairs, every dim."""
        shape = (9, 10, 8)
        n = int(np.prod(shape))
        ramp = (np.arange(n) + 0.5) / (2 * n)
        noisy = 0.5 + (np.random.default_rng(7).permutation(n) + 0.5) / (2 * n)
        p, t = (noisy, ramp) if loops_in == "pred" else (ramp, noisy)
        p, t = p.reshape(shape), t.reshape(shape)
        m = betti_matching(p, t)
        assert (m.pred.dim == 1).any() == (loops_in == "pred")
        assert (m.target.dim == 1).any() == (loops_in == "target")
        for dim in (0, 1, 2):
            assert our_sets(m, dim) == reference_sets(p, t, dim)

    def test_identical_volumes_match_every_loop_to_itself(self):
        x = np.random.default_rng(3).permutation(9 * 8 * 7).reshape(9, 8, 7) / 504.0
        for construction in "VT":
            m = betti_matching(x, x, construction)
            loops = np.flatnonzero(m.pred.dim == 1)
            assert len(loops) > 0
            matched = m.pred_matched[m.pred.dim[m.pred_matched] == 1]
            assert sorted(matched) == sorted(loops)

    def test_image_pivots_against_a_dense_reduction(self):
        """The image reduction (C's boundary matrix, rows in P's order) equals a dense Z/2 reduction."""
        rng = np.random.default_rng(1)
        for shape in [(3, 4, 2), (2, 3, 4)]:
            n = int(np.prod(shape))
            v = (rng.permutation(2 * n) + 0.5) / (2 * n)
            p, c = v[:n].reshape(shape), np.minimum(v[:n], v[n:]).reshape(shape)
            for construction in "VT":
                cc = loops3d.complex_of(sort.filtration(c), construction, by_index=True)
                pc = loops3d.complex_of(sort.filtration(p), construction, by_index=True)
                mine = loops3d.image_of(cc, pc)
                assert dense_image(cc, pc) == {i: int(mine[i]) for i in np.flatnonzero(mine >= 0)}


def dense_image(c, x) -> dict[int, int]:
    """Pivot (X's latest 1-cell) of every C 2-cell column reduced in C's order without clearing, for the
    columns the kernel keeps (not in C's dual forest)."""
    sq = c.construction == "V"
    size, big, st = c.paired.size, 16 * c.fl.porder.size, (c.sa, c.sb, 1)
    k2 = c.skey if sq else c.ekey
    k1 = x.ekey if sq else x.skey
    rows = sorted((i for i in range(3 * size) if k1[i] < big), key=lambda i: k1[i])
    rank = {r: j for j, r in enumerate(rows)}

    def faces(cid):
        typ, q = divmod(cid, size)
        if sq:
            u, w = [a for a in range(3) if a != typ]
            out = [u * size + q, u * size + q + st[w], w * size + q, w * size + q + st[u]]
        else:
            out = [(3 - typ - b) * size + base for b in range(3) if b != typ for base in (q, q - st[b])]
        return {rank[f] for f in out if f in rank}

    pivots, reduced, out = {}, [], {}
    for cid in sorted((i for i in range(3 * size) if k2[i] < big), key=lambda i: k2[i]):
        col = faces(cid)
        while col and max(col) in pivots:
            col ^= reduced[pivots[max(col)]]
        reduced.append(col)
        if col:
            pivots[max(col)] = len(reduced) - 1
            typ, q = divmod(cid, size)
            if not (c.paired[q] >> ((3 if sq else 0) + typ)) & 1:
                out[cid] = rows[max(col)]
    return out


class TestLoss:
    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.integers(0, 2**32 - 1))
    def test_default_dims_equal_reference(self, seed):
        rng = np.random.default_rng(seed)
        shape = (int(rng.integers(1, 3)), 1, *rng.integers(2, 9, size=3).tolist())
        n = int(np.prod(shape))
        v = (rng.permutation(2 * n) + 0.5 + 0.25 * rng.random(2 * n)) / (2 * n + 1)
        x = torch.from_numpy(v[:n].reshape(shape).astype(np.float32))
        t = torch.from_numpy(v[n:].reshape(shape).astype(np.float32))
        ref_v, ref_g = value_and_grad(reference_loss(), x, t)
        v_, g = value_and_grad(fastloss.BettiMatchingLoss(), x, t)
        assert v_.item() == pytest.approx(ref_v.item(), rel=1e-5, abs=1e-6)
        if ref_g.abs().sum() > 0:
            cos = torch.nn.functional.cosine_similarity(g.flatten().double(), ref_g.flatten().double(), dim=0)
            assert cos.item() >= 0.999

    def test_binary_target_tube(self):
        """A tube target (one loop) against a tie-free prediction: the reference's value and gradient."""
        t = torch.zeros(1, 1, 12, 12, 12)
        t[..., 3:9, 3:9, 3:9] = 1
        t[..., 3:9, 5:7, 5:7] = 0
        g = torch.Generator().manual_seed(0)
        x = (0.05 + 0.9 * (torch.randperm(t.numel(), generator=g).float() + 0.5) / t.numel()).reshape(t.shape)
        ref_v, ref_g = value_and_grad(reference_loss(), x, t)
        v_, grad = value_and_grad(fastloss.BettiMatchingLoss(), x, t)
        assert v_.item() == pytest.approx(ref_v.item(), rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(grad.flatten().double(), ref_g.flatten().double(), dim=0)
        assert cos.item() >= 0.999

    def test_perfect_prediction_costs_nothing(self):
        t = torch.zeros(1, 1, 8, 8, 8)
        t[..., 2:6, 2:6, 2:6] = 1
        t[..., 2:6, 3:5, 3:5] = 0
        assert fastloss.BettiMatchingLoss()(t.clone(), t).item() == 0.0


class TestTargetSide:
    def test_target_side_holds_its_loops_and_is_reused(self):
        rng = np.random.default_rng(4)
        p, t = rng.random((7, 8, 9)), rng.random((7, 8, 9))
        side = target_side(t)
        assert side.dims == (0, 1, 2) and side.loops is not None
        assert side.nbytes > 70 * t.size  # the dim-1 cells are held (and counted)
        a, b = betti_matching(p, side), betti_matching(p, t)
        for name in ("pred_matched", "target_matched"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
        assert np.array_equal(a.target.birth_index, b.target.birth_index)

    def test_cached_ph_caches_the_3d_target_side(self, monkeypatch):
        from fastloss.ph import matching

        calls = []
        real = matching.target_side

        def counting(*args, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        loss = fastloss.CachedPH(fastloss.BettiMatchingLoss(workers=1), refresh_every=1)
        exact = fastloss.BettiMatchingLoss(workers=1)
        t = (torch.rand(1, 1, 6, 6, 6) > 0.5).float()
        for _ in range(3):
            x = torch.rand(1, 1, 6, 6, 6)
            expected = exact(x, t)
            monkeypatch.setattr(matching, "target_side", counting)
            value = loss(x, t)
            monkeypatch.setattr(matching, "target_side", real)
            assert torch.allclose(value, expected, rtol=1e-6)
        assert len(calls) == 1  # one target: its side (3D dim 1 included) built once, reused twice
