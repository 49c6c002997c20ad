"""The reflector: keeps a local store of one resource in sync with a Kubernetes API server.

    reflector = Reflector("http://127.0.0.1:8080", "/api/v1/namespaces/default/secrets")
    async for event in reflector.events():      # added / updated / deleted / synced
        ...
    reflector.store                              # {"namespace/name": object}

It syncs by watch-list as client-go >= 0.35 does (``sendInitialEvents=true``: the initial events go into a
temporary store, which replaces the store at the bookmark annotated ``k8s.io/initial-events-end``, and
the same stream goes on live), falls back to a paged LIST (then a watch from the list's
resourceVersion) when the server refuses watch-list or the bookmark does not come in time, re-watches
from the last resourceVersion when a watch ends, re-lists from ``""`` on 410 Gone and "Too large
resource version", and backs off with jitter on 429 (honouring Retry-After), 5xx and broken
connections.

Bodies are decoded as they arrive (:mod:`.decode`), in JSON, Kubernetes protobuf or CBOR, whichever
the server answered with: memory is the store plus one object in flight, whatever the collection size.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, AsyncGenerator, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import quote, urlencode

from streamcodec.kube_schema import KubeSchema

from .decode import (
    CBOR, CBOR_SEQ, DEFAULT_MAX_OBJECT_BYTES, JSON, PROTOBUF, PROTOBUF_WATCH, CBORListReader, CBORWatchReader,
    DecodeFailed, JSONListReader, JSONWatchReader, ProtoListReader, ProtoWatchReader, cbor_object,
)
from .http import ConnectionFailed, Endpoint, HTTPResponse, within

__all__ = ["Reflector", "InformerEvent", "InformerError", "WatchListUnavailable", "INITIAL_EVENTS_END", "object_key"]

log = logging.getLogger("streamcodec.informer")

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
CONTENT_TYPES = ("json", "protobuf", "cbor")
WATCH_LIST_MODES = ("auto", "on", "off")

Transform = Callable[[Dict[str, Any]], Dict[str, Any]]

#: Body bytes between two ``malloc_trim`` calls.  Decoding a 1 MiB object leaves ~1 MiB holes in glibc's
#: heap between the objects kept (its mmap threshold rises to that size after the first frees), which
#: the kernel keeps counting as resident: measured syncing 200 x 1 MiB Secrets in protobuf, peak RSS grew
#: by twice the store without trimming; a fixed mmap threshold instead cost 3.5x the time.
DEFAULT_TRIM_EVERY = 16 * 1024 * 1024

_trim: Optional[Callable[[int], int]] = None


def _malloc_trim() -> None:
    """glibc's malloc_trim(0): free pages inside the heap go back to the kernel (a no-op elsewhere)."""
    global _trim
    if _trim is None:
        try:
            import ctypes

            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = lambda pad: 0  # noqa: E731  (not glibc)
    _trim(0)


@dataclass
class InformerEvent:
    """``type``: ``added``, ``updated``, ``deleted`` or ``synced``; ``key``: ``namespace/name`` (or
    ``name``); ``object``: the object as stored (for ``deleted``, its last state); ``old``: the object it
    replaced (``updated``).  A ``synced`` event has no key or object: the store is complete."""

    type: str
    key: str = ""
    object: Optional[Dict[str, Any]] = None
    old: Optional[Dict[str, Any]] = None


class InformerError(RuntimeError):
    """Not something a retry fixes: the server refuses the request (401, 403, 404 ...), or with
    ``watch_list="on"``, refuses watch-list."""


