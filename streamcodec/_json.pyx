# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""JSON encoder and incremental watch-stream decoder (compiled).

Output is byte-identical to ``json.dumps(obj, separators=(",", ":"),
ensure_ascii=False).encode()`` (bytes-likes become padded standard base64
strings, as Go encodes ``[]byte``).  ``encode_into`` and friends write
straight into the pool buffer's memory; ``encode`` builds in a reusable
scratch area.  ``_json_py.py`` is the pure-Python twin: same outputs, same
exceptions, same messages.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from libc.math cimport isfinite
from libc.string cimport memchr, memcpy, strlen

from . import _json_py
import json as _json

from .errors import BufferFull, DecodeError, EncodeError, FrameTooLarge
from .limits import DEFAULT_MAX_FRAME_SIZE, EVENT_TYPES, MAX_DEPTH, MAX_DEPTH_LIMIT

__all__ = ["JSONEncoder", "JSONDecoder"]


cdef extern from "Python.h":
    ctypedef unsigned char Py_UCS1
    ctypedef unsigned short Py_UCS2
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    int PyUnicode_KIND(object)
    void* PyUnicode_DATA(object)
    bint PyUnicode_IS_ASCII(object)
    char* PyOS_double_to_string(double, char, int, int, int*) except NULL
    int Py_DTSF_ADD_DOT_0
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1
    double PyFloat_AS_DOUBLE(object)
    Py_ssize_t PyList_GET_SIZE(object)
    PyObject* PyList_GET_ITEM(object, Py_ssize_t)
    Py_ssize_t PyTuple_GET_SIZE(object)
    Py_ssize_t PyDict_GET_SIZE(object)
    PyObject* PyTuple_GET_ITEM(object, Py_ssize_t)

cdef extern from *:
    int __Pyx_PyUnicode_READY(object) except -1

cdef extern from "_json_kernels.h":
    Py_ssize_t sc_char_len(Py_UCS4) nogil
    Py_ssize_t sc_write_char(char*, Py_UCS4) nogil
    Py_ssize_t sc_write_escape(char*, unsigned) nogil
    Py_ssize_t sc_find_escape(const unsigned char*, Py_ssize_t) nogil
    Py_ssize_t sc_write_ascii_short(char*, const unsigned char*, Py_ssize_t) nogil
    Py_ssize_t sc_write_ucs(char*, const void*, int, Py_ssize_t, Py_ssize_t) nogil
    Py_ssize_t sc_find_surrogate(const void*, int, Py_ssize_t) nogil
    Py_ssize_t sc_write_ucs_checked(char*, const void*, int, Py_ssize_t) nogil
    Py_ssize_t sc_format_ll(char*, long long) nogil
    long sc_small_int(PyObject*, int*) nogil
    Py_ssize_t sc_format_double_short(char*, double) nogil
    Py_ssize_t sc_write_small_int(char*, Py_ssize_t, PyObject*)
    Py_ssize_t sc_base64_len(Py_ssize_t) nogil
    void sc_base64(char*, const unsigned char*, Py_ssize_t) nogil
    Py_ssize_t sc_prescan(const unsigned char*, Py_ssize_t, Py_ssize_t, Py_ssize_t, int*) nogil
    int sc_copy_ascii_clean(char*, const unsigned char*, Py_ssize_t) nogil
    Py_ssize_t sc_short_ascii(char*, Py_ssize_t, PyObject*, Py_ssize_t, char, char)
    enum: SC_KEY_SLOTS
    enum: SC_KEY_BYTES
    ctypedef struct sc_key_entry:
        int len
        char* text
    sc_key_entry* sc_key_lookup(sc_key_entry*, PyObject*)
    void sc_key_store(sc_key_entry*, PyObject*, const char*, Py_ssize_t)
    void sc_key_clear(sc_key_entry*)


cdef dict _EVENT_HEADERS = {t: ('{"type":"%s","object":' % t).encode() for t in EVENT_TYPES}
cdef tuple _BYTES_TYPES = (bytes, bytearray, memoryview)

# Scratch memory kept between encode() calls; a larger one is freed after use
# so an encoder holds at most this much while idle.
cdef Py_ssize_t _SCRATCH_KEEP = 256 * 1024
# ASCII strs shorter than this are written a word at a time (worst case
# reserved: 6 bytes a character); longer ones by the vector escape scan.
cdef enum:
    _SHORT_ASCII = 64
