"""Pure-Python twin of :mod:`streamcodec.storage._wire`: etcd's protobuf messages, by hand.

Only the etcd gRPC messages the store needs, encoded and parsed directly from
the field numbers of etcd's ``api/etcdserverpb/rpc.proto`` and
``api/mvccpb/kv.proto`` (no generated code).  Parsers yield keys as ``bytes``
(they are small and get compared and hashed) and values as ``memoryview``
slices of the response bytes (no copy).  Unknown fields are skipped, so newer
etcd versions parse.  Malformed input raises
:class:`~streamcodec.storage.errors.MalformedResponse`; no read ever leaves the message.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

from .errors import MalformedResponse
from .types import (
    DeleteRangeResult,
    KeyValue,
    PutResult,
    RangeResult,
    RawEvent,
    ResponseHeader,
    StatusResult,
    TxnResult,
    WatchResult,
)

BytesLike = Union[bytes, bytearray, memoryview]

__all__ = [
    "COMPARE_EQUAL", "COMPARE_GREATER", "COMPARE_LESS", "COMPARE_NOT_EQUAL",
    "TARGET_VERSION", "TARGET_CREATE", "TARGET_MOD", "TARGET_VALUE",
    "encode_range_request", "encode_put_request", "encode_delete_range_request",
    "encode_compare", "encode_request_op_range", "encode_request_op_put", "encode_request_op_delete_range",
    "encode_txn_request", "encode_watch_create_request", "encode_watch_cancel_request",
    "encode_watch_progress_request", "encode_compaction_request", "encode_authenticate_request",
    "parse_response_header", "parse_key_value", "parse_range_response", "parse_put_response",
    "parse_delete_range_response", "parse_txn_response", "parse_watch_response", "parse_status_response",
    "parse_authenticate_response", "prefix_range_end",
]

# Compare.CompareResult / Compare.CompareTarget enum values (rpc.proto)
COMPARE_EQUAL = 0
COMPARE_GREATER = 1
COMPARE_LESS = 2
COMPARE_NOT_EQUAL = 3
TARGET_VERSION = 0
TARGET_CREATE = 1
TARGET_MOD = 2
TARGET_VALUE = 3

_WT_VARINT = 0
_WT_I64 = 1
_WT_LEN = 2
_WT_I32 = 5
_U64 = 0xFFFFFFFFFFFFFFFF


# ---------------------------------------------------------------- encoding


def _put_varint(out: bytearray, value: int) -> None:
    value &= _U64  # int64 negatives are 10-byte two's complement varints
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_tag(out: bytearray, field: int, wire_type: int) -> None:
    _put_varint(out, (field << 3) | wire_type)


def _put_int(out: bytearray, field: int, value: int) -> None:
    if value:
        _check_int64(value)
        _put_tag(out, field, _WT_VARINT)
        _put_varint(out, value)


def _put_bool(out: bytearray, field: int, value: bool) -> None:
    if value:
        out.append((field << 3) | _WT_VARINT)
        out.append(1)


def _put_bytes(out: bytearray, field: int, value: BytesLike, always: bool = False) -> None:
    if len(value) or always:
        _put_tag(out, field, _WT_LEN)
        _put_varint(out, len(value))
        out += value


def _check_int64(value: int) -> None:
    if not -(1 << 63) <= value < (1 << 63):
        raise OverflowError(f"{value} does not fit an int64 field")


def prefix_range_end(prefix: bytes) -> bytes:
    """The standard etcd range end of all keys starting with ``prefix``.

    The last byte below 0xff is incremented and everything after it dropped
    ("a\\xff" -> "b"); a prefix of only 0xff bytes (or empty) has no upper
    bound, which etcd spells "\\0".
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


def encode_range_request(
    key: BytesLike,
    range_end: BytesLike = b"",
    *,
    limit: int = 0,
    revision: int = 0,
    serializable: bool = False,
    keys_only: bool = False,
    count_only: bool = False,
) -> bytes:
    """etcdserverpb.RangeRequest."""
    out = bytearray()
    _put_bytes(out, 1, key, always=True)
    _put_bytes(out, 2, range_end)
    _put_int(out, 3, limit)
    _put_int(out, 4, revision)
    _put_bool(out, 7, serializable)
    _put_bool(out, 8, keys_only)
    _put_bool(out, 9, count_only)
    return bytes(out)


