"""BettiMatchingLoss and the native Betti matching (fastloss.ph.matching) against the reference.

The reference is topolosses' ``BettiMatchingLoss`` (its C++ extension is Betti-Matching-3D, Stucki et
al.), in the dev extra only: those tests skip without it. ``include_background=True`` makes it use every
channel (by default it drops channel 0 of multi-channel inputs); ``use_base_loss=False, alpha=1.0`` makes
it the Betti-matching term alone, the mean over the B*C maps of each map's sum (as ``reduction="mean"``).
Its filtration is the superlevel one (the sublevel filtration of ``1 - p``, target ``1 - t``), its
complex the "V" construction: the tests compare that construction.

"T" has no reference: its cell orders are checked against a sort, its barcodes against the engine
(itself checked against cripser), and its passes against a plain transliteration of the reference's
algorithm (separate union-finds, as Betti-Matching-3D's C++) on the same cells.
"""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapes import ring

import fastloss
from fastloss import ph
from fastloss.functional import betti_matching_loss
from fastloss.losses import betti_matching as bml
from fastloss.ph import cells
from fastloss.ph.matching import betti_matching, target_side
from fastloss.ph.sort import filtration

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_loss(**kwargs):
    topolosses = pytest.importorskip("topolosses.losses", reason="topolosses (the reference) is not installed")
    return topolosses.BettiMatchingLoss(use_base_loss=False, alpha=1.0, include_background=True, **kwargs)


def reference_matching(pred: np.ndarray, target: np.ndarray):
    pytest.importorskip("topolosses.losses", reason="topolosses (the reference) is not installed")
    from topolosses.losses.betti_matching.src import betti_matching as bm

    return bm.compute_matching([np.ascontiguousarray(pred, np.float64)], [np.ascontiguousarray(target, np.float64)])[0]


