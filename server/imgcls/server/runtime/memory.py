"""Giving freed memory back to the operating system (glibc), so RSS returns near idle after load.

glibc keeps freed heap in its arenas: after a burst of large requests a server's RSS stays at the
burst's peak although nothing is in use (measured: 1.0-1.3 GB kept after an attack, given back by one
malloc_trim). Other C libraries (musl) have no such calls; then these do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter, from glibc's malloc.h


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def trim() -> bool:
    """Return free heap to the OS; True when glibc released something."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def limit_arenas(count: int) -> bool:
    """At most count malloc arenas: fewer arenas, less memory stranded in them by many threads."""
    libc = _libc()
    return bool(libc.mallopt(_M_ARENA_MAX, count)) if libc is not None else False
