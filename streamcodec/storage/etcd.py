"""``EtcdStore``: an asyncio etcd v3 client for streaming huge prefixes in bounded memory.

Talks gRPC through ``grpc.aio`` with raw bytes (our own wire codec, no
generated ``_pb2``).  What it promises:

* **Lists** (:meth:`EtcdStore.list_stream`) read one pinned revision in pages
  sized by a byte budget (``page_bytes``): the first page pins the revision,
  every later page asks for exactly that revision, so the result is one
  consistent snapshot or :class:`~streamcodec.storage.errors.Expired` -- never partial or
  mixed.  At most one page is held at a time (plus one copied object, see
  :class:`ListStream`), and etcd is never asked for more than a page either.
* **Watches** (:meth:`EtcdStore.watch`) map etcd events to Kubernetes event
  types, turn progress notifications into BOOKMARKs, reassemble fragmented
  revisions within a bound, and survive the loss of a member by resuming on
  another from the last delivered revision + 1.
* **Watch lists** (:meth:`EtcdStore.watch_list`) give the Kubernetes
  watch-list contract (initial ADDED events, an end bookmark, then changes).
* **CRUD** with compare-and-swap on mod revisions (resourceVersions).

Every error raised on purpose is a :class:`~streamcodec.storage.errors.StorageError`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import re
import secrets
from typing import Any, AsyncGenerator, AsyncIterator, Deque, Dict, List, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

from . import errors
from .watch_hub import SharedWatch, WatchHub
from .errors import (
    AlreadyExists,
    Conflict,
    Expired,
    FutureRevision,
    InvalidContinue,
    NotFound,
    StorageError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from .tokens import decode_continue, encode_continue
from .types import EVENT_DELETE, KeyValue, RangeResult, RawEvent, WatchEvent, WatchResult

__all__ = ["EtcdStore", "ListStream", "WatchStream", "WatchListStream", "supports_watch_progress"]

log = logging.getLogger(__name__)

MiB = 1 << 20

#: Default byte budget of one list page.  Big enough that per-request latency
#: is amortised over many objects, small enough that neither we nor etcd (which
#: materialises a whole Range response) hold much: 8 MiB is ~5 max-size objects.
DEFAULT_PAGE_BYTES = 8 * MiB

#: Largest object we expect.  etcd refuses requests over 1.5 MiB by default
#: (--max-request-bytes); 2 MiB covers that plus key and envelope.
DEFAULT_MAX_OBJECT_BYTES = 2 * MiB

#: Protobuf framing of a Range response beyond keys and values: header, and per
#: key-value its tags, lengths and four int64s -- well under 64 bytes each.
_PER_KV_OVERHEAD = 64
_RESPONSE_HEADROOM = 256 * 1024

#: What receiving one response costs in Python memory, per response byte:
#: grpc.aio (raw bytes, no deserializer) assembles the message in a bytearray
#: (over-allocating by up to 1/8 as it grows) and then copies it into the
#: ``bytes`` it returns, so both exist for a moment.  ``page_bytes`` is a
#: budget for that whole transient cost, so responses aim at page_bytes / 2.125.
RECEIVE_COPY_FACTOR = 2.125

#: Most keys one page may ask for, however small the objects: bounds the
#: per-page Python object count (KeyValue tuples) independently of bytes.
_MAX_PAGE_KEYS = 10_000

_METHODS = {
    "range": "/etcdserverpb.KV/Range",
    "put": "/etcdserverpb.KV/Put",
    "delete_range": "/etcdserverpb.KV/DeleteRange",
    "txn": "/etcdserverpb.KV/Txn",
    "compact": "/etcdserverpb.KV/Compact",
    "status": "/etcdserverpb.Maintenance/Status",
    "authenticate": "/etcdserverpb.Auth/Authenticate",
}
_WATCH_METHOD = "/etcdserverpb.Watch/Watch"


def _wire() -> Any:
    from . import wire  # the implementation storage/__init__ selected

    return wire


def supports_watch_progress(version: str) -> bool:
    """Whether an etcd server ``version`` answers watch-progress requests correctly.

    RequestProgress is unsafe before the fixes for etcd bugs #15220 (progress
    could overtake unsent events) and #17507: they shipped in 3.4.31 and
    3.5.13, and every 3.6+ has them.  Unparsable versions count as unsafe.
    """
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", version.strip())
    if not match:
        return False
    major, minor, patch = (int(x) for x in match.groups())
    if major != 3:
        return major > 3
    if minor >= 6:
        return True
    if minor == 5:
        return patch >= 13
    if minor == 4:
        return patch >= 31
    return False


def _version_key(version: str) -> Tuple[int, ...]:
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", version.strip())
    return tuple(int(x) for x in match.groups()) if match else (0, 0, 0)


# ---------------------------------------------------------------- errors from gRPC

_RETRYABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
#: etcd refusals that mean "this member cannot serve now, another may": retry elsewhere
_RETRYABLE_DETAILS = (
    "no leader",
    "leader changed",
    "request timed out",
    "server stopped",
    "too many requests",
    "not capable",
    "raft proposal dropped",
)
#: failures that prove the request never reached a server (safe to retry a write)
_NOT_SENT_DETAILS = ("failed to connect", "connection refused", "no leader", "not capable", "dns resolution failed")


def _details(exc: grpc.aio.AioRpcError) -> str:
    return exc.details() or ""


def _is_retryable(exc: grpc.aio.AioRpcError) -> bool:
    if exc.code() in _RETRYABLE_CODES:
        return True
    if exc.code() == grpc.StatusCode.INTERNAL and "from core" in _details(exc).lower():
        return True  # grpc-core's own failure on a connection that just broke, not etcd's answer
    details = _details(exc).lower()
    return any(marker in details for marker in _RETRYABLE_DETAILS)


def _surely_not_applied(exc: grpc.aio.AioRpcError) -> bool:
    details = _details(exc).lower()
    return any(marker in details for marker in _NOT_SENT_DETAILS)


def _is_bad_token(exc: grpc.aio.AioRpcError) -> bool:
    return "invalid auth token" in _details(exc).lower()


def _is_response_too_large(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in _details(exc).lower()


#: What gRPC's details say when the TLS handshake failed (a missing or
#: untrusted client certificate shows up only as a corrupted record).
_TLS_FAILURE_DETAILS = ("tsi_data_corrupted", "unwrap failed", "handshake", "ssl")


def _details_with_hint(exc: grpc.aio.AioRpcError) -> str:
    """gRPC's details, plus what an operator should check when TLS failed."""
    details = _details(exc)
    if any(marker in details.lower() for marker in _TLS_FAILURE_DETAILS):
        details += (
            " (the TLS handshake failed: the server may require a client certificate"
            " (cert_file/key_file) or may not trust the one given)"
        )
    return details


