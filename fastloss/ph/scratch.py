"""Per-thread scratch arrays that the 3D kernels reuse from one call to the next.

A kernel's large temporary (the dim-1 reductions' row-owner table: 3 int32 per padded voxel, 3.4 MB at 64^3)
allocated afresh each call comes back from the allocator as fresh pages whenever the C heap returned the last
one to the system (glibc does, for blocks this large), and every page then faults on first touch: at 64^3,
828 faults per diagram, 3.2 us each in the KVM guest this was measured on (2.7 ms of a 48 ms diagram).
:func:`take` keeps one array per thread and name instead, and the kernel overwrites what it reads.

Bounded: one array per (thread, name), never more than :data:`LIMIT_BYTES` each (a larger request is served
but not kept); an array is replaced, not added to, when a larger one is needed. Threads' arrays go with them.
"""

from __future__ import annotations

import threading

import numpy as np

LIMIT_BYTES = 256 << 20  # the largest array kept (a 256^3 map's row-owner table is 206 MB)

_local = threading.local()


def take(name: str, size: int, dtype) -> np.ndarray:
    """A 1-D array of ``size`` elements of ``dtype`` with undefined contents, this thread's for ``name`` (the
    caller overwrites it before reading; it is handed out again by the next call with the same name on this
    thread, so nothing may keep it)."""
    dtype = np.dtype(dtype)
    kept = getattr(_local, "arrays", None)
    if kept is None:
        kept = _local.arrays = {}
    a = kept.get(name)
    if a is None or a.dtype != dtype or a.size < size:
        a = np.empty(size, dtype)
        if a.nbytes <= LIMIT_BYTES:
            kept[name] = a
    return a[:size]


def kept_bytes() -> int:
    """Bytes this thread keeps (for tests and diagnostics)."""
    return sum(a.nbytes for a in getattr(_local, "arrays", {}).values())