def value_and_grad(loss, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # topolosses warns about single-channel inputs
        v = loss(x, t)
    v.backward()
    return v.detach(), x.grad


def assert_close_to_reference(x, t, rel=1e-5, **kwargs):
    ref_v, ref_g = value_and_grad(reference_loss(**kwargs), x, t)
    ours_kwargs = {k: v for k, v in kwargs.items() if k != "sigmoid"}
    ours_kwargs["from_logits"] = kwargs.get("sigmoid", False)
    v, g = value_and_grad(fastloss.BettiMatchingLoss(**ours_kwargs), x, t)
    assert v.item() == pytest.approx(ref_v.item(), rel=rel, abs=1e-6)
    if ref_g.abs().sum() > 0:
        cos = torch.nn.functional.cosine_similarity(g.flatten().double(), ref_g.flatten().double(), dim=0)
        assert cos.item() >= 0.999
    else:
        assert g.abs().sum() == 0


@st.composite
def batches(draw, max_side: int = 64, binary_target: bool = False):
    """(input, target) of shape (B, C, H, W), strips 1 x N included; tie-free unless the target is binary:
    prediction and target values all distinct (so the comparison image is tie-free too)."""
    b, c = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = b * c * h * w
    values = (rng.permutation(2 * n) + 0.5 + 0.25 * rng.random(2 * n)) / (2 * n + 1)
    x = torch.from_numpy(values[:n].reshape(b, c, h, w).astype(np.float32))
    if binary_target:
        t = torch.from_numpy((rng.random((b, c, h, w)) < draw(st.floats(0.1, 0.9))).astype(np.float32))
    else:
        t = torch.from_numpy(values[n:].reshape(b, c, h, w).astype(np.float32))
    return x, t


def lin(coords, shape) -> np.ndarray:
    coords = np.asarray(coords).reshape(-1, len(shape))
    return np.ravel_multi_index(tuple(coords.T), shape) if len(coords) else np.zeros(0, np.int64)


def reference_sets(pred, target, dims):
    """Per dim: matched (pred birth, pred death, target birth, target death), unmatched pred, unmatched
    target, as sets of linear pixel indices, from the reference's C++ matching."""
    r = reference_matching(pred, target)
    s = pred.shape
    out = {}
    for d in dims:
        matched = set(zip(*(lin(c[d], s) for c in (
            r.input1_matched_birth_coordinates, r.input1_matched_death_coordinates,
            r.input2_matched_birth_coordinates, r.input2_matched_death_coordinates)), strict=True))
        u1 = set(zip(lin(r.input1_unmatched_birth_coordinates[d], s), lin(r.input1_unmatched_death_coordinates[d], s), strict=True))
        u2 = set(zip(lin(r.input2_unmatched_birth_coordinates[d], s), lin(r.input2_unmatched_death_coordinates[d], s), strict=True))
        out[d] = (matched, u1, u2)
    return out


def matching_sets(m, dims):
    """The same sets from a :class:`fastloss.ph.Matching`."""
    p, t = m.pred, m.target
    out = {}
    for d in dims:
        matched = {(p.birth_index[i], p.death_index[i], t.birth_index[j], t.death_index[j])
                   for i, j in zip(m.pred_matched, m.target_matched, strict=True) if p.dim[i] == d}
        u1 = {(p.birth_index[i], p.death_index[i]) for i in m.unmatched("pred") if p.dim[i] == d}
        u2 = {(t.birth_index[i], t.death_index[i]) for i in m.unmatched("target") if t.dim[i] == d}
        out[d] = (matched, u1, u2)
    return out


def random_map(rng, shape, kind):
    if kind == "tie-free":
        return (rng.permutation(int(np.prod(shape))).reshape(shape) + 0.5) / np.prod(shape)
    if kind == "binary":
        return (rng.random(shape) < 0.5).astype(np.float64)
    if kind == "quantised":
        return np.floor(rng.random(shape) * 3) / 3
    return np.full(shape, 0.5)


class TestAgainstReference:
    """Value within 1e-5 relative and gradient cosine >= 0.999 against topolosses (float32 both)."""

    @SETTINGS
    @given(batches())
    def test_tie_free(self, batch):
        assert_close_to_reference(*batch)

    @SETTINGS
    @given(batches(binary_target=True))
    def test_binary_targets(self, batch):
        # Ties everywhere (target, and comparison image = min(1 - p, 1 - t) is 0 on the foreground).
        # Ties decide the matching (the order of equal cells), and the engine orders cells exactly as
        # the reference (value, then cell index), so the matching is the reference's pair for pair
        # (test_matching_pair_for_pair): the values differ only by float32 summation order, whence the
        # same 1e-5 relative tolerance as without ties.
        assert_close_to_reference(*batch)

    @pytest.mark.parametrize("kwargs", [
        {"push_unmatched_to_1_0": True},
        {"barcode_length_threshold": 0.2},
        {"topology_weights": (0.3, 2.5)},
        {"sigmoid": True},
        {"push_unmatched_to_1_0": True, "barcode_length_threshold": 0.1, "topology_weights": (2.0, 0.5)},
    ])
    @pytest.mark.parametrize("binary", [False, True])
    def test_options(self, kwargs, binary):
        g = torch.Generator().manual_seed(3)
        x = torch.rand(2, 2, 24, 20, generator=g)
        if kwargs.get("sigmoid"):
            x = (x - 0.5) * 8
        t = (torch.rand(2, 2, 24, 20, generator=g) < 0.4).float() if binary else torch.rand(2, 2, 24, 20, generator=g)
        assert_close_to_reference(x, t, **kwargs)

    def test_sublevel_filtration(self):
        from topolosses.losses.utils import FiltrationType

        g = torch.Generator().manual_seed(4)
        x, t = torch.rand(2, 1, 20, 20, generator=g), (torch.rand(2, 1, 20, 20, generator=g) < 0.5).float()
        ref_v, ref_g = value_and_grad(reference_loss(filtration_type=FiltrationType.SUBLEVEL), x, t)
        v, grad = value_and_grad(fastloss.BettiMatchingLoss(filtration="sublevel"), x, t)
        assert v.item() == pytest.approx(ref_v.item(), rel=1e-5) and torch.allclose(grad, ref_g, atol=1e-6)

    def test_training_workload(self):
        """A 128x128 batch of the benchmark's thin structures (float32 predictions with ties)."""
        from fastloss.bench import workloads

        x, t = next(workloads.topology_workload(size=128, batch=2, samples=2, epochs=1).trajectory())
        assert_close_to_reference(x, t)

    @pytest.mark.parametrize("seed", range(6))
    @pytest.mark.parametrize("kinds", [("tie-free", "tie-free"), ("tie-free", "binary"), ("quantised", "binary"),
                                       ("binary", "quantised"), ("constant", "binary")])
    def test_matching_pair_for_pair_2d(self, seed, kinds):
        rng = np.random.default_rng(seed)
        shape = tuple(int(s) for s in rng.integers(1, 30, 2))
        p, t = (random_map(rng, shape, k).astype(np.float32) for k in kinds)
        assert matching_sets(betti_matching(p, t), (0, 1)) == reference_sets(p, t, (0, 1))

    @pytest.mark.parametrize("seed", range(4))
    @pytest.mark.parametrize("kinds", [("tie-free", "tie-free"), ("tie-free", "binary"), ("quantised", "binary")])
    def test_matching_pair_for_pair_3d(self, seed, kinds):
        """3D: dims 0 and 2 (the reference's dim 1 is not computed natively)."""
        rng = np.random.default_rng(seed)
        shape = tuple(int(s) for s in rng.integers(1, 8, 3))
        p, t = (random_map(rng, shape, k).astype(np.float32) for k in kinds)
        assert matching_sets(betti_matching(p, t, dims=(0, 2)), (0, 2)) == reference_sets(p, t, (0, 2))

    def test_3d_loss_dims_0_and_2(self):
        """The loss of dims (0, 2) equals the reference's terms of those dims (its per-dim matching)."""
        rng = np.random.default_rng(5)
        x = torch.from_numpy(rng.random((1, 1, 7, 6, 8)).astype(np.float32))
        t = torch.from_numpy((rng.random((1, 1, 7, 6, 8)) < 0.5).astype(np.float32))
        f, g = (1 - x[0, 0]).numpy(), (1 - t[0, 0]).numpy()
        r = reference_matching(f, g)
        expected = 0.0
        for d in (0, 2):
            def val(a, c):
                return a.reshape(-1)[lin(c, a.shape)].astype(np.float64)
            pb, pd = val(f, r.input1_matched_birth_coordinates[d]), val(f, r.input1_matched_death_coordinates[d])
            tb, td = val(g, r.input2_matched_birth_coordinates[d]), val(g, r.input2_matched_death_coordinates[d])
            ub, ud = val(f, r.input1_unmatched_birth_coordinates[d]), val(f, r.input1_unmatched_death_coordinates[d])
            mb, md = val(g, r.input2_unmatched_birth_coordinates[d]), val(g, r.input2_unmatched_death_coordinates[d])
            expected += 2 * ((pb - tb) ** 2 + (pd - td) ** 2).sum() + ((ub - ud) ** 2).sum() + ((mb - md) ** 2).sum()
        ours = fastloss.BettiMatchingLoss(dims=(0, 2))(x, t).item()
        assert ours == pytest.approx(expected, rel=1e-5)


# --- "T" and the passes: a plain transliteration of the reference's algorithm ---------------------------

def slow_matching(p: np.ndarray, t: np.ndarray, construction: str):
    """Betti matching as Betti-Matching-3D computes it (separate union-finds for the image and for the
    comparison, linked by birth time then index), on the engine's cells, with plain Python objects."""
    c = np.minimum(p, t)
    fam = cells.families(p.shape, construction)
    top = p.ndim - 1
    prim, pmode = fam["primal"]
    dual, dmode, sides = fam["dual"]
    tcorners, rule = fam["top"]

    def prepare(x):
        fl = filtration(x)
        lv = cells.pixel_levels(fl.rank, fl.level)
        size = lv.size

        def cells_of(corners, mode):
            out = []
            for q in range(size):
                for k in range(corners.shape[0]):
                    pos = q + corners[k]
                    if pos.max() >= size:
                        continue
                    levels = lv[pos]
                    if mode == cells.MAX:
                        if (levels < 0).any():
                            continue
                        out.append((int(levels.max()), (q << cells.SHIFT) | k, pos[np.argmax(fl.rank[pos])]))
                    else:
                        real = pos[levels >= 0]
                        if len(real):
                            out.append((int(lv[real].min()), (q << cells.SHIFT) | k, real[np.argmin(fl.rank[real])]))
            return sorted(out)

        tl = cells.top_levels(lv, tcorners[0])
        return {"fl": fl, "lv": lv, "primal": cells_of(prim, pmode), "dual": cells_of(dual, dmode), "top": tl}

    im = {"p": prepare(p), "t": prepare(t), "c": prepare(c)}
    size = im["p"]["lv"].size
    OUT = size

    class UF:
        def __init__(self, key):  # key(node) -> comparable; elder = smaller key
            self.parent, self.key = {}, key

        def find(self, x):
            while self.parent.get(x, x) != x:
                x = self.parent[x]
            return x

        def link(self, a, b):  # roots; returns the younger
            young, old = (a, b) if self.key(a) > self.key(b) else (b, a)
            self.parent[young] = old
            return young

    def rank_key(name):
        return lambda q: int(im[name]["fl"].rank[q])

    def top_key(name):  # dual: elder = higher (level, position); the outside above all
        tl = im[name]["top"]
        return lambda u: (-(1 << 40), 0) if u == OUT else (-int(tl[u]), -u)

    def dual_node(name, q):
        return q if im[name]["top"][q] >= 0 else OUT

    def death_pixel(name, u):
        fl, lv = im[name]["fl"], im[name]["lv"]
        pos = u + tcorners[0]
        if rule == 0:
            return pos[np.argmax(fl.rank[pos])]
        return pos[lv[pos] == lv[pos].max()][0]

    result = {}
    bars, match_map = {}, {}  # dim 0
    for name in ("p", "t"):
        uf, bars[name], match_map[name] = UF(rank_key(name)), [], {}
        for level, e, crit in im[name]["primal"]:
            q, k = e >> cells.SHIFT, e & 15
            a, b = uf.find(q + prim[k, 0]), uf.find(q + prim[k, 1])
            if a != b:
                young = uf.link(a, b)
                if im[name]["lv"][young] != level:
                    match_map[name][young] = len(bars[name])
                    bars[name].append((young, crit))
    ufc, uf0, uf1, matched = UF(rank_key("c")), UF(rank_key("p")), UF(rank_key("t")), []
    for level, e, _ in im["c"]["primal"]:
        q, k = e >> cells.SHIFT, e & 15
        ends = (q + prim[k, 0], q + prim[k, 1])
        a, b = ufc.find(ends[0]), ufc.find(ends[1])
        if a != b:
            young = ufc.link(a, b)
            y0 = uf0.link(uf0.find(ends[0]), uf0.find(ends[1]))
            y1 = uf1.link(uf1.find(ends[0]), uf1.find(ends[1]))
            if im["c"]["lv"][young] != level and y0 in match_map["p"] and y1 in match_map["t"]:
                matched.append((match_map["p"][y0], match_map["t"][y1]))
    result[0] = (bars, matched)
    bars, match_map = {}, {}  # the top dimension
    for name in ("p", "t"):
        uf, ufc, bars[name], match_map[name] = UF(top_key(name)), UF(top_key("c")), [], {}
        for level, e, crit in reversed(im[name]["dual"]):
            q, k = e >> cells.SHIFT, e & 15
            ends = (dual_node(name, q + sides[k, 0]), dual_node(name, q + sides[k, 1]))
            a, b = uf.find(ends[0]), uf.find(ends[1])
            if a != b:
                young = uf.link(a, b)
                young_c = ufc.link(ufc.find(ends[0]), ufc.find(ends[1]))
                if im[name]["top"][young] != level:
                    match_map[name][young_c] = len(bars[name])
                    bars[name].append((crit, death_pixel(name, young)))
    ufc, matched = UF(top_key("c")), []
    for level, e, _ in reversed(im["c"]["dual"]):
        q, k = e >> cells.SHIFT, e & 15
        a, b = ufc.find(dual_node("c", q + sides[k, 0])), ufc.find(dual_node("c", q + sides[k, 1]))
        if a != b:
            young = ufc.link(a, b)
            if im["c"]["top"][young] != level and young in match_map["p"] and young in match_map["t"]:
                matched.append((match_map["p"][young], match_map["t"][young]))
    result[top] = (bars, matched)

    def unpad(name, q):
        return int(im[name]["fl"].pixels(np.array([im[name]["fl"].rank[q]]))[0])

    out = {}
    for d, (bars, matched) in result.items():
        pairs = {n: [(unpad(n, b), unpad(n, x)) for b, x in bars[n]] for n in ("p", "t")}
        mp = {i for i, _ in matched}
        mt = {j for _, j in matched}
        out[d] = ({(*pairs["p"][i], *pairs["t"][j]) for i, j in matched},
                  {pairs["p"][i] for i in range(len(pairs["p"])) if i not in mp},
                  {pairs["t"][j] for j in range(len(pairs["t"])) if j not in mt})
    return out


class TestPassesAndConstructions:
    @pytest.mark.parametrize("construction", ["V", "T"])
    @pytest.mark.parametrize("shape", [(1, 7), (9, 1), (6, 8), (4, 5, 3), (1, 4, 6)])
    @pytest.mark.parametrize("kind", ["tie-free", "quantised", "binary"])
    def test_cell_order_is_sorted_by_level_then_id(self, construction, shape, kind):
        x = random_map(np.random.default_rng(2), shape, kind).astype(np.float32)
        fl = filtration(x)
        lv = cells.pixel_levels(fl.rank, fl.level)
        fam = cells.families(shape, construction)
        for corners, mode in (fam["primal"], fam["dual"][:2]):
            order = cells.cell_order(fl, corners, mode).astype(np.int64)
            q, k = order >> cells.SHIFT, order & 15
            levels = np.array([lv[qq + corners[kk]].max() if mode == cells.MAX else
                               lv[qq + corners[kk]][lv[qq + corners[kk]] >= 0].min() for qq, kk in zip(q, k, strict=True)])
            assert np.array_equal(order, order[np.lexsort((order, levels))])
            # every cell of the complex, once
            expected = sum(1 for qq in range(lv.size) for kk in range(corners.shape[0])
                           if (qq + corners[kk]).max() < lv.size and (
                               (lv[qq + corners[kk]] >= 0).all() if mode == cells.MAX else (lv[qq + corners[kk]] >= 0).any()))
            assert len(order) == len(set(order.tolist())) == expected

    @pytest.mark.parametrize("construction", ["V", "T"])
    @pytest.mark.parametrize("seed", range(5))
    @pytest.mark.parametrize("kinds", [("tie-free", "tie-free"), ("tie-free", "binary"), ("quantised", "quantised")])
    def test_kernels_equal_the_plain_algorithm(self, construction, seed, kinds):
        rng = np.random.default_rng(seed)
        nd = 2 if seed < 3 else 3
        shape = tuple(int(s) for s in rng.integers(1, 12 if nd == 2 else 6, nd))
        p, t = (random_map(rng, shape, k).astype(np.float32) for k in kinds)
        dims = (0, nd - 1)
        assert matching_sets(betti_matching(p, t, construction, dims), dims) == slow_matching(p, t, construction)

    @pytest.mark.parametrize("construction", ["V", "T"])
    @pytest.mark.parametrize("shape", [(1, 12), (10, 13), (5, 6, 4)])
    def test_barcodes_are_the_engines(self, construction, shape):
        """Each map's finite bars of positive persistence: the engine's diagram (checked against cripser),
        critical pixels included (tie-free maps)."""
        rng = np.random.default_rng(7)
        p, t = (random_map(rng, shape, "tie-free") + 1e-3 * k for k in (0, 1))
        dims = ph.native_dims(len(shape))  # every dim (3D dim 1 included)
        m = betti_matching(p, t, construction, dims)
        for bars, x in ((m.pred, p), (m.target, t)):
            d = ph.persistence(x, construction, dims, backend="native")
            finite = np.isfinite(d.death) & (d.death > d.birth)
            expected = sorted(zip(d.dim[finite].tolist(), d.birth_index[finite].tolist(), d.death_index[finite].tolist(), strict=True))
            assert sorted(zip(bars.dim.tolist(), bars.birth_index.tolist(), bars.death_index.tolist(), strict=True)) == expected

    @pytest.mark.parametrize("construction", ["V", "T"])
    def test_identical_maps_match_every_bar_to_itself(self, construction):
        x = random_map(np.random.default_rng(1), (17, 15), "tie-free")
        m = betti_matching(x, x, construction)
        assert len(m.pred_matched) == len(m.pred) == len(m.target)
        assert np.array_equal(m.pred.birth_index[m.pred_matched], m.target.birth_index[m.target_matched])

    def test_target_side_reused(self):
        rng = np.random.default_rng(0)
        t = random_map(rng, (20, 20), "binary").astype(np.float32)
        side = target_side(t)
        for _ in range(2):
            p = rng.random((20, 20)).astype(np.float32)
            assert matching_sets(betti_matching(p, side), (0, 1)) == matching_sets(betti_matching(p, t), (0, 1))
        assert side.nbytes > 20 * 20 * 4


# --- the loss itself ----------------------------------------------------------------------------------

def disk_and_ring(size: int = 32) -> torch.Tensor:
    """A disk (top left: the oldest component) and a ring beside it: beta_0 = 2, beta_1 = 1."""
    m = torch.zeros(1, 1, size, size)
    m[..., 2:8, 2:8] = 1
    m[..., 12:28, 12:28] = 1
    m[..., 15:25, 15:25] = 0
    return m


class TestLoss:
    @pytest.mark.parametrize("construction", ["V", "T"])
    def test_perfect_prediction_is_zero(self, construction):
        for target in (ring(), disk_and_ring(), (torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0)) < 0.5).float()):
            assert fastloss.BettiMatchingLoss(construction=construction)(target.clone(), target).item() == 0.0
        shell = torch.zeros(1, 1, 10, 10, 10)
        shell[..., 2:-2, 2:-2, 2:-2] = 1
        shell[..., 4:-4, 4:-4, 4:-4] = 0
        assert fastloss.BettiMatchingLoss(dims=(0, 2), construction=construction)(shell.clone(), shell).item() == 0.0

    def test_missing_ring_costs_its_unmatched_target_terms(self):
        # the ring alone, predicted empty: its loop (0, 1) unmatched: (0 - 1)^2 (its component is the
        # essential bar, left out as in the reference)
        assert fastloss.BettiMatchingLoss()(torch.zeros_like(ring()), ring()).item() == 1.0
        assert fastloss.BettiMatchingLoss(push_unmatched_to_1_0=True)(torch.zeros_like(ring()), ring()).item() == 4.0
        # disk and ring, the disk predicted: the ring's component and its loop, 1 each
        target = disk_and_ring()
        disk = target.clone()
        disk[..., 10:, 10:] = 0
        assert fastloss.BettiMatchingLoss()(disk, target).item() == 2.0
        assert fastloss.BettiMatchingLoss(dims=[1])(disk, target).item() == 1.0
        assert fastloss.BettiMatchingLoss(dim_weights=(0.25, 3.0))(disk, target).item() == 3.25

    def test_spurious_loop_elsewhere_is_not_matched(self):
        """Betti matching checks where a loop is; Betti-number matching only counts loops."""
        target = torch.zeros(1, 1, 40, 40)
        target[..., 4:14, 4:14] = 1
        target[..., 7:11, 7:11] = 0  # a loop top left
        pred = torch.zeros(1, 1, 40, 40)
        pred[..., 4:14, 4:14] = 1  # the square, filled
        pred[..., 26:36, 26:36] = 1
        pred[..., 29:33, 29:33] = 0  # and a loop bottom right
        pred = pred * 0.9 + 0.05
        rank_rule = fastloss.TopologicalLoss(dims=[1])(pred, target).item()
        location_rule = fastloss.BettiMatchingLoss(dims=[1])(pred, target).item()
        assert rank_rule < 0.05 < 1.0 < location_rule

    def test_gradcheck_float64(self):
        rng = np.random.default_rng(0)
        x = torch.from_numpy((rng.permutation(64).reshape(1, 1, 8, 8) + 0.5) / 64).requires_grad_()
        t = torch.from_numpy((rng.random((1, 1, 8, 8)) < 0.5).astype(np.float64))
        for kwargs in ({}, {"push_unmatched_to_1_0": True, "topology_weights": (0.5, 2.0)}):
            assert torch.autograd.gradcheck(lambda p, kw=kwargs: betti_matching_loss(p, t, **kw), (x,), eps=1e-6, atol=1e-7)
        logits = (torch.logit(x.detach()) * 1.0).requires_grad_()
        assert torch.autograd.gradcheck(lambda z: betti_matching_loss(z, t, from_logits=True), (logits,), eps=1e-6, atol=1e-7)

    def test_gradient_reaches_only_critical_pixels(self):
        target = ring()
        pred = target.clone() * 0.8 + 0.1
        pred[..., 8:11, 15:17] = 0.3  # a weak gap in the ring
        pred.requires_grad_()
        fastloss.BettiMatchingLoss()(pred, target).backward()
        sel = bml.exact_matchings(fastloss.BettiMatchingLoss().config, (1 - pred.detach()).numpy().reshape(1, 32, 32),
                                  (1 - target).numpy().reshape(1, 32, 32), (0, 1))[0]
        critical = set(np.concatenate([sel.pred_birth, sel.pred_death, sel.unmatched_birth, sel.unmatched_death]).tolist())
        assert set(torch.nonzero(pred.grad.flatten()).flatten().tolist()) <= critical

    def test_function_equals_module(self):
        g = torch.Generator().manual_seed(1)
        x, t = torch.rand(2, 2, 16, 16, generator=g), (torch.rand(2, 2, 16, 16, generator=g) < 0.5).float()
        kw = {"dims": [1], "construction": "T", "topology_weights": (2.0, 0.5), "barcode_length_threshold": 0.05}
        assert torch.equal(fastloss.BettiMatchingLoss(**kw)(x, t), betti_matching_loss(x, t, **kw))

    @pytest.mark.parametrize("reduction, shape", [("mean", ()), ("sum", ()), ("none", (2, 3))])
    def test_reductions(self, reduction, shape):
        g = torch.Generator().manual_seed(2)
        x, t = torch.rand(2, 3, 12, 12, generator=g), (torch.rand(2, 3, 12, 12, generator=g) < 0.5).float()
        loss = fastloss.BettiMatchingLoss(reduction=reduction)
        out = loss(x, t)
        assert out.shape == shape == loss.output_shape(x, t)
        per_map = betti_matching_loss(x, t, reduction="none")
        assert torch.allclose(betti_matching_loss(x, t, reduction="sum"), per_map.sum())
        assert torch.allclose(betti_matching_loss(x, t, reduction="mean"), per_map.mean())

    def test_workers_do_not_change_the_result(self):
        g = torch.Generator().manual_seed(3)
        x, t = torch.rand(4, 2, 20, 20, generator=g), torch.rand(4, 2, 20, 20, generator=g)
        a = value_and_grad(fastloss.BettiMatchingLoss(workers=1), x, t)
        b = value_and_grad(fastloss.BettiMatchingLoss(workers=3), x, t)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    def test_dtypes_and_targets(self):
        g = torch.Generator().manual_seed(4)
        x = torch.rand(1, 1, 16, 16, generator=g)
        t = torch.rand(1, 1, 16, 16, generator=g) < 0.5
        v = fastloss.BettiMatchingLoss()(x, t.float())
        assert fastloss.BettiMatchingLoss()(x, t).item() == v.item()  # a bool mask
        assert fastloss.BettiMatchingLoss()(x, t.to(torch.uint8)).item() == v.item()
        assert fastloss.BettiMatchingLoss()(x.double(), t.double()).dtype == torch.float64
        assert fastloss.BettiMatchingLoss()(x.half(), t).dtype == torch.float32

    def test_degenerate_maps(self):
        for shape in [(1, 1, 1, 1), (2, 1, 1, 9), (1, 1, 5, 1)]:
            x = torch.full(shape, 0.5)
            assert fastloss.BettiMatchingLoss()(x, x).item() == 0.0
        assert fastloss.BettiMatchingLoss(dims=(0, 2))(torch.rand(1, 1, 1, 4, 4), torch.ones(1, 1, 1, 4, 4)).item() >= 0

    def test_repr_and_kind(self):
        loss = fastloss.BettiMatchingLoss(dims=[0], push_unmatched_to_1_0=True)
        assert loss.preset_kind == "topology" and "push_unmatched_to_1_0=True" in repr(loss) and "dims=(0,)" in repr(loss)


