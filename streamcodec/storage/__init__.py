"""Asyncio etcd storage for a Kubernetes-style API server, within a fixed memory budget.

``EtcdStore`` talks to etcd's gRPC API over grpcio with hand-written wire
encoding (``streamcodec.storage._wire``, compiled, or its pure-Python twin
``streamcodec.storage._wire_py`` when ``STREAMCODEC_PURE_PYTHON=1``).  It hands out raw
keys and values (bytes / memoryview) and revisions; it knows nothing of HTTP or
output formats.
"""

from __future__ import annotations

import os as _os

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
from .types import KeyValue, WatchEvent

#: same switch as streamcodec's: a non-empty value other than "0" forces the twins
PURE_PYTHON: bool = _os.environ.get("STREAMCODEC_PURE_PYTHON", "") not in ("", "0")

if PURE_PYTHON:
    from . import _wire_py as wire
else:
    try:
        from . import _wire as wire  # type: ignore[no-redef]
    except ImportError:  # not built: fall back to the twin, and say so in IMPLEMENTATION
        from . import _wire_py as wire  # type: ignore[no-redef]

#: "cython" when the compiled wire codec is in use, else "python"
IMPLEMENTATION: str = "python" if wire.__name__.endswith("_py") else "cython"

from .etcd import EtcdStore, ListStream, WatchStream, supports_watch_progress  # noqa: E402

__all__ = [
    "IMPLEMENTATION",
    "PURE_PYTHON",
    "AlreadyExists",
    "Conflict",
    "EtcdStore",
    "Expired",
    "FutureRevision",
    "InvalidContinue",
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
