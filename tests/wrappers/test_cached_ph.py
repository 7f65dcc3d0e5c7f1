"""CachedPH: the exact target side, pairing reuse, async refresh, state, bounds."""

import copy
import threading
import time

import pytest
import torch
from shapes import ring, soft_prediction
from steps import dataset

import fastloss
from fastloss import CachedPH
from fastloss.losses import topological as topo


def count_ph(monkeypatch):
    counter = {"n": 0}

    def counting(real):
        def counted(*args, **kwargs):
            counter["n"] += 1
            return real(*args, **kwargs)

        return counted

    # every diagram, CachedPH's too, goes through here; target Betti numbers by labelling through the second
    monkeypatch.setattr(topo, "persistence_diagram", counting(topo.persistence_diagram))
    monkeypatch.setattr(fastloss.ph, "betti_numbers", counting(fastloss.ph.betti_numbers))
    return counter


class TestCachedPH:
    def test_refresh_every_one_is_exact(self):
        targets = torch.cat(dataset())
        cached, exact = CachedPH(fastloss.TopologicalLoss(), refresh_every=1), fastloss.TopologicalLoss()
        for epoch in range(3):
            pred = soft_prediction(targets, seed=epoch, noise=0.6)
            a, b = pred.clone().requires_grad_(), pred.clone().requires_grad_()
            va, vb = cached(a, targets), exact(b, targets)
            va.backward()
            vb.backward()
            assert torch.equal(va, vb) and torch.equal(a.grad, b.grad)

    def test_repeated_target_computes_target_ph_once(self, monkeypatch):
        target = dataset(1)[0]
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=1)
        counter = count_ph(monkeypatch)
        for seed in range(5):
            loss(soft_prediction(target, seed=seed), target)
        info = loss.cache_info()
        assert info["target_misses"] == 1 and info["target_hits"] == 4
        assert counter["n"] == 1 + 5  # one target diagram, five prediction diagrams

    def test_pairing_reused_between_refreshes(self, monkeypatch):
        targets = torch.cat(dataset())
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=3)
        counter = count_ph(monkeypatch)
        for _ in range(7):
            loss(soft_prediction(targets, noise=0.6), targets)
        info = loss.cache_info()
        # visits 1, 4 and 7 compute (4 maps each), visits 2, 3, 5, 6 reuse
        assert (info["misses"], info["refreshes"], info["hits"]) == (4, 8, 16)
        assert counter["n"] == 4 + 12  # 4 target diagrams + 12 prediction diagrams

    def test_reuse_equals_exact_when_prediction_is_unchanged(self):
        targets = torch.cat(dataset())
        pred = soft_prediction(targets, noise=0.6)
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=4)
        exact = fastloss.TopologicalLoss()(pred, targets)
        for _ in range(4):
            assert torch.equal(loss(pred.clone().requires_grad_(), targets), exact)
        assert loss.cache_info()["hits"] == 12

    def test_stale_pairing_gathers_current_values(self):
        targets = torch.cat(dataset(2))
        loss = CachedPH(fastloss.TopologicalLoss(reduction="none"), refresh_every=2)
        p1 = soft_prediction(targets, seed=1, noise=0.6)
        loss(p1, targets)
        p2 = (p1 * 0.9).detach()  # same ordering of values: same pairing, different values
        assert torch.allclose(loss(p2, targets), fastloss.TopologicalLoss(reduction="none")(p2, targets))

    def test_eval_is_exact_and_leaves_pairings(self):
        targets = torch.cat(dataset())
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=10).eval()
        for seed in range(3):
            pred = soft_prediction(targets, seed=seed, noise=0.6)
            assert torch.equal(loss(pred, targets), fastloss.TopologicalLoss()(pred, targets))
        assert loss.cache_info()["entries"] == 0 and loss.cache_info()["exact"] == 12

    def test_async_is_deterministic_and_matches_schedule(self, monkeypatch):
        targets = torch.cat(dataset())

        def run(refresh):
            loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh=refresh)
            values = [loss(soft_prediction(targets, seed=s, noise=0.6), targets) for s in range(6)]
            info = loss.cache_info()
            loss.close()
            return torch.stack(values), info

        a, info = run("async")
        b, _ = run("async")
        assert torch.equal(a, b)
        # per map: visit 1 misses; visits 2, 4, 6 reuse and start a background refresh that
        # visits 3 and 5 pick up, so the foreground never computes a diagram after visit 1
        assert (info["misses"], info["hits"], info["refreshes"]) == (4, 12, 8)
        sync, _ = run("sync")
        assert torch.equal(a[:2], sync[:2])  # identical until the first refresh

    def test_async_thread_ends_with_the_object(self):
        import gc
        import threading

        targets = torch.cat(dataset(2))
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh="async")
        for s in range(3):
            loss(soft_prediction(targets, seed=s), targets)
        assert any(t.name.startswith("fastloss-cachedph") for t in threading.enumerate())
        del loss
        gc.collect()
        assert not any(t.name.startswith("fastloss-cachedph") for t in threading.enumerate())

    def test_bounded(self):
        loss = CachedPH(fastloss.TopologicalLoss(), max_entries=3)
        for t in dataset(6):
            loss(soft_prediction(t), t)
        info = loss.cache_info()
        assert info["entries"] == 3 and info["target_entries"] == 3 and info["evictions"] == 6

    def test_batch_larger_than_the_cache(self):
        """A hit and enough new masks in one batch to evict it: still exact, still bounded."""
        targets = torch.cat(dataset(4))
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=1, max_entries=2)
        loss(soft_prediction(targets[:1]), targets[:1])
        pred = soft_prediction(targets, seed=1, noise=0.6)
        assert torch.equal(loss(pred, targets), fastloss.TopologicalLoss()(pred, targets))
        assert loss.cache_info()["target_entries"] == 2 and loss.cache_info()["entries"] == 2

    def test_clear_drops_pending_refreshes(self):
        """A pairing computed before clear() is never served after it."""
        targets = torch.cat(dataset(2))
        loss = CachedPH(fastloss.TopologicalLoss(reduction="none"), refresh_every=2, refresh="async")
        stale = soft_prediction(targets, seed=0, noise=0.6)
        loss(stale, targets)
        loss(stale, targets)  # second visit: served from cache, and an async refresh of `stale` starts
        assert loss._pending
        loss.clear()
        assert not loss._pending and loss.cache_info()["entries"] == 0
        fresh = soft_prediction(targets, seed=5, noise=0.6)
        value = loss(fresh, targets)
        assert torch.equal(value, fastloss.TopologicalLoss(reduction="none")(fresh, targets))
        assert loss.cache_info()["misses"] == 2 and loss.cache_info()["refreshes"] == 0
        loss.close()

    def test_constructor_configuration_wins_over_the_checkpoint(self):
        targets = torch.cat(dataset(2))
        approximate = CachedPH(fastloss.TopologicalLoss(), refresh_every=5, max_entries=8)
        approximate(soft_prediction(targets), targets)
        exact = CachedPH(fastloss.TopologicalLoss(), refresh_every=1, max_entries=1)
        with pytest.warns(UserWarning, match=r"saved with refresh_every=5, max_entries=8; keeping this CachedPH's "
                                             r"refresh_every=1, max_entries=1"):
            exact.load_state_dict(approximate.state_dict())
        assert exact.refresh_every == 1 and exact.max_entries == 1 and exact.cache_info()["entries"] == 1
        for seed in range(3):  # still exact: the checkpoint's refresh_every=5 never applies
            pred = soft_prediction(targets, seed=seed, noise=0.6)
            assert torch.equal(exact(pred, targets), fastloss.TopologicalLoss()(pred, targets))

    @pytest.mark.parametrize("make, error, message", [
        (lambda: CachedPH(fastloss.PerceptualLoss("vgg16", weights=None)), TypeError,
         "`loss` must be a fastloss.TopologicalLoss or fastloss.BettiMatchingLoss (CachedPH caches persistent homology), got PerceptualLoss"),
        (lambda: CachedPH(fastloss.TopologicalLoss(betti=(1, 1))), ValueError, "CachedPH needs target masks"),
        (lambda: CachedPH(fastloss.TopologicalLoss(), refresh_every=0), ValueError, "`refresh_every` must be >= 1"),
        (lambda: CachedPH(fastloss.TopologicalLoss(), refresh="later"), ValueError, "`refresh` must be one of ['sync', 'async']"),
    ])
    def test_bad_arguments(self, make, error, message):
        with pytest.raises(error) as info:
            make()
        assert message in str(info.value)