BAD_CONSTRUCTION = [
    ({"construction": "X"}, ValueError, "`construction` must be one of ['V', 'T'], got 'X'"),
    ({"filtration": "both"}, ValueError, "`filtration` must be one of ['superlevel', 'sublevel'], got 'both'"),
    ({"reduction": "avg"}, ValueError, "`reduction` must be one of ['mean', 'sum', 'none'], got 'avg'"),
    ({"workers": 0}, ValueError, "`workers` must be >= 1, got 0"),
    ({"dims": []}, ValueError, "`dims` must be a non-empty sequence of ints, got ()"),
    ({"topology_weights": (1.0,)}, ValueError, "`topology_weights` must have 2 entries, got 1 ((1.0,))"),
    ({"topology_weights": (1.0, -2.0)}, ValueError, "`topology_weights` must hold finite non-negative floats, got (1.0, -2.0)"),
    ({"topology_weights": "ab"}, TypeError, "`topology_weights` must be a sequence of floats, got str ('ab')"),
    ({"dim_weights": (1.0, "x")}, TypeError, "`dim_weights` must hold floats, got str ('x') in (1.0, 'x')"),
    ({"barcode_length_threshold": -0.1}, ValueError, "`barcode_length_threshold` must be a finite float >= 0, got -0.1"),
    ({"barcode_length_threshold": "0"}, TypeError, "`barcode_length_threshold` must be a float, got str ('0')"),
    ({"push_unmatched_to_1_0": 1}, TypeError, "`push_unmatched_to_1_0` must be a bool, got int"),
]

