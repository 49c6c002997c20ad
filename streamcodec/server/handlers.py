"""List, watch and watch-list over the storage streams.

Each ``*_producer`` call starts the storage stream *before* the response
does (the first page, or the watch's creation), so storage errors that can
be known up front (compacted revision, future revision, bad continue token,
etcd down) become plain HTTP Status responses; later ones become a watch
ERROR event (or an aborted list body).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

from streamcodec import BufferPool
from streamcodec.writer import FrameWriter

from streamcodec.storage import EtcdStore
from streamcodec.storage import errors as storage_errors

from .objects import Resource
from .status import APIError, bad_request
from .streams import ItemWriter, bookmark_object, close_iterator, tombstone_object

__all__ = ["ListRequest", "WatchRequest", "list_producer", "buffered_list_body", "watch_producer", "watch_error_event"]

Producer = Callable[[FrameWriter], Awaitable[None]]
Cleanup = Callable[[], Awaitable[None]]


def _rv(value: str) -> int:
    return resource_version(value, "resourceVersion")


def resource_version(value: str, what: str) -> int:
    """A resourceVersion as kube parses it (an unsigned 64-bit integer), or 400."""
    if not (value.isascii() and value.isdigit()) or len(value) > 20 or int(value) >= 1 << 64:
        raise bad_request(f"{what}: invalid value {value[:40]!r}: must be a non-negative 64-bit integer")
    return int(value)


def count_param(query: Dict[str, str], name: str) -> Optional[int]:
    """A non-negative integer query parameter (limit, timeoutSeconds), None when absent, or 400."""
    text = query.get(name, "")
    if text == "":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise bad_request(f"{name}: invalid value {text[:40]!r}: must be a non-negative integer below 10**18")
    return int(text)


def _bool(query: Dict[str, str], name: str) -> Optional[bool]:
    if name not in query:
        return None
    value = query[name]
    if value in ("1", "true", "True"):
        return True
    if value in ("", "0", "false", "False"):
        return False
    raise bad_request(f"{name}: invalid value {value!r}: must be true or false")


@dataclasses.dataclass
class KeyFilter:
    """fieldSelector support: metadata.name / metadata.namespace equality (what kubectl sends)."""

    name: Optional[str] = None
    namespace: Optional[str] = None

    @classmethod
    def parse(cls, query: Dict[str, str]) -> "KeyFilter":
        if query.get("labelSelector"):
            raise bad_request("labelSelector is not supported by this server")
        result = cls()
        for term in filter(None, query.get("fieldSelector", "").split(",")):
            field, sep, value = term.partition("=")
            if value.startswith("="):
                value = value[1:]
            if not sep or field.endswith("!"):
                raise bad_request(f"fieldSelector: only equality on metadata.name and metadata.namespace is supported, not {term!r}")
            if field == "metadata.name":
                result.name = value
            elif field == "metadata.namespace":
                result.namespace = value
            else:
                raise bad_request(f"fieldSelector: field {field!r} is not supported (metadata.name, metadata.namespace)")
        return result

    @property
    def active(self) -> bool:
        return self.name is not None or self.namespace is not None

    def matches(self, key: bytes, prefix: bytes) -> bool:
        rest = key[len(prefix):].decode("utf-8", "replace").split("/")
        if self.name is not None and rest[-1] != self.name:
            return False
        if self.namespace is not None and (len(rest) < 2 or rest[0] != self.namespace):
            return False
        return True


@dataclasses.dataclass
class ListRequest:
    limit: Optional[int]
    continue_token: Optional[str]
    revision: Optional[int]  #: exact revision to read (None: newest)
    min_revision: int  #: NotOlderThan bound checked against the pinned revision
    keys: KeyFilter

    @classmethod
    def parse(cls, query: Dict[str, str]) -> "ListRequest":
        limit = count_param(query, "limit") or None
        token = query.get("continue") or None
        if "sendInitialEvents" in query:
            raise APIError(422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list")
        rv_text = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        if match not in ("", "Exact", "NotOlderThan"):
            raise bad_request(f"resourceVersionMatch: unsupported value {match!r}: Exact or NotOlderThan")
        if match and rv_text == "":
            raise bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
        if token is not None and rv_text not in ("", "0"):
            raise bad_request("specifying resource version is not allowed when using continue")
        if token is not None and match:
            raise bad_request("resourceVersionMatch is forbidden when continue is provided")
        rv = _rv(rv_text) if rv_text else 0
        if match == "Exact" and rv == 0:
            raise bad_request("resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"")
        exact = match == "Exact" or (match == "" and limit is not None and rv > 0)
        return cls(limit, token, rv if exact else None, 0 if exact else rv, KeyFilter.parse(query))


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
        504, "Timeout", f"Too large resource version: {wanted}, current: {current}", retry_after=1,
        details={"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]},
    )


async def _wait_for_revision(store: EtcdStore, wanted: int) -> None:
    """Return once etcd's revision reaches ``wanted``, or raise "Too large resource version"."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FUTURE_REVISION_WAIT
    while True:
        current = await store.current_revision()
        if current >= wanted:
            return
        if loop.time() >= deadline:
            raise too_large_resource_version(wanted, current)
        await asyncio.sleep(0.1)


