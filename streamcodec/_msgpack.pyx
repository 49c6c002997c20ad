# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""MessagePack encoder and incremental decoder, compiled.

Behaviour (bytes, errors, offsets) is identical to the pure-Python twin
:mod:`streamcodec._msgpack_py`, whose docstring states the encoding rules
(those of ``msgpack.packb(obj, use_bin_type=True)``).  Content type:
``application/vnd.msgpack``.

This module holds what is MessagePack's own: heads, ints, floats, the
envelope bytes, the scanner and the builder.  The encoder plumbing (scratch
area, frames, events, raw pass-through, list bodies) and the decoder's
stream logic come from ``_binary_codec.pxi``, shared with
:mod:`streamcodec._cbor`.
"""

from cpython.float cimport PyFloat_FromDouble
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int8_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

from . import _msgpack_py

__all__ = ["MsgpackEncoder", "MsgpackDecoder"]


# -- what _binary_codec.pxi asks of the format ------------------------------
cdef str FORMAT_NAME = "MessagePack"
cdef bytes OBJECT_TAG = b""  # an object frame is the object alone
cdef dict EVENT_PREFIX = _msgpack_py.EVENT_PREFIXES
cdef bytes LIST_HEAD = b"\x84"
cdef bytes LIST_END = b""  # the items array's length was given at the start

cdef enum:
    NULL_BYTE = 0xC0
    TRUE_BYTE = 0xC3
    FALSE_BYTE = 0xC2
    MAX_HEAD = 5

cdef uint64_t TWO_32 = 0x100000000


cdef inline Py_ssize_t put_sized(uint8_t* p, uint64_t n, uint8_t fix_base, uint64_t fix_limit,
                                 uint8_t b8, uint8_t b16, uint8_t b32) noexcept:
    """Head of a str/bin/array/map of ``n`` (< 2**32) bytes or entries (b8 = 0: no 8-bit form)."""
    if n < fix_limit:
        p[0] = fix_base | <uint8_t>n
        return 1
    if b8 and n < 0x100:
        p[0] = b8
        p[1] = <uint8_t>n
        return 2
    if n < 0x10000:
        p[0] = b16
        p[1] = <uint8_t>(n >> 8)
        p[2] = <uint8_t>n
        return 3
    p[0] = b32
    p[1] = <uint8_t>(n >> 24)
    p[2] = <uint8_t>(n >> 16)
    p[3] = <uint8_t>(n >> 8)
    p[4] = <uint8_t>n
    return 5


cdef int too_long(str what, uint64_t n) except -1:
    raise EncodeError(f"{what} of {n} is too long for MessagePack (at most 2**32 - 1)")


cdef inline int check_size(str what, Py_ssize_t n) except -1:
    if <uint64_t>n >= TWO_32:
        too_long(what, n)
    return 0


cdef inline Py_ssize_t put_text_head(uint8_t* p, uint64_t n) noexcept:
    return put_sized(p, n, 0xA0, 32, 0xD9, 0xDA, 0xDB)


cdef inline Py_ssize_t put_bytes_head(uint8_t* p, uint64_t n) noexcept:
    return put_sized(p, n, 0, 0, 0xC4, 0xC5, 0xC6)


cdef inline Py_ssize_t put_array_head(uint8_t* p, uint64_t n) noexcept:
    return put_sized(p, n, 0x90, 16, 0, 0xDC, 0xDD)


cdef inline Py_ssize_t put_map_head(uint8_t* p, uint64_t n) noexcept:
    return put_sized(p, n, 0x80, 16, 0, 0xDE, 0xDF)


include "_binary_codec.pxi"


cdef inline void put_u32(uint8_t* p, uint32_t v) noexcept:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline Py_ssize_t put_uint(uint8_t* p, uint64_t v) noexcept:
    if v < 0x80:
        p[0] = <uint8_t>v
        return 1
    if v < 0x100:
        p[0] = 0xCC
        p[1] = <uint8_t>v
        return 2
    if v < 0x10000:
        p[0] = 0xCD
        p[1] = <uint8_t>(v >> 8)
        p[2] = <uint8_t>v
        return 3
    if v < TWO_32:
        p[0] = 0xCE
        put_u32(p + 1, <uint32_t>v)
        return 5
    p[0] = 0xCF
    put_u64(p + 1, v)
    return 9


cdef int check_raw_frame(const uint8_t* p, Py_ssize_t n) except -1:
    if n == 0:
        raise EncodeError("raw MessagePack frame is empty")
    return 0


cdef class MsgpackEncoder(_ScratchEncoder):
    """Encodes objects, watch events and list bodies as MessagePack
    (``application/vnd.msgpack``).

    See :mod:`streamcodec._msgpack_py` for the exact encoding rules.
    """

    content_type = "application/vnd.msgpack"
    stream_content_type = "application/vnd.msgpack"

    cdef int integer(self, object o) except -1:
        cdef int overflow = 0
        cdef long long v = PyLong_AsLongLongAndOverflow(o, &overflow)
        cdef uint8_t* p
        if overflow == 0:
            p = self.reserve(9)
            if v >= 0:
                self.pos += put_uint(p, <uint64_t>v)
            elif v >= -32:
                p[0] = <uint8_t>(v & 0xFF)
                self.pos += 1
            elif v >= -0x80:
                p[0] = 0xD0
                p[1] = <uint8_t>(v & 0xFF)
                self.pos += 2
            elif v >= -0x8000:
                p[0] = 0xD1
                p[1] = <uint8_t>((v >> 8) & 0xFF)
                p[2] = <uint8_t>(v & 0xFF)
                self.pos += 3
            elif v >= -0x80000000:
                p[0] = 0xD2
                put_u32(p + 1, <uint32_t>(<uint64_t>v & 0xFFFFFFFF))
                self.pos += 5
            else:
                p[0] = 0xD3
                put_u64(p + 1, <uint64_t>v)
                self.pos += 9
            return 0
        value = int.__index__(o)
        if overflow > 0 and value < (1 << 64):
            p = self.reserve(9)
            self.pos += put_uint(p, PyLong_AsUnsignedLongLong(value))
            return 0
        raise EncodeError(f"int {value} is outside MessagePack's range [-2**63, 2**64)")

    cdef int real(self, double v) except -1:
        cdef uint8_t* p = self.reserve(9)
        cdef uint64_t b64
        memcpy(&b64, &v, 8)
        p[0] = 0xCB
        put_u64(p + 1, b64)
        self.pos += 9
        return 0

    cdef int check_list_count(self, object count) except -1:
        if count is None:
            raise ValueError("MessagePack has no indefinite-length array: a list body needs count")
        if type(count) is not int or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")
        if count >= TWO_32:  # compared as Python ints: no overflow for any count
            raise EncodeError(f"array of {count} is too long for MessagePack (at most 2**32 - 1)")
        return 0

    cdef int put_items_head(self, object count) except -1:
        cdef uint8_t* p = self.reserve(MAX_HEAD)
        self.pos += put_array_head(p, <uint64_t>count)
        return 0


# ---------------------------------------------------------------------------
# Decoding

# For each first byte: how to read the rest (the twin's _LEAD table).
cdef enum:
    K_SCALAR = 0  # LEAD_ARG more bytes
    K_STR = 1  # length in LEAD_ARG bytes (fixstr: -len-1)
    K_BIN = 2
    K_ARRAY = 3  # count in LEAD_ARG bytes (fix form: -n-1)
    K_MAP = 4
    K_INVALID = 5

cdef int8_t LEAD_KIND[256]
cdef int8_t LEAD_ARG[256]


cdef void _fill_lead() noexcept:
    cdef int b
    for b in range(256):
        if b <= 0x7F or b >= 0xE0 or b == 0xC0 or b == 0xC2 or b == 0xC3:
            LEAD_KIND[b] = K_SCALAR; LEAD_ARG[b] = 0
        elif b <= 0x8F:
            LEAD_KIND[b] = K_MAP; LEAD_ARG[b] = -(b & 0x0F) - 1
        elif b <= 0x9F:
            LEAD_KIND[b] = K_ARRAY; LEAD_ARG[b] = -(b & 0x0F) - 1
        elif b <= 0xBF:
            LEAD_KIND[b] = K_STR; LEAD_ARG[b] = -(b & 0x1F) - 1
        elif 0xC4 <= b <= 0xC6:
            LEAD_KIND[b] = K_BIN; LEAD_ARG[b] = 1 << (b - 0xC4)
        elif b == 0xCA:
            LEAD_KIND[b] = K_SCALAR; LEAD_ARG[b] = 4
        elif b == 0xCB:
            LEAD_KIND[b] = K_SCALAR; LEAD_ARG[b] = 8
        elif 0xCC <= b <= 0xCF:
            LEAD_KIND[b] = K_SCALAR; LEAD_ARG[b] = 1 << (b - 0xCC)
        elif 0xD0 <= b <= 0xD3:
            LEAD_KIND[b] = K_SCALAR; LEAD_ARG[b] = 1 << (b - 0xD0)
        elif 0xD9 <= b <= 0xDB:
            LEAD_KIND[b] = K_STR; LEAD_ARG[b] = 1 << (b - 0xD9)
        elif 0xDC <= b <= 0xDD:
            LEAD_KIND[b] = K_ARRAY; LEAD_ARG[b] = 2 << (b - 0xDC)
        elif 0xDE <= b <= 0xDF:
            LEAD_KIND[b] = K_MAP; LEAD_ARG[b] = 2 << (b - 0xDE)
        else:
            LEAD_KIND[b] = K_INVALID; LEAD_ARG[b] = 0


_fill_lead()


cdef Py_ssize_t scan_frame(ScanState st, const uint8_t* data, Py_ssize_t end, Py_ssize_t frame_start,
                           int depth_limit, Py_ssize_t base, Py_ssize_t max_frame_size) except -2:
    """Mirror of the twin's ``_scan``: the frame's end index, or -1 while incomplete."""
    cdef Py_ssize_t pos = st.pos
    if st.complete:
        return pos if pos <= end else -1
    cdef Py_ssize_t limit = frame_start + max_frame_size
    cdef Py_ssize_t head
    cdef uint8_t b
    cdef int kind, arg
    cdef uint64_t n, items
    cdef int64_t top
    cdef bint done
    while True:
        if pos >= end:
            st.pos = pos
            return -1
        head = pos
        b = data[pos]
        kind = LEAD_KIND[b]
        arg = LEAD_ARG[b]
        top = st.stack[st.sp - 1] if st.sp else 0
        if (top & 1) and ((top >> 1) & 1) == 0 and kind != K_STR:
            raise DecodeError("map key is not a str", base + head)
        count_value(st, base + head)
        done = True
        if kind == K_SCALAR:
            pos += 1 + arg
        elif kind == K_INVALID:
            raise DecodeError(f"unsupported type byte 0x{b:02x}", base + head)
        else:
            if arg < 0:
                n = <uint64_t>(-arg - 1)
                pos += 1
            else:
                if pos + 1 + arg > end:
                    st.pos = pos
                    return -1
                n = load_be(data + pos + 1, arg)
                pos += 1 + arg
            if kind <= K_BIN:
                if pos > limit or n > <uint64_t>(limit - pos):
                    raise DecodeError(
                        f"{'str' if kind == K_STR else 'bin'} reaches past max_frame_size {max_frame_size}",
                        base + head)
                pos += <Py_ssize_t>n
            elif n:
                if st.sp >= depth_limit:
                    raise DecodeError(f"nesting deeper than max_depth {depth_limit}", base + head)
                items = n if kind == K_ARRAY else 2 * n  # n < 2**32: no overflow
                if pos > limit or items > <uint64_t>(limit - pos):
                    raise DecodeError(f"container count {n} reaches past max_frame_size", base + head)
                st.stack[st.sp] = <int64_t>((items << 1) | (1 if kind == K_MAP else 0))
                st.sp += 1
                done = False
            elif st.sp >= depth_limit:
                raise DecodeError(f"nesting deeper than max_depth {depth_limit}", base + head)
        if pos > limit:
            raise DecodeError(f"frame exceeds max_frame_size {max_frame_size}", base + limit)
        if done and close_item(st):
            return frame_end(st, pos, end)


cdef object build_item(const uint8_t* data, Py_ssize_t* pos, Py_ssize_t base, bint unique):
    cdef Py_ssize_t p = pos[0]
    cdef uint8_t b = data[p]
    cdef int kind, arg
    cdef uint64_t n, raw
    cdef Py_ssize_t i, at
    cdef uint32_t b32
    cdef float f
    cdef double d
    if b <= 0x7F:
        pos[0] = p + 1
        return PyLong_FromLongLong(b)
    if b >= 0xE0:
        pos[0] = p + 1
        return PyLong_FromLongLong(<int>b - 0x100)
    kind = LEAD_KIND[b]
    arg = LEAD_ARG[b]
    if kind == K_SCALAR:
        pos[0] = p + 1 + arg
        if b == 0xC0:
            return None
        if b == 0xC2:
            return False
        if b == 0xC3:
            return True
        raw = load_be(data + p + 1, arg)
        if b == 0xCA:
            b32 = <uint32_t>raw
            memcpy(&f, &b32, 4)
            return PyFloat_FromDouble(<double>f)
        if b == 0xCB:
            memcpy(&d, &raw, 8)
            return PyFloat_FromDouble(d)
        if b <= 0xCF:
            return PyLong_FromUnsignedLongLong(raw)
        # int 8..64: sign-extend from 8*arg bits
        return PyLong_FromLongLong((<int64_t>(raw << (64 - 8 * arg))) >> (64 - 8 * arg))
    if arg < 0:
        n = <uint64_t>(-arg - 1)
        p += 1
    else:
        n = load_be(data + p + 1, arg)
        p += 1 + arg
    if kind == K_STR:
        pos[0] = p + <Py_ssize_t>n
        return decode_utf8(data, p, <Py_ssize_t>n, base, "str")
    if kind == K_BIN:
        pos[0] = p + <Py_ssize_t>n
        return PyBytes_FromStringAndSize(<const char*>data + p, <Py_ssize_t>n)
    pos[0] = p
    if kind == K_ARRAY:
        items = PyList_New(<Py_ssize_t>n)
        for i in range(<Py_ssize_t>n):
            value = build_item(data, pos, base, unique)
            Py_INCREF(value)
            PyList_SET_ITEM(items, i, value)
        return items
    result = {}
    for i in range(<Py_ssize_t>n):
        at = pos[0]
        key = build_item(data, pos, base, unique)
        set_entry(result, key, build_item(data, pos, base, unique), i, unique, base + at)
    return result


class MsgpackDecoder(_CompiledStreamDecoder):
    """Incremental, sans-IO MessagePack decoder (see :mod:`streamcodec._msgpack_py`)."""