# Dicts with more keys than this are maps of data, not objects of a schema:
# their keys bypass the encoder's key cache.
cdef enum:
    _KEY_CACHE_MAX_DICT = 64
# Characters per reservation when writing non-ASCII strings.
cdef Py_ssize_t _UCS_CHUNK = 4096

cdef enum Job:
    JOB_OBJECT
    JOB_EVENT
    JOB_RAW_EVENT
    JOB_ITEM
    JOB_RAW_ITEM
    JOB_LIST_START
    JOB_LIST_END


class _Overflow(Exception):
    """Internal: the frame outgrew its limit (becomes FrameTooLarge or BufferFull)."""


def _check_limits(max_frame_size, max_depth):
    if type(max_frame_size) is not int or max_frame_size <= 0:
        raise ValueError(f"max_frame_size must be a positive int, not {max_frame_size!r}")
    if type(max_depth) is not int or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be an int in 1..{MAX_DEPTH_LIMIT}, not {max_depth!r}")


cdef bytes _check_event_type(object type):
    header = _EVENT_HEADERS.get(type) if isinstance(type, str) else None
    if header is None:
        raise EncodeError(f"invalid watch event type {type!r}: expected one of {', '.join(EVENT_TYPES)}")
    return header


cdef int _check_index(object index) except -1:
    if type(index) is not int or index < 0:
        raise ValueError(f"list item index must be a non-negative int, not {index!r}")
    return 0


