"""The one exception hierarchy of the etcd storage layer.

Modelled on Kubernetes' storage errors: every error raised on purpose is a
:class:`StorageError` whose ``code`` names the condition, so an API server can
map one class (or one code) to one HTTP status without parsing messages.

==================  =====================  ==========================================
class               ``code``               typical HTTP status
==================  =====================  ==========================================
NotFound            ``NotFound``           404
AlreadyExists       ``AlreadyExists``      409
Conflict            ``Conflict``           409 (resourceVersion precondition failed)
Expired             ``Expired``            410 (compacted revision / stale continue)
InvalidContinue     ``InvalidContinue``    400
FutureRevision      ``FutureRevision``     504 "Too large resource version"
Unavailable         ``Unavailable``        503
Unauthorized        ``Unauthorized``       401/403 (etcd refused credentials)
TooLarge            ``TooLarge``           413 (object or response over a limit)
MalformedResponse   ``MalformedResponse``  500 (etcd sent bytes we cannot parse)
==================  =====================  ==========================================
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "StorageError",
    "NotFound",
    "AlreadyExists",
    "Conflict",
    "Expired",
    "InvalidContinue",
    "FutureRevision",
    "Unavailable",
    "Unauthorized",
    "TooLarge",
    "MalformedResponse",
]


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""

    code: str = "Internal"

    def __init__(self, message: str, *, key: Optional[bytes] = None) -> None:
        super().__init__(message)
        #: the key the failed operation was about, when there is one
        self.key = key


class NotFound(StorageError):
    """The key does not exist."""

    code = "NotFound"


class AlreadyExists(StorageError):
    """``create`` found the key already present."""

    code = "AlreadyExists"


class Conflict(StorageError):
    """A precondition (expected mod revision, i.e. resourceVersion) did not hold."""

    code = "Conflict"

    def __init__(self, message: str, *, key: Optional[bytes] = None, actual_revision: int = 0) -> None:
        super().__init__(message, key=key)
        #: the key's mod revision at the time of the failed compare (0 if unknown)
        self.actual_revision = actual_revision


class Expired(StorageError):
    """The requested revision was compacted (HTTP 410 Gone semantics).

    Raised instead of ever returning a partial or mixed-revision result; the
    caller must relist from a fresh revision.
    """

    code = "Expired"

    def __init__(self, message: str, *, key: Optional[bytes] = None, compact_revision: int = 0) -> None:
        super().__init__(message, key=key)
        #: etcd's compaction revision when it told us (0 if it did not)
        self.compact_revision = compact_revision


class InvalidContinue(StorageError):
    """A continue token is malformed, tampered with, or for another prefix."""

    code = "InvalidContinue"


class FutureRevision(StorageError):
    """A revision newer than etcd's current revision was requested."""

    code = "FutureRevision"


class Unavailable(StorageError):
    """No etcd member answered after the bounded retries with backoff."""

    code = "Unavailable"


class Unauthorized(StorageError):
    """etcd refused the credentials, the token, or the permission."""

    code = "Unauthorized"


class TooLarge(StorageError):
    """An object, request or response is over a configured or etcd limit."""

    code = "TooLarge"


class MalformedResponse(StorageError):
    """Bytes from etcd are not a valid message of the expected type.

    ``offset`` is where in the message the problem was found.  The parser
    never reads outside the message it was given.
    """

    code = "MalformedResponse"

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset
