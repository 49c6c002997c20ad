"""Kubernetes ``Status`` errors.

Every error the API server reports is an :class:`APIError`, rendered as a
``meta.k8s.io/v1`` ``Status`` object in the negotiated format (or as an
``ERROR`` watch event once a watch stream has started).  Messages never carry
internals: unexpected exceptions become a generic 500.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

from streamcodec.storage import errors as storage_errors

from .defaults import RETRY_AFTER

__all__ = ["APIError", "status_object", "from_storage_error", "internal_error", "warning_headers", "not_found", "forbidden"]


class APIError(Exception):
    """An error with its HTTP status code and Kubernetes ``reason``.

    ``retry_after`` (seconds) becomes a ``Retry-After`` header and
    ``details.retryAfterSeconds``.  ``warnings``: what the request was warned of before it failed
    (kube sends its Warning headers on an error response too).
    """

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: Optional[Dict[str, Any]] = None,
        retry_after: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})
        self.retry_after = retry_after
        self.warnings: List[str] = []
        if retry_after is not None:
            self.details.setdefault("retryAfterSeconds", retry_after)

    def status(self) -> Dict[str, Any]:
        """This error as a Kubernetes Status object (a plain dict)."""
        return status_object(self.code, self.reason, self.message, self.details)

    def headers(self) -> Dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


def status_object(code: int, reason: str, message: str, details: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A ``Status`` with ``status: Failure`` (the only kind this server sends)."""
    status: Dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        status["details"] = details
    return status


#: k8s.io/apiserver's warning recorder: past this many characters of warnings in one response, each is
#: cut to WARNING_ITEM_CHARS, and once the cut ones reach it the rest are dropped.
WARNING_TOTAL_CHARS = 4 * 1024
WARNING_ITEM_CHARS = 256


def warning_headers(texts: Iterable[str]) -> List[str]:
    """The values of the ``Warning`` headers kube-apiserver sends for these warning texts (its warning
    recorder's rules): one header a text, ``299 - "text"`` with quotes and backslashes escaped, each text
    once, truncated as :data:`WARNING_TOTAL_CHARS` says.  Texts hold no control characters (kube drops
    such a warning)."""
    kept: List[str] = []
    written, truncating = 0, False
    for text in dict.fromkeys(t for t in texts if t):
        if truncating:
            if written >= WARNING_TOTAL_CHARS:
                break
            text = text[:WARNING_ITEM_CHARS]
        elif written + len(text) > WARNING_TOTAL_CHARS:
            truncating = True  # replay what was kept, truncated, as kube does
            kept = [t[:WARNING_ITEM_CHARS] for t in kept]
            written = sum(map(len, kept))
            text = text[:WARNING_ITEM_CHARS]
        kept.append(text)
        written += len(text)
    return ['299 - "%s"' % t.replace("\\", "\\\\").replace('"', '\\"') for t in kept]


def bad_request(message: str) -> APIError:
    return APIError(400, "BadRequest", message)


def not_found(resource: str, name: str) -> APIError:
    """kube's ``errors.NewNotFound``: ``{resource} "{name}" not found``, details ``{name, kind: resource}``."""
    return APIError(404, "NotFound", f'{resource} "{name}" not found', details={"name": name, "kind": resource})


def forbidden(resource: str, name: str, reason: str) -> APIError:
    """kube's ``errors.NewForbidden`` of a named object: ``{resource} "{name}" is forbidden: {reason}``,
    details ``{name, kind: resource}``."""
    return APIError(403, "Forbidden", f'{resource} "{name}" is forbidden: {reason}', details={"name": name, "kind": resource})


def internal_error() -> APIError:
    """A 500 that says nothing about the cause (the cause goes to the server log)."""
    return APIError(500, "InternalError", "Internal error occurred: the server could not complete the request")


def from_storage_error(exc: storage_errors.StorageError, *, resource: str = "", name: str = "") -> APIError:
    """Map a storage error to the status Kubernetes' apiserver uses for it."""
    details = {"name": name, "kind": resource} if name else ({"kind": resource} if resource else {})
    if isinstance(exc, storage_errors.NotFound):
        return APIError(404, "NotFound", f'{resource} "{name}" not found', details=details)
    if isinstance(exc, storage_errors.AlreadyExists):
        return APIError(409, "AlreadyExists", f'{resource} "{name}" already exists', details=details)
    if isinstance(exc, storage_errors.Conflict):
        return APIError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again",
            details=details,
        )
    # The messages name the problem in kube's words; storage's own text (etcd keys, details of the
    # token format) stays in the server's log.
    if isinstance(exc, storage_errors.Expired):
        compacted = f" (compacted at {exc.compact_revision})" if exc.compact_revision else ""
        return APIError(410, "Expired", f"too old resource version: the requested version was compacted{compacted}")
    if isinstance(exc, storage_errors.InvalidContinue):
        return APIError(400, "BadRequest", "invalid continue token: it was not issued by this server for this list, or it is damaged")
    if isinstance(exc, storage_errors.FutureRevision):
        return APIError(
            504, "Timeout", "Too large resource version: the requested version is newer than the storage's", retry_after=RETRY_AFTER,
            details={"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]},
        )
    if isinstance(exc, storage_errors.Unavailable):
        return APIError(503, "ServiceUnavailable", "storage is unavailable", retry_after=RETRY_AFTER)
    if isinstance(exc, storage_errors.TooLarge):
        return APIError(413, "RequestEntityTooLarge", "object or response is too large")
    if isinstance(exc, storage_errors.Unauthorized):
        return APIError(503, "ServiceUnavailable", "storage refused the server's credentials", retry_after=5)
    return internal_error()
