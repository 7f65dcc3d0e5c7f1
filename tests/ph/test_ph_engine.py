"""The native PH engine (fastloss.ph) against cripser: exact diagrams, ties, the loss, backends, fallbacks.

cripser 0.0.37 has one known defect these tests route around: a 2D map one pixel wide (1 x N or N x 1)
under "V" comes back as N essential components (no edges at all). The same complex given to cripser as
a 3D array with a singleton axis, or under "T", or as a 1D array, is right, and so is the engine; the
reference below asks cripser for the 3D form of such maps.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cripser
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from shapes import ring, soft_prediction

import fastloss
from fastloss import ph
from fastloss.functional import topological_loss
from fastloss.losses import topological as topo
from fastloss.ph import sort

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(f: np.ndarray, construction: str, dims) -> np.ndarray:
    """cripser's rows for ``dims`` (around its 1-pixel-wide 2D "V" defect, see the module docstring)."""
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 2 and construction == "V" and min(f.shape) == 1:
        rows = cripser.compute_ph(f[None], filtration="V", maxdim=1, location="yes")
        rows = rows[rows[:, 0] != 2].copy()
        rows[:, [3, 4, 5, 6, 7, 8]] = rows[:, [4, 5, 3, 7, 8, 6]]  # drop the singleton axis
        rows[~np.isfinite(rows[:, 2]), 6:9] = -1
        rows[np.isfinite(rows[:, 2]), 8] = 0
        rows[:, 5] = 0
    else:
        rows = cripser.compute_ph(f, filtration=construction, maxdim=f.ndim - 1, location="yes")
    return rows[np.isin(rows[:, 0], list(dims))]


def canon(rows: np.ndarray) -> list[tuple]:
    """Rows as a sorted multiset (exact values; coordinates are integers)."""
    return sorted(map(tuple, np.asarray(rows, dtype=np.float64).tolist()))


def values(rows: np.ndarray) -> list[tuple]:
    return canon(rows[:, :3])


@st.composite
def tie_free_maps(draw, ndim: int, max_side: int):
    """A map of distinct values (a random permutation plus jitter), float32 or float64."""
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(ndim))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    f = ((rng.permutation(n) + 0.5 * rng.random(n)) / n).reshape(shape).astype(dtype)
    return f


