"""Handing freed memory back to the system.

glibc's malloc keeps what a program frees for reuse, and gives each thread that
allocates its own arena (up to eight a core): after onnxruntime loads a model or runs
a large synthesis, and after every lane thread of a recognition worker has decoded a
few utterances, tens of megabytes of freed buffers stay in the process for good
(measured: a piper prompt left ~100 MB behind, a Moonshine load ~30 MB, four decoding
lanes ~80 MB). Two remedies, both no-ops where the C library is not glibc:

- ``limit_arenas``: at most a few arenas for the whole process, so free memory is not
  scattered over one arena per thread where no other thread can reuse it. Call it
  before the process starts threads;
- ``trim``: ``malloc_trim`` returns the free pages of every arena. It is a walk over
  the free lists, a millisecond or so: after a model load, a synthesis, an utterance;
- ``map_large``: every block of ``MMAP_THRESHOLD`` or more gets pages of its own,
  returned to the system the moment it is freed. glibc starts so (from 128 KB), but
  raises the threshold (up to 32 MB) each time such a block is freed, after which big
  buffers (a synthesis's tensors) come from the heap and leave holes there that
  trimming does not give back: an idle engine measured 142 to 210 MB (USS) from one
  start to the next, and 140.7-140.8 MB every time with the threshold fixed at 16 MB.
  Fixed lower it costs: at 256 KB a prompt took 70 % more CPU to synthesise (a page
  fault for every page of every tensor), at 16 MB nothing measurable.

``in_use`` (``mallinfo2``) is what the program holds of what malloc gave it: a process
whose resident memory grows while this stays flat is keeping freed pages, not objects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

__all__ = ["in_use", "limit_arenas", "map_large", "trim"]

M_ARENA_MAX = -8  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 * 1024 * 1024


@functools.cache
def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.malloc_trim.argtypes = [ctypes.c_size_t]
        lib.malloc_trim.restype = ctypes.c_int
        lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    return lib


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # struct mallinfo2 (malloc.h, glibc 2.33+)
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def in_use() -> int | None:
    """Bytes this process holds from malloc (heap blocks in use and blocks mapped on
    their own); None where glibc cannot tell (not glibc, or older than 2.33)."""
    lib = _libc()
    if lib is None:
        return None
    try:
        info = lib.mallinfo2
    except AttributeError:
        return None
    info.restype = _MallInfo2
    got = info()
    return int(got.uordblks + got.hblkhd)


def trim() -> bool:
    """Give free heap memory back to the system; False where that is not possible."""
    lib = _libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True


def limit_arenas(arenas: int = 2) -> bool:
    """At most ``arenas`` malloc arenas for this process (an explicit MALLOC_ARENA_MAX
    in the environment is the operator's and wins); False where that is not possible."""
    import os

    lib = _libc()
    if lib is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(lib.mallopt(M_ARENA_MAX, arenas))


def map_large(threshold: int = MMAP_THRESHOLD) -> bool:
    """Blocks of ``threshold`` bytes or more mapped on their own, for good (an explicit
    MALLOC_MMAP_THRESHOLD_ in the environment is the operator's and wins); False where
    that is not possible."""
    import os

    lib = _libc()
    if lib is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(lib.mallopt(M_MMAP_THRESHOLD, threshold))
