# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""MessagePack encoder and incremental decoder, compiled.

Behaviour (bytes, errors, offsets) is identical to the pure-Python twin
:mod:`streamcodec._msgpack_py`, whose docstring states the encoding rules
(those of ``msgpack.packb(obj, use_bin_type=True)``).  Content type:
``application/vnd.msgpack``.

Encoding writes C bytes into one reusable scratch area owned by the encoder
(heads and numbers by direct stores, strings by memcpy, one capacity check
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
from libc.stdint cimport int8_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memmove

import collections

from ._framing_py import HARD_MAX_DEPTH, check_limits
from .errors import BufferFull, DecodeError, EncodeError, FrameTooLarge
from .limits import DEFAULT_MAX_FRAME_SIZE, EVENT_TYPES, MAX_DEPTH
from .pool import PoolBuffer
from .protocol import Event

__all__ = ["MsgpackEncoder", "MsgpackDecoder"]


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


cdef uint64_t TWO_32 = 0x100000000

#: Scratch bytes kept between calls; a larger area (a huge frame) is freed
#: after the call so one big object does not pin memory in the encoder.
cdef Py_ssize_t KEEP_SCRATCH = 256 * 1024


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


cdef inline void put_u64(uint8_t* p, uint64_t v) noexcept:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (56 - 8 * i))


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


cdef inline uint64_t load_be(const uint8_t* p, int width) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(width):
        v = (v << 8) | p[i]
    return v


cdef object _event_prefixes():
    def text(s):
        data = s.encode()
        return bytes((0xA0 | len(data),)) + data
    return {t: b"\x82" + text("type") + text(t) + text("object") for t in EVENT_TYPES}


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


cdef class MsgpackEncoder:
    """Encodes objects, watch events and list bodies as MessagePack
    (``application/vnd.msgpack``).

    See :mod:`streamcodec._msgpack_py` for the exact encoding rules.
    """

    cdef uint8_t* out  # scratch area
    cdef Py_ssize_t pos
    cdef Py_ssize_t cap
    cdef Py_ssize_t limit
    cdef int _max_depth
    cdef PyObject** path  # containers being encoded, for the cycle report
    cdef bint busy

    content_type = "application/vnd.msgpack"
    stream_content_type = "application/vnd.msgpack"

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
        if <uint64_t>n >= TWO_32:
            too_long("str", n)
        p = self.reserve(n + 5)
        p += put_sized(p, <uint64_t>n, 0xA0, 32, 0xD9, 0xDA, 0xDB)
        memcpy(p, data, n)
        self.pos = (p - self.out) + n
        return 0

    cdef int byte_string(self, const char* data, Py_ssize_t n) except -1:
        if <uint64_t>n >= TWO_32:
            too_long("bin", n)
        cdef uint8_t* p = self.reserve(n + 5)
        p += put_sized(p, <uint64_t>n, 0, 0, 0xC4, 0xC5, 0xC6)
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
        if <uint64_t>n >= TWO_32:
            too_long("map", n)
        cdef uint8_t* p = self.reserve(5)
        self.pos += put_sized(p, <uint64_t>n, 0x80, 16, 0, 0xDE, 0xDF)
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
        if <uint64_t>n >= TWO_32:
            too_long("array", n)
        cdef uint8_t* p = self.reserve(5)
        self.pos += put_sized(p, <uint64_t>n, 0x90, 16, 0, 0xDC, 0xDD)
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
            p[0] = 0xC0 if o is None else (0xC3 if o is True else 0xC2)
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
        raise EncodeError(f"cannot encode objects of type {type(o).__name__} in MessagePack")

    # -- frames -----------------------------------------------------------
    cdef int begin(self) except -1:
        if self.busy:
            raise RuntimeError("MsgpackEncoder re-entered while encoding")
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
        """One object frame: the MessagePack object."""
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
        """One event frame: {"type": type, "object": obj}."""
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
        if raw.view.len == 0:
            raise EncodeError("raw MessagePack frame is empty")
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
        """map(4) {kind, apiVersion, metadata, "items": array head of ``count``}."""
        if count is None:
            raise ValueError("MessagePack has no indefinite-length array: a list body needs count")
        if type(count) is not int or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")
        if type(kind) is not str or type(api_version) is not str:
            raise EncodeError("kind and api_version must be str")
        if not isinstance(metadata, dict):
            raise EncodeError(f"metadata must be a dict, not {type(metadata).__name__}")
        if count >= TWO_32:
            too_long("array", count)
        target_buffer(buf)
        cdef uint8_t* p
        self.begin()
        try:
            self.put_bytes(b"\x84")
            self.text("kind")
            self.text(kind)
            self.text("apiVersion")
            self.text(api_version)
            self.text("metadata")
            self.item(metadata, 0)
            self.text("items")
            p = self.reserve(5)
            self.pos += put_sized(p, <uint64_t>count, 0x90, 16, 0, 0xDC, 0xDD)
            if self.pos > self.limit:
                raise FrameTooLarge(f"frame exceeds max_frame_size {self.limit}", self.limit)
            return self.scratch_into(buf)
        finally:
            self.end()

    def encode_list_item_into(self, obj, buf, index):
        """One item: the object frame, exactly as ``encode`` writes it."""
        return self.encode_into(obj, buf)

    def encode_raw_list_item_into(self, raw, buf, index):
        """One item from an object frame encoded earlier, copied verbatim."""
        return self.raw_into(b"", raw, buf)

    def encode_list_end_into(self, buf, count):
        """Nothing to write: the array's length was given at the start."""
        target_buffer(buf)
        return 0


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
    bint complete  # structure done, waiting for the last str/bin bytes
    int64_t* stack  # (remaining items << 1) | is_map


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