@st.composite
def tied_maps(draw, ndim: int, max_side: int):
    """Maps with ties: quantised to a few levels, a plateau in a random map, constant, or a binary mask."""
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(ndim))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["quantised", "plateau", "constant", "mask"]))
    f = rng.random(shape)
    if kind == "quantised":
        levels = draw(st.integers(2, 6))
        f = np.floor(f * levels) / levels
    elif kind == "plateau":
        lo = [int(rng.integers(0, s)) for s in shape]
        f[tuple(slice(a, a + 1 + s // 2) for a, s in zip(lo, shape, strict=True))] = rng.random()
    elif kind == "constant":
        f[...] = 0.25
    else:
        f = 1.0 - (f < rng.random()).astype(np.float64)
    return f.astype(draw(st.sampled_from([np.float32, np.float64])))


def native_rows(f, construction):
    """The union-find passes' dims (0 and the top one; 3D dim 1: tests/ph/test_dim1_3d.py)."""
    return ph.persistence(f, construction, (0, f.ndim - 1), backend="native").to_cripser()


class TestExactDiagrams:
    """Tie-free maps: dimensions, values and critical pixels equal cripser's, essential bars included."""

    @SETTINGS
    @given(tie_free_maps(2, 64), st.sampled_from("VT"))
    @example(np.array([[0.3, 0.1, 0.7, 0.2, 0.9]], np.float32), "V")
    @example(np.array([[0.3], [0.1], [0.7], [0.2], [0.9]]), "V")
    @example(np.array([[0.5]]), "T")
    def test_2d(self, f, construction):
        assert canon(native_rows(f, construction)) == canon(reference(f, construction, (0, 1)))

    @SETTINGS
    @given(tie_free_maps(3, 8), st.sampled_from("VT"))
    @example(np.arange(7.0).reshape(1, 1, 7)[..., ::-1].copy(), "V")
    def test_3d_dims_0_and_2(self, f, construction):
        assert canon(native_rows(f, construction)) == canon(reference(f, construction, (0, 2)))

    @pytest.mark.parametrize("shape", [(100, 130), (257, 255), (20, 30, 17)])
    @pytest.mark.parametrize("construction", ["V", "T"])
    def test_larger_maps(self, shape, construction):
        """Past the radix-sort threshold (4096 pixels), float32 and float64 keys."""
        rng = np.random.default_rng(sum(shape))
        f = rng.random(shape)  # float64, not float32 numbers: 64-bit keys
        dims = (0, len(shape) - 1)
        ref = canon(reference(f, construction, dims))
        assert canon(native_rows(f, construction)) == ref
        g = f.astype(np.float32)
        assert canon(native_rows(g, construction)) == canon(reference(g, construction, dims))

    def test_row_order_matches_cripser(self):
        """Rows in cripser's order: dim 0 by increasing death then the essential bar, the top dimension
        by decreasing birth (bars dying at one pixel may come in another order). select_bars breaks
        persistence ties by row order, so this is what makes the loss bitwise equal under ties."""
        f = np.random.default_rng(3).random((40, 50))
        for construction in "VT":
            mine, ref = native_rows(f, construction), reference(f, construction, (0, 1))
            assert np.array_equal(mine[:, 0], ref[:, 0])
            zero = mine[:, 0] == 0
            assert np.array_equal(mine[zero, 2], ref[zero, 2]) and np.array_equal(mine[~zero, 1], ref[~zero, 1])

    def test_float32_and_float64_copies_agree(self):
        f = np.random.default_rng(4).random((70, 70)).astype(np.float32)
        for construction in "VT":
            assert canon(native_rows(f, construction)) == canon(native_rows(f.astype(np.float64), construction))

    def test_essential_bar_convention(self):
        """cripser's essential bar: death inf, death coordinates -1; the Diagram's: death index == size."""
        f = np.random.default_rng(5).random((6, 7))
        d = ph.persistence(f, "V", backend="native")  # 2D: every dim
        essential = ~np.isfinite(d.death)
        assert essential.sum() == 1 and d.death_index[essential][0] == f.size
        assert d.birth_index[essential][0] == f.argmin() and d.dim[essential][0] == 0
        rows = d.to_cripser()
        assert (rows[essential, 6:9] == -1).all()
        back = ph.Diagram.from_cripser(rows, f.shape)
        for name in ("dim", "birth", "death", "birth_index", "death_index"):
            assert np.array_equal(getattr(back, name), getattr(d, name))

    def test_critical_pixels_carry_the_values(self):
        f = np.random.default_rng(6).random((9, 8, 7)).astype(np.float32)
        for construction in "VT":
            d = ph.persistence(f, construction, (0, 2), backend="native")
            flat = np.append(f.reshape(-1).astype(np.float64), np.inf)
            assert np.array_equal(flat[d.birth_index], d.birth) and np.array_equal(flat[d.death_index], d.death)


class TestTies:
    """Maps with ties: the same (dim, birth, death) values as cripser (critical pixels may differ)."""

    @SETTINGS
    @given(tied_maps(2, 40), st.sampled_from("VT"))
    def test_2d_values(self, f, construction):
        assert values(native_rows(f, construction)) == values(reference(f, construction, (0, 1)))

    @SETTINGS
    @given(tied_maps(3, 7), st.sampled_from("VT"))
    def test_3d_values(self, f, construction):
        assert values(native_rows(f, construction)) == values(reference(f, construction, (0, 2)))

    def test_negative_zero_ties_positive_zero(self):
        f = np.array([[0.0, -0.0, 0.5], [-0.0, 0.7, 0.0], [0.2, 0.0, -0.0]], np.float32)
        for construction in "VT":
            assert values(native_rows(f, construction)) == values(reference(f, construction, (0, 1)))

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("shape", [(12, 12), (300, 20)])
    def test_filtration_order_is_a_stable_sort(self, dtype, shape):
        rng = np.random.default_rng(7)
        v = (np.round(rng.standard_normal(shape) * 3) / 3).astype(dtype)
        v.reshape(-1)[:4] = [-0.0, 0.0, -0.0, 1e-3]
        fl = sort.filtration(v)
        expected = np.argsort(np.where(v == 0, 0, v).reshape(-1), kind="stable")
        assert np.array_equal(fl.pixels(np.arange(v.size)), expected)
        level = fl.level[:-1]
        assert np.array_equal(level[1:] != level[:-1], np.diff(v.reshape(-1)[expected]) != 0)


def tie_free_prediction(shape, seed=0):
    """Probabilities with distinct values everywhere (a float32 network output without saturation)."""
    g = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape))
    return (0.05 + 0.9 * (torch.randperm(n, generator=g).float() + 0.5) / n).reshape(shape)


class TestLossBackends:
    @pytest.mark.parametrize("construction", ["V", "T"])
    @pytest.mark.parametrize("size", [(1, 2, 24, 24), (1, 1, 2, 30), (2, 1, 7, 6, 5)])
    def test_native_equals_cripser_without_ties(self, construction, size):
        """Loss and gradient bitwise equal to the cripser backend (2D all dims, 3D all dims via auto)."""
        target = (torch.rand(size, generator=torch.Generator().manual_seed(1)) > 0.6).float()
        pred = tie_free_prediction(size, seed=2)
        out = {}
        for backend in ("auto", "cripser"):
            p = pred.clone().requires_grad_()
            v = topological_loss(p, target, construction=construction, backend=backend, reduction="none")
            v.sum().backward()
            out[backend] = (v.detach(), p.grad)
        assert torch.equal(out["auto"][0], out["cripser"][0]) and torch.equal(out["auto"][1], out["cripser"][1])
        assert torch.count_nonzero(out["auto"][1]) > 0

    @pytest.mark.parametrize("construction", ["V", "T"])
    def test_gradient_matches_cripser_torch(self, construction):
        """As test_topological's cripser test, for the native engine on a tie-free prediction."""
        target = ring()
        pred = tie_free_prediction(target.shape, seed=3)
        ours = pred.clone().requires_grad_()
        topological_loss(ours, target, construction=construction, reduction="sum", backend="native").backward()
        ref = pred.clone().requires_grad_()
        rows = cripser.compute_ph_torch((1 - ref)[0, 0], filtration=construction, maxdim=1, location="yes")
        betti = topo.betti_numbers(target[0, 0].numpy(), construction)
        birth = rows[:, 1]
        death = torch.where(torch.isinf(rows[:, 2]), torch.ones_like(rows[:, 2]), rows[:, 2])
        persistence = (death - birth).detach()
        total = 0
        for k in (0, 1):
            idx = torch.nonzero(rows[:, 0] == k).flatten()
            ranked = idx[torch.argsort(-persistence[idx], stable=True)]
            keep, drop = ranked[: betti[k]], ranked[betti[k] :]
            total = total + (birth[keep] ** 2 + (1 - death[keep]) ** 2).sum() + ((death[drop] - birth[drop]) ** 2).sum()
        total.backward()
        assert torch.count_nonzero(ref.grad) > 10
        assert torch.allclose(ours.grad, ref.grad.float(), atol=1e-6)

    @pytest.mark.parametrize("construction", ["V", "T"])
    @pytest.mark.parametrize("shape", [(2, 2, 32, 32), (1, 2, 8, 7, 9)])
    def test_ties_same_value_same_selected_values(self, construction, shape):
        """With ties (saturated, quantised predictions) the loss is bitwise the cripser backend's, and
        the gradient is one of the same selection rule: the gathered values are the same, bar by bar."""
        g = torch.Generator().manual_seed(8)
        target = (torch.rand(shape, generator=g) > 0.5).float()
        pred = (torch.rand(shape, generator=g) * 1.4 - 0.2).clamp(0, 1)  # plateaus at 0 and 1
        pred[0, 0] = torch.round(pred[0, 0] * 4) / 4  # a quantised map
        values_by = {}
        for backend in ("auto", "cripser"):
            value = topological_loss(pred, target, construction=construction, backend=backend, reduction="none")
            values_by[backend] = value
        assert torch.equal(values_by["auto"], values_by["cripser"])
        cfg = topo.TopologyConfig(construction=construction)
        f = cfg.filtration(pred).numpy()
        masks = target.reshape(f.shape).numpy()
        dims = cfg.dims_for(f.ndim - 1)
        for i in range(len(f)):
            flat = np.append(f[i].reshape(-1), 1.0)
            betti = topo.betti_numbers(masks[i], construction, "cripser")
            a = topo.fresh_selection(f[i], betti, dims, construction, "auto")
            b = topo.fresh_selection(f[i], betti, dims, construction, "cripser")
            for name in ("keep_birth", "keep_death", "drop_birth", "drop_death"):
                assert np.array_equal(flat[getattr(a, name)], flat[getattr(b, name)]), name

    def test_gradcheck_native_float64(self):
        g = torch.Generator().manual_seed(0)
        pred = (0.05 + 0.9 * torch.rand(1, 2, 9, 9, generator=g, dtype=torch.float64)).requires_grad_()
        target = ring(9, outer=1, width=2).double().repeat(1, 2, 1, 1)
        assert torch.autograd.gradcheck(
            lambda p: topological_loss(p, target, backend="native"), (pred,), eps=1e-7, atol=1e-5
        )

    @pytest.mark.parametrize("backend", ["auto", "native"])
    def test_workers_do_not_change_result(self, backend):
        target = ring().repeat(3, 2, 1, 1)
        pred = soft_prediction(target, seed=5, noise=0.8)
        results = []
        for workers in (1, 2, 4, None):
            p = pred.clone().requires_grad_()
            value = topological_loss(p, target, workers=workers, reduction="none", backend=backend)
            value.sum().backward()
            results.append((value.detach(), p.grad))
        for value, grad in results[1:]:
            assert torch.equal(value, results[0][0]) and torch.equal(grad, results[0][1])

    def test_one_pixel_wide_maps(self):
        """A 1 x N map under "V": the native loss equals cripser's on the same map as a 3D array (cripser's
        2D form of it has no edges, see the module docstring)."""
        target = (torch.rand(1, 1, 1, 40, generator=torch.Generator().manual_seed(3)) > 0.5).float()
        pred = tie_free_prediction(target.shape, seed=5)
        native = topological_loss(pred, target, backend="native")
        as_3d = topological_loss(pred[:, :, None], target[:, :, None], backend="cripser")
        assert torch.equal(native, as_3d) and native > 0

    def test_3d_dims_0_2_never_call_cripser(self, monkeypatch):
        def boom(*args, **kwargs):
            raise AssertionError("cripser called")

        monkeypatch.setattr(cripser, "compute_ph", boom)
        target = torch.zeros(1, 1, 8, 8, 8)
        target[..., 2:6, 2:6, 2:6] = 1
        target[..., 3:5, 3:5, 3:5] = 0
        pred = tie_free_prediction(target.shape)
        value = fastloss.TopologicalLoss(dims=[0, 2], backend="auto")(pred, target)
        assert torch.isfinite(value)

    def test_3d_dim_1_auto_is_native(self, monkeypatch):
        """auto in 3D with dim 1: the native engine (cripser never called), the cripser backend's loss."""
        target = torch.zeros(1, 1, 9, 9, 9)
        target[..., 2:7, 2:7, 2:7] = 1
        target[..., 2:7, 4:5, 4:5] = 0  # a tunnel: beta_1 = 1
        pred = tie_free_prediction(target.shape, seed=4)
        b = topological_loss(pred, target, backend="cripser")

        def boom(*args, **kwargs):
            raise AssertionError("cripser called")

        monkeypatch.setattr(cripser, "compute_ph", boom)
        a = topological_loss(pred, target, backend="auto")
        assert torch.equal(a, b)
        assert ph.resolve("auto", 3, (0, 1, 2)) == "native"
        rows = topo.persistence_diagram((1 - pred)[0, 0].numpy(), "V", backend="auto")
        assert sorted(set(rows[:, 0].astype(int))) == [0, 1, 2]


class TestBackendErrors:
    @pytest.mark.parametrize("make", [
        lambda: fastloss.TopologicalLoss(backend="gpu"),
        lambda: topological_loss(ring(), ring(), backend="gpu"),
        lambda: topo.TopologyConfig(backend="gpu"),
        lambda: topo.persistence_diagram(np.zeros((3, 3)), backend="gpu"),
        lambda: ph.persistence(np.zeros((3, 3)), backend="gpu"),
    ])
    def test_bad_backend(self, make):
        with pytest.raises(ValueError, match=r"`backend` must be one of \['auto', 'native', 'cripser'\], got 'gpu'"):
            make()

    @pytest.mark.parametrize("dims", [None, [1], [0, 1]])
    def test_native_3d_dim_1_is_computed(self, dims):
        """The former ValueError for 3D dim 1 under backend='native' is gone: the loss is cripser's."""
        target = torch.zeros(1, 1, 6, 6, 6)
        target[..., 1:5, 1:5, 1:5] = 1
        target[..., 1:5, 2:4, 2:4] = 0
        pred = tie_free_prediction(target.shape, seed=2)
        a = fastloss.TopologicalLoss(dims=dims, backend="native")(pred, target)
        b = fastloss.TopologicalLoss(dims=dims, backend="cripser")(pred, target)
        assert torch.equal(a, b)

    def test_native_other_ndim(self):
        with pytest.raises(ValueError, match=r"backend='native' computes 2D and 3D maps, got a 1D map: use "
                                             r"backend='cripser'"):
            ph.resolve("native", 1, (0,))
        with pytest.raises(ValueError, match=r"backend='native' computes dims \[0, 1, 2\] of 3D maps, got dims \[3\]"):
            ph.resolve("native", 3, (3,))

    def test_repr_names_backend(self):
        assert "backend='native'" in repr(fastloss.TopologicalLoss(backend="native"))

    def test_cached_ph_uses_the_backend(self, monkeypatch):
        calls = []
        real = topo.persistence_diagram
        monkeypatch.setattr(topo, "persistence_diagram", lambda *a, **k: calls.append(k["backend"]) or real(*a, **k))
        loss = fastloss.CachedPH(fastloss.TopologicalLoss(backend="cripser"), refresh_every=1)
        loss(soft_prediction(ring()), ring())
        assert calls and set(calls) == {"cripser"}


def run_python(code: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)


LOSS_SNIPPET = """
import torch, fastloss
t = torch.zeros(1, 1, 16, 16); t[..., 4:12, 4:12] = 1; t[..., 6:10, 6:10] = 0
g = torch.Generator().manual_seed(0)
p = (0.05 + 0.9 * torch.rand(1, 1, 16, 16, generator=g)).requires_grad_()
"""


@pytest.mark.slow
def test_without_numba_auto_falls_back_to_cripser(tmp_path):
    code = "import sys; sys.modules['numba'] = None\n" + LOSS_SNIPPET + """
from fastloss import ph
assert not ph.HAVE_NUMBA
a = fastloss.TopologicalLoss()(p, t)
b = fastloss.TopologicalLoss(backend="cripser")(p, t)
assert torch.equal(a, b), (a, b)
assert fastloss.losses.topological.betti_numbers(t[0, 0].numpy()) == (1, 1)
try:
    fastloss.TopologicalLoss(backend="native")
except ImportError as exc:
    assert "pip install numba" in str(exc), exc
else:
    raise AssertionError("no ImportError")
print("ok")
"""
    out = run_python(code, dict(os.environ), ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
def test_read_only_install_compiles_without_cache(tmp_path):
    """A read-only package with no writable numba cache location: kernels compile uncached and work."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "fastloss", site / "fastloss", ignore=shutil.ignore_patterns("__pycache__"))
    for d in site.rglob("*"):
        if d.is_dir():
            (d / "__pycache__").write_text("")  # not a directory: unwritable in-tree cache, even for root
    for path in [*site.rglob("*"), site]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    env = dict(os.environ, PYTHONPATH=str(site), NUMBA_CACHE_DIR="/dev/null/numba", HOME="/dev/null",
               XDG_CACHE_HOME="/dev/null/cache", PYTHONDONTWRITEBYTECODE="1")
    code = LOSS_SNIPPET + f"""
assert fastloss.__file__.startswith({str(site)!r}), fastloss.__file__
from fastloss.ph import _jit
v = fastloss.TopologicalLoss(backend="native")(p, t)
v.backward()
assert {{"find", "components", "holes_v", "radix_sort32", "_count_2d"}} <= set(_jit.UNCACHED), _jit.UNCACHED
print(repr(v.item()))
"""
    try:
        out = run_python(code, env, tmp_path)
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert out.returncode == 0, out.stderr
    exec(LOSS_SNIPPET, ns := {})
    expected = fastloss.TopologicalLoss(backend="native")(ns["p"], ns["t"]).item()
    assert float(out.stdout.strip()) == expected


def test_nan_map_is_rejected():
    f = np.zeros((4, 4))
    f[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ph.persistence(f, backend="native")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([2, 3]), st.integers(0, 2**32 - 1), st.sampled_from("VT"))
def test_loss_with_ties_equals_cripser(ndim, seed, construction):
    """Quantised predictions (ties everywhere): bitwise the cripser backend's loss. Persistence ties are
    broken by row order, and both engines order rows by death (dim 0) / birth (top dim) values."""
    rng = np.random.default_rng(seed)
    shape = (2, 1, *rng.integers(2, 20 if ndim == 2 else 7, size=ndim).tolist())
    levels = int(rng.integers(2, 6))
    pred = torch.from_numpy(np.floor(rng.random(shape) * levels) / levels).float()
    target = torch.from_numpy(rng.random(shape) < 0.5).float()
    dims = [0, ndim - 1]
    a = topological_loss(pred, target, construction=construction, dims=dims, backend="auto", reduction="none")
    b = topological_loss(pred, target, construction=construction, dims=dims, backend="cripser", reduction="none")
    assert torch.equal(a, b)
