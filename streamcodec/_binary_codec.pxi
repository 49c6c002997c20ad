# Compiled plumbing shared by _cbor.pyx and _msgpack.pyx: each includes this
# file (``include "_binary_codec.pxi"``), so the logic below is written once
# and compiled into both modules, with the format's own heads inlined.
#
# The encoder plumbing is a cdef base class, _ScratchEncoder: it runs once per
# encoded object, so it stays in C.  The decoders are _framing_py's
# StreamDecoderBase (the twins' framing, one copy of the stream logic) with a
# compiled scanner and builder: the per-byte work is compiled, the per-frame
# bookkeeping is Python.
#
# The including module defines, before the include:
#   FORMAT_NAME       str, the format's name in "cannot encode" errors
#   OBJECT_TAG        bytes written before every object's item
#   EVENT_PREFIX      dict: event type -> event frame bytes before the object
#   LIST_HEAD         bytes of a list body up to its "kind" key
#   LIST_END          bytes closing a list body (may be empty)
#   NULL_BYTE, TRUE_BYTE, FALSE_BYTE, MAX_HEAD   (cdef enum) the bytes of
#                     None/True/False and the longest head written
#   check_size(what, n)    EncodeError for a str/bin/array/map size the
#                          format cannot carry
#   put_text_head(p, n), put_bytes_head, put_array_head, put_map_head
#                     write the head of that type, return its size
# and anywhere in the module:
#   check_raw_frame(p, n)  EncodeError unless p[:n] can be an object frame
#   scan_frame(...)        the resumable scanner (see _framing_py's _scan)
#   build_item(data, &pos, base, unique)  the object of a scanned item at pos
#                     (map entries stored with set_entry)
# It then subclasses _ScratchEncoder for integer, real, check_list_count and
# put_items_head, and _CompiledStreamDecoder for the decoder's docstring.

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.dict cimport PyDict_Next, PyDict_SetItem, PyDict_Size
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy, memmove

from ._framing_py import StreamDecoderBase, check_limits, check_list_header, duplicate_key
from .errors import BufferFull, DecodeError, EncodeError, FrameTooLarge, TooManyValues
from .limits import DEFAULT_MAX_FRAME_SIZE, EVENT_TYPES, MAX_DEPTH
from .pool import PoolBuffer


cdef extern from "Python.h":
    Py_ssize_t PyDict_GET_SIZE(object o)
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    const char* PyUnicode_AsUTF8AndSize_checked "PyUnicode_AsUTF8AndSize" (object o, Py_ssize_t* size) except NULL
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(object o) except? -1
    bint PyUnicode_Check(object o)
    bint PyLong_Check(object o)
    bint PyFloat_Check(object o)
    bint PyDict_Check(object o)
    bint PyList_Check(object o)
    bint PyTuple_Check(object o)
    bint PyBytes_Check(object o)
    bint PyByteArray_Check(object o)
    bint PyMemoryView_Check(object o)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)


#: Scratch bytes kept between calls; a larger area (a huge frame) is freed
#: after the call so one big object does not pin memory in the encoder.
cdef Py_ssize_t KEEP_SCRATCH = 256 * 1024


cdef inline void put_u64(uint8_t* p, uint64_t v) noexcept:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(v >> (56 - 8 * i))


cdef inline uint64_t load_be(const uint8_t* p, int width) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(width):
        v = (v << 8) | p[i]
    return v


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


cdef int check_room(object data, Py_ssize_t start, Py_ssize_t n) except -1:
    """BufferFull unless ``n`` bytes fit the bytearray ``data`` from ``start``."""
    if n > PyByteArray_GET_SIZE(data) - start:
        raise BufferFull(f"frame of {n} bytes does not fit the {PyByteArray_GET_SIZE(data) - start} bytes left in the buffer")
    return 0


