"""Asyncio etcd storage for a Kubernetes-style API server, within a fixed memory budget.

``EtcdStore`` talks to etcd's gRPC API over grpcio with hand-written wire
encoding (``streamcodec.storage._wire``, compiled, or its pure-Python twin
``streamcodec.storage._wire_py`` when ``STREAMCODEC_PURE_PYTHON=1``; chosen once in
``_implementation``).  The parts: ``transport`` (members, auth, retry, failover),
``etcd`` (the store), ``list_stream`` and ``watch_stream`` (the streams),
``version_gate`` (when watch-progress requests are safe), ``paging`` (page budgets),
``watch_hub`` and ``shared_scan`` (sharing), ``interface`` (the ``Store`` protocol).
It hands out raw keys and values (bytes / memoryview) and revisions; it knows
nothing of HTTP or output formats.
"""

from __future__ import annotations

from ._implementation import IMPLEMENTATION, PURE_PYTHON, wire
from .errors import (
    AlreadyExists,
    Conflict,
    Expired,
    FutureRevision,
    InvalidContinue,
    MalformedResponse,
    NotFound,
    StorageError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from .types import Deleted, KeyValue, WatchEvent
from .etcd import EtcdStore
from .list_stream import ListStream
from .version_gate import supports_watch_progress
from .watch_stream import WatchStream

__all__ = [
    "IMPLEMENTATION",
    "PURE_PYTHON",
    "AlreadyExists",
    "Conflict",
    "EtcdStore",
    "Expired",
    "FutureRevision",
    "InvalidContinue",
    "Deleted",
    "KeyValue",
    "ListStream",
    "MalformedResponse",
    "NotFound",
    "StorageError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "WatchEvent",
    "WatchStream",
    "supports_watch_progress",
    "wire",
]
