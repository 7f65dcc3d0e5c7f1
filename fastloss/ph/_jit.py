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


# the passes in filtration order prefetch what the pixel this many steps ahead will read (its place in the grid
# is known from porder long before; a mispredicted branch would otherwise stall on each miss in turn)
AHEAD = 12


def _prefetch_intrinsic():
    """``prefetch(a, i)``: a hint to load the cache line of ``a[i]`` (``llvm.prefetch``, read, keep in every
    level); no bounds check and no effect on the result, so any ``i`` near the array is harmless. For the passes
    in filtration order, whose loads land at random places a few steps ahead of where they are known."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, arr, idx):
        sig = types.void(arr, idx)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False,
                                           boundscheck=False)
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                                "llvm.prefetch.p0i8")
            builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen

    return prefetch


def _cttz_intrinsic():
    """``lowest_bit(x)``: the index of the lowest set bit of a non-zero int64 (``llvm.cttz``, one instruction)."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def lowest_bit(typingctx, x):
        sig = types.int64(types.int64)

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]),
                                                "llvm.cttz.i64")
            return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 1)])

        return sig, codegen

    return lowest_bit


def _lowest_bit(x: int) -> int:
    return (x & -x).bit_length() - 1


def _no_prefetch(arr, idx) -> None:
    """Without numba: nothing to hint (the kernels do not run as plain Python in practice)."""


prefetch = _prefetch_intrinsic() if numba is not None else _no_prefetch
lowest_bit = _cttz_intrinsic() if numba is not None else _lowest_bit


def require_numba() -> None:
    """Raise :class:`ImportError` with an install hint when numba is missing."""
    if numba is None:
        raise ImportError(f"{INSTALL_HINT} (or use backend='auto' or 'cripser', which need only cripser)")
