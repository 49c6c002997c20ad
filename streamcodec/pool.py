"""A bounded pool of reusable write buffers.

The pool owns a fixed byte budget split into equal buffers.  Encoders write
whole frames into a :class:`PoolBuffer`; the bytes go to the socket straight
from it, and the buffer goes back to the pool.  When every buffer is in use,
:meth:`BufferPool.acquire` raises :class:`PoolExhausted` and
:meth:`BufferPool.acquire_async` waits (backpressure): the pool never grows.
The budget bounds memory; what a process actually holds is less: a buffer's
pages are mapped only where frames were written, and an idle buffer's pages
go back to the OS (Linux).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Deque, List, Optional

from .errors import BufferExported, PoolExhausted
from ._pages import drop_pages, zeroed_bytearray
from .limits import DEFAULT_BUFFER_SIZE, DEFAULT_POOL_BYTES

__all__ = ["BufferPool", "PoolBuffer", "PoolStats"]


class PoolBuffer:
    """A fixed-capacity byte buffer; frames are appended at ``length``.

    ``data`` is a bytearray of exactly ``capacity`` bytes that is never
    resized; ``length`` counts the bytes written so far.  Encoders write into
    ``data[length:]`` and advance ``length``.  A buffer made directly (not by
    a pool) is fine for ``encode_into``; it is then simply garbage collected.
    """

    __slots__ = ("data", "length", "_pool", "_acquired", "_extent", "__weakref__")

    def __init__(self, capacity: int, _pool: Optional["BufferPool"] = None) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.data = zeroed_bytearray(capacity)  # pages become resident only where written
        self.length = 0
        self._pool = _pool
        self._acquired = False  # handed out by its pool and not yet released
        self._extent = 0  # bytes from the start that may be non-zero since the pool last dropped its pages

    @property
    def capacity(self) -> int:
        return len(self.data)

    @property
    def remaining(self) -> int:
        return len(self.data) - self.length

    def view(self) -> memoryview:
        """A memoryview of the written bytes.

        While any such view is alive the buffer refuses :meth:`clear` and
        :meth:`release` (:class:`BufferExported`): release the view first
        (``view.release()`` or drop it).
        """
        return memoryview(self.data)[: self.length]

    def getvalue(self) -> bytes:
        """A copy of the written bytes (for tests and small frames)."""
        return bytes(memoryview(self.data)[: self.length])

    def is_exported(self) -> bool:
        """True while a memoryview (or other buffer export) of ``data`` lives."""
        data = self.data
        # CPython refuses any size change of a bytearray with live exports;
        # a one-byte shrink and regrow stays inside the allocation, so this
        # costs nothing and never reallocates.
        last = data[-1]
        try:
            del data[-1]
        except BufferError:
            return True
        data.append(last)
        return False

    def clear(self) -> None:
        """Forget the written bytes so the buffer can be filled again."""
        if self.is_exported():
            raise BufferExported("buffer cleared while a memoryview of it is alive")
        self.length = 0

    def release(self) -> None:
        """Give the buffer back to its pool (a no-op for a pool-less buffer)."""
        if self._pool is not None:
            self._pool.release(self)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"<PoolBuffer {self.length}/{len(self.data)} bytes>"


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's accounting, in bytes unless noted."""

    budget: int  #: the fixed budget (buffer_size × number of buffers)
    buffer_size: int
    in_use: int  #: bytes of buffers handed out and not yet released
    high_water: int  #: the most ``in_use`` has ever been
    allocated: int  #: bytes of buffers created so far (≤ budget)
    waits: int  #: how many acquire_async calls had to wait
    waiting: int  #: acquire_async calls waiting right now
    retired: int  #: bytes given back while still exported (counted in ``in_use``)


