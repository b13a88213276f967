"""Handing freed memory back to the system.

glibc's malloc keeps what a program frees for reuse: after onnxruntime loads a model or
runs a large synthesis, tens of megabytes of freed buffers stay in the process for good
(measured: a piper prompt left ~100 MB behind, a Moonshine load ~30 MB). ``malloc_trim``
returns the free pages at the top of each heap and the free ones inside it. It is cheap
(a walk over the free lists) and a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

__all__ = ["trim"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def trim() -> bool:
    """Give free heap memory back to the system; False where that is not possible."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
