# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of :mod:`streamcodec.storage._wire_py`: etcd's protobuf messages, by hand.

Same functions, same results, same exceptions as the pure-Python twin (see
its docstring); the parser walks a raw pointer with explicit bounds checks
against the end of the enclosing message, so no read leaves the buffer.
"""

from libc.stdint cimport int64_t, uint64_t

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

COMPARE_EQUAL = 0
COMPARE_GREATER = 1
COMPARE_LESS = 2
COMPARE_NOT_EQUAL = 3
TARGET_VERSION = 0
TARGET_CREATE = 1
TARGET_MOD = 2
TARGET_VALUE = 3

cdef enum:
    WT_VARINT = 0
    WT_I64 = 1
    WT_LEN = 2
    WT_I32 = 5

cdef object _U64 = 0xFFFFFFFFFFFFFFFF
cdef object _I64_MIN = -(1 << 63)
cdef object _I64_END = 1 << 63


# ---------------------------------------------------------------- encoding


cdef inline void _put_varint(bytearray out, uint64_t value):
    while value >= 0x80:
        out.append(<int>((value & 0x7F) | 0x80))
        value >>= 7
    out.append(<int>value)


cdef inline void _check_int64(object value) except *:
    if not (_I64_MIN <= value < _I64_END):
        raise OverflowError(f"{value} does not fit an int64 field")


cdef inline uint64_t _as_u64(object value) except? 0:
    _check_int64(value)
    return <uint64_t>(<int64_t>value)


cdef inline void _put_int(bytearray out, int field, object value) except *:
    if value:
        _check_int64(value)
        _put_varint(out, <uint64_t>((field << 3) | WT_VARINT))
        _put_varint(out, _as_u64(value))


cdef inline void _put_bool(bytearray out, int field, object value):
    if value:
        out.append((field << 3) | WT_VARINT)
        out.append(1)


cdef inline void _put_bytes(bytearray out, int field, object value, bint always=False) except *:
    cdef Py_ssize_t n = len(value)
    if n or always:
        _put_varint(out, <uint64_t>((field << 3) | WT_LEN))
        _put_varint(out, <uint64_t>n)
        out += value


def prefix_range_end(prefix):
    """The standard etcd range end of all keys starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[len(end) - 1] < 0xFF:
            end[len(end) - 1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


def encode_range_request(key, range_end=b"", *, limit=0, revision=0, serializable=False, keys_only=False,
                         count_only=False):
    """etcdserverpb.RangeRequest."""
    cdef bytearray out = bytearray()
    _put_bytes(out, 1, key, True)
    _put_bytes(out, 2, range_end)
    _put_int(out, 3, limit)
    _put_int(out, 4, revision)
    _put_bool(out, 7, serializable)
    _put_bool(out, 8, keys_only)
    _put_bool(out, 9, count_only)
    return bytes(out)


def encode_put_request(key, value, *, lease=0, prev_kv=False):
    """etcdserverpb.PutRequest."""
    cdef bytearray out = bytearray()
    _put_bytes(out, 1, key, True)
    _put_bytes(out, 2, value)
    _put_int(out, 3, lease)
    _put_bool(out, 4, prev_kv)
    return bytes(out)


def encode_delete_range_request(key, range_end=b"", *, prev_kv=False):
    """etcdserverpb.DeleteRangeRequest."""
    cdef bytearray out = bytearray()
    _put_bytes(out, 1, key, True)
    _put_bytes(out, 2, range_end)
    _put_bool(out, 3, prev_kv)
    return bytes(out)


def encode_compare(key, target, result, operand):
    """etcdserverpb.Compare of ``target`` of ``key`` against ``operand``."""
    if target not in (TARGET_VERSION, TARGET_CREATE, TARGET_MOD, TARGET_VALUE):
        raise ValueError(f"unknown compare target {target}")
    if result not in (COMPARE_EQUAL, COMPARE_GREATER, COMPARE_LESS, COMPARE_NOT_EQUAL):
        raise ValueError(f"unknown compare result {result}")
    cdef bytearray out = bytearray()
    _put_int(out, 1, result)
    _put_int(out, 2, target)
    _put_bytes(out, 3, key, True)
    if target == TARGET_VALUE:
        if isinstance(operand, int):
            raise TypeError("a value compare needs a bytes operand")
        _put_bytes(out, 7, operand, True)
    else:
        if not isinstance(operand, int):
            raise TypeError("a version/revision compare needs an int operand")
        _check_int64(operand)
        _put_varint(out, <uint64_t>(((4 + <int>target) << 3) | WT_VARINT))
        _put_varint(out, _as_u64(operand))
    return bytes(out)


cdef bytes _request_op(int field, message):
    cdef bytearray out = bytearray()
    _put_bytes(out, field, message, True)
    return bytes(out)


def encode_request_op_range(range_request):
    """etcdserverpb.RequestOp holding a RangeRequest."""
    return _request_op(1, range_request)


def encode_request_op_put(put_request):
    """etcdserverpb.RequestOp holding a PutRequest."""
    return _request_op(2, put_request)


def encode_request_op_delete_range(delete_range_request):
    """etcdserverpb.RequestOp holding a DeleteRangeRequest."""
    return _request_op(3, delete_range_request)


def encode_txn_request(compare, success, failure):
    """etcdserverpb.TxnRequest from encoded Compare and RequestOp messages."""
    cdef bytearray out = bytearray()
    for item in compare:
        _put_bytes(out, 1, item, True)
    for item in success:
        _put_bytes(out, 2, item, True)
    for item in failure:
        _put_bytes(out, 3, item, True)
    return bytes(out)


def encode_watch_create_request(key, range_end=b"", *, start_revision=0, progress_notify=False, prev_kv=False,
                                watch_id=0, fragment=False):
    """etcdserverpb.WatchRequest{create_request}."""
    cdef bytearray inner = bytearray()
    _put_bytes(inner, 1, key, True)
    _put_bytes(inner, 2, range_end)
    _put_int(inner, 3, start_revision)
    _put_bool(inner, 4, progress_notify)
    _put_bool(inner, 6, prev_kv)
    _put_int(inner, 7, watch_id)
    _put_bool(inner, 8, fragment)
    cdef bytearray out = bytearray()
    _put_bytes(out, 1, inner, True)
    return bytes(out)


def encode_watch_cancel_request(watch_id):
    """etcdserverpb.WatchRequest{cancel_request}."""
    cdef bytearray inner = bytearray()
    _put_int(inner, 1, watch_id)
    cdef bytearray out = bytearray()
    _put_bytes(out, 2, inner, True)
    return bytes(out)


def encode_watch_progress_request():
    """etcdserverpb.WatchRequest{progress_request} (an empty message, present)."""
    return bytes(((3 << 3) | WT_LEN, 0))


def encode_compaction_request(revision, *, physical=False):
    """etcdserverpb.CompactionRequest."""
    cdef bytearray out = bytearray()
    _put_int(out, 1, revision)
    _put_bool(out, 2, physical)
    return bytes(out)


def encode_authenticate_request(str name, str password):
    """etcdserverpb.AuthenticateRequest."""
    cdef bytearray out = bytearray()
    _put_bytes(out, 1, name.encode("utf-8"))
    _put_bytes(out, 2, password.encode("utf-8"))
    return bytes(out)


# ---------------------------------------------------------------- parsing


cdef struct Cursor:
    const unsigned char* buf
    Py_ssize_t pos
    Py_ssize_t end
    uint64_t number
    int wire_type
    uint64_t value
    Py_ssize_t lo
    Py_ssize_t hi
    Py_ssize_t tag_pos


cdef class _Buf:
    """A parse buffer: the raw pointer plus a Python memoryview for slicing."""
    cdef object view
    cdef const unsigned char[::1] typed
    cdef const unsigned char* ptr
    cdef Py_ssize_t size

    def __cinit__(self, data):
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
            raise TypeError("expected a contiguous buffer of bytes")
        if view.format != "B":
            view = view.cast("B")
        self.view = view
        self.size = len(view)
        if self.size:
            self.typed = view
            self.ptr = &self.typed[0]
        else:
            self.ptr = NULL


cdef inline int _varint(const unsigned char* buf, Py_ssize_t* pos, Py_ssize_t end, uint64_t* out) except -1:
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef Py_ssize_t start = pos[0]
    cdef Py_ssize_t p = start
    cdef unsigned char byte
    while True:
        if p >= end:
            raise MalformedResponse("truncated varint", start)
        byte = buf[p]
        p += 1
        if shift == 63 and byte > 1:
            raise MalformedResponse("varint overflows 64 bits (or runs past 10 bytes)", start)
        result |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            pos[0] = p
            out[0] = result
            return 0
        shift += 7  # the check above stops a 10th byte that continues, so shift never passes 63


cdef inline void _cursor(Cursor* c, const unsigned char* buf, Py_ssize_t start, Py_ssize_t end):
    c.buf = buf
    c.pos = start
    c.end = end
    c.number = 0
    c.wire_type = 0
    c.value = 0
    c.lo = 0
    c.hi = 0
    c.tag_pos = 0


cdef int _next(Cursor* c) except -1:
    """1 and the next field in ``c``, or 0 at the end of the message."""
    cdef uint64_t tag, number, length
    cdef int wire_type
    cdef Py_ssize_t pos
    if c.pos >= c.end:
        return 0
    c.tag_pos = c.pos
    pos = c.pos
    _varint(c.buf, &pos, c.end, &tag)
    number = tag >> 3
    wire_type = <int>(tag & 7)
    if number == 0 or number > 0x1FFFFFFF:
        raise MalformedResponse(f"invalid field number {number}", c.tag_pos)
    if wire_type == WT_VARINT:
        _varint(c.buf, &pos, c.end, &c.value)
    elif wire_type == WT_LEN:
        _varint(c.buf, &pos, c.end, &length)
        if length > <uint64_t>(c.end - pos):
            raise MalformedResponse(f"field {number} length {length} runs past the message end", c.tag_pos)
        c.lo = pos
        c.hi = pos + <Py_ssize_t>length
        pos = c.hi
    elif wire_type == WT_I64:
        if c.end - pos < 8:
            raise MalformedResponse("truncated fixed64", c.tag_pos)
        pos += 8
    elif wire_type == WT_I32:
        if c.end - pos < 4:
            raise MalformedResponse("truncated fixed32", c.tag_pos)
        pos += 4
    else:
        raise MalformedResponse(f"unsupported wire type {wire_type} (field {number})", c.tag_pos)
    c.number = number
    c.wire_type = wire_type
    c.pos = pos
    return 1


cdef inline int _expect(Cursor* c, int wire_type) except -1:
    if c.wire_type != wire_type:
        raise MalformedResponse(
            f"field {c.number} has wire type {c.wire_type}, expected {wire_type}", c.tag_pos
        )
    return 0


cdef inline int64_t _int64(Cursor* c) except? -1:
    _expect(c, WT_VARINT)
    return <int64_t>c.value


cdef inline object _uint64(Cursor* c):
    _expect(c, WT_VARINT)
    return c.value


cdef inline bint _bool(Cursor* c) except? -1:
    _expect(c, WT_VARINT)
    return c.value != 0


cdef inline object _string(Cursor* c):
    _expect(c, WT_LEN)
    try:
        return (<const char*>c.buf)[c.lo:c.hi].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse(f"field {c.number} is not valid UTF-8", c.tag_pos) from None


cdef object _EMPTY_HEADER = ResponseHeader(0, 0, 0, 0)


cdef object _header(_Buf b, Py_ssize_t start, Py_ssize_t end):
    cdef Cursor c
    cdef object cluster_id = 0, member_id = 0, raft_term = 0
    cdef int64_t revision = 0
    _cursor(&c, b.ptr, start, end)
    while _next(&c):
        if c.number == 1:
            cluster_id = _uint64(&c)
        elif c.number == 2:
            member_id = _uint64(&c)
        elif c.number == 3:
            revision = _int64(&c)
        elif c.number == 4:
            raft_term = _uint64(&c)
    return ResponseHeader(cluster_id, member_id, revision, raft_term)


cdef object _key_value(_Buf b, Py_ssize_t start, Py_ssize_t end):
    cdef Cursor c
    cdef Py_ssize_t key_lo = start, key_hi = start, value_lo = start, value_hi = start
    cdef int64_t create_revision = 0, mod_revision = 0, version = 0, lease = 0
    _cursor(&c, b.ptr, start, end)
    while _next(&c):
        if c.number == 1:
            _expect(&c, WT_LEN)
            key_lo = c.lo
            key_hi = c.hi
        elif c.number == 2:
            create_revision = _int64(&c)
        elif c.number == 3:
            mod_revision = _int64(&c)
        elif c.number == 4:
            version = _int64(&c)
        elif c.number == 5:
            _expect(&c, WT_LEN)
            value_lo = c.lo
            value_hi = c.hi
        elif c.number == 6:
            lease = _int64(&c)
    return KeyValue(
        (<const char*>b.ptr)[key_lo:key_hi] if key_hi > key_lo else b"",
        b.view[value_lo:value_hi],
        create_revision, mod_revision, version, lease,
    )


cdef object _range(_Buf b, Py_ssize_t start, Py_ssize_t end):
    cdef Cursor c
    cdef object header = _EMPTY_HEADER
    cdef list kvs = []
    cdef bint more = False
    cdef int64_t count = 0
    _cursor(&c, b.ptr, start, end)
    while _next(&c):
        if c.number == 1:
            _expect(&c, WT_LEN)
            header = _header(b, c.lo, c.hi)
        elif c.number == 2:
            _expect(&c, WT_LEN)
            kvs.append(_key_value(b, c.lo, c.hi))
        elif c.number == 3:
            more = _bool(&c)
        elif c.number == 4:
            count = _int64(&c)
    return RangeResult(header, kvs, more, count)


cdef object _put(_Buf b, Py_ssize_t start, Py_ssize_t end):
    cdef Cursor c
    cdef object header = _EMPTY_HEADER
    cdef object prev_kv = None
    _cursor(&c, b.ptr, start, end)
    while _next(&c):
        if c.number == 1:
            _expect(&c, WT_LEN)
            header = _header(b, c.lo, c.hi)
        elif c.number == 2:
            _expect(&c, WT_LEN)
            prev_kv = _key_value(b, c.lo, c.hi)
    return PutResult(header, prev_kv)


cdef object _delete_range(_Buf b, Py_ssize_t start, Py_ssize_t end):
    cdef Cursor c
    cdef object header = _EMPTY_HEADER
    cdef int64_t deleted = 0
    cdef list prev_kvs = []
    _cursor(&c, b.ptr, start, end)
    while _next(&c):
        if c.number == 1:
            _expect(&c, WT_LEN)
            header = _header(b, c.lo, c.hi)
        elif c.number == 2:
            deleted = _int64(&c)
        elif c.number == 3:
            _expect(&c, WT_LEN)
            prev_kvs.append(_key_value(b, c.lo, c.hi))
    return DeleteRangeResult(header, deleted, prev_kvs)


cdef object _txn(_Buf b, Py_ssize_t start, Py_ssize_t end, int depth):
    cdef Cursor c, op
    cdef object header = _EMPTY_HEADER
    cdef bint succeeded = False
    cdef list responses = []
    cdef str kind
    cdef object result
    if depth > 16:  # etcd itself caps nested txns far lower; this stops hostile recursion
        raise MalformedResponse("transactions nested too deep", start)
    _cursor(&c, b.ptr, start, end)
    while _next(&c):
        if c.number == 1:
            _expect(&c, WT_LEN)
            header = _header(b, c.lo, c.hi)
        elif c.number == 2:
            succeeded = _bool(&c)
        elif c.number == 3:
            _expect(&c, WT_LEN)
            _cursor(&op, b.ptr, c.lo, c.hi)
            kind = ""
            result = None
            while _next(&op):
                if op.number == 1:
                    _expect(&op, WT_LEN)
                    kind = "range"
                    result = _range(b, op.lo, op.hi)
                elif op.number == 2:
                    _expect(&op, WT_LEN)
                    kind = "put"
                    result = _put(b, op.lo, op.hi)
                elif op.number == 3:
                    _expect(&op, WT_LEN)
                    kind = "delete_range"
                    result = _delete_range(b, op.lo, op.hi)
                elif op.number == 4:
                    _expect(&op, WT_LEN)
                    kind = "txn"
                    result = _txn(b, op.lo, op.hi, depth + 1)
            if not kind:
                raise MalformedResponse("ResponseOp without a response", c.lo)
            responses.append((kind, result))
    return TxnResult(header, succeeded, responses)


cdef object _event(_Buf b, Py_ssize_t start, Py_ssize_t end):
    cdef Cursor c
    cdef int64_t event_type = 0
    cdef object kv = None, prev_kv = None
    _cursor(&c, b.ptr, start, end)
    while _next(&c):
        if c.number == 1:
            event_type = _int64(&c)
            if event_type != 0 and event_type != 1:
                raise MalformedResponse(f"unknown event type {event_type}", c.tag_pos)
        elif c.number == 2:
            _expect(&c, WT_LEN)
            kv = _key_value(b, c.lo, c.hi)
        elif c.number == 3:
            _expect(&c, WT_LEN)
            prev_kv = _key_value(b, c.lo, c.hi)
    return RawEvent(event_type, kv, prev_kv)


def parse_response_header(data):
    """Parse an etcdserverpb.ResponseHeader."""
    cdef _Buf b = _Buf(data)
    return _header(b, 0, b.size)


def parse_key_value(data):
    """Parse an mvccpb.KeyValue."""
    cdef _Buf b = _Buf(data)
    return _key_value(b, 0, b.size)


def parse_range_response(data):
    """Parse an etcdserverpb.RangeResponse."""
    cdef _Buf b = _Buf(data)
    return _range(b, 0, b.size)


def parse_put_response(data):
    """Parse an etcdserverpb.PutResponse."""
    cdef _Buf b = _Buf(data)
    return _put(b, 0, b.size)


def parse_delete_range_response(data):
    """Parse an etcdserverpb.DeleteRangeResponse."""
    cdef _Buf b = _Buf(data)
    return _delete_range(b, 0, b.size)


def parse_txn_response(data):
    """Parse an etcdserverpb.TxnResponse."""
    cdef _Buf b = _Buf(data)
    return _txn(b, 0, b.size, 0)


def parse_watch_response(data):
    """Parse an etcdserverpb.WatchResponse."""
    cdef _Buf b = _Buf(data)
    cdef Cursor c
    cdef object header = _EMPTY_HEADER
    cdef int64_t watch_id = 0, compact_revision = 0
    cdef bint created = False, canceled = False, fragment = False
    cdef str cancel_reason = ""
    cdef list events = []
    _cursor(&c, b.ptr, 0, b.size)
    while _next(&c):
        if c.number == 1:
            _expect(&c, WT_LEN)
            header = _header(b, c.lo, c.hi)
        elif c.number == 2:
            watch_id = _int64(&c)
        elif c.number == 3:
            created = _bool(&c)
        elif c.number == 4:
            canceled = _bool(&c)
        elif c.number == 5:
            compact_revision = _int64(&c)
        elif c.number == 6:
            cancel_reason = _string(&c)
        elif c.number == 7:
            fragment = _bool(&c)
        elif c.number == 11:
            _expect(&c, WT_LEN)
            events.append(_event(b, c.lo, c.hi))
    return WatchResult(header, watch_id, created, canceled, compact_revision, cancel_reason, fragment, events)


def parse_status_response(data):
    """Parse an etcdserverpb.StatusResponse."""
    cdef _Buf b = _Buf(data)
    cdef Cursor c
    cdef object header = _EMPTY_HEADER
    cdef str version = ""
    cdef int64_t db_size = 0, db_size_in_use = 0
    cdef object leader = 0, raft_index = 0, raft_term = 0, raft_applied_index = 0
    cdef list errors = []
    cdef bint is_learner = False
    _cursor(&c, b.ptr, 0, b.size)
    while _next(&c):
        if c.number == 1:
            _expect(&c, WT_LEN)
            header = _header(b, c.lo, c.hi)
        elif c.number == 2:
            version = _string(&c)
        elif c.number == 3:
            db_size = _int64(&c)
        elif c.number == 4:
            leader = _uint64(&c)
        elif c.number == 5:
            raft_index = _uint64(&c)
        elif c.number == 6:
            raft_term = _uint64(&c)
        elif c.number == 7:
            raft_applied_index = _uint64(&c)
        elif c.number == 8:
            errors.append(_string(&c))
        elif c.number == 9:
            db_size_in_use = _int64(&c)
        elif c.number == 10:
            is_learner = _bool(&c)
    return StatusResult(
        header, version, db_size, leader, raft_index, raft_term, raft_applied_index, errors, db_size_in_use, is_learner
    )


def parse_authenticate_response(data):
    """Parse an etcdserverpb.AuthenticateResponse into (header, token)."""
    cdef _Buf b = _Buf(data)
    cdef Cursor c
    cdef object header = _EMPTY_HEADER
    cdef str token = ""
    _cursor(&c, b.ptr, 0, b.size)
    while _next(&c):
        if c.number == 1:
            _expect(&c, WT_LEN)
            header = _header(b, c.lo, c.hi)
        elif c.number == 2:
            token = _string(&c)
    return header, token
