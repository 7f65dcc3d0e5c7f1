"""The one place that knows about numba: the ``njit`` decorator of every kernel, and its fallbacks.

- numba importable: ``@njit`` is ``numba.njit(nogil=True, cache=True)`` (kernels release the GIL, so
  the loss's per-map thread pool scales; compiled code is cached on disk). When no cache location is
  writable (a read-only install with an unwritable ``NUMBA_CACHE_DIR`` and home), numba refuses
  ``cache=True`` at decoration time; the kernel is then compiled per process without a cache.
- numba missing: ``HAVE_NUMBA`` is False and ``@njit`` returns the plain Python function. The
  dispatcher never runs kernels then (``backend="auto"`` uses cripser, ``"native"`` raises
  :class:`ImportError`), so importing fastloss never needs numba.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    import numba
except ImportError:  # pragma: no cover - exercised in a subprocess test
    numba = None

HAVE_NUMBA = numba is not None
INSTALL_HINT = "the native persistent-homology engine needs numba: `pip install numba`"

# kernels that could not use the on-disk cache (read-only install); for diagnostics and tests
UNCACHED: list[str] = []


def njit(fn: Callable) -> Callable:
    """Compile ``fn`` with ``numba.njit(nogil=True, cache=True)``, without the cache when it cannot be written."""
    if numba is None:
        return fn
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available for file ..."
        if "cannot cache" not in str(exc):
            raise
        UNCACHED.append(fn.__qualname__)
        return numba.njit(nogil=True, cache=False)(fn)


def require_numba() -> None:
    """Raise :class:`ImportError` with an install hint when numba is missing."""
    if numba is None:
        raise ImportError(f"{INSTALL_HINT} (or use backend='auto' or 'cripser', which need only cripser)")
