"""The watch streams: ``WatchStream`` (one etcd watch of a prefix) and ``WatchListStream``.

A :class:`WatchStream` opens its etcd watch through the store's transport
(:meth:`~streamcodec.storage.transport.Transport.open_stream`), so creating and re-creating it
fail over between members exactly as unary calls do, and resumes from the last received
revision + 1.  A :class:`WatchListStream` is Kubernetes' watch-list: a consistent paged read, a
bookmark, then a (shared) watch from just after the read.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any, AsyncGenerator, Awaitable, Callable, Deque, List, Optional

import grpc
import grpc.aio

from ._implementation import wire
from .errors import Expired, FutureRevision, MalformedResponse, StorageError, TooLarge, Unauthorized, Unavailable
from .paging import PER_KV_OVERHEAD
from .transport import WATCH_METHOD, Member, StreamEnded, Transport, is_bad_token, is_retryable, map_error
from .types import EVENT_DELETE, KeyValue, RawEvent, WatchEvent, WatchResult

if TYPE_CHECKING:  # pragma: no cover
    from .etcd import EtcdStore
    from .watch_hub import SharedWatch

__all__ = ["WatchListStream", "WatchStream"]

#: asks whether watch-progress requests may be sent now (the store's gate)
ProgressAllowed = Callable[[], Awaitable[bool]]


def _event_size(event: RawEvent) -> int:
    size = 0
    for kv in (event.kv, event.prev_kv):
        if kv is not None:
            size += len(kv.key) + len(kv.value) + PER_KV_OVERHEAD
    return size


def _to_watch_event(event: RawEvent) -> WatchEvent:
    kv = event.kv
    if kv is None:
        raise MalformedResponse("watch event without a key-value", 0)
    revision = int(kv.mod_revision)
    if event.type == EVENT_DELETE:
        return WatchEvent("DELETED", event.prev_kv if event.prev_kv is not None else kv, event.prev_kv, revision)
    kind = "ADDED" if kv.create_revision == kv.mod_revision else "MODIFIED"
    return WatchEvent(kind, kv, event.prev_kv, revision)


class WatchStream:
    """Async iterator of :class:`~streamcodec.storage.types.WatchEvent` for one prefix.

    Delivered in revision order, each change exactly once, across member
    failures: on a broken stream it re-creates the watch on another member
    from the last received revision + 1 (bounded retries with backoff, then
    :class:`~streamcodec.storage.errors.Unavailable`).  A compacted start revision, or
    etcd cancelling the watch for compaction, raises
    :class:`~streamcodec.storage.errors.Expired`.

    Progress notifications become BOOKMARK events.  :meth:`request_progress`
    asks for one on demand, but only when ``progress_allowed()`` says so (the
    watch-progress gate, :func:`~streamcodec.storage.version_gate.supports_watch_progress`);
    below it nothing is ever sent.

    Fragmented responses (etcd splits a huge revision) are reassembled so a
    revision is never delivered in part; at most ``max_fragment_bytes`` of one
    revision are buffered (:class:`~streamcodec.storage.errors.TooLarge` beyond).
    """

    def __init__(
        self,
        transport: Transport,
        progress_allowed: ProgressAllowed,
        prefix: bytes,
        start_revision: Optional[int],
        *,
        progress_notify: bool,
        max_fragment_bytes: int,
    ) -> None:
        if not isinstance(prefix, bytes) or not prefix:
            raise ValueError("prefix must be non-empty bytes")
        self._transport = transport
        self._progress_allowed = progress_allowed
        self.prefix = prefix
        self._range_end = wire.prefix_range_end(prefix)
        self.start_revision = start_revision or 0
        self.progress_notify = progress_notify
        self.max_fragment_bytes = max_fragment_bytes
        #: last revision whose events were all received (delivered or queued)
        self.received_revision = (start_revision - 1) if start_revision else 0
        self._ready: Deque[WatchEvent] = collections.deque()
        self._fragments: List[RawEvent] = []
        self._fragment_bytes = 0
        self._call: Any = None
        self._member: Optional[Member] = None
        self._watch_id: Optional[int] = None
        self._closed = False
        #: how many watch-progress requests were sent (0 below the gate, always)
        self.progress_requests_sent = 0
        #: how many times the watch was re-created after a broken stream
        self.reconnects = 0
        #: the endpoint currently watched
        self.endpoint: Optional[str] = None
        #: responses etcd marked as a fragment of a larger one
        self.fragments_received = 0

    def __aiter__(self) -> "WatchStream":
        return self

    async def __aenter__(self) -> "WatchStream":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Create the watch now (else the first ``__anext__`` does); waits for etcd's confirmation."""
        if self._call is None:
            await self._connect()

    async def aclose(self) -> None:
        """Cancel the watch."""
        self._closed = True
        if self._call is not None:
            call, self._call = self._call, None
            call.cancel()

    async def request_progress(self) -> bool:
        """Ask etcd for a progress notification (a BOOKMARK soon follows).

        Returns False, sending nothing, below the watch-progress gate or while
        it is undecided (a member not answering, none answering).  The gate is
        asked each time, never copied into the watch: the store keeps only a
        decision made with every member answering.
        """
        try:
            allowed = await self._progress_allowed()
        except Unavailable:
            allowed = False  # nobody answers Status: the gate is unknown, so nothing is sent
        if not allowed:
            return False
        await self.start()
        try:
            await self._call.write(wire.encode_watch_progress_request())
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return False  # the stream broke; the reader reconnects, and the caller may ask again
        self.progress_requests_sent += 1
        return True

    async def __anext__(self) -> WatchEvent:
        while not self._ready:
            if self._closed:
                raise StopAsyncIteration
            if self._call is None:
                await self._connect()
            await self._receive()
        return self._ready.popleft()

    async def _connect(self) -> None:
        """(Re)create the watch from received_revision + 1, failing over between members (the transport's loop)."""

        async def create(call: Any) -> WatchResult:
            start = self.received_revision + 1 if (self.received_revision or self.start_revision) else 0
            await call.write(
                wire.encode_watch_create_request(
                    self.prefix,
                    self._range_end,
                    start_revision=start,
                    progress_notify=self.progress_notify,
                    prev_kv=True,
                    fragment=True,
                )
            )
            while True:
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    raise StreamEnded("the watch stream ended before etcd confirmed the watch")
                response = wire.parse_watch_response(raw)
                if response.canceled:
                    self._raise_canceled(response)
                if response.created:
                    return response

        member, call, response = await self._transport.open_stream(
            WATCH_METHOD,
            create,
            # hasleader: a member cut off from the leader ends the stream instead of going silent
            metadata=[("hasleader", "true")],
            key=self.prefix,
            what=f"cannot (re)create the watch of {self.prefix!r}",
        )
        self._call = call
        self._member = member
        self._watch_id = int(response.watch_id)
        self.endpoint = member.endpoint
        if response.header.revision and not self.received_revision and not self.start_revision:
            # "from now": everything up to the creation revision is, by definition, before us
            self.received_revision = int(response.header.revision)

    def _raise_canceled(self, response: WatchResult) -> None:
        if response.compact_revision:
            raise Expired(
                f"watch of {self.prefix!r} from revision {self.received_revision + 1} is compacted "
                f"(compact revision {response.compact_revision})",
                key=self.prefix,
                compact_revision=int(response.compact_revision),
            )
        reason = response.cancel_reason or "no reason given"
        if "leader" in reason.lower():
            raise StreamEnded(f"etcd canceled the watch of {self.prefix!r}: {reason}")  # a member without a leader: go elsewhere
        if "permission denied" in reason.lower() or "auth" in reason.lower():
            raise Unauthorized(f"etcd canceled the watch of {self.prefix!r}: {reason}", key=self.prefix)
        raise StorageError(f"etcd canceled the watch of {self.prefix!r}: {reason}", key=self.prefix)

    async def _receive(self) -> None:
        """Read one response; queue its events or bookmark; reconnect on a broken stream."""
        if self._call.done():
            # a consumer's timeout cancelled our pending read, and grpc.aio then cancels the
            # whole call: resume losslessly from what was received, on the same member
            await self._reconnect(advance=False)
            return
        try:
            raw = await self._call.read()
            if raw is grpc.aio.EOF:
                raise StreamEnded("the watch stream ended")
            response = wire.parse_watch_response(raw)
            del raw
            if response.canceled:
                self._raise_canceled(response)
        except (grpc.aio.AioRpcError, StreamEnded, asyncio.InvalidStateError) as exc:
            if self._closed:
                return
            if isinstance(exc, grpc.aio.AioRpcError) and not is_retryable(exc) and not is_bad_token(exc):
                if exc.code() != grpc.StatusCode.CANCELLED:
                    raise map_error(exc, self.prefix) from None
            if isinstance(exc, grpc.aio.AioRpcError) and is_bad_token(exc) and self._member is not None:
                self._transport.forget_token(self._member)
            await self._reconnect()
            return
        if response.events:
            self._take_events(response)
        elif response.fragment or self._fragments:
            pass  # an empty piece of a fragmented response carries nothing
        elif not response.created and response.header.revision >= self.received_revision:
            # a progress notification: every event up to header.revision has been sent
            revision = int(response.header.revision)
            self.received_revision = revision
            self._ready.append(WatchEvent("BOOKMARK", None, None, revision))

    def _take_events(self, response: WatchResult) -> None:
        events = response.events
        if response.fragment:
            self.fragments_received += 1
        if response.fragment or self._fragments:
            self._fragments.extend(events)
            self._fragment_bytes += sum(_event_size(e) for e in events)
            if response.fragment:
                # revisions before the last one in hand are complete: deliver them, keep the last
                last_revision = self._fragments[-1].kv.mod_revision if self._fragments[-1].kv else 0
                complete = [e for e in self._fragments if e.kv is not None and e.kv.mod_revision < last_revision]
                if complete:
                    self._fragments = self._fragments[len(complete) :]
                    self._fragment_bytes = sum(_event_size(e) for e in self._fragments)
                    self._deliver(complete)
                if self._fragment_bytes > self.max_fragment_bytes:
                    raise TooLarge(
                        f"one revision of the watch of {self.prefix!r} exceeds {self.max_fragment_bytes} bytes",
                        key=self.prefix,
                    )
                return
            events, self._fragments, self._fragment_bytes = self._fragments, [], 0
        self._deliver(events)

    def _deliver(self, events: List[RawEvent]) -> None:
        for raw_event in events:
            event = _to_watch_event(raw_event)
            if event.revision <= self.received_revision:
                continue  # already delivered before a reconnect
            self._ready.append(event)
        last = events[-1].kv
        if last is not None and last.mod_revision > self.received_revision:
            self.received_revision = int(last.mod_revision)

    async def _reconnect(self, advance: bool = True) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None
        self._fragments, self._fragment_bytes = [], 0  # the incomplete revision is re-sent whole
        self.reconnects += 1
        if advance:
            if self._member is not None:
                self._transport.advance(self._member)
            await self._transport.sleep_backoff(0)
        await self._connect()