cdef inline void new_scan(ScanState* st, Py_ssize_t pos) noexcept:
    st.pos = pos
    st.sp = 0
    st.complete = False


cdef class MsgpackDecoder:
    """Incremental, sans-IO MessagePack decoder (see :mod:`streamcodec._msgpack_py`)."""

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
                            f"{'str' if kind == K_STR else 'bin'} reaches past max_frame_size {self._max_frame_size}",
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
                raise DecodeError(f"frame exceeds max_frame_size {self._max_frame_size}", base + limit)
            if not done:
                continue
            while st.sp:
                top = st.stack[st.sp - 1]
                if (top >> 1) == 1:
                    st.sp -= 1
                    continue
                st.stack[st.sp - 1] = top - 2
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
        cdef uint8_t b = data[p]
        cdef int kind, arg
        cdef uint64_t n, raw
        cdef Py_ssize_t i
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
            return decode_text(data, p, <Py_ssize_t>n, base)
        if kind == K_BIN:
            pos[0] = p + <Py_ssize_t>n
            return PyBytes_FromStringAndSize(<const char*>data + p, <Py_ssize_t>n)
        pos[0] = p
        if kind == K_ARRAY:
            items = PyList_New(<Py_ssize_t>n)
            for i in range(<Py_ssize_t>n):
                value = self.build(data, pos, base)
                Py_INCREF(value)
                PyList_SET_ITEM(items, i, value)
            return items
        result = {}
        for i in range(<Py_ssize_t>n):
            key = self.build(data, pos, base)
            PyDict_SetItem(result, key, self.build(data, pos, base))
        return result

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
        raise DecodeError(f"invalid UTF-8 in str: {exc.reason}", base + pos + exc.start) from None


cdef object make_event(object obj, Py_ssize_t offset):
    if type(obj) is not dict or len(obj) != 2 or "type" not in obj or "object" not in obj:
        raise DecodeError('event frame is not a map of exactly "type" and "object"', offset)
    type_ = obj["type"]
    if type_ not in EVENT_TYPES:
        raise DecodeError(f"unknown event type {type_!r}", offset)
    return Event(type_, obj["object"])
