"""Streaming responses: a response body + format -> an ASGI response.

:class:`StreamResponse` is the "single call" for servers with their own
routing: give it a :class:`ResponseBody` (``prepare / write / aclose``; the
server's own are :class:`~.bodies.ListBody` and :class:`~.bodies.WatchBody`)
or an async producer that writes frames through a
:class:`~streamcodec.writer.FrameWriter`, and call it as an ASGI app
(``await response(scope, receive, send)``; a Starlette endpoint may return it
as is).  It supervises the body: starts it, runs it, watches for the client's
disconnect, maps errors, and always closes it.

What every stream gets:

* memory: the stream writes through one pool buffer at a time
  (FrameWriter); ``send`` is awaited before the buffer is reused, and the
  ASGI server's flow control makes ``send`` wait while the socket is backed
  up, so a slow client holds at most its buffer plus the transport's
  high-water mark and one piece (``send_piece_bytes``);
* a stalled client (one ``send`` waiting longer than ``stall_timeout``) is
  disconnected;
* a client that disconnects (noticed through ``receive()`` even while a
  watch is idle) has its body's task cancelled, and the body closed, which
  closes the storage stream (and with it the etcd watch or range) and
  returns the buffer;
* a live watch over our uvicorn protocol goes on without its request's
  task (:mod:`.parked_watch`): its idle connection costs ~4 KiB, not ~13;
* an error after the response started: a watch gets an ``ERROR`` event
  carrying the Status and ends cleanly; a list body cannot be amended, so
  the connection is aborted (the client sees a truncated body, as with
  kube-apiserver).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import socket
import struct
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Protocol, Tuple, Union, runtime_checkable

from streamcodec import BufferPool, EncodeError, FrameTooLarge
from streamcodec.storage import errors as storage_errors
from streamcodec.writer import FrameWriter

from .defaults import QUEUE_WAIT, RETRY_AFTER, SEND_PIECE_BYTES, STALL_TIMEOUT
from .objects import codec_message
from .status import APIError, from_storage_error, internal_error, warning_headers

__all__ = [
    "StreamResponse",
    "ResponseBody",
    "ProducerBody",
    "Producer",
    "ClientStalled",
    "SEND_PIECE_BYTES",
    "close_iterator",
    "send_error_response",
    "server_copies_body",
    "to_api_error",
    "reset_transport",
    "Parked",
]

log = logging.getLogger("streamcodec.server")

#: An async function that writes a whole body through a FrameWriter.
Producer = Callable[[FrameWriter], Awaitable[None]]

#: How long a cancelled body gets to end before it is closed underneath its
#: task (and again after that).  Cancelling an etcd read ends it at once;
#: this only bounds the wait should something swallow the cancellation.
CANCEL_GRACE_SECONDS = 5.0

@runtime_checkable
class ResponseBody(Protocol):
    """What a :class:`StreamResponse` streams.

    ``prepare`` opens what the body reads (errors here become a plain Status
    response; calling it again does nothing), ``write`` writes the whole body
    through the writer, ``aclose`` releases what the body holds; it is called
    exactly when the response ends, however it ends, and possibly once before
    that (to end a ``write`` that ignores cancellation), so it must be safe
    to call twice.
    """

    async def prepare(self) -> None: ...
    async def write(self, writer: FrameWriter) -> None: ...
    async def aclose(self) -> None: ...


class ProducerBody:
    """A :class:`ResponseBody` made of a producer and an optional cleanup, run once."""

    def __init__(self, producer: Producer, cleanup: Optional[Callable[[], Awaitable[None]]] = None) -> None:
        self._producer = producer
        self._cleanup = cleanup

    async def prepare(self) -> None:
        """Nothing to open: the producer does its own."""

    async def write(self, writer: FrameWriter) -> None:
        """Run the producer."""
        await self._producer(writer)

    async def aclose(self) -> None:
        """Run the cleanup, the first time only."""
        cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            await cleanup()


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


#: SO_LINGER on, 0 s: close() resets the connection at once, dropping what is unsent
_LINGER_RESET = struct.pack("ii", 1, 0)


class _Resumed:
    """Awaits the rest of a coroutine already stepped once by hand, whose first step yielded ``waiting_on``.

    It yields what the coroutine yields and passes back what the task sends or throws (a
    cancellation, a timeout's included), as ``await coroutine`` would have from the start.
    """

    __slots__ = ("coroutine", "waiting_on")

    def __init__(self, coroutine: Any, waiting_on: Any) -> None:
        self.coroutine = coroutine
        self.waiting_on = waiting_on

    def __await__(self) -> Any:
        coroutine, waiting_on = self.coroutine, self.waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # noqa: BLE001 - thrown into the coroutine, as a task would
                try:
                    waiting_on = coroutine.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting_on = coroutine.send(sent)
                except StopIteration as done:
                    return done.value



class ClientStalled(Exception):
    """A send did not complete within the stall timeout."""


class Parked(Exception):
    """Raised by a body whose response's connection was handed to a :class:`~.parked_watch.ParkedWatch`:
    the response goes on without the request's task."""


class _Aborted(Exception):
    """Internal: the body cannot be completed; drop the connection."""


async def close_iterator(it: Any) -> None:
    """Close a storage stream (async generator or object with ``aclose``)."""
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def reset_transport(transport: Any) -> None:
    """Drop a connection at once, with a reset.

    ``transport.close()`` would wait to flush data a stalled client never
    reads; ``abort()`` frees it now.  A zero linger makes the kernel reset
    the connection too: a plain close would keep the unsent bytes in an
    orphaned socket (FIN-WAIT-1) and leave the client reading stale data,
    then a truncated stream.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


def _abort_transport(send: Any) -> bool:
    """Reset the connection at once (uvicorn: the cycle's transport; :func:`reset_transport`).

    Other servers: False, and the exception raised by the caller makes the
    server close the connection its own way.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if getattr(transport, "abort", None) is None:
        return False
    reset_transport(transport)
    return True


def _hand_over_protocol(send: Any) -> Any:
    """The connection's protocol, when it can hand its connection over (our uvicorn protocol), else None."""
    transport: Any = getattr(getattr(send, "__self__", None), "transport", None)
    protocol = transport.get_protocol() if hasattr(transport, "get_protocol") else None
    return protocol if hasattr(protocol, "hand_over") else None


async def _client_disconnect(receive: Any) -> None:
    """Return once the client has gone (its request body, if any, is already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _ClientGone:
    """Stops a response's body, running in the response's own task, when its client goes.

    The server's connection says when (:meth:`GuardedH11Protocol.call_when_lost
    <streamcodec.server.connections.guarded_h11>`); under another ASGI server a task waits on
    ``receive()`` for ``http.disconnect``.  The body is stopped by cancelling the task; a body that
    swallows the cancellation is ended ``CANCEL_GRACE_SECONDS`` later by closing it underneath.
    """

    __slots__ = ("task", "body", "watching", "happened", "cancels", "timer", "protocol", "receiver")

    def __init__(self, body: "ResponseBody") -> None:
        self.task = asyncio.current_task()
        self.body = body
        self.watching = False  #: between watch() and unwatch(): a late callback (a finished receive()) does nothing
        self.happened = False
        self.cancels = 0
        self.timer: Optional[asyncio.TimerHandle] = None
        self.protocol: Any = None
        self.receiver: Optional["asyncio.Task[None]"] = None

    def watch(self, send: Any, receive: Any) -> None:
        """Start watching for the client's going."""
        self.watching = True
        cycle = getattr(send, "__self__", None)
        transport: Any = getattr(cycle, "transport", None)
        protocol: Any = transport.get_protocol() if hasattr(transport, "get_protocol") else None
        if hasattr(protocol, "call_when_lost"):
            self.protocol = protocol
            protocol.call_when_lost(self.fire)
            if getattr(cycle, "disconnected", False) or transport.is_closing():
                asyncio.get_running_loop().call_soon(self.fire)
        else:
            self.receiver = asyncio.ensure_future(_client_disconnect(receive))
            self.receiver.add_done_callback(self._received)

    def _received(self, receiver: "asyncio.Task[None]") -> None:
        if not receiver.cancelled():
            receiver.exception()  # retrieved: a failing receive() also means the client is gone
            self.fire()

    def fire(self) -> None:
        """The client has gone: stop the body."""
        if not self.watching or self.happened or self.task is None or self.task.done():
            return
        self.happened = True
        self.cancels += 1
        self.task.cancel()
        self.timer = asyncio.get_running_loop().call_later(CANCEL_GRACE_SECONDS, self._close_underneath)

    def _close_underneath(self) -> None:
        self.timer = None
        if self.task is not None and not self.task.done():
            log.warning("a stream's body outlived its cancellation; closing it underneath")
            asyncio.ensure_future(self.body.aclose())
            self.cancels += 1
            self.task.cancel()

    def unwatch(self) -> None:
        """Stop watching: no callback of this one fires from now on (the caller takes back its cancellations)."""
        self.watching = False
        if self.protocol is not None:
            self.protocol.call_when_lost(None)
            self.protocol = None
        if self.receiver is not None:
            self.receiver.remove_done_callback(self._received)
            self.receiver.cancel()
            self.receiver = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def uncancel(self) -> int:
        """Take back this one's cancellations of the task; how many others' remain."""
        assert self.task is not None
        for _ in range(self.cancels):
            self.task.uncancel()
        self.cancels = 0
        return self.task.cancelling()


class _ClientSend:
    """One response's ``send``, with its patience: headers once, body pieces, stall timeouts.

    ``live_stall_timeout`` applies once the writer is live (a watch's client
    must keep up with the events); a bulk stream waits ``stall_timeout`` at
    most, and ``contended_stall_timeout`` while ``contended()`` says others
    wait for a slot.
    """

    def __init__(
        self, send: Any, *, status: int, content_type: str, stall_timeout: Optional[float],
        live_stall_timeout: Optional[float], contended: Optional[Callable[[], bool]],
        contended_stall_timeout: Optional[float], piece_bytes: int,
    ) -> None:
        self.send = send
        self.status = status
        self.content_type = content_type
        self.stall_timeout = stall_timeout
        self.live_stall_timeout = live_stall_timeout
        self.contended = contended
        self.contended_stall_timeout = contended_stall_timeout
        self.piece_bytes = piece_bytes
        self.writer: Optional[FrameWriter] = None  #: set once made; its ``live`` picks the patience
        self.started = False
        #: the response says ``Connection: close`` (one that may be parked: a parked connection ends with it)
        self.closes = False
        self._copies_body: Optional[bool] = None

    async def start(self) -> None:
        """Send the status line and headers, the first time only."""
        if not self.started:
            self.started = True
            headers = [(b"content-type", self.content_type.encode()), (b"cache-control", b"no-cache, private")]
            if self.closes:
                headers.append((b"connection", b"close"))
            await self._timed({"type": "http.response.start", "status": self.status, "headers": headers})

    async def chunk(self, view: memoryview) -> None:
        """The FrameWriter's sink: ``view`` in pieces of at most ``piece_bytes``."""
        await self.start()
        if self._copies_body is None:
            self._copies_body = server_copies_body(self.send)  # known once the headers went out
        for offset in range(0, len(view), self.piece_bytes):
            with view[offset : offset + self.piece_bytes] as piece:
                # ASGI bodies are bytes; a server that copies anyway gets the view.
                body = piece if self._copies_body else bytes(piece)
                await self._timed({"type": "http.response.body", "body": body, "more_body": True})
                del body

    async def end(self) -> None:
        """Headers if none went out yet, then the end of the body."""
        await self.start()
        await self._timed({"type": "http.response.body", "body": b"", "more_body": False})

    async def _timed(self, message: Dict[str, Any]) -> None:
        live = self.writer is not None and self.writer.live
        if not live and self.contended is not None and self.contended_stall_timeout is not None:
            await self._yielding(message)
            return
        limit = self.live_stall_timeout if live else self.stall_timeout
        sending: Any = self.send(message)
        if inspect.iscoroutine(sending):
            try:
                # Most sends complete without suspending (the transport is not paused): step the send
                # by hand and arm the timeout only when it waits -- a timer for every live event to
                # each of 10,000 watches is a heap of timers to keep.
                sending = _Resumed(sending, sending.send(None))
            except StopIteration:
                return
        try:
            async with asyncio.timeout(limit):  # no Task per send, unlike wait_for
                await sending
        except asyncio.TimeoutError:
            what = "a live watch event" if live else "the stream"
            raise ClientStalled(f"client did not take {what} within {limit} s") from None

    async def _yielding(self, message: Dict[str, Any]) -> None:
        """A bulk stream's send: ``stall_timeout`` at most, ``contended_stall_timeout`` while others wait for a slot.

        Contention may begin while a send already waits, so it is looked at again every
        ``contended_stall_timeout`` seconds.
        """
        assert self.contended is not None and self.contended_stall_timeout is not None
        task = asyncio.ensure_future(self.send(message))
        start = time.monotonic()
        step = self.contended_stall_timeout
        total = self.stall_timeout if self.stall_timeout is not None else float("inf")
        try:
            while True:
                left = total - (time.monotonic() - start)
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


class StreamResponse:
    """An ASGI response that supervises a body writing through a FrameWriter.

    ``body``: a :class:`ResponseBody`, or a :data:`Producer` (with
    ``cleanup``, run once when the response ends: the two make a
    :class:`ProducerBody`).  ``headers_first``: send the status line and
    headers before the first frame (watches: clients wait for headers before
    reading events); otherwise they go with the first chunk.  ``on_error``
    turns an error raised by the body after the headers went out into a
    final frame (a watch's ERROR event); without it the connection is
    aborted.  ``on_close`` runs exactly once when the response is done,
    however it ends (admission bookkeeping).  ``send_piece_bytes``: the
    largest ASGI body message sent (see :data:`~.defaults.SEND_PIECE_BYTES`).
    ``parkable``: a watch body (one with a ``park`` attribute, :class:`~.bodies.WatchBody`) goes on
    as a :class:`~.parked_watch.ParkedWatch` once it is live, when the connection can be handed over
    (uvicorn with :func:`~.connections.guarded_h11`); the response then says ``Connection: close``.
    """

    def __init__(
        self,
        body: Union[ResponseBody, Producer],
        *,
        encoder: Any,
        pool: BufferPool,
        content_type: str,
        status: int = 200,
        headers_first: bool = False,
        stall_timeout: Optional[float] = STALL_TIMEOUT,
        acquire_timeout: Optional[float] = QUEUE_WAIT,
        retry_after: int = RETRY_AFTER,
        on_error: Optional[Callable[[FrameWriter, APIError], Awaitable[None]]] = None,
        on_close: Optional[Callable[[], None]] = None,
        cleanup: Optional[Callable[[], Awaitable[None]]] = None,
        live_pool: Optional[BufferPool] = None,
        on_live: Optional[Callable[[], None]] = None,
        live_stall_timeout: Optional[float] = None,
        contended: Optional[Callable[[], bool]] = None,
        contended_stall_timeout: Optional[float] = None,
        send_piece_bytes: int = SEND_PIECE_BYTES,
        parkable: bool = False,
    ) -> None:
        self.body: ResponseBody
        if isinstance(body, ResponseBody):
            if cleanup is not None:
                raise TypeError("cleanup goes with a producer; a ResponseBody closes itself in aclose()")
            self.body = body
        else:
            self.body = ProducerBody(body, cleanup)
        self.encoder = encoder
        self.pool = pool
        self.content_type = content_type
        self.status = status
        self.headers_first = headers_first
        self.stall_timeout = stall_timeout
        self.acquire_timeout = acquire_timeout
        self.retry_after = retry_after
        self.on_error = on_error
        self.on_close = on_close
        self.live_pool = live_pool
        self.on_live = on_live
        self.live_stall_timeout = live_stall_timeout if live_stall_timeout is not None else stall_timeout
        self.contended = contended
        self.contended_stall_timeout = contended_stall_timeout
        self.send_piece_bytes = send_piece_bytes
        self.parkable = parkable
        #: the ParkedWatch this response went on as, once parked
        self.parked: Optional[Any] = None
        self._client: Optional[_ClientSend] = None
        #: how the stream ended: "complete", "error-event", "disconnected", "stalled", "aborted"
        self.outcome = ""

    @property
    def started(self) -> bool:
        """Whether the status line and headers went out."""
        return self.parked is not None or self._client is not None and self._client.started

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        client = self._client = _ClientSend(
            send, status=self.status, content_type=self.content_type, stall_timeout=self.stall_timeout,
            live_stall_timeout=self.live_stall_timeout, contended=self.contended,
            contended_stall_timeout=self.contended_stall_timeout, piece_bytes=self.send_piece_bytes,
        )
        writer = client.writer = FrameWriter(
            self.encoder, self.pool, client.chunk, acquire_timeout=self.acquire_timeout, live_pool=self.live_pool,
            on_live=self.on_live,
        )
        gone = _ClientGone(self.body)
        protocol = _hand_over_protocol(send) if self.parkable and hasattr(self.body, "park") else None
        if protocol is not None:
            client.closes = True
            self.body.park = lambda: self._park(protocol, client, writer, gone)  # type: ignore[attr-defined]
        try:
            try:
                gone.watch(send, receive)
                await self._run(client, writer)
            except Parked:
                return  # the ParkedWatch owns the body, the writer and on_close now
            except BaseException as exc:
                # once the client has gone, whatever the body raised as it was stopped is the disconnect
                if not gone.happened or not isinstance(exc, (Exception, asyncio.CancelledError)):
                    raise
                if gone.uncancel():
                    raise  # cancelled by someone else too: the server is shutting down
            finally:
                gone.unwatch()
            if gone.happened:
                gone.uncancel()
                self.outcome = "disconnected"
        except APIError as exc:
            if client.started:
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
            if self.parked is None:  # a parked watch releases these itself when it ends
                # Nested so that a second cancellation (a server shutting down
                # impatiently) still returns the buffer and frees the stream's admission slot.
                writer.close()
                try:
                    await self.body.aclose()
                finally:
                    if self.on_close is not None:
                        self.on_close()

    def _park(self, protocol: Any, client: _ClientSend, writer: FrameWriter, gone: _ClientGone) -> bool:
        """Hand this live watch's connection to a :class:`~.parked_watch.ParkedWatch`; False: it stays a task."""
        from .parked_watch import ParkedWatch

        if gone.happened or not client.started:
            return False
        transport = protocol.transport
        parked = ParkedWatch(
            self, self.body, writer, transport, stall_timeout=self.live_stall_timeout,
            deadline=getattr(self.body, "deadline", None),
        )
        handed = protocol.hand_over(parked)
        if handed is None:
            return False
        forget, paused = handed
        gone.unwatch()
        self.parked = parked
        self._client = None  # uvicorn's request cycle, and what it holds, goes with the task
        parked.start(forget, paused)
        return True

    async def _run(self, client: _ClientSend, writer: FrameWriter) -> None:
        """Prepare the body, take a buffer, write the body, end the response; a late error per ``on_error``."""
        try:
            await self.body.prepare()
        except Exception as exc:
            raise to_api_error(exc) from exc
        try:
            await writer.open()
        except asyncio.TimeoutError:
            raise APIError(429, "TooManyRequests", "the server's stream buffer budget is used up", retry_after=self.retry_after) from None
        if self.headers_first:
            await client.start()
        try:
            await self.body.write(writer)
            await writer.flush()
        except (ClientStalled, Parked, asyncio.CancelledError):
            raise
        except Exception as exc:
            api_error = to_api_error(exc)
            if not client.started:
                raise api_error from exc
            if self.on_error is None:
                raise _Aborted() from exc
            await self.on_error(writer, api_error)
            await writer.flush()
            self.outcome = "error-event"
        await client.end()
        if not self.outcome:
            self.outcome = "complete"


def to_api_error(exc: BaseException) -> APIError:
    """The Status an error raised while streaming is reported as."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, storage_errors.StorageError):
        return from_storage_error(exc)
    if isinstance(exc, FrameTooLarge):
        return APIError(500, "InternalError", "an object is larger than the server's frame limit")
    if isinstance(exc, EncodeError):
        # a stored object this media type cannot carry (an int past 2**53 in the Struct protobuf):
        # the client may ask for another; other streams are unaffected
        return APIError(406, "NotAcceptable", f"an object cannot be represented in the requested media type: {codec_message(str(exc))}")
    log.error("unexpected error in a stream", exc_info=exc)
    return internal_error()


async def send_error_response(send: Any, error: APIError, encoder: Any) -> None:
    """A complete non-streaming response holding ``error``'s Status."""
    try:
        body = encoder.encode(error.status())
        content_type = encoder.content_type
    except Exception:  # a Status always encodes as JSON
        body = json.dumps(error.status()).encode()
        content_type = "application/json"
    headers: List[Tuple[bytes, bytes]] = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    for k, v in error.headers().items():
        headers.append((k.lower().encode(), v.encode()))
    headers += [(b"warning", value.encode()) for value in warning_headers(error.warnings)]
    await send({"type": "http.response.start", "status": error.code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
