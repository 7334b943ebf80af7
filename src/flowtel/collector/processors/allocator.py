"""Hand the C allocator's free memory back to the OS: glibc's ``malloc_trim``, through ctypes.

CPython allocates objects over 512 bytes (span buffers, requests) with ``malloc``; glibc keeps
what they free mapped in its arenas, so resident memory stays at a spike's peak long after the
data is gone. ``malloc_trim(0)`` returns the free pages of every arena. Other C libraries
(musl, macOS) have no such call: there ``release_free_memory`` does nothing and says so.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):  # musl and other non-glibc C libraries have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def can_release() -> bool:
    return _MALLOC_TRIM is not None


def release_free_memory() -> bool:
    """Return free heap pages to the OS; False when this platform's allocator offers no way to."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
