# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""CBOR (RFC 8949) encoder and incremental decoder, compiled.

Behaviour (bytes, errors, offsets) is identical to the pure-Python twin
:mod:`streamcodec._cbor_py`, whose docstring states the encoding rules.

This module holds what is CBOR's own: heads, ints, floats, the envelope
bytes, the scanner and the builder.  The encoder plumbing (scratch area,
frames, events, raw pass-through, list bodies) and the decoder's stream
logic come from ``_binary_codec.pxi``, shared with :mod:`streamcodec._msgpack`.
"""

from cpython.float cimport PyFloat_FromDouble
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.ref cimport Py_INCREF
from libc.math cimport INFINITY, NAN, isinf, isnan, ldexp
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from . import _cbor_py

__all__ = ["CBOREncoder", "CBORDecoder"]


# -- what _binary_codec.pxi asks of the format ------------------------------
cdef str FORMAT_NAME = "CBOR"
cdef bytes SELF_DESCRIBE = b"\xd9\xd9\xf7"
cdef bytes OBJECT_TAG = SELF_DESCRIBE
cdef dict EVENT_PREFIX = _cbor_py.EVENT_PREFIXES
cdef bytes LIST_HEAD = SELF_DESCRIBE + b"\xa4"
cdef bytes LIST_END = b"\xff"  # closes the indefinite-length items array

cdef enum:
    NULL_BYTE = 0xF6
    TRUE_BYTE = 0xF5
    FALSE_BYTE = 0xF4
    MAX_HEAD = 9


cdef inline Py_ssize_t put_head(uint8_t* p, uint8_t major, uint64_t n) noexcept:
    """Shortest head of (pre-shifted) ``major`` with argument ``n``; returns its size."""
    if n < 24:
        p[0] = major | <uint8_t>n
        return 1
    if n < 0x100:
        p[0] = major | 24
        p[1] = <uint8_t>n
        return 2
    if n < 0x10000:
        p[0] = major | 25
        p[1] = <uint8_t>(n >> 8)
        p[2] = <uint8_t>n
        return 3
    if n < 0x100000000:
        p[0] = major | 26
        p[1] = <uint8_t>(n >> 24)
        p[2] = <uint8_t>(n >> 16)
        p[3] = <uint8_t>(n >> 8)
        p[4] = <uint8_t>n
        return 5
    p[0] = major | 27
    cdef int i
    for i in range(8):
        p[1 + i] = <uint8_t>(n >> (56 - 8 * i))
    return 9


cdef inline int check_size(str what, Py_ssize_t n) except -1:
    return 0  # a CBOR head carries any size up to 2**64 - 1


cdef inline Py_ssize_t put_bytes_head(uint8_t* p, uint64_t n) noexcept:
    return put_head(p, 0x40, n)


cdef inline Py_ssize_t put_text_head(uint8_t* p, uint64_t n) noexcept:
    return put_head(p, 0x60, n)


cdef inline Py_ssize_t put_array_head(uint8_t* p, uint64_t n) noexcept:
    return put_head(p, 0x80, n)


cdef inline Py_ssize_t put_map_head(uint8_t* p, uint64_t n) noexcept:
    return put_head(p, 0xA0, n)


include "_binary_codec.pxi"


cdef uint64_t TAG_SELF_DESCRIBE = 55799
cdef object TWO_64 = 1 << 64


cdef inline int half_bits(float f) noexcept:
    """The binary16 bits of ``f`` when it converts exactly, else -1."""
    cdef uint32_t bits
    memcpy(&bits, &f, 4)
    cdef uint32_t sign = (bits >> 16) & 0x8000
    cdef int exp = <int>((bits >> 23) & 0xFF)
    cdef uint32_t mant = bits & 0x7FFFFF
    if exp == 0:
        return <int>sign if mant == 0 else -1  # ±0; float32 subnormals are far below half range
    cdef int e = exp - 127
    if -14 <= e <= 15:
        if mant & 0x1FFF:
            return -1
        return <int>(sign | <uint32_t>((e + 15) << 10) | (mant >> 13))
    if -24 <= e < -14:
        mant |= 0x800000
        # value = mant * 2**(e-23); half subnormal m * 2**-24 → m = mant >> -(e+1)
        if mant & ((<uint32_t>1 << (-(e + 1))) - 1):
            return -1
        return <int>(sign | (mant >> (-(e + 1))))
    return -1


cdef inline double half_to_double(uint16_t h) noexcept:
    cdef int e = (h >> 10) & 0x1F
    cdef int m = h & 0x3FF
    cdef double v
    if e == 0:
        v = ldexp(<double>m, -24)
    elif e == 31:
        v = INFINITY if m == 0 else NAN
    else:
        v = ldexp(<double>(m + 1024), e - 25)
    return -v if h & 0x8000 else v


cdef int check_raw_frame(const uint8_t* p, Py_ssize_t n) except -1:
    if n < 4 or p[0] != 0xD9 or p[1] != 0xD9 or p[2] != 0xF7:
        raise EncodeError("raw CBOR frame must start with the self-described tag d9 d9 f7 and hold an item")
    return 0


cdef class CBOREncoder(_ScratchEncoder):
    """Encodes objects, watch events and list bodies as CBOR.

    See :mod:`streamcodec._cbor_py` for the exact encoding rules.
    """

    content_type = "application/cbor"
    stream_content_type = "application/cbor-seq"

    def __init__(self, *, max_frame_size=DEFAULT_MAX_FRAME_SIZE, max_depth=MAX_DEPTH, byte_string_tag=None):
        """``byte_string_tag``: a tag every byte string is enclosed in (Kubernetes: 22, "expected later base64")."""
        super().__init__(max_frame_size=max_frame_size, max_depth=max_depth)
        if byte_string_tag is not None:
            if type(byte_string_tag) is not int or not 0 <= byte_string_tag < 2**64:
                raise ValueError("byte_string_tag must be an int in 0..2**64-1")
            head = bytearray(9)
            self.bytes_prefix = bytes(head[: put_head(<uint8_t*><char*>head, 0xC0, <uint64_t>byte_string_tag)])

    cdef int integer(self, object o) except -1:
        cdef int overflow = 0
        cdef long long v = PyLong_AsLongLongAndOverflow(o, &overflow)
        cdef uint8_t* p
        if overflow == 0:
            p = self.reserve(9)
            if v >= 0:
                self.pos += put_head(p, 0x00, <uint64_t>v)
            else:
                self.pos += put_head(p, 0x20, <uint64_t>(-1 - v))
            return 0
        return self.big_integer(int.__index__(o))

    cdef int big_integer(self, object v) except -1:
        cdef uint8_t* p
        if 0 <= v < TWO_64:
            p = self.reserve(9)
            self.pos += put_head(p, 0x00, PyLong_AsUnsignedLongLong(v))
            return 0
        if -TWO_64 <= v < 0:
            p = self.reserve(9)
            self.pos += put_head(p, 0x20, PyLong_AsUnsignedLongLong(-1 - v))
            return 0
        magnitude = v if v > 0 else -1 - v
        data = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
        p = self.reserve(1)
        p[0] = 0xC2 if v > 0 else 0xC3
        self.pos += 1
        return self.byte_string(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    cdef int real(self, double v) except -1:
        cdef uint8_t* p = self.reserve(9)
        cdef float f
        cdef int h
        cdef uint32_t b32
        cdef uint64_t b64
        if isnan(v):
            p[0] = 0xF9; p[1] = 0x7E; p[2] = 0x00
            self.pos += 3
            return 0
        if isinf(v):
            p[0] = 0xF9; p[1] = 0xFC if v < 0 else 0x7C; p[2] = 0x00
            self.pos += 3
            return 0
        if -3.4028234663852886e38 <= v <= 3.4028234663852886e38:
            f = <float>v
            if <double>f == v:
                h = half_bits(f)
                if h >= 0:
                    p[0] = 0xF9; p[1] = <uint8_t>(h >> 8); p[2] = <uint8_t>h
                    self.pos += 3
                    return 0
                memcpy(&b32, &f, 4)
                p[0] = 0xFA
                p[1] = <uint8_t>(b32 >> 24); p[2] = <uint8_t>(b32 >> 16); p[3] = <uint8_t>(b32 >> 8); p[4] = <uint8_t>b32
                self.pos += 5
                return 0
        memcpy(&b64, &v, 8)
        p[0] = 0xFB
        put_u64(p + 1, b64)
        self.pos += 9
        return 0

    cdef int check_list_count(self, object count) except -1:
        if count is not None and (type(count) is not int or count < 0):
            raise ValueError(f"count must be a non-negative int or None, got {count!r}")
        return 0

    cdef int put_items_head(self, object count) except -1:
        return self.put_bytes(b"\x9f")  # indefinite length: the end marker is ff whatever the count


# ---------------------------------------------------------------------------
# Decoding

cdef Py_ssize_t scan_frame(ScanState st, const uint8_t* data, Py_ssize_t end, Py_ssize_t frame_start,
                           int depth_limit, Py_ssize_t base, Py_ssize_t max_frame_size) except -2:
    """Mirror of the twin's ``_scan``: the frame's end index, or -1 while incomplete."""
    cdef Py_ssize_t pos = st.pos
    if st.complete:
        return pos if pos <= end else -1
    cdef Py_ssize_t limit = frame_start + max_frame_size
    cdef uint8_t ib, major, ai
    cdef uint64_t arg
    cdef bint indefinite, done, at_key
    cdef Py_ssize_t head_end
    cdef int width
    cdef int64_t top, n
    while True:
        if pos >= end:
            st.pos = pos
            return -1
        ib = data[pos]
        major = ib >> 5
        ai = ib & 31
        indefinite = False
        if ai < 24:
            arg = ai
            head_end = pos + 1
        elif ai < 28:
            width = 1 << (ai - 24)
            head_end = pos + 1 + width
            if head_end > end:
                st.pos = pos
                return -1
            arg = load_be(data + pos + 1, width)
        elif ai == 31:
            arg = 0
            indefinite = True
            head_end = pos + 1
        else:
            raise DecodeError(f"reserved additional information {ai}", base + pos)
        top = st.stack[st.sp - 1] if st.sp else 0
        at_key = top == INDEF_MAP_KEY or (top > 0 and (top & 1) == 1 and ((top >> 1) & 1) == 0)
        if at_key and ib != 0xFF and (major != 3 or indefinite or st.tag >= 0):
            raise DecodeError("map key is not a definite-length text string", base + pos)
        if st.tag >= 0:
            if ib == 0xFF:
                # A break cannot be a tag's content: letting it through
                # would close a container the builder never opened.
                raise DecodeError("tag without an item", base + pos)
            if st.tag != <int64_t>TAG_SELF_DESCRIBE:
                if major != 2 or indefinite:
                    raise DecodeError("bignum tag must be followed by a definite byte string", base + pos)
            elif major == 6 and not indefinite and arg == TAG_SELF_DESCRIBE:
                raise DecodeError("self-described tag directly on itself", base + pos)
            st.tag = -1
        if major != 6 and ib != 0xFF:
            count_value(st, base + pos)
        done = False
        if major <= 1:
            if indefinite:
                raise DecodeError("indefinite length on an integer", base + pos)
            done = True
        elif major <= 3:
            if indefinite:
                raise DecodeError("indefinite-length strings are not supported", base + pos)
            if head_end > limit or arg > <uint64_t>(limit - head_end):
                raise DecodeError(f"string reaches past max_frame_size {max_frame_size}", base + pos)
            head_end += <Py_ssize_t>arg
            done = True
        elif major <= 5:
            if st.sp >= depth_limit:
                raise DecodeError(f"nesting deeper than max_depth {depth_limit}", base + pos)
            if indefinite:
                st.stack[st.sp] = INDEF_ARRAY if major == 4 else INDEF_MAP_KEY
                st.sp += 1
            elif arg == 0:
                done = True
            else:
                if head_end >= limit or arg > <uint64_t>(limit - head_end) or (major == 5 and 2 * arg > <uint64_t>(limit - head_end)):
                    raise DecodeError(f"container count {arg} reaches past max_frame_size", base + pos)
                n = <int64_t>(arg if major == 4 else 2 * arg)
                st.stack[st.sp] = (n << 1) | (1 if major == 5 else 0)
                st.sp += 1
        elif major == 6:
            if indefinite:
                raise DecodeError("indefinite length on a tag", base + pos)
            if not (arg == TAG_SELF_DESCRIBE or arg == 2 or arg == 3):
                raise DecodeError(f"unsupported tag {arg}", base + pos)
            st.tag = <int64_t>arg
        else:
            if 20 <= ai <= 22 or 25 <= ai <= 27:
                done = True
            elif ai == 31:
                if st.sp == 0 or not (st.stack[st.sp - 1] == INDEF_ARRAY or st.stack[st.sp - 1] == INDEF_MAP_KEY):
                    raise DecodeError("break outside an indefinite-length container", base + pos)
                st.sp -= 1
                done = True
            else:
                raise DecodeError(f"unsupported simple value (additional information {ai})", base + pos)
        pos = head_end
        if pos > limit:
            raise DecodeError(f"frame exceeds max_frame_size {max_frame_size}", base + limit)
        if done and close_item(st):
            return frame_end(st, pos, end)


cdef object build_item(const uint8_t* data, Py_ssize_t* pos, Py_ssize_t base, bint unique):
    cdef Py_ssize_t p = pos[0]
    cdef uint8_t ib = data[p]
    cdef uint8_t major = ib >> 5
    cdef uint8_t ai = ib & 31
    cdef uint64_t arg
    cdef int width
    cdef bint indefinite = False
    cdef Py_ssize_t i, at
    cdef uint32_t b32
    cdef float f
    cdef uint64_t b64
    cdef double d
    if ai < 24:
        arg = ai
        p += 1
    elif ai < 28:
        width = 1 << (ai - 24)
        arg = load_be(data + p + 1, width)
        if major == 7:
            pos[0] = p + 1 + width
            if ai == 25:
                return PyFloat_FromDouble(half_to_double(<uint16_t>arg))
            if ai == 26:
                b32 = <uint32_t>arg
                memcpy(&f, &b32, 4)
                return PyFloat_FromDouble(<double>f)
            b64 = arg
            memcpy(&d, &b64, 8)
            return PyFloat_FromDouble(d)
        p += 1 + width
    else:
        arg = 0
        indefinite = True
        p += 1
    if major == 0:
        pos[0] = p
        return PyLong_FromUnsignedLongLong(arg)
    if major == 1:
        pos[0] = p
        if arg < (<uint64_t>1 << 63):
            return PyLong_FromLongLong(-1 - <long long>arg)
        return -1 - PyLong_FromUnsignedLongLong(arg)
    if major == 2:
        pos[0] = p + <Py_ssize_t>arg
        return PyBytes_FromStringAndSize(<const char*>data + p, <Py_ssize_t>arg)
    if major == 3:
        pos[0] = p + <Py_ssize_t>arg
        return decode_utf8(data, p, <Py_ssize_t>arg, base, "text string")
    if major == 4:
        pos[0] = p
        if not indefinite:
            items = PyList_New(<Py_ssize_t>arg)
            for i in range(<Py_ssize_t>arg):
                value = build_item(data, pos, base, unique)
                Py_INCREF(value)
                PyList_SET_ITEM(items, i, value)
            return items
        items = []
        while data[pos[0]] != 0xFF:
            items.append(build_item(data, pos, base, unique))
        pos[0] += 1
        return items
    if major == 5:
        pos[0] = p
        result = {}
        if not indefinite:
            for i in range(<Py_ssize_t>arg):
                at = pos[0]
                key = build_item(data, pos, base, unique)
                set_entry(result, key, build_item(data, pos, base, unique), i, unique, base + at)
            return result
        i = 0
        while data[pos[0]] != 0xFF:
            at = pos[0]
            key = build_item(data, pos, base, unique)
            set_entry(result, key, build_item(data, pos, base, unique), i, unique, base + at)
            i += 1
        pos[0] += 1
        return result
    if major == 6:
        pos[0] = p
        value = build_item(data, pos, base, unique)
        if arg == TAG_SELF_DESCRIBE:
            return value
        magnitude = int.from_bytes(value, "big")
        return magnitude if arg == 2 else -1 - magnitude
    pos[0] = p
    if ai == 20:
        return False
    if ai == 21:
        return True
    return None


class CBORDecoder(_CompiledStreamDecoder):
    """Incremental, sans-IO CBOR decoder (see :mod:`streamcodec._cbor_py`)."""