@cython.final
cdef class JSONEncoder:
    """Encodes objects, watch events and list bodies as compact UTF-8 JSON.

    ``max_frame_size`` caps every frame (:class:`FrameTooLarge`);
    ``max_depth`` caps container nesting (:class:`EncodeError`).  An encoder
    keeps no per-stream state but is not reentrant: use one per thread.
    It remembers the encoded form of up to 512 keys of small dicts (32 KiB,
    plus a reference to one str of each key's text) because Kubernetes
    objects repeat their keys; output never depends on what it remembers.
    """

    content_type = "application/json"
    stream_content_type = "application/json;stream=watch"

    cdef Py_ssize_t _max_frame_size
    cdef Py_ssize_t _max_depth
    # The output being written: _out[0:_pos], room up to _alloc; in scratch
    # mode the allocation may grow up to _limit.
    cdef char* _out
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _alloc
    cdef Py_ssize_t _limit
    cdef bint _growable
    cdef char* _scratch
    cdef Py_ssize_t _scratch_size
    # The whole target bytearray while writing into one (a bytes-like input
    # overlapping it is copied first).
    cdef char* _dst_lo
    cdef char* _dst_hi
    # Per nesting level: the container (cycle reports) and the key (or
    # index, when the key is NULL) being encoded (error paths).  Borrowed.
    cdef PyObject** _stack_obj
    cdef PyObject** _stack_key
    cdef Py_ssize_t* _stack_idx
    cdef bint _busy
    # Strong references taken before user code runs (dict subclass items()).
    cdef list _pins
    # Encoded dict keys (see sc_key_lookup), allocated on first use.
    cdef sc_key_entry* _keys

    def __cinit__(self):
        self._scratch = NULL
        self._stack_obj = NULL
        self._stack_key = NULL
        self._stack_idx = NULL
        self._keys = NULL

    def __init__(self, *, max_frame_size=DEFAULT_MAX_FRAME_SIZE, max_depth=MAX_DEPTH):
        _check_limits(max_frame_size, max_depth)
        if self._busy:
            raise EncodeError("JSONEncoder re-initialised while encoding")
        self._max_frame_size = max_frame_size
        self._max_depth = max_depth
        PyMem_Free(self._stack_obj)
        PyMem_Free(self._stack_key)
        PyMem_Free(self._stack_idx)
        self._stack_obj = <PyObject**>PyMem_Malloc((max_depth + 1) * sizeof(PyObject*))
        self._stack_key = <PyObject**>PyMem_Malloc((max_depth + 1) * sizeof(PyObject*))
        self._stack_idx = <Py_ssize_t*>PyMem_Malloc((max_depth + 1) * sizeof(Py_ssize_t))
        if self._stack_obj == NULL or self._stack_key == NULL or self._stack_idx == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self._keys != NULL:
            sc_key_clear(self._keys)
            PyMem_Free(self._keys)
        PyMem_Free(self._scratch)
        PyMem_Free(self._stack_obj)
        PyMem_Free(self._stack_key)
        PyMem_Free(self._stack_idx)

    @property
    def max_frame_size(self):
        """Largest frame this encoder produces, in bytes."""
        return self._max_frame_size

    @property
    def max_depth(self):
        """Deepest container nesting this encoder accepts."""
        return self._max_depth

    # -- output ---------------------------------------------------------------

    cdef int _grow(self, Py_ssize_t n) except -1:
        """Make room for n more bytes in scratch mode: 1 done, 0 over the limit."""
        cdef Py_ssize_t size
        cdef char* p
        if not self._growable or n > self._limit - self._pos:
            return 0
        size = self._alloc * 2
        if size < self._pos + n:
            size = self._pos + n
        if size < 4096:
            size = 4096
        if size > self._limit:
            size = self._limit
        p = <char*>PyMem_Realloc(self._scratch, size)
        if p == NULL:
            raise MemoryError()
        self._scratch = self._out = p
        self._scratch_size = self._alloc = size
        return 1

    cdef inline int _try_reserve(self, Py_ssize_t n) except -1:
        """1 when n more bytes fit (growing scratch if allowed), else 0."""
        if n <= self._alloc - self._pos:
            return 1
        return self._grow(n)

    cdef inline int _need(self, Py_ssize_t n) except -1:
        if n <= self._alloc - self._pos or self._grow(n):
            return 0
        raise _Overflow()

    cdef inline int _put(self, const char* s, Py_ssize_t n) except -1:
        self._need(n)
        memcpy(self._out + self._pos, s, n)
        self._pos += n
        return 0

    cdef inline int _put_byte(self, char c) except -1:
        if self._pos < self._alloc:
            self._out[self._pos] = c
            self._pos += 1
            return 0
        return self._put_byte_slow(c)

    cdef int _put_byte_slow(self, char c) except -1:
        self._need(1)
        self._out[self._pos] = c
        self._pos += 1
        return 0

    cdef int _put_bytes_object(self, bytes b) except -1:
        return self._put(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    # -- errors ---------------------------------------------------------------

    cdef str _path(self, Py_ssize_t depth):
        cdef Py_ssize_t i
        # Strong references first: repr() of a key may run user code.
        keys = [<object>self._stack_key[i] if self._stack_key[i] != NULL else self._stack_idx[i] for i in range(depth)]
        return "$" + "".join([f"[{key!r}]" for key in keys])

    cdef object _fail(self, str message, Py_ssize_t depth):
        return EncodeError(f"{message} at {self._path(depth)}")

    # -- values ---------------------------------------------------------------

    cdef int _value(self, object obj, Py_ssize_t depth) except -1:
        cdef Py_ssize_t n
        if type(obj) is str:
            if self._short_str(obj, 0, 0):
                return 0
            return self._str(obj, depth)
        if type(obj) is dict:
            return self._dict(obj, None, depth)
        if type(obj) is list:
            return self._list(obj, depth)
        if type(obj) is int:
            n = sc_write_small_int(self._out + self._pos, self._alloc - self._pos, <PyObject*>obj)
            if n:
                self._pos += n
                return 0
            return self._int(obj, depth)
        if obj is True:
            return self._put(b"true", 4)
        if obj is False:
            return self._put(b"false", 5)
        if obj is None:
            return self._put(b"null", 4)
        if type(obj) is float:
            return self._float(obj, depth)
        if type(obj) is tuple:
            return self._tuple(obj, depth)
        # Subclasses are encoded as their base type (as json.dumps does).
        if isinstance(obj, str):
            return self._str(obj, depth)
        if isinstance(obj, dict):
            return self._dict_subclass(obj, depth)
        if isinstance(obj, list):
            return self._list(obj, depth)
        if isinstance(obj, tuple):
            return self._tuple(obj, depth)
        if isinstance(obj, int):
            return self._int(obj, depth)
        if isinstance(obj, float):
            return self._float(obj, depth)
        if isinstance(obj, _BYTES_TYPES):
            return self._bytes(obj, depth)
        raise self._fail(f"cannot encode object of type {type(obj).__name__}", depth)

    cdef inline bint _short_str(self, object s, char prefix, char suffix) noexcept:
        """Write [prefix]"s"[suffix] if s is a short ASCII str and the room
        allows (1), else write nothing (0).  A zero prefix/suffix is left out."""
        cdef Py_ssize_t n = sc_short_ascii(self._out + self._pos, self._alloc - self._pos, <PyObject*>s,
                                           _SHORT_ASCII, prefix, suffix)
        # Out of room (or not short ASCII): the caller's general path grows
        # the scratch area or raises.
        self._pos += n
        return n != 0

    cdef int _str(self, object s, Py_ssize_t depth) except -1:
        cdef Py_ssize_t n, i, j, chunk, k
        cdef int kind
        cdef const unsigned char* a
        cdef const void* data
        cdef Py_UCS4 c
        __Pyx_PyUnicode_READY(s)
        n = PyUnicode_GET_LENGTH(s)
        data = PyUnicode_DATA(s)
        if PyUnicode_IS_ASCII(s):
            a = <const unsigned char*>data
            if n < _SHORT_ASCII and self._try_reserve(6 * n + 2):
                self._out[self._pos] = b'"'
                self._pos += 1 + sc_write_ascii_short(self._out + self._pos + 1, a, n)
                self._out[self._pos] = b'"'
                self._pos += 1
                return 0
            # Long (or near the end of the room): copy runs between escapes.
            self._put_byte(b'"')
            i = 0
            while True:
                j = sc_find_escape(a + i, n - i)
                self._need(j)
                memcpy(self._out + self._pos, a + i, j)
                self._pos += j
                i += j
                if i >= n:
                    break
                self._need(sc_char_len(a[i]))
                self._pos += sc_write_escape(self._out + self._pos, a[i])
                i += 1
            return self._put_byte(b'"')
        kind = PyUnicode_KIND(s)
        if n <= _UCS_CHUNK and self._try_reserve(6 * n + 2):
            # Room for the worst case: one pass; a surrogate is reported
            # before pos moves, so nothing counts as written.
            j = sc_write_ucs_checked(self._out + self._pos + 1, data, kind, n)
            if j >= 0:
                self._out[self._pos] = b'"'
                self._out[self._pos + 1 + j] = b'"'
                self._pos += j + 2
                return 0
            i = -j - 1
            c = (<const Py_UCS2*>data)[i] if kind == 2 else (<const Py_UCS4*>data)[i]
            raise self._fail(f"lone surrogate U+{<long>c:04X} in a str", depth)
        if kind != 1:
            # Checked before writing anything, as the twin's s.encode() does.
            i = sc_find_surrogate(data, kind, n)
            if i >= 0:
                c = (<const Py_UCS2*>data)[i] if kind == 2 else (<const Py_UCS4*>data)[i]
                raise self._fail(f"lone surrogate U+{<long>c:04X} in a str", depth)
        self._put_byte(b'"')
        i = 0
        while i < n:
            chunk = n - i
            if chunk > _UCS_CHUNK:
                chunk = _UCS_CHUNK
            if self._try_reserve(6 * chunk):
                self._pos += sc_write_ucs(self._out + self._pos, data, kind, i, chunk)
                i += chunk
            else:
                # Near the end of the room: exact size of each character.
                for k in range(i, i + chunk):
                    if kind == 1:
                        c = (<const Py_UCS1*>data)[k]
                    elif kind == 2:
                        c = (<const Py_UCS2*>data)[k]
                    else:
                        c = (<const Py_UCS4*>data)[k]
                    self._need(sc_char_len(c))
                    self._pos += sc_write_char(self._out + self._pos, c)
                i += chunk
        return self._put_byte(b'"')

    cdef int _int(self, object obj, Py_ssize_t depth) except -1:
        cdef int overflow = 0
        cdef long long v
        cdef char tmp[24]
        cdef Py_ssize_t n
        cdef int small = 0
        if type(obj) is int:
            v = sc_small_int(<PyObject*>obj, &small)
            if small and self._try_reserve(12):
                self._pos += sc_format_ll(self._out + self._pos, v)
                return 0
        v = PyLong_AsLongLongAndOverflow(obj, &overflow)
        if not overflow:
            n = sc_format_ll(tmp, v)
            return self._put(tmp, n)
        try:
            text = int.__repr__(obj)
        except ValueError as exc:  # over sys.get_int_max_str_digits()
            raise self._fail(f"int too large to format ({exc})", depth) from None
        b = (<str>text).encode("ascii")
        return self._put_bytes_object(b)

    cdef int _float(self, object obj, Py_ssize_t depth) except -1:
        cdef double v = PyFloat_AS_DOUBLE(obj)
        cdef char* text
        cdef Py_ssize_t n
        if not isfinite(v):
            raise self._fail(f"cannot encode float {float.__repr__(obj)} (NaN and Infinity are not JSON)", depth)
        # float.__repr__ exactly: shortest repr, ".0" added to integral values.
        if self._try_reserve(24):
            n = sc_format_double_short(self._out + self._pos, v)
            if n:
                self._pos += n
                return 0
        text = PyOS_double_to_string(v, b'r', 0, Py_DTSF_ADD_DOT_0, NULL)
        try:
            self._put(text, strlen(text))
        finally:
            PyMem_Free(text)
        return 0

    cdef int _bytes(self, object obj, Py_ssize_t depth) except -1:
        cdef Py_buffer view
        cdef Py_ssize_t n
        try:
            if isinstance(obj, memoryview) and not obj.c_contiguous:
                obj = obj.tobytes()
            PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE)
        except (ValueError, TypeError) as exc:
            raise self._fail(f"cannot read {type(obj).__name__} ({exc})", depth) from None
        try:
            if <char*>view.buf < self._dst_hi and <char*>view.buf + view.len > self._dst_lo:
                # It lives in the very buffer being written: encode a copy.
                return self._bytes(PyBytes_FromStringAndSize(<char*>view.buf, view.len), depth)
            n = sc_base64_len(view.len)
            self._put_byte(b'"')
            self._need(n)
            sc_base64(self._out + self._pos, <const unsigned char*>view.buf, view.len)
            self._pos += n
            self._put_byte(b'"')
        finally:
            PyBuffer_Release(&view)
        return 0

    cdef int _enter(self, object obj, Py_ssize_t depth) except -1:
        cdef Py_ssize_t i
        if depth >= self._max_depth:
            for i in range(depth):
                if self._stack_obj[i] == <PyObject*>obj:
                    raise self._fail("circular reference", depth)
            raise self._fail(f"nesting deeper than max_depth={self._max_depth}", depth)
        self._stack_obj[depth] = <PyObject*>obj
        return 0

    cdef int _dict(self, object obj, list items, Py_ssize_t depth) except -1:
        """A dict (items None: PyDict_Next order) or a subclass's items() pairs."""
        cdef Py_ssize_t pos = 0, i
        cdef PyObject* k
        cdef PyObject* v
        cdef bint first = True
        cdef bint cache_keys
        self._enter(obj, depth)
        self._put_byte(b'{')
        if items is None:
            # Schema keys repeat across objects; the keys of a big map
            # (ConfigMap data, labels) mostly do not, and looking them up
            # would only evict the others and mispredict.
            cache_keys = PyDict_GET_SIZE(obj) <= _KEY_CACHE_MAX_DICT
            # Borrowed references: no user code runs while we hold them
            # (see _dict_subclass for the one place it can, and the pins).
            while PyDict_Next(obj, &pos, &k, &v):
                self._stack_key[depth] = k
                if type(<object>k) is str:
                    if cache_keys:
                        self._str_key(k, first, depth)
                    elif not self._short_str(<object>k, 0 if first else b',', b':'):
                        self._member_key(<object>k, first, depth)
                else:
                    self._member_key(<object>k, first, depth)
                first = False
                if type(<object>v) is str:
                    if not self._short_str(<object>v, 0, 0):
                        self._str(<object>v, depth + 1)
                else:
                    self._value(<object>v, depth + 1)
        else:
            for i in range(len(items)):
                pair = items[i]
                k = <PyObject*>(<tuple>pair)[0]
                self._stack_key[depth] = k
                self._member_key(<object>k, first, depth)
                first = False
                self._value((<tuple>pair)[1], depth + 1)
        return self._put_byte(b'}')

    cdef inline int _str_key(self, PyObject* key, bint first, Py_ssize_t depth) except -1:
        """[","]"key": for an exact str key, from the key cache when it is there."""
        cdef sc_key_entry* entry
        if self._keys != NULL and SC_KEY_BYTES + 1 <= self._alloc - self._pos:
            entry = sc_key_lookup(self._keys, key)
            if entry != NULL:
                if not first:
                    self._out[self._pos] = b','
                    self._pos += 1
                # A fixed-size copy (a few vector moves); only len bytes count.
                memcpy(self._out + self._pos, entry.text, SC_KEY_BYTES)
                self._pos += entry.len
                return 0
        return self._str_key_miss(key, first, depth)

    cdef int _str_key_miss(self, PyObject* key, bint first, Py_ssize_t depth) except -1:
        """_str_key when the cache cannot answer: encode the key, then remember it."""
        cdef Py_ssize_t start
        if self._keys == NULL:
            self._keys = <sc_key_entry*>PyMem_Calloc(SC_KEY_SLOTS, sizeof(sc_key_entry))
            if self._keys == NULL:
                raise MemoryError()
        if not first:
            self._put_byte(b',')
        start = self._pos
        if not self._short_str(<object>key, 0, b':'):
            self._str(<object>key, depth + 1)
            self._put_byte(b':')
        # _pos only moves forward while writing one frame; _out may have been
        # reallocated (scratch growth), so read it after writing.
        sc_key_store(self._keys, key, self._out + start, self._pos - start)
        return 0

    cdef int _member_key(self, object key, bint first, Py_ssize_t depth) except -1:
        if not first:
            self._put_byte(b',')
        if not isinstance(key, str):
            raise self._fail(f"dict key of type {type(key).__name__} is not a str", depth + 1)
        self._str(key, depth + 1)
        return self._put_byte(b':')

    cdef int _dict_subclass(self, object obj, Py_ssize_t depth) except -1:
        # json.dumps uses .items() of a dict subclass (an OrderedDict's order).
        # That runs user code, which could drop containers or keys we hold
        # borrowed references to: keep them alive until the frame is done.
        cdef Py_ssize_t i
        if self._pins is None:
            self._pins = []
        self._pins.append(obj)
        for i in range(depth):
            self._pins.append(<object>self._stack_obj[i])
            if self._stack_key[i] != NULL:
                self._pins.append(<object>self._stack_key[i])
        try:
            items = list(obj.items())
        except Exception as exc:
            raise self._fail(f"{type(obj).__name__}.items() failed: {exc!r}", depth) from None
        for pair in items:
            if type(pair) is not tuple or len(pair) != 2:
                raise self._fail(f"{type(obj).__name__}.items() must give (key, value) pairs", depth)
        return self._dict(obj, items, depth)

    cdef int _list(self, object obj, Py_ssize_t depth) except -1:
        cdef Py_ssize_t i = 0
        cdef PyObject* item
        self._enter(obj, depth)
        self._put_byte(b'[')
        self._stack_key[depth] = NULL
        # The length is re-read each time: a list only changes under us if
        # user code (a dict subclass's items()) mutates it.
        while i < PyList_GET_SIZE(obj):
            self._stack_idx[depth] = i
            item = PyList_GET_ITEM(obj, i)
            if type(<object>item) is str and self._short_str(<object>item, b',' if i else 0, 0):
                i += 1
                continue
            if i:
                self._put_byte(b',')
            self._value(<object>item, depth + 1)
            i += 1
        return self._put_byte(b']')

    cdef int _tuple(self, object obj, Py_ssize_t depth) except -1:
        cdef Py_ssize_t i, n = PyTuple_GET_SIZE(obj)
        self._enter(obj, depth)
        self._put_byte(b'[')
        self._stack_key[depth] = NULL
        for i in range(n):
            self._stack_idx[depth] = i
            if i:
                self._put_byte(b',')
            self._value(<object>PyTuple_GET_ITEM(obj, i), depth + 1)
        return self._put_byte(b']')

    cdef int _raw(self, object raw) except -1:
        """A raw object frame: copied verbatim unless it holds a newline (then re-encoded)."""
        cdef Py_buffer view
        if not isinstance(raw, _BYTES_TYPES):
            raise EncodeError(f"raw frame must be bytes, bytearray or memoryview, not {type(raw).__name__}")
        try:
            if type(raw) is memoryview and not raw.c_contiguous:
                raw = raw.tobytes()
            PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE)
        except ValueError as exc:  # a released memoryview
            raise EncodeError(f"raw frame is unreadable: {exc}") from None
        try:
            if view.len == 0:
                raise EncodeError("raw frame is empty")
            if memchr(view.buf, b'\n', view.len) == NULL:
                if <char*>view.buf < self._dst_hi and <char*>view.buf + view.len > self._dst_lo:
                    return self._raw(PyBytes_FromStringAndSize(<char*>view.buf, view.len))
                return self._put(<char*>view.buf, view.len)
            data = PyBytes_FromStringAndSize(<char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        try:
            obj = _json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise EncodeError(f"raw frame holds a newline and is not valid JSON: {exc}") from None
        return self._value(obj, 0)

    # -- frames ---------------------------------------------------------------

    cdef int _write(self, int job, object a, object b, object c, object d) except -1:
        if job == JOB_OBJECT:
            return self._value(a, 0)
        if job == JOB_EVENT:
            self._put_bytes_object(_check_event_type(a))
            self._value(b, 0)
            return self._put(b"}\n", 2)
        if job == JOB_RAW_EVENT:
            self._put_bytes_object(_check_event_type(a))
            self._raw(b)
            return self._put(b"}\n", 2)
        if job == JOB_ITEM or job == JOB_RAW_ITEM:
            _check_index(b)
            if b:
                self._put_byte(b',')
            return self._value(a, 0) if job == JOB_ITEM else self._raw(a)
        if job == JOB_LIST_START:
            if not isinstance(a, str) or not isinstance(b, str):
                raise EncodeError("list kind and api_version must be str")
            if not isinstance(c, dict):
                raise EncodeError(f"list metadata must be a dict, not {type(c).__name__}")
            if d is not None and (type(d) is not int or d < 0):
                raise ValueError(f"count must be None or a non-negative int, not {d!r}")
            self._put(b"{\"kind\":", 8)
            self._str(a, 0)
            self._put(b",\"apiVersion\":", 14)
            self._str(b, 0)
            self._put(b",\"metadata\":", 12)
            self._value(c, 0)
            return self._put(b",\"items\":[", 10)
        # JOB_LIST_END
        if type(a) is not int or a < 0:
            raise ValueError(f"count must be a non-negative int, not {a!r}")
        return self._put(b"]}", 2)

    cdef int _begin(self) except -1:
        if self._busy:
            raise EncodeError("JSONEncoder is not reentrant (called again while encoding)")
        self._busy = True
        self._pins = None
        return 0

    cdef void _use_scratch(self):
        self._out = self._scratch
        self._alloc = self._scratch_size
        self._limit = self._max_frame_size
        self._growable = True
        self._pos = 0
        self._dst_lo = self._dst_hi = NULL

    cdef void _trim_scratch(self):
        if self._scratch_size > _SCRATCH_KEEP:
            PyMem_Free(self._scratch)
            self._scratch = NULL
            self._scratch_size = 0

    cdef object _too_large(self):
        return FrameTooLarge(
            f"JSON frame exceeds max_frame_size={self._max_frame_size} bytes", self._max_frame_size
        )

    cdef bytes _run_bytes(self, int job, object a, object b, object c, object d):
        self._begin()
        try:
            self._use_scratch()
            try:
                self._write(job, a, b, c, d)
            except _Overflow:
                raise self._too_large() from None
            return PyBytes_FromStringAndSize(self._scratch, self._pos)
        finally:
            self._trim_scratch()
            self._pins = None
            self._busy = False

    cdef Py_ssize_t _run_into(self, object buf, int job, object a, object b, object c, object d) except -1:
        cdef Py_buffer view
        cdef Py_ssize_t start, room, n
        data = buf.data
        start = buf.length
        # Holding a buffer export pins the bytearray: it cannot be resized
        # (or freed) while we write into its memory.
        PyObject_GetBuffer(data, &view, PyBUF_WRITABLE)
        try:
            if start < 0 or start > view.len:
                raise ValueError(f"buffer length {start} outside 0..{view.len}")
            room = view.len - start
            self._begin()
            try:
                # Write in place, bounded by the room left; bytes past
                # buf.length are free space, so a failed attempt leaves the
                # buffer as it was (length and the frames before it).
                self._out = <char*>view.buf + start
                self._pos = 0
                self._alloc = self._limit = min(room, self._max_frame_size)
                self._growable = False
                self._dst_lo = <char*>view.buf
                self._dst_hi = <char*>view.buf + view.len
                overflow = False
                try:
                    self._write(job, a, b, c, d)
                except _Overflow:
                    overflow = True
                n = self._pos
                if overflow:
                    if room >= self._max_frame_size:
                        raise self._too_large()
                    # Rare (a buffer's last frame): was it too large for any
                    # buffer, or only for this one?  Size it aside to tell.
                    self._pins = None
                    self._use_scratch()
                    try:
                        self._write(job, a, b, c, d)
                    except _Overflow:
                        raise self._too_large() from None
                    raise BufferFull(f"JSON frame of {self._pos} bytes does not fit the {room} bytes left in the buffer")
            finally:
                self._trim_scratch()
                self._dst_lo = self._dst_hi = NULL
                self._pins = None
                self._busy = False
        finally:
            PyBuffer_Release(&view)
        buf.length = start + n
        return n

    # -- the Encoder protocol -------------------------------------------------

    def encode(self, obj):
        """The object frame of ``obj``: compact JSON as UTF-8 bytes."""
        return self._run_bytes(JOB_OBJECT, obj, None, None, None)

    def encode_into(self, obj, buf):
        """Append the object frame of ``obj`` to ``buf``; returns its size."""
        return self._run_into(buf, JOB_OBJECT, obj, None, None, None)

    def encode_event(self, type, obj):
        """One watch event line: ``{"type":T,"object":OBJ}`` and a newline."""
        return self._run_bytes(JOB_EVENT, type, obj, None, None)

    def encode_event_into(self, type, obj, buf):
        """Append one watch event line to ``buf``; returns its size."""
        return self._run_into(buf, JOB_EVENT, type, obj, None, None)

    def encode_raw_event(self, type, raw):
        """A watch event line embedding the JSON object frame ``raw`` as is."""
        return self._run_bytes(JOB_RAW_EVENT, type, raw, None, None)

    def encode_raw_event_into(self, type, raw, buf):
        """Append a watch event line embedding ``raw`` to ``buf``; returns its size."""
        return self._run_into(buf, JOB_RAW_EVENT, type, raw, None, None)

    def encode_list_start_into(self, buf, *, kind, api_version, metadata, count=None):
        """Append ``{"kind":K,"apiVersion":V,"metadata":M,"items":[`` to ``buf``."""
        return self._run_into(buf, JOB_LIST_START, kind, api_version, metadata, count)

    def encode_list_item_into(self, obj, buf, index):
        """Append list item ``index`` (preceded by ``,`` unless it is the first)."""
        return self._run_into(buf, JOB_ITEM, obj, index, None, None)

    def encode_raw_list_item_into(self, raw, buf, index):
        """Append the raw object frame ``raw`` as list item ``index``."""
        return self._run_into(buf, JOB_RAW_ITEM, raw, index, None, None)

    def encode_list_end_into(self, buf, count):
        """Append ``]}``, closing the list body."""
        return self._run_into(buf, JOB_LIST_END, count, None, None, None)


# -- decoding -------------------------------------------------------------------

def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


_parse = _json.JSONDecoder(parse_constant=_reject_constant).decode


cdef object _parse_frame(bytes data, Py_ssize_t base, Py_ssize_t max_depth, Py_ssize_t max_values, bint unique_keys):
    """Parse one complete JSON text; errors carry offsets relative to ``base``."""
    cdef int what = 0
    cdef Py_ssize_t at
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8: {exc.reason}", base + exc.start) from None
    at = sc_prescan(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), max_depth, max_values, &what)
    if at >= 0:
        raise _json_py.prescan_error(what, base + at, max_depth, max_values)
    if unique_keys:  # the twin's parse: the same hook, and its duplicate report
        return _json_py.parse_text(text, base, data)
    try:
        return _parse(text)
    except _json.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc.msg}", base + len(text[: exc.pos].encode("utf-8"))) from None
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"invalid JSON: {exc}", base) from None


def _parse_frame_compiled(data, base, max_depth, max_values, unique_keys):
    return _parse_frame(data, base, max_depth, max_values, unique_keys)


class JSONDecoder(_json_py.JSONDecoder):
    """Decodes object frames, and watch streams fed in arbitrary pieces.

    ``feed`` bytes, then iterate to get one :class:`Event` per complete line.
    Offsets in errors count from the first byte ever fed.  After an error the
    decoder raises that error again on every call.  The framing is the
    pure-Python twin's; the pre-scan of each frame is compiled.
    """

    _parse_frame = staticmethod(_parse_frame_compiled)
