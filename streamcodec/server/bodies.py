"""Response bodies of list, watch and watch-list: storage streams as :class:`~.streams.ResponseBody` objects.

Each body's :meth:`prepare` starts its storage stream *before* the response
does (the first page, or the watch's creation), so storage errors that can be
known up front (compacted revision, future revision, bad continue token, etcd
down) become plain HTTP Status responses; later ones become a watch ERROR
event (or an aborted list body).  :meth:`write` streams the rest through a
:class:`~streamcodec.writer.FrameWriter`; :meth:`aclose` closes the storage
stream, and may be called more than once.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Protocol, Tuple, cast

from streamcodec import BufferPool
from streamcodec.storage.interface import KeyValueStream, Store, WatchListEvents
from streamcodec.writer import FrameWriter

from .defaults import RETRY_AFTER
from .handlers import ListRequest, WatchRequest
from .items import ItemWriter, bookmark_object, tombstone_object
from .objects import Resource
from .status import APIError
from .streams import Parked, close_iterator

__all__ = ["ListBody", "WatchBody", "SharedScanStore", "buffered_list_body", "watch_error_event"]


class SharedScanStore(Store, Protocol):
    """A :class:`~streamcodec.storage.interface.Store` whose watch-lists of one prefix can share one scan
    (``ServerConfig.shared_scans``; :class:`~streamcodec.storage.EtcdStore` is one)."""

    def shared_watch_list(self, prefix: bytes, resource_version: Optional[int] = None) -> WatchListEvents:
        """Like :meth:`Store.watch_list`, with the initial state read once for all concurrent callers."""
        ...

    def shared_list_stream(self, prefix: bytes, resource_version: Optional[int] = None) -> KeyValueStream:
        """Like :meth:`Store.list_stream` of a whole prefix, read once for all concurrent callers."""
        ...


def _list_metadata(revision: int, token: Optional[str]) -> Dict[str, Any]:
    metadata: Dict[str, Any] = {"resourceVersion": str(revision)}
    if token:
        metadata["continue"] = token
    return metadata


#: How long a request for a resourceVersion etcd has not reached yet waits for it (kube-apiserver's
#: watch cache waits 3 s) before "Too large resource version", which client-go answers by re-listing.
FUTURE_REVISION_WAIT = 3.0


def too_large_resource_version(wanted: int, current: int) -> APIError:
    """kube-apiserver's error for a resourceVersion from the future (client-go re-lists on it)."""
    return APIError(
        504, "Timeout", f"Too large resource version: {wanted}, current: {current}", retry_after=RETRY_AFTER,
        details={"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]},
    )


async def _wait_for_revision(store: Store, wanted: int) -> None:
    """Return once the store's revision reaches ``wanted``, or raise "Too large resource version"."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FUTURE_REVISION_WAIT
    while True:
        current = await store.revision_at_least(wanted)
        if current >= wanted:
            return
        if loop.time() >= deadline:
            raise too_large_resource_version(wanted, current)
        await asyncio.sleep(0.1)


def _check_not_older(request: ListRequest, revision: int) -> None:
    if request.min_revision > revision:
        raise too_large_resource_version(request.min_revision, revision)


def _open_list(store: Store, prefix: bytes, request: ListRequest, revision: Optional[int], shared: bool = False) -> KeyValueStream:
    if shared and request.limit is None and request.continue_token is None and revision is None:
        # a whole list at the newest revision (or NotOlderThan one): concurrent ones share a scan
        return cast(SharedScanStore, store).shared_list_stream(prefix, request.min_revision or None)
    # a continued list reads at the revision its token pins, never at a requested one
    return store.list_stream(
        prefix,
        None if request.continue_token else revision,
        continue_token=request.continue_token,
        limit=request.limit,
    )


async def _drain(items: List[Any]) -> AsyncIterator[Any]:
    """Yield and forget each held item (so memory shrinks as they go out)."""
    items.reverse()
    while items:
        yield items.pop()


async def _chain(first: List[Any], stream: KeyValueStream) -> AsyncIterator[Any]:
    while first:
        yield first.pop()
    async for kv in stream:
        yield kv


class ListBody:
    """A streaming list: the first page is read by :meth:`prepare`, the rest as the client takes it.

    The list's metadata (resourceVersion, continue) precedes its items in
    every format, but a continue token is known only once the page's last
    item is read, a format without indefinite-length arrays (``needs_count``:
    MessagePack) needs the item count up front, and Kubernetes' protobuf
    (``items.needs_items_size``) the items' byte size.  Such requests read
    their items first: kept when they fit ``prefetch_bytes``, else only
    counted and sized (memory stays one etcd page) and then read again at the
    same pinned revision while streaming.

    ``shared_scans``: a whole list (no limit or continue) at the newest revision, or NotOlderThan
    one, reads through the store's shared scans (:meth:`SharedScanStore.shared_list_stream`), so
    concurrent lists of a collection cost etcd one read.
    """

    def __init__(
        self, store: Store, prefix: bytes, request: ListRequest, resource: Resource, items: ItemWriter,
        *, prefetch_bytes: int, needs_count: bool = False, shared_scans: bool = False,
    ) -> None:
        self.store = store
        self.shared_scans = shared_scans
        self.prefix = prefix
        self.request = request
        self.kind = resource.kind + "List"
        self.items = items
        self.prefetch_bytes = prefetch_bytes
        self.needs_count = needs_count
        self._stream: Optional[KeyValueStream] = None
        self._held: List[Any] = []  #: every item, when a read-ahead list fitted prefetch_bytes
        self._first: List[Any] = []  #: the first item, read to learn the revision
        self._token: Optional[str] = None
        self._count: Optional[int] = None
        self._items_size: Optional[int] = None
        self._revision = 0

    async def prepare(self) -> None:
        """Read the first page (or, when the metadata needs it, every page once); closes the stream on failure."""
        if self._stream is not None:
            return
        request, selectors, items = self.request, self.request.selectors, self.items
        stream = self._stream = _open_list(self.store, self.prefix, request, request.revision, self.shared_scans)
        try:
            if request.limit is None and not self.needs_count and not items.needs_items_size:
                await self._read_first(stream)
            else:
                held_bytes = 0
                overflow = False
                count = 0
                size = 0
                async for kv in stream:
                    if selectors.active and not selectors.matches(kv, self.prefix):
                        continue
                    count += 1
                    if items.needs_items_size:
                        size += items.item_size(kv.value, int(kv.mod_revision))
                    if not overflow:
                        self._held.append(kv)
                        held_bytes += len(kv.key) + len(kv.value)
                        if held_bytes > self.prefetch_bytes:
                            overflow = True
                            self._held.clear()
                    del kv
                self._token = stream.continue_token
                self._count = count
                self._items_size = size if items.needs_items_size else None
                if overflow:
                    pinned = int(stream.revision or 0)
                    await close_iterator(stream)
                    stream = self._stream = _open_list(self.store, self.prefix, request, pinned)
                    await self._read_first(stream)
            self._revision = int(stream.revision or 0)
            _check_not_older(request, self._revision)
        except BaseException:
            await self.aclose()
            raise

    async def _read_first(self, stream: KeyValueStream) -> None:
        try:
            self._first.append(await stream.__anext__())
        except StopAsyncIteration:
            pass

    async def write(self, writer: FrameWriter) -> None:
        """The list body: metadata, then every item as the storage stream yields it."""
        assert self._stream is not None, "prepare() first"
        selectors, prefix, items = self.request.selectors, self.prefix, self.items
        await writer.list_start(
            kind=self.kind, api_version="v1", metadata=_list_metadata(self._revision, self._token),
            count=self._count, items_size=self._items_size,
        )
        kvs = _drain(self._held) if self._held else _chain(self._first, self._stream)
        async for kv in kvs:
            if selectors.active and not selectors.matches(kv, prefix):
                continue
            await items.item(writer, kv.value, int(kv.mod_revision))
            del kv
        await writer.list_end()

    async def aclose(self) -> None:
        """Forget held items and close the storage stream."""
        self._held.clear()
        self._first.clear()
        if self._stream is not None:
            await close_iterator(self._stream)


async def buffered_list_body(
    store: Store, prefix: bytes, request: ListRequest, resource: Resource, items: ItemWriter,
    *, pool_bytes: int, buffer_bytes: int,
) -> bytes:
    """The classic way: read every item, encode the whole body, return it.

    ``pool_bytes`` / ``buffer_bytes``: the private pool the body is encoded
    through (the buffered body is not bounded by the shared budget by design).
    """
    stream = _open_list(store, prefix, request, request.revision)
    try:
        kvs = [kv async for kv in stream]
    finally:
        await close_iterator(stream)
    revision = int(stream.revision or 0)
    _check_not_older(request, revision)
    chunks: List[bytes] = []

    async def collect(view: memoryview) -> None:
        chunks.append(bytes(view))

    encoder = items.encoder
    async with FrameWriter(encoder, BufferPool(pool_bytes, buffer_bytes), collect) as writer:
        if request.selectors.active:
            kvs = [kv for kv in kvs if request.selectors.matches(kv, prefix)]
        await writer.list_start(
            kind=resource.kind + "List",
            api_version="v1",
            metadata=_list_metadata(revision, stream.continue_token),
            count=len(kvs),
            items_size=sum(items.item_size(kv.value, int(kv.mod_revision)) for kv in kvs) if items.needs_items_size else None,
        )
        for kv in kvs:
            await items.item(writer, kv.value, int(kv.mod_revision))
        await writer.list_end()
    return b"".join(chunks)


class WatchBody:
    """A watch (or watch-list) body; :meth:`prepare` starts the storage stream.

    ``shared_scans``: a watch-list's initial events come from the prefix's
    shared scan (the store must be a :class:`SharedScanStore`).
    """

    def __init__(
        self, store: Store, prefix: bytes, request: WatchRequest, resource: Resource, items: ItemWriter,
        *, shared_scans: bool = False,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.request = request
        self.kind = resource.kind
        self.items = items
        self.shared_scans = shared_scans
        self._stream: Any = None  #: a WatchListEvents or an EventStream
        self._pending: List[Any] = []  #: the first event of a watch-list, read by prepare
        #: set by the response when its connection can be parked: called once the watch is live
        #: and has nothing to write; True: the watch goes on without this task (raise Parked)
        self.park: Optional[Callable[[], bool]] = None
        #: the loop time the request's timeout ends the watch at (set by write)
        self.deadline: Optional[float] = None

    async def prepare(self) -> None:
        """Open the storage stream: a watch-list's first page (or bookmark), or a watch's creation."""
        if self._stream is not None:
            return
        request, store = self.request, self.store
        try:
            if request.initial_events:
                open_watch_list = cast(SharedScanStore, store).shared_watch_list if self.shared_scans else store.watch_list
                self._stream = open_watch_list(self.prefix, request.resource_version or None)
                self._pending.append(await self._stream.__anext__())
            else:
                if request.resource_version:
                    await _wait_for_revision(store, request.resource_version)
                start = request.resource_version + 1 if request.resource_version else None
                self._stream = store.shared_watch(self.prefix, start)  # every watcher of the prefix reads one etcd watch
                await self._stream.start()
        except BaseException:
            await self.aclose()
            raise

    async def _emit(self, writer: FrameWriter, event: Any, live: bool) -> bool:
        """Write one event; True when the writer should flush now."""
        request, kind = self.request, self.kind
        if event.type == "BOOKMARK":
            if event.initial_events_end:
                if not request.initial_events_bookmark:
                    return True
                await writer.event("BOOKMARK", bookmark_object(kind, event.revision, True))
                return True
            if not request.allow_bookmarks:
                return False
            await writer.event("BOOKMARK", bookmark_object(kind, event.revision, False))
            return True
        kv, event_type, selectors = event.kv, event.type, request.selectors
        if event_type == "DELETED" and not len(kv.value):
            # etcd no longer had the object's last version: whether it matched this watcher's selectors
            # cannot be told, and a DELETED of a key a client never had is harmless, where a lost one is not
            await writer.event("DELETED", tombstone_object(kind, bytes(kv.key), event.revision))
            return live
        if selectors.active:
            # kube's watch filter: an object whose labels stop matching is DELETED for this watcher (its
            # previous version), one whose labels start matching is ADDED
            was = event_type == "MODIFIED" and event.prev_kv is not None and selectors.matches(event.prev_kv, self.prefix)
            if not selectors.matches(kv, self.prefix):
                if not was:
                    return False
                event_type, kv = "DELETED", event.prev_kv
            elif event_type == "MODIFIED" and not was:
                event_type = "ADDED"
        await self.items.event(writer, event_type, kv.value, int(event.revision), kv.key)
        return live

    async def _run(self, writer: FrameWriter) -> None:
        live = not self.request.initial_events
        pending = self._pending
        while pending:
            event = pending.pop()
            if event.type == "BOOKMARK" and event.initial_events_end:
                live = True
            if await self._emit(writer, event, live):
                await writer.flush()
        if live:
            writer.go_live()
        stream = self._stream
        while True:
            if live and self.park is not None and self._parks():
                raise Parked()
            try:
                event = await stream.__anext__()
            except StopAsyncIteration:
                return
            if event.type == "BOOKMARK" and event.initial_events_end:
                live = True
            if await self._emit(writer, event, live):
                await writer.flush()
                if live:
                    # a live watch may now stay quiet for hours: it holds no
                    # pool buffer and no admission slot meanwhile
                    writer.go_live()
            del event

    def _parks(self) -> bool:
        """Whether this live watch has just been parked (its storage stream can be listened to, nothing is pending)."""
        listen = getattr(self._stream, "listen", None)
        if listen is None or not listen(None):  # listen(None): can it be listened to at all
            self.park = None  # a private etcd watch: it stays a task
            return False
        park, self.park = self.park, None  # tried once
        return park is not None and park()

    def listen(self, listener: Optional[Callable[[], None]], take: Optional[Callable[[Any], bool]] = None) -> bool:
        """Have ``listener()`` called whenever the storage stream has something ready (read it with
        :meth:`next_ready`), and ``take(event)`` offered each event as it comes (see
        :meth:`SharedWatch.listen <streamcodec.storage.watch_hub.SharedWatch.listen>`)."""
        return bool(self._stream.listen(listener, take))

    def next_ready(self) -> Any:
        """The storage stream's next event if one is ready now, else None (after :meth:`listen`)."""
        return self._stream.next_ready()

    async def write_event(self, writer: FrameWriter, event: Any) -> None:
        """A parked watch's step: one live event."""
        if await self._emit(writer, event, True):
            await writer.flush()

    @property
    def alike(self) -> Optional[Tuple[int, str, str]]:
        """What the watches that write the same bytes for every live event share (None: this one's
        selectors make its own): its encoder, format and kind."""
        if self.request.selectors.active:
            return None
        return (id(self.items.encoder), self.items.fmt, self.kind)

    async def write(self, writer: FrameWriter) -> None:
        """The events until the storage stream ends or the request's timeout is reached."""
        assert self._stream is not None, "prepare() first"
        self.deadline = asyncio.get_running_loop().time() + self.request.timeout
        try:
            async with asyncio.timeout_at(self.deadline):  # no task of its own: ~1.5 KiB less per open watch
                await self._run(writer)
        except asyncio.TimeoutError:
            pass  # timeoutSeconds reached: the watch ends cleanly

    async def aclose(self) -> None:
        """Forget pending events and close the storage stream."""
        self._pending.clear()
        if self._stream is not None:
            await close_iterator(self._stream)


async def watch_error_event(writer: FrameWriter, error: APIError) -> None:
    """The last event of a watch that failed after it started."""
    await writer.event("ERROR", error.status())
