"""Native exact persistent homology of 2D/3D cubical complexes (numba kernels, cripser fallback).

- :func:`persistence` → :class:`Diagram`: the sublevel-filtration diagram of a map with its critical
  pixels, by two union-find passes sharing one radix sort (dim 0 and the top dimension) and, for dim 1
  of a 3D map, a cleared coboundary reduction; or by cripser.
- :func:`betti_numbers`: exact Betti numbers of a binary mask's foreground by labelling, in O(n).
- :func:`betti_matching` → :class:`Matching`: the Betti matching (Stucki et al.) of a prediction and a
  target, pair for pair the reference's (Betti-Matching-3D); :func:`target_side` is its cacheable part.

One concept per module: ``_jit`` (the numba decorator and its fallbacks), ``scratch`` (per-thread scratch
arrays the kernels reuse), ``sort`` (the filtration order), ``unionfind``, ``cubical2d``/``cubical3d`` (the
kernels), ``loops3d`` (every dim of a 3D map, dim 1 by reduction), ``betti`` (masks), ``diagram`` (the type
and the dispatcher); for Betti matching ``cells`` (the order of a map's cells), ``induced`` (the
barcode and induced-matching passes) and ``matching`` (the types and the entry points).
"""

from .._validation import CONSTRUCTIONS
from ._jit import HAVE_NUMBA, require_numba
from .betti import betti_numbers
from .diagram import BACKENDS, Diagram, native_dims, persistence, resolve
from .matching import Matching, betti_matching, target_side

__all__ = [
    "BACKENDS",
    "CONSTRUCTIONS",
    "HAVE_NUMBA",
    "Diagram",
    "Matching",
    "betti_matching",
    "betti_numbers",
    "native_dims",
    "persistence",
    "require_numba",
    "resolve",
    "target_side",
]
