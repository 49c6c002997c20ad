"""The gRPC transport to an etcd cluster: members, channels, auth, retry and failover, written once.

:class:`Transport` holds one :class:`Member` per endpoint (its channel and its auth token: simple
tokens are member-local), sends requests to the *current* member, and on a retryable failure moves
to the next one with exponential backoff, for a bounded number of attempts.  Both kinds of call
use the same loop (:meth:`Transport.with_failover`):

* unary calls, by name (:meth:`Transport.unary`);
* streaming calls (:meth:`Transport.open_stream`): a stream is opened on the current member and
  its handshake run; a failure moves on exactly as a unary call does.  A stream that breaks later
  is the caller's to reopen (:meth:`Transport.advance`, :meth:`Transport.sleep_backoff`).

gRPC failures become :class:`~streamcodec.storage.errors.StorageError` here (:func:`map_error`).
Bytes in, bytes out: the messages are encoded by the caller.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import grpc
import grpc.aio

from ._implementation import wire
from .errors import Expired, FutureRevision, StorageError, TooLarge, Unauthorized, Unavailable

__all__ = [
    "METHODS",
    "WATCH_METHOD",
    "Member",
    "StreamEnded",
    "Transport",
    "is_bad_token",
    "is_retryable",
    "map_error",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: etcd's unary methods, by the names callers use
METHODS = {
    "range": "/etcdserverpb.KV/Range",
    "put": "/etcdserverpb.KV/Put",
    "delete_range": "/etcdserverpb.KV/DeleteRange",
    "txn": "/etcdserverpb.KV/Txn",
    "compact": "/etcdserverpb.KV/Compact",
    "status": "/etcdserverpb.Maintenance/Status",
    "authenticate": "/etcdserverpb.Auth/Authenticate",
}
WATCH_METHOD = "/etcdserverpb.Watch/Watch"

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
#: What gRPC's details say when the TLS handshake failed (a missing or
#: untrusted client certificate shows up only as a corrupted record).
_TLS_FAILURE_DETAILS = ("tsi_data_corrupted", "unwrap failed", "handshake", "ssl")


class StreamEnded(Exception):
    """A stream ended, or its member cannot serve it: open it again on another member."""


def _details(exc: grpc.aio.AioRpcError) -> str:
    return exc.details() or ""


def is_retryable(exc: grpc.aio.AioRpcError) -> bool:
    """Whether another attempt (on another member) may succeed where this one failed."""
    if exc.code() in _RETRYABLE_CODES:
        return True
    if exc.code() == grpc.StatusCode.INTERNAL and "from core" in _details(exc).lower():
        return True  # grpc-core's own failure on a connection that just broke, not etcd's answer
    details = _details(exc).lower()
    return any(marker in details for marker in _RETRYABLE_DETAILS)


def _surely_not_applied(exc: grpc.aio.AioRpcError) -> bool:
    details = _details(exc).lower()
    return any(marker in details for marker in _NOT_SENT_DETAILS)


def is_bad_token(exc: grpc.aio.AioRpcError) -> bool:
    """Whether the member refused our auth token (expired, or the member restarted): log in again."""
    return "invalid auth token" in _details(exc).lower()


def _is_response_too_large(exc: grpc.aio.AioRpcError) -> bool:
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in _details(exc).lower()


def _details_with_hint(exc: grpc.aio.AioRpcError) -> str:
    """gRPC's details, plus what an operator should check when TLS failed."""
    details = _details(exc)
    if any(marker in details.lower() for marker in _TLS_FAILURE_DETAILS):
        details += (
            " (the TLS handshake failed: the server may require a client certificate"
            " (cert_file/key_file) or may not trust the one given)"
        )
    return details


def map_error(exc: grpc.aio.AioRpcError, key: Optional[bytes] = None) -> StorageError:
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {_details_with_hint(exc)}"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------- members