def encode_put_request(key: BytesLike, value: BytesLike, *, lease: int = 0, prev_kv: bool = False) -> bytes:
    """etcdserverpb.PutRequest."""
    out = bytearray()
    _put_bytes(out, 1, key, always=True)
    _put_bytes(out, 2, value)
    _put_int(out, 3, lease)
    _put_bool(out, 4, prev_kv)
    return bytes(out)


def encode_delete_range_request(key: BytesLike, range_end: BytesLike = b"", *, prev_kv: bool = False) -> bytes:
    """etcdserverpb.DeleteRangeRequest."""
    out = bytearray()
    _put_bytes(out, 1, key, always=True)
    _put_bytes(out, 2, range_end)
    _put_bool(out, 3, prev_kv)
    return bytes(out)


def encode_compare(key: BytesLike, target: int, result: int, operand: Union[int, BytesLike]) -> bytes:
    """etcdserverpb.Compare of ``target`` (TARGET_*) of ``key`` against ``operand``.

    The operand goes in the oneof member matching the target (version=4,
    create_revision=5, mod_revision=6, value=7).  It is always written, even
    when zero, because a oneof member's presence selects the target.
    """
    if target not in (TARGET_VERSION, TARGET_CREATE, TARGET_MOD, TARGET_VALUE):
        raise ValueError(f"unknown compare target {target}")
    if result not in (COMPARE_EQUAL, COMPARE_GREATER, COMPARE_LESS, COMPARE_NOT_EQUAL):
        raise ValueError(f"unknown compare result {result}")
    out = bytearray()
    _put_int(out, 1, result)
    _put_int(out, 2, target)
    _put_bytes(out, 3, key, always=True)
    if target == TARGET_VALUE:
        if isinstance(operand, int):
            raise TypeError("a value compare needs a bytes operand")
        _put_bytes(out, 7, operand, always=True)
    else:
        if not isinstance(operand, int):
            raise TypeError("a version/revision compare needs an int operand")
        _check_int64(operand)
        _put_tag(out, 4 + target, _WT_VARINT)  # VERSION->4, CREATE->5, MOD->6
        _put_varint(out, operand)
    return bytes(out)


def _request_op(field: int, message: bytes) -> bytes:
    out = bytearray()
    _put_bytes(out, field, message, always=True)
    return bytes(out)


def encode_request_op_range(range_request: bytes) -> bytes:
    """etcdserverpb.RequestOp holding a RangeRequest."""
    return _request_op(1, range_request)


def encode_request_op_put(put_request: bytes) -> bytes:
    """etcdserverpb.RequestOp holding a PutRequest."""
    return _request_op(2, put_request)


def encode_request_op_delete_range(delete_range_request: bytes) -> bytes:
    """etcdserverpb.RequestOp holding a DeleteRangeRequest."""
    return _request_op(3, delete_range_request)


def encode_txn_request(compare: Sequence[bytes], success: Sequence[bytes], failure: Sequence[bytes]) -> bytes:
    """etcdserverpb.TxnRequest from encoded Compare and RequestOp messages."""
    out = bytearray()
    for field, items in ((1, compare), (2, success), (3, failure)):
        for item in items:
            _put_bytes(out, field, item, always=True)
    return bytes(out)


def encode_watch_create_request(
    key: BytesLike,
    range_end: BytesLike = b"",
    *,
    start_revision: int = 0,
    progress_notify: bool = False,
    prev_kv: bool = False,
    watch_id: int = 0,
    fragment: bool = False,
) -> bytes:
    """etcdserverpb.WatchRequest{create_request}."""
    inner = bytearray()
    _put_bytes(inner, 1, key, always=True)
    _put_bytes(inner, 2, range_end)
    _put_int(inner, 3, start_revision)
    _put_bool(inner, 4, progress_notify)
    _put_bool(inner, 6, prev_kv)
    _put_int(inner, 7, watch_id)
    _put_bool(inner, 8, fragment)
    out = bytearray()
    _put_bytes(out, 1, inner, always=True)
    return bytes(out)


def encode_watch_cancel_request(watch_id: int) -> bytes:
    """etcdserverpb.WatchRequest{cancel_request}."""
    inner = bytearray()
    _put_int(inner, 1, watch_id)
    out = bytearray()
    _put_bytes(out, 2, inner, always=True)
    return bytes(out)


