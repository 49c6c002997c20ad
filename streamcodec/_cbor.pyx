# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""CBOR (RFC 8949) encoder and incremental decoder, compiled.

Behaviour (bytes, errors, offsets) is identical to the pure-Python twin
:mod:`streamcodec._cbor_py`, whose docstring states the encoding rules.

Encoding writes C bytes into one reusable scratch area owned by the encoder
(heads and floats by direct stores, strings by memcpy, one capacity check
per item) and then copies the finished frame into the PoolBuffer's
bytearray with a single memcpy.  The frame goes through the scratch area
because its size is unknown until it is encoded, and the contract requires
the destination buffer to be left byte-for-byte untouched when the frame
turns out not to fit (BufferFull) or the object cannot be encoded.  Raw
pass-through knows its size up front and is copied straight into the
destination.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.dict cimport PyDict_Next, PyDict_SetItem, PyDict_Size
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.math cimport INFINITY, NAN, isinf, isnan, ldexp
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove

import collections

from ._framing_py import HARD_MAX_DEPTH, check_limits
from .errors import BufferFull, DecodeError, EncodeError, FrameTooLarge
from .limits import DEFAULT_MAX_FRAME_SIZE, EVENT_TYPES, MAX_DEPTH
from .pool import PoolBuffer
from .protocol import Event

__all__ = ["CBOREncoder", "CBORDecoder"]


cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    const char* PyUnicode_AsUTF8AndSize_checked "PyUnicode_AsUTF8AndSize" (object o, Py_ssize_t* size) except NULL
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(object o) except? -1
    bint PyUnicode_Check(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyLong_Check(object o)
    bint PyFloat_Check(object o)
    bint PyDict_Check(object o)
    bint PyList_Check(object o)
    bint PyTuple_Check(object o)
    bint PyBytes_Check(object o)
    bint PyByteArray_Check(object o)
    bint PyMemoryView_Check(object o)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)


cdef bytes SELF_DESCRIBE = b"\xd9\xd9\xf7"
cdef uint64_t TAG_SELF_DESCRIBE = 55799
cdef object TWO_64 = 1 << 64

#: Scratch bytes kept between calls; a larger area (a huge frame) is freed
#: after the call so one big object does not pin memory in the encoder.
cdef Py_ssize_t KEEP_SCRATCH = 256 * 1024


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


cdef inline void put_u64(uint8_t* p, uint64_t v) noexcept:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (56 - 8 * i))


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


cdef inline uint64_t load_be(const uint8_t* p, int width) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(width):
        v = (v << 8) | p[i]
    return v


cdef object _event_prefixes():
    def text(s):
        data = s.encode()
        return bytes((0x60 | len(data),)) + data
    return {t: SELF_DESCRIBE + b"\xa2" + text("type") + text(t) + text("object") for t in EVENT_TYPES}


cdef dict EVENT_PREFIX = _event_prefixes()


cdef object event_prefix(object type_):
    if type(type_) is not str or type_ not in EVENT_PREFIX:
        raise EncodeError(f"event type must be one of {', '.join(EVENT_TYPES)}; got {type_!r}")
    return EVENT_PREFIX[type_]


cdef tuple target_buffer(object buf):
    if not isinstance(buf, PoolBuffer):
        raise TypeError(f"buf must be a PoolBuffer, not {type(buf).__name__}")
    data = buf.data
    length = buf.length
    if type(data) is not bytearray or type(length) is not int or not 0 <= length <= PyByteArray_GET_SIZE(data):
        raise ValueError("PoolBuffer is inconsistent (data must be a bytearray, 0 <= length <= capacity)")
    return data, length


cdef class _RawView:
    """The bytes of a raw frame argument, held as a buffer while in use."""
    cdef Py_buffer view
    cdef bint held

    def __cinit__(self, object raw):
        self.held = False
        if not (PyBytes_Check(raw) or PyByteArray_Check(raw) or PyMemoryView_Check(raw)):
            raise EncodeError(f"raw frame must be bytes, bytearray or memoryview, not {type(raw).__name__}")
        if PyMemoryView_Check(raw) and not raw.c_contiguous:
            raise EncodeError("raw frame memoryview is not C-contiguous")
        PyObject_GetBuffer(raw, &self.view, PyBUF_SIMPLE)
        self.held = True

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)