cdef const char* utf8_of(object s, Py_ssize_t* n) except NULL:
    """UTF-8 of a non-ASCII str (cached in the str by CPython)."""
    try:
        return PyUnicode_AsUTF8AndSize_checked(s, n)
    except UnicodeEncodeError:
        raise EncodeError("str contains a lone surrogate (not valid UTF-8)") from None


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


cdef class _ScratchEncoder:
    """The Encoder protocol (:mod:`streamcodec.protocol`) around a scratch area.

    Encoding writes C bytes into one reusable scratch area owned by the
    encoder (heads and numbers by direct stores, strings by memcpy, one
    capacity check per item) and then copies the finished frame into the
    PoolBuffer's bytearray with a single memcpy.  The frame goes through the
    scratch area because its size is unknown until it is encoded, and the
    contract requires the destination buffer to be left byte-for-byte
    untouched when the frame turns out not to fit (BufferFull) or the object
    cannot be encoded.  Raw pass-through knows its size up front and is
    copied straight into the destination.
    """

    cdef uint8_t* out  # scratch area
    cdef Py_ssize_t pos
    cdef Py_ssize_t cap
    cdef Py_ssize_t limit
    cdef int _max_depth
    cdef PyObject** path  # containers being encoded, for the cycle report
    cdef bint busy
    cdef bytes bytes_prefix  # written before every byte string's head (a CBOR tag), or None

    def __cinit__(self, *args, **kwargs):
        self.out = NULL
        self.path = NULL
        self.bytes_prefix = None

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
        """Largest frame written, in bytes (FrameTooLarge beyond)."""
        return self.limit

    @property
    def max_depth(self):
        """Deepest container nesting written (EncodeError beyond)."""
        return self._max_depth

    # -- format hooks -----------------------------------------------------
    cdef int integer(self, object o) except -1:
        raise NotImplementedError

    cdef int real(self, double v) except -1:
        raise NotImplementedError

    cdef int check_list_count(self, object count) except -1:
        """ValueError (EncodeError: too large) unless the format takes ``count`` items in a list body."""
        raise NotImplementedError

    cdef int put_items_head(self, object count) except -1:
        """Write the head of a list body's items array."""
        raise NotImplementedError

    # -- scratch area -----------------------------------------------------
    cdef int grow(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t want = self.pos + need
        if want > self.limit + 16:
            # Every write reserves at most MAX_HEAD (<= 9) bytes beyond what
            # it uses, so a frame that truly fits max_frame_size never gets here.
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
        check_size("str", n)
        p = self.reserve(n + MAX_HEAD)
        p += put_text_head(p, <uint64_t>n)
        memcpy(p, data, n)
        self.pos = (p - self.out) + n
        return 0

    cdef int byte_string(self, const char* data, Py_ssize_t n) except -1:
        check_size("bin", n)
        cdef Py_ssize_t k = len(self.bytes_prefix) if self.bytes_prefix is not None else 0
        cdef uint8_t* p = self.reserve(n + MAX_HEAD + k)
        if k:
            memcpy(p, PyBytes_AS_STRING(self.bytes_prefix), k)
            p += k
        p += put_bytes_head(p, <uint64_t>n)
        memcpy(p, data, n)
        self.pos = (p - self.out) + n
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
        check_size("map", n)
        cdef uint8_t* p = self.reserve(MAX_HEAD)
        self.pos += put_map_head(p, <uint64_t>n)
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
        check_size("array", n)
        cdef uint8_t* p = self.reserve(MAX_HEAD)
        self.pos += put_array_head(p, <uint64_t>n)
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
            p[0] = NULL_BYTE if o is None else (TRUE_BYTE if o is True else FALSE_BYTE)
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
        raise EncodeError(f"cannot encode objects of type {type(o).__name__} in {FORMAT_NAME}")

    # -- frames -----------------------------------------------------------
    cdef int begin(self) except -1:
        if self.busy:
            raise RuntimeError(f"{type(self).__name__} re-entered while encoding")
        self.busy = True
        self.pos = 0
        return 0

    cdef int put_bytes(self, bytes data) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef uint8_t* p = self.reserve(n)
        memcpy(p, PyBytes_AS_STRING(data), n)
        self.pos += n
        return 0

    cdef inline int check_frame_size(self) except -1:
        if self.pos > self.limit:
            raise FrameTooLarge(f"frame exceeds max_frame_size {self.limit}", self.limit)
        return 0

    cdef int object_frame(self, bytes prefix, object obj) except -1:
        self.put_bytes(prefix)
        self.put_bytes(OBJECT_TAG)
        self.item(obj, 0)
        return self.check_frame_size()

    cdef bytes scratch_bytes(self):
        return PyBytes_FromStringAndSize(<char*>self.out, self.pos)

    cdef Py_ssize_t scratch_into(self, object buf) except -1:
        data, length = target_buffer(buf)
        cdef Py_ssize_t start = length
        cdef Py_ssize_t n = self.pos
        check_room(data, start, n)
        memcpy(PyByteArray_AS_STRING(data) + start, self.out, n)
        buf.length = start + n
        return n

    cdef void end(self) noexcept:
        self.busy = False
        self.shrink()

    def encode(self, obj):
        """One object frame."""
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
        """One event frame: {"type": type, "object": the object frame of ``obj``}."""
        prefix = event_prefix(type)
        self.begin()
        try:
            self.object_frame(prefix, obj)
            return self.scratch_bytes()
        finally:
            self.end()

    def encode_event_into(self, type, obj, buf):
        """Append one event frame to ``buf``; returns its size."""
        prefix = event_prefix(type)
        target_buffer(buf)
        self.begin()
        try:
            self.object_frame(prefix, obj)
            return self.scratch_into(buf)
        finally:
            self.end()

    cdef Py_ssize_t raw_size(self, bytes prefix, _RawView raw) except -1:
        check_raw_frame(<const uint8_t*>raw.view.buf, raw.view.len)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(prefix) + raw.view.len
        if n > self.limit:
            raise FrameTooLarge(f"frame of {n} bytes exceeds max_frame_size {self.limit}", self.limit)
        return n

    cdef Py_ssize_t raw_into(self, bytes prefix, object raw_obj, object buf) except -1:
        data, length = target_buffer(buf)
        cdef _RawView raw = _RawView(raw_obj)
        cdef Py_ssize_t n = self.raw_size(prefix, raw)
        cdef Py_ssize_t start = length
        check_room(data, start, n)
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
        """Append the event frame of ``raw`` (embedded verbatim) to ``buf``; returns its size."""
        return self.raw_into(event_prefix(type), raw, buf)

    def encode_list_start_into(self, buf, *, kind, api_version, metadata, count=None):
        """map(4) {kind, apiVersion, metadata, "items": the items array's head}."""
        self.check_list_count(count)
        check_list_header(kind, api_version, metadata)
        target_buffer(buf)
        self.begin()
        try:
            self.put_bytes(LIST_HEAD)
            self.text("kind")
            self.text(kind)
            self.text("apiVersion")
            self.text(api_version)
            self.text("metadata")
            self.item(metadata, 0)
            self.text("items")
            self.put_items_head(count)
            self.check_frame_size()
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
        """What closes the items array (and so the list body), if anything."""
        data, length = target_buffer(buf)
        cdef Py_ssize_t start = length
        cdef Py_ssize_t n = PyBytes_GET_SIZE(LIST_END)
        check_room(data, start, n)
        memcpy(PyByteArray_AS_STRING(data) + start, PyBytes_AS_STRING(LIST_END), n)
        buf.length = start + n
        return n


# ---------------------------------------------------------------------------
# Decoding


cdef class ScanState:
    """A compiled scanner's progress through one frame (the twins use
    _framing_py's ScanState): the next head's index, the open containers and
    whether the structure is done while the last string's bytes are still
    missing.  ``tag`` is CBOR's tag waiting for its item (-1: none);
    ``values_left`` counts down the frame's values budget (max_values)."""

    cdef public Py_ssize_t pos  # public: StreamDecoderBase._rebase shifts it
    cdef int sp  # open containers on stack
    cdef int64_t tag
    cdef bint complete
    cdef int64_t* stack
    cdef Py_ssize_t values_left
    cdef Py_ssize_t values_budget

    def __cinit__(self, Py_ssize_t pos, int capacity, Py_ssize_t values_left):
        self.stack = <int64_t*>PyMem_Malloc(capacity * sizeof(int64_t))
        if self.stack == NULL:
            raise MemoryError()
        self.pos = pos
        self.values_left = self.values_budget = values_left
        self.sp = 0
        self.tag = -1
        self.complete = False

    def __dealloc__(self):
        PyMem_Free(self.stack)


# Scan-stack codes of open indefinite-length containers (CBOR's); an open
# definite container is (remaining items << 1) | is_map, always > 0.
cdef enum:
    INDEF_ARRAY = -1
    INDEF_MAP_KEY = -2
    INDEF_MAP_VALUE = -3


cdef inline bint close_item(ScanState st) noexcept:
    """An item ended: count it against the open containers it completes.
    True when no container is left open (the item was the frame's own)."""
    cdef int64_t top
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
        return False
    return True


cdef inline int count_value(ScanState st, Py_ssize_t offset) except -1:
    """One more value in the frame: TooManyValues once the budget is spent."""
    st.values_left -= 1
    if st.values_left < 0:
        raise TooManyValues(st.values_budget, offset)
    return 0


cdef inline Py_ssize_t frame_end(ScanState st, Py_ssize_t pos, Py_ssize_t end) noexcept:
    """The frame's structure ends at ``pos``: that index, or -1 while the
    bytes of its last string (up to ``pos``) are not all here yet."""
    st.pos = pos
    if pos > end:
        st.complete = True
        return -1
    return pos


class _CompiledStreamDecoder(StreamDecoderBase):
    """StreamDecoderBase with this module's compiled scanner and builder."""

    def _new_scan_state(self, Py_ssize_t pos):
        # Room for the event map above an object of max_depth levels.
        return ScanState(pos, self._max_depth + 2, self._values_budget)

    def _scan(self, data, Py_ssize_t end, ScanState state not None, Py_ssize_t frame_start, int depth_limit, Py_ssize_t base):
        cdef Py_buffer view
        cdef Py_ssize_t frame_end
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            frame_end = scan_frame(state, <const uint8_t*>view.buf, end, frame_start, depth_limit, base, self._max_frame_size)
        finally:
            PyBuffer_Release(&view)
        return None if frame_end < 0 else frame_end

    def _build(self, data, Py_ssize_t start, Py_ssize_t end, Py_ssize_t base):
        cdef Py_buffer view
        cdef Py_ssize_t pos = start
        # The view also keeps a bytearray from being resized while it is read.
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return build_item(<const uint8_t*>view.buf, &pos, base, self._unique_keys)
        finally:
            PyBuffer_Release(&view)


cdef inline int set_entry(dict result, object key, object value, Py_ssize_t i, bint unique, Py_ssize_t offset) except -1:
    """``result[key] = value``, entry ``i`` of its map (the key's head at ``offset``).  With
    ``unique``, a map that did not grow took a key it had: DuplicateKey (after the value, as Go's)."""
    PyDict_SetItem(result, key, value)
    if unique and PyDict_GET_SIZE(result) <= i:
        raise duplicate_key(key, i, offset)
    return 0


cdef object decode_utf8(const uint8_t* data, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t base, str what):
    try:
        return PyUnicode_DecodeUTF8(<const char*>data + pos, n, NULL)
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 in {what}: {exc.reason}", base + pos + exc.start) from None
