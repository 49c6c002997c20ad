"""The audit log: one JSON line per request (``--audit-log-path``).

Each line, written when the request's response has ended (a list or watch stream's line at its
end, so a stream costs one line, not one per event)::

    {"time": "2025-01-31T12:00:00.123456Z", "user": "alice", "groups": ["dev", "system:authenticated"],
     "verb": "list", "apiGroup": "", "resource": "secrets", "namespace": "team-a", "name": "",
     "path": "/api/v1/namespaces/team-a/secrets", "sourceIP": "127.0.0.1",
     "code": 200, "responseBytes": 104857912, "seconds": 0.84}

``time`` is when the request arrived (UTC); ``code`` is null when no response was started (the
client went away first); ``responseBytes`` counts body bytes sent; ``seconds`` runs to the end of the
response.  ``verb``/``resource``/``namespace``/``name`` are the request's authorization attributes
(:func:`streamcodec.server.security.request_attributes`).

Writes are buffered: lines go to an in-memory file buffer (``buffer_bytes``, 256 KiB) that the OS
gets when it fills and at most ``flush_interval`` seconds (1 s) after a line was written, and at
shutdown (:meth:`AuditLog.close`).  A record costs a ``json.dumps`` and a buffer append (a few
microseconds); the event loop never waits on a disk, at most on one ``write()`` of the buffer to the
page cache.  Should writing fail (disk full), the error is
logged once per minute and requests go on being served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any, Dict, List, Optional, Protocol, runtime_checkable

__all__ = ["AuditLog", "AuditSink"]

log = logging.getLogger("streamcodec.server.audit")


@runtime_checkable
class AuditSink(Protocol):
    """Where the App's audit records go: ``record`` is called once per request, in the event loop,
    with a dict of the keys above (``time`` as a UNIX timestamp float); it must not block.  An
    optional ``flush()`` is called at the App's shutdown."""

    def record(self, entry: Dict[str, Any]) -> None: ...


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_second: List[Any] = [None, ""]  # the last whole second formatted, and its text


def _timestamp(seconds: float) -> str:
    """RFC 3339 UTC with microseconds (``2025-01-31T12:00:00.123456Z``)."""
    whole = int(seconds)
    if _second[0] != whole:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int((seconds - whole) * 1e6):06d}Z"


class AuditLog:
    """An :class:`AuditSink` appending JSON lines to ``path`` (created with mode 0600)."""

    def __init__(self, path: str, *, buffer_bytes: int = 256 * 1024, flush_interval: float = 1.0) -> None:
        import os

        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", buffering=buffer_bytes, encoding="utf-8")
        self.flush_interval = flush_interval
        self.records = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._lock = threading.Lock()  # record() runs in the loop; close() may come from another thread
        self._last_error = 0.0

    def record(self, entry: Dict[str, Any]) -> None:
        stamp = entry.get("time")
        if isinstance(stamp, (int, float)):
            entry = dict(entry, time=_timestamp(stamp))
        line = _encode(entry) + "\n"
        with self._lock:
            if self._file.closed:
                return
            try:
                self._file.write(line)
            except OSError as exc:
                self._failed(exc)
                return
            self.records += 1
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.flush_interval, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        with self._lock:
            if self._file.closed:
                return
            try:
                self._file.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._last_error > 60:
            self._last_error = now
            log.error("writing the audit log %s failed: %s", self.path, exc)

    def close(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            try:
                timer.cancel()
            except RuntimeError:  # its loop is closed
                pass
        with self._lock:
            if not self._file.closed:
                try:
                    self._file.close()
                except OSError as exc:
                    self._failed(exc)

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