cdef class CBOREncoder:
    """Encodes objects, watch events and list bodies as CBOR.

    See :mod:`streamcodec._cbor_py` for the exact encoding rules.
    """

    cdef uint8_t* out  # scratch area
    cdef Py_ssize_t pos
    cdef Py_ssize_t cap
    cdef Py_ssize_t limit
    cdef int _max_depth
    cdef PyObject** path  # containers being encoded, for the cycle report
    cdef bint busy

    content_type = "application/cbor"
    stream_content_type = "application/cbor-seq"

    def __cinit__(self, *args, **kwargs):
        self.out = NULL
        self.path = NULL

    def __init__(self, *, max_frame_size=DEFAULT_MAX_FRAME_SIZE, max_depth=MAX_DEPTH):
        check_limits(max_frame_size, max_depth)
        self.limit = max_frame_size
        self._max_depth = max_depth
        self.cap = min(4096, max_frame_size + 16)
        self.out = <uint8_t*>PyMem_Malloc(self.cap)
        self.path = <PyObject**>PyMem_Malloc((max_depth + 1) * sizeof(PyObject*))
        if self.out == NULL or self.path == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.out)
        PyMem_Free(self.path)

    @property
    def max_frame_size(self):
        return self.limit

    @property
    def max_depth(self):
        return self._max_depth

    # -- scratch area -----------------------------------------------------
    cdef int grow(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t want = self.pos + need
        if want > self.limit + 16:
            # Every write reserves at most 9 bytes beyond what it uses, so
            # a frame that truly fits max_frame_size never gets here.
            raise FrameTooLarge(f"frame exceeds max_frame_size {self.limit}", self.limit)
        cdef Py_ssize_t new_cap = self.cap * 2
        if new_cap < want:
            new_cap = want
        if new_cap > self.limit + 16:
            new_cap = self.limit + 16
        cdef uint8_t* p = <uint8_t*>PyMem_Realloc(self.out, new_cap)
        if p == NULL:
            raise MemoryError()
        self.out = p
        self.cap = new_cap
        return 0

    cdef inline uint8_t* reserve(self, Py_ssize_t n) except NULL:
        if self.pos + n > self.cap:
            self.grow(n)
        return self.out + self.pos

    cdef void shrink(self) noexcept:
        cdef uint8_t* p
        if self.cap > KEEP_SCRATCH:
            p = <uint8_t*>PyMem_Realloc(self.out, 4096)
            if p != NULL:
                self.out = p
                self.cap = 4096

    # -- items ------------------------------------------------------------
    cdef int text(self, object s) except -1:
        cdef const char* data
        cdef Py_ssize_t n
        cdef uint8_t* p
        if PyUnicode_IS_COMPACT_ASCII(s):
            data = <const char*>PyUnicode_DATA(s)
            n = PyUnicode_GET_LENGTH(s)
        else:
            data = utf8_of(s, &n)
        p = self.reserve(n + 9)
        p += put_head(p, 0x60, <uint64_t>n)
        memcpy(p, data, n)
        self.pos = (p - self.out) + n
        return 0

    cdef int byte_string(self, const char* data, Py_ssize_t n) except -1:
        cdef uint8_t* p = self.reserve(n + 9)
        p += put_head(p, 0x40, <uint64_t>n)
        memcpy(p, data, n)
        self.pos = (p - self.out) + n
        return 0

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

    cdef int enter(self, object container, int depth) except -1:
        cdef int i, j
        if depth >= self._max_depth:
            for i in range(depth):
                if self.path[i] == <PyObject*>container:
                    raise EncodeError("cycle: a container contains itself")
                for j in range(i):
                    if self.path[i] == self.path[j]:
                        raise EncodeError("cycle: a container contains itself")
            raise EncodeError(f"nesting deeper than max_depth {self._max_depth}")
        self.path[depth] = <PyObject*>container
        return 0

    cdef int mapping(self, object d, int depth) except -1:
        cdef Py_ssize_t n = PyDict_Size(d)
        cdef Py_ssize_t i = 0, written = 0
        cdef PyObject* k
        cdef PyObject* v
        self.enter(d, depth)
        cdef uint8_t* p = self.reserve(9)
        self.pos += put_head(p, 0xA0, <uint64_t>n)
        while PyDict_Next(d, &i, &k, &v):
            key = <object>k
            if not PyUnicode_Check(key):
                raise EncodeError(f"dict keys must be str, got {type(key).__name__}")
            self.text(key)
            self.item(<object>v, depth + 1)
            written += 1
        if written != n:
            raise EncodeError("dict changed size while being encoded")
        return 0

    cdef int sequence(self, object seq, bint is_list, int depth) except -1:
        cdef Py_ssize_t n = PyList_GET_SIZE(seq) if is_list else PyTuple_GET_SIZE(seq)
        cdef Py_ssize_t i
        self.enter(seq, depth)
        cdef uint8_t* p = self.reserve(9)
        self.pos += put_head(p, 0x80, <uint64_t>n)
        for i in range(n):
            if is_list:
                if i >= PyList_GET_SIZE(seq):
                    raise EncodeError("list changed size while being encoded")
                value = <object>PyList_GET_ITEM(seq, i)
            else:
                value = <object>PyTuple_GET_ITEM(seq, i)
            self.item(value, depth + 1)
        return 0

    cdef int item(self, object o, int depth) except -1:
        cdef type t = type(o)
        cdef uint8_t* p
        if t is str:
            return self.text(o)
        if t is dict:
            return self.mapping(o, depth)
        if t is int:
            return self.integer(o)
        if t is list:
            return self.sequence(o, True, depth)
        if o is None or o is True or o is False:
            p = self.reserve(1)
            p[0] = 0xF6 if o is None else (0xF5 if o is True else 0xF4)
            self.pos += 1
            return 0
        if t is float:
            return self.real(PyFloat_AS_DOUBLE(o))
        if t is tuple:
            return self.sequence(o, False, depth)
        if t is bytes:
            return self.byte_string(PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o))
        return self.item_other(o, depth)

    cdef int item_other(self, object o, int depth) except -1:
        # Subclasses are encoded as their base type; the base type's own
        # storage is read, so no method of the subclass ever runs.
        cdef Py_buffer view
        if PyUnicode_Check(o):
            return self.text(o)
        if PyLong_Check(o):
            return self.integer(o)
        if PyFloat_Check(o):
            return self.real(PyFloat_AS_DOUBLE(o))
        if PyDict_Check(o):
            return self.mapping(o, depth)
        if PyList_Check(o):
            return self.sequence(o, True, depth)
        if PyTuple_Check(o):
            return self.sequence(o, False, depth)
        if PyBytes_Check(o):
            return self.byte_string(PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o))
        if PyByteArray_Check(o):
            return self.byte_string(PyByteArray_AS_STRING(o), PyByteArray_GET_SIZE(o))
        if PyMemoryView_Check(o):
            if not o.c_contiguous:
                raise EncodeError("memoryview is not C-contiguous")
            PyObject_GetBuffer(o, &view, PyBUF_SIMPLE)
            try:
                self.byte_string(<const char*>view.buf, view.len)
            finally:
                PyBuffer_Release(&view)
            return 0
        raise EncodeError(f"cannot encode objects of type {type(o).__name__} in CBOR")

    # -- frames -----------------------------------------------------------
    cdef int begin(self) except -1:
        if self.busy:
            raise RuntimeError("CBOREncoder re-entered while encoding")
        self.busy = True
        self.pos = 0
        return 0

    cdef int put_bytes(self, bytes data) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef uint8_t* p = self.reserve(n)
        memcpy(p, PyBytes_AS_STRING(data), n)
        self.pos += n
        return 0

    cdef int object_frame(self, bytes prefix, object obj) except -1:
        self.put_bytes(prefix)
        self.put_bytes(SELF_DESCRIBE)
        self.item(obj, 0)
        if self.pos > self.limit:
            raise FrameTooLarge(f"frame exceeds max_frame_size {self.limit}", self.limit)
        return 0

    cdef bytes scratch_bytes(self):
        return PyBytes_FromStringAndSize(<char*>self.out, self.pos)

    cdef Py_ssize_t scratch_into(self, object buf) except -1:
        data, length = target_buffer(buf)
        cdef Py_ssize_t start = length
        cdef Py_ssize_t n = self.pos
        if n > PyByteArray_GET_SIZE(data) - start:
            raise BufferFull(
                f"frame of {n} bytes does not fit the {PyByteArray_GET_SIZE(data) - start} bytes left in the buffer"
            )
        memcpy(PyByteArray_AS_STRING(data) + start, self.out, n)
        buf.length = start + n
        return n

    cdef void end(self) noexcept:
        self.busy = False
        self.shrink()

    def encode(self, obj):
        """One object frame: ``d9 d9 f7`` + the item."""
        self.begin()
        try:
            self.object_frame(b"", obj)
            return self.scratch_bytes()
        finally:
            self.end()

    def encode_into(self, obj, buf):
        """Append one object frame to ``buf``; returns its size."""
        target_buffer(buf)
        self.begin()
        try:
            self.object_frame(b"", obj)
            return self.scratch_into(buf)
        finally:
            self.end()

    def encode_event(self, type, obj):
        """One event frame: ``d9 d9 f7`` {"type": type, "object": object frame}."""
        prefix = event_prefix(type)
        self.begin()
        try:
            self.object_frame(prefix, obj)
            return self.scratch_bytes()
        finally:
            self.end()

    def encode_event_into(self, type, obj, buf):
        prefix = event_prefix(type)
        target_buffer(buf)
        self.begin()
        try:
            self.object_frame(prefix, obj)
            return self.scratch_into(buf)
        finally:
            self.end()

    cdef Py_ssize_t raw_size(self, bytes prefix, _RawView raw) except -1:
        cdef const uint8_t* p = <const uint8_t*>raw.view.buf
        if raw.view.len < 4 or p[0] != 0xD9 or p[1] != 0xD9 or p[2] != 0xF7:
            raise EncodeError("raw CBOR frame must start with the self-described tag d9 d9 f7 and hold an item")
        cdef Py_ssize_t n = PyBytes_GET_SIZE(prefix) + raw.view.len
        if n > self.limit:
            raise FrameTooLarge(f"frame of {n} bytes exceeds max_frame_size {self.limit}", self.limit)
        return n

    cdef Py_ssize_t raw_into(self, bytes prefix, object raw_obj, object buf) except -1:
        data, length = target_buffer(buf)
        cdef _RawView raw = _RawView(raw_obj)
        cdef Py_ssize_t n = self.raw_size(prefix, raw)
        cdef Py_ssize_t start = length
        if n > PyByteArray_GET_SIZE(data) - start:
            raise BufferFull(
                f"frame of {n} bytes does not fit the {PyByteArray_GET_SIZE(data) - start} bytes left in the buffer"
            )
        cdef char* dst = PyByteArray_AS_STRING(data) + start
        memcpy(dst, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix))
        # memmove: raw may be a view of this very buffer.
        memmove(dst + PyBytes_GET_SIZE(prefix), raw.view.buf, raw.view.len)
        buf.length = start + n
        return n

    def encode_raw_event(self, type, raw):
        """The event frame of an object frame ``raw`` encoded earlier, embedded verbatim."""
        prefix = event_prefix(type)
        cdef _RawView view = _RawView(raw)
        cdef Py_ssize_t n = self.raw_size(prefix, view)
        out = PyBytes_FromStringAndSize(NULL, n)
        cdef char* dst = PyBytes_AS_STRING(out)
        memcpy(dst, PyBytes_AS_STRING(prefix), PyBytes_GET_SIZE(prefix))
        memcpy(dst + PyBytes_GET_SIZE(prefix), view.view.buf, view.view.len)
        return out

    def encode_raw_event_into(self, type, raw, buf):
        return self.raw_into(event_prefix(type), raw, buf)

    def encode_list_start_into(self, buf, *, kind, api_version, metadata, count=None):
        """``d9 d9 f7`` map(4) {kind, apiVersion, metadata, "items": ``9f``}."""
        if count is not None and (type(count) is not int or count < 0):
            raise ValueError(f"count must be a non-negative int or None, got {count!r}")
        if type(kind) is not str or type(api_version) is not str:
            raise EncodeError("kind and api_version must be str")
        if not isinstance(metadata, dict):
            raise EncodeError(f"metadata must be a dict, not {type(metadata).__name__}")
        target_buffer(buf)
        self.begin()
        try:
            self.put_bytes(SELF_DESCRIBE + b"\xa4")
            self.text("kind")
            self.text(kind)
            self.text("apiVersion")
            self.text(api_version)
            self.text("metadata")
            self.item(metadata, 0)
            self.text("items")
            self.put_bytes(b"\x9f")
            if self.pos > self.limit:
                raise FrameTooLarge(f"frame exceeds max_frame_size {self.limit}", self.limit)
            return self.scratch_into(buf)
        finally:
            self.end()

    def encode_list_item_into(self, obj, buf, index):
        """One item: an object frame (tagged), exactly as ``encode`` writes it."""
        return self.encode_into(obj, buf)

    def encode_raw_list_item_into(self, raw, buf, index):
        """One item from an object frame encoded earlier, copied verbatim."""
        return self.raw_into(b"", raw, buf)

    def encode_list_end_into(self, buf, count):
        """``ff``: closes the items array (and so the list body)."""
        data, length = target_buffer(buf)
        if PyByteArray_GET_SIZE(data) - length < 1:
            raise BufferFull("frame of 1 bytes does not fit the 0 bytes left in the buffer")
        PyByteArray_AS_STRING(data)[<Py_ssize_t>length] = <char>0xFF
        buf.length = length + 1
        return 1


