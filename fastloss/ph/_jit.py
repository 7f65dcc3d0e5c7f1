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


def njit(fn: Callable | None = None, *, inline: bool = False) -> Callable:
    """Compile ``fn`` with ``numba.njit(nogil=True, cache=True)``, without the cache when it cannot be written.

    ``@njit(inline=True)``: a small helper inlined into its callers at numba's IR level (a call with
    array arguments costs more than the helper's work in the dim-1 kernels).
    """
    if fn is None:
        return lambda f: njit(f, inline=inline)
    if numba is None:
        return fn
    opts = {"inline": "always"} if inline else {}
    try:
        return numba.njit(nogil=True, cache=True, **opts)(fn)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available for file ..."
        if "cannot cache" not in str(exc):
            raise
        UNCACHED.append(fn.__qualname__)
        return numba.njit(nogil=True, cache=False, **opts)(fn)


def require_numba() -> None:
    """Raise :class:`ImportError` with an install hint when numba is missing."""
    if numba is None:
        raise ImportError(f"{INSTALL_HINT} (or use backend='auto' or 'cripser', which need only cripser)")
