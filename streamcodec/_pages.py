"""Pool buffer memory that costs RSS only where it is written.

``bytearray(n)`` zero-fills all ``n`` bytes, so every page of a pool buffer
becomes resident the moment it is created, although a stream of 1 MB objects
flushed every ``flush_bytes`` only ever writes the first megabyte or so of a
4 MiB buffer.  On Linux with CPython the buffers here are made instead by
growing an empty bytearray (``PyByteArray_Resize`` does not initialise) and
telling the kernel the whole pages inside it are not needed
(``madvise(MADV_DONTNEED)``): anonymous private memory, which is what malloc
hands out, then reads as zeros and is mapped in only when written.  The same
call gives a released buffer's pages back to the OS while the pool keeps the
buffer itself.  Everywhere else (other systems, other interpreters) this
falls back to plain ``bytearray(n)`` and keeps pages resident: same contents,
more memory.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from typing import Any, Optional

__all__ = ["zeroed_bytearray", "drop_pages", "PAGES_DROPPABLE"]

_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
_PAGE = mmap.PAGESIZE


def _bind() -> Optional[Any]:
    if not sys.platform.startswith("linux") or sys.implementation.name != "cpython" or _MADV_DONTNEED is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        resize = ctypes.pythonapi.PyByteArray_Resize
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    resize.argtypes = (ctypes.py_object, ctypes.c_ssize_t)
    resize.restype = ctypes.c_int
    return madvise, resize


_bound = _bind()
#: Whether this platform can leave buffer pages unmapped until written.
PAGES_DROPPABLE = _bound is not None


def _address(data: bytearray) -> int:
    # from_buffer holds an export only for the line that reads the address.
    return ctypes.addressof((ctypes.c_char * len(data)).from_buffer(data))


def _advise_interior(address: int, size: int) -> bool:
    """madvise(DONTNEED) every whole page inside [address, address + size); False if refused."""
    assert _bound is not None
    first = -(-address // _PAGE) * _PAGE
    last = (address + size) // _PAGE * _PAGE
    if last <= first:
        return True
    return _bound[0](first, last - first, _MADV_DONTNEED) == 0


def zeroed_bytearray(size: int) -> bytearray:
    """A bytearray of ``size`` zero bytes whose whole pages are not yet resident."""
    if _bound is None or size < 4 * _PAGE:
        return bytearray(size)
    data = bytearray()
    if _bound[1](data, size) != 0:  # pragma: no cover - out of memory
        raise MemoryError(f"cannot allocate a buffer of {size} bytes")
    address = _address(data)
    if not _advise_interior(address, size):
        ctypes.memset(address, 0, size)  # pragma: no cover - madvise refused: zero it the ordinary way
        return data
    # The partial pages at both ends were not dropped: zero them by hand.
    head = min(size, -address % _PAGE)
    tail_start = max(head, (address + size) // _PAGE * _PAGE - address)
    ctypes.memset(address, 0, head)
    ctypes.memset(address + tail_start, 0, size - tail_start)
    return data


def drop_pages(data: bytearray, extent: Optional[int] = None) -> None:
    """Give the whole pages inside ``data[:extent]`` (all of ``data`` by default) back to the OS; they
    read as zeros until written again.

    The caller guarantees that no memoryview of ``data`` is alive (a reader
    would see its bytes turn to zeros).  The partial pages at the two ends
    keep their bytes.  Without page dropping this does nothing: pool buffers
    never read bytes they did not write since their last clear, so stale
    bytes are harmless, they only cost memory.
    """
    if _bound is not None and len(data) >= 4 * _PAGE:
        size = len(data) if extent is None else min(extent, len(data))
        if size >= _PAGE:  # less holds no whole page
            _advise_interior(_address(data), size)
