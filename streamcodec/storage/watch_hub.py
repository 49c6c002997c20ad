"""Shared watches: every watcher of a prefix reads one etcd watch stream.

Without this, N watchers of a collection are N etcd watch streams, and each event crosses gRPC,
is parsed and is buffered N times (measured: ~50 KiB of server memory per idle watch, 1,000 of
them took 211 ms for a write to reach half).  A :class:`WatchHub` keeps one upstream
:class:`~streamcodec.storage.watch_stream.WatchStream` per prefix and fans its events out:

* a watcher from revision S joins the shared stream when the hub can serve every event from S on:
  S at or after the upstream's start, and nothing from S evicted from the hub's short history
  (a bounded ring of the latest events, so a client re-watching from the resourceVersion it just
  saw joins without a gap).  Otherwise it gets a private watch from etcd, as before;
* each watcher has a bounded backlog.  One that falls behind by more than ``backlog_events``
  events, or ``backlog_bytes`` of values, is ended (its iterator stops, as when a watch times
  out); its client re-watches from its last resourceVersion.  The others never wait for it;
* upstream errors (a compacted start, etcd gone for good) end every watcher with that error, and
  the next watcher starts a fresh upstream; the upstream closes when its last watcher leaves.

Events are shared, never copied: a backlog holds references to the same :class:`WatchEvent`.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
from typing import TYPE_CHECKING, Callable, Deque, Dict, List, Optional, Set

from .types import WatchEvent

if TYPE_CHECKING:  # pragma: no cover
    from .etcd import EtcdStore
    from .watch_stream import WatchStream

__all__ = ["WatchHub", "SharedWatch", "HISTORY_EVENTS", "HISTORY_BYTES", "BACKLOG_EVENTS", "BACKLOG_BYTES"]

log = logging.getLogger("streamcodec.storage")

#: Events kept for watchers that join a little late (a re-watch from the last resourceVersion seen).
HISTORY_EVENTS = 1024
#: ... and at most this many bytes of their values.
HISTORY_BYTES = 16 * 1024 * 1024
#: A watcher this many events behind is ended (kube's cacher gives each watcher a 100-event buffer
#: and a short grace; this is more patient, and counts bytes as well).
BACKLOG_EVENTS = 1024
BACKLOG_BYTES = 16 * 1024 * 1024


#: From this many watchers on, the cyclic GC pauses while an event is fanned out (see below).
FANOUT_GC_PAUSE_WATCHERS = 256


def _pause_gc_for_one_loop_pass() -> None:
    """Keep CPython's cyclic GC off until the watchers just woken have run.

    Waking N watchers queues N callbacks, each with its task's step, future and context, all alive
    until the loop runs them; a collection meanwhile promotes them, so every few events to 10,000
    watchers the promoted objects reached a quarter of the long-lived ones and a full collection
    ran: ~1 M objects (~100 per open watch), 0.4-0.65 s with every event waiting.  Everything the
    fan-out creates is freed by reference counting once the watchers have written; with the GC
    paused it is never promoted.  The GC is on again at the loop's next pass after the wake-ups.
    """
    if not gc.isenabled():
        return  # paused already (another fan-out), or the embedding program runs without it
    gc.disable()
    loop = asyncio.get_running_loop()
    # the woken watchers run in the loop's next pass; a callback queued behind them, in that pass
    loop.call_soon(loop.call_soon, gc.enable)


def _size(event: WatchEvent) -> int:
    return (len(event.kv.value) if event.kv is not None else 0) + (len(event.prev_kv.value) if event.prev_kv is not None else 0)


class _Upstream:
    """One etcd watch of a prefix and the watchers reading it."""

    def __init__(self, hub: "WatchHub", prefix: bytes, start_revision: int) -> None:
        self.hub = hub
        self.prefix = prefix
        self.start_revision = start_revision
        self.watch: "WatchStream" = hub.store.watch(prefix, start_revision, progress_notify=True)
        self.history: Deque[WatchEvent] = collections.deque()
        self.history_bytes = 0
        #: every event of a revision below this is out of the history
        self.evicted_below = start_revision
        #: the last revision the upstream has delivered everything up to
        self.delivered = start_revision - 1
        self.watchers: Set["SharedWatch"] = set()
        self.error: Optional[BaseException] = None
        self.task: Optional["asyncio.Task[None]"] = None
        self.started = asyncio.Event()

    async def start(self) -> None:
        await self.watch.start()
        self.task = asyncio.ensure_future(self._pump())

    def can_serve(self, start_revision: int) -> bool:
        return self.error is None and start_revision >= self.evicted_below

    async def _pump(self) -> None:
        try:
            async for event in self.watch:
                self.delivered = max(self.delivered, event.revision)
                if event.type != "BOOKMARK":
                    self._remember(event)
                watchers = list(self.watchers)
                if len(watchers) >= FANOUT_GC_PAUSE_WATCHERS:
                    _pause_gc_for_one_loop_pass()
                for watcher in watchers:
                    watcher._offer(event)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to every watcher
            self.error = exc
            for watcher in list(self.watchers):
                watcher._fail(exc)
        finally:
            self.hub._gone(self)
            for watcher in list(self.watchers):
                watcher._end()

    def _remember(self, event: WatchEvent) -> None:
        self.history.append(event)
        self.history_bytes += _size(event)
        while len(self.history) > self.hub.history_events or self.history_bytes > self.hub.history_bytes:
            old = self.history.popleft()
            self.history_bytes -= _size(old)
            self.evicted_below = old.revision + 1

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.watch.aclose()


class SharedWatch:
    """A watcher's view of a shared upstream: the same interface as :class:`~streamcodec.storage.watch_stream.WatchStream`."""

    def __init__(self, hub: "WatchHub", prefix: bytes, start_revision: Optional[int]) -> None:
        self.hub = hub
        self.prefix = prefix
        self.start_revision = start_revision
        self._upstream: Optional[_Upstream] = None
        self._private: Optional["WatchStream"] = None
        # a list, not a deque, and a future only while waiting: an idle watcher is ~1 KiB smaller
        # (an empty deque is 624 bytes, an asyncio.Event two of them); backlogs are short
        self._backlog: List[WatchEvent] = []
        self._backlog_bytes = 0
        self._waiter: Optional["asyncio.Future[None]"] = None
        #: called back instead of waking a waiter, and offered each event as it comes (see :meth:`listen`)
        self._listener: Optional[Callable[[], None]] = None
        self._take: Optional[Callable[[WatchEvent], bool]] = None
        self._error: Optional[BaseException] = None
        self._ended = False
        self._closed = False
        self._started = False
        #: the last revision handed out (events below it are skipped)
        self._next = start_revision or 0
        #: why the watch ended early ("behind": cut for falling behind)
        self.ended_because = ""
        self.progress_requests_sent = 0

    @property
    def endpoint(self) -> Optional[str]:
        """The etcd endpoint the underlying watch reads."""
        watch = self._private if self._private is not None else (self._upstream.watch if self._upstream else None)
        return watch.endpoint if watch is not None else None

    @property
    def shared(self) -> bool:
        """Whether this watch reads the shared upstream (False: a private etcd watch)."""
        return self._upstream is not None

    def __aiter__(self) -> "SharedWatch":
        return self

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        upstream = await self.hub._join(self)
        if upstream is None:
            self._private = self.hub.store.watch(self.prefix, self.start_revision, progress_notify=True)
            await self._private.start()
            return
        self._upstream = upstream
        if self._next == 0:
            self._next = upstream.delivered + 1
        for event in upstream.history:  # the events from our start that the upstream already had
            if event.revision >= self._next:
                self._offer(event)

    def _offer(self, event: WatchEvent) -> None:
        if self._ended or event.revision < self._next and event.type != "BOOKMARK":
            return
        if event.type == "BOOKMARK" and event.revision < self._next - 1:
            return
        take = self._take
        if take is not None and not self._backlog:
            try:
                taken = take(event)
            except Exception:  # one watcher's failure must not stop the fan-out to the others
                log.exception("a watch listener failed")
                taken = False
            if taken:
                if event.type != "BOOKMARK":
                    self._next = event.revision + 1
                return
        self._backlog.append(event)
        self._backlog_bytes += _size(event)
        if len(self._backlog) > self.hub.backlog_events or self._backlog_bytes > self.hub.backlog_bytes:
            log.info("ending a watcher of %r that fell %d events behind", self.prefix, len(self._backlog))
            self.ended_because = "behind"
            self._backlog.clear()
            self._backlog_bytes = 0
            self._end()
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif self._listener is not None:
            try:
                self._listener()
            except Exception:  # one watcher's failure must not stop the fan-out to the others
                log.exception("a watch listener failed")

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._leave()
        self._wake()

    def _leave(self) -> None:
        if self._upstream is not None:
            self.hub._leave(self._upstream, self)

    def listen(self, listener: Optional[Callable[[], None]], take: Optional[Callable[[WatchEvent], bool]] = None) -> bool:
        """Be called back, synchronously, whenever an event, the end or an error is ready; None: no longer.

        For a watcher read with no task waiting on :meth:`__anext__` (an idle watch whose connection
        is driven by callbacks): ``listener()`` runs from the fan-out, and reads with
        :meth:`next_ready`.  Called soon if something is ready already.  ``take(event)``, if given, is
        offered each event as it comes while none waits before it: True, it took the event (which
        then never waits in the backlog: the fan-out's cheapest path).  Only a started shared watch
        can be listened to: False (and nothing set) for a private etcd watch.
        """
        if self._upstream is None:
            return False
        self._listener = listener
        self._take = take if listener is not None else None
        if listener is not None and (self._backlog or self._error is not None or self._ended or self._closed):
            asyncio.get_running_loop().call_soon(self._wake)
        return True

    def next_ready(self) -> Optional[WatchEvent]:
        """The next event if one is ready now, else None; raises the watch's error, or StopAsyncIteration once it ended."""
        if not self._backlog:
            if self._error is not None:
                raise self._error
            if self._ended or self._closed:
                raise StopAsyncIteration
            return None
        event = self._backlog.pop(0)
        self._backlog_bytes -= _size(event)
        if event.type != "BOOKMARK":
            self._next = event.revision + 1
        return event

    async def __anext__(self) -> WatchEvent:
        if not self._started:
            await self.start()
        if self._private is not None:
            return await self._private.__anext__()
        while True:
            event = self.next_ready()
            if event is not None:
                return event
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def request_progress(self) -> bool:
        """Ask for a progress BOOKMARK (the shared upstream's reaches every watcher, harmlessly)."""
        if not self._started:
            await self.start()
        target = self._private if self._private is not None else (self._upstream.watch if self._upstream else None)
        if target is None:
            return False
        sent = await target.request_progress()
        self.progress_requests_sent += int(sent)
        return sent

    async def aclose(self) -> None:
        self._closed = True
        self._listener = self._take = None
        self._wake()
        if self._private is not None:
            await self._private.aclose()
        elif not self._ended:
            self._ended = True
            self._leave()


