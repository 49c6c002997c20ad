"""What the server needs of a store: the contract :class:`~streamcodec.storage.etcd.EtcdStore` keeps.

As Kubernetes' ``storage.Interface`` does for kube-apiserver, these protocols are what the server
depends on, so another store (a test double, a cache in front of etcd, a different database) can
stand in without the server knowing.  Keys and values are bytes; revisions are etcd's int64
revisions (the server's resourceVersions).  Errors are :mod:`streamcodec.storage.errors`.
"""

from __future__ import annotations

from typing import AsyncIterator, Optional, Protocol, runtime_checkable

from .types import Deleted, KeyValue, WatchEvent

__all__ = ["Store", "KeyValueStream", "EventStream", "WatchListEvents"]


@runtime_checkable
class KeyValueStream(Protocol):
    """One consistent read of a prefix, page by page (:meth:`Store.list_stream`)."""

    #: the revision read; None until the first page arrived
    revision: Optional[int]
    #: set when a ``limit`` stopped the read before the end: pass it back to continue
    continue_token: Optional[str]

    def __aiter__(self) -> AsyncIterator[KeyValue]: ...
    async def __anext__(self) -> KeyValue: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class EventStream(Protocol):
    """The changes of a prefix from a revision on, in order, none lost or repeated (:meth:`Store.watch`)."""

    def __aiter__(self) -> AsyncIterator[WatchEvent]: ...
    async def __anext__(self) -> WatchEvent: ...
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class WatchListEvents(Protocol):
    """Kubernetes' watch-list: ADDED for every object at one revision R, a BOOKMARK at R marking the
    end of the initial events, then every change after R (:meth:`Store.watch_list`)."""

    #: R, once the initial state is pinned
    revision: Optional[int]

    def __aiter__(self) -> AsyncIterator[WatchEvent]: ...
    async def __anext__(self) -> WatchEvent: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class Store(Protocol):
    """Reads, watches and compare-and-swap writes of one key space."""

    def list_stream(
        self, prefix: bytes, revision: Optional[int] = None, *, continue_token: Optional[str] = None,
        limit: Optional[int] = None, start_key: Optional[bytes] = None,
    ) -> KeyValueStream:
        """Every key under ``prefix`` (from ``start_key``) at one revision (None: the newest, a consistent read)."""
        ...

    def shared_watch(self, prefix: bytes, start_revision: Optional[int] = None) -> EventStream:
        """The changes under ``prefix`` from ``start_revision`` (None: from now)."""
        ...

    def watch_list(self, prefix: bytes, resource_version: Optional[int] = None) -> WatchListEvents:
        """A watch-list whose initial state is at least ``resource_version`` recent (NotOlderThan)."""
        ...

    def shared_watch_list(self, prefix: bytes, resource_version: Optional[int] = None) -> WatchListEvents:
        """Like :meth:`watch_list`, but concurrent watch-lists of ``prefix`` may share one read of it."""
        ...

    def shared_list_stream(self, prefix: bytes, resource_version: Optional[int] = None) -> KeyValueStream:
        """Like :meth:`list_stream` of all of ``prefix`` (in key order), but concurrent reads may share one."""
        ...

    async def current_revision(self) -> int:
        """The store's newest revision, read consistently."""
        ...

    async def revision_at_least(self, revision: int) -> int:
        """A revision the store has reached: at least ``revision`` if it has reached it, else its newest (maybe not read consistently)."""
        ...

    async def get(self, key: bytes) -> KeyValue: ...
    async def create(self, key: bytes, value: bytes) -> int: ...
    async def update(self, key: bytes, value: bytes, expected_mod_revision: Optional[int] = None) -> int: ...
    async def delete(self, key: bytes, expected_mod_revision: Optional[int] = None) -> Deleted: ...
    async def close(self) -> None: ...
