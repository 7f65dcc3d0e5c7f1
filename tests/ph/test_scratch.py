"""fastloss.ph.scratch: per-thread scratch arrays, reused and bounded."""

import threading

import numpy as np

from fastloss.ph import scratch


def test_reused_on_a_thread_and_sized():
    a = scratch.take("t-reuse", 1000, np.int32)
    b = scratch.take("t-reuse", 600, np.int32)
    assert a.size == 1000 and b.size == 600 and a.dtype == np.int32
    assert np.shares_memory(a, b)  # the second call hands out the same memory
    c = scratch.take("t-reuse", 2000, np.int32)  # larger: a new array replaces the kept one
    assert c.size == 2000 and not np.shares_memory(a, c)
    assert np.shares_memory(c, scratch.take("t-reuse", 10, np.int32))


def test_dtype_change_is_a_new_array():
    a = scratch.take("t-dtype", 100, np.int32)
    b = scratch.take("t-dtype", 100, np.int64)
    assert b.dtype == np.int64 and not np.shares_memory(a, b)


def test_threads_get_their_own():
    mine = scratch.take("t-thread", 100, np.int32)
    theirs = []
    th = threading.Thread(target=lambda: theirs.append(scratch.take("t-thread", 100, np.int32)))
    th.start()
    th.join()
    assert not np.shares_memory(mine, theirs[0])


def test_too_large_is_served_but_not_kept(monkeypatch):
    monkeypatch.setattr(scratch, "LIMIT_BYTES", 4000)
    before = scratch.kept_bytes()
    big = scratch.take("t-big", 2000, np.int32)  # 8000 bytes: over the limit
    assert big.size == 2000
    assert scratch.kept_bytes() == before
    assert not np.shares_memory(big, scratch.take("t-big", 2000, np.int32))