class WatchHub:
    """The shared upstreams of one :class:`~streamcodec.storage.etcd.EtcdStore` (see the module doc)."""

    def __init__(
        self, store: "EtcdStore", *, history_events: int = HISTORY_EVENTS, history_bytes: int = HISTORY_BYTES,
        backlog_events: int = BACKLOG_EVENTS, backlog_bytes: int = BACKLOG_BYTES,
    ) -> None:
        self.store = store
        self.history_events = history_events
        self.history_bytes = history_bytes
        self.backlog_events = backlog_events
        self.backlog_bytes = backlog_bytes
        self._upstreams: Dict[bytes, _Upstream] = {}
        self._starting: Dict[bytes, "asyncio.Future[Optional[_Upstream]]"] = {}
        #: upstream watches started so far (for tests: N watchers of a prefix make one)
        self.upstreams_started = 0

    def watch(self, prefix: bytes, start_revision: Optional[int] = None) -> SharedWatch:
        """Watch ``prefix`` from ``start_revision`` (None: from now), through the shared upstream when it can."""
        return SharedWatch(self, prefix, start_revision)

    def upstream_count(self) -> int:
        return len(self._upstreams)

    def watcher_count(self, prefix: bytes) -> int:
        upstream = self._upstreams.get(prefix)
        return len(upstream.watchers) if upstream is not None else 0

    async def _join(self, watcher: SharedWatch) -> Optional[_Upstream]:
        prefix = watcher.prefix
        while prefix in self._starting:  # another watcher is starting it: use that one
            await asyncio.shield(self._starting[prefix])
        upstream = self._upstreams.get(prefix)
        wanted = watcher.start_revision
        if upstream is not None:
            if wanted is None or upstream.can_serve(wanted):
                upstream.watchers.add(watcher)
                return upstream
            return None  # older than the shared history: a private watch
        start = wanted if wanted is not None else await self.store.current_revision() + 1
        upstream = _Upstream(self, prefix, start)
        done: "asyncio.Future[Optional[_Upstream]]" = asyncio.get_running_loop().create_future()
        self._starting[prefix] = done
        try:
            await upstream.start()
        except BaseException:
            await upstream.watch.aclose()
            raise
        finally:
            del self._starting[prefix]
            done.set_result(None)
        self._upstreams[prefix] = upstream
        self.upstreams_started += 1
        upstream.watchers.add(watcher)
        return upstream

    def _leave(self, upstream: _Upstream, watcher: SharedWatch) -> None:
        upstream.watchers.discard(watcher)
        if not upstream.watchers and self._upstreams.get(upstream.prefix) is upstream:
            del self._upstreams[upstream.prefix]
            asyncio.ensure_future(upstream.close())

    def _gone(self, upstream: _Upstream) -> None:
        if self._upstreams.get(upstream.prefix) is upstream:
            del self._upstreams[upstream.prefix]

    async def close(self) -> None:
        upstreams, self._upstreams = list(self._upstreams.values()), {}
        for upstream in upstreams:
            await upstream.close()

