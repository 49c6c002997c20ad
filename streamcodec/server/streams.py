"""Streaming responses: storage stream + format -> ASGI response.

:class:`StreamResponse` is the "single call" for servers with their own
routing: give it an async producer that writes frames through a
:class:`~streamcodec.writer.FrameWriter`, and call it as an ASGI app
(``await response(scope, receive, send)``; a Starlette endpoint may return it
as is).  :func:`list_response` and :func:`watch_response` build one from a
storage list or watch stream.

What every stream gets:

* memory: the stream writes through one pool buffer at a time
  (FrameWriter); ``send`` is awaited before the buffer is reused, and the
  ASGI server's flow control makes ``send`` wait while the socket is backed
  up, so a slow client holds at most its buffer plus the transport's
  high-water mark and one chunk;
* a stalled client (one ``send`` waiting longer than ``stall_timeout``) is
  disconnected;
* a client that disconnects (noticed through ``receive()`` even while a
  watch is idle) has its producer cancelled, which closes the storage
  stream (and with it the etcd watch or range) and returns the buffer;
* an error after the response started: a watch gets an ``ERROR`` event
  carrying the Status and ends cleanly; a list body cannot be amended, so
  the connection is aborted (the client sees a truncated body, as with
  kube-apiserver).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Tuple

from streamcodec import BufferFull, BufferPool, EncodeError, FrameTooLarge, PoolBuffer
from streamcodec.writer import FrameWriter

from .objects import (
    _JSON_LAYOUT_PREFIX,
    _PREFIX_LEN,
    _RV_KEY,
    decode_stored,
    detect_format,
    splice_resource_version,
    with_byte_strings,
)
from .status import APIError, from_storage_error, internal_error

from streamcodec.storage import errors as storage_errors

__all__ = ["StreamResponse", "ClientStalled", "ItemWriter"]

log = logging.getLogger("apiserver")

_CLOSE_BRACE = ord("}")

Producer = Callable[[FrameWriter], Awaitable[None]]


#: Largest ASGI body message a stream sends.  A pool buffer's contents go out
#: in pieces of at most this size, so the ASGI server's chunk-framing copy and
#: the transport's write buffer each hold at most one piece of a stream, not a
#: whole buffer, and freshly allocated copies stay small enough for the
#: allocator to reuse instead of mapping (and page-faulting) new memory.
SEND_PIECE_BYTES = 256 * 1024

#: How long a cancelled producer gets to end before its storage stream is
#: closed underneath it (and again after that).  Cancelling an etcd read
#: ends it at once; this only bounds the wait should something swallow the
#: cancellation.
CANCEL_GRACE_SECONDS = 5.0

#: ``asyncio.timeout`` (3.11+) bounds a send without wrapping it in a Task.
_timeout = getattr(asyncio, "timeout", None)


def server_copies_body(send: Any) -> bool:
    """Whether ``send`` copies a response body before it returns.

    uvicorn's h11 protocol always does (h11 joins the framing and the data
    into new bytes), and its httptools protocol does for a chunked body
    (``b"".join`` of size line, data and CRLF).  Such a ``send`` may be
    handed a memoryview of the pool buffer instead of a ``bytes`` copy: the
    copy it makes is the only one.  Every other server gets ``bytes``, as the
    ASGI spec asks.
    """
    cycle = getattr(send, "__self__", None)
    module = type(cycle).__module__
    if module == "uvicorn.protocols.http.h11_impl":
        return True
    if module == "uvicorn.protocols.http.httptools_impl":
        return getattr(cycle, "chunked_encoding", None) is True
    return False


class ClientStalled(Exception):
    """A send did not complete within the stall timeout."""


class _Aborted(Exception):
    """Internal: the body cannot be completed; drop the connection."""


async def close_iterator(it: Any) -> None:
    """Close a storage stream (async generator or object with ``aclose``)."""
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def _abort_transport(send: Any) -> bool:
    """Drop the TCP connection at once (uvicorn: the cycle's transport).

    ``transport.close()`` would wait to flush data a stalled client never
    reads; ``abort()`` frees it now.  Other servers: the exception raised by
    the caller makes the server close the connection its own way.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    if abort is None:
        return False
    abort()
    return True


class StreamResponse:
    """An ASGI response whose body a producer writes through a FrameWriter.

    ``headers_first``: send the status line and headers before the first
    frame (watches: clients wait for headers before reading events);
    otherwise they go with the first chunk.  ``on_error`` turns an error
    raised by the producer after the headers went out into a final frame
    (a watch's ERROR event); without it the connection is aborted.
    ``on_close`` runs exactly once when the response is done, however it
    ends (admission bookkeeping).
    """

    def __init__(
        self,
        producer: Producer,
        *,
        encoder: Any,
        pool: BufferPool,
        content_type: str,
        status: int = 200,
        headers_first: bool = False,
        stall_timeout: Optional[float] = 30.0,
        acquire_timeout: Optional[float] = 5.0,
        on_error: Optional[Callable[[FrameWriter, APIError], Awaitable[None]]] = None,
        on_close: Optional[Callable[[], None]] = None,
        cleanup: Optional[Callable[[], Awaitable[None]]] = None,
        live_pool: Optional[BufferPool] = None,
        on_live: Optional[Callable[[], None]] = None,
        live_stall_timeout: Optional[float] = None,
        contended: Optional[Callable[[], bool]] = None,
        contended_stall_timeout: Optional[float] = None,
    ) -> None:
        self.producer = producer
        self.encoder = encoder
        self.pool = pool
        self.content_type = content_type
        self.status = status
        self.headers_first = headers_first
        self.stall_timeout = stall_timeout
        self.acquire_timeout = acquire_timeout
        self.on_error = on_error
        self.on_close = on_close
        self.cleanup = cleanup
        self.live_pool = live_pool
        self.on_live = on_live
        self.live_stall_timeout = live_stall_timeout if live_stall_timeout is not None else stall_timeout
        self.contended = contended
        self.contended_stall_timeout = contended_stall_timeout
        self._writer: Optional[FrameWriter] = None
        self.started = False
        #: how the stream ended: "complete", "error-event", "disconnected", "stalled", "aborted"
        self.outcome = ""

    async def _start(self, send: Any) -> None:
        if not self.started:
            self.started = True
            await self._send_timed(
                send,
                {
                    "type": "http.response.start",
                    "status": self.status,
                    "headers": [(b"content-type", self.content_type.encode()), (b"cache-control", b"no-cache, private")],
                },
            )

    async def _send_timed(self, send: Any, message: Dict[str, Any]) -> None:
        live = self._writer is not None and self._writer.live
        if not live and self.contended is not None and self.contended_stall_timeout is not None:
            await self._send_yielding(send, message)
            return
        # a live watcher gets less patience: its client must keep up with the events
        limit = self.live_stall_timeout if live else self.stall_timeout
        try:
            if _timeout is not None:
                async with _timeout(limit):
                    await send(message)
            else:
                await asyncio.wait_for(send(message), limit)
        except asyncio.TimeoutError:
            what = "a live watch event" if live else "the stream"
            raise ClientStalled(f"client did not take {what} within {limit} s") from None

    async def _send_yielding(self, send: Any, message: Dict[str, Any]) -> None:
        """A bulk stream's send: ``stall_timeout`` at most, ``contended_stall_timeout`` while others wait for a slot.

        Contention may begin while a send already waits, so it is looked at again every
        ``contended_stall_timeout`` seconds.
        """
        assert self.contended is not None and self.contended_stall_timeout is not None
        task = asyncio.ensure_future(send(message))
        start = time.monotonic()
        step = self.contended_stall_timeout
        try:
            while True:
                elapsed = time.monotonic() - start
                left = self.stall_timeout - elapsed
                if left <= 0:
                    raise ClientStalled(f"client read nothing for {self.stall_timeout} s")
                await asyncio.wait({task}, timeout=min(step, left))
                if task.done():
                    task.result()
                    return
                if time.monotonic() - start >= step and self.contended():
                    raise ClientStalled(
                        f"client took nothing for {step} s while other streams waited for its slot"
                    )
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        disconnected = asyncio.Event()

        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return

        copies_body: Optional[bool] = None

        async def send_chunk(view: memoryview) -> None:
            nonlocal copies_body
            await self._start(send)
            if copies_body is None:
                copies_body = server_copies_body(send)  # known once the headers went out
            for offset in range(0, len(view), SEND_PIECE_BYTES):
                with view[offset : offset + SEND_PIECE_BYTES] as piece:
                    # ASGI bodies are bytes; a server that copies anyway gets the view.
                    body = piece if copies_body else bytes(piece)
                    await self._send_timed(send, {"type": "http.response.body", "body": body, "more_body": True})
                    del body

        writer = self._writer = FrameWriter(
            self.encoder, self.pool, send_chunk, acquire_timeout=self.acquire_timeout, live_pool=self.live_pool,
            on_live=self.on_live,
        )

        async def run() -> None:
            try:
                await writer.open()
            except asyncio.TimeoutError:
                raise APIError(429, "TooManyRequests", "the server's stream buffer budget is used up", retry_after=1) from None
            if self.headers_first:
                await self._start(send)
            try:
                await self.producer(writer)
                await writer.flush()
            except (ClientStalled, asyncio.CancelledError):
                raise
            except Exception as exc:
                api_error = to_api_error(exc)
                if not self.started:
                    raise api_error from exc
                if self.on_error is None:
                    raise _Aborted() from exc
                await self.on_error(writer, api_error)
                await writer.flush()
                self.outcome = "error-event"
            await self._start(send)
            await self._send_timed(send, {"type": "http.response.body", "body": b"", "more_body": False})
            if not self.outcome:
                self.outcome = "complete"

        producer_task = asyncio.ensure_future(run())
        watcher_task = asyncio.ensure_future(watch_disconnect())
        cleaned_up = False

        async def stop_producer() -> None:
            # Cancelling the producer ends its storage stream.  Should it not
            # end (cancellation swallowed somewhere below), closing the
            # storage stream underneath it makes its next read end it; either
            # way this never waits without bound.
            nonlocal cleaned_up
            producer_task.cancel()
            await asyncio.wait({producer_task}, timeout=CANCEL_GRACE_SECONDS)
            if not producer_task.done() and self.cleanup is not None:
                log.warning("a stream's producer outlived its cancellation; closing its storage stream")
                cleaned_up = True
                await self.cleanup()
                producer_task.cancel()
                await asyncio.wait({producer_task}, timeout=CANCEL_GRACE_SECONDS)
            if not producer_task.done():
                log.error("a stream's producer ignored cancellation and a closed storage stream: leaving it")

        try:
            await asyncio.wait({producer_task, watcher_task}, return_when=asyncio.FIRST_COMPLETED)
            if not producer_task.done():
                self.outcome = "disconnected"
                await stop_producer()
            elif not producer_task.cancelled():
                producer_task.result()  # the producer's own error, handled below
        except APIError as exc:
            if self.started:
                raise
            await send_error_response(send, exc, self.encoder)
        except ClientStalled as exc:
            self.outcome = "stalled"
            log.info("disconnecting a stalled client: %s", exc)
            if not _abort_transport(send):
                raise
        except _Aborted as exc:
            self.outcome = "aborted"
            log.error("list stream failed after the response started", exc_info=exc.__cause__)
            if not _abort_transport(send):
                raise
        finally:
            # Nested so that a second cancellation (a server shutting down
            # impatiently) still returns the buffer, closes the storage stream
            # and frees the stream's admission slot.
            watcher_task.cancel()
            try:
                if not producer_task.done():  # this task itself was cancelled (server shutdown)
                    await stop_producer()
                await asyncio.wait({watcher_task}, timeout=CANCEL_GRACE_SECONDS)
            finally:
                writer.close()
                try:
                    if self.cleanup is not None and not cleaned_up:
                        await self.cleanup()
                finally:
                    for task in (producer_task, watcher_task):
                        if task.done() and not task.cancelled():
                            task.exception()  # retrieved: never "exception was never retrieved" noise
                    if self.on_close is not None:
                        self.on_close()


def to_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, storage_errors.StorageError):
        return from_storage_error(exc)
    if isinstance(exc, FrameTooLarge):
        return APIError(500, "InternalError", "an object is larger than the server's frame limit")
    if isinstance(exc, EncodeError):
        # a stored object this media type cannot carry (an int past 2**53 in the Struct protobuf):
        # the client may ask for another; other streams are unaffected
        return APIError(406, "NotAcceptable", f"an object cannot be represented in the requested media type: {exc}")
    log.error("unexpected error in a stream", exc_info=exc)
    return internal_error()