def _check_not_older(request: ListRequest, revision: int) -> None:
    if request.min_revision > revision:
        raise too_large_resource_version(request.min_revision, revision)


def _open_list(store: EtcdStore, prefix: bytes, request: ListRequest) -> Any:
    return store.list_stream(
        prefix,
        None if request.continue_token else request.revision,
        continue_token=request.continue_token,
        limit=request.limit,
    )


async def list_producer(
    store: EtcdStore,
    prefix: bytes,
    request: ListRequest,
    resource: Resource,
    items: ItemWriter,
    prefetch_bytes: int,
    needs_count: bool = False,
) -> Tuple[Producer, Cleanup]:
    """A streaming list: the first page is read here, the rest as the client takes it.

    The list's metadata (resourceVersion, continue) precedes its items in
    every format, but a continue token is known only once the page's last
    item is read, a format without indefinite-length arrays (``needs_count``:
    MessagePack) needs the item count up front, and Kubernetes' protobuf
    (``items.needs_items_size``) the items' byte size.  Such requests read
    their items first: kept when they fit ``prefetch_bytes``, else only
    counted and sized (memory stays one etcd page) and then read again at the
    same pinned revision while streaming.
    """
    kind = resource.kind + "List"
    keys = request.keys
    stream = _open_list(store, prefix, request)
    held: List[Any] = []
    first: List[Any] = []
    token: Optional[str] = None
    count: Optional[int] = None
    items_size: Optional[int] = None
    needs_size = items.needs_items_size
    try:
        if request.limit is None and not needs_count and not needs_size:
            try:
                first.append(await stream.__anext__())
            except StopAsyncIteration:
                pass
        else:
            held_bytes = 0
            overflow = False
            count = 0
            size = 0
            async for kv in stream:
                if keys.active and not keys.matches(kv.key, prefix):
                    continue
                count += 1
                if needs_size:
                    size += items.item_size(kv.value, int(kv.mod_revision))
                if not overflow:
                    held.append(kv)
                    held_bytes += len(kv.key) + len(kv.value)
                    if held_bytes > prefetch_bytes:
                        overflow = True
                        held.clear()
                del kv
            token = stream.continue_token
            items_size = size if needs_size else None
            if overflow:
                pinned = int(stream.revision or 0)
                await close_iterator(stream)
                stream = store.list_stream(
                    prefix,
                    None if request.continue_token else pinned,
                    continue_token=request.continue_token,
                    limit=request.limit,
                )
                try:
                    first.append(await stream.__anext__())
                except StopAsyncIteration:
                    pass
        revision = int(stream.revision or 0)
        _check_not_older(request, revision)
    except BaseException:
        await close_iterator(stream)
        raise

    async def produce(writer: FrameWriter) -> None:
        await writer.list_start(
            kind=kind, api_version="v1", metadata=_list_metadata(revision, token), count=count, items_size=items_size
        )
        kvs: Any = _drain(held) if held else _chain(first, stream)
        async for kv in kvs:
            if keys.active and not keys.matches(kv.key, prefix):
                continue
            await items.item(writer, kv.value, int(kv.mod_revision))
            del kv
        await writer.list_end()

    async def cleanup() -> None:
        held.clear()
        first.clear()
        await close_iterator(stream)

    return produce, cleanup


async def _drain(items: List[Any]) -> Any:
    """Yield and forget each held item (so memory shrinks as they go out)."""
    items.reverse()
    while items:
        yield items.pop()


async def _chain(first: List[Any], stream: Any) -> Any:
    while first:
        yield first.pop()
    async for kv in stream:
        yield kv


async def buffered_list_body(store: EtcdStore, prefix: bytes, request: ListRequest, resource: Resource, items: ItemWriter) -> bytes:
    """The classic way: read every item, encode the whole body, return it."""
    stream = _open_list(store, prefix, request)
    try:
        kvs = [kv async for kv in stream]
    finally:
        await close_iterator(stream)
    revision = int(stream.revision or 0)
    _check_not_older(request, revision)
    chunks: List[bytes] = []

    async def collect(view: memoryview) -> None:
        chunks.append(bytes(view))

    # A private pool: the buffered body is not bounded by the shared budget by design.
    encoder = items.encoder
    pool = BufferPool(2 * encoder.max_frame_size, encoder.max_frame_size)
    async with FrameWriter(encoder, pool, collect) as writer:
        if request.keys.active:
            kvs = [kv for kv in kvs if request.keys.matches(kv.key, prefix)]
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


