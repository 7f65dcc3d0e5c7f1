"""Union-find primitives shared by the persistence kernels and the mask labelling.

A forest lives in an int32 ``parent`` array (``parent[x] == x`` marks a root). The persistence
kernels index it by *rank* and link the younger root under the elder one, so a component's root is
its oldest node (elder rule): in an increasing pass the smallest rank, in a decreasing pass the
largest, the outside (rank ``n``) being the oldest of all. They inline that linking step themselves:
a helper returning ``(root, count)`` costs 2.5x in numba (measured), a helper returning one int does
not, hence :func:`find` only.
"""

from __future__ import annotations

import numpy as np

from ._jit import njit


@njit
def find(parent: np.ndarray, x: int) -> int:
    """Root of ``x``, halving the path on the way."""
    while parent[x] != x:
        up = parent[parent[x]]
        parent[x] = up
        x = up
    return x


@njit
def union_count(parent: np.ndarray, a: int, b: int) -> int:
    """Join the sets of ``a`` and ``b``; 1 when they were distinct (labelling: roots are arbitrary)."""
    ra = find(parent, a)
    rb = find(parent, b)
    if ra == rb:
        return 0
    if ra < rb:
        parent[rb] = ra
    else:
        parent[ra] = rb
    return 1