# ---------------------------------------------------------------- watch list


class _NoListing:
    """A watch-list's listing once read to its end."""

    revision = None

    async def aclose(self) -> None:
        """Nothing left to close."""


_NO_LISTING = _NoListing()


class WatchListStream:
    """The Kubernetes watch-list contract over one prefix.

    1. ADDED for every object existing at one consistent revision R (the
       revision a linearizable, paged, pinned read of the prefix gets),
       streamed page by page, each exactly once;
    2. a BOOKMARK at R with ``initial_events_end=True``;
    3. every change after R, in order, none lost or repeated (a watch from
       R + 1), interleaved with BOOKMARKs from progress notifications.

    At or above the watch-progress gate a progress request is sent as soon
    as the watch exists: the BOOKMARK it brings (``caught_up`` turns True)
    confirms the stream has delivered everything up to etcd's revision at
    that moment; :meth:`request_progress` asks for more.  Below the gate no
    progress request is ever sent: R comes from the pinned read alone and
    later bookmarks only from etcd's interval notifications.

    ``resource_version``: the initial state must be at least this recent
    (Kubernetes' NotOlderThan); newer than etcd's revision raises
    :class:`~streamcodec.storage.errors.FutureRevision`.

    ``listing``: where the initial state comes from (default: a private
    :class:`~streamcodec.storage.list_stream.ListStream`; a shared-scan member in
    :meth:`~streamcodec.storage.etcd.EtcdStore.shared_watch_list`): an async iterator of KeyValues at
    one revision, its ``revision`` set once its first item (or its end) is
    returned, with ``aclose()``.
    """

    def __init__(self, store: "EtcdStore", prefix: bytes, resource_version: Optional[int], *, listing: Any = None) -> None:
        self._store = store
        self.prefix = prefix
        self.resource_version = resource_version or 0
        self.revision: Optional[int] = None
        self.caught_up = False
        self.watch: Optional["SharedWatch"] = None
        self._live = False
        self._list = listing if listing is not None else store.list_stream(prefix)
        self._gen = self._run()

    def __aiter__(self) -> "WatchListStream":
        return self

    async def __anext__(self) -> WatchEvent:
        if self._live:  # past the initial events: straight from the shared watch
            return self._seen(await self.watch.__anext__())  # type: ignore[union-attr]
        return await self._gen.__anext__()

    def _seen(self, event: WatchEvent) -> WatchEvent:
        if event.type == "BOOKMARK" and self.watch is not None and self.watch.progress_requests_sent:
            self.caught_up = True
        return event

    def listen(self, listener: Optional[Callable[[], None]], take: Optional[Callable[[WatchEvent], bool]] = None) -> bool:
        """:meth:`SharedWatch.listen <streamcodec.storage.watch_hub.SharedWatch.listen>`, once the initial events have all been read."""
        if not self._live or self.watch is None:
            return False
        if take is None:
            return self.watch.listen(listener)
        offer = take

        def take_seen(event: WatchEvent) -> bool:
            if not offer(event):
                return False
            self._seen(event)  # a progress bookmark still says the stream caught up
            return True

        return self.watch.listen(listener, take_seen)

    def next_ready(self) -> Optional[WatchEvent]:
        """:meth:`SharedWatch.next_ready <streamcodec.storage.watch_hub.SharedWatch.next_ready>` (after :meth:`listen`)."""
        assert self.watch is not None and self._live, "listen() first"
        event = self.watch.next_ready()
        return self._seen(event) if event is not None else None

    async def aclose(self) -> None:
        """Stop the list or the watch."""
        await self._gen.aclose()
        await self._list.aclose()  # a shared-scan member leaves its scan now, not at garbage collection
        if self.watch is not None:
            await self.watch.aclose()

    async def request_progress(self) -> bool:
        """Ask for an on-demand BOOKMARK; False (nothing sent) below the gate or before the watch."""
        if self.watch is None:
            return False
        return await self.watch.request_progress()

    @property
    def progress_requests_sent(self) -> int:
        """Progress requests sent so far (always 0 below the gate)."""
        return self.watch.progress_requests_sent if self.watch is not None else 0

    async def _run(self) -> AsyncGenerator[WatchEvent, None]:
        listing = self._list
        first: Optional[KeyValue]
        try:
            first = await listing.__anext__()
        except StopAsyncIteration:
            first = None
        revision = int(listing.revision or 0)
        if self.resource_version > revision:
            raise FutureRevision(
                f"resource version {self.resource_version} is newer than etcd's revision {revision}", key=self.prefix
            )
        self.revision = revision
        if first is not None:
            yield WatchEvent("ADDED", first, None, int(first.mod_revision))
            del first
            async for kv in listing:
                yield WatchEvent("ADDED", kv, None, int(kv.mod_revision))
                del kv
        await listing.aclose()  # read to its end: what it holds (a scan membership) goes now, not with the watch
        self._list = listing = _NO_LISTING
        watch = self._store.shared_watch(self.prefix, revision + 1)  # one etcd watch for every watcher of the prefix
        self.watch = watch
        await watch.start()
        await watch.request_progress()  # no-op below the gate
        self._live = True  # every later event is read from the watch itself (__anext__, next_ready)
        yield WatchEvent("BOOKMARK", None, None, revision, initial_events_end=True)