class BufferPool:
    """A fixed budget of ``budget_bytes`` split into buffers of ``buffer_size``.

    Buffers are created lazily, up to ``budget_bytes // buffer_size`` of
    them, and reused after release.  The waiting side is asyncio-only and
    first-come first-served; call it from one event loop.
    """

    def __init__(
        self,
        budget_bytes: int = DEFAULT_POOL_BYTES,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        if buffer_size <= 0:
            raise ValueError("buffer_size must be positive")
        if budget_bytes < buffer_size:
            raise ValueError(
                f"budget_bytes ({budget_bytes}) must hold at least one buffer "
                f"of buffer_size ({buffer_size})"
            )
        self.buffer_size = buffer_size
        self.max_buffers = budget_bytes // buffer_size
        self._free: List[PoolBuffer] = []
        # Retired: given back while a memoryview of them was still alive.
        # They stay counted as in use until that view is gone.
        self._retired: List[PoolBuffer] = []
        self._allocated = 0
        self._in_use = 0
        self._high_water = 0
        self._waits = 0
        self._waiters: Deque[asyncio.Future[PoolBuffer]] = collections.deque()

    @property
    def budget(self) -> int:
        return self.max_buffers * self.buffer_size

    def _take(self) -> Optional[PoolBuffer]:
        if not self._free and self._retired:
            self._reclaim()
        if self._free:
            buf = self._free.pop()
        elif self._allocated < self.max_buffers:
            buf = PoolBuffer(self.buffer_size, self)
            self._allocated += 1
        else:
            return None
        buf._acquired = True
        self._in_use += 1
        if self._in_use > self._high_water:
            self._high_water = self._in_use
        return buf

    def acquire(self) -> PoolBuffer:
        """Take an empty buffer now, or raise :class:`PoolExhausted`."""
        buf = self._take() if not self._waiters else None
        if buf is None:
            raise PoolExhausted(
                f"all {self.max_buffers} buffers of {self.buffer_size} bytes are in use"
            )
        return buf

    async def acquire_async(self, timeout: Optional[float] = None) -> PoolBuffer:
        """Take an empty buffer, waiting while the budget is used up.

        Raises :class:`asyncio.TimeoutError` after ``timeout`` seconds.
        """
        if not self._waiters:
            buf = self._take()
            if buf is not None:
                return buf
        fut: asyncio.Future[PoolBuffer] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._waits += 1
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # Handed a buffer just as we were cancelled: give it back.
                self._give_back(fut.result())
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self, buf: PoolBuffer, extent: Optional[int] = None) -> None:
        """Return ``buf``; refused with :class:`BufferExported` while a view of it lives.

        ``extent``: how many bytes from the buffer's start its holder may have written (None: any
        of them).  The pool gives the pages past every holder's extent back to the OS only once, so a
        holder that wrote one small frame into a large buffer spares it a page-table walk.
        """
        if buf._pool is not self:
            raise ValueError("buffer does not belong to this pool")
        if not buf._acquired:
            # A second release would put it on the free list twice: two
            # streams would then write into the same memory.
            raise ValueError("buffer released twice")
        if buf.is_exported():
            raise BufferExported("buffer released while a memoryview of it is alive")
        buf.length = 0
        buf._extent = len(buf.data) if extent is None else max(buf._extent, extent)
        self._give_back(buf)

    def retire(self, buf: PoolBuffer, extent: Optional[int] = None) -> None:
        """Give ``buf`` back even if a memoryview of it is still alive.

        A buffer that is not exported is released at once.  An exported one
        stays counted as in use and is reclaimed, by a later acquire or
        release, once nothing references its memory any more: the budget is
        never exceeded and the memory is never recycled under a reader.
        ``extent``: as for :meth:`release`.
        """
        if buf._pool is not self:
            raise ValueError("buffer does not belong to this pool")
        if not buf._acquired or buf in self._retired:
            raise ValueError("buffer released twice")
        if buf.is_exported():
            buf._extent = len(buf.data)
            self._retired.append(buf)
        else:
            self.release(buf, extent)

    def _reclaim(self) -> None:
        still = []
        for buf in self._retired:
            if buf.is_exported():
                still.append(buf)
            else:
                buf.length = 0
                self._shelve(buf)
        self._retired = still

    def _give_back(self, buf: PoolBuffer) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(buf)  # stays in use: handed straight over
                return
        self._shelve(buf)

    def _shelve(self, buf: PoolBuffer) -> None:
        # An idle buffer keeps its place in the budget but not its memory.
        if buf._extent:
            drop_pages(buf.data, buf._extent)
            buf._extent = 0
        buf._acquired = False
        self._in_use -= 1
        self._free.append(buf)

    def stats(self) -> PoolStats:
        return PoolStats(
            budget=self.budget,
            buffer_size=self.buffer_size,
            in_use=self._in_use * self.buffer_size,
            high_water=self._high_water * self.buffer_size,
            allocated=self._allocated * self.buffer_size,
            waits=self._waits,
            waiting=sum(1 for f in self._waiters if not f.done()),
            retired=len(self._retired) * self.buffer_size,
        )

    def __repr__(self) -> str:
        s = self.stats()
        return f"<BufferPool {s.in_use}/{s.budget} bytes in use>"
