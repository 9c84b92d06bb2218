"""y <- a x + b y over a whole vector in one pass: an optimizer's inner loop, done by BLAS.

Momentum SGD is two multiply-adds per parameter, v <- mu v + g and Phi <- Phi - eta v.  NumPy has
no fused multiply-add, so each costs two passes over memory (``v *= mu; v += g``; ``eta v`` into a
scratch array, then ``Phi - scratch``).  The update is memory-bound -- a rank's vectors are a few
hundred KB that the step's two big GEMMs have just pushed out of the caches -- so passes are its
cost, and the last one writes the parameters, which with shared-memory data parallelism the other
cores on the host have just read.  BLAS has the loop in one pass: ?axpby, an extension OpenBLAS
exports.  NumPy's wheels ship OpenBLAS; threadpoolctl (ours already, for BLAS threads) says where
it is loaded and ctypes calls it.  Measured in docs/performance.md ("The levers").

Without OpenBLAS, or for vectors that are not contiguous float32/float64 1-D arrays, ``Axpby``
does the same with NumPy in two passes.  The kernel may fuse each multiply and add (one rounding
instead of two), so the two ways can differ in the last bit; every update of a run takes the same
way, so in-place and ring updates stay bit-identical (tests/mpi/test_equivalence.py).
"""

from __future__ import annotations

import ctypes

import numpy as np

_REALS = {np.dtype(np.float32): ("s", ctypes.c_float), np.dtype(np.float64): ("d", ctypes.c_double)}
# (symbol prefix, suffix): NumPy's wheels (scipy-openblas, 64-bit integers), other 64-bit-integer
# builds, a plain OpenBLAS
_SYMBOL_STYLES = (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", "_64"), ("", ""))


def find_blas_axpby(dtype):
    """OpenBLAS's ``cblas_?axpby`` for ``dtype`` (float32 or float64) from the library NumPy loaded,
    ready to call through ctypes; None if there is none."""
    real = _REALS.get(np.dtype(dtype))
    if real is None:
        return None
    letter, c_real = real
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for library in threadpool_info():
        if library.get("internal_api") != "openblas":
            continue
        try:
            handle = ctypes.CDLL(library["filepath"])
        except OSError:
            continue
        for prefix, suffix in _SYMBOL_STYLES:
            kernel = getattr(handle, f"{prefix}cblas_{letter}axpby{suffix}", None)
            config = getattr(handle, f"{prefix}openblas_get_config{suffix}", None)
            if kernel is None or config is None:
                continue
            # the integer width of the build decides the argument types: a wrong one would crash
            config.restype = ctypes.c_char_p
            integer = ctypes.c_int64 if b"USE64BITINT" in (config() or b"") else ctypes.c_int32
            kernel.argtypes = (integer, c_real, ctypes.c_void_p, integer, c_real, ctypes.c_void_p, integer)
            kernel.restype = None
            return kernel
    return None


class Axpby:
    """``y <- a x + b y`` for two fixed vectors of the same shape (y in place): one pass through
    ``kernel`` (from ``find_blas_axpby``) when it applies, else two NumPy passes, ``a x`` through
    ``scratch`` (an array like x that the caller does not need meanwhile; a new one if not given)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, kernel=None, scratch: np.ndarray | None = None):
        if x.shape != y.shape or x.dtype != y.dtype:
            raise ValueError(f"axpby needs x and y of one shape and dtype, got {x.shape} {x.dtype} "
                             f"and {y.shape} {y.dtype}")
        self.x, self.y, self.scratch = x, y, scratch
        fits = (kernel is not None and x.ndim == 1 and x.flags.c_contiguous and y.flags.c_contiguous
                and y.flags.writeable and not np.may_share_memory(x, y))
        self.kernel = kernel if fits else None
        if not fits and scratch is None:
            self.scratch = np.empty_like(x)
        # raw addresses once, here: reading .ctypes.data costs ~1 us, a step's whole update ~50
        self._arguments = (x.size, x.ctypes.data, y.ctypes.data) if fits else None

    @property
    def uses_blas(self) -> bool:
        return self.kernel is not None

    def __call__(self, a: float, b: float = 1.0):
        if self.kernel is not None:
            n, x, y = self._arguments
            self.kernel(n, a, x, 1, b, y, 1)
            return
        if b != 1:
            self.y *= b
        if a == 1:
            self.y += self.x
        else:
            np.multiply(self.x, a, out=self.scratch)
            self.y += self.scratch
