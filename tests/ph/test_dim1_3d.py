"""Dim 1 of 3D maps by the native engine (fastloss.ph.loops3d) against cripser: every dimension at once.

Tie-free volumes: the whole diagram (dims 0, 1, 2, births, deaths, critical voxels, the essential bar)
equals cripser's, both constructions; the loss and its gradient equal the cripser backend's bitwise.
Volumes with ties: the same (dim, birth, death) values.
"""

import itertools

import cripser
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fastloss
from fastloss import ph
from fastloss.functional import topological_loss
from fastloss.ph import loops3d, sort

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALL = (0, 1, 2)


def reference(f: np.ndarray, construction: str) -> np.ndarray:
    return cripser.compute_ph(np.asarray(f, dtype=np.float64), filtration=construction, maxdim=2, location="yes")


def native(f: np.ndarray, construction: str) -> np.ndarray:
    return ph.persistence(f, construction, ALL, backend="native").to_cripser()


def canon(rows: np.ndarray) -> list[tuple]:
    return sorted(map(tuple, np.asarray(rows, dtype=np.float64).tolist()))


@st.composite
def tie_free_volumes(draw, max_side: int):
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = int(np.prod(shape))
    f = ((rng.permutation(n) + 0.5 * rng.random(n)) / n).reshape(shape)
    return f.astype(draw(st.sampled_from([np.float32, np.float64])))