def _map_error(exc: grpc.aio.AioRpcError, key: Optional[bytes] = None) -> StorageError:
    """The StorageError for a non-retryable gRPC failure."""
    details = _details(exc)
    lower = details.lower()
    code = exc.code()
    if "required revision has been compacted" in lower:
        return Expired(f"etcd: {details}", key=key)
    if "future revision" in lower:
        return FutureRevision(f"etcd: {details}", key=key)
    if "request is too large" in lower or _is_response_too_large(exc):
        return TooLarge(f"etcd: {details}", key=key)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or any(
        marker in lower for marker in ("authentication failed", "password is invalid", "user name is empty", "permission denied", "invalid auth")
    ):
        return Unauthorized(f"etcd: {details}", key=key)
    if code in _RETRYABLE_CODES:
        return Unavailable(f"etcd: {code.name}: {_details_with_hint(exc)}", key=key)
    return StorageError(f"etcd: {code.name}: {details}", key=key)


# ---------------------------------------------------------------- members


class _Member:
    """One etcd endpoint: its channel, its auth token (simple tokens are member-local)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.channel: Optional[grpc.aio.Channel] = None
        self.token: Optional[str] = None
        self.calls: Dict[str, Any] = {}
        self.watch_call: Any = None

    async def close(self) -> None:
        if self.channel is not None:
            channel, self.channel = self.channel, None
            self.calls.clear()
            self.watch_call = None
            await channel.close()


def _strip_scheme(endpoint: str) -> str:
    for scheme in ("https://", "http://", "unix://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :]
    return endpoint


class EtcdStore:
    """An etcd v3 client over ``grpc.aio`` that streams prefixes within a byte budget.

    ``endpoints`` are ``host:port`` (an ``http(s)://`` scheme is accepted and
    ignored: TLS is on exactly when ``ca_file`` is given).  Requests go to one
    member; when it fails with a retryable error the store moves to the next
    endpoint, with exponential backoff (``backoff`` doubling up to
    ``max_backoff``), for at most ``retries`` further attempts, then raises
    :class:`~streamcodec.storage.errors.Unavailable`.

    ``page_bytes`` is the Python-memory budget of one list page in flight,
    including gRPC's transient copy while receiving it (so responses aim at
    ``page_bytes / RECEIVE_COPY_FACTOR``); ``max_object_bytes`` the largest
    single value expected.  gRPC's receive limit is set to their sum
    plus headroom (never unlimited): a page that would exceed it is re-asked
    with half the keys.  ``continue_secret`` signs continue tokens; give all
    replicas of an API server the same one (default: random per store).
    ``gate_recheck_interval``: while some member does not answer Status, the
    watch-progress gate stays undecided (answered False) and is asked again
    at most this often, in seconds (see :meth:`supports_watch_progress`).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ca_file: Optional[str] = None,
        cert_file: Optional[str] = None,
        key_file: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        retries: int = 6,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        request_timeout: float = 30.0,
        continue_secret: Optional[bytes] = None,
        gate_recheck_interval: float = 5.0,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if page_bytes < 1024 or max_object_bytes < 1:
            raise ValueError("page_bytes must be >= 1 KiB and max_object_bytes >= 1")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together")
        if retries < 0 or backoff < 0 or max_backoff < 0 or gate_recheck_interval < 0:
            raise ValueError("retries, backoffs and gate_recheck_interval must not be negative")
        self._members = [_Member(_strip_scheme(e)) for e in endpoints]
        self._current = 0
        self._credentials: Optional[grpc.ChannelCredentials] = None
        if ca_file is not None:
            with open(ca_file, "rb") as f:
                root = f.read()
            chain = private = None
            if cert_file is not None and key_file is not None:
                with open(cert_file, "rb") as f:
                    chain = f.read()
                with open(key_file, "rb") as f:
                    private = f.read()
            self._credentials = grpc.ssl_channel_credentials(root, private, chain)
        elif cert_file is not None:
            raise ValueError("a client certificate needs ca_file (TLS)")
        self._username = username
        self._password = password
        self.page_bytes = page_bytes
        self.max_object_bytes = max_object_bytes
        #: the size a Range response aims at, so that receiving it stays within page_bytes
        self.response_target = int(page_bytes / RECEIVE_COPY_FACTOR)
        #: gRPC receive limit: a page, one more object (a page may overshoot by
        #: one object when sizes grow), and framing headroom
        self.max_receive_bytes = page_bytes + max_object_bytes + _RESPONSE_HEADROOM
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        self._continue_secret = continue_secret if continue_secret is not None else secrets.token_bytes(32)
        #: the watch-progress gate, once decided with every member answering
        self._progress_gate: Optional[bool] = None
        #: the Status round deciding the gate now, shared by concurrent askers
        self._gate_check: Optional["asyncio.Future[bool]"] = None
        #: loop time before which an undecided gate is answered False without asking again
        self._gate_recheck_at = 0.0
        self.gate_recheck_interval = gate_recheck_interval
        self._closed = False
        self._hub: Optional[WatchHub] = None

    # -------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Close every channel (open watches and lists fail afterwards)."""
        self._closed = True
        if self._hub is not None:
            await self._hub.close()
        for member in self._members:
            await member.close()

    async def __aenter__(self) -> "EtcdStore":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def endpoints(self) -> List[str]:
        """The configured endpoints, ``host:port``."""
        return [m.endpoint for m in self._members]

    @property
    def watch_progress_gate(self) -> Optional[bool]:
        """The decided watch-progress gate, or None while undecided (not asked yet, or a member was silent)."""
        return self._progress_gate

    @property
    def current_endpoint(self) -> str:
        """The endpoint requests go to now (it changes on failover)."""
        return self._members[self._current].endpoint

    # -------------------------------------------------------------- transport

    def _channel(self, member: _Member) -> grpc.aio.Channel:
        if self._closed:
            raise Unavailable("the store is closed")
        if member.channel is None:
            options = [
                ("grpc.max_receive_message_length", self.max_receive_bytes),
                ("grpc.max_send_message_length", self.max_object_bytes + _RESPONSE_HEADROOM),
                # a dead member must not stall failover for gRPC's default 20 s reconnect backoff
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
            ]
            if self._credentials is not None:
                member.channel = grpc.aio.secure_channel(member.endpoint, self._credentials, options=options)
            else:
                member.channel = grpc.aio.insecure_channel(member.endpoint, options=options)
        return member.channel

    def _method(self, member: _Member, name: str) -> Any:
        call = member.calls.get(name)
        if call is None:
            call = self._channel(member).unary_unary(
                _METHODS[name], request_serializer=None, response_deserializer=None
            )
            member.calls[name] = call
        return call

    async def _metadata(self, member: _Member) -> Optional[List[Tuple[str, str]]]:
        if self._username is None:
            return None
        if member.token is None:
            request = _wire().encode_authenticate_request(self._username, self._password or "")
            try:
                raw = await self._method(member, "authenticate")(request, timeout=self.request_timeout)
            except grpc.aio.AioRpcError as exc:
                if _is_retryable(exc):
                    raise
                raise _map_error(exc) from None
            _, member.token = _wire().parse_authenticate_response(raw)
        return [("token", member.token)]

    def _advance(self, failed: _Member) -> None:
        """Move to the next endpoint after ``failed`` (unless another call already moved)."""
        if self._members[self._current] is failed:
            self._current = (self._current + 1) % len(self._members)
            log.info("etcd endpoint %s failed; moving to %s", failed.endpoint, self.current_endpoint)

    async def _sleep_backoff(self, attempt: int) -> None:
        delay = min(self.max_backoff, self.backoff * (2**attempt))
        await asyncio.sleep(delay * (0.5 + random.random() / 2))

    async def _unary(self, name: str, request: bytes, *, idempotent: bool = True, key: Optional[bytes] = None) -> bytes:
        """One unary call with failover: retry elsewhere on retryable errors.

        Non-idempotent requests (writes) are only retried when the failure
        proves they were not applied, so a create is never silently doubled.
        """
        attempt = 0
        reauthenticated = False
        last: Optional[grpc.aio.AioRpcError] = None
        while True:
            member = self._members[self._current]
            try:
                metadata = await self._metadata(member)
                return await self._method(member, name)(request, timeout=self.request_timeout, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                last = exc
                if _is_bad_token(exc) and not reauthenticated:
                    member.token = None  # expired or from a restarted member: log in again
                    reauthenticated = True
                    continue
                if _is_retryable(exc) and (idempotent or _surely_not_applied(exc)):
                    if attempt >= self.retries:
                        raise Unavailable(
                            f"etcd unavailable after {attempt + 1} attempts: {exc.code().name}: {_details_with_hint(exc)}", key=key
                        ) from None
                    self._advance(member)
                    await self._sleep_backoff(attempt)
                    attempt += 1
                    continue
                raise _map_error(exc, key) from None

    # -------------------------------------------------------------- server info

    async def _member_status(self, member: _Member) -> Any:
        for reauthenticated in (False, True):
            metadata = await self._metadata(member)
            try:
                raw = await self._method(member, "status")(b"", timeout=min(5.0, self.request_timeout), metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if _is_bad_token(exc) and not reauthenticated:
                    member.token = None  # a restarted member forgot our simple token: log in again
                    continue
                raise
            return _wire().parse_status_response(raw)
        raise AssertionError("unreachable")

    async def _version_of(self, member: _Member) -> Optional[str]:
        try:
            return str((await self._member_status(member)).version)
        except grpc.aio.AioRpcError as exc:
            if not _is_retryable(exc):
                raise _map_error(exc) from None
            log.info("etcd member %s did not answer Status: %s", member.endpoint, exc.code().name)
            return None

    async def member_versions(self) -> Dict[str, Optional[str]]:
        """Every configured endpoint's etcd server version, ``None`` for a member that did not answer.

        All members are asked at once (Status, at most 5 s each).
        """
        versions = await asyncio.gather(*(self._version_of(member) for member in self._members))
        return {member.endpoint: version for member, version in zip(self._members, versions)}

    async def server_version(self) -> str:
        """The lowest etcd server version among the members that answer (e.g. ``"3.5.16"``).

        A member that does not answer is left out, so with one down this may be
        higher than the cluster's true lowest version (see :meth:`member_versions`).
        Raises :class:`~streamcodec.storage.errors.Unavailable` when none answers.
        """
        versions = await self.member_versions()
        answered = [v for v in versions.values() if v is not None]
        if not answered:
            raise Unavailable("no etcd member answered Status: " + ", ".join(versions))
        return min(answered, key=_version_key)

    async def supports_watch_progress(self) -> bool:
        """The watch-progress gate: whether RequestProgress is safe on this cluster.

        True when every configured member is 3.4.31+, 3.5.13+ or 3.6+.  The
        decision is kept for the store's life (members are assumed not to be
        downgraded) only when every member answered Status: a member that is
        down may be below the gate and serve watches once it is back, so while
        any is silent the answer is False, sending nothing, and the question is
        asked again on a later call (at most every ``gate_recheck_interval``
        seconds).  Raises :class:`~streamcodec.storage.errors.Unavailable` when no member answers.
        """
        if self._progress_gate is not None:
            return self._progress_gate
        loop = asyncio.get_running_loop()
        check = self._gate_check
        if check is None or check.done():
            if loop.time() < self._gate_recheck_at:
                return False  # undecided, and asked too recently to ask again
            check = self._gate_check = asyncio.ensure_future(self._decide_progress_gate())
            # its failure is retrieved here too, in case every asker was cancelled meanwhile
            check.add_done_callback(lambda done: done.cancelled() or done.exception())
        # shielded: one caller's cancellation must not cancel the round the others wait for
        return await asyncio.shield(check)

    async def _decide_progress_gate(self) -> bool:
        versions = await self.member_versions()
        answered = [v for v in versions.values() if v is not None]
        if not answered:
            raise Unavailable("no etcd member answered Status: " + ", ".join(versions))
        if len(answered) < len(versions):
            silent = [endpoint for endpoint, version in versions.items() if version is None]
            log.info("watch-progress gate undecided (no Status from %s): no progress requests for now", silent)
            self._gate_recheck_at = asyncio.get_running_loop().time() + self.gate_recheck_interval
            return False
        self._progress_gate = supports_watch_progress(min(answered, key=_version_key))
        return self._progress_gate

    # -------------------------------------------------------------- lists

    def initial_page_limit(self) -> int:
        """Keys in the first page: what surely fits the budget at maximum object size."""
        return max(1, self.response_target // (self.max_object_bytes + _PER_KV_OVERHEAD))

    def next_page_limit(self, previous: int, largest_kv_bytes: int) -> int:
        """Keys for the next page, from the largest key-value seen in the last one.

        Aims at ``response_target`` if the next objects are no larger; grows at
        most 4x per page so a sudden run of large objects overshoots by a
        bounded amount (and the gRPC receive limit catches the rest).
        """
        target = self.response_target // max(1, largest_kv_bytes + _PER_KV_OVERHEAD)
        return max(1, min(target, previous * 4, _MAX_PAGE_KEYS))

    async def _range_page(self, key: bytes, range_end: bytes, limit: int, revision: int) -> Tuple[RangeResult, int]:
        """One Range page; halves ``limit`` while the response exceeds the receive limit."""
        wire = _wire()
        while True:
            request = wire.encode_range_request(key, range_end, limit=limit, revision=revision)
            try:
                raw = await self._unary("range", request, key=key)
            except TooLarge:
                if limit <= 1:
                    raise TooLarge(
                        f"one key-value at {key!r} exceeds the receive limit of {self.max_receive_bytes} bytes "
                        "(raise max_object_bytes)",
                        key=key,
                    ) from None
                limit = max(1, limit // 2)
                continue
            result = wire.parse_range_response(raw)
            del raw
            return result, limit

    def list_stream(
        self,
        prefix: bytes,
        revision: Optional[int] = None,
        *,
        continue_token: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> "ListStream":
        """Stream every key under ``prefix`` at one revision, page by page.

        ``revision`` None reads the newest (a linearizable read pins it);
        otherwise exactly that revision (compacted -> ``Expired``).  With
        ``limit``, stop after that many objects and set the iterator's
        ``continue_token`` when more remain; pass it back (without
        ``revision``) to continue at the same revision.
        """
        return ListStream(self, prefix, revision, continue_token, limit)

    # -------------------------------------------------------------- watches

    def watch(
        self,
        prefix: bytes,
        start_revision: Optional[int] = None,
        *,
        progress_notify: bool = True,
        max_fragment_bytes: Optional[int] = None,
    ) -> "WatchStream":
        """Watch every key under ``prefix`` from ``start_revision`` (inclusive; None = now).

        Kubernetes' "watch from resourceVersion RV" is ``start_revision=RV + 1``.
        ``max_fragment_bytes`` bounds the buffered part of one fragmented
        revision (default ``page_bytes + max_object_bytes``).
        """
        return WatchStream(
            self, prefix, start_revision, progress_notify=progress_notify, max_fragment_bytes=max_fragment_bytes
        )

    def shared_watch(self, prefix: bytes, start_revision: Optional[int] = None) -> "SharedWatch":
        """Like :meth:`watch`, but every watcher of ``prefix`` reads one etcd watch (see :mod:`streamcodec.storage.watch_hub`)."""
        if self._hub is None:
            self._hub = WatchHub(self)
        return self._hub.watch(prefix, start_revision)

    @property
    def watch_hub(self) -> Optional["WatchHub"]:
        """The shared watches (None until the first :meth:`shared_watch`)."""
        return self._hub

    def watch_list(self, prefix: bytes, resource_version: Optional[int] = None) -> "WatchListStream":
        """The Kubernetes watch-list stream of ``prefix`` (see :class:`WatchListStream`)."""
        return WatchListStream(self, prefix, resource_version)

    # -------------------------------------------------------------- CRUD

    async def get(self, key: bytes) -> KeyValue:
        """The current key-value of ``key``; :class:`NotFound` if absent."""
        result = _wire().parse_range_response(await self._unary("range", _wire().encode_range_request(key), key=key))
        if not result.kvs:
            raise NotFound(f"{key!r} not found", key=key)
        return result.kvs[0]

    async def put(self, key: bytes, value: bytes) -> int:
        """Set ``key`` unconditionally; returns the new revision."""
        self._check_size(key, value)
        raw = await self._unary("put", _wire().encode_put_request(key, value), idempotent=False, key=key)
        return int(_wire().parse_put_response(raw).header.revision)

    def _check_size(self, key: bytes, value: bytes) -> None:
        if len(key) + len(value) > self.max_object_bytes:
            raise TooLarge(f"{len(key) + len(value)} bytes exceed max_object_bytes={self.max_object_bytes}", key=key)

    async def _txn(self, compares: List[bytes], success: List[bytes], failure: List[bytes], key: bytes) -> Any:
        wire = _wire()
        raw = await self._unary("txn", wire.encode_txn_request(compares, success, failure), idempotent=False, key=key)
        return wire.parse_txn_response(raw)

    async def create(self, key: bytes, value: bytes) -> int:
        """Create ``key``; :class:`AlreadyExists` if present.  Returns the revision."""
        self._check_size(key, value)
        wire = _wire()
        result = await self._txn(
            [wire.encode_compare(key, wire.TARGET_CREATE, wire.COMPARE_EQUAL, 0)],
            [wire.encode_request_op_put(wire.encode_put_request(key, value))],
            [],
            key,
        )
        if not result.succeeded:
            raise AlreadyExists(f"{key!r} already exists", key=key)
        return int(result.header.revision)

    async def update(self, key: bytes, value: bytes, expected_mod_revision: Optional[int] = None) -> int:
        """Replace an existing ``key``'s value; returns the new revision.

        With ``expected_mod_revision`` the write happens only if the key's mod
        revision still equals it (:class:`Conflict` otherwise).  A missing key
        is :class:`NotFound` either way.
        """
        self._check_size(key, value)
        wire = _wire()
        if expected_mod_revision is None:
            compare = wire.encode_compare(key, wire.TARGET_CREATE, wire.COMPARE_GREATER, 0)
        else:
            compare = wire.encode_compare(key, wire.TARGET_MOD, wire.COMPARE_EQUAL, expected_mod_revision)
        result = await self._txn(
            [compare],
            [wire.encode_request_op_put(wire.encode_put_request(key, value))],
            [wire.encode_request_op_range(wire.encode_range_request(key, keys_only=True))],
            key,
        )
        if not result.succeeded:
            self._raise_failed_compare(key, result, expected_mod_revision)
        return int(result.header.revision)

    async def delete(self, key: bytes, expected_mod_revision: Optional[int] = None) -> KeyValue:
        """Delete ``key`` and return the key-value it had (value as bytes).

        ``expected_mod_revision`` as for :meth:`update`.
        """
        wire = _wire()
        if expected_mod_revision is None:
            compare = wire.encode_compare(key, wire.TARGET_CREATE, wire.COMPARE_GREATER, 0)
        else:
            compare = wire.encode_compare(key, wire.TARGET_MOD, wire.COMPARE_EQUAL, expected_mod_revision)
        result = await self._txn(
            [compare],
            [wire.encode_request_op_delete_range(wire.encode_delete_range_request(key, prev_kv=True))],
            [wire.encode_request_op_range(wire.encode_range_request(key, keys_only=True))],
            key,
        )
        if not result.succeeded:
            self._raise_failed_compare(key, result, expected_mod_revision)
        kind, deleted = result.responses[0]
        if kind != "delete_range" or not deleted.prev_kvs:
            raise NotFound(f"{key!r} not found", key=key)  # deleted by someone else within the txn window
        return deleted.prev_kvs[0]

    @staticmethod
    def _raise_failed_compare(key: bytes, result: Any, expected: Optional[int]) -> None:
        current: List[KeyValue] = []
        if result.responses and result.responses[0][0] == "range":
            current = result.responses[0][1].kvs
        if not current:
            raise NotFound(f"{key!r} not found", key=key)
        actual = int(current[0].mod_revision)
        raise Conflict(
            f"{key!r} was modified: expected mod revision {expected}, it is {actual}", key=key, actual_revision=actual
        )

    async def compact(self, revision: int, *, physical: bool = True) -> None:
        """Compact etcd's history up to ``revision`` (for tests and maintenance)."""
        await self._unary("compact", _wire().encode_compaction_request(revision, physical=physical))

    async def current_revision(self) -> int:
        """etcd's current revision (a linearizable read)."""
        request = _wire().encode_range_request(b"\x00", count_only=True)
        return int(_wire().parse_range_response(await self._unary("range", request)).header.revision)


# ---------------------------------------------------------------- list iterator


class ListStream:
    """Async iterator over one pinned-revision paged read of a prefix.

    ``revision`` is None until the first page arrives, then the pinned
    revision.  ``continue_token`` is set when a ``limit`` stopped the stream
    before the end.  ``pages`` counts Range requests made.

    Memory: values are memoryview slices of the current page's response,
    except the last value of each page of several, which is copied to
    ``bytes`` so that a consumer still holding it does not keep the whole page
    alive while the next page arrives.  So at most one page plus one object is live, provided
    the consumer keeps only the current item.
    """

    def __init__(
        self,
        store: EtcdStore,
        prefix: bytes,
        revision: Optional[int],
        continue_token: Optional[str],
        limit: Optional[int],
    ) -> None:
        if not isinstance(prefix, bytes) or not prefix:
            raise ValueError("prefix must be non-empty bytes")
        if limit is not None and limit <= 0:
            raise ValueError("limit must be positive")
        self._store = store
        self.prefix = prefix
        self._start = prefix
        self.revision: Optional[int] = revision if revision else None
        if continue_token is not None:
            token_revision, self._start = decode_continue(store._continue_secret, continue_token, prefix)
            if revision and revision != token_revision:
                raise InvalidContinue("a continue token cannot be combined with another revision")
            self.revision = token_revision
        self._limit = limit
        self.continue_token: Optional[str] = None
        self.pages = 0
        self._gen = self._run()

    def __aiter__(self) -> "ListStream":
        return self

    async def __anext__(self) -> KeyValue:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop early and release the page held."""
        await self._gen.aclose()

    async def _run(self) -> AsyncGenerator[KeyValue, None]:
        store = self._store
        range_end = _wire().prefix_range_end(self.prefix)
        start = self._start
        page_limit = store.initial_page_limit()
        yielded = 0
        while True:
            want = page_limit if self._limit is None else min(page_limit, self._limit - yielded)
            result, page_limit = await store._range_page(start, range_end, want, self.revision or 0)
            self.pages += 1
            if self.revision is None:
                self.revision = int(result.header.revision)
            kvs: List[Any] = result.kvs
            more = bool(result.more)
            del result
            count = len(kvs)
            if count == 0:
                return
            largest = max(len(kv.key) + len(kv.value) for kv in kvs)
            page_limit = store.next_page_limit(max(page_limit, count), largest)
            start = kvs[-1].key + b"\x00"  # the next key after the last one, at the same revision
            for i in range(count):
                kv = kvs[i]
                kvs[i] = None  # the consumer's reference is the only one left
                if i == count - 1 and count > 1:
                    # A page of one key-value is little more than that value:
                    # holding it costs what a copy would, so no copy is made.
                    kv = kv._replace(value=bytes(kv.value))
                yielded += 1
                yield kv
                del kv
            del kvs
            if self._limit is not None and yielded >= self._limit:
                if more:
                    self.continue_token = encode_continue(
                        store._continue_secret, self.prefix, int(self.revision), start
                    )
                return
            if not more:
                return


# ---------------------------------------------------------------- watch iterator


def _event_size(event: RawEvent) -> int:
    size = 0
    for kv in (event.kv, event.prev_kv):
        if kv is not None:
            size += len(kv.key) + len(kv.value) + _PER_KV_OVERHEAD
    return size


def _to_watch_event(event: RawEvent) -> WatchEvent:
    kv = event.kv
    if kv is None:
        raise errors.MalformedResponse("watch event without a key-value", 0)
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
    asks for one on demand, but only at or above the watch-progress gate
    (:func:`supports_watch_progress`); below it nothing is ever sent.

    Fragmented responses (etcd splits a huge revision) are reassembled so a
    revision is never delivered in part; at most ``max_fragment_bytes`` of one
    revision are buffered (:class:`~streamcodec.storage.errors.TooLarge` beyond).
    """

    def __init__(
        self,
        store: EtcdStore,
        prefix: bytes,
        start_revision: Optional[int],
        *,
        progress_notify: bool = True,
        max_fragment_bytes: Optional[int] = None,
    ) -> None:
        if not isinstance(prefix, bytes) or not prefix:
            raise ValueError("prefix must be non-empty bytes")
        self._store = store
        self.prefix = prefix
        self._range_end = _wire().prefix_range_end(prefix)
        self.start_revision = start_revision or 0
        self.progress_notify = progress_notify
        self.max_fragment_bytes = max_fragment_bytes or (store.page_bytes + store.max_object_bytes)
        #: last revision whose events were all received (delivered or queued)
        self.received_revision = (start_revision - 1) if start_revision else 0
        self._ready: Deque[WatchEvent] = collections.deque()
        self._fragments: List[RawEvent] = []
        self._fragment_bytes = 0
        self._call: Any = None
        self._member: Optional[_Member] = None
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
            allowed = await self._store.supports_watch_progress()
        except Unavailable:
            allowed = False  # nobody answers Status: the gate is unknown, so nothing is sent
        if not allowed:
            return False
        await self.start()
        try:
            await self._call.write(_wire().encode_watch_progress_request())
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
        """(Re)create the watch from received_revision + 1, failing over between members."""
        store = self._store
        wire = _wire()
        attempt = 0
        while True:
            member = store._members[store._current]
            start = self.received_revision + 1 if (self.received_revision or self.start_revision) else 0
            call = None
            try:
                metadata = list(await store._metadata(member) or [])
                # hasleader: a member cut off from the leader ends the stream instead of going silent
                metadata.append(("hasleader", "true"))
                method = store._channel(member).stream_stream(
                    _WATCH_METHOD, request_serializer=None, response_deserializer=None
                )
                call = method(metadata=metadata)
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
                        raise _StreamEnded()
                    response = wire.parse_watch_response(raw)
                    if response.canceled:
                        call.cancel()
                        self._raise_canceled(response)
                    if response.created:
                        break
                self._call = call
                self._member = member
                self._watch_id = int(response.watch_id)
                self.endpoint = member.endpoint
                if response.header.revision and not self.received_revision and not self.start_revision:
                    # "from now": everything up to the creation revision is, by definition, before us
                    self.received_revision = int(response.header.revision)
                return
            except (grpc.aio.AioRpcError, _StreamEnded) as exc:
                if call is not None:
                    call.cancel()
                if isinstance(exc, grpc.aio.AioRpcError):
                    if _is_bad_token(exc):
                        member.token = None
                    elif not _is_retryable(exc):
                        raise _map_error(exc, self.prefix) from None
                if attempt >= store.retries:
                    raise Unavailable(f"cannot (re)create the watch of {self.prefix!r}: {exc}", key=self.prefix) from None
                store._advance(member)
                await store._sleep_backoff(attempt)
                attempt += 1

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
            raise _StreamEnded()  # a member without a leader: go elsewhere
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
                raise _StreamEnded()
            response = _wire().parse_watch_response(raw)
            del raw
            if response.canceled:
                self._raise_canceled(response)
        except (grpc.aio.AioRpcError, _StreamEnded, asyncio.InvalidStateError) as exc:
            if self._closed:
                return
            if isinstance(exc, grpc.aio.AioRpcError) and not _is_retryable(exc) and not _is_bad_token(exc):
                if exc.code() != grpc.StatusCode.CANCELLED:
                    raise _map_error(exc, self.prefix) from None
            if isinstance(exc, grpc.aio.AioRpcError) and _is_bad_token(exc) and self._member is not None:
                self._member.token = None
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
                self._store._advance(self._member)
            await self._store._sleep_backoff(0)
        await self._connect()


class _StreamEnded(Exception):
    """The watch stream ended or must be moved to another member."""


# ---------------------------------------------------------------- watch list


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
    """

    def __init__(self, store: EtcdStore, prefix: bytes, resource_version: Optional[int]) -> None:
        self._store = store
        self.prefix = prefix
        self.resource_version = resource_version or 0
        self.revision: Optional[int] = None
        self.caught_up = False
        self.watch: Optional[SharedWatch] = None
        self._list = store.list_stream(prefix)
        self._gen = self._run()

    def __aiter__(self) -> "WatchListStream":
        return self

    async def __anext__(self) -> WatchEvent:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop the list or the watch."""
        await self._gen.aclose()
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
        watch = self._store.shared_watch(self.prefix, revision + 1)  # one etcd watch for every watcher of the prefix
        self.watch = watch
        await watch.start()
        yield WatchEvent("BOOKMARK", None, None, revision, initial_events_end=True)
        await watch.request_progress()  # no-op below the gate
        async for event in watch:
            if event.type == "BOOKMARK" and watch.progress_requests_sent:
                self.caught_up = True
            yield event