class TestCachedPHState:
    def targets(self):
        return torch.cat(dataset(2))

    def pending_loss(self):
        """An async CachedPH with a refresh pending (started at the second visit)."""
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh="async")
        for seed in range(2):
            loss(soft_prediction(self.targets(), seed=seed, noise=0.6), self.targets())
        assert loss._pending
        return loss

    def test_a_pending_refresh_survives_a_checkpoint(self, tmp_path):
        original, resumed = self.pending_loss(), CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh="async")
        torch.save(original.state_dict(), tmp_path / "s.pt")
        resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
        assert set(resumed._pending) == set(original._pending)
        pred = soft_prediction(self.targets(), seed=9, noise=0.6)
        assert torch.equal(resumed(pred, self.targets()), original(pred, self.targets()))
        assert resumed.cache_info()["refreshes"] == original.cache_info()["refreshes"] > 0
        original.close()
        resumed.close()

    def test_a_copy_keeps_pending_results(self):
        original = self.pending_loss()
        clone = copy.deepcopy(original)
        assert set(clone._pending) == set(original._pending) and clone._executor is None
        pred = soft_prediction(self.targets(), seed=9, noise=0.6)
        assert torch.equal(clone(pred, self.targets()), original(pred, self.targets()))
        original.close()

    def test_a_smaller_bound_trims_the_loaded_cache(self):
        big = CachedPH(fastloss.TopologicalLoss(), refresh_every=3, max_entries=8)
        for t in dataset(3):
            big(soft_prediction(t), t)
        small = CachedPH(fastloss.TopologicalLoss(), refresh_every=3, max_entries=2)
        with pytest.warns(UserWarning, match="max_entries=8; keeping this CachedPH's max_entries=2"):
            small.load_state_dict(big.state_dict())
        info = small.cache_info()
        assert info["entries"] == 2 and info["target_entries"] == 2 and info["evictions"] == 2
        newest = dataset(3)[2]  # LRU: the oldest entry went, the newest stayed
        small(soft_prediction(newest), newest)
        assert small.cache_info()["hits"] == 1

    def test_wait_finishes_pending_refreshes(self, monkeypatch):
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh="async")
        finished = []
        real = loss.loss.select

        def slow_select(*args):
            time.sleep(0.3)
            result = real(*args)
            finished.append(1)
            return result

        for seed in range(2):
            loss(soft_prediction(self.targets(), seed=seed, noise=0.6), self.targets())
        monkeypatch.setattr(loss.loss, "select", slow_select)
        loss(soft_prediction(self.targets(), seed=2, noise=0.6), self.targets())  # a third visit: refresh starts
        loss(soft_prediction(self.targets(), seed=3, noise=0.6), self.targets())
        assert loss._pending
        loss.wait()
        assert len(finished) == len(loss._pending) > 0  # every pending refresh has finished
        loss.close()

    def test_close_stops_the_background_thread(self):
        def workers():
            return [t for t in threading.enumerate() if t.name.startswith("fastloss-cachedph") and t.is_alive()]

        before = len(workers())
        loss = self.pending_loss()
        assert len(workers()) == before + 1
        loss.close()
        deadline = time.monotonic() + 5
        while len(workers()) > before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(workers()) == before

    def test_target_bytes_are_accounted_and_reset_by_a_checkpoint(self):
        from fastloss.ph.matching import target_side

        g = torch.Generator().manual_seed(0)
        masks = [(torch.rand(1, 1, 16, 16, generator=g) < 0.4).float() for _ in range(3)]
        loss = CachedPH(fastloss.BettiMatchingLoss(), refresh_every=1, max_entries=2)
        for t in masks:
            loss(torch.rand(1, 1, 16, 16, generator=g).requires_grad_(), t)
        kept = masks[1:]  # LRU bound 2: the first target's side went
        expected = sum(target_side((1 - t[0, 0]).numpy()).nbytes for t in kept)
        info = loss.cache_info()
        assert info["target_entries"] == 2 and info["target_bytes"] == expected > 0
        resumed = CachedPH(fastloss.BettiMatchingLoss(), refresh_every=1, max_entries=2)
        resumed.load_state_dict(loss.state_dict())  # target sides are not saved: rebuilt on demand
        assert resumed.cache_info()["target_bytes"] == 0
        assert CachedPH(fastloss.TopologicalLoss()).cache_info()["target_bytes"] == 0

    def test_refresh_mode_mismatch_is_named(self):
        sync = CachedPH(fastloss.TopologicalLoss(), refresh="sync")
        with pytest.warns(UserWarning, match=r"^CachedPH: the checkpoint was saved with refresh='async'; "
                                             r"keeping this CachedPH's refresh='sync'"):
            sync.load_state_dict(CachedPH(fastloss.TopologicalLoss(), refresh="async").state_dict())