def encode_watch_progress_request() -> bytes:
    """etcdserverpb.WatchRequest{progress_request} (an empty message, present)."""
    return bytes(((3 << 3) | _WT_LEN, 0))


def encode_compaction_request(revision: int, *, physical: bool = False) -> bytes:
    """etcdserverpb.CompactionRequest."""
    out = bytearray()
    _put_int(out, 1, revision)
    _put_bool(out, 2, physical)
    return bytes(out)


def encode_authenticate_request(name: str, password: str) -> bytes:
    """etcdserverpb.AuthenticateRequest."""
    out = bytearray()
    _put_bytes(out, 1, name.encode("utf-8"))
    _put_bytes(out, 2, password.encode("utf-8"))
    return bytes(out)


# ---------------------------------------------------------------- parsing


def _view(data: BytesLike) -> memoryview:
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
        raise TypeError("expected a contiguous buffer of bytes")
    if view.format != "B":
        view = view.cast("B")
    return view


def _varint(buf: memoryview, pos: int, end: int) -> Tuple[int, int]:
    """Read an unsigned varint (at most 10 bytes, at most 64 bits)."""
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise MalformedResponse("truncated varint", start)
        byte = buf[pos]
        pos += 1
        if shift == 63 and byte > 1:
            raise MalformedResponse("varint overflows 64 bits (or runs past 10 bytes)", start)
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7  # the check above stops a 10th byte that continues, so shift never passes 63


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= (1 << 63) else value


class _Field:
    """Iterates the fields of one message occupying buf[start:end]."""

    __slots__ = ("buf", "pos", "end", "number", "wire_type", "value", "lo", "hi", "tag_pos")

    def __init__(self, buf: memoryview, start: int, end: int) -> None:
        self.buf = buf
        self.pos = start
        self.end = end
        self.number = 0
        self.wire_type = 0
        self.value = 0  # varint / fixed value
        self.lo = 0  # LEN payload bounds
        self.hi = 0
        self.tag_pos = 0

    def next(self) -> bool:
        if self.pos >= self.end:
            return False
        self.tag_pos = self.pos
        tag, pos = _varint(self.buf, self.pos, self.end)
        number = tag >> 3
        wire_type = tag & 7
        if number == 0 or number > 0x1FFFFFFF:
            raise MalformedResponse(f"invalid field number {number}", self.tag_pos)
        if wire_type == _WT_VARINT:
            self.value, pos = _varint(self.buf, pos, self.end)
        elif wire_type == _WT_LEN:
            length, pos = _varint(self.buf, pos, self.end)
            if length > self.end - pos:
                raise MalformedResponse(f"field {number} length {length} runs past the message end", self.tag_pos)
            self.lo = pos
            self.hi = pos + length
            pos += length
        elif wire_type == _WT_I64:
            if self.end - pos < 8:
                raise MalformedResponse("truncated fixed64", self.tag_pos)
            pos += 8
        elif wire_type == _WT_I32:
            if self.end - pos < 4:
                raise MalformedResponse("truncated fixed32", self.tag_pos)
            pos += 4
        else:
            raise MalformedResponse(f"unsupported wire type {wire_type} (field {number})", self.tag_pos)
        self.number = number
        self.wire_type = wire_type
        self.pos = pos
        return True

    def expect(self, wire_type: int) -> None:
        if self.wire_type != wire_type:
            raise MalformedResponse(
                f"field {self.number} has wire type {self.wire_type}, expected {wire_type}", self.tag_pos
            )

    def int64(self) -> int:
        self.expect(_WT_VARINT)
        return _int64(self.value)

    def uint64(self) -> int:
        self.expect(_WT_VARINT)
        return self.value

    def boolean(self) -> bool:
        self.expect(_WT_VARINT)
        return self.value != 0

    def span(self) -> Tuple[int, int]:
        self.expect(_WT_LEN)
        return self.lo, self.hi

    def string(self) -> str:
        lo, hi = self.span()
        try:
            return str(self.buf[lo:hi], "utf-8")
        except UnicodeDecodeError:
            raise MalformedResponse(f"field {self.number} is not valid UTF-8", self.tag_pos) from None