X, T = torch.rand(1, 1, 8, 8), torch.ones(1, 1, 8, 8)
BAD_CALL = [
    ({}, ("input", T), TypeError, "`input` must be a torch.Tensor, got str"),
    ({}, (torch.rand(8, 8), torch.ones(8, 8)), ValueError, "`input` must have 4 or 5 dimensions (B, C, H, W or B, C, D, H, W), got 2"),
    ({}, (X * 2, T), ValueError, "`input` probabilities must lie in [0.0, 1.0], got values in"),
    ({}, (X, None), ValueError, "`target` is required: a binary mask or a map in [0, 1] of the input's shape"),
    ({}, (X, torch.ones(1, 1, 8, 9)), ValueError, "`input` and `target` must have the same shape, got (1, 1, 8, 8) and (1, 1, 8, 9)"),
    ({}, (X, T * 3), ValueError, "`target` values (a binary mask or a map in [0, 1]) must lie in [0.0, 1.0], got values in [3, 3]"),
    ({}, (X, T * float("nan")), ValueError, "`target` must be finite, got 64 NaN/Inf value(s)"),
    ({"dims": [2]}, (X, T), ValueError, "`dims` must lie in [0, 1] for 2D maps, got [2]"),
    ({"dim_weights": (1.0,)}, (X, T), ValueError, "`dim_weights` holds one weight per homology dimension (index = dim) and must cover dims [0, 1], got 1 entries (1.0,)"),
]


