"""``EtcdStore``: an asyncio etcd v3 client for streaming huge prefixes in bounded memory.

Talks gRPC through ``grpc.aio`` with raw bytes (our own wire codec, no
generated ``_pb2``).  What it promises:

* **Lists** (:meth:`EtcdStore.list_stream`) read one pinned revision in pages
  sized by a byte budget (``page_bytes``): the first page pins the revision,
  every later page asks for exactly that revision, so the result is one
  consistent snapshot or :class:`~streamcodec.storage.errors.Expired` -- never partial or
  mixed.  At most one page is held at a time (plus one copied object, see
  :class:`~streamcodec.storage.list_stream.ListStream`), and etcd is never asked for more than a page either.
* **Watches** (:meth:`EtcdStore.watch`) map etcd events to Kubernetes event
  types, turn progress notifications into BOOKMARKs, reassemble fragmented
  revisions within a bound, and survive the loss of a member by resuming on
  another from the last delivered revision + 1.
* **Watch lists** (:meth:`EtcdStore.watch_list`) give the Kubernetes
  watch-list contract (initial ADDED events, an end bookmark, then changes);
  :meth:`EtcdStore.shared_watch_list` the same from one paged read shared by
  concurrent readers (:mod:`streamcodec.storage.shared_scan`).
* **CRUD** with compare-and-swap on mod revisions (resourceVersions).

Where the parts live: members, channels, auth, retry and failover in
:mod:`~streamcodec.storage.transport` (``EtcdStore`` is a ``Transport``); the
streams in :mod:`~streamcodec.storage.list_stream` and
:mod:`~streamcodec.storage.watch_stream`; the watch-progress gate in
:mod:`~streamcodec.storage.version_gate`; page budgets in
:mod:`~streamcodec.storage.paging`.  Every error raised on purpose is a
:class:`~streamcodec.storage.errors.StorageError`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Dict, List, Optional, Sequence, Tuple

import grpc
import grpc.aio

from ._implementation import wire
from .errors import AlreadyExists, Conflict, NotFound, TooLarge, Unavailable
from .list_stream import ListStream
from .paging import (
    DEFAULT_MAX_OBJECT_BYTES,
    DEFAULT_PAGE_BYTES,
    MAX_PAGE_KEYS,
    PER_KV_OVERHEAD,
    RECEIVE_COPY_FACTOR,
    RESPONSE_HEADROOM,
)
from .shared_scan import ScanHub, ScanMember
from .transport import Member, Transport, is_retryable, map_error
from .types import Deleted, KeyValue, RangeResult
from .version_gate import ProgressGate, lowest_version, supports_watch_progress
from .watch_hub import SharedWatch, WatchHub
from .watch_stream import WatchListStream, WatchStream

__all__ = [
    "DEFAULT_MAX_OBJECT_BYTES",
    "DEFAULT_PAGE_BYTES",
    "RECEIVE_COPY_FACTOR",
    "EtcdStore",
    "ListStream",
    "WatchListStream",
    "WatchStream",
    "supports_watch_progress",
]

log = logging.getLogger(__name__)

#: Status answers at once or not at all: a silent member must not hold the gate for request_timeout
_STATUS_TIMEOUT = 5.0


class EtcdStore(Transport):
    """An etcd v3 client over ``grpc.aio`` that streams prefixes within a byte budget.

    ``endpoints`` are ``host:port`` (an ``http(s)://`` scheme is accepted and
    ignored: TLS is on exactly when ``ca_file`` is given).  Requests go to one
    member; when it fails with a retryable error the store moves to the next
    endpoint, with exponential backoff (``backoff`` doubling up to
    ``max_backoff``), for at most ``retries`` further attempts, then raises
    :class:`~streamcodec.storage.errors.Unavailable` (see
    :class:`~streamcodec.storage.transport.Transport`).

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
        if page_bytes < 1024 or max_object_bytes < 1:
            raise ValueError("page_bytes must be >= 1 KiB and max_object_bytes >= 1")
        if gate_recheck_interval < 0:
            raise ValueError("gate_recheck_interval must not be negative")
        super().__init__(
            endpoints,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            username=username,
            password=password,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            request_timeout=request_timeout,
            # a page, one more object (a page may overshoot by one object when sizes grow), and framing headroom
            max_receive_bytes=page_bytes + max_object_bytes + RESPONSE_HEADROOM,
            max_send_bytes=max_object_bytes + RESPONSE_HEADROOM,
        )
        self.page_bytes = page_bytes
        self.max_object_bytes = max_object_bytes
        #: the size a Range response aims at, so that receiving it stays within page_bytes
        self.response_target = int(page_bytes / RECEIVE_COPY_FACTOR)
        self._continue_secret = continue_secret if continue_secret is not None else secrets.token_bytes(32)
        self._gate = ProgressGate(self.member_versions, gate_recheck_interval)
        self._hub: Optional[WatchHub] = None
        self._scan_hub: Optional[ScanHub] = None
        #: the highest revision etcd has told us of (its revision is at least this: revisions only grow)
        self._seen_revision = 0
        self._revision_read: Optional["asyncio.Future[int]"] = None

    # -------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """Close every channel (open watches and lists fail afterwards)."""
        self._closed = True
        if self._scan_hub is not None:
            await self._scan_hub.close()
        if self._hub is not None:
            await self._hub.close()
        await super().close()

    async def __aenter__(self) -> "EtcdStore":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def gate_recheck_interval(self) -> float:
        """Seconds between two Status rounds while the watch-progress gate is undecided."""
        return self._gate.recheck_interval

    @property
    def watch_progress_gate(self) -> Optional[bool]:
        """The decided watch-progress gate, or None while undecided (not asked yet, or a member was silent)."""
        return self._gate.decided

    # -------------------------------------------------------------- server info

    async def _version_of(self, member: Member) -> Optional[str]:
        try:
            raw = await self.call_member(member, "status", b"", timeout=min(_STATUS_TIMEOUT, self.request_timeout))
        except grpc.aio.AioRpcError as exc:
            if not is_retryable(exc):
                raise map_error(exc) from None
            log.info("etcd member %s did not answer Status: %s", member.endpoint, exc.code().name)
            return None
        return str(wire.parse_status_response(raw).version)

    async def member_versions(self) -> Dict[str, Optional[str]]:
        """Every configured endpoint's etcd server version, ``None`` for a member that did not answer.

        All members are asked at once (Status, at most 5 s each).
        """
        members = self.members
        versions = await asyncio.gather(*(self._version_of(member) for member in members))
        return {member.endpoint: version for member, version in zip(members, versions)}

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
        return lowest_version(answered)

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
        return await self._gate.allowed()

    # -------------------------------------------------------------- lists

    def initial_page_limit(self) -> int:
        """Keys in the first page: what surely fits the budget at maximum object size."""
        return max(1, self.response_target // (self.max_object_bytes + PER_KV_OVERHEAD))

    def next_page_limit(self, previous: int, largest_kv_bytes: int) -> int:
        """Keys for the next page, from the largest key-value seen in the last one.

        Aims at ``response_target`` if the next objects are no larger; grows at
        most 4x per page so a sudden run of large objects overshoots by a
        bounded amount (and the gRPC receive limit catches the rest).
        """
        target = self.response_target // max(1, largest_kv_bytes + PER_KV_OVERHEAD)
        return max(1, min(target, previous * 4, MAX_PAGE_KEYS))

    async def range_page(self, key: bytes, range_end: bytes, limit: int, revision: int) -> Tuple[RangeResult, int]:
        """One Range page of ``[key, range_end)`` at ``revision`` (0: newest) and the limit used.

        Halves ``limit`` while the response exceeds the receive limit.
        """
        while True:
            request = wire.encode_range_request(key, range_end, limit=limit, revision=revision)
            try:
                raw = await self.unary("range", request, key=key)
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
        start_key: Optional[bytes] = None,
        end_key: Optional[bytes] = None,
    ) -> "ListStream":
        """Stream every key under ``prefix`` at one revision, page by page.

        ``revision`` None reads the newest (a linearizable read pins it);
        otherwise exactly that revision (compacted -> ``Expired``).  With
        ``limit``, stop after that many objects and set the iterator's
        ``continue_token`` when more remain; pass it back (without
        ``revision``) to continue at the same revision.  ``start_key`` /
        ``end_key`` narrow the read to ``[start_key, end_key)`` within the
        prefix (a detached shared-scan member resuming where it was).
        """
        return ListStream(
            self,
            prefix,
            revision,
            continue_token,
            limit,
            continue_secret=self._continue_secret,
            start_key=start_key,
            end_key=end_key,
        )

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
            self,
            self.supports_watch_progress,
            prefix,
            start_revision,
            progress_notify=progress_notify,
            max_fragment_bytes=max_fragment_bytes or (self.page_bytes + self.max_object_bytes),
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

    def shared_watch_list(self, prefix: bytes, resource_version: Optional[int] = None) -> "WatchListStream":
        """Like :meth:`watch_list`, but concurrent watch-lists of ``prefix`` share one paged scan.

        See :mod:`streamcodec.storage.shared_scan`: each page is read from etcd
        once for every member of the scan, within a bounded ring of pages.
        """
        return WatchListStream(self, prefix, resource_version, listing=self._scans().member(prefix, resource_version))

    def shared_list_stream(self, prefix: bytes, resource_version: Optional[int] = None) -> ScanMember:
        """Like :meth:`list_stream` of a whole prefix (no limit), in key order, but concurrent reads of
        ``prefix`` share one paged scan.  ``resource_version``: at least that revision (None: a
        consistent read, as for :meth:`shared_watch_list`).  A read joins a scan under way only if
        the scan still holds its first page; else it starts the next one.
        """
        return self._scans().member(prefix, resource_version, ordered=True)

    def _scans(self) -> ScanHub:
        if self._scan_hub is None:
            self._scan_hub = ScanHub(self)
        return self._scan_hub

    @property
    def scan_hub(self) -> Optional[ScanHub]:
        """The shared scans (None until the first shared read)."""
        return self._scan_hub

    # -------------------------------------------------------------- CRUD

    async def get(self, key: bytes) -> KeyValue:
        """The current key-value of ``key``; :class:`NotFound` if absent."""
        result = wire.parse_range_response(await self.unary("range", wire.encode_range_request(key), key=key))
        if not result.kvs:
            raise NotFound(f"{key!r} not found", key=key)
        return result.kvs[0]

    async def put(self, key: bytes, value: bytes) -> int:
        """Set ``key`` unconditionally; returns the new revision."""
        self._check_size(key, value)
        raw = await self.unary("put", wire.encode_put_request(key, value), idempotent=False, key=key)
        return int(wire.parse_put_response(raw).header.revision)

    def _check_size(self, key: bytes, value: bytes) -> None:
        if len(key) + len(value) > self.max_object_bytes:
            raise TooLarge(f"{len(key) + len(value)} bytes exceed max_object_bytes={self.max_object_bytes}", key=key)

    async def _txn(self, compares: List[bytes], success: List[bytes], failure: List[bytes], key: bytes) -> Any:
        raw = await self.unary("txn", wire.encode_txn_request(compares, success, failure), idempotent=False, key=key)
        return wire.parse_txn_response(raw)

    async def create(self, key: bytes, value: bytes) -> int:
        """Create ``key``; :class:`AlreadyExists` if present.  Returns the revision."""
        self._check_size(key, value)
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

    async def delete(self, key: bytes, expected_mod_revision: Optional[int] = None) -> Deleted:
        """Delete ``key``: the key-value it had (value as bytes) and the deletion's revision.

        ``expected_mod_revision`` as for :meth:`update`.
        """
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
        return Deleted(deleted.prev_kvs[0], int(result.header.revision))

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
        await self.unary("compact", wire.encode_compaction_request(revision, physical=physical))

    async def current_revision(self) -> int:
        """etcd's current revision (a linearizable read)."""
        request = wire.encode_range_request(b"\x00", count_only=True)
        revision = int(wire.parse_range_response(await self.unary("range", request)).header.revision)
        self._seen_revision = max(self._seen_revision, revision)
        return revision

    async def revision_at_least(self, revision: int) -> int:
        """A revision etcd has reached: at least ``revision`` when etcd has reached it, else its current one.

        No etcd read when a revision that recent was seen already (10,000 watches from one
        resourceVersion were 10,000 reads, and ~24 KiB of gRPC's memory each, never given back);
        concurrent callers share one read.  Not a consistent read: use :meth:`current_revision` for that.
        """
        if self._seen_revision >= revision:
            return self._seen_revision
        if self._revision_read is None:
            read = self._revision_read = asyncio.ensure_future(self.current_revision())
            read.add_done_callback(lambda _: setattr(self, "_revision_read", None))
        return await asyncio.shield(self._revision_read)