def _header(buf: memoryview, start: int, end: int) -> ResponseHeader:
    cluster_id = member_id = revision = raft_term = 0
    f = _Field(buf, start, end)
    while f.next():
        n = f.number
        if n == 1:
            cluster_id = f.uint64()
        elif n == 2:
            member_id = f.uint64()
        elif n == 3:
            revision = f.int64()
        elif n == 4:
            raft_term = f.uint64()
    return ResponseHeader(cluster_id, member_id, revision, raft_term)


_EMPTY_HEADER = ResponseHeader(0, 0, 0, 0)


def _key_value(buf: memoryview, start: int, end: int) -> KeyValue:
    key_lo = key_hi = value_lo = value_hi = start
    create_revision = mod_revision = version = lease = 0
    f = _Field(buf, start, end)
    while f.next():
        n = f.number
        if n == 1:
            key_lo, key_hi = f.span()
        elif n == 2:
            create_revision = f.int64()
        elif n == 3:
            mod_revision = f.int64()
        elif n == 4:
            version = f.int64()
        elif n == 5:
            value_lo, value_hi = f.span()
        elif n == 6:
            lease = f.int64()
    return KeyValue(bytes(buf[key_lo:key_hi]), buf[value_lo:value_hi], create_revision, mod_revision, version, lease)


def _range(buf: memoryview, start: int, end: int) -> RangeResult:
    header = _EMPTY_HEADER
    kvs: List[KeyValue] = []
    more = False
    count = 0
    f = _Field(buf, start, end)
    while f.next():
        n = f.number
        if n == 1:
            lo, hi = f.span()
            header = _header(buf, lo, hi)
        elif n == 2:
            lo, hi = f.span()
            kvs.append(_key_value(buf, lo, hi))
        elif n == 3:
            more = f.boolean()
        elif n == 4:
            count = f.int64()
    return RangeResult(header, kvs, more, count)


def _put(buf: memoryview, start: int, end: int) -> PutResult:
    header = _EMPTY_HEADER
    prev_kv: Optional[KeyValue] = None
    f = _Field(buf, start, end)
    while f.next():
        if f.number == 1:
            lo, hi = f.span()
            header = _header(buf, lo, hi)
        elif f.number == 2:
            lo, hi = f.span()
            prev_kv = _key_value(buf, lo, hi)
    return PutResult(header, prev_kv)


def _delete_range(buf: memoryview, start: int, end: int) -> DeleteRangeResult:
    header = _EMPTY_HEADER
    deleted = 0
    prev_kvs: List[KeyValue] = []
    f = _Field(buf, start, end)
    while f.next():
        n = f.number
        if n == 1:
            lo, hi = f.span()
            header = _header(buf, lo, hi)
        elif n == 2:
            deleted = f.int64()
        elif n == 3:
            lo, hi = f.span()
            prev_kvs.append(_key_value(buf, lo, hi))
    return DeleteRangeResult(header, deleted, prev_kvs)


_RESPONSE_OP_KINDS = {1: "range", 2: "put", 3: "delete_range", 4: "txn"}


def _txn(buf: memoryview, start: int, end: int, depth: int) -> TxnResult:
    if depth > 16:  # etcd itself caps nested txns far lower; this stops hostile recursion
        raise MalformedResponse("transactions nested too deep", start)
    header = _EMPTY_HEADER
    succeeded = False
    responses: List[Tuple[str, object]] = []
    f = _Field(buf, start, end)
    while f.next():
        n = f.number
        if n == 1:
            lo, hi = f.span()
            header = _header(buf, lo, hi)
        elif n == 2:
            succeeded = f.boolean()
        elif n == 3:
            lo, hi = f.span()
            op = _Field(buf, lo, hi)
            kind = ""
            result: object = None
            while op.next():
                m = op.number
                if m in _RESPONSE_OP_KINDS:
                    a, b = op.span()
                    kind = _RESPONSE_OP_KINDS[m]
                    if m == 1:
                        result = _range(buf, a, b)
                    elif m == 2:
                        result = _put(buf, a, b)
                    elif m == 3:
                        result = _delete_range(buf, a, b)
                    else:
                        result = _txn(buf, a, b, depth + 1)
            if not kind:
                raise MalformedResponse("ResponseOp without a response", lo)
            responses.append((kind, result))
    return TxnResult(header, succeeded, responses)