class Member:
    """One etcd endpoint: its channel, its auth token (simple tokens are member-local)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.channel: Optional[grpc.aio.Channel] = None
        self.token: Optional[str] = None
        self.calls: Dict[str, Any] = {}

    async def close(self) -> None:
        """Close the channel (a later call opens a new one)."""
        if self.channel is not None:
            channel, self.channel = self.channel, None
            self.calls.clear()
            await channel.close()


def _strip_scheme(endpoint: str) -> str:
    for scheme in ("https://", "http://", "unix://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :]
    return endpoint


def _credentials(ca_file: Optional[str], cert_file: Optional[str], key_file: Optional[str]) -> Optional[grpc.ChannelCredentials]:
    """TLS credentials when ``ca_file`` is given (with a client certificate if given), else None."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("cert_file and key_file go together")
    if ca_file is None:
        if cert_file is not None:
            raise ValueError("a client certificate needs ca_file (TLS)")
        return None
    with open(ca_file, "rb") as f:
        root = f.read()
    chain = private = None
    if cert_file is not None and key_file is not None:
        with open(cert_file, "rb") as f:
            chain = f.read()
        with open(key_file, "rb") as f:
            private = f.read()
    return grpc.ssl_channel_credentials(root, private, chain)


class Transport:
    """Calls to an etcd cluster with failover between its members.

    ``endpoints`` are ``host:port`` (an ``http(s)://`` scheme is accepted and
    ignored: TLS is on exactly when ``ca_file`` is given).  A call that fails
    with a retryable error moves to the next endpoint, with exponential
    backoff (``backoff`` doubling up to ``max_backoff``), for at most
    ``retries`` further attempts, then raises
    :class:`~streamcodec.storage.errors.Unavailable`.  ``max_receive_bytes``
    and ``max_send_bytes`` are gRPC's message limits (never unlimited).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ca_file: Optional[str],
        cert_file: Optional[str],
        key_file: Optional[str],
        username: Optional[str],
        password: Optional[str],
        retries: int,
        backoff: float,
        max_backoff: float,
        request_timeout: float,
        max_receive_bytes: int,
        max_send_bytes: int,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("retries and backoffs must not be negative")
        self._members = [Member(_strip_scheme(e)) for e in endpoints]
        self._current = 0
        self._credentials = _credentials(ca_file, cert_file, key_file)
        self._username = username
        self._password = password
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        #: gRPC's receive limit
        self.max_receive_bytes = max_receive_bytes
        self._max_send_bytes = max_send_bytes
        self._closed = False

    # -------------------------------------------------------------- members

    @property
    def endpoints(self) -> List[str]:
        """The configured endpoints, ``host:port``."""
        return [m.endpoint for m in self._members]

    @property
    def members(self) -> Tuple[Member, ...]:
        """Every configured member, in endpoint order."""
        return tuple(self._members)

    @property
    def current_endpoint(self) -> str:
        """The endpoint requests go to now (it changes on failover)."""
        return self._members[self._current].endpoint

    def advance(self, failed: Member) -> None:
        """Move to the next endpoint after ``failed`` (unless another call already moved)."""
        if self._members[self._current] is failed:
            self._current = (self._current + 1) % len(self._members)
            log.info("etcd endpoint %s failed; moving to %s", failed.endpoint, self.current_endpoint)

    async def sleep_backoff(self, attempt: int) -> None:
        """Wait before attempt ``attempt + 1``: exponential, capped, with jitter."""
        delay = min(self.max_backoff, self.backoff * (2**attempt))
        await asyncio.sleep(delay * (0.5 + random.random() / 2))

    @staticmethod
    def forget_token(member: Member) -> None:
        """Drop ``member``'s auth token (it refused it): the next call logs in again."""
        member.token = None

    async def close(self) -> None:
        """Close every channel (calls fail with Unavailable afterwards)."""
        self._closed = True
        for member in self._members:
            await member.close()

    # -------------------------------------------------------------- channels and auth

    def _channel(self, member: Member) -> grpc.aio.Channel:
        if self._closed:
            raise Unavailable("the store is closed")
        if member.channel is None:
            options = [
                ("grpc.max_receive_message_length", self.max_receive_bytes),
                ("grpc.max_send_message_length", self._max_send_bytes),
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

    def _method(self, member: Member, name: str) -> Any:
        call = member.calls.get(name)
        if call is None:
            call = self._channel(member).unary_unary(METHODS[name], request_serializer=None, response_deserializer=None)
            member.calls[name] = call
        return call

    async def _metadata(self, member: Member) -> List[Tuple[str, str]]:
        """The call metadata for ``member``: its auth token, logging in first if it has none."""
        if self._username is None:
            return []
        if member.token is None:
            request = wire.encode_authenticate_request(self._username, self._password or "")
            try:
                raw = await self._method(member, "authenticate")(request, timeout=self.request_timeout)
            except grpc.aio.AioRpcError as exc:
                if is_retryable(exc):
                    raise
                raise map_error(exc) from None
            _, member.token = wire.parse_authenticate_response(raw)
        return [("token", member.token)]

    # -------------------------------------------------------------- calls

    async def _on_member(self, member: Member, attempt: Callable[[Member], Awaitable[T]]) -> T:
        """``attempt(member)``, logging in again once if the member refused our token."""
        try:
            return await attempt(member)
        except grpc.aio.AioRpcError as exc:
            if not is_bad_token(exc):
                raise
            self.forget_token(member)  # expired, or from a restarted member: log in again
        return await attempt(member)

    async def with_failover(
        self,
        attempt: Callable[[Member], Awaitable[T]],
        *,
        idempotent: bool = True,
        key: Optional[bytes] = None,
        what: str = "",
    ) -> T:
        """``attempt(member)`` on the current member, moving on after each retryable failure.

        Retryable: a retryable gRPC error or :class:`StreamEnded`.  Non-idempotent
        requests (writes) are only retried when the failure proves they were not
        applied, so a create is never silently doubled.  Other gRPC errors are
        mapped (:func:`map_error`); after ``retries`` further attempts,
        :class:`~streamcodec.storage.errors.Unavailable` (``what`` says what failed).
        """
        attempts = 0
        while True:
            member = self._members[self._current]
            try:
                return await self._on_member(member, attempt)
            except (grpc.aio.AioRpcError, StreamEnded) as exc:
                if isinstance(exc, grpc.aio.AioRpcError) and not (
                    is_retryable(exc) and (idempotent or _surely_not_applied(exc))
                ):
                    raise map_error(exc, key) from None
                if attempts >= self.retries:
                    context = f" ({what})" if what else ""
                    raise Unavailable(
                        f"etcd unavailable after {attempts + 1} attempts{context}: {_describe(exc)}", key=key
                    ) from None
                self.advance(member)
                await self.sleep_backoff(attempts)
                attempts += 1

    async def unary(self, name: str, request: bytes, *, idempotent: bool = True, key: Optional[bytes] = None) -> bytes:
        """The response to unary call ``name`` (a key of :data:`METHODS`), with failover."""

        async def attempt(member: Member) -> bytes:
            metadata = await self._metadata(member)
            return await self._method(member, name)(request, timeout=self.request_timeout, metadata=metadata or None)

        return await self.with_failover(attempt, idempotent=idempotent, key=key)

    async def call_member(self, member: Member, name: str, request: bytes, *, timeout: Optional[float] = None) -> bytes:
        """Unary call ``name`` on ``member`` only (no failover: gRPC errors are raised as they are).

        ``timeout`` defaults to ``request_timeout``.
        """
        if timeout is None:
            timeout = self.request_timeout

        async def attempt(target: Member) -> bytes:
            metadata = await self._metadata(target)
            return await self._method(target, name)(request, timeout=timeout, metadata=metadata or None)

        return await self._on_member(member, attempt)

    async def open_stream(
        self,
        method: str,
        handshake: Callable[[Any], Awaitable[T]],
        *,
        metadata: Sequence[Tuple[str, str]] = (),
        key: Optional[bytes] = None,
        what: str = "",
    ) -> Tuple[Member, Any, T]:
        """Open a stream-stream call on the current member and run ``handshake(call)`` on it.

        Failover as for unary calls: a retryable failure of the call or of the
        handshake (which raises :class:`StreamEnded` for "not this member")
        cancels the call and moves on.  Returns the member, the open call and
        what the handshake returned.
        """

        async def attempt(member: Member) -> Tuple[Member, Any, T]:
            call_metadata = await self._metadata(member) + list(metadata)
            method_call = self._channel(member).stream_stream(method, request_serializer=None, response_deserializer=None)
            call = method_call(metadata=call_metadata)
            try:
                return member, call, await handshake(call)
            except BaseException:
                call.cancel()
                raise

        return await self.with_failover(attempt, key=key, what=what)
