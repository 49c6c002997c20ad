"""FrameWriter: encode a stream of events or list items into one pool buffer
at a time and hand each filled buffer to an async ``send``.

A stream holds exactly one pool buffer at a time, so the pool's budget caps
the memory of all streams together; acquiring that buffer is where a new
stream waits when the budget is used up.  ``send`` is awaited before the
buffer is reused, so a slow client slows the producer instead of growing
memory (the send side is expected to apply the transport's own
high/low-watermark flow control, as uvicorn's does).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Optional

from .errors import BufferExported, BufferFull, FrameTooLarge
from .limits import DEFAULT_FLUSH_BYTES
from .pool import BufferPool, PoolBuffer
from .protocol import BytesLike, Encoder

__all__ = ["FrameWriter"]

Send = Callable[[memoryview], Awaitable[None]]


def _copy_into(frame: BytesLike, buf: PoolBuffer) -> int:
    """Append ``frame`` to ``buf`` (the ``*_into`` contract)."""
    n = len(frame)
    if n > buf.remaining:
        raise BufferFull("the frame does not fit the space left in the buffer")
    buf.data[buf.length : buf.length + n] = frame
    buf.length += n
    return n


class FrameWriter:
    """Writes frames of one stream through ``encoder`` into buffers of ``pool``.

    ``flush_bytes``: once the current buffer holds at least this many bytes
    it is sent (default: ``limits.DEFAULT_FLUSH_BYTES`` or half a buffer,
    whichever is less), so large frames leave promptly, small ones are
    batched, and only the start of the buffer is ever written.  Call
    :meth:`flush` to send at once (after each live watch event, say), and
    :meth:`release_idle` to hold no buffer while quiet.  Use as
    ``async with FrameWriter(...) as w:``; leaving the block flushes (on
    success) and always returns the buffer.
    """

    def __init__(
        self,
        encoder: Encoder,
        pool: BufferPool,
        send: Send,
        *,
        flush_bytes: Optional[int] = None,
        acquire_timeout: Optional[float] = None,
        live_pool: Optional[BufferPool] = None,
        on_live: Optional[Callable[[], None]] = None,
    ) -> None:
        self.encoder = encoder
        self.pool = pool
        self._send = send
        self._live_pool = live_pool
        self._on_live = on_live
        #: set by :meth:`go_live`: each flush sends a copy and gives the buffer back first
        self.live = False
        self.flush_bytes = min(DEFAULT_FLUSH_BYTES, pool.buffer_size // 2) if flush_bytes is None else flush_bytes
        self.acquire_timeout = acquire_timeout
        self._buf: Optional[PoolBuffer] = None
        #: an encoder ran out of room in the current buffer (it may have written up to its end)
        self._overflowed = False
        self._open = False
        self._list_index: Optional[int] = None
        self._list_count: Optional[int] = None
        self.bytes_sent = 0
        self.frames = 0

    async def __aenter__(self) -> "FrameWriter":
        await self.open()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            self.close()

    async def open(self) -> None:
        """Acquire this stream's buffer (waits while the pool is used up)."""
        if self._buf is None:
            self._buf = await self.pool.acquire_async(self.acquire_timeout)
            self._overflowed = False
        self._open = True

    def release_idle(self) -> None:
        """Give the buffer back to the pool while nothing is pending in it.

        For a stream that may stay quiet for long (a live watch): it keeps no
        buffer while idle, and its next frame takes one again, waiting for it
        if the pool is used up (its backpressure, like a slow socket's).
        """
        buf = self._buf
        if buf is not None and buf.length == 0:
            self._buf = None
            self.pool.retire(buf)

    def go_live(self) -> None:
        """The stream turns into a live feed of rare, small frames (a watch after its initial events).

        From now on a flush copies the frames out and returns the buffer *before* waiting on
        ``send``, so a slow client never holds a pool buffer, and frames are written through the
        writer's ``live_pool`` when it has one (a pool no bulk stream competes for).  ``on_live``
        runs once (an admission slot given back).  Call it with nothing pending.
        """
        if self.live:
            return
        self.release_idle()
        self.live = True
        if self._live_pool is not None:
            self.pool = self._live_pool
        if self._on_live is not None:
            on_live, self._on_live = self._on_live, None
            on_live()

    def redirect(self, send: Send) -> None:
        """Send every later flush through ``send`` (a connection taken over by another sender)."""
        self._send = send

    def close(self) -> None:
        """Return every buffer to the pool; unsent bytes are dropped."""
        buf, self._buf = self._buf, None
        self._open = False
        if buf is not None:
            # A send side that kept a view of it (a transport holding on to
            # the bytes) gets it reclaimed by the pool once that view is gone.
            self.pool.retire(buf)

    async def flush(self) -> None:
        """Send what the current buffer holds, then reuse (or replace) it."""
        if not self._open:
            raise RuntimeError("FrameWriter is not open")
        buf = self._buf
        if buf is None or buf.length == 0:
            return
        if self.live:
            frames = buf.getvalue()  # one live event or a few: small, and the buffer goes back now
            self._buf = None
            # what this writer wrote since it took the buffer: the pool need not walk the rest's pages
            self.pool.retire(buf, None if self._overflowed else buf.length)
            with memoryview(frames) as view:
                await self._send(view)
            self.bytes_sent += len(frames)
            return
        view = buf.view()
        try:
            await self._send(view)
        finally:
            view.release()
        self.bytes_sent += buf.length
        try:
            buf.clear()
        except BufferExported:
            # The send side still references these bytes: never overwrite
            # them; the pool reclaims the buffer once the reference is gone.
            self._buf = None
            self.pool.retire(buf)
            self._buf = await self.pool.acquire_async(self.acquire_timeout)
            self._overflowed = False

    async def _take_buffer(self) -> PoolBuffer:
        if not self._open:
            raise RuntimeError("FrameWriter is not open")
        if self._buf is None:  # given back by release_idle: wait for one (no timeout: backpressure)
            self._buf = await self.pool.acquire_async()
            self._overflowed = False
        return self._buf

    async def _write(self, method: Callable[..., int], *args: Any) -> int:
        buf = await self._take_buffer()
        try:
            n = method(*args, buf)
        except BufferFull:
            self._overflowed = True
            if buf.length == 0:
                raise FrameTooLarge(
                    f"frame does not fit one pool buffer of {buf.capacity} bytes",
                    self.encoder.max_frame_size,
                ) from None
            await self.flush()
            n = method(*args, await self._take_buffer())  # a live flush gave its buffer back
        self.frames += 1
        if self._buf is not None and self._buf.length >= self.flush_bytes:
            await self.flush()
        return n

    async def write(self, write_into: Callable[[PoolBuffer], int]) -> int:
        """Append one frame that ``write_into(buf)`` writes (flushing first if it does not fit).

        ``write_into`` follows the encoders' ``*_into`` contract: append one
        frame at ``buf.length`` and return its size, or raise
        :class:`BufferFull` with ``buf.length`` as it was.  For frames built in
        place, such as an encoder's output patched where it lies.
        """
        return await self._write(write_into)

    async def write_bytes(self, frame: BytesLike) -> int:
        """Append one complete frame given as bytes (a frame encoded before, for another stream).

        A frame of at least ``flush_bytes`` goes to ``send`` as it is, after what the buffer
        holds: copying it into the buffer first would only cost a copy and the buffer's pages.
        """
        n = len(frame)
        if n < self.flush_bytes or self.live:
            return await self._write(_copy_into, frame)
        if not self._open:
            raise RuntimeError("FrameWriter is not open")
        await self.flush()
        with memoryview(frame) as view:
            await self._send(view)
        self.bytes_sent += n
        self.frames += 1
        return n

    # watch events -----------------------------------------------------------
    async def event(self, type: str, obj: Any) -> int:
        return await self._write(self.encoder.encode_event_into, type, obj)

    async def raw_event(self, type: str, raw: BytesLike) -> int:
        return await self._write(self.encoder.encode_raw_event_into, type, raw)

    # list bodies ------------------------------------------------------------
    async def list_start(
        self, *, kind: str, api_version: str, metadata: dict, count: Optional[int] = None,
        items_size: Optional[int] = None,
    ) -> int:
        """Open a list body.  ``items_size``: the items' total bytes, for a format that needs it up front."""
        if self._list_index is not None:
            raise RuntimeError("a list body is already open")
        if not self._open:
            raise RuntimeError("FrameWriter is not open")

        extra = {} if items_size is None else {"items_size": items_size}

        def start(b: PoolBuffer) -> int:
            return self.encoder.encode_list_start_into(
                b, kind=kind, api_version=api_version, metadata=metadata, count=count, **extra
            )

        n = await self._write(start)
        self._list_index, self._list_count = 0, count
        return n

    def _next_index(self) -> int:
        if self._list_index is None:
            raise RuntimeError("no list body is open")
        if self._list_count is not None and self._list_index >= self._list_count:
            raise ValueError(f"list announced {self._list_count} items; got more")
        return self._list_index

    async def list_item(self, obj: Any) -> int:
        index = self._next_index()
        n = await self._write(lambda o, b: self.encoder.encode_list_item_into(o, b, index), obj)
        self._list_index = index + 1
        return n

    async def list_raw_item(self, raw: BytesLike) -> int:
        index = self._next_index()
        n = await self._write(lambda r, b: self.encoder.encode_raw_list_item_into(r, b, index), raw)
        self._list_index = index + 1
        return n

    async def list_item_with(self, write_into: Callable[[PoolBuffer, int], int]) -> int:
        """One list item that ``write_into(buf, index)`` writes (the ``*_into`` contract)."""
        index = self._next_index()
        n = await self._write(lambda b: write_into(b, index))
        self._list_index = index + 1
        return n

    async def list_end(self) -> int:
        if self._list_index is None:
            raise RuntimeError("no list body is open")
        count = self._list_index
        if self._list_count is not None and count != self._list_count:
            raise ValueError(f"list announced {self._list_count} items; got {count}")
        n = await self._write(lambda b: self.encoder.encode_list_end_into(b, count))
        self._list_index = self._list_count = None
        return n