async def send_error_response(send: Any, error: APIError, encoder: Any) -> None:
    """A complete non-streaming response holding ``error``'s Status."""
    try:
        body = encoder.encode(error.status())
        content_type = encoder.content_type
    except Exception:  # a Status always encodes as JSON
        import json

        body = json.dumps(error.status()).encode()
        content_type = "application/json"
    headers: List[Tuple[bytes, bytes]] = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    for k, v in error.headers().items():
        headers.append((k.lower().encode(), v.encode()))
    await send({"type": "http.response.start", "status": error.code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# ---------------------------------------------------------------------------
# storage values -> frames


class ItemWriter:
    """How the stored values of one response become its list items and watch events.

    One per response: it knows the format, the kind and the encoder.

    * JSON in this server's stored layout goes out as stored (pass-through), with
      ``metadata.resourceVersion`` spliced in; a list item also loses the stored
      ``kind``/``apiVersion`` (kube-apiserver's list items carry neither; watch objects do).
    * Kubernetes' typed protobuf is transcoded from the stored JSON in one pass.
    * Everything else is decoded, patched and re-encoded; for CBOR, the kind's ``[]byte``
      fields (per the schema registry) become byte strings, as Kubernetes writes them.
    """

    __slots__ = ("encoder", "fmt", "kind", "passthrough", "typed", "byte_paths", "_list_suffix")

    def __init__(self, encoder: Any, fmt: str, resource: Any, passthrough: bool, byte_paths: Optional[Dict[str, Any]] = None) -> None:
        self.encoder = encoder
        self.fmt = fmt
        self.kind = resource.kind
        self.passthrough = passthrough and fmt == "json"
        self.typed = hasattr(encoder, "encode_stored_event_into")
        self.byte_paths = byte_paths or {}
        self._list_suffix = b',"kind":"%s","apiVersion":"v1"}' % resource.kind.encode()

    @property
    def needs_items_size(self) -> bool:
        """A list body that needs its items' total size before them (typed protobuf)."""
        return self.typed

    def _object(self, value: Any, revision: int, list_item: bool) -> Dict[str, Any]:
        obj = decode_stored(value, revision)
        if list_item:
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
        if self.byte_paths:
            obj = with_byte_strings(obj, self.byte_paths)
        return obj

    def item_size(self, value: Any, revision: int) -> int:
        """Bytes one list item adds to a typed protobuf list body."""
        if detect_format(value) == "json":
            return int(self.encoder.list_item_size(value, revision))
        probe = PoolBuffer(self.encoder.max_frame_size)
        return int(self.encoder.encode_list_item_into(self._object(value, revision, True), probe, 0))

    async def item(self, writer: FrameWriter, value: Any, revision: int) -> None:
        """One list item."""
        if self.passthrough:
            spliced = splice_resource_version(value, revision, drop_suffix=self._list_suffix)
            if spliced is not None:
                await writer.list_raw_item(spliced)
                return
        elif self.typed and detect_format(value) == "json":
            encode = self.encoder.encode_stored_list_item_into
            await writer.list_item_with(lambda buf, index: encode(value, revision, buf, index))
            return
        await writer.list_item(self._object(value, revision, True))

    async def event(self, writer: FrameWriter, type: str, value: Any, revision: int) -> None:
        """One watch event."""
        if self.passthrough and bytes(value[:_PREFIX_LEN]) == _JSON_LAYOUT_PREFIX:
            await writer.write(_SplicedEventInto(writer.encoder, type, value, revision))
            return
        if self.typed and detect_format(value) == "json":
            encode = self.encoder.encode_stored_event_into
            await writer.write(lambda buf: encode(type, value, revision, buf))
            return
        await writer.event(type, self._object(value, revision, False))


#: A stored object in this server's layout with nothing in it: finds where an
#: encoder puts the raw object inside its event frame.
_PROBE_OBJECT = _JSON_LAYOUT_PREFIX + b"}}"
_event_edges: Dict[Tuple[type, str], Tuple[bytes, bytes]] = {}


def _raw_event_edges(encoder: Any, type: str) -> Tuple[bytes, bytes]:
    """(bytes before, bytes after) the raw object in ``encoder``'s raw event frame."""
    key = (encoder.__class__, type)
    edges = _event_edges.get(key)
    if edges is None:
        frame = encoder.encode_raw_event(type, _PROBE_OBJECT)
        at = frame.index(_PROBE_OBJECT)
        edges = _event_edges[key] = (frame[:at], frame[at + len(_PROBE_OBJECT) :])
    return edges


#: Below this many bytes a plain search is already cheap.
_QUOTE_WALK_MIN_BYTES = 64 * 1024
#: Quotes the walk tries before it hands the rest to the plain search.
_QUOTE_WALK_LIMIT = 64


def _find_key(data: bytearray, start: int, end: int) -> int:
    """Where ``"resourceVersion"`` first occurs in ``data[start:end]``, or -1.

    ``bytearray.find`` with a 17-byte needle runs at ~6 GB/s (two-way), which
    made this check the costliest step of a large object's event.  Large
    stored objects are mostly one long string (a Secret's base64): walking
    its few quotes with the memchr-based one-byte search is ~10 x faster.  A
    quote-dense value stops the walk after a few quotes and is searched
    plainly from there, so no input gets much slower.
    """
    if end - start < _QUOTE_WALK_MIN_BYTES:
        return data.find(_RV_KEY, start, end)
    pos = start
    for _ in range(_QUOTE_WALK_LIMIT):
        quote = data.find(b'"', pos, end)
        if quote == -1 or data.startswith(_RV_KEY, quote, end):
            return quote
        pos = quote + 1
    return data.find(_RV_KEY, pos, end)


class _SplicedEventInto:
    """Writes a stored JSON object as a raw watch event with resourceVersion spliced in, in the pool buffer.

    The encoder writes the stored bytes into the buffer as they are (its
    ``encode_raw_event_into``: the one copy of the object); then the tail
    after ``{"metadata":{`` moves right, in place, to make room for
    ``"resourceVersion":"N",``.  No object-sized temporary is allocated.
    The checks of :func:`splice_resource_version` run on the frame where it
    lies: the object starts with this server's layout prefix and holds no
    ``"resourceVersion"``.  When they fail the frame is undone and written the
    slow way (decoded, patched, re-encoded).
    """

    __slots__ = ("encoder", "type", "value", "revision")

    def __init__(self, encoder: Any, type: str, value: Any, revision: int) -> None:
        self.encoder = encoder
        self.type = type
        self.value = value
        self.revision = revision

    def __call__(self, buf: PoolBuffer) -> int:
        encoder = self.encoder
        header, trailer = _raw_event_edges(encoder, self.type)
        start = buf.length
        n = encoder.encode_raw_event_into(self.type, self.value, buf)  # BufferFull leaves buf as it was
        data = buf.data
        at = start + len(header) + _PREFIX_LEN  # just inside the top-level metadata object
        end = start + n - len(trailer)  # just past the object
        if (
            at >= end
            or data[start : start + len(header)] != header
            or data[end : start + n] != trailer
            or data[at - _PREFIX_LEN : at] != _JSON_LAYOUT_PREFIX
            or _find_key(data, at, end) != -1
        ):
            buf.length = start
            return encoder.encode_event_into(self.type, decode_stored(self.value, self.revision), buf)
        insert = b'"resourceVersion":"%d"%s' % (self.revision, b"" if data[at] == _CLOSE_BRACE else b",")
        size = n + len(insert)
        if size > encoder.max_frame_size:
            buf.length = start
            raise FrameTooLarge(f"frame of {size} bytes exceeds max_frame_size {encoder.max_frame_size}", encoder.max_frame_size)
        if start + size > len(data):
            buf.length = start
            raise BufferFull(f"frame of {size} bytes does not fit the {len(data) - start} bytes left in the buffer")
        with memoryview(data) as mv:
            # memoryview slice assignment copies overlapping ranges correctly (memmove).
            mv[at + len(insert) : start + size] = mv[at : start + n]
            mv[at : at + len(insert)] = insert
        buf.length = start + size
        return size


def bookmark_object(kind: str, revision: int, initial_events_end: bool) -> Dict[str, Any]:
    metadata: Dict[str, Any] = {"resourceVersion": str(revision)}
    if initial_events_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"kind": kind, "apiVersion": "v1", "metadata": metadata}


def tombstone_object(kind: str, key: bytes, revision: int) -> Dict[str, Any]:
    """A DELETED event's object when etcd no longer had the previous value."""
    parts = key.decode("utf-8", "replace").rstrip("/").split("/")
    metadata: Dict[str, Any] = {"name": parts[-1], "resourceVersion": str(revision)}
    return {"kind": kind, "apiVersion": "v1", "metadata": metadata}