@st.composite
def tied_volumes(draw, max_side: int):
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["quantised", "plateau", "constant", "mask"]))
    f = rng.random(shape)
    if kind == "quantised":
        f = np.floor(f * draw(st.integers(2, 6))) / 6
    elif kind == "plateau":
        lo = [int(rng.integers(0, s)) for s in shape]
        f[tuple(slice(a, a + 1 + s // 2) for a, s in zip(lo, shape, strict=True))] = rng.random()
    elif kind == "constant":
        f[...] = 0.25
    else:
        f = 1.0 - (f < rng.random()).astype(np.float64)
    return f.astype(draw(st.sampled_from([np.float32, np.float64])))


def torus(shape=(12, 14, 13), seed=0) -> np.ndarray:
    """A solid torus (one loop, long-lived) under tie-free noise."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    ring = (np.sqrt(y**2 + x**2) - 0.55) ** 2 + z**2
    noise = np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape) / np.prod(shape)
    return (ring + 0.01 * noise).astype(np.float64)


class TestExact:
    @SETTINGS
    @given(tie_free_volumes(12), st.sampled_from("VT"))
    @example(np.arange(7.0).reshape(1, 1, 7)[..., ::-1].copy(), "V")
    @example(np.array([[[0.5]]]), "T")
    def test_tie_free_diagram_equals_cripser(self, f, construction):
        assert canon(native(f, construction)) == canon(reference(f, construction))

    @pytest.mark.parametrize("shape", [(32, 32, 32), (20, 37, 9), (5, 64, 3)])
    @pytest.mark.parametrize("construction", ["V", "T"])
    def test_larger_volumes(self, shape, construction):
        rng = np.random.default_rng(sum(shape))
        f = rng.random(shape)
        assert canon(native(f, construction)) == canon(reference(f, construction))
        g = f.astype(np.float32)
        assert canon(native(g, construction)) == canon(reference(g, construction))

    @pytest.mark.slow
    @pytest.mark.parametrize("construction", ["V", "T"])
    def test_48_cubed_smooth_and_noisy(self, construction):
        rng = np.random.default_rng(48)
        noise = rng.random((48, 48, 48))
        smooth = noise.copy()
        for axis in range(3):  # a smoothed field: long-lived loops and voids, not only noise
            smooth = (smooth + np.roll(smooth, 1, axis) + np.roll(smooth, -1, axis)) / 3
        for f in (noise, smooth):
            assert canon(native(f, construction)) == canon(reference(f, construction))

    def test_a_torus_has_one_long_loop(self):
        f = torus()
        for construction in "VT":
            rows = native(f, construction)
            assert canon(rows) == canon(reference(f, construction))
            loops = rows[rows[:, 0] == 1]
            assert (loops[:, 2] - loops[:, 1] > 0.1).sum() == 1

    def test_row_order_matches_cripser(self):
        """Dims in cripser's order (0, 1, 2); dim 1 by decreasing birth, as cripser emits it."""
        f = np.random.default_rng(3).random((15, 16, 17))
        for construction in "VT":
            mine, ref = native(f, construction), reference(f, construction)
            assert np.array_equal(mine[:, 0], ref[:, 0])
            one = mine[:, 0] == 1
            assert np.array_equal(mine[one, 1], ref[one, 1])

    def test_subsets_of_dims(self):
        f = np.random.default_rng(5).random((9, 10, 11)).astype(np.float32)
        for construction in "VT":
            full = native(f, construction)
            for dims in [(1,), (0, 1), (1, 2), (0, 2)]:
                part = ph.persistence(f, construction, dims, backend="native").to_cripser()
                assert canon(part) == canon(full[np.isin(full[:, 0], dims)])

    def test_critical_voxels_carry_the_values(self):
        f = np.random.default_rng(6).random((9, 8, 7)).astype(np.float32)
        for construction in "VT":
            d = ph.persistence(f, construction, (1,), backend="native")
            flat = np.append(f.reshape(-1).astype(np.float64), np.inf)
            assert len(d) > 0 and (d.dim == 1).all()
            assert np.array_equal(flat[d.birth_index], d.birth) and np.array_equal(flat[d.death_index], d.death)


class TestTies:
    @SETTINGS
    @given(tied_volumes(8), st.sampled_from("VT"))
    def test_values_equal_cripser(self, f, construction):
        assert canon(native(f, construction)[:, :3]) == canon(reference(f, construction)[:, :3])


class TestKernels:
    @pytest.mark.parametrize("construction", ["V", "T"])
    def test_every_cell_is_paired_once(self, construction):
        """The forests pair every vertex but one (dim 0) and every cube (dim 2); what they leave is square
        (as many 1-cells as 2-cells: a box has chi = 1) and the reduction pairs all of it."""
        f = np.random.default_rng(7).random((6, 7, 8))
        fl = sort.filtration(f)
        _, h, w = fl.shape
        sa, sb, n = (h + 2) * (w + 2), w + 2, fl.porder.size
        t = construction == "T"
        ekey, skey, ckey, emap, smap = loops3d.new_keys(fl, t)
        big = 16 * n
        paired = np.zeros(fl.rank.size, np.uint8)
        er, sr = loops3d.by_rank(emap, smap, fl.porder)
        loops3d.forests(fl, t, ckey, er, sr, paired, emap, smap)
        own = np.empty(3 * fl.rank.size, np.int32)
        *_, stats = loops3d.loops(fl.porder, fl.rank, fl.level, ekey, skey, emap, smap, er, sr, paired, own, sa, sb,
                                  not t)
        bits = np.unpackbits(paired[:, None], axis=1, bitorder="little")
        edge_forest, square_forest = int(bits[:, :3].sum()), int(bits[:, 3:6].sum())
        edges, squares = int((ekey < big).sum()), int((skey < big).sum())
        cubes = int((ckey < big).sum())
        if t:  # T: V-cubes are its vertices, V-squares its edges, V-edges its squares, voxels its cubes
            assert square_forest == cubes - 1 and edge_forest == n
            assert squares - square_forest == edges - edge_forest
        else:
            assert edge_forest == n - 1 and square_forest == cubes
            assert edges - edge_forest == squares - square_forest
        assert stats[0] == 0  # every column found its pivot

    @pytest.mark.parametrize("construction", ["V", "T"])
    def test_reused_scratch_is_overwritten(self, construction):
        """The reductions' row-owner table is per-thread scratch: whatever an earlier call left in it (here:
        poison) does not change the pairs."""
        fl = sort.filtration(np.random.default_rng(5).random((9, 8, 7)))
        first = loops3d.complex_of(fl, construction, lean=True).dims
        loops3d.owner_table(fl.rank.size)[:] = 12345
        again = loops3d.complex_of(fl, construction, lean=True).dims
        for d in (0, 1, 2):
            assert all(np.array_equal(a, b) for a, b in zip(first[d], again[d], strict=True))
        assert len(first[1][0]) > 0

    def test_sort6_network_sorts(self):
        """cell_keys orders a voxel's edges with a sorting network: it sorts every 0/1 input (so, by the 0-1
        principle, every input) and random ints with repeats."""
        for bits in itertools.product((0, 1), repeat=6):
            assert list(loops3d._sort6(*bits)) == sorted(bits)
        rng = np.random.default_rng(0)
        for _ in range(200):
            x = [int(v) for v in rng.integers(-5, 5, 6)]
            assert list(loops3d._sort6(*x)) == sorted(x)

    def test_squares_of_spans_two_edges(self):
        """SQUARES_OF[mine] holds the squares whose two edges at the voxel are both in ``mine``: a pair of
        edges on two axes (one square each), none when the edges are on one axis."""
        assert loops3d.SQUARES_OF[0b111111] == (1 << 12) - 1
        assert loops3d.SQUARES_OF[0b000011] == 0  # both edges along axis 0: no square
        for g1, g2 in itertools.combinations(range(6), 2):
            count = bin(int(loops3d.SQUARES_OF[(1 << g1) | (1 << g2)])).count("1")
            assert count == (0 if g1 >> 1 == g2 >> 1 else 1)

    @pytest.mark.parametrize("construction", ["V", "T"])
    def test_forest_flags_name_the_forest_cells(self, construction):
        """The flags the forests set above each voxel's places (what the dim-1 scan reads) name exactly the
        cells they mark in ``paired``, and leave the places themselves as cell_keys wrote them."""
        f = np.random.default_rng(3).random((7, 5, 6))
        fl = sort.filtration(f)
        _, h, w = fl.shape
        sa, sb = (h + 2) * (w + 2), w + 2
        t = construction == "T"
        _, _, ckey, emap, smap = loops3d.new_keys(fl, t)
        before = emap.copy(), smap.copy()
        paired = np.zeros(fl.rank.size, np.uint8)
        er, sr = loops3d.by_rank(emap, smap, fl.porder)
        loops3d.forests(fl, t, ckey, er, sr, paired, emap, smap)
        marked = set()
        for p in np.flatnonzero(fl.rank < fl.porder.size):
            for maps, old, flags, cells, typ in ((emap, before[0], loops3d.EDGE_FLAGS, 6, "edge"),
                                                 (smap, before[1], loops3d.SQUARE_FLAGS, 12, "sq")):
                assert maps[p] & ((1 << flags) - 1) == old[p]  # the places are untouched
                for place in range(cells):
                    if (int(maps[p]) >> (flags + place)) & 1:
                        g = (int(maps[p]) >> (4 * place)) & 15
                        assert g != 15  # a flag names a cell that is there
                        if typ == "edge":
                            a = g >> 1
                            marked.add((int(p) - (g & 1) * (sa, sb, 1)[a], a))
                        else:
                            o = g >> 2
                            u, v = [x for x in range(3) if x != o]
                            base = int(p) - ((g >> 1) & 1) * (sa, sb, 1)[u] - (g & 1) * (sa, sb, 1)[v]
                            marked.add((base, 3 + o))
        bits = {(int(q), b) for q in np.flatnonzero(paired) for b in range(6) if (paired[q] >> b) & 1}
        assert marked == bits and len(bits) > 0


class TestLoss:
    @pytest.mark.parametrize("construction", ["V", "T"])
    def test_loss_and_gradient_bitwise_cripser(self, construction):
        shape = (2, 1, 10, 11, 9)
        g = torch.Generator().manual_seed(1)
        n = int(np.prod(shape))
        pred = (0.05 + 0.9 * (torch.randperm(n, generator=g).float() + 0.5) / n).reshape(shape)
        target = torch.zeros(shape)
        target[..., 2:8, 2:9, 2:7] = 1
        target[..., 2:8, 4:6, 3:5] = 0  # a tunnel
        grads = []
        values = []
        for backend in ("native", "cripser"):
            x = pred.clone().requires_grad_()
            v = topological_loss(x, target, construction=construction, backend=backend, reduction="none")
            v.sum().backward()
            values.append(v.detach())
            grads.append(x.grad)
        assert torch.equal(values[0], values[1]) and torch.equal(grads[0], grads[1])
        assert grads[0].abs().sum() > 0

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.integers(0, 2**32 - 1), st.sampled_from("VT"))
    def test_loss_with_ties_same_value(self, seed, construction):
        rng = np.random.default_rng(seed)
        shape = (1, 1, *rng.integers(2, 8, size=3).tolist())
        levels = int(rng.integers(2, 6))
        pred = torch.from_numpy(np.floor(rng.random(shape) * levels) / levels).float()
        target = torch.from_numpy(rng.random(shape) < 0.5).float()
        a = topological_loss(pred, target, construction=construction, backend="native", reduction="none")
        b = topological_loss(pred, target, construction=construction, backend="cripser", reduction="none")
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)

    def test_auto_is_native_for_every_dim(self):
        assert ph.resolve("auto", 3, ALL) == "native" and ph.resolve("native", 3, ALL) == "native"
        loss = fastloss.TopologicalLoss(backend="native")
        x = torch.rand(1, 1, 6, 6, 6)
        assert torch.isfinite(loss(x, (x > 0.5).float()))