class WatchListUnavailable(Exception):
    """This sync cannot be a watch-list (a 4xx answer, an ERROR event, no bookmark in time ...)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused  #: the server said no (HTTP 4xx): do not ask again


class _Retry(Exception):
    """A transient failure: back off (at least ``delay`` seconds when the server said so), then retry."""

    def __init__(self, message: str, delay: Optional[float] = None) -> None:
        super().__init__(message)
        self.delay = delay


class _Gone(Exception):
    """410 Gone or "Too large resource version": re-list from ``""``."""


def object_key(obj: Dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or ""
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


def _resource_version(obj: Dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _status_code(status: Dict[str, Any]) -> int:
    try:
        return int(status.get("code") or 0)
    except (TypeError, ValueError):
        return 0


def _too_large(status: Dict[str, Any]) -> bool:
    causes = ((status.get("details") or {}).get("causes") or [])
    return any(isinstance(c, dict) and c.get("reason") == "ResourceVersionTooLarge" for c in causes) or \
        "too large resource version" in str(status.get("message", "")).lower()


class Reflector:
    """One resource's local store, kept in sync; see the module doc.

    ``base_url``: ``http(s)://host:port``; ``path``: the collection, e.g. ``/api/v1/namespaces/NS/secrets``
    or ``/api/v1/secrets``.  ``label_selector`` / ``field_selector``: as the API's parameters.
    ``token``: a bearer token; ``cert_file``/``key_file``: a client certificate; ``ca_file``: the CA of
    the server's certificate.  ``content_type``: ``json``, ``protobuf`` (Kubernetes' typed protobuf,
    for the kinds of ``schema``) or ``cbor`` (Kubernetes' CBOR: ``application/cbor`` lists,
    ``application/cbor-seq`` watches); either of the last two asks for JSON as the fallback, and every
    answer is read in the format the server chose, so the store holds the same objects whatever the
    wire.  ``watch_list``: ``auto`` (watch-list, falling back to LIST), ``on`` (watch-list only: a
    refusal is an :class:`InformerError`), ``off`` (LIST then watch).
    ``bookmark_timeout``: seconds a watch-list may take to reach the initial-events-end bookmark before
    the sync falls back to LIST.  ``page_size``: ``limit`` of each LIST page (0: one unpaginated LIST).
    ``watch_timeout``: the (min, max) seconds of ``timeoutSeconds``, chosen at random per watch.
    ``transform``: called on each object before it is stored (e.g. to drop fields); what it returns
    is stored.  ``backoff``: (initial, max) seconds between retries, doubled per failure, jittered.
    ``trim_every``: give the heap's free pages back to the system (glibc ``malloc_trim``) after every
    so many body bytes (0: never); see :data:`DEFAULT_TRIM_EVERY`.
    """

    def __init__(
        self,
        base_url: str,
        path: str,
        *,
        label_selector: Optional[str] = None,
        field_selector: Optional[str] = None,
        token: Optional[str] = None,
        cert_file: Optional[str] = None,
        key_file: Optional[str] = None,
        ca_file: Optional[str] = None,
        insecure: bool = False,
        content_type: str = "json",
        watch_list: str = "auto",
        bookmark_timeout: float = 60.0,
        page_size: int = 500,
        watch_timeout: Tuple[float, float] = (300.0, 600.0),
        transform: Optional[Transform] = None,
        backoff: Tuple[float, float] = (0.5, 30.0),
        connect_timeout: float = 30.0,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        schema: Optional[KubeSchema] = None,
        trim_every: int = DEFAULT_TRIM_EVERY,
    ) -> None:
        if content_type not in CONTENT_TYPES:
            raise ValueError(f"content_type must be one of {CONTENT_TYPES}, not {content_type!r}")
        if watch_list not in WATCH_LIST_MODES:
            raise ValueError(f"watch_list must be one of {WATCH_LIST_MODES}, not {watch_list!r}")
        if not path.startswith("/"):
            raise ValueError(f"the resource path must start with '/', not {path!r}")
        if not 0 < watch_timeout[0] <= watch_timeout[1]:
            raise ValueError("watch_timeout must be (min, max) seconds with 0 < min <= max")
        self.endpoint = Endpoint(base_url, ca_file=ca_file, cert_file=cert_file, key_file=key_file, insecure=insecure)
        self.path = path.rstrip("/")
        self.selectors = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        self.headers: Dict[str, str] = {}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.content_type = content_type
        self.watch_list = watch_list
        self.bookmark_timeout = bookmark_timeout
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.transform = transform
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.max_object_bytes = max_object_bytes
        self.schema = schema

        #: the local store: key (namespace/name) -> object
        self.store: Dict[str, Dict[str, Any]] = {}
        #: the last resourceVersion seen (a sync's, an event's or a bookmark's)
        self.resource_version = ""
        #: the store is complete (since the first sync)
        self.synced = False
        #: whether the last sync was by watch-list (None before the first)
        self.used_watch_list: Optional[bool] = None
        #: seconds the first sync took, from the first request to the complete store
        self.sync_seconds: Optional[float] = None
        #: counters, for people and tests: requests by kind, syncs, relists after Gone, retries
        self.stats: Dict[str, int] = {"list": 0, "watch": 0, "watch_list": 0, "syncs": 0, "gone": 0, "retries": 0,
                                      "watch_list_fallbacks": 0}
        #: body bytes received
        self.bytes_received = 0
        #: the media type of the last answer to each kind of request ("list", "watch")
        self.media_types: Dict[str, str] = {}
        self.trim_every = trim_every
        self._trimmed_at = 0
        self._watch_list_refused = False
        self._closed = False
        self._response: Optional[HTTPResponse] = None

    # ------------------------------------------------------------------ public
    async def events(self) -> AsyncGenerator[InformerEvent, None]:
        """Sync, then follow the resource for ever (until :meth:`close` or the caller stops iterating)."""
        delay = self.backoff[0]
        need_sync = True
        started = time.monotonic()
        try:
            while not self._closed:
                try:
                    if need_sync:
                        async for ev in self._sync():
                            if ev.type == "synced" and self.sync_seconds is None:
                                self.sync_seconds = time.monotonic() - started
                            yield ev
                        need_sync = False
                    else:
                        async for ev in self._watch():
                            yield ev
                    delay = self.backoff[0]  # a request that worked ends the backoff
                except _Gone as exc:
                    log.info("%s: %s: re-listing from the latest state", self.path, exc)
                    self.stats["gone"] += 1
                    self.resource_version = ""
                    need_sync = True
                except _Retry as exc:
                    self.stats["retries"] += 1
                    wait = exc.delay if exc.delay is not None else delay * random.uniform(0.5, 1.5)
                    log.info("%s: %s; retrying in %.2f s", self.path, exc, wait)
                    delay = min(delay * 2, self.backoff[1])
                    await asyncio.sleep(wait)
        finally:
            self._close_response()

    async def run_until_synced(self, timeout: Optional[float] = None) -> List[InformerEvent]:
        """Sync once and return the sync's events (the store is then complete); no watch is kept open."""
        out: List[InformerEvent] = []

        async def sync() -> None:
            events = self.events()
            try:
                async for ev in events:
                    if ev.type == "synced":
                        return
                    out.append(ev)
            finally:
                await events.aclose()

        try:
            async with asyncio.timeout(timeout):
                await sync()
        finally:
            self.close()
        return out

    def close(self) -> None:
        """Stop: the open request is closed and :meth:`events` ends."""
        self._closed = True
        self._close_response()

    # ------------------------------------------------------------------ requests
    def _accept(self, watch: bool) -> str:
        if self.content_type == "protobuf":
            return f"{PROTOBUF_WATCH if watch else PROTOBUF}, {JSON}"
        if self.content_type == "cbor":  # kube-apiserver answers a watch asked in application/cbor with cbor-seq
            return f"{CBOR}, {JSON}"
        return JSON

    def _watch_timeout(self) -> int:
        return max(1, round(random.uniform(*self.watch_timeout)))

    async def _get(self, params: Dict[str, str], watch: bool) -> HTTPResponse:
        """The response to a GET of the collection with ``params``; errors become _Retry, _Gone,
        WatchListUnavailable (a watch-list refused) or InformerError."""
        query = urlencode({**params, **self.selectors}, quote_via=quote)
        headers = {"Accept": self._accept(watch), **self.headers}
        try:
            resp = await self.endpoint.get(f"{self.path}?{query}", headers, connect_timeout=self.connect_timeout)
        except ConnectionFailed as exc:
            raise _Retry(str(exc)) from None
        if resp.status == 200:
            self.media_types["watch" if watch else "list"] = resp.content_type
            self._response = resp
            return resp
        body = await resp.read(64 * 1024, timeout=self.connect_timeout)
        resp.close()
        try:  # a Status, in JSON, or in CBOR when CBOR was asked for first
            status = cbor_object(body, self.max_object_bytes) if resp.content_type == CBOR else \
                json.loads(body) if body[:1] == b"{" else {}
        except (ValueError, DecodeFailed):
            status = {}
        status = status if isinstance(status, dict) else {}
        message = f"HTTP {resp.status} {status.get('reason') or resp.reason}: {status.get('message') or body[:200]!r}"
        if resp.status == 410 or (resp.status == 504 and _too_large(status)):
            raise _Gone(message)
        if resp.status == 429 or resp.status >= 500:
            raise _Retry(message, self._retry_after(resp))
        if "sendInitialEvents" in params and resp.status not in (401, 403, 404):
            raise WatchListUnavailable(message, refused=True)
        raise InformerError(f"GET {self.path}: {message}")

    def _retry_after(self, resp: HTTPResponse) -> Optional[float]:
        value = resp.headers.get("retry-after", "")
        if value.isdigit():
            return min(float(value), self.backoff[1]) + random.uniform(0, 0.1)
        return None

    def _close_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _received(self, n: int) -> None:
        self.bytes_received += n
        if self.trim_every and self.bytes_received - self._trimmed_at >= self.trim_every:
            self._trimmed_at = self.bytes_received
            _malloc_trim()

    def _apply_transform(self, obj: Dict[str, Any]) -> Dict[str, Any]:
        return self.transform(obj) if self.transform is not None else obj

    # ------------------------------------------------------------------ sync
    async def _sync(self) -> AsyncIterator[InformerEvent]:
        use_watch_list = self.watch_list == "on" or (self.watch_list == "auto" and not self._watch_list_refused)
        if use_watch_list:
            try:
                async for ev in self._watch_list():
                    yield ev
                return
            except WatchListUnavailable as exc:
                self._close_response()
                if self.watch_list == "on":
                    raise InformerError(f"watch-list unavailable: {exc}") from None
                self._watch_list_refused = self._watch_list_refused or exc.refused
                self.stats["watch_list_fallbacks"] += 1
                log.info("%s: watch-list unavailable (%s): falling back to LIST", self.path, exc)
        async for ev in self._list():
            yield ev

    async def _watch_list(self) -> AsyncIterator[InformerEvent]:
        self.stats["watch_list"] += 1
        timeout = self._watch_timeout()
        params = {"watch": "1", "sendInitialEvents": "true", "allowWatchBookmarks": "true",
                  "resourceVersionMatch": "NotOlderThan", "resourceVersion": self.resource_version,
                  "timeoutSeconds": str(timeout)}
        deadline = time.monotonic() + self.bookmark_timeout
        resp = await self._get(params, watch=True)
        reader = self._watch_reader(resp)
        initial: Dict[str, Dict[str, Any]] = {}
        chunks = resp.chunks(timeout=timeout + 30)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WatchListUnavailable(f"no initial-events-end bookmark within {self.bookmark_timeout:g} s")
                try:
                    chunk = await within(chunks.__anext__(), left)
                except StopAsyncIteration:
                    raise WatchListUnavailable("the watch-list ended before the initial-events-end bookmark") from None
                except asyncio.TimeoutError:
                    raise WatchListUnavailable(
                        f"no initial-events-end bookmark within {self.bookmark_timeout:g} s") from None
                except ConnectionFailed as exc:
                    raise _Retry(f"watch-list: {exc}") from None
                self._received(len(chunk))
                events = self._decode(reader, chunk)
                for i, (type_, obj) in enumerate(events):
                    if type_ == "BOOKMARK":
                        self.resource_version = _resource_version(obj) or self.resource_version
                        annotations = (obj.get("metadata") or {}).get("annotations") or {}
                        if annotations.get(INITIAL_EVENTS_END) == "true":
                            for ev in self._replace(initial, watch_list=True):
                                yield ev
                            initial = {}
                            async for ev in self._follow(resp, reader, chunks, events[i + 1:]):
                                yield ev
                            return
                    elif type_ == "ERROR":
                        status = obj
                        if _status_code(status) == 410 or _too_large(status):
                            raise _Gone(f"watch-list: {status.get('message')}")
                        raise WatchListUnavailable(f"ERROR event {_status_code(status)}: {status.get('message')}")
                    elif type_ in ("ADDED", "MODIFIED"):
                        initial[object_key(obj)] = self._apply_transform(obj)
                    elif type_ == "DELETED":
                        initial.pop(object_key(obj), None)
                    else:
                        raise WatchListUnavailable(f"an unknown watch event type {type_!r}")
        finally:
            initial = {}

    async def _list(self) -> AsyncIterator[InformerEvent]:
        fresh: Dict[str, Dict[str, Any]] = {}
        params: Dict[str, str] = {"resourceVersion": ""} if self.page_size <= 0 else {"limit": str(self.page_size)}
        rv = ""
        while True:
            self.stats["list"] += 1
            resp = await self._get(params, watch=False)
            reader: Any
            if resp.content_type == PROTOBUF:
                reader = ProtoListReader(self.schema, self.max_object_bytes)
            elif resp.content_type == CBOR:
                reader = CBORListReader(self.max_object_bytes)
            elif resp.content_type == JSON:
                reader = JSONListReader(self.max_object_bytes)
            else:
                resp.close()
                raise InformerError(f"LIST {self.path}: an unexpected content type {resp.content_type!r}")
            try:
                async for chunk in resp.chunks(timeout=self.connect_timeout):
                    self._received(len(chunk))
                    for item in self._decode_items(reader, chunk):
                        fresh[object_key(item)] = self._apply_transform(item)
                try:
                    for item in reader.close():
                        fresh[object_key(item)] = self._apply_transform(item)
                except DecodeFailed as exc:
                    raise _Retry(f"LIST: {exc}") from None
            except ConnectionFailed as exc:
                raise _Retry(f"LIST: {exc}") from None
            finally:
                self._close_response()
            meta = reader.metadata
            rv = str(meta.get("resourceVersion") or "")
            token = meta.get("continue")
            if not token:
                break
            params = {"limit": str(self.page_size), "continue": str(token)}
        if not rv:
            raise _Retry("LIST: the list carries no resourceVersion")
        self.resource_version = rv
        for ev in self._replace(fresh, watch_list=False):
            yield ev

    def _replace(self, fresh: Dict[str, Dict[str, Any]], *, watch_list: bool) -> Iterator[InformerEvent]:
        """Swap in a complete state; the events say how it differs from the old one, then ``synced``."""
        old, self.store = self.store, fresh
        self.synced = True
        self.used_watch_list = watch_list
        self.stats["syncs"] += 1
        for key, obj in fresh.items():
            before = old.pop(key, None)
            if before is None:
                yield InformerEvent("added", key, obj)
            elif _resource_version(before) != _resource_version(obj):
                yield InformerEvent("updated", key, obj, before)
        for key, obj in old.items():
            yield InformerEvent("deleted", key, obj)
        yield InformerEvent("synced")

    # ------------------------------------------------------------------ watch
    def _watch_reader(self, resp: HTTPResponse) -> Any:
        if resp.content_type == PROTOBUF:
            return ProtoWatchReader(self.schema, self.max_object_bytes)
        if resp.content_type in (CBOR_SEQ, CBOR):  # client-go also takes application/cbor for a sequence
            return CBORWatchReader(self.max_object_bytes)
        if resp.content_type == JSON:
            return JSONWatchReader(self.max_object_bytes)
        resp.close()
        raise InformerError(f"WATCH {self.path}: an unexpected content type {resp.headers.get('content-type')!r}")

    def _decode(self, reader: Any, chunk: bytes) -> List[Tuple[str, Dict[str, Any]]]:
        try:
            return list(reader.feed(chunk))
        except DecodeFailed as exc:
            raise _Retry(f"undecodable watch stream: {exc}") from None

    def _decode_items(self, reader: Any, chunk: bytes) -> List[Dict[str, Any]]:
        try:
            return list(reader.feed(chunk))
        except DecodeFailed as exc:
            raise _Retry(f"undecodable list: {exc}") from None

    async def _watch(self) -> AsyncIterator[InformerEvent]:
        self.stats["watch"] += 1
        timeout = self._watch_timeout()
        params = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": self.resource_version,
                  "timeoutSeconds": str(timeout)}
        resp = await self._get(params, watch=True)
        reader = self._watch_reader(resp)
        async for ev in self._follow(resp, reader, resp.chunks(timeout=timeout + 30)):
            yield ev

    async def _follow(self, resp: HTTPResponse, reader: Any, chunks: AsyncIterator[bytes],
                      leftover: Optional[List[Tuple[str, Dict[str, Any]]]] = None) -> AsyncIterator[InformerEvent]:
        """Apply a live stream's events to the store until it ends (then the caller re-watches).
        ``leftover``: events decoded already (those after the initial-events-end bookmark in its chunk)."""
        try:
            for ev in self._apply(leftover or []):
                yield ev
            while True:
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except ConnectionFailed as exc:
                    raise _Retry(f"watch: {exc}") from None
                self._received(len(chunk))
                for ev in self._apply(self._decode(reader, chunk)):
                    yield ev
            try:
                reader.close()
            except DecodeFailed as exc:
                raise _Retry(f"watch: {exc}") from None
        finally:
            self._close_response()

    def _apply(self, events: List[Tuple[str, Dict[str, Any]]]) -> Iterator[InformerEvent]:
        for type_, obj in events:
            if type_ == "ERROR":
                status = obj
                if _status_code(status) == 410 or _too_large(status):
                    raise _Gone(f"watch: {status.get('message')}")
                raise _Retry(f"watch: ERROR event {_status_code(status)}: {status.get('message')}")
            rv = _resource_version(obj)
            if rv:
                self.resource_version = rv
            if type_ == "BOOKMARK":
                continue
            key = object_key(obj)
            if type_ == "DELETED":
                before = self.store.pop(key, None)
                yield InformerEvent("deleted", key, self._apply_transform(obj) if before is None else before)
            elif type_ in ("ADDED", "MODIFIED"):
                obj = self._apply_transform(obj)
                before = self.store.get(key)
                self.store[key] = obj
                yield InformerEvent("added" if before is None else "updated", key, obj, before)
            else:
                raise _Retry(f"watch: an unknown event type {type_!r}")
