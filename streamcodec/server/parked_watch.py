"""Parked watches: a live watch with nothing to send costs its connection, not a request's task.

Served through an ASGI request cycle, an idle watch keeps uvicorn's protocol and h11's connection
state, the request's scope, a task and its coroutines' frames: 12.7 KiB of Python objects per
watch (tracemalloc, 2,000 watches), where the connection itself costs 1.65 KiB (a bare asyncio
Protocol).  Once a watch is live and has written everything it had, :class:`ParkedWatch` takes
its connection over (``transport.set_protocol``, through
:meth:`GuardedH11Protocol.hand_over <streamcodec.server.connections.guarded_h11>`), the request's
task ends, and the watch's events are written from the storage fan-out's callback
(:meth:`SharedWatch.listen <streamcodec.storage.watch_hub.SharedWatch.listen>`): encoded through
the response's FrameWriter as before, and written to the transport as HTTP/1.1 chunks.  No task
wakes per event, so a write reaches 10,000 parked watches in one pass of the loop.

A parked watch keeps the streamed response's promises:

* a client that stops reading: while the transport's buffer is over its high-water mark no event
  is taken (they wait in the shared watch's bounded backlog, which ends a watcher that falls too
  far behind), and one that has not drained it within ``stall_timeout`` is reset (SO_LINGER 0);
* the request's timeout ends it with the terminating chunk; the connection then closes, as the
  response's ``Connection: close`` header said it would;
* a storage error becomes the watch's ERROR event (``on_error``);
* a client gone: the body (its shared watch) is closed and the response's ``on_close`` runs, once.

A write that must wait (the live pool used up) finishes in a task of its own; no other event of
that watch is written meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine, Dict, Optional

from streamcodec.writer import FrameWriter

from .streams import _Resumed, reset_transport, to_api_error

__all__ = ["ParkedWatch"]

log = logging.getLogger("streamcodec.server")

_LAST_CHUNK = b"0\r\n\r\n"


async def _finish_coroutine(coroutine: Any, waiting_on: Any) -> Any:
    """The rest of a coroutine stepped once by hand (its first step yielded ``waiting_on``)."""
    return await _Resumed(coroutine, waiting_on)


class _LastChunks:
    """The chunk each group of alike watchers got for the event fanned out last.

    A shared watch hands one event to all its watchers in one pass; watchers of one kind, in one
    format, with no selector, write the same bytes for it, so the first one's chunk is written to
    the rest as it is (10,000 watchers: one encoding, not 10,000).  Only the last event is kept,
    by identity: the next one replaces it.
    """

    __slots__ = ("event", "chunks", "hits")

    def __init__(self) -> None:
        self.event: Any = None
        self.chunks: Dict[Any, bytes] = {}
        self.hits = 0  #: chunks written as another watcher's encoding made them

    def put(self, event: Any, group: Any, chunk: bytes) -> None:
        if event is not self.event:
            self.event, self.chunks = event, {}
        self.chunks[group] = chunk


_last_chunks = _LastChunks()


class ParkedWatch(asyncio.Protocol):
    """A live watch's connection, driven by callbacks (see the module doc).

    ``response``: the :class:`~.streams.StreamResponse` it came from (its ``outcome``, ``on_error``
    and ``on_close``); ``body``: its :class:`~.bodies.WatchBody`, whose storage stream can be
    listened to; ``writer``: its FrameWriter, live; ``deadline``: the loop time its request's
    timeout ends it at.
    """

    __slots__ = (
        "response", "body", "writer", "transport", "stall_timeout", "deadline", "forget",
        "group", "_capture", "_paused", "_busy", "_ended", "_finished", "_deadline_timer", "_stall_timer",
    )

    def __init__(
        self, response: Any, body: Any, writer: FrameWriter, transport: asyncio.Transport, *,
        stall_timeout: Optional[float], deadline: Optional[float],
    ) -> None:
        self.response = response
        self.body = body
        self.writer = writer
        self.transport = transport
        self.stall_timeout = stall_timeout
        self.deadline = deadline
        self.forget: Optional[Callable[["ParkedWatch"], None]] = None
        #: watchers of one group write the same bytes for an event (None: this one's are its own)
        self.group = body.alike
        self._capture: Any = None  #: the event whose chunk _chunk keeps for the group
        self._paused = False
        self._busy = False
        self._ended = False
        self._finished = False
        self._deadline_timer: Optional[asyncio.TimerHandle] = None
        self._stall_timer: Optional[asyncio.TimerHandle] = None

    def start(self, forget: Callable[["ParkedWatch"], None], paused: bool) -> None:
        """Run from now on (the connection is ours); ``forget(self)`` runs once it is gone; ``paused``: its writes are."""
        self.forget = forget
        self.writer.redirect(self._chunk)
        loop = asyncio.get_running_loop()
        if self.deadline is not None:
            self._deadline_timer = loop.call_at(self.deadline, self.end)
        if paused:
            self.pause_writing()
        self.body.listen(self._ready, self._take)

    # -- asyncio.Protocol ----------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Nothing: a watch's client sends nothing more, and this connection closes after the watch."""

    def eof_received(self) -> bool:
        return False  # the client half-closed: it is gone, the transport closes

    def pause_writing(self) -> None:
        self._paused = True
        if self._stall_timer is None and self.stall_timeout is not None:
            self._stall_timer = asyncio.get_running_loop().call_later(self.stall_timeout, self._stalled)

    def resume_writing(self) -> None:
        self._paused = False
        if self._stall_timer is not None and not self._ended:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._ready()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._finish("disconnected")

    def shutdown(self) -> None:
        """The server is shutting down (uvicorn calls this on each of its connections).

        As uvicorn does with a response under way: nothing now (this connection closes once the
        watch ends).  uvicorn waits for its connections until its graceful-shutdown timeout; then the
        App's shutdown ends every parked watch (:meth:`end`).
        """

    # -- events ----------------------------------------------------------------

    async def _chunk(self, view: memoryview) -> None:
        """The writer's sink: one HTTP/1.1 chunk, written now (the transport buffers what the socket does not take)."""
        if self._ended:
            return  # a write that waited for a buffer, finishing after the last chunk went out
        chunk = b"%x\r\n%b\r\n" % (len(view), view)  # type: ignore[str-format]  # %b takes any buffer
        self.transport.write(chunk)
        if self._capture is not None:  # one event's chunk, the same for every watcher of its group
            _last_chunks.put(self._capture, self.group, chunk)
            self._capture = None

    def _ready(self) -> None:
        """The storage stream has something waiting: write each event ready, unless the client is behind."""
        body = self.body
        while not (self._paused or self._ended or self._busy):
            try:
                event = body.next_ready()
            except StopAsyncIteration:
                self.end()  # the storage stream ended (a watcher that fell behind, a store closing)
                return
            except Exception as exc:  # noqa: BLE001 - the watch's ERROR event
                self._fail(exc)
                return
            if event is None:
                return
            self._take(event)

    def _take(self, event: Any) -> bool:
        """Write one event now, unless the client is behind (False: it waits in the shared watch's backlog)."""
        if self._paused or self._ended or self._busy:
            return False
        group = self.group
        if group is not None and event.type != "BOOKMARK":
            last = _last_chunks
            if event is last.event:
                chunk = last.chunks.get(group)
                if chunk is not None:  # encoded for another watcher already: the same bytes
                    last.hits += 1
                    self.transport.write(chunk)
                    return True
            self._capture = event
        self._drive(self.body.write_event(self.writer, event), self._written)
        self._capture = None
        return True

    def _written(self, error: Optional[BaseException], result: Any) -> None:
        if error is not None:
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        self._capture = None  # the ERROR event's chunk is this watcher's alone
        if self._ended:
            return
        on_error = self.response.on_error
        if on_error is None:
            self.response.outcome = "aborted"
            self._ended = True
            reset_transport(self.transport)
            return
        api_error = to_api_error(error)
        self.response.outcome = "error-event"

        async def error_event() -> None:
            await on_error(self.writer, api_error)
            await self.writer.flush()

        self._drive(error_event(), lambda failed, _: self.end())

    def _drive(self, coroutine: Coroutine[Any, Any, Any], done: Callable[[Optional[BaseException], Any], None]) -> None:
        """Run ``coroutine`` now; should it wait, finish it in a task, and take no event meanwhile."""
        try:
            waiting_on = coroutine.send(None)
        except StopIteration as stop:
            done(None, stop.value)
            return
        except Exception as exc:  # noqa: BLE001 - handed to done
            done(exc, None)
            return
        self._busy = True
        task = asyncio.ensure_future(_finish_coroutine(coroutine, waiting_on))

        def finished(task: "asyncio.Future[Any]") -> None:
            self._busy = False
            if task.cancelled():
                self._finish("disconnected")
                return
            error = task.exception()
            done(error, None if error is not None else task.result())
            if error is None:
                self._ready()  # what came while it waited

        task.add_done_callback(finished)

    # -- the end -------------------------------------------------------------------

    def end(self) -> None:
        """End the watch as its timeout does: the terminating chunk, then the connection closes."""
        if self._ended:
            return
        self._ended = True
        self.body.listen(None)
        if self._paused:  # a client this far behind would take the last chunk late, if ever
            self._stalled()
            return
        self.response.outcome = self.response.outcome or "complete"
        self.transport.write(_LAST_CHUNK)
        self.transport.close()
        if self._stall_timer is None and self.stall_timeout is not None:  # a close waits for the client to read
            self._stall_timer = asyncio.get_running_loop().call_later(self.stall_timeout, self._stalled)

    def _stalled(self) -> None:
        self._stall_timer = None
        if self._finished:
            return
        self._ended = True
        if not self.response.outcome or self.response.outcome == "complete":
            self.response.outcome = "stalled"
        log.info("disconnecting a stalled client: a parked watch's client did not drain its connection in %s s", self.stall_timeout)
        reset_transport(self.transport)

    def _finish(self, outcome: str) -> None:
        """The connection is gone: release what the watch holds, once."""
        if self._finished:
            return
        self._finished = self._ended = True
        for timer in (self._deadline_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._deadline_timer = self._stall_timer = None
        self.body.listen(None)
        self.writer.close()
        self.response.outcome = self.response.outcome or outcome
        try:
            asyncio.ensure_future(self.body.aclose())
        finally:
            try:
                on_close = self.response.on_close
                if on_close is not None:
                    on_close()
            finally:
                forget, self.forget = self.forget, None
                if forget is not None:
                    forget(self)