# ---------------------------------------------------------------------------
# watch


@dataclasses.dataclass
class WatchRequest:
    resource_version: int
    initial_events: bool  #: synthetic ADDED events for the current state first
    initial_events_bookmark: bool  #: send the initial-events-end bookmark (sendInitialEvents=true)
    allow_bookmarks: bool
    timeout: float
    keys: KeyFilter

    @classmethod
    def parse(cls, query: Dict[str, str], min_request_timeout: int) -> "WatchRequest":
        rv_text = query.get("resourceVersion", "")
        rv = _rv(rv_text) if rv_text else 0
        match = query.get("resourceVersionMatch", "")
        send_initial = _bool(query, "sendInitialEvents")
        allow_bookmarks = bool(_bool(query, "allowWatchBookmarks"))
        if query.get("continue"):
            raise bad_request("continue is not supported for watch")
        if send_initial is not None:
            if match != "NotOlderThan":
                raise bad_request("sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
            if send_initial and not allow_bookmarks:
                raise bad_request("sendInitialEvents requires allowWatchBookmarks=true")
        elif match:
            raise bad_request("resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided")
        # kube-apiserver: no (or a zero) timeoutSeconds means a random time in [T, 2T], T the
        # --min-request-timeout, so that watches opened together do not all end together
        cap = min_request_timeout * (1.0 + random.random())
        timeout = cap
        seconds = count_param(query, "timeoutSeconds")
        if seconds:
            timeout = min(float(seconds), cap)
        # Legacy semantics: no sendInitialEvents and resourceVersion unset or "0" = current state first.
        initial = bool(send_initial) or (send_initial is None and rv == 0)
        return cls(rv, initial, bool(send_initial), allow_bookmarks, timeout, KeyFilter.parse(query))


async def watch_producer(
    store: EtcdStore, prefix: bytes, request: WatchRequest, resource: Resource, items: ItemWriter
) -> Tuple[Producer, Cleanup]:
    """A watch (or watch-list) response; the storage stream is started here."""
    kind = resource.kind
    keys = request.keys
    pending: List[Any] = []
    stream: Any
    if request.initial_events:
        stream = store.watch_list(prefix, request.resource_version or None)
        try:
            pending.append(await stream.__anext__())  # the first page of the list (or the bookmark)
        except BaseException:
            await close_iterator(stream)
            raise
    else:
        if request.resource_version:
            await _wait_for_revision(store, request.resource_version)
        start = request.resource_version + 1 if request.resource_version else None
        stream = store.shared_watch(prefix, start)  # every watcher of the prefix reads one etcd watch
        try:
            await stream.start()
        except BaseException:
            await close_iterator(stream)
            raise

    async def emit(writer: FrameWriter, event: Any, live: bool) -> bool:
        """Write one event; True when the writer should flush now."""
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
        kv = event.kv
        if keys.active and not keys.matches(kv.key, prefix):
            return False
        if event.type == "DELETED" and not len(kv.value):
            await writer.event("DELETED", tombstone_object(kind, bytes(kv.key), event.revision))
        else:
            await items.event(writer, event.type, kv.value, int(event.revision))
        return live

    async def run(writer: FrameWriter) -> None:
        live = not request.initial_events
        while pending:
            event = pending.pop()
            if event.type == "BOOKMARK" and event.initial_events_end:
                live = True
            if await emit(writer, event, live):
                await writer.flush()
        if live:
            writer.go_live()
        async for event in stream:
            if event.type == "BOOKMARK" and event.initial_events_end:
                live = True
            if await emit(writer, event, live):
                await writer.flush()
                if live:
                    # a live watch may now stay quiet for hours: it holds no
                    # pool buffer and no admission slot meanwhile
                    writer.go_live()
            del event

    async def produce(writer: FrameWriter) -> None:
        try:
            await asyncio.wait_for(run(writer), request.timeout)
        except asyncio.TimeoutError:
            pass  # timeoutSeconds reached: the watch ends cleanly

    async def cleanup() -> None:
        pending.clear()
        await close_iterator(stream)

    return produce, cleanup


async def watch_error_event(writer: FrameWriter, error: APIError) -> None:
    """The last event of a watch that failed after it started."""
    await writer.event("ERROR", error.status())
