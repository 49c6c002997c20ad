"""The ASGI application: Kubernetes-style core/v1 REST over etcd.

Mount it in any ASGI server (``uvicorn streamcodec.server.app:...`` via
:func:`create_app`, or ``Starlette(routes=[Mount("/", app)])``).  One
:class:`App` serves one :class:`streamcodec.storage.interface.Store` (given, or an
EtcdStore it creates in the running loop on first use) and one :class:`streamcodec.BufferPool` that every
streaming response writes through.

Routes: ``/api``, ``/api/v1``, ``/apis``, ``/version``, ``/healthz``;
``/api/v1/namespaces/{ns}/{resource}[/{name}]``, ``/api/v1/{resource}[/{name}]``
(GET list / watch / watch-list / one, POST, PUT, DELETE).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import secrets
import urllib.parse
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import streamcodec
from streamcodec.errors import go_quote
from streamcodec import BufferPool, EncodeError
from streamcodec.kube_schema import DEFAULT_SCHEMA, KubeSchema
from streamcodec.formats import FORMATS
from streamcodec.limits import DEFAULT_BUFFER_SIZE, DEFAULT_MAX_BODY_VALUES, DEFAULT_POOL_BYTES
from streamcodec.storage import EtcdStore
from streamcodec.storage import errors as storage_errors
from streamcodec.storage.interface import Store

from . import objects, patches
from .admission import Admission, client_of
from .bodies import ListBody, WatchBody, buffered_list_body, watch_error_event
from .defaults import FRAME_CACHE_BYTES, POOL_BYTES, QUEUE_WAIT, RETRY_AFTER, SEND_PIECE_BYTES, STALL_TIMEOUT, UPDATE_RETRIES
from .handlers import ListRequest, Selectors, WatchRequest, resource_version
from .items import FrameCache, ItemWriter
from .namespaces import NAMESPACES, NamespaceLifecycle, admitted_namespace
from .negotiation import available_formats, format_for_content_type, negotiate
from .objects import DEFAULT_RESOURCES, Resource
from .openapi import OpenAPI
from .status import APIError, bad_request, from_storage_error, internal_error, warning_headers
from .strategic_patch import strategic_merge_patch
from .streams import ResponseBody, StreamResponse, send_error_response, to_api_error
from .write_options import DeleteOptions, check_preconditions, delete_options, query_dry_run

__all__ = ["App", "ServerConfig", "create_app", "KUBERNETES_VERSION"]

log = logging.getLogger("streamcodec.server")

#: Encoder options of Kubernetes' conventions: CBOR encloses []byte in tag 22 ("expected later base64"
#: encoding), which client-go's decoder needs to take a byte string as bytes rather than base64 text.
FORMAT_OPTIONS: Dict[str, Dict[str, Any]] = {"cbor": {"byte_string_tag": 22}}

#: Request bodies up to this size are decoded on the event loop: at most ~4,000 values, a few ms of
#: CPU; larger ones go to a worker thread (_read_object), which costs ~0.1 ms more.
INLINE_BODY_BYTES = 4096
#: keys read a page at a time by a deletecollection (their objects are dropped once selected)
DELETE_COLLECTION_PAGE = 500

#: kube-apiserver's default --max-requests-inflight: the stream cap of the buffered (classic) list mode.
KUBE_MAX_REQUESTS_INFLIGHT = 400

#: The Kubernetes API version this server imitates (what kubectl sees in /version).
KUBERNETES_VERSION = ("1", "32")


@dataclasses.dataclass
class ServerConfig:
    """Everything tunable about one server.

    ``list_mode``: ``streaming`` (items leave as etcd delivers them, through
    the pool) or ``buffered`` (read all, build the whole body, then send).
    Sizes, each with one job:

    * ``pool_bytes`` / ``buffer_bytes``: the shared pool every bulk stream (a
      list, a watch-list's initial events) writes through, one buffer of
      ``buffer_bytes`` each; the live pool's buffers are as large.
    * ``max_frame_bytes`` (:attr:`frame_bytes`): the largest frame (one
      encoded object and its envelope) an encoder writes; default a whole
      buffer, since frames never span buffers.
    * ``list_prefetch_bytes`` (:attr:`prefetch_bytes`): what a list that must
      read its items before its metadata (a continue token, a count, typed
      protobuf's size) keeps in memory; past it the items are read twice.
      Default one buffer: the memory of one stream.
    * :attr:`buffered_buffer_bytes` / :attr:`buffered_pool_bytes`: the private
      pool of each buffered-mode list body (outside the shared budget by design).
    * ``send_piece_bytes``: the largest ASGI body message a stream sends.
    * ``max_body_bytes``: the largest request body read; ``max_body_values``:
      the most values it may decode into (413 past either).

    ``max_streams``: concurrent bulk streams (default: as many as the pool
    has buffers); past it a request waits its turn, fairly across clients,
    in a queue of at most ``queue_limit`` for at most ``queue_wait`` seconds,
    then gets 429 with ``retry_after``.  Live watches take no slot and no
    buffer while idle: their events are written through ``live_pool_bytes``
    (buffers held only while an event is encoded, never while a client is
    waited for), and a live watcher whose client has not taken an event
    within ``slow_watcher_timeout`` seconds is cut off, so it never delays
    another.  ``stall_timeout``: seconds one send of a bulk stream may wait
    on a client that reads nothing before it is disconnected;
    ``contended_stall_timeout`` when other streams wait for a slot (one send
    is at most ``send_piece_bytes``, 256 KiB: a client slower than ~128 KB/s then gives its slot up).  ``key_root``: etcd key prefix of all
    objects.  ``passthrough``: JSON values in this server's stored layout go
    out without decode/re-encode.  ``kube_schema``: the kinds served in
    Kubernetes' typed protobuf (others get the client's next acceptable type).
    ``min_request_timeout``: kube-apiserver's flag of that name: a watch
    without ``timeoutSeconds`` (or with 0) ends after a random time between
    it and twice it, and no watch lasts longer than that.
    ``continue_secret``: the key continue tokens are signed with (at least 32
    bytes; default: a random one per process).  ``shared_scans``: concurrent
    watch-lists and whole lists of one collection share one paged etcd read (see
    :mod:`streamcodec.storage.shared_scan`).  ``frame_cache_bytes``: watch-event frames kept so the
    readers of one shared scan or watch transcode each object once (0: none; see
    :class:`~streamcodec.server.items.FrameCache`).  ``header_timeout`` /
    ``body_timeout`` / ``max_connections``: see :mod:`streamcodec.server.connections`
    (used through :meth:`App.uvicorn_options`).  ``namespace_lifecycle``: kube-apiserver's
    NamespaceLifecycle admission, on by default as in kube, so clients meet kube's answers: a create
    or update in a namespace without a Namespace object is a 404, ``default`` / ``kube-system`` /
    ``kube-public`` cannot be deleted, and the system namespaces are created at start-up (see
    :mod:`streamcodec.server.namespaces`); off, objects may be written in any namespace.
    """

    list_mode: str = "streaming"
    pool_bytes: int = POOL_BYTES
    buffer_bytes: int = DEFAULT_BUFFER_SIZE
    max_frame_bytes: Optional[int] = None
    list_prefetch_bytes: Optional[int] = None
    send_piece_bytes: int = SEND_PIECE_BYTES
    max_streams: Optional[int] = None
    queue_limit: int = 1024
    queue_wait: float = QUEUE_WAIT
    live_pool_bytes: int = DEFAULT_POOL_BYTES
    slow_watcher_timeout: float = 5.0
    stall_timeout: float = STALL_TIMEOUT
    contended_stall_timeout: float = 2.0
    retry_after: int = RETRY_AFTER
    key_root: str = "/registry"
    resources: Dict[str, Resource] = dataclasses.field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    max_body_bytes: int = 3 * 1024 * 1024
    max_body_values: int = DEFAULT_MAX_BODY_VALUES
    min_request_timeout: int = 1800
    continue_secret: Optional[bytes] = None
    header_timeout: float = 32.0
    body_timeout: float = 60.0
    max_connections: int = 20000
    passthrough: bool = True
    kube_schema: KubeSchema = DEFAULT_SCHEMA
    shared_scans: bool = True
    frame_cache_bytes: int = FRAME_CACHE_BYTES
    namespace_lifecycle: bool = True

    def __post_init__(self) -> None:
        if self.list_mode not in ("streaming", "buffered"):
            raise ValueError(f"list_mode must be 'streaming' or 'buffered', not {self.list_mode!r}")
        if self.buffer_bytes <= 0 or self.pool_bytes < self.buffer_bytes:
            raise ValueError("pool_bytes must hold at least one buffer of buffer_bytes")
        if self.stall_timeout <= 0 or self.slow_watcher_timeout <= 0:
            raise ValueError("stall_timeout and slow_watcher_timeout must be positive")
        if self.live_pool_bytes < self.buffer_bytes:
            raise ValueError("live_pool_bytes must hold at least one buffer of buffer_bytes")
        if not 0 < self.frame_bytes <= self.buffer_bytes:
            raise ValueError("max_frame_bytes must be positive and fit one buffer of buffer_bytes")
        if self.prefetch_bytes < 0 or self.send_piece_bytes <= 0:
            raise ValueError("list_prefetch_bytes must not be negative, send_piece_bytes must be positive")
        if self.continue_secret is not None and len(self.continue_secret) < 32:
            raise ValueError("continue_secret must be at least 32 bytes")
        if not self.key_root.startswith("/") or self.key_root.endswith("/"):
            raise ValueError("key_root must start with '/' and not end with it")

    @property
    def frame_bytes(self) -> int:
        """The largest frame any encoder writes: ``max_frame_bytes``, or one buffer."""
        return self.buffer_bytes if self.max_frame_bytes is None else self.max_frame_bytes

    @property
    def prefetch_bytes(self) -> int:
        """What a read-ahead list keeps in memory: ``list_prefetch_bytes``, or one buffer."""
        return self.buffer_bytes if self.list_prefetch_bytes is None else self.list_prefetch_bytes

    @property
    def buffered_buffer_bytes(self) -> int:
        """One buffer of a buffered list body's private pool: one frame."""
        return self.frame_bytes

    @property
    def buffered_pool_bytes(self) -> int:
        """A buffered list body's private pool: two frames' buffers."""
        return 2 * self.buffered_buffer_bytes


class App:
    """The API server as an ASGI application.

    Give either a ready ``store`` (any :class:`streamcodec.storage.interface.Store`;
    its lifecycle stays yours; with ``shared_scans`` a
    :class:`~.bodies.SharedScanStore`) or ``etcd_endpoints`` (+ ``store_options``
    for TLS/auth), in which case the App creates an EtcdStore on first use and closes it at lifespan shutdown
    or :meth:`aclose`.  ``authenticator`` / ``authorizer``: callables of the
    :class:`streamcodec.server.security.Authenticator` / ``Authorizer`` protocols (the
    built-in token-file, x509 and ABAC ones, or a host server's own);
    ``audit``: an :class:`streamcodec.server.audit.AuditSink`; none given, every
    request is served unauthenticated, as before.
    """

    def __init__(
        self,
        store: Optional[Store] = None,
        *,
        etcd_endpoints: Optional[List[str]] = None,
        store_options: Optional[Dict[str, Any]] = None,
        config: Optional[ServerConfig] = None,
        authenticator: Optional[Any] = None,
        authorizer: Optional[Any] = None,
        audit: Optional[Any] = None,
    ) -> None:
        if (store is None) == (etcd_endpoints is None):
            raise ValueError("give exactly one of store or etcd_endpoints")
        self.config = config or ServerConfig()
        if self.config.shared_scans and store is not None and not hasattr(store, "shared_watch_list"):
            raise ValueError("shared_scans needs a store with shared_watch_list (a SharedScanStore)")
        self._store = store
        self._owns_store = store is None
        self._endpoints = etcd_endpoints
        self._store_options = dict(store_options or {})
        # continue tokens signed with the operator's key stay valid across restarts and replicas;
        # without one they are valid for this process only
        self._store_options.setdefault("continue_secret", self.config.continue_secret or secrets.token_bytes(32))
        self.pool = BufferPool(self.config.pool_bytes, self.config.buffer_bytes)
        #: live watch events are written through a pool of their own: no bulk stream holds its buffers
        self.live_pool = BufferPool(self.config.live_pool_bytes, self.config.buffer_bytes)
        # buffered lists build their bodies outside the pool: the cap is kube-apiserver's in-flight one
        self.max_streams = self.config.max_streams or (
            KUBE_MAX_REQUESTS_INFLIGHT if self.config.list_mode == "buffered" else self.pool.max_buffers
        )
        self.admission = Admission(
            self.max_streams, queue_limit=self.config.queue_limit, max_wait=self.config.queue_wait,
            retry_after=self.config.retry_after,
        )
        self.formats = available_formats()
        mfs = self.config.frame_bytes
        self.encoders: Dict[str, Any] = {
            name: FORMATS[name].encoder(max_frame_size=mfs, **FORMAT_OPTIONS.get(name, {}))
            for name in self.formats
            if name != "protobuf"
        }
        #: Kubernetes' typed protobuf, per kind (only kinds of its schema registry)
        self.kube_proto = streamcodec.KubeProtoEncoder(self.config.kube_schema, max_frame_size=mfs)
        #: formats whose list bodies need the item count before the items
        self.needs_count = {name for name in self.encoders if FORMATS[name].list_needs == "count"}
        #: transcoded watch-event frames, shared by every response (None: off)
        self.frame_cache = FrameCache(self.config.frame_cache_bytes) if self.config.frame_cache_bytes > 0 else None
        #: kube's NamespaceLifecycle admission and system namespaces (namespaces.py); None: off
        self.namespaces = (
            NamespaceLifecycle(self.store, lambda name: self._key(NAMESPACES, None, name),
                               lambda namespace: [self._prefix(r, namespace) for r in self.config.resources.values() if r.namespaced])
            if self.config.namespace_lifecycle else None
        )
        #: one large request body is decoded at a time, in a worker thread (_read_object)
        self._large_body_slot = asyncio.Semaphore(1)
        self._openapi_documents: Optional[OpenAPI] = None
        self.active_streams = 0
        self.streams_started = 0
        self.outcomes: Dict[str, int] = {}
        self._responses: "set[StreamResponse]" = set()
        self._contended = lambda: self.admission.waiting > 0  #: one for every stream (~200 bytes less per open watch)
        #: authentication, authorization, audit (security.py); None when none is given: served as before
        from .security import security_gate

        self.security = security_gate(self, authenticator, authorizer, audit)

    # -- lifecycle ---------------------------------------------------------

    async def store(self) -> Store:
        """The store; the EtcdStore of ``etcd_endpoints`` is made here, in the running loop, on first use
        (which also starts creating the system namespaces, when ``namespace_lifecycle`` is on)."""
        if self._store is None:
            assert self._endpoints is not None
            self._store = EtcdStore(self._endpoints, **self._store_options)
        if self.namespaces is not None:
            self.namespaces.start(self._store)  # once, in the background: only a write into one not made yet waits
        return self._store

    async def aclose(self) -> None:
        for response in list(self._responses):
            if response.parked is not None:
                response.parked.end()  # the request tasks of other streams are the ASGI server's to end
        if self.namespaces is not None:
            await self.namespaces.aclose()  # before the store it writes to
        if self.security is not None:
            self.security.flush()  # the audit log's buffered lines
        if self._owns_store and self._store is not None:
            store, self._store = self._store, None
            await store.close()

    def stats(self) -> Dict[str, Any]:
        """Streams and pool accounting (for tests, benchmarks and /metrics-like use)."""
        return {
            "active_streams": self.active_streams,
            "streams_started": self.streams_started,
            "rejected": self.admission.rejected,
            "admission": self.admission.stats(),
            "outcomes": dict(self.outcomes),
            "pool": self.pool.stats(),
            "live_pool": self.live_pool.stats(),
        }

    def uvicorn_options(self) -> Dict[str, Any]:
        """Keyword arguments for ``uvicorn.Config`` / ``uvicorn.run`` serving this app as ``streamcodec serve`` does.

        ``http``: the protocol class with this config's connection limits; it raises this process's
        open-files limit towards ``max_connections`` first, and the cap is what the limit allows,
        less a reserve for etcd connections and logs.  ``proxy_headers`` off: the connection's peer
        address is the client's identity for fair queueing and the audit log, and uvicorn would
        otherwise take it from any loopback client's ``X-Forwarded-For`` (it also saves a
        middleware layer on every request and open watch).
        """
        from .connections import guarded_h11, raise_open_files_limit

        reserve = 256
        allowed = raise_open_files_limit(self.config.max_connections + reserve) - reserve
        protocol = guarded_h11(self.config.header_timeout, self.config.body_timeout, max(1, min(self.config.max_connections, allowed)))
        return {"http": protocol, "proxy_headers": False}

    # -- ASGI --------------------------------------------------------------

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.security is not None:  # authentication, authorization, audit: security.py
            await self.security.serve(scope, receive, send, self._http)
            return
        await self._http(scope, receive, send)

    async def _http(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        encoder = self.encoders.get("json")
        accept = _header(scope, b"accept")
        with contextlib.suppress(APIError):  # kube never hides an error behind negotiation: it goes as JSON then
            encoder = self.encoder(negotiate(accept, self._formats_for("Status")), "Status")  # for errors
        try:
            response = await self._route(scope, receive, accept)
        except APIError as exc:
            await send_error_response(send, exc, encoder)
            return
        except (storage_errors.StorageError, EncodeError) as exc:  # EncodeError: an object this media type cannot carry, 406
            await send_error_response(send, to_api_error(exc), encoder)
            return
        except Exception:
            log.exception("unexpected error handling %s %s", scope.get("method"), scope.get("path"))
            await send_error_response(send, internal_error(), encoder)
            return
        await response(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.namespaces is not None:
                    await self.store()  # the system namespaces are created from start-up, not the first request
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- routing -----------------------------------------------------------

    def _openapi(self) -> OpenAPI:
        """The OpenAPI v3 documents (:mod:`.openapi`), built on first use."""
        if self._openapi_documents is None:
            self._openapi_documents = OpenAPI(self.config.resources.values(), self.config.kube_schema)
        return self._openapi_documents

    def _formats_for(self, kind: Optional[str]) -> List[str]:
        """The formats a response holding ``kind`` objects can be sent in."""
        if kind is not None and self.kube_proto.supports("v1", kind):
            return self.formats
        return [f for f in self.formats if f != "protobuf"]

    def encoder(self, fmt: str, kind: str) -> Any:
        """The encoder of format ``fmt`` for responses holding ``kind`` objects."""
        if fmt == "protobuf":
            return self.kube_proto.for_kind("v1", kind)
        return self.encoders[fmt]

    async def _route(self, scope: Dict[str, Any], receive: Any, accept: Optional[str]) -> Any:
        method = scope["method"]
        path = scope["path"].rstrip("/") or "/"
        query = _parse_query(scope.get("query_string", b""))
        if path in ("/healthz", "/readyz", "/livez"):
            return PlainResponse(200, b"ok", "text/plain; charset=utf-8")
        if path == "/version":
            major, minor = KUBERNETES_VERSION
            return self._object_response(200, {
                "major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0-streamcodec",
                "platform": "linux/amd64", "goVersion": "n/a (Python streamcodec)",
            }, "json")
        if path == "/openapi/v3":
            return PlainResponse(200, self._openapi().root, "application/json")
        if path == "/openapi/v3/api/v1":
            return PlainResponse(200, self._openapi().document, "application/json")
        if path in ("/api", "/apis", "/api/v1"):
            fmt = negotiate(accept, self._formats_for(None))  # discovery: kinds without typed protobuf here
        if path == "/api":
            return self._object_response(200, {
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": _server_address(scope)}],
            }, fmt)
        if path == "/apis":
            return self._object_response(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}, fmt)
        if path == "/api/v1":
            return self._object_response(200, {
                "kind": "APIResourceList", "groupVersion": "v1",
                "resources": [entry for r in self.config.resources.values() for entry in r.discovery()],
            }, fmt)
        parts = path.split("/")[1:]
        if parts[:2] != ["api", "v1"] or len(parts) < 3:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        rest = [urllib.parse.unquote(p) for p in parts[2:]]
        watching = rest[0] == "watch"  # kube's deprecated /api/v1/watch/... paths: a watch whatever the query says
        if watching:
            rest = rest[1:]
            if not rest or method != "GET":
                raise APIError(404 if not rest else 405, "NotFound" if not rest else "MethodNotAllowed",
                               "the server could not find the requested resource" if not rest else
                               f"the server does not allow this method on the requested resource: {method}")
        if len(rest) == 3 and rest[0] == NAMESPACES.name and rest[2] == "finalize" and self.namespaces is not None:
            return await self._finalize(scope, receive, objects.check_name("name", rest[1]), accept, query)
        namespace: Optional[str] = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace = objects.check_name("namespace", rest[1])
            rest = rest[2:]
        subresource = ""
        if len(rest) == 3 and rest[2] == "status" and not watching:
            subresource, rest = "status", rest[:2]
        if len(rest) > 2:
            raise APIError(404, "NotFound", "the server could not find the requested resource (subresources other than status are not served)")
        resource = objects.resource_info(rest[0], self.config.resources)
        if subresource and not resource.status_subresource:
            raise APIError(404, "NotFound", f"the server could not find the requested resource: {resource.name} has no status subresource")
        fmt = negotiate(accept, self._formats_for(resource.kind))
        name = objects.check_name("name", rest[1]) if len(rest) == 2 else None
        if name is not None and namespace is None and resource.namespaced:
            raise APIError(404, "NotFound", f"the server could not find the requested resource: {resource.name} is namespaced")
        if namespace is not None and not resource.namespaced:
            raise APIError(404, "NotFound", f"the server could not find the requested resource: {resource.name} is not namespaced")
        if name is None:
            if method == "GET":
                if watching or _bool_param(query, "watch"):
                    return await self._watch(resource, namespace, query, fmt, client_of(scope))
                return await self._list(resource, namespace, query, fmt, client_of(scope))
            if method == "DELETE" and (namespace is not None or not resource.namespaced) and resource.name != NAMESPACES.name:
                return await self._delete_collection(resource, namespace, query, fmt, await self._delete_options(scope, receive, query))
            if method == "POST":
                if resource.namespaced and namespace is None:
                    raise APIError(405, "MethodNotAllowed", "create a namespaced object under /api/v1/namespaces/{namespace}/...")
                dry_run = query_dry_run(query, "CreateOptions")
                obj, warnings = await self._read_object(scope, receive, resource, query)
                with _warned(warnings):
                    return await self._create(obj, warnings, resource, namespace, fmt, dry_run)
        else:
            if subresource and method not in ("GET", "PUT", "PATCH"):
                raise APIError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource: {method}")
            if method == "GET":
                if not subresource and (watching or _bool_param(query, "watch")):  # kube: the collection's watch, of this name only
                    selector = ",".join(filter(None, (f"metadata.name={name}", query.get("fieldSelector"))))
                    return await self._watch(resource, namespace, {**query, "fieldSelector": selector}, fmt, client_of(scope))
                return await self._get(resource, namespace, name, fmt)
            if method == "PUT":
                dry_run = query_dry_run(query, "UpdateOptions")
                obj, warnings = await self._read_object(scope, receive, resource, query)
                with _warned(warnings):
                    return await self._replace(obj, warnings, resource, namespace, name, fmt, dry_run, subresource)
            if method == "PATCH":
                return await self._patch(scope, receive, resource, namespace, name, fmt, query, subresource)
            if method == "DELETE":
                return await self._delete(resource, namespace, name, fmt, await self._delete_options(scope, receive, query))
        raise APIError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource: {method}")

    # -- keys --------------------------------------------------------------

    def _prefix(self, resource: Resource, namespace: Optional[str]) -> bytes:
        parts = [self.config.key_root, resource.name]
        if namespace is not None:
            parts.append(namespace)
        return ("/".join(parts) + "/").encode("utf-8")

    def _key(self, resource: Resource, namespace: Optional[str], name: str) -> bytes:
        return self._prefix(resource, namespace) + name.encode("utf-8")

    # -- single objects ----------------------------------------------------

    def _object_response(self, code: int, obj: Dict[str, Any], fmt: str) -> "PlainResponse":
        encoder = self.encoders[fmt]
        return PlainResponse(code, encoder.encode(obj), encoder.content_type)

    def _kv_response(self, code: int, value: Any, revision: Optional[int], fmt: str, resource: Resource) -> "PlainResponse":
        """A stored value as the response's object, at ``revision`` (None: with no resourceVersion, as a
        dry-run create answers)."""
        encoder = self.encoder(fmt, resource.kind)
        if fmt == "json" and self.config.passthrough and revision is not None:
            spliced = objects.splice_resource_version(value, revision)
            if spliced is not None:
                return PlainResponse(code, spliced, encoder.content_type)
        if fmt == "protobuf" and objects.detect_format(value) == "json":
            return PlainResponse(code, encoder.encode_stored(value, revision), encoder.content_type)
        obj = objects.decode_stored(value, revision or 0)
        if revision is None:
            del obj["metadata"]["resourceVersion"]
        if fmt == "cbor":
            obj = objects.with_byte_strings(obj, self._byte_paths(resource.kind))
        return PlainResponse(code, encoder.encode(obj), encoder.content_type)

    def _byte_paths(self, kind: str) -> Dict[str, Any]:
        """Where objects of ``kind`` hold ``[]byte`` fields (CBOR writes them as byte strings)."""
        return objects.kind_byte_paths(self.kube_proto.schema, kind)

    def _item_writer(self, encoder: Any, fmt: str, resource: Resource) -> ItemWriter:
        paths = self._byte_paths(resource.kind) if fmt == "cbor" else None
        return ItemWriter(encoder, fmt, resource, self.config.passthrough, paths, self.frame_cache)

    async def _get(self, resource: Resource, namespace: Optional[str], name: str, fmt: str) -> "PlainResponse":
        store = await self.store()
        try:
            kv = await store.get(self._key(resource, namespace, name))
        except storage_errors.StorageError as exc:
            raise from_storage_error(exc, resource=resource.name, name=name) from None
        return self._kv_response(200, kv.value, int(kv.mod_revision), fmt, resource)

    async def _read_object(self, scope: Dict[str, Any], receive: Any, resource: Resource,
                           query: Dict[str, str]) -> Tuple[Dict[str, Any], List[str]]:
        """The request body, decoded and checked (:func:`objects.decode_body`) under the write's
        ``fieldValidation``, and the warnings that lets through (Warning headers of the response).

        Decoding and checking a body costs ~1-2 us of CPU per value, and a body may hold
        ``max_body_values``: past INLINE_BODY_BYTES it runs in a worker thread, one body at a time,
        so the event loop keeps serving (it waits at most a GIL switch interval, or one compiled
        decode) and the objects of at most one large body are being built at once.
        """
        body, body_format = await self._read_body(scope, receive)
        validation = objects.field_validation(query.get("fieldValidation"), scope["method"])
        warnings: List[str] = []
        decode = functools.partial(
            objects.decode_body, body, body_format, resource,
            max_values=self.config.max_body_values, schema=self.config.kube_schema,
            field_validation=validation, warnings=warnings,
        )
        if len(body) <= INLINE_BODY_BYTES:
            return decode(), warnings
        async with self._large_body_slot:
            return await asyncio.to_thread(decode), warnings

    async def _read_body(self, scope: Dict[str, Any], receive: Any) -> Tuple[bytes, str]:
        """The request body and the format its Content-Type names (an empty body: ``("", "json")``)."""
        body = await self._read_body_bytes(receive)
        if not body:  # no format to judge (a DELETE without options); callers refuse an empty object
            return body, "json"
        from_browser = _header(scope, b"origin") is not None or _header(scope, b"sec-fetch-mode") is not None
        return body, format_for_content_type(_header(scope, b"content-type"), self.formats, from_browser=from_browser)

    async def _read_body_bytes(self, receive: Any) -> bytes:
        """The request body, at most ``max_body_bytes`` (413)."""
        chunks: List[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise APIError(400, "BadRequest", "the client disconnected while sending the body")
            body = message.get("body", b"")
            size += len(body)
            if size > self.config.max_body_bytes:
                raise APIError(413, "RequestEntityTooLarge", f"the request body exceeds {self.config.max_body_bytes} bytes")
            chunks.append(body)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _create(self, obj: Dict[str, Any], warnings: List[str], resource: Resource, namespace: Optional[str],
                      fmt: str, dry_run: bool = False) -> "PlainResponse":
        metadata = obj.get("metadata") or {}
        name = metadata.get("name")
        body_ns = metadata.get("namespace")
        if body_ns and namespace is not None and body_ns != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        # kube's admission (NamespaceLifecycle: its namespace must exist) comes before the object's validation
        if self.namespaces is not None:
            generate = metadata.get("generateName")
            await self.namespaces.admit("create", resource, namespace, name if isinstance(name, str) and name else
                                        generate if isinstance(generate, str) and generate else "Unknown")
        if not name and isinstance(metadata.get("generateName"), str):
            name = metadata["generateName"] + secrets.token_hex(3)[:5]
        if not isinstance(name, str) or not name:
            raise APIError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
        objects.check_name("metadata.name", name)
        stored = objects.prepare_for_storage(obj, resource, namespace, name, creating=True, schema=self.config.kube_schema)
        if resource.name == NAMESPACES.name and self.namespaces is not None:
            stored = admitted_namespace(stored, None)
        value = objects.encode_for_storage(stored)
        store = await self.store()
        key = self._key(resource, namespace, name)
        revision: Optional[int] = None
        try:
            if dry_run:  # kube's dry run: all but the write, and an object already there is still a 409
                with contextlib.suppress(storage_errors.NotFound):
                    await store.get(key)
                    raise storage_errors.AlreadyExists(f"{key!r} exists", key=key)
            else:
                revision = await store.create(key, value)
        except storage_errors.StorageError as exc:
            raise from_storage_error(exc, resource=resource.name, name=name) from None
        response = self._kv_response(201, value, revision, fmt, resource)
        response.warnings = warnings
        return response

    async def _replace(self, obj: Dict[str, Any], warnings: List[str], resource: Resource, namespace: Optional[str],
                       name: str, fmt: str, dry_run: bool = False, subresource: str = "") -> "PlainResponse":
        _check_identity(obj, namespace, name)
        return await self._update(lambda previous: obj, warnings, resource, namespace, name, fmt, dry_run, subresource)

    async def _update(self, new_object: Callable[[Dict[str, Any]], Dict[str, Any]], warnings: List[str], resource: Resource,
                      namespace: Optional[str], name: str, fmt: str, dry_run: bool, subresource: str = "") -> "PlainResponse":
        """Store ``new_object(current object)`` in place of the object, conditional on the revision it was
        made from, or on the ``metadata.resourceVersion`` it holds if that is another (a 409 then).

        A kind with a status subresource (kube's strategies): a write of the object keeps the status it had,
        a write of ``status`` changes the status only."""
        store = await self.store()
        key = self._key(resource, namespace, name)
        # A write whose object does not name its resourceVersion retries on a concurrent write, as kube's
        # GuaranteedUpdate does: the server-owned fields come from the version it replaces, so it never
        # loses that write's uid (a patch is applied to that version again).
        for attempt in range(UPDATE_RETRIES):
            expected: Optional[int] = None
            try:
                current = await store.get(key)
                if attempt == 0 and self.namespaces is not None:  # admitted once its object is read, as in kube
                    await self.namespaces.admit("update", resource, namespace, name)
                revision = int(current.mod_revision)
                previous = objects.decode_stored(current.value, revision)
                obj = new_object(previous)
                if resource.status_subresource:
                    obj = _status_write(obj, previous) if subresource == "status" else _kept_status(obj, previous)
                precondition = (obj.get("metadata") or {}).get("resourceVersion")
                if precondition not in (None, ""):
                    expected = _revision(str(precondition), "metadata.resourceVersion")
                stored = objects.prepare_for_storage(obj, resource, namespace, name, creating=False, previous=previous, schema=self.config.kube_schema)
                if resource.name == NAMESPACES.name and self.namespaces is not None:
                    stored = admitted_namespace(stored, previous)
                value = objects.encode_for_storage(stored)
                if dry_run or (expected is not None and expected != revision):
                    if expected is not None and expected != revision:
                        raise storage_errors.Conflict(f"{key!r} is at {revision}", key=key, actual_revision=revision)
                    break  # a dry run: what the update would store, at the revision it would replace
                if value == bytes(current.value):
                    break  # nothing changes: no write, no event, the same resourceVersion (kube's GuaranteedUpdate)
                revision = await store.update(key, value, revision)
                break
            except storage_errors.Conflict as exc:
                if expected is not None or attempt == UPDATE_RETRIES - 1:
                    raise from_storage_error(exc, resource=resource.name, name=name) from None
            except storage_errors.StorageError as exc:
                raise from_storage_error(exc, resource=resource.name, name=name) from None
        response = self._kv_response(200, value, revision, fmt, resource)
        response.warnings = warnings
        return response

    async def _patch(self, scope: Dict[str, Any], receive: Any, resource: Resource, namespace: Optional[str], name: str,
                     fmt: str, query: Dict[str, str], subresource: str = "") -> "PlainResponse":
        """PATCH: a JSON merge patch or JSON Patch (:mod:`.patches`) applied to the object, stored as a PUT's body."""
        message = self.config.kube_schema.message_name("v1", resource.kind)
        kind = patches.patch_type(_header(scope, b"content-type"), strategic=message is not None)
        dry_run = query_dry_run(query, "PatchOptions")
        validation = objects.field_validation(query.get("fieldValidation"), "PATCH")
        body = await self._read_body_bytes(receive)
        decode = functools.partial(objects.decode_patch, body, max_values=self.config.max_body_values,
                                   unique_keys=validation != "Ignore")
        if len(body) <= INLINE_BODY_BYTES:
            patch, duplicates = decode()
        else:
            async with self._large_body_slot:
                patch, duplicates = await asyncio.to_thread(decode)
        patches.check_patch(kind, patch)
        if kind == patches.JSON_PATCH:
            duplicates = ["json patch " + problem for problem in duplicates]
        warnings: List[str] = []

        def patched(previous: Dict[str, Any]) -> Dict[str, Any]:
            if kind == patches.STRATEGIC_MERGE_PATCH:
                assert message is not None
                obj = strategic_merge_patch(previous, patch, self.config.kube_schema, message)
            else:
                obj = patches.apply_patch(kind, previous, patch)
            if not isinstance(obj, dict) or not isinstance(obj.get("metadata", {}), dict):
                raise APIError(422, "Invalid", "the patched object is not an object with metadata")
            _check_identity(obj, namespace, name)
            metadata = obj.get("metadata") or {}
            if "resourceVersion" in metadata and metadata["resourceVersion"] == previous["metadata"].get("resourceVersion"):
                # the version it was applied to: no precondition of the patch's, so a concurrent write patches again
                obj["metadata"] = {k: v for k, v in metadata.items() if k != "resourceVersion"}
            objects.check_type_meta(obj, resource)
            problems = (duplicates + [f"unknown field {go_quote(path)}" for path in
                                      objects.drop_unknown_fields(obj, resource.kind, self.config.kube_schema)])[:objects.STRICT_PROBLEMS]
            if problems and validation == "Strict":
                detail = "strict decoding error: " + ", ".join(problems)
                raise APIError(422, "Invalid", f'"" is invalid: patch: Invalid value: "the patched object": {detail}',
                               details={"causes": [{"reason": "FieldValueInvalid", "message": detail, "field": "patch"}]})
            warnings[:] = problems if validation == "Warn" else []
            objects.check_values(obj)
            return obj

        with _warned(warnings):
            try:
                return await self._update(patched, warnings, resource, namespace, name, fmt, dry_run, subresource)
            except objects.NotOfItsKind as exc:  # kube decodes the patched object into its Go type: a 422, not a body's 400
                raise APIError(422, "Invalid", f'"" is invalid: patch: Invalid value: "the patched object": {exc.message}',
                               details={"causes": [{"reason": "FieldValueInvalid", "message": exc.message, "field": "patch"}]}) from None

    async def _delete_options(self, scope: Dict[str, Any], receive: Any, query: Dict[str, str]) -> DeleteOptions:
        """A DELETE's options: its body's DeleteOptions (client-go sends one, in its content type), else its query."""
        body, body_format = await self._read_body(scope, receive)
        decoded = None
        if body:
            decoded = objects.decode_options_body(body, body_format, max_values=self.config.max_body_values,
                                                  schema=self.config.kube_schema)
        return delete_options(decoded, query)

    async def _delete(self, resource: Resource, namespace: Optional[str], name: str, fmt: str,
                      options: DeleteOptions = DeleteOptions()) -> "PlainResponse":
        # Like kube-apiserver for immediate deletion: the object as it was, at the deletion's revision.
        value, revision = await self._delete_object(resource, namespace, name, options)
        return self._kv_response(200, value, revision, fmt, resource)

    async def _delete_object(self, resource: Resource, namespace: Optional[str], name: str,
                             options: DeleteOptions) -> Tuple[Any, int]:
        """Delete one object under ``options``: its stored value as it was, and the deletion's revision (a dry
        run's: the object's own)."""
        if self.namespaces is not None:  # kube's NamespaceLifecycle: immortal namespaces stay
            await self.namespaces.admit("delete", resource, namespace, name)
        store = await self.store()
        key = self._key(resource, namespace, name)
        for attempt in range(UPDATE_RETRIES):
            try:
                expected: Optional[int] = None
                if options.reads_current:
                    current = await store.get(key)
                    expected = int(current.mod_revision)
                    check_preconditions(options, resource.name, name, objects.decode_stored(current.value, expected))
                    if options.dry_run:
                        return current.value, expected
                if resource.name == NAMESPACES.name and self.namespaces is not None:  # marked terminating; its content goes first
                    return await self.namespaces.terminate(name)
                deleted = await store.delete(key, expected)
                return deleted.previous.value, deleted.revision
            except storage_errors.Conflict as exc:  # changed since its preconditions were checked: check again
                if attempt == UPDATE_RETRIES - 1:
                    raise from_storage_error(exc, resource=resource.name, name=name) from None
            except storage_errors.StorageError as exc:
                raise from_storage_error(exc, resource=resource.name, name=name) from None
        raise AssertionError("unreachable: the last try raises")

    async def _delete_collection(self, resource: Resource, namespace: Optional[str], query: Dict[str, str], fmt: str,
                                 options: DeleteOptions) -> "PlainResponse":
        """DELETE on a collection (kube's deletecollection): every object its selectors select, deleted as a
        DELETE of it would be, read a page of keys at a time; one deleted, changed or re-created since it was
        selected is left as it is.  Answered with
        a Success Status: kube answers with the deleted objects as one list, which would hold the whole
        collection in memory (client-go's DeleteCollection reads only the error)."""
        selectors = Selectors.parse(query, resource.field_selectors)
        store = await self.store()
        prefix = self._prefix(resource, namespace)
        start: Optional[bytes] = None
        while True:
            # each page at the newest revision, after the last key: a compaction meanwhile ends nothing
            stream = store.list_stream(prefix, limit=DELETE_COLLECTION_PAGE, start_key=start)
            selected: List[Tuple[bytes, int]] = []
            last = b""
            try:
                async for kv in stream:
                    last = bytes(kv.key)
                    if not selectors.active or selectors.matches(kv, prefix):
                        selected.append((last, int(kv.mod_revision)))
            except storage_errors.StorageError as exc:
                raise from_storage_error(exc, resource=resource.name) from None
            for key, revision in selected:
                name = key[len(prefix):].decode("utf-8")
                try:
                    if options.reads_current:  # its preconditions, or a dry run: as a DELETE of it
                        await self._delete_object(resource, namespace, name, options)
                    else:  # as it was selected: changed or re-created since, it is not what was selected
                        await store.delete(key, revision)
                except APIError as exc:
                    if exc.code not in (404, 409):
                        raise
                except (storage_errors.NotFound, storage_errors.Conflict):
                    pass
                except storage_errors.StorageError as exc:
                    raise from_storage_error(exc, resource=resource.name, name=name) from None
            if not stream.continue_token:
                break
            start = last + b"\x00"
        encoder = self.encoder(fmt, "Status")
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"kind": resource.name}}
        return PlainResponse(200, encoder.encode(status), encoder.content_type)

    async def _finalize(self, scope: Dict[str, Any], receive: Any, name: str, accept: Optional[str],
                        query: Dict[str, str]) -> "PlainResponse":
        """PUT ``/api/v1/namespaces/{name}/finalize``: a Namespace's ``spec.finalizers`` replaced (kube's
        finalize subresource); a terminating one is deleted once it has none."""
        resource = self.config.resources.get(NAMESPACES.name, NAMESPACES)
        if scope["method"] != "PUT":
            raise APIError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource: {scope['method']}")
        assert self.namespaces is not None
        obj, warnings = await self._read_object(scope, receive, resource, query)
        with _warned(warnings):
            value, revision = await self.namespaces.finalize(name, obj)
            response = self._kv_response(200, value, revision, negotiate(accept, self._formats_for(resource.kind)), resource)
        response.warnings = warnings
        return response

    # -- admission ---------------------------------------------------------

    async def _admit(self, client: str, bulk: bool) -> "_StreamSlot":
        """Open a stream: a bulk one waits for an admission slot (fair queue, then 429)."""
        if bulk:
            await self.admission.acquire(client)
        self.active_streams += 1
        self.streams_started += 1
        return _StreamSlot(self, bulk)

    def _stream(
        self, body: ResponseBody, encoder: Any, fmt: str, release: "_StreamSlot", *, watch: bool,
        on_error: Any = None,
    ) -> StreamResponse:
        if watch:
            # kube-apiserver: JSON watch bodies are application/json, other formats say ;stream=watch
            content_type = "application/json" if fmt == "json" else encoder.stream_content_type
        else:
            content_type = encoder.content_type
        response = StreamResponse(
            body,
            encoder=encoder,
            pool=self.pool,
            content_type=content_type,
            headers_first=watch,
            stall_timeout=self.config.stall_timeout,
            acquire_timeout=self.config.queue_wait,
            retry_after=self.config.retry_after,
            on_error=on_error,
            live_pool=self.live_pool,
            on_live=release.release,
            live_stall_timeout=self.config.slow_watcher_timeout,
            contended=self._contended,
            contended_stall_timeout=self.config.contended_stall_timeout,
            send_piece_bytes=self.config.send_piece_bytes,
            # an audit record is written when the request's task ends: a parked watch would end it early
            parkable=watch and (self.security is None or self.security.audit is None),
        )
        release.response = response
        response.on_close = release  # called: the stream is over
        self._responses.add(response)
        return response

    # -- list ----------------------------------------------------------------

    async def _list(self, resource: Resource, namespace: Optional[str], query: Dict[str, str], fmt: str, client: str) -> Any:
        request = ListRequest.parse(query, resource.field_selectors)
        store = await self.store()
        prefix = self._prefix(resource, namespace)
        encoder = self.encoder(fmt, resource.kind)
        items = self._item_writer(encoder, fmt, resource)
        release = await self._admit(client, True)
        try:
            if self.config.list_mode == "buffered":
                body = await buffered_list_body(
                    store, prefix, request, resource, items,
                    pool_bytes=self.config.buffered_pool_bytes, buffer_bytes=self.config.buffered_buffer_bytes,
                )
                self._unadmit(release)
                return PlainResponse(200, body, encoder.content_type)
            list_body = ListBody(
                store, prefix, request, resource, items,
                prefetch_bytes=self.config.prefetch_bytes, needs_count=fmt in self.needs_count,
                shared_scans=self.config.shared_scans,
            )
            await list_body.prepare()  # errors known up front are plain Status responses
        except BaseException:
            self._unadmit(release)
            raise
        return self._stream(list_body, encoder, fmt, release, watch=False)

    def _unadmit(self, release: "_StreamSlot") -> None:
        """A stream that ended before it became a response."""
        release.release()
        self.active_streams -= 1

    # -- watch ---------------------------------------------------------------

    async def _watch(self, resource: Resource, namespace: Optional[str], query: Dict[str, str], fmt: str, client: str) -> Any:
        request = WatchRequest.parse(query, self.config.min_request_timeout, resource.field_selectors)
        store = await self.store()
        prefix = self._prefix(resource, namespace)
        encoder = self.encoder(fmt, resource.kind)
        items = self._item_writer(encoder, fmt, resource)
        release = await self._admit(client, request.initial_events)  # a live-only watch is cheap
        try:
            body = WatchBody(store, prefix, request, resource, items, shared_scans=self.config.shared_scans)
            await body.prepare()  # errors known up front are plain Status responses
        except BaseException:
            self._unadmit(release)
            raise
        return self._stream(body, encoder, fmt, release, watch=True, on_error=watch_error_event)


class _StreamSlot:
    """One stream's share of the App's bookkeeping: its admission slot, and its end (an object, not closures: ~400 bytes less per open watch).

    :meth:`release` gives the admission slot back, once (a watch-list gives it back at the
    initial-events-end bookmark, and again, as a no-op, when it closes); calling the slot ends the
    stream (the response's ``on_close``).
    """

    __slots__ = ("app", "held", "response")

    def __init__(self, app: App, bulk: bool) -> None:
        self.app = app
        self.held = bulk
        self.response: Optional[StreamResponse] = None

    def release(self) -> None:
        if self.held:
            self.held = False
            self.app.admission.release()

    def __call__(self) -> None:
        self.release()
        app, response = self.app, self.response
        app.active_streams -= 1
        outcome = response.outcome if response is not None and response.outcome else "error"
        app.outcomes[outcome] = app.outcomes.get(outcome, 0) + 1
        app._responses.discard(response)  # type: ignore[arg-type]
        self.response = None


class PlainResponse:
    """A complete, non-streaming ASGI response; ``warnings``: texts sent as kube's Warning headers."""

    def __init__(self, status: int, body: bytes, content_type: str, headers: Optional[Dict[str, str]] = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}
        self.warnings: List[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", self.content_type.encode()), (b"content-length", str(len(self.body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        headers += [(b"warning", value.encode()) for value in warning_headers(self.warnings)]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def create_app(etcd_endpoints: List[str], **config: Any) -> App:
    """An App over the given etcd endpoints; ``config`` goes to :class:`ServerConfig`."""
    return App(etcd_endpoints=etcd_endpoints, config=ServerConfig(**config))


# -- helpers ---------------------------------------------------------------


@contextlib.contextmanager
def _warned(warnings: List[str]) -> Iterator[None]:
    """A write's warnings go on its error response too, as kube's warning recorder sends them."""
    try:
        yield
    except APIError as exc:
        exc.warnings = warnings + exc.warnings
        raise


def _kept_status(obj: Dict[str, Any], stored: Dict[str, Any]) -> Dict[str, Any]:
    """A write of an object whose kind has a status subresource: all of ``obj`` but its status, which stays
    the ``stored`` object's (kube's strategies: only a write of ``status`` changes it)."""
    out = {k: v for k, v in obj.items() if k != "status"}
    if "status" in stored:
        out["status"] = stored["status"]
    return out


def _status_write(obj: Dict[str, Any], stored: Dict[str, Any]) -> Dict[str, Any]:
    """A write of ``status``: the ``stored`` object with ``obj``'s status, conditional on the resourceVersion
    ``obj`` names, if it names one (nothing else of ``obj`` counts)."""
    out = {k: v for k, v in stored.items() if k != "status"}
    metadata = {k: v for k, v in (stored.get("metadata") or {}).items() if k != "resourceVersion"}
    precondition = (obj.get("metadata") or {}).get("resourceVersion")
    if precondition not in (None, ""):
        metadata["resourceVersion"] = precondition
    out["metadata"] = metadata
    if "status" in obj:
        out["status"] = obj["status"]
    return out


def _check_identity(obj: Dict[str, Any], namespace: Optional[str], name: str) -> None:
    """A written object names the object of the URL, or none (400)."""
    metadata = obj.get("metadata") or {}
    if metadata.get("name", name) != name:
        raise bad_request("the name of the object does not match the name on the URL")
    if namespace is not None and metadata.get("namespace", namespace) != namespace:
        raise bad_request("the namespace of the object does not match the namespace on the URL")


def _header(scope: Dict[str, Any], name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _server_address(scope: Dict[str, Any]) -> str:
    server = scope.get("server")
    return f"{server[0]}:{server[1]}" if server else ""


def _parse_query(raw: bytes) -> Dict[str, str]:
    query: Dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if key in query and query[key] != value:
            raise bad_request(f"query parameter {key!r} given twice with different values")
        query[key] = value
    return query


def _bool_param(query: Dict[str, str], name: str) -> bool:
    value = query.get(name, "")
    if value in ("", "0", "false", "False"):
        return False
    if value in ("1", "true", "True"):
        return True
    raise bad_request(f"{name}: invalid value {value!r}: must be true or false")


def _revision(value: str, what: str) -> int:
    revision = resource_version(value, what)
    if revision >= 1 << 63:  # past any etcd revision: the object cannot be at it
        raise APIError(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again")
    return revision