class TestCachedPHDefaultsAndBounds:
    def test_documented_defaults_and_messages(self):
        loss = CachedPH(fastloss.TopologicalLoss())
        assert (loss.refresh_every, loss.max_entries, loss.refresh) == (5, 4096, "sync")
        with pytest.raises(ValueError, match=r"^CachedPH needs target masks to recognise samples; a `betti` prior "
                                             r"has none$"):
            CachedPH(fastloss.TopologicalLoss(betti=(1, 0)))
        with pytest.raises(ValueError, match=r"^`max_entries` must be >= 1, got 0$"):
            CachedPH(fastloss.TopologicalLoss(), max_entries=0)

    def sides(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        return [(torch.rand(1, 1, 16, 16, generator=g) < 0.4).float() for _ in range(n)]

    @staticmethod
    def nbytes(t):
        from fastloss.ph.matching import target_side

        return target_side((1 - t[0, 0]).numpy()).nbytes

    @pytest.mark.parametrize("room, kept", [(2.0, 2), (2.5, 2), (1.5, 1), (0.5, 1)])
    def test_target_byte_bound(self, monkeypatch, room, kept):
        masks = self.sides(3)
        loss = CachedPH(fastloss.BettiMatchingLoss(workers=1), refresh_every=1)
        bound = int(room * max(self.nbytes(t) for t in masks))
        monkeypatch.setattr(loss, "max_target_bytes", bound)
        for t in masks:
            loss(torch.rand(1, 1, 16, 16).requires_grad_(), t)
        info = loss.cache_info()
        # the newest side always stays (a bound below one side still caches the side in use)
        assert info["target_entries"] == kept
        assert info["target_bytes"] == sum(self.nbytes(t) for t in masks[-kept:])
        assert kept == 1 or info["target_bytes"] <= bound
        loss(torch.rand(1, 1, 16, 16).requires_grad_(), masks[-1])
        assert loss.cache_info()["target_hits"] == 1  # LRU: the newest is the one kept

    def test_rank_matching_sides_hold_no_bytes(self):
        loss = CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=1)
        for t in self.sides(3):
            loss(torch.rand(1, 1, 16, 16).requires_grad_(), t)
        assert loss.cache_info()["target_entries"] == 3 and loss.cache_info()["target_bytes"] == 0

    def test_evicting_a_pairing_drops_its_pending_refresh(self):
        masks = self.sides(2, seed=3)
        loss = CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=2, max_entries=1, refresh="async")
        for _ in range(2):  # the second visit starts a refresh of the first mask
            loss(torch.rand(1, 1, 16, 16).requires_grad_(), masks[0])
        assert len(loss._pending) == 1
        loss(torch.rand(1, 1, 16, 16).requires_grad_(), masks[1])  # evicts the first mask's pairing
        assert not loss._pending and loss.cache_info()["evictions"] >= 1
        loss.close()