class TestErrors:
    @pytest.mark.parametrize("kwargs, error, message", BAD_CONSTRUCTION)
    def test_bad_arguments(self, kwargs, error, message):
        with pytest.raises(error) as info:
            fastloss.BettiMatchingLoss(**kwargs)
        assert message in str(info.value)

    @pytest.mark.parametrize("kwargs, args, error, message", BAD_CALL)
    def test_bad_calls(self, kwargs, args, error, message):
        with pytest.raises(error) as info:
            fastloss.BettiMatchingLoss(**kwargs)(*args)
        assert message in str(info.value)
        with pytest.raises(error):
            betti_matching_loss(*args, **kwargs)

    def test_without_numba(self, monkeypatch):
        monkeypatch.setattr(ph._jit, "numba", None)
        with pytest.raises(ImportError, match="pip install numba"):
            fastloss.BettiMatchingLoss()


class TestCachedPH:
    def batch(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        t = (torch.rand(3, 1, 24, 24, generator=g) < 0.4).float()
        return torch.rand(3, 1, 24, 24, generator=g), t

    def test_exact_when_refreshing_every_visit(self):
        x, t = self.batch()
        cached, exact = fastloss.CachedPH(fastloss.BettiMatchingLoss(), refresh_every=1), fastloss.BettiMatchingLoss()
        for step in range(3):
            xs = x + 0.01 * step
            a, b = value_and_grad(cached, xs.clamp(0, 1), t), value_and_grad(exact, xs.clamp(0, 1), t)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        info = cached.cache_info()
        assert info["target_misses"] == 3 and info["target_hits"] == 6 and info["target_entries"] == 3

    def test_target_sides_are_cached(self, monkeypatch):
        calls = []
        real = bml.target_side
        monkeypatch.setattr(bml, "target_side", lambda *a: calls.append(1) or real(*a))
        x, t = self.batch(1)
        loss = fastloss.CachedPH(fastloss.BettiMatchingLoss(), refresh_every=1)
        for _ in range(3):
            loss(x.requires_grad_(), t)
        assert len(calls) == 3  # once per distinct target

    def test_stale_matching_is_reused_with_current_values(self):
        x, t = self.batch(2)
        loss = fastloss.CachedPH(fastloss.BettiMatchingLoss(reduction="none"), refresh_every=2)
        first = loss(x.requires_grad_(), t)
        moved = (x.detach() * 0.9 + 0.05).requires_grad_()
        second = loss(moved, t)  # same matching, current values
        f, g = fastloss.BettiMatchingLoss().config.maps(x.detach(), t)
        sels = bml.exact_matchings(fastloss.BettiMatchingLoss().config, f.numpy(), g.numpy(), (0, 1))
        f2, _ = fastloss.BettiMatchingLoss().config.maps(moved.detach(), t)
        expected = bml.matching_loss(f2, g, sels, fastloss.BettiMatchingLoss().config).reshape(3, 1)
        assert loss.cache_info()["hits"] == 3 and torch.allclose(second, expected)
        assert not torch.equal(first, second)

    def test_state_dict_round_trip(self):
        x, t = self.batch(3)
        loss = fastloss.CachedPH(fastloss.BettiMatchingLoss(), refresh_every=3)
        loss(x.requires_grad_(), t)
        resumed = fastloss.CachedPH(fastloss.BettiMatchingLoss(), refresh_every=3)
        resumed.load_state_dict(loss.state_dict())
        a, b = value_and_grad(loss, x, t), value_and_grad(resumed, x, t)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert resumed.cache_info()["hits"] == 3  # pairings came back; target sides are rebuilt on demand

    def test_target_cache_bounded_in_bytes(self, monkeypatch):
        x, t = self.batch(4)
        loss = fastloss.CachedPH(fastloss.BettiMatchingLoss(), refresh_every=1)
        side_bytes = target_side((1 - t[0, 0]).numpy()).nbytes
        monkeypatch.setattr(loss, "max_target_bytes", int(2.5 * side_bytes))
        loss(x.requires_grad_(), t)
        assert loss.cache_info()["target_entries"] == 2 and loss._target_bytes <= 2.5 * side_bytes


@pytest.mark.slow
def test_read_only_install_compiles_without_cache(tmp_path):
    """The matching kernels go through the engine's njit: without a writable cache they compile uncached."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "fastloss", site / "fastloss", ignore=shutil.ignore_patterns("__pycache__"))
    for d in site.rglob("*"):
        if d.is_dir():
            (d / "__pycache__").write_text("")
    for path in [*site.rglob("*"), site]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    env = dict(os.environ, PYTHONPATH=str(site), NUMBA_CACHE_DIR="/dev/null/numba", HOME="/dev/null",
               XDG_CACHE_HOME="/dev/null/cache", PYTHONDONTWRITEBYTECODE="1")
    code = f"""
import torch, fastloss
from fastloss.ph import _jit
assert fastloss.__file__.startswith({str(site)!r}), fastloss.__file__
t = torch.zeros(1, 1, 16, 16); t[..., 4:12, 4:12] = 1; t[..., 6:10, 6:10] = 0
print(repr(fastloss.BettiMatchingLoss()(torch.zeros_like(t), t).item()))
assert {{"dual_bars", "dual_match", "primal_bars", "primal_match", "_cell_levels"}} <= set(_jit.UNCACHED), _jit.UNCACHED
"""
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) == 1.0