cdef const char* utf8_of(object s, Py_ssize_t* n) except NULL:
    """UTF-8 of a non-ASCII str (cached in the str by CPython)."""
    try:
        return PyUnicode_AsUTF8AndSize_checked(s, n)
    except UnicodeEncodeError:
        raise EncodeError("str contains a lone surrogate (not valid UTF-8)") from None


# ---------------------------------------------------------------------------
# Decoding

cdef struct ScanState:
    Py_ssize_t pos  # next head
    int sp  # open containers on stack
    int64_t tag  # tag waiting for its item, -1: none
    bint complete  # structure done, waiting for the last string's bytes
    int64_t* stack  # (remaining << 1) | is_map, or an INDEF_* code


cdef enum:
    INDEF_ARRAY = -1
    INDEF_MAP_KEY = -2
    INDEF_MAP_VALUE = -3


cdef inline void new_scan(ScanState* st, Py_ssize_t pos) noexcept:
    st.pos = pos
    st.sp = 0
    st.tag = -1
    st.complete = False


cdef class CBORDecoder:
    """Incremental, sans-IO CBOR decoder (see :mod:`streamcodec._cbor_py`)."""

    cdef uint8_t* buf
    cdef Py_ssize_t length  # bytes held in buf
    cdef Py_ssize_t cap
    cdef Py_ssize_t base  # stream offset of buf[0]
    cdef Py_ssize_t frame_start
    cdef Py_ssize_t _max_frame_size
    cdef int _max_depth
    # resumable scanner state of the frame at frame_start
    cdef bint scanning
    cdef ScanState st
    cdef object ready  # deque of (start, end)
    cdef object pending
    cdef object error

    def __cinit__(self, *args, **kwargs):
        self.buf = NULL
        self.st.stack = NULL

    def __init__(self, *, max_frame_size=DEFAULT_MAX_FRAME_SIZE, max_depth=MAX_DEPTH):
        check_limits(max_frame_size, max_depth)
        self._max_frame_size = max_frame_size
        self._max_depth = max_depth
        self.st.stack = <int64_t*>PyMem_Malloc((max_depth + 2) * sizeof(int64_t))
        if self.st.stack == NULL:
            raise MemoryError()
        self.ready = collections.deque()
        self.pending = None
        self.error = None

    def __dealloc__(self):
        PyMem_Free(self.buf)
        PyMem_Free(self.st.stack)

    @property
    def max_frame_size(self):
        return self._max_frame_size

    @property
    def max_depth(self):
        return self._max_depth

    cdef Py_ssize_t scan(self, ScanState* st, const uint8_t* data, Py_ssize_t end, Py_ssize_t frame_start,
                         int depth_limit, Py_ssize_t base) except -2:
        """Mirror of the twin's ``_scan``: the frame's end index, or -1 while incomplete."""
        cdef Py_ssize_t pos = st.pos
        if st.complete:
            return pos if pos <= end else -1
        cdef Py_ssize_t limit = frame_start + self._max_frame_size
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
            done = False
            if major <= 1:
                if indefinite:
                    raise DecodeError("indefinite length on an integer", base + pos)
                done = True
            elif major <= 3:
                if indefinite:
                    raise DecodeError("indefinite-length strings are not supported", base + pos)
                if head_end > limit or arg > <uint64_t>(limit - head_end):
                    raise DecodeError(f"string reaches past max_frame_size {self._max_frame_size}", base + pos)
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
                raise DecodeError(f"frame exceeds max_frame_size {self._max_frame_size}", base + limit)
            if not done:
                continue
            while st.sp:
                top = st.stack[st.sp - 1]
                if top > 0:
                    if (top >> 1) == 1:
                        st.sp -= 1
                        continue
                    st.stack[st.sp - 1] = top - 2
                elif top == INDEF_MAP_KEY:
                    st.stack[st.sp - 1] = INDEF_MAP_VALUE
                elif top == INDEF_MAP_VALUE:
                    st.stack[st.sp - 1] = INDEF_MAP_KEY
                break
            else:
                st.pos = pos
                if pos > end:
                    st.complete = True
                    return -1
                return pos

    # -- building ---------------------------------------------------------
    cdef object build(self, const uint8_t* data, Py_ssize_t* pos, Py_ssize_t base):
        cdef Py_ssize_t p = pos[0]
        cdef uint8_t ib = data[p]
        cdef uint8_t major = ib >> 5
        cdef uint8_t ai = ib & 31
        cdef uint64_t arg
        cdef int width
        cdef bint indefinite = False
        cdef Py_ssize_t i
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
            return decode_text(data, p, <Py_ssize_t>arg, base)
        if major == 4:
            pos[0] = p
            if not indefinite:
                items = PyList_New(<Py_ssize_t>arg)
                for i in range(<Py_ssize_t>arg):
                    value = self.build(data, pos, base)
                    Py_INCREF(value)
                    PyList_SET_ITEM(items, i, value)
                return items
            items = []
            while data[pos[0]] != 0xFF:
                items.append(self.build(data, pos, base))
            pos[0] += 1
            return items
        if major == 5:
            pos[0] = p
            result = {}
            if not indefinite:
                for i in range(<Py_ssize_t>arg):
                    key = self.build(data, pos, base)
                    PyDict_SetItem(result, key, self.build(data, pos, base))
                return result
            while data[pos[0]] != 0xFF:
                key = self.build(data, pos, base)
                PyDict_SetItem(result, key, self.build(data, pos, base))
            pos[0] += 1
            return result
        if major == 6:
            pos[0] = p
            value = self.build(data, pos, base)
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

    cdef check_frame(self, object frame):
        if PyMemoryView_Check(frame):
            if not frame.c_contiguous:
                raise TypeError("decode() needs a C-contiguous buffer")
        elif not (PyBytes_Check(frame) or PyByteArray_Check(frame)):
            raise TypeError(f"decode() takes bytes-like data, not {type(frame).__name__}")

    def decode(self, frame):
        """Decode one complete object frame (no trailing bytes allowed)."""
        self.check_frame(frame)
        cdef Py_buffer view
        PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
        cdef Py_ssize_t n = view.len
        cdef Py_ssize_t end
        cdef Py_ssize_t pos = 0
        cdef ScanState st
        st.stack = NULL
        try:
            if n > self._max_frame_size:
                raise DecodeError(f"frame of {n} bytes exceeds max_frame_size {self._max_frame_size}", self._max_frame_size)
            st.stack = <int64_t*>PyMem_Malloc((self._max_depth + 2) * sizeof(int64_t))
            if st.stack == NULL:
                raise MemoryError()
            new_scan(&st, 0)
            end = self.scan(&st, <const uint8_t*>view.buf, n, 0, self._max_depth, 0)
            if end < 0:
                raise DecodeError("truncated frame", n)
            if end != n:
                raise DecodeError(f"{n - end} bytes after the end of the frame", end)
            return self.build(<const uint8_t*>view.buf, &pos, 0)
        finally:
            PyMem_Free(st.stack)
            PyBuffer_Release(&view)

    # -- stream -----------------------------------------------------------
    cdef int append(self, const uint8_t* data, Py_ssize_t n) except -1:
        cdef Py_ssize_t new_cap
        cdef uint8_t* p
        if self.length + n > self.cap:
            new_cap = max(self.cap * 2, self.length + n, 4096)
            p = <uint8_t*>PyMem_Realloc(self.buf, new_cap)
            if p == NULL:
                raise MemoryError()
            self.buf = p
            self.cap = new_cap
        memcpy(self.buf + self.length, data, n)
        self.length += n
        return 0

    def feed(self, data):
        """Append bytes of the stream; complete frames become iterable events."""
        if self.error is not None:
            raise self.error
        if not (PyBytes_Check(data) or PyByteArray_Check(data) or PyMemoryView_Check(data)):
            raise TypeError(f"feed() takes bytes-like data, not {type(data).__name__}")
        if self.pending is not None:
            return
        cdef Py_buffer view
        if PyMemoryView_Check(data) and not data.c_contiguous:
            data = data.tobytes()
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self.append(<const uint8_t*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        cdef Py_ssize_t end
        while self.frame_start < self.length:
            if not self.scanning:
                new_scan(&self.st, self.frame_start)
                self.scanning = True
            try:
                end = self.scan(&self.st, self.buf, self.length, self.frame_start, self._max_depth + 1, self.base)
            except DecodeError as exc:
                self.fail_scan(exc)
                return
            if end < 0:
                if self.length - self.frame_start > self._max_frame_size:
                    self.fail_scan(DecodeError(
                        f"frame exceeds max_frame_size {self._max_frame_size}",
                        self.base + self.frame_start + self._max_frame_size,
                    ))
                return
            self.ready.append((self.frame_start, end))
            self.frame_start = end
            self.scanning = False

    cdef void fail_scan(self, object exc) noexcept:
        self.pending = exc
        self.length = self.frame_start
        self.scanning = False

    def __iter__(self):
        return self

    def __next__(self):
        cdef Py_ssize_t start, end, pos
        if self.error is not None:
            raise self.error
        if self.ready:
            start, end = self.ready.popleft()
            pos = start
            try:
                obj = self.build(self.buf, &pos, self.base)
                event = make_event(obj, self.base + start)
            except DecodeError as exc:
                self.error = exc
                self.ready.clear()
                self.length = 0
                self.frame_start = 0
                raise
            if not self.ready:
                self.compact()
            return event
        if self.pending is not None:
            self.error = self.pending
            raise self.error
        raise StopIteration

    cdef void compact(self) noexcept:
        cdef Py_ssize_t cut = self.frame_start
        if cut:
            memmove(self.buf, self.buf + cut, self.length - cut)
            self.length -= cut
            self.base += cut
            self.frame_start = 0
            if self.scanning:
                self.st.pos -= cut

    def close(self):
        """End of stream: raises DecodeError if a partial frame is left over."""
        if self.error is not None:
            raise self.error
        if self.pending is not None and not self.ready:
            self.error = self.pending
            raise self.error
        if self.frame_start < self.length:
            self.error = DecodeError(
                f"stream ends inside a frame that starts at byte {self.base + self.frame_start}",
                self.base + self.length,
            )
            raise self.error


cdef object decode_text(const uint8_t* data, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t base):
    try:
        return PyUnicode_DecodeUTF8(<const char*>data + pos, n, NULL)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 in text string: {exc.reason}", base + pos + exc.start) from None


cdef object make_event(object obj, Py_ssize_t offset):
    if type(obj) is not dict or len(obj) != 2 or "type" not in obj or "object" not in obj:
        raise DecodeError('event frame is not a map of exactly "type" and "object"', offset)
    type_ = obj["type"]
    if type_ not in EVENT_TYPES:
        raise DecodeError(f"unknown event type {type_!r}", offset)
    return Event(type_, obj["object"])