class TestCachedPHEdges:
    """What a careless change to CachedPH would break silently (found by mutation testing)."""

    def test_same_bytes_different_shape_is_no_hit(self):
        wide = torch.zeros(1, 1, 4, 8)
        wide[..., :2] = wide[..., 6:] = 1  # two bars: 2 components
        tall = wide.reshape(1, 1, 8, 4)  # the same bytes, another image: 8 diagonal pieces
        assert topo.betti_numbers(wide[0, 0].numpy()) != topo.betti_numbers(tall[0, 0].numpy())
        cached, exact = CachedPH(fastloss.TopologicalLoss(reduction="none"), refresh_every=1), \
            fastloss.TopologicalLoss(reduction="none")
        for t in (wide, tall):
            pred = soft_prediction(t, seed=1, noise=0.4)
            assert torch.equal(cached(pred, t), exact(pred, t))
        assert cached.cache_info()["target_misses"] == 2

    def test_a_failure_names_the_map_in_the_batch(self, monkeypatch):
        targets = torch.cat(dataset(2))
        loss = CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=5)
        loss(soft_prediction(targets[:1]), targets[:1])  # map 0 cached: the next call computes map 1 only
        monkeypatch.setattr(loss.loss, "select", lambda *a: (_ for _ in ()).throw(ValueError("boom")))
        with pytest.raises(RuntimeError, match=r"^persistent homology failed on map 1: ValueError: boom$"):
            loss(soft_prediction(targets), targets)
        monkeypatch.setattr(loss.loss, "target_side", lambda *a: (_ for _ in ()).throw(ValueError("bad mask")))
        fresh = torch.cat([targets[:1], ring(24, outer=9, width=2)])
        with pytest.raises(RuntimeError, match=r"^target persistent homology failed on map 1: ValueError: bad mask$"):
            loss(soft_prediction(fresh), fresh)

    def test_workers_one_runs_on_the_calling_thread(self, monkeypatch):
        loss = CachedPH(fastloss.TopologicalLoss(workers=1), refresh_every=1)
        threads = []
        for name in ("select", "target_side"):
            real = getattr(loss.loss, name)
            monkeypatch.setattr(loss.loss, name, lambda *a, real=real: threads.append(threading.current_thread())
                                or real(*a))
        targets = torch.cat(dataset(3))
        loss(soft_prediction(targets), targets)
        assert len(threads) == 6 and set(threads) == {threading.current_thread()}

    def test_clear_cancels_queued_refreshes(self, monkeypatch):
        loss = CachedPH(fastloss.TopologicalLoss(), refresh_every=2, refresh="async")
        targets = torch.cat(dataset(3))
        calls = []
        real = loss.loss.select

        def slow(*args):
            calls.append(1)
            time.sleep(0.2)
            return real(*args)

        loss(soft_prediction(targets, seed=0, noise=0.6), targets)
        monkeypatch.setattr(loss.loss, "select", slow)
        loss(soft_prediction(targets, seed=1, noise=0.6), targets)  # 3 refreshes queued on one thread
        assert len(loss._pending) == 3
        loss.clear()
        loss.close()  # waits for the one already running
        assert len(calls) <= 1 and loss.cache_info()["entries"] == 0
