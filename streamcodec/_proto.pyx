# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kubernetes-style protobuf codec, compiled.  Behaviour is identical to
``_proto_py.py`` (read its module docstring and ``streamcodec.proto`` for the
wire format).

Encoding is two passes over the object.  The size pass validates every value,
collects each dict's entries (key UTF-8 pointer, length, value) into one flat
array and sorts them, and records the body size of every Struct/ListValue in
pre-order.  The write pass walks the same entries in the same order, reading
sizes back, and writes straight into the destination memory (a bytes object
or the PoolBuffer's bytearray) - no intermediate buffers, no resizing.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_CheckExact
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.dict cimport PyDict_Next, PyDict_GetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_Append
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.exc cimport PyErr_Clear
from libc.string cimport memcmp, memcpy, memmove
from libc.stdlib cimport malloc, realloc, free, qsort
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from ._framing_py import check_max_values
from .errors import BufferFull, DecodeError, EncodeError, FrameTooLarge, TooManyValues
from .limits import DEFAULT_MAX_FRAME_SIZE, EVENT_TYPES, MAX_DEPTH, MAX_DEPTH_LIMIT
from .protocol import Event

__all__ = ["ProtoEncoder", "ProtoDecoder"]

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    Py_ssize_t PyDict_GET_SIZE(object d)
    bint PyUnicode_Check(object o)
    bint PyLong_Check(object o)
    bint PyFloat_Check(object o)
    bint PyDict_Check(object o)
    bint PyList_Check(object o)
    bint PyTuple_Check(object o)
    bint PyBytes_Check(object o)
    bint PyByteArray_Check(object o)
    bint PyMemoryView_Check(object o)
    bint PyBool_Check(object o)

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.streamcodec.struct+protobuf"
STREAM_CONTENT_TYPE = "application/vnd.streamcodec.struct+protobuf;stream=watch"
cdef Py_ssize_t MAX_PREFIXED = 0xFFFFFFFF  # the most a 4-byte length prefix describes
cdef long long INT_LIMIT = 9007199254740992  # 2**53: larger ints are not all exact doubles

cdef frozenset _EVENT_TYPES = frozenset(EVENT_TYPES)
cdef dict _ENCODED_EVENT_TYPES = {t: t.encode("ascii") for t in EVENT_TYPES}
cdef const char* B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# Value kinds found by classify()
cdef enum:
    K_NULL = 0
    K_BOOL = 1
    K_NUM = 2
    K_STR = 3
    K_DICT = 4
    K_LIST = 5
    K_BYTES = 6
    K_OTHER = 7

cdef struct Entry:
    const char* key
    Py_ssize_t klen
    PyObject* value


cdef void _check_limits(object max_frame_size, object max_depth) except *:
    if type(max_frame_size) is not int or max_frame_size < 1:
        raise ValueError("max_frame_size must be a positive int")
    if type(max_depth) is not int or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be an int in 1..{MAX_DEPTH_LIMIT}")


cdef inline int varint_len(uint64_t v) noexcept nogil:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline char* write_varint(char* p, uint64_t v) noexcept nogil:
    while v >= 0x80:
        p[0] = <char>((v & 0x7F) | 0x80)
        p += 1
        v >>= 7
    p[0] = <char>v
    return p + 1


cdef inline Py_ssize_t len_field_size(Py_ssize_t n) noexcept nogil:
    """Size of a one-byte tag + length prefix + n payload bytes."""
    return 1 + varint_len(<uint64_t>n) + n


cdef inline char* write_double(char* p, double d) noexcept nogil:
    cdef uint64_t bits
    memcpy(&bits, &d, 8)
    cdef int i
    for i in range(8):
        p[i] = <char>(bits & 0xFF)
        bits >>= 8
    return p + 8


cdef inline char* write_u32be(char* p, uint64_t v) noexcept nogil:
    p[0] = <char>((v >> 24) & 0xFF)
    p[1] = <char>((v >> 16) & 0xFF)
    p[2] = <char>((v >> 8) & 0xFF)
    p[3] = <char>(v & 0xFF)
    return p + 4


cdef inline Py_ssize_t b64_len(Py_ssize_t n) noexcept nogil:
    return (n + 2) // 3 * 4


cdef char* write_b64(char* p, const uint8_t* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef uint32_t v
    while i + 3 <= n:
        v = (<uint32_t>s[i] << 16) | (<uint32_t>s[i + 1] << 8) | s[i + 2]
        p[0] = B64[(v >> 18) & 63]
        p[1] = B64[(v >> 12) & 63]
        p[2] = B64[(v >> 6) & 63]
        p[3] = B64[v & 63]
        p += 4
        i += 3
    if n - i == 1:
        v = <uint32_t>s[i] << 16
        p[0] = B64[(v >> 18) & 63]
        p[1] = B64[(v >> 12) & 63]
        p[2] = b'='
        p[3] = b'='
        p += 4
    elif n - i == 2:
        v = (<uint32_t>s[i] << 16) | (<uint32_t>s[i + 1] << 8)
        p[0] = B64[(v >> 18) & 63]
        p[1] = B64[(v >> 12) & 63]
        p[2] = B64[(v >> 6) & 63]
        p[3] = b'='
        p += 4
    return p


cdef inline int key_cmp(const Entry* a, const Entry* b) noexcept nogil:
    cdef Py_ssize_t n = a.klen if a.klen < b.klen else b.klen
    cdef int c = memcmp(a.key, b.key, <size_t>n)
    if c != 0:
        return c
    return (a.klen > b.klen) - (a.klen < b.klen)


cdef int entry_qsort_cmp(const void* a, const void* b) noexcept nogil:
    return key_cmp(<const Entry*>a, <const Entry*>b)


cdef inline int classify(object o) noexcept:
    """The kind of a value; exact types first (the common case), then subclasses."""
    cdef type t = type(o)
    if t is str:
        return K_STR
    if t is dict:
        return K_DICT
    if t is list or t is tuple:
        return K_LIST
    if t is int:
        return K_NUM
    if t is float:
        return K_NUM
    if o is None:
        return K_NULL
    if t is bool:
        return K_BOOL
    # Subclasses, in the twin's order (str, int, float, dict, list/tuple, bytes-like).
    if PyUnicode_Check(o):
        return K_STR
    if PyLong_Check(o):
        return K_NUM
    if PyFloat_Check(o):
        return K_NUM
    if PyDict_Check(o):
        return K_DICT
    if PyList_Check(o) or PyTuple_Check(o):
        return K_LIST
    if PyBytes_Check(o) or PyByteArray_Check(o) or PyMemoryView_Check(o):
        return K_BYTES
    return K_OTHER


cdef inline double number_value(object o) except? -1.0:
    cdef int overflow = 0
    cdef long long v
    if PyFloat_Check(o):
        return PyFloat_AS_DOUBLE(o)
    v = PyLong_AsLongLongAndOverflow(o, &overflow)
    if overflow != 0 or v > INT_LIMIT or v < -INT_LIMIT:
        raise EncodeError(f"int {int.__int__(o)} is beyond ±2**53: a double cannot carry it exactly")
    return <double>v


cdef const char* utf8_of(object s, Py_ssize_t* n) except NULL:
    cdef const char* p
    try:
        p = PyUnicode_AsUTF8AndSize(s, n)
    except UnicodeEncodeError:
        raise EncodeError("string contains a lone surrogate and is not valid UTF-8") from None
    return p


cdef Py_ssize_t bytes_len(object o) except -1:
    cdef Py_buffer view
    try:
        PyObject_GetBuffer(o, &view, PyBUF_SIMPLE)
    except (ValueError, TypeError, BufferError) as exc:
        if PyMemoryView_Check(o) and isinstance(exc, BufferError):
            raise EncodeError("memoryview is not C-contiguous") from None
        raise EncodeError(f"cannot read bytes of {type(o).__name__}: {exc}") from None
    cdef Py_ssize_t n = view.len
    PyBuffer_Release(&view)
    return n


cdef class ProtoEncoder:
    """Encodes objects, watch events and list bodies in Kubernetes' protobuf framing.

    ``encode`` gives an object frame: ``k8s\\x00`` + ``runtime.Unknown`` whose
    ``raw`` is the object as a ``google.protobuf.Struct`` (the object must be
    a dict; numbers become doubles, bytes become base64 strings).  Event
    frames and list bodies use Kubernetes' length-delimited framing
    (4-byte big-endian length + message); see ``streamcodec.proto``.
    """

    content_type = CONTENT_TYPE
    stream_content_type = STREAM_CONTENT_TYPE

    cdef Py_ssize_t _max_frame_size
    cdef int _max_depth
    # scratch of one encoding run, kept between runs to avoid allocations
    cdef Py_ssize_t* sizes
    cdef Py_ssize_t sizes_cap, nsizes, scur
    cdef Entry* ents
    cdef Py_ssize_t ents_cap, nents, ecur
    cdef PyObject** path
    cdef bint busy
    # results of the last size pass
    cdef Py_ssize_t struct_size
    cdef const char* av
    cdef Py_ssize_t avlen
    cdef const char* kind
    cdef Py_ssize_t kindlen

    def __cinit__(self, *, max_frame_size=DEFAULT_MAX_FRAME_SIZE, max_depth=MAX_DEPTH):
        _check_limits(max_frame_size, max_depth)
        self._max_frame_size = max_frame_size
        self._max_depth = max_depth
        self.sizes_cap = 64
        self.sizes = <Py_ssize_t*>malloc(self.sizes_cap * sizeof(Py_ssize_t))
        self.ents_cap = 256
        self.ents = <Entry*>malloc(self.ents_cap * sizeof(Entry))
        self.path = <PyObject**>malloc((max_depth + 1) * sizeof(PyObject*))
        if self.sizes == NULL or self.ents == NULL or self.path == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.sizes)
        free(self.ents)
        free(self.path)

    @property
    def max_frame_size(self):
        return self._max_frame_size

    @property
    def max_depth(self):
        return self._max_depth

    # -- size pass -----------------------------------------------------------
    cdef Py_ssize_t _reserve_size(self) except -1:
        cdef Py_ssize_t* grown
        if self.nsizes == self.sizes_cap:
            grown = <Py_ssize_t*>realloc(self.sizes, 2 * self.sizes_cap * sizeof(Py_ssize_t))
            if grown == NULL:
                raise MemoryError()
            self.sizes = grown
            self.sizes_cap *= 2
        self.nsizes += 1
        return self.nsizes - 1

    cdef Py_ssize_t _reserve_entries(self, Py_ssize_t n) except -1:
        cdef Entry* grown
        cdef Py_ssize_t cap = self.ents_cap
        if self.nents + n > cap:
            while self.nents + n > cap:
                cap *= 2
            grown = <Entry*>realloc(self.ents, cap * sizeof(Entry))
            if grown == NULL:
                raise MemoryError()
            self.ents = grown
            self.ents_cap = cap
        self.nents += n
        return self.nents - n

    cdef int _enter(self, object container, int depth) except -1:
        cdef int i
        if depth > self._max_depth:
            for i in range(depth - 1):
                if self.path[i] == <PyObject*>container:
                    raise EncodeError("cycle: a container contains itself")
            raise EncodeError(f"nesting deeper than max_depth ({self._max_depth})")
        self.path[depth - 1] = <PyObject*>container
        return 0

    cdef Py_ssize_t _value_size(self, object o, int depth) except -1:
        """Size of the body of a google.protobuf.Value holding ``o``."""
        cdef int k = classify(o)
        cdef Py_ssize_t n
        if k == K_STR:
            utf8_of(o, &n)
            return len_field_size(n)
        if k == K_DICT:
            return len_field_size(self._struct_size(o, depth + 1))
        if k == K_LIST:
            return len_field_size(self._list_size(o, depth + 1))
        if k == K_NUM:
            number_value(o)
            return 9
        if k == K_NULL or k == K_BOOL:
            return 2
        if k == K_BYTES:
            return len_field_size(b64_len(bytes_len(o)))
        raise EncodeError(f"cannot encode object of type {type(o).__name__}")

    cdef Py_ssize_t _struct_size(self, object d, int depth) except -1:
        self._enter(d, depth)
        cdef Py_ssize_t slot = self._reserve_size()
        cdef Py_ssize_t n = PyDict_GET_SIZE(d)
        cdef Py_ssize_t base = self._reserve_entries(n)
        cdef Py_ssize_t pos = 0, i = base, j
        cdef PyObject* key
        cdef PyObject* value
        cdef Entry tmp
        cdef Entry* e
        while PyDict_Next(d, &pos, &key, &value):
            if not PyUnicode_Check(<object>key):
                raise EncodeError(f"dict key must be str, not {type(<object>key).__name__}")
            e = &self.ents[i]
            e.key = utf8_of(<object>key, &e.klen)
            e.value = value
            i += 1
        e = &self.ents[base]
        if n > 16:
            qsort(e, <size_t>n, sizeof(Entry), entry_qsort_cmp)
        else:
            # insertion sort: linear on already sorted keys
            for i in range(1, n):
                tmp = e[i]
                j = i - 1
                while j >= 0 and key_cmp(&e[j], &tmp) > 0:
                    e[j + 1] = e[j]
                    j -= 1
                e[j + 1] = tmp
        for i in range(1, n):
            if key_cmp(&e[i - 1], &e[i]) == 0:
                raise EncodeError("two dict keys have the same text")
        cdef Py_ssize_t total = 0, vs
        for i in range(base, base + n):
            # self.ents may move while children are sized: index it afresh
            vs = self._value_size(<object>self.ents[i].value, depth)
            total += len_field_size(len_field_size(self.ents[i].klen) + len_field_size(vs))
        self.sizes[slot] = total
        return total

    cdef Py_ssize_t _list_size(self, object seq, int depth) except -1:
        self._enter(seq, depth)
        cdef Py_ssize_t slot = self._reserve_size()
        cdef Py_ssize_t total = 0, i, n
        if PyList_Check(seq):
            n = PyList_GET_SIZE(seq)
            i = 0
            # re-read the size each time: sizing runs no Python code, but be safe
            while i < PyList_GET_SIZE(seq):
                total += len_field_size(self._value_size(<object>PyList_GET_ITEM(seq, i), depth))
                i += 1
        else:
            n = PyTuple_GET_SIZE(seq)
            for i in range(n):
                total += len_field_size(self._value_size(<object>PyTuple_GET_ITEM(seq, i), depth))
        self.sizes[slot] = total
        return total

    cdef Py_ssize_t _object_size(self, object obj, object api_version, object kind) except -1:
        """Size pass for one object frame; returns its total size (magic included)."""
        if not PyDict_Check(obj):
            raise EncodeError(
                f"a protobuf object frame carries a google.protobuf.Struct: the object must be a dict, not {type(obj).__name__}"
            )
        self.nsizes = 0
        self.nents = 0
        self.struct_size = self._struct_size(obj, 1)
        cdef PyObject* found
        if api_version is None:
            found = PyDict_GetItem(obj, "apiVersion")
            api_version = <object>found if found != NULL and PyUnicode_Check(<object>found) else ""
        if kind is None:
            found = PyDict_GetItem(obj, "kind")
            kind = <object>found if found != NULL and PyUnicode_Check(<object>found) else ""
        self.av = utf8_of(api_version, &self.avlen)
        self.kind = utf8_of(kind, &self.kindlen)
        cdef Py_ssize_t type_meta = len_field_size(self.avlen) + len_field_size(self.kindlen)
        return 4 + len_field_size(type_meta) + len_field_size(self.struct_size) + 4

    # -- write pass ----------------------------------------------------------
    cdef char* _write_value(self, char* p, object o, int k) except NULL:
        """Writes the body of a Value holding ``o`` (of kind ``k``)."""
        cdef Py_ssize_t n
        cdef const char* s
        cdef Py_buffer view
        if k == K_STR:
            s = utf8_of(o, &n)
            p[0] = 0x1a
            p = write_varint(p + 1, <uint64_t>n)
            memcpy(p, s, n)
            return p + n
        if k == K_DICT:
            p[0] = 0x2a
            p = write_varint(p + 1, <uint64_t>self.sizes[self.scur])
            return self._write_struct(p, o)
        if k == K_LIST:
            p[0] = 0x32
            p = write_varint(p + 1, <uint64_t>self.sizes[self.scur])
            return self._write_list(p, o)
        if k == K_NUM:
            p[0] = 0x11
            return write_double(p + 1, number_value(o))
        if k == K_NULL:
            p[0] = 0x08
            p[1] = 0
            return p + 2
        if k == K_BOOL:
            p[0] = 0x20
            p[1] = 1 if o is True else 0
            return p + 2
        # K_BYTES (validated by the size pass)
        PyObject_GetBuffer(o, &view, PyBUF_SIMPLE)
        p[0] = 0x1a
        p = write_varint(p + 1, <uint64_t>b64_len(view.len))
        p = write_b64(p, <const uint8_t*>view.buf, view.len)
        PyBuffer_Release(&view)
        return p

    cdef Py_ssize_t _written_value_size(self, object o, int k) except -1:
        """The size the size pass found for ``o``, recomputed cheaply (containers: read back)."""
        cdef Py_ssize_t n
        if k == K_STR:
            utf8_of(o, &n)
            return len_field_size(n)
        if k == K_DICT or k == K_LIST:
            return len_field_size(self.sizes[self.scur])
        if k == K_NUM:
            return 9
        if k == K_NULL or k == K_BOOL:
            return 2
        return len_field_size(b64_len(bytes_len(o)))

    cdef char* _write_struct(self, char* p, object d) except NULL:
        self.scur += 1
        cdef Py_ssize_t n = PyDict_GET_SIZE(d)
        cdef Py_ssize_t i, base = self.ecur
        cdef Py_ssize_t vs
        cdef Entry* e
        cdef object v
        cdef int k
        self.ecur += n
        for i in range(base, base + n):
            e = &self.ents[i]
            v = <object>e.value
            k = classify(v)
            vs = self._written_value_size(v, k)
            p[0] = 0x0a
            p = write_varint(p + 1, <uint64_t>(len_field_size(e.klen) + len_field_size(vs)))
            p[0] = 0x0a
            p = write_varint(p + 1, <uint64_t>e.klen)
            memcpy(p, e.key, e.klen)
            p += e.klen
            p[0] = 0x12
            p = write_varint(p + 1, <uint64_t>vs)
            p = self._write_value(p, v, k)
        return p

    cdef char* _write_list(self, char* p, object seq) except NULL:
        self.scur += 1
        cdef Py_ssize_t i, n
        cdef object v
        cdef int k
        cdef bint is_list = PyList_Check(seq)
        n = PyList_GET_SIZE(seq) if is_list else PyTuple_GET_SIZE(seq)
        for i in range(n):
            v = <object>(PyList_GET_ITEM(seq, i) if is_list else PyTuple_GET_ITEM(seq, i))
            k = classify(v)
            p[0] = 0x0a
            p = write_varint(p + 1, <uint64_t>self._written_value_size(v, k))
            p = self._write_value(p, v, k)
        return p

    cdef char* _write_object(self, char* p, object obj) except NULL:
        """Writes the object frame sized by the last _object_size call."""
        self.scur = 0
        self.ecur = 0
        memcpy(p, b"k8s\x00", 4)
        p += 4
        p[0] = 0x0a
        p = write_varint(p + 1, <uint64_t>(len_field_size(self.avlen) + len_field_size(self.kindlen)))
        p[0] = 0x0a
        p = write_varint(p + 1, <uint64_t>self.avlen)
        memcpy(p, self.av, self.avlen)
        p += self.avlen
        p[0] = 0x12
        p = write_varint(p + 1, <uint64_t>self.kindlen)
        memcpy(p, self.kind, self.kindlen)
        p += self.kindlen
        p[0] = 0x12
        p = write_varint(p + 1, <uint64_t>self.struct_size)
        p = self._write_struct(p, obj)
        memcpy(p, b"\x1a\x00\x22\x00", 4)
        return p + 4

    # -- frame assembly ------------------------------------------------------
    cdef int _check_size(self, Py_ssize_t total, bint prefixed) except -1:
        if total > self._max_frame_size or (prefixed and total - 4 > MAX_PREFIXED):
            raise FrameTooLarge(
                f"frame of {total} bytes exceeds max_frame_size ({self._max_frame_size})",
                self._max_frame_size,
            )
        return 0

    cdef char* _target(self, object buf, Py_ssize_t total, Py_ssize_t* start) except NULL:
        """Where a frame of ``total`` bytes goes in ``buf``, after every check."""
        data = buf.data
        length = buf.length
        if not PyByteArray_CheckExact(data) or type(length) is not int or not 0 <= length <= PyByteArray_GET_SIZE(data):
            raise ValueError("buf is not a valid PoolBuffer (data must be a bytearray, 0 <= length <= capacity)")
        start[0] = length
        cdef Py_ssize_t left = PyByteArray_GET_SIZE(data) - start[0]
        if total > left:
            raise BufferFull(f"frame of {total} bytes does not fit the {left} bytes left in the buffer")
        return PyByteArray_AS_STRING(data) + start[0]

    cdef object _run(self, int op, object a, object b, object c, object buf):
        """Size, check and write one frame.

        op 0: object frame of ``a``; 1: event frame (type bytes ``a``, object
        ``b``); 2: raw event frame (type ``a``, raw ``b``); 3: length-prefixed
        object frame of ``a`` with typeMeta ``b``/``c`` when not None; 4:
        length-prefixed raw frame ``b``.  Returns bytes when ``buf`` is None,
        else the number of bytes appended to ``buf``.
        """
        cdef Py_ssize_t obj_size = 0, inner = 0, event = 0, total, start = 0
        cdef Py_buffer raw
        cdef bint have_raw = False
        cdef char* p
        cdef char* p0
        cdef const char* tb = NULL
        cdef Py_ssize_t tblen = 0
        cdef object result = None
        try:
            if op == 2 or op == 4:
                self._get_raw(b, &raw)
                have_raw = True
                obj_size = raw.len
            else:
                if op == 1:
                    obj_size = self._object_size(b, None, None)
                else:
                    # op 3 passes api_version in c and kind in b (None: from the object)
                    obj_size = self._object_size(a, c, b)
            if op == 1 or op == 2:
                tb = PyBytes_AS_STRING(a)
                tblen = len(a)
                inner = len_field_size(obj_size)  # RawExtension{1: raw}
                event = len_field_size(tblen) + len_field_size(inner)
                total = 4 + event
            elif op == 3 or op == 4:
                total = 4 + obj_size
            else:
                total = obj_size
            self._check_size(total, op != 0)
            if buf is None:
                result = PyBytes_FromStringAndSize(NULL, total)
                p0 = PyBytes_AS_STRING(result)
            else:
                p0 = self._target(buf, total, &start)
            p = p0
            if op == 1 or op == 2:
                p = write_u32be(p, <uint64_t>event)
                p[0] = 0x0a
                p = write_varint(p + 1, <uint64_t>tblen)
                memcpy(p, tb, tblen)
                p += tblen
                p[0] = 0x12
                p = write_varint(p + 1, <uint64_t>inner)
                p[0] = 0x0a
                p = write_varint(p + 1, <uint64_t>obj_size)
            elif op == 3 or op == 4:
                p = write_u32be(p, <uint64_t>obj_size)
            if have_raw:
                memmove(p, raw.buf, obj_size)  # raw may be a view of this very buffer
                p += obj_size
            else:
                p = self._write_object(p, a if op != 1 else b)
            if p - p0 != total:
                raise AssertionError(f"protobuf size pass and write pass disagree ({total} != {p - p0})")
        finally:
            if have_raw:
                PyBuffer_Release(&raw)
        if buf is None:
            return result
        buf.length = start + total
        return total

    cdef int _get_raw(self, object raw, Py_buffer* view) except -1:
        if not (PyBytes_Check(raw) or PyByteArray_Check(raw) or PyMemoryView_Check(raw)):
            raise EncodeError(f"raw must be bytes-like, not {type(raw).__name__}")
        bytes_len(raw)  # same errors as the twin for unreadable buffers
        PyObject_GetBuffer(raw, view, PyBUF_SIMPLE)
        if view.len < 4 or memcmp(view.buf, b"k8s\x00", 4) != 0:
            PyBuffer_Release(view)
            raise EncodeError("raw frame does not start with the k8s\\x00 magic")
        return 0

    cdef object _call(self, int op, object a, object b, object c, object buf):
        # A finalizer run by the garbage collector mid-encode could call this
        # encoder again; the scratch arrays belong to the outer call, so a
        # nested call uses a fresh encoder.
        cdef ProtoEncoder other
        if self.busy:
            other = ProtoEncoder(max_frame_size=self._max_frame_size, max_depth=self._max_depth)
            return other._call(op, a, b, c, buf)
        self.busy = True
        try:
            return self._run(op, a, b, c, buf)
        finally:
            self.busy = False

    # -- public API ----------------------------------------------------------
    def encode(self, obj):
        """One object frame: ``k8s\\x00`` + runtime.Unknown holding ``obj`` as a Struct."""
        return self._call(0, obj, None, None, None)

    def encode_into(self, obj, buf):
        """Append ``encode(obj)`` to ``buf``; returns its size."""
        return self._call(0, obj, None, None, buf)

    def encode_event(self, type, obj):
        """One event frame: length + WatchEvent{type, RawExtension{object frame}}."""
        return self._call(1, _event_type(type), obj, None, None)

    def encode_event_into(self, type, obj, buf):
        return self._call(1, _event_type(type), obj, None, buf)

    def encode_raw_event(self, type, raw):
        """Event frame embedding ``raw`` (an earlier object frame) verbatim."""
        return self._call(2, _event_type(type), raw, None, None)

    def encode_raw_event_into(self, type, raw, buf):
        return self._call(2, _event_type(type), raw, None, buf)

    def encode_list_start_into(self, buf, *, kind, api_version, metadata, count=None):
        """Frame holding the list header: Unknown{typeMeta, Struct{metadata[, count]}}."""
        if not isinstance(kind, str) or not isinstance(api_version, str):
            raise EncodeError("kind and api_version must be str")
        header = {"metadata": metadata}
        if count is not None:
            if type(count) is not int or count < 0:
                raise EncodeError(f"count must be a non-negative int or None, not {count!r}")
            header["count"] = count
        return self._call(3, header, kind, api_version, buf)

    def encode_list_item_into(self, obj, buf, index):
        """Frame holding one item's object frame (``index`` is not needed: no separators)."""
        return self._call(3, obj, None, None, buf)

    def encode_raw_list_item_into(self, raw, buf, index):
        """Frame holding ``raw`` (an earlier object frame) verbatim."""
        return self._call(4, None, raw, None, buf)

    def encode_list_end_into(self, buf, count):
        """Writes nothing: the stream of frames simply ends."""
        return 0


cdef bytes _event_type(object type):
    encoded = _ENCODED_EVENT_TYPES.get(type) if isinstance(type, str) else None
    if encoded is None:
        raise EncodeError(f"event type must be one of {', '.join(EVENT_TYPES)}, not {type!r}")
    return encoded


# ---------------------------------------------------------------------------
# Decoder


cdef class _Parser:
    """Parses one object frame in ``p[0:len]``; offsets reported are ``base + index``.

    Counts the values it builds as the twin does: ``values_left`` starts at
    ``max_values - 1`` (the frame's Struct) and loses one at each Struct key and
    each Value, before it is built.
    """

    cdef const uint8_t* p
    cdef Py_ssize_t base
    cdef int max_depth
    cdef Py_ssize_t max_values
    cdef Py_ssize_t values_left

    cdef object error(self, str message, Py_ssize_t pos):
        return DecodeError(message, self.base + pos)

    cdef object too_many(self, Py_ssize_t pos):
        return TooManyValues(self.max_values, self.base + pos)

    cdef Py_ssize_t varint(self, Py_ssize_t pos, Py_ssize_t end, uint64_t* out) except -1:
        cdef Py_ssize_t start = pos
        cdef uint64_t result = 0
        cdef int shift = 0
        cdef uint8_t b
        while True:
            if pos >= end:
                raise self.error("truncated varint", pos)
            b = self.p[pos]
            pos += 1
            if shift == 63:
                if b & 0x80:
                    raise self.error("varint longer than 10 bytes", start)
                if b > 1:
                    raise self.error("varint overflows 64 bits", start)
            result |= (<uint64_t>(b & 0x7F)) << shift
            if b < 0x80:
                break
            shift += 7
        out[0] = result
        return pos

    cdef Py_ssize_t tag(self, Py_ssize_t pos, Py_ssize_t end, uint64_t* field, int* wt) except -1:
        cdef uint64_t key
        cdef Py_ssize_t after = self.varint(pos, end, &key)
        field[0] = key >> 3
        wt[0] = key & 7
        if field[0] == 0:
            raise self.error("invalid field number 0", pos)
        return after

    cdef Py_ssize_t length(self, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t* start) except -1:
        """Reads a length prefix at ``pos``; returns the payload's stop, sets ``start``."""
        cdef uint64_t n
        cdef Py_ssize_t after = self.varint(pos, end, &n)
        if n > <uint64_t>(end - after):
            raise self.error(f"length {n} runs past the end of its message", pos)
        start[0] = after
        return after + <Py_ssize_t>n

    cdef Py_ssize_t skip(self, int wt, Py_ssize_t tag_pos, Py_ssize_t pos, Py_ssize_t end) except -1:
        cdef uint64_t ignored
        cdef Py_ssize_t s, width
        if wt == 0:
            return self.varint(pos, end, &ignored)
        if wt == 2:
            return self.length(pos, end, &s)
        if wt == 1 or wt == 5:
            width = 8 if wt == 1 else 4
            if end - pos < width:
                raise self.error("truncated fixed-width field", end)
            return pos + width
        raise self.error(f"unsupported wire type {wt}", tag_pos)

    cdef int expect(self, int wt, int expected, uint64_t field, str message, Py_ssize_t tag_pos) except -1:
        if wt != expected:
            raise self.error(f"field {field} of {message} has wire type {wt}, expected {expected}", tag_pos)
        return 0

    cdef str text(self, Py_ssize_t start, Py_ssize_t stop):
        try:
            return PyUnicode_DecodeUTF8(<const char*>self.p + start, stop - start, "strict")
        except UnicodeDecodeError:
            raise self.error("string is not valid UTF-8", start) from None

    cdef object object_frame(self, Py_ssize_t start, Py_ssize_t end):
        if end - start < 4:
            raise self.error("object frame is shorter than the k8s\\x00 magic", end)
        if memcmp(self.p + start, b"k8s\x00", 4) != 0:
            raise self.error("object frame does not start with the k8s\\x00 magic", start)
        cdef Py_ssize_t pos = start + 4, tag_pos, s = 0
        cdef Py_ssize_t raw_start = -1, raw_stop = -1
        cdef uint64_t field
        cdef int wt
        while pos < end:
            tag_pos = pos
            pos = self.tag(pos, end, &field, &wt)
            if 1 <= field <= 4:
                self.expect(wt, 2, field, "runtime.Unknown", tag_pos)
                pos = self.length(pos, end, &s)
                if field == 1:
                    self.type_meta(s, pos)
                elif field == 2:
                    raw_start = s
                    raw_stop = pos
                elif pos != s:
                    name = "contentEncoding" if field == 3 else "contentType"
                    raise self.error(f"unsupported {name} {self.text(s, pos)!r} (only empty is supported)", tag_pos)
            else:
                pos = self.skip(wt, tag_pos, pos, end)
        if raw_start < 0:
            raise self.error("runtime.Unknown has no raw field", end)
        return self.parse_struct(raw_start, raw_stop, 1)

    cdef int type_meta(self, Py_ssize_t pos, Py_ssize_t end) except -1:
        cdef Py_ssize_t tag_pos, s = 0
        cdef uint64_t field
        cdef int wt
        while pos < end:
            tag_pos = pos
            pos = self.tag(pos, end, &field, &wt)
            if field == 1 or field == 2:
                self.expect(wt, 2, field, "runtime.TypeMeta", tag_pos)
                pos = self.length(pos, end, &s)
                self.text(s, pos)
            else:
                pos = self.skip(wt, tag_pos, pos, end)
        return 0

    cdef dict parse_struct(self, Py_ssize_t pos, Py_ssize_t end, int depth):
        cdef dict result = {}
        cdef Py_ssize_t tag_pos, entry_start = 0, p, entry_tag, s = 0, vstart = 0, vstop = -1
        cdef uint64_t field, f
        cdef int wt, w
        cdef object key
        while pos < end:
            tag_pos = pos
            pos = self.tag(pos, end, &field, &wt)
            if field != 1:
                pos = self.skip(wt, tag_pos, pos, end)
                continue
            self.expect(wt, 2, 1, "google.protobuf.Struct", tag_pos)
            pos = self.length(pos, end, &entry_start)
            self.values_left -= 1  # the key; parse_value counts the value
            if self.values_left < 0:
                raise self.too_many(entry_start)
            key = ""
            vstop = -1
            p = entry_start
            while p < pos:
                entry_tag = p
                p = self.tag(p, pos, &f, &w)
                if f == 1:
                    self.expect(w, 2, 1, "a Struct map entry", entry_tag)
                    p = self.length(p, pos, &s)
                    key = self.text(s, p)
                elif f == 2:
                    self.expect(w, 2, 2, "a Struct map entry", entry_tag)
                    p = self.length(p, pos, &vstart)
                    vstop = p
                else:
                    p = self.skip(w, entry_tag, p, pos)
            if vstop < 0:
                raise self.error("Struct map entry has no value", entry_start)
            result[key] = self.parse_value(vstart, vstop, depth)
        return result

    cdef list parse_list(self, Py_ssize_t pos, Py_ssize_t end, int depth):
        cdef list result = []
        cdef Py_ssize_t tag_pos, s = 0
        cdef uint64_t field
        cdef int wt
        while pos < end:
            tag_pos = pos
            pos = self.tag(pos, end, &field, &wt)
            if field != 1:
                pos = self.skip(wt, tag_pos, pos, end)
                continue
            self.expect(wt, 2, 1, "google.protobuf.ListValue", tag_pos)
            pos = self.length(pos, end, &s)
            PyList_Append(result, self.parse_value(s, pos, depth))
        return result

    cdef object parse_value(self, Py_ssize_t pos, Py_ssize_t end, int depth):
        cdef Py_ssize_t start = pos, tag_pos, s = 0
        cdef bint found = False
        cdef object result = None
        cdef uint64_t field, n, bits
        cdef int wt, i
        cdef double d
        self.values_left -= 1
        if self.values_left < 0:
            raise self.too_many(start)
        while pos < end:
            tag_pos = pos
            pos = self.tag(pos, end, &field, &wt)
            if field == 1 or field == 4:
                self.expect(wt, 0, field, "google.protobuf.Value", tag_pos)
                pos = self.varint(pos, end, &n)
                result = None if field == 1 else (n != 0)
            elif field == 2:
                self.expect(wt, 1, 2, "google.protobuf.Value", tag_pos)
                if end - pos < 8:
                    raise self.error("truncated fixed-width field", end)
                bits = 0
                for i in range(8):
                    bits |= (<uint64_t>self.p[pos + i]) << (8 * i)
                memcpy(&d, &bits, 8)
                result = PyFloat_FromDouble(d)
                pos += 8
            elif 3 <= field <= 6:
                self.expect(wt, 2, field, "google.protobuf.Value", tag_pos)
                pos = self.length(pos, end, &s)
                if field == 3:
                    result = self.text(s, pos)
                else:
                    if depth + 1 > self.max_depth:
                        raise self.error(f"nesting deeper than max_depth ({self.max_depth})", tag_pos)
                    result = self.parse_struct(s, pos, depth + 1) if field == 5 else self.parse_list(s, pos, depth + 1)
            else:
                pos = self.skip(wt, tag_pos, pos, end)
                continue
            found = True
        if not found:
            raise self.error("google.protobuf.Value has no kind set", start)
        return result

    cdef object watch_event(self, Py_ssize_t pos, Py_ssize_t end):
        cdef Py_ssize_t start = pos, tag_pos, s = 0, p, inner_tag, ostart = 0, ostop = -1
        cdef uint64_t field, f
        cdef int wt, w
        cdef object type_ = None
        while pos < end:
            tag_pos = pos
            pos = self.tag(pos, end, &field, &wt)
            if field == 1:
                self.expect(wt, 2, 1, "WatchEvent", tag_pos)
                pos = self.length(pos, end, &s)
                type_ = self.text(s, pos)
                if type_ not in _EVENT_TYPES:
                    raise self.error(f"unknown watch event type {type_!r}", tag_pos)
            elif field == 2:
                self.expect(wt, 2, 2, "WatchEvent", tag_pos)
                pos = self.length(pos, end, &s)
                p = s
                while p < pos:
                    inner_tag = p
                    p = self.tag(p, pos, &f, &w)
                    if f == 1:
                        self.expect(w, 2, 1, "RawExtension", inner_tag)
                        p = self.length(p, pos, &ostart)
                        ostop = p
                    else:
                        p = self.skip(w, inner_tag, p, pos)
            else:
                pos = self.skip(wt, tag_pos, pos, end)
        if type_ is None:
            raise self.error("WatchEvent has no type", start)
        if ostop < 0:
            raise self.error("WatchEvent has no object", start)
        return Event(type_, self.object_frame(ostart, ostop))


cdef class ProtoDecoder:
    """Sans-IO decoder of the frames :class:`ProtoEncoder` writes.

    ``decode(frame)`` parses one object frame.  ``feed`` bytes of a watch
    stream (4-byte big-endian length + WatchEvent, repeated) and iterate to
    get :class:`~streamcodec.Event` objects as frames complete.  Numbers come
    back as floats (the wire carries doubles).  Malformed, truncated or
    over-limit input raises :class:`~streamcodec.DecodeError` with the byte
    offset counted from the first byte fed; after that every call raises it.

    ``max_values`` (None: no limit) bounds the values one frame decodes into,
    counted as the JSON data model has them: the object 1, each of its keys
    and values 1, each list element 1, recursively; for a watch event, the
    values of its object.  Over it, :class:`~streamcodec.TooManyValues` is
    raised at the offset of the value that goes over, before that value is
    built: a frame of tiny containers (a list element holding an empty Struct
    is 4 bytes on the wire and a 64-byte dict decoded) would otherwise decode
    into far more memory than ``max_frame_size`` suggests.  Values are counted
    as built, so a Struct key repeated on the wire counts each time.
    """

    cdef Py_ssize_t _max_frame_size
    cdef int _max_depth
    cdef object _max_values
    cdef Py_ssize_t _values_limit
    cdef bytearray _buf
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _base
    cdef object _error
    cdef bint _closed

    def __cinit__(self, *, max_frame_size=DEFAULT_MAX_FRAME_SIZE, max_depth=MAX_DEPTH, max_values=None):
        _check_limits(max_frame_size, max_depth)
        self._max_frame_size = max_frame_size
        self._max_depth = max_depth
        self._values_limit = check_max_values(max_values)
        self._max_values = max_values
        self._buf = bytearray()
        self._pos = 0
        self._base = 0
        self._error = None
        self._closed = False

    @property
    def max_frame_size(self):
        return self._max_frame_size

    @property
    def max_depth(self):
        return self._max_depth

    @property
    def max_values(self):
        return self._max_values

    def decode(self, frame):
        """Parse one object frame (``k8s\\x00`` + Unknown + Struct) into a dict."""
        cdef Py_buffer view
        cdef _Parser parser
        PyObject_GetBuffer(frame, &view, PyBUF_SIMPLE)
        try:
            if view.len > self._max_frame_size:
                raise DecodeError(f"frame of {view.len} bytes exceeds max_frame_size ({self._max_frame_size})", 0)
            parser = _Parser.__new__(_Parser)
            parser.p = <const uint8_t*>view.buf
            parser.base = 0
            parser.max_depth = self._max_depth
            parser.max_values = self._values_limit
            parser.values_left = self._values_limit - 1
            return parser.object_frame(0, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef int _raise_stored(self) except -1:
        raise self._error.with_traceback(None)

    cdef int _fail(self, object error) except -1:
        self._error = error
        raise error

    cdef Py_ssize_t _declared(self) except -2:
        """Body length of the frame at _pos if its header is complete, else -1."""
        cdef const uint8_t* p
        cdef uint64_t n
        if PyByteArray_GET_SIZE(self._buf) - self._pos < 4:
            return -1
        p = <const uint8_t*>PyByteArray_AS_STRING(self._buf) + self._pos
        n = (<uint64_t>p[0] << 24) | (<uint64_t>p[1] << 16) | (<uint64_t>p[2] << 8) | p[3]
        if 4 + n > <uint64_t>self._max_frame_size:
            self._fail(
                DecodeError(
                    f"frame declares {4 + n} bytes, over max_frame_size ({self._max_frame_size})",
                    self._base + self._pos,
                )
            )
        return <Py_ssize_t>n

    def feed(self, data):
        """Append stream bytes; raises at once if the next frame declares a length over the limit."""
        if self._error is not None:
            self._raise_stored()
        if self._closed:
            self._fail(DecodeError("data fed after close()", self._base + PyByteArray_GET_SIZE(self._buf)))
        self._buf += data
        self._declared()

    def __iter__(self):
        return self

    def __next__(self):
        cdef Py_buffer view
        cdef _Parser parser
        cdef Py_ssize_t n, start
        if self._error is not None:
            self._raise_stored()
        n = self._declared()
        if n < 0 or PyByteArray_GET_SIZE(self._buf) - self._pos - 4 < n:
            raise StopIteration
        start = self._pos + 4
        # Holding a buffer export keeps _buf from being resized under the
        # parser (by a re-entrant feed from a finalizer, say).
        PyObject_GetBuffer(self._buf, &view, PyBUF_SIMPLE)
        try:
            parser = _Parser.__new__(_Parser)
            parser.p = <const uint8_t*>view.buf + start
            parser.base = self._base + start
            parser.max_depth = self._max_depth
            parser.max_values = self._values_limit
            parser.values_left = self._values_limit - 1
            event = parser.watch_event(0, n)
        except DecodeError as exc:
            self._error = exc
            raise
        finally:
            PyBuffer_Release(&view)
        self._pos = start + n
        if self._pos == PyByteArray_GET_SIZE(self._buf):
            self._base += self._pos
            self._buf = bytearray()
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > PyByteArray_GET_SIZE(self._buf):
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0
        return event

    def close(self):
        """End of stream: raises DecodeError if a partial frame is left over."""
        cdef Py_ssize_t pos, size
        cdef const uint8_t* p
        cdef uint64_t n
        if self._error is not None:
            self._raise_stored()
        self._closed = True
        pos = self._pos
        size = PyByteArray_GET_SIZE(self._buf)
        while pos < size:
            if size - pos < 4:
                self._fail(DecodeError("stream ends inside a frame header", self._base + pos))
            p = <const uint8_t*>PyByteArray_AS_STRING(self._buf) + pos
            n = (<uint64_t>p[0] << 24) | (<uint64_t>p[1] << 16) | (<uint64_t>p[2] << 8) | p[3]
            if 4 + n > <uint64_t>self._max_frame_size:
                self._fail(
                    DecodeError(
                        f"frame declares {4 + n} bytes, over max_frame_size ({self._max_frame_size})",
                        self._base + pos,
                    )
                )
            if <uint64_t>(size - pos - 4) < n:
                self._fail(DecodeError("stream ends inside a frame", self._base + pos))
            pos += 4 + <Py_ssize_t>n
