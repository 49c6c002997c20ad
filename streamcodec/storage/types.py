"""Plain value types handed out by the storage layer and its wire codec.

They carry raw bytes only: the storage layer knows nothing of output formats.
``value`` fields are usually ``memoryview`` slices of the gRPC response bytes
(no copy); hold them only as long as needed, since a view keeps the whole
response alive.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple, Union

__all__ = [
    "KeyValue",
    "WatchEvent",
    "ResponseHeader",
    "RangeResult",
    "PutResult",
    "DeleteRangeResult",
    "TxnResult",
    "RawEvent",
    "WatchResult",
    "StatusResult",
    "EVENT_PUT",
    "EVENT_DELETE",
]

Value = Union[bytes, memoryview]

#: mvccpb.Event.EventType values
EVENT_PUT = 0
EVENT_DELETE = 1


class KeyValue(NamedTuple):
    """One etcd key-value (mvccpb.KeyValue)."""

    key: bytes
    value: Value
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


class Deleted(NamedTuple):
    """What a delete did: the key-value as it was, and the revision of the deletion
    (kube-apiserver answers a DELETE with the object at that revision, as its DELETED event has it)."""

    previous: KeyValue
    revision: int


class WatchEvent(NamedTuple):
    """One watch event in Kubernetes terms.

    ``type`` is ADDED (a PUT creating the key), MODIFIED (any other PUT),
    DELETED or BOOKMARK.  For DELETED, ``kv`` is the object as it was before
    the delete (etcd's prev_kv) when etcd still had it, else the tombstone
    (empty value); ``revision`` is always the revision of the change (the
    deletion revision for DELETED, the progress revision for BOOKMARK, where
    ``kv`` is None).  ``initial_events_end`` is True only on the watch-list
    bookmark that ends the initial ADDED events.
    """

    type: str
    kv: Optional[KeyValue]
    prev_kv: Optional[KeyValue]
    revision: int
    initial_events_end: bool = False


class ResponseHeader(NamedTuple):
    """etcdserverpb.ResponseHeader."""

    cluster_id: int
    member_id: int
    revision: int
    raft_term: int


class RangeResult(NamedTuple):
    """etcdserverpb.RangeResponse."""

    header: ResponseHeader
    kvs: List[KeyValue]
    more: bool
    count: int  # type: ignore[assignment]  # the proto field's name shadows tuple.count


class PutResult(NamedTuple):
    """etcdserverpb.PutResponse."""

    header: ResponseHeader
    prev_kv: Optional[KeyValue]


class DeleteRangeResult(NamedTuple):
    """etcdserverpb.DeleteRangeResponse."""

    header: ResponseHeader
    deleted: int
    prev_kvs: List[KeyValue]


class TxnResult(NamedTuple):
    """etcdserverpb.TxnResponse; ``responses`` are (kind, result) pairs with
    kind one of "range", "put", "delete_range", "txn"."""

    header: ResponseHeader
    succeeded: bool
    responses: List[Tuple[str, object]]


class RawEvent(NamedTuple):
    """mvccpb.Event as etcd sent it (type EVENT_PUT or EVENT_DELETE)."""

    type: int
    kv: Optional[KeyValue]
    prev_kv: Optional[KeyValue]


class WatchResult(NamedTuple):
    """etcdserverpb.WatchResponse."""

    header: ResponseHeader
    watch_id: int
    created: bool
    canceled: bool
    compact_revision: int
    cancel_reason: str
    fragment: bool
    events: List[RawEvent]


class StatusResult(NamedTuple):
    """etcdserverpb.StatusResponse (the fields we use)."""

    header: ResponseHeader
    version: str
    db_size: int
    leader: int
    raft_index: int
    raft_term: int
    raft_applied_index: int
    errors: List[str]
    db_size_in_use: int
    is_learner: bool