def _event(buf: memoryview, start: int, end: int) -> RawEvent:
    event_type = 0
    kv: Optional[KeyValue] = None
    prev_kv: Optional[KeyValue] = None
    f = _Field(buf, start, end)
    while f.next():
        n = f.number
        if n == 1:
            event_type = f.int64()
            if event_type not in (0, 1):
                raise MalformedResponse(f"unknown event type {event_type}", f.tag_pos)
        elif n == 2:
            lo, hi = f.span()
            kv = _key_value(buf, lo, hi)
        elif n == 3:
            lo, hi = f.span()
            prev_kv = _key_value(buf, lo, hi)
    return RawEvent(event_type, kv, prev_kv)


def parse_response_header(data: BytesLike) -> ResponseHeader:
    """Parse an etcdserverpb.ResponseHeader."""
    buf = _view(data)
    return _header(buf, 0, len(buf))


def parse_key_value(data: BytesLike) -> KeyValue:
    """Parse an mvccpb.KeyValue."""
    buf = _view(data)
    return _key_value(buf, 0, len(buf))


def parse_range_response(data: BytesLike) -> RangeResult:
    """Parse an etcdserverpb.RangeResponse."""
    buf = _view(data)
    return _range(buf, 0, len(buf))


def parse_put_response(data: BytesLike) -> PutResult:
    """Parse an etcdserverpb.PutResponse."""
    buf = _view(data)
    return _put(buf, 0, len(buf))


def parse_delete_range_response(data: BytesLike) -> DeleteRangeResult:
    """Parse an etcdserverpb.DeleteRangeResponse."""
    buf = _view(data)
    return _delete_range(buf, 0, len(buf))


def parse_txn_response(data: BytesLike) -> TxnResult:
    """Parse an etcdserverpb.TxnResponse."""
    buf = _view(data)
    return _txn(buf, 0, len(buf), 0)


def parse_watch_response(data: BytesLike) -> WatchResult:
    """Parse an etcdserverpb.WatchResponse."""
    buf = _view(data)
    header = _EMPTY_HEADER
    watch_id = compact_revision = 0
    created = canceled = fragment = False
    cancel_reason = ""
    events: List[RawEvent] = []
    f = _Field(buf, 0, len(buf))
    while f.next():
        n = f.number
        if n == 1:
            lo, hi = f.span()
            header = _header(buf, lo, hi)
        elif n == 2:
            watch_id = f.int64()
        elif n == 3:
            created = f.boolean()
        elif n == 4:
            canceled = f.boolean()
        elif n == 5:
            compact_revision = f.int64()
        elif n == 6:
            cancel_reason = f.string()
        elif n == 7:
            fragment = f.boolean()
        elif n == 11:
            lo, hi = f.span()
            events.append(_event(buf, lo, hi))
    return WatchResult(header, watch_id, created, canceled, compact_revision, cancel_reason, fragment, events)


def parse_status_response(data: BytesLike) -> StatusResult:
    """Parse an etcdserverpb.StatusResponse."""
    buf = _view(data)
    header = _EMPTY_HEADER
    version = ""
    db_size = leader = raft_index = raft_term = raft_applied_index = db_size_in_use = 0
    errors: List[str] = []
    is_learner = False
    f = _Field(buf, 0, len(buf))
    while f.next():
        n = f.number
        if n == 1:
            lo, hi = f.span()
            header = _header(buf, lo, hi)
        elif n == 2:
            version = f.string()
        elif n == 3:
            db_size = f.int64()
        elif n == 4:
            leader = f.uint64()
        elif n == 5:
            raft_index = f.uint64()
        elif n == 6:
            raft_term = f.uint64()
        elif n == 7:
            raft_applied_index = f.uint64()
        elif n == 8:
            errors.append(f.string())
        elif n == 9:
            db_size_in_use = f.int64()
        elif n == 10:
            is_learner = f.boolean()
    return StatusResult(
        header, version, db_size, leader, raft_index, raft_term, raft_applied_index, errors, db_size_in_use, is_learner
    )


def parse_authenticate_response(data: BytesLike) -> Tuple[ResponseHeader, str]:
    """Parse an etcdserverpb.AuthenticateResponse into (header, token)."""
    buf = _view(data)
    header = _EMPTY_HEADER
    token = ""
    f = _Field(buf, 0, len(buf))
    while f.next():
        if f.number == 1:
            lo, hi = f.span()
            header = _header(buf, lo, hi)
        elif f.number == 2:
            token = f.string()
    return header, token
