# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Kubernetes' typed protobuf from stored JSON and back, compiled.

The encoder classes are the twin's (``_kubeproto_py``: envelopes, dict objects, list starts);
this module replaces their hot path, stored JSON -> message, with a single pass over the JSON
bytes that writes the wire format straight into the pool buffer: no Python objects per
value.  Output is byte-identical to the twin's for compact JSON (what this project stores).

The decoder keeps the twin's envelope handling and builds the message's dict in C
(:class:`FrameReader`, the twin's ``_FrameReader`` step for step): the informer decodes every
object of a collection through it, and a 1 MiB Secret's ``[]byte`` becomes its base64 text
written straight into a str, without the twin's bytes object to decode.

A nested message's length precedes it, and is only known at its end: the writer reserves length
bytes by an estimate (for a message field, as many as the field took the last time: the objects
of a kind are alike), writes the message, then writes the length, moving the message when the
reservation was wrong.  With no destination it only counts: that is how a list learns its items'
size.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_CheckExact
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from cpython.unicode cimport PyUnicode_DATA, PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8, PyUnicode_New
from libc.string cimport memcmp, memcpy, memmove, memchr
from libc.stdlib cimport malloc, free, realloc, strtod
from libc.stdint cimport INT64_MAX, INT64_MIN, int64_t, uint8_t, uint32_t, uint64_t

import sys
import weakref

from . import _kubeproto_py
from ._kubeproto_py import MAGIC, UNKNOWN_TAIL, OBJECT_META, parse_duration
from .errors import BufferFull, DecodeError, EncodeError, FrameTooLarge, TooManyValues
from .kube_schema import KINDS, SHAPES

__all__ = ["KubeProtoEncoder", "KindEncoder", "KubeProtoDecoder"]

cdef enum:
    K_STRING = 0
    K_BYTES = 1
    K_BOOL = 2
    K_INT32 = 3
    K_INT64 = 4
    K_DOUBLE = 5
    K_MESSAGE = 6
    K_TIME = 7
    K_QUANTITY = 8
    K_INTORSTRING = 9
    K_RAWJSON = 10
    K_DURATION = 11
    S_ONE = 0
    S_REPEATED = 1
    S_MAP = 2
    MAX_PATH = 4
    MAX_NESTING = 200  # messages in messages; core/v1's deepest is ~12

assert KINDS.index("DURATION") == K_DURATION and SHAPES.index("MAP") == S_MAP

ctypedef struct CField:
    const char* key  # into its message's keys, side by side
    int keylen  # -1: an empty slot
    int number
    int message
    unsigned char kind
    unsigned char shape
    unsigned char npath
    unsigned char len_bytes  # a MESSAGE field's length bytes the last time: the next reservation
    # A STRING/BOOL/INT32/INT64 field (or array of them), or a map of STRING or QUANTITY, whose tag is
    # 1-2 bytes: ``scalar`` and ``map_entry`` write its common values with these tag bytes and one
    # capacity check.
    unsigned char fast
    uint8_t tag[2]
    unsigned char plain  # no quote or backslash in the key: its bytes then a quote are the key, in JSON
    int path[MAX_PATH]
    CField* next  # the field whose key followed this one's the last time: the next key's guess

ctypedef struct CMessage:
    int is_object_meta
    # The fields are an open-addressing table on key_hash, half empty: a key costs one hash and,
    # almost always, one slot and one comparison, within the few cache lines of the message.
    uint32_t mask
    CField* fields  # mask + 1 slots
    # The objects of a kind list their keys in the same order: the first key's field the last time,
    # then each field's ``next``, is checked against the key's bytes before a lookup.
    CField* first

ctypedef struct Out:
    uint8_t* base  # NULL: count only
    Py_ssize_t pos
    Py_ssize_t cap

cdef signed char B64DEC[256]
# One table per position in a quad: the character's 6 bits already shifted to their place in the
# 24-bit group, and bit 24 set for a character outside the alphabet, so a quad is four loads OR'ed.
cdef uint32_t B64Q0[256]
cdef uint32_t B64Q1[256]
cdef uint32_t B64Q2[256]
cdef uint32_t B64Q3[256]


# Base64 out: the two characters of every 12 bits, so 3 bytes are two 2-byte copies.
cdef char B64PAIR[8192]


cdef void _init_b64():
    cdef int i
    cdef uint32_t v
    cdef const char* alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for i in range(4096):
        B64PAIR[2 * i] = alphabet[i >> 6]
        B64PAIR[2 * i + 1] = alphabet[i & 63]
    for i in range(256):
        B64DEC[i] = -1
        B64Q0[i] = B64Q1[i] = B64Q2[i] = B64Q3[i] = 1 << 24
    for i in range(64):
        B64DEC[<uint8_t>alphabet[i]] = i
        v = i
        B64Q0[<uint8_t>alphabet[i]] = v << 18
        B64Q1[<uint8_t>alphabet[i]] = v << 12
        B64Q2[<uint8_t>alphabet[i]] = v << 6
        B64Q3[<uint8_t>alphabet[i]] = v

_init_b64()


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif

    /* Index of the first quote or backslash in s[j:n], or n: 16 bytes a step, since most strings are
       longer than the few bytes a byte loop wins on. */
    static inline Py_ssize_t kp_find_quote_or_backslash(const unsigned char *s, Py_ssize_t j, Py_ssize_t n) {
    #if defined(__SSE2__)
        const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8(92);  /* a backslash */
        for (; j + 16 <= n; j += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(s + j));
            unsigned mask = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(a, quote), _mm_cmpeq_epi8(a, bslash)));
            if (mask) return j + __builtin_ctz(mask);
        }
    #endif
        for (; j < n; j++) {
            if (s[j] == '"' || s[j] == 92) return j;
        }
        return n;
    }

    /* memcpy(d, s, n) without a call for the short strings most fields hold: two overlapping
       loads and stores cover any n from half the width to the width. */
    static inline void kp_copy(unsigned char *d, const unsigned char *s, Py_ssize_t n) {
        uint64_t a, b, c, e;
        uint32_t u, v;
        if (n > 32) {
            memcpy(d, s, n);
        } else if (n >= 16) {
            memcpy(&a, s, 8);
            memcpy(&b, s + 8, 8);
            memcpy(&c, s + n - 16, 8);
            memcpy(&e, s + n - 8, 8);
            memcpy(d, &a, 8);
            memcpy(d + 8, &b, 8);
            memcpy(d + n - 16, &c, 8);
            memcpy(d + n - 8, &e, 8);
        } else if (n >= 8) {
            memcpy(&a, s, 8);
            memcpy(&b, s + n - 8, 8);
            memcpy(d, &a, 8);
            memcpy(d + n - 8, &b, 8);
        } else if (n >= 4) {
            memcpy(&u, s, 4);
            memcpy(&v, s + n - 4, 4);
            memcpy(d, &u, 4);
            memcpy(d + n - 4, &v, 4);
        } else if (n > 0) {
            d[0] = s[0];
            d[n >> 1] = s[n >> 1];
            d[n - 1] = s[n - 1];
        }
    }

    /* a[0:n] == b[0:n] for the short keys of JSON objects, without a call to memcmp. */
    static inline int kp_same_key(const char *a, const unsigned char *b, Py_ssize_t n) {
        uint64_t x, y;
        uint32_t u, v;
        Py_ssize_t i;
        if (n >= 8) {
            for (i = 0; i + 8 < n; i += 8) {
                memcpy(&x, a + i, 8);
                memcpy(&y, b + i, 8);
                if (x != y) return 0;
            }
            memcpy(&x, a + n - 8, 8);
            memcpy(&y, b + n - 8, 8);
            return x == y;
        }
        if (n >= 4) {
            memcpy(&u, a, 4);
            memcpy(&v, b, 4);
            if (u != v) return 0;
            memcpy(&u, a + n - 4, 4);
            memcpy(&v, b + n - 4, 4);
            return u == v;
        }
        for (i = 0; i < n; i++) {
            if ((unsigned char)a[i] != b[i]) return 0;
        }
        return 1;
    }
    """
    Py_ssize_t kp_find_quote_or_backslash(const uint8_t* s, Py_ssize_t j, Py_ssize_t n) nogil
    void kp_copy(uint8_t* d, const uint8_t* s, Py_ssize_t n) nogil
    bint kp_same_key(const char* a, const uint8_t* b, Py_ssize_t n) nogil


cdef inline uint32_t key_hash(const uint8_t* key, Py_ssize_t n) noexcept nogil:
    """Length and three bytes: enough to tell a message's keys apart (~1.1 probes a key over core/v1)."""
    if n == 0:
        return 0
    return <uint32_t>(n * 0x1F + key[0] * 0x3B + key[n - 1] * 0x65 + key[n >> 1] * 0x11)


cdef inline int vsize(uint64_t n) noexcept nogil:
    cdef int k = 1
    while n >= 0x80:
        n >>= 7
        k += 1
    return k


cdef int full(Out* o, Py_ssize_t need) except -1:
    raise BufferFull(f"the frame does not fit the {o.cap} bytes left in the buffer")


cdef inline int put(Out* o, const void* src, Py_ssize_t k) except -1:
    if o.pos + k > o.cap:
        full(o, k)
    if o.base != NULL:
        kp_copy(o.base + o.pos, <const uint8_t*>src, k)
    o.pos += k
    return 0


cdef inline uint8_t* write_varint(uint8_t* p, uint64_t n) noexcept nogil:
    while n >= 0x80:
        p[0] = <uint8_t>((n & 0x7F) | 0x80)
        n >>= 7
        p += 1
    p[0] = <uint8_t>n
    return p + 1


cdef inline int put_varint(Out* o, uint64_t n) except -1:
    cdef uint8_t tmp[10]
    cdef int k = 0
    while n >= 0x80:
        tmp[k] = <uint8_t>((n & 0x7F) | 0x80)
        n >>= 7
        k += 1
    tmp[k] = <uint8_t>n
    return put(o, tmp, k + 1)


cdef inline int put_tag(Out* o, int number, int wire) except -1:
    return put_varint(o, (<uint64_t>number << 3) | wire)


cdef inline int put_len_field(Out* o, int number, const uint8_t* src, Py_ssize_t k) except -1:
    """Field ``number`` holding ``src[0:k]``: tag, length and bytes behind one capacity check."""
    cdef uint64_t tag = (<uint64_t>number << 3) | 2
    cdef Py_ssize_t need = vsize(tag) + vsize(<uint64_t>k) + k
    if o.pos + need > o.cap:
        full(o, need)
    if o.base != NULL:
        kp_copy(write_varint(write_varint(o.base + o.pos, tag), <uint64_t>k), src, k)
    o.pos += need
    return 0


cdef inline Py_ssize_t reserve_len(Out* o, int reserved) except -1:
    """Reserve ``reserved`` length bytes of a nested field; returns where they start."""
    cdef Py_ssize_t mark = o.pos
    if o.pos + reserved > o.cap:
        full(o, reserved)
    o.pos += reserved
    return mark


cdef inline Py_ssize_t open_len(Out* o, Py_ssize_t estimate, int* reserved) except -1:
    """Reserve the length bytes of a nested field of about ``estimate`` bytes; returns where they start."""
    reserved[0] = vsize(<uint64_t>estimate)
    return reserve_len(o, reserved[0])


cdef inline int close_len(Out* o, Py_ssize_t mark, int reserved) except -1:
    """Write the length of the field opened at ``mark``; returns how many bytes it took."""
    cdef Py_ssize_t length = o.pos - mark - reserved
    if reserved == 1 and length < 0x80:  # most: without a call
        if o.base != NULL:
            o.base[mark] = <uint8_t>length
        return 1
    return close_len_moved(o, mark, reserved)


cdef int close_len_moved(Out* o, Py_ssize_t mark, int reserved) except -1:
    """close_len when the length or its reservation is not one byte (moving the field if they differ)."""
    cdef Py_ssize_t length = o.pos - mark - reserved
    cdef int need = vsize(<uint64_t>length)
    cdef uint64_t n = <uint64_t>length
    cdef int i
    if need != reserved:
        if need > reserved and o.pos + (need - reserved) > o.cap:
            full(o, need - reserved)
        if o.base != NULL:
            memmove(o.base + mark + need, o.base + mark + reserved, length)
        o.pos += need - reserved
    if o.base != NULL:
        for i in range(need - 1):
            o.base[mark + i] = <uint8_t>((n & 0x7F) | 0x80)
            n >>= 7
        o.base[mark + need - 1] = <uint8_t>n
    return need


cdef inline int decimal_len(uint64_t v) noexcept nogil:
    cdef int k = 1
    while v >= 10:
        v //= 10
        k += 1
    return k


cdef int put_decimal_field(Out* o, int number, uint64_t v) except -1:
    """Field ``number`` holding the decimal text of ``v`` (a resourceVersion)."""
    cdef int k = decimal_len(v)
    cdef uint8_t* p
    put_tag(o, number, 2)
    put_varint(o, k)
    if o.pos + k > o.cap:
        full(o, k)
    if o.base != NULL:
        p = o.base + o.pos + k
        while True:
            p -= 1
            p[0] = <uint8_t>(48 + v % 10)
            v //= 10
            if v == 0:
                break
    o.pos += k
    return 0


cdef int bad(str what, const uint8_t* s, Py_ssize_t i) except -1:
    raise EncodeError(f"stored JSON: {what} at byte {i}")


cdef inline Py_ssize_t ws(const uint8_t* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # one comparison for the usual case, compact JSON: the next byte is no whitespace
    while i < n and s[i] <= 32 and (s[i] == 32 or s[i] == 10 or s[i] == 13 or s[i] == 9):
        i += 1
    return i


cdef inline Py_ssize_t string_end(const uint8_t* s, Py_ssize_t i, Py_ssize_t n, bint* escaped) except -1:
    """``s[i]`` is the opening quote: the index of the closing one."""
    cdef Py_ssize_t j = kp_find_quote_or_backslash(s, i + 1, n)
    escaped[0] = False
    if j < n and s[j] == 34:
        return j
    return escaped_string_end(s, i, n, escaped)


cdef Py_ssize_t escaped_string_end(const uint8_t* s, Py_ssize_t i, Py_ssize_t n, bint* escaped) except -1:
    """string_end of a string with a backslash, or unterminated."""
    cdef Py_ssize_t j = i + 1, k
    cdef const uint8_t* q
    while True:
        q = <const uint8_t*>memchr(s + j, 34, n - j) if j < n else NULL
        if q == NULL:
            bad("unterminated string", s, i)
        j = q - s
        # a quote preceded by an odd run of backslashes is escaped
        if j > i + 1 and s[j - 1] == 92:
            escaped[0] = True
            k = j - 1
            while k > i and s[k] == 92:
                k -= 1
            if (j - 1 - k) % 2 == 1:
                j += 1
                continue
        elif not escaped[0] and memchr(s + i + 1, 92, j - i - 1) != NULL:
            escaped[0] = True
        return j


cdef inline int hexval(uint8_t c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef int read_hex4(const uint8_t* s, Py_ssize_t i, Py_ssize_t end) except -1:
    cdef int v = 0, k, h
    if i + 4 > end:
        bad("truncated \\u escape", s, i)
    for k in range(4):
        h = hexval(s[i + k])
        if h < 0:
            bad("bad \\u escape", s, i)
        v = v * 16 + h
    return v


cdef int put_unescaped(Out* o, const uint8_t* s, Py_ssize_t i, Py_ssize_t end) except -1:
    """The text of the string body ``s[i:end]`` with its escapes resolved, as UTF-8."""
    cdef Py_ssize_t start
    cdef uint8_t c
    cdef int cp, lo
    cdef uint8_t u[4]
    while i < end:
        start = i
        while i < end and s[i] != 92:
            i += 1
        if i > start:
            put(o, s + start, i - start)
        if i >= end:
            break
        if i + 1 >= end:
            bad("bad escape", s, i)
        c = s[i + 1]
        i += 2
        if c == 110:
            put(o, b"\n", 1)
        elif c == 116:
            put(o, b"\t", 1)
        elif c == 114:
            put(o, b"\r", 1)
        elif c == 98:
            put(o, b"\x08", 1)
        elif c == 102:
            put(o, b"\x0c", 1)
        elif c == 34 or c == 92 or c == 47:
            put(o, &c, 1)
        elif c == 117:
            cp = read_hex4(s, i, end)
            i += 4
            if 0xD800 <= cp <= 0xDBFF:
                if i + 6 <= end and s[i] == 92 and s[i + 1] == 117:
                    lo = read_hex4(s, i + 2, end)
                    if 0xDC00 <= lo <= 0xDFFF:
                        i += 6
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                    else:
                        raise EncodeError("stored JSON: a string holds a lone surrogate (not valid UTF-8)")
                else:
                    raise EncodeError("stored JSON: a string holds a lone surrogate (not valid UTF-8)")
            elif 0xDC00 <= cp <= 0xDFFF:
                raise EncodeError("stored JSON: a string holds a lone surrogate (not valid UTF-8)")
            if cp < 0x80:
                u[0] = cp
                put(o, u, 1)
            elif cp < 0x800:
                u[0] = 0xC0 | (cp >> 6)
                u[1] = 0x80 | (cp & 0x3F)
                put(o, u, 2)
            elif cp < 0x10000:
                u[0] = 0xE0 | (cp >> 12)
                u[1] = 0x80 | ((cp >> 6) & 0x3F)
                u[2] = 0x80 | (cp & 0x3F)
                put(o, u, 3)
            else:
                u[0] = 0xF0 | (cp >> 18)
                u[1] = 0x80 | ((cp >> 12) & 0x3F)
                u[2] = 0x80 | ((cp >> 6) & 0x3F)
                u[3] = 0x80 | (cp & 0x3F)
                put(o, u, 4)
        else:
            bad("bad escape", s, i - 2)
    return 0


cdef Py_ssize_t skip_value(const uint8_t* s, Py_ssize_t i, Py_ssize_t n) except -1:
    """Index just past the JSON value at ``s[i]`` (containers skipped without recursion)."""
    cdef int depth = 0
    cdef bint escaped
    cdef uint8_t c
    while True:
        i = ws(s, i, n)
        if i >= n:
            bad("truncated value", s, i)
        c = s[i]
        if c == 34:
            i = string_end(s, i, n, &escaped) + 1
        elif c == 123 or c == 91:
            depth += 1
            i += 1
            continue
        elif c == 125 or c == 93:
            depth -= 1
            i += 1
            if depth < 0:
                bad("unbalanced brackets", s, i)
        elif c == 44 or c == 58:
            i += 1
            continue
        else:
            while i < n and s[i] not in b",}] \t\r\n:":
                i += 1
        if depth == 0:
            return i


cdef Py_ssize_t number_end(const uint8_t* s, Py_ssize_t i, Py_ssize_t n, bint* integral) noexcept:
    integral[0] = True
    while i < n:
        c = s[i]
        if 48 <= c <= 57 or c == 45 or c == 43:
            i += 1
        elif c == 46 or c == 101 or c == 69:
            integral[0] = False
            i += 1
        else:
            break
    return i


cdef int64_t parse_int(const uint8_t* s, Py_ssize_t i, Py_ssize_t end, int64_t lo, int64_t hi, CField* f) except? -1:
    cdef bint neg = False
    cdef uint64_t v = 0, limit
    cdef Py_ssize_t start = i
    if i < end and s[i] == 45:
        neg = True
        i += 1
    if i >= end:
        bad(f"{field_name(f)}: bad number", s, start)
    limit = (<uint64_t>(-(lo + 1))) + 1 if neg else <uint64_t>hi
    while i < end:
        if not 48 <= s[i] <= 57:
            bad(f"{field_name(f)}: bad number", s, start)
        if v > (limit - (s[i] - 48)) // 10:
            raise EncodeError(f"{field_name(f)}: {bytes(s[start:end]).decode()} is out of range for the field")
        v = v * 10 + (s[i] - 48)
        i += 1
    return -<int64_t>v if neg else <int64_t>v


cdef str field_name(CField* f):
    return f.key[:f.keylen].decode("utf-8", "replace") or "field"


cdef int days_from_civil(int64_t y, int m, int d, int64_t* out) noexcept:
    y -= m <= 2
    cdef int64_t era = (y if y >= 0 else y - 399) // 400
    cdef int64_t yoe = y - era * 400
    cdef int64_t doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef int64_t doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    out[0] = era * 146097 + doe - 719468
    return 0


cdef inline int digits(const uint8_t* s, Py_ssize_t i, int k) noexcept:
    cdef int v = 0, j
    for j in range(k):
        if not 48 <= s[i + j] <= 57:
            return -1
        v = v * 10 + s[i + j] - 48
    return v


cdef int parse_time(const uint8_t* s, Py_ssize_t i, Py_ssize_t end, int64_t* seconds, int* nanos, CField* f) except -1:
    """RFC 3339 (Go's time.RFC3339 layout, fraction optional) in ``s[i:end]``."""
    cdef str where
    cdef int year, month, day, hour, minute, second, oh, om, frac_digits = 0, k
    cdef int64_t days
    cdef Py_ssize_t p
    cdef int mdays
    nanos[0] = 0
    if end - i < 20:
        raise EncodeError(f"{field_name(f)}: expected an RFC 3339 time, not {bytes(s[i:end])!r}")
    year = digits(s, i, 4)
    month = digits(s, i + 5, 2)
    day = digits(s, i + 8, 2)
    hour = digits(s, i + 11, 2)
    minute = digits(s, i + 14, 2)
    second = digits(s, i + 17, 2)
    if (year < 0 or month < 1 or month > 12 or day < 1 or hour < 0 or hour > 23 or minute < 0 or minute > 59
            or second < 0 or second > 59 or s[i + 4] != 45 or s[i + 7] != 45 or (s[i + 10] | 32) != 116
            or s[i + 13] != 58 or s[i + 16] != 58):
        raise EncodeError(f"{field_name(f)}: expected an RFC 3339 time, not {bytes(s[i:end])!r}")
    if month == 2:
        mdays = 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    else:  # 31 for odd months up to July and even ones from August
        mdays = 30 + ((month + (month >> 3)) & 1)
    if day > mdays:
        raise EncodeError(f"{field_name(f)}: {bytes(s[i:end])!r} is not a valid date")
    p = i + 19
    if p < end and s[p] == 46:
        p += 1
        while p < end and 48 <= s[p] <= 57:
            if frac_digits < 9:
                nanos[0] = nanos[0] * 10 + s[p] - 48
                frac_digits += 1
            else:
                raise EncodeError(f"{field_name(f)}: expected an RFC 3339 time, not {bytes(s[i:end])!r}")
            p += 1
        if frac_digits == 0:
            raise EncodeError(f"{field_name(f)}: expected an RFC 3339 time, not {bytes(s[i:end])!r}")
        for k in range(9 - frac_digits):
            nanos[0] *= 10
    days_from_civil(year, month, day, &days)
    seconds[0] = days * 86400 + hour * 3600 + minute * 60 + second
    if p + 1 == end and (s[p] | 32) == 122:
        return 0
    if p + 6 == end and (s[p] == 43 or s[p] == 45) and s[p + 3] == 58:
        oh = digits(s, p + 1, 2)
        om = digits(s, p + 4, 2)
        if 0 <= oh <= 23 and 0 <= om <= 59:
            seconds[0] -= (oh * 3600 + om * 60) * (1 if s[p] == 43 else -1)
            return 0
    raise EncodeError(f"{field_name(f)}: expected an RFC 3339 time, not {bytes(s[i:end])!r}")


cdef inline Py_ssize_t scalar(Out* o, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, CField* f) noexcept:
    """A ``fast`` field's value at ``s[i]`` in its common shapes (an unescaped string under 128 bytes,
    true/false, a non-negative integer under 18 digits): the index past it, or -1 to leave it to
    ``single`` (which also reports the errors).  Most of a stored object's values come this way."""
    cdef Py_ssize_t j, k, need
    cdef int taglen = 1 + (f.tag[0] >> 7)
    cdef uint8_t* p
    cdef uint8_t c = s[i]
    if f.kind == K_STRING:
        if c != 34:
            return -1
        j = kp_find_quote_or_backslash(s, i + 1, n)
        k = j - i - 1
        if j >= n or s[j] != 34 or k >= 128:
            return -1
        need = taglen + 1 + k
        if o.pos + need > o.cap:
            return -1
        if o.base != NULL:
            p = o.base + o.pos
            p[0] = f.tag[0]
            p[1] = f.tag[1]  # a 1-byte tag's length byte comes next, over it
            p[taglen] = <uint8_t>k
            kp_copy(p + taglen + 1, s + i + 1, k)
        o.pos += need
        return j + 1
    return scalar_number(o, s, i, n, f)


cdef Py_ssize_t scalar_number(Out* o, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, CField* f) noexcept:
    """``scalar`` of a BOOL, INT32 or INT64 field: kept out of it, so that its strings, most values, inline."""
    cdef Py_ssize_t j, need
    cdef uint64_t v = 0
    cdef int taglen = 1 + (f.tag[0] >> 7)
    cdef uint8_t* p
    cdef uint8_t c = s[i]
    if f.kind == K_BOOL:
        if c == 116 and n - i >= 4 and memcmp(s + i, b"true", 4) == 0:
            v = 1
            j = i + 4
        elif c == 102 and n - i >= 5 and memcmp(s + i, b"false", 5) == 0:
            j = i + 5
        else:
            return -1
    else:
        j = i
        while j < n and j - i < 18 and 48 <= s[j] <= 57:
            v = v * 10 + (s[j] - 48)
            j += 1
        if j == i or (j < n and (48 <= s[j] <= 57 or s[j] == 46 or s[j] == 101 or s[j] == 69 or s[j] == 43 or s[j] == 45)):
            return -1
        if f.kind == K_INT32 and v > 2147483647:
            return -1
    need = taglen + vsize(v)
    if o.pos + need > o.cap:
        return -1
    if o.base != NULL:
        p = o.base + o.pos
        p[0] = f.tag[0]
        if taglen == 2:
            p[1] = f.tag[1]
        write_varint(p + taglen, v)
    o.pos += need
    return j


cdef Py_ssize_t map_entry(Out* o, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, CField* f) noexcept:
    """A ``fast`` map's entry at ``s[i]`` (the key's quote) if compact, unescaped and under 128 bytes
    (a label, a resource): the index past it, or -1 to leave it to ``map``."""
    cdef Py_ssize_t kend, v, vend, k, vl, entry, need
    cdef int taglen = 1 + (f.tag[0] >> 7)
    cdef uint8_t* p
    kend = kp_find_quote_or_backslash(s, i + 1, n)
    v = kend + 2
    if v >= n or s[kend] != 34 or s[kend + 1] != 58 or s[v] != 34:
        return -1
    vend = kp_find_quote_or_backslash(s, v + 1, n)
    if vend >= n or s[vend] != 34:
        return -1
    k = kend - i - 1
    vl = vend - v - 1
    entry = 4 + k + vl + (2 if f.kind == K_QUANTITY else 0)  # 1 = key, 2 = value (a Quantity's 1 inside)
    need = taglen + 1 + entry
    if entry >= 128 or o.pos + need > o.cap:
        return -1
    if o.base != NULL:
        p = o.base + o.pos
        p[0] = f.tag[0]
        p[1] = f.tag[1]  # a 1-byte tag's length byte comes next, over it
        p += taglen
        p[0] = <uint8_t>entry
        p[1] = 0x0A
        p[2] = <uint8_t>k
        kp_copy(p + 3, s + i + 1, k)
        p += 3 + k
        p[0] = 0x12
        if f.kind == K_QUANTITY:
            p[1] = <uint8_t>(vl + 2)
            p[2] = 0x0A
            p += 2
        p[1] = <uint8_t>vl
        kp_copy(p + 2, s + v + 1, vl)
    o.pos += need
    return vend + 1


@cython.final  # direct calls between the pass's methods, which the C compiler can then inline
cdef class StoredTranscoder:
    """The schema's messages as C tables, and the JSON -> message pass."""

    cdef CMessage* messages
    cdef int nmessages
    cdef list _keys  # keeps the key bytes the tables point into, a message's side by side
    cdef readonly dict index
    cdef readonly int schema_version

    def __cinit__(self):
        self.messages = NULL
        self.nmessages = 0

    def __init__(self, schema):
        cdef CField* table
        cdef CField* f
        cdef uint32_t slot, nslots
        cdef const char* key
        names = schema.message_names()
        self.index = {name: i for i, name in enumerate(names)}
        self._keys = []
        self.schema_version = schema.version
        self.messages = <CMessage*>malloc(len(names) * sizeof(CMessage))
        if self.messages == NULL:
            raise MemoryError()
        for i in range(len(names)):
            self.messages[i].fields = NULL
        self.nmessages = len(names)
        for i, name in enumerate(names):
            fields = schema.message(name).fields
            names_utf8 = [field.json_name.encode() for field in fields]
            keys = b"".join(names_utf8)
            self._keys.append(keys)
            key = PyBytes_AS_STRING(keys)
            nslots = 2
            while nslots < 2 * len(fields):
                nslots *= 2
            table = <CField*>malloc(nslots * sizeof(CField))
            if table == NULL:
                raise MemoryError()
            for slot in range(nslots):
                table[slot].keylen = -1
            self.messages[i].fields = table
            self.messages[i].mask = nslots - 1
            self.messages[i].first = NULL
            self.messages[i].is_object_meta = name == OBJECT_META
            for field, name_utf8 in zip(fields, names_utf8):
                keylen = len(name_utf8)
                slot = key_hash(<const uint8_t*>key, keylen) & (nslots - 1)
                while table[slot].keylen >= 0:
                    slot = (slot + 1) & (nslots - 1)
                f = &table[slot]
                f.key = key
                f.keylen = keylen
                key += keylen
                f.number = field.number
                f.kind = KINDS.index(field.kind)
                f.shape = SHAPES.index(field.shape)
                f.message = self.index[field.message] if field.message is not None else -1
                if len(field.path) > MAX_PATH:
                    raise ValueError(f"{name}.{field.json_name}: inlined too deep")
                f.npath = len(field.path)
                f.len_bytes = 1
                f.next = NULL
                f.plain = b'"' not in name_utf8 and b"\\" not in name_utf8
                tag = (field.number << 3) | (0 if f.shape != S_MAP and f.kind in (K_BOOL, K_INT32, K_INT64) else 2)
                f.fast = tag < 0x4000 and (f.kind in (K_STRING, K_QUANTITY) if f.shape == S_MAP
                                           else f.kind in (K_STRING, K_BOOL, K_INT32, K_INT64))
                f.tag[0] = (tag & 0x7F) | (0x80 if tag >= 0x80 else 0)
                f.tag[1] = tag >> 7
                for k, number in enumerate(field.path):
                    f.path[k] = number

    def __dealloc__(self):
        if self.messages != NULL:
            for i in range(self.nmessages):
                free(self.messages[i].fields)
            free(self.messages)

    cdef CField* lookup(self, int msg, const uint8_t* key, Py_ssize_t keylen) noexcept:
        cdef CMessage* m = &self.messages[msg]
        cdef uint32_t slot = key_hash(key, keylen) & m.mask
        cdef CField* f = &m.fields[slot]
        while f.keylen >= 0:
            if f.keylen == keylen and kp_same_key(f.key, key, keylen):
                return f
            slot = (slot + 1) & m.mask
            f = &m.fields[slot]
        return NULL

    # -- the pass ----------------------------------------------------------

    cdef Py_ssize_t message(self, Out* o, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, int msg, int64_t rv, int depth) except -1:
        """The fields of the JSON object at ``s[i]`` as message ``msg``; returns the index past it.

        ``rv`` >= 0 (only for the top-level ObjectMeta): written as resourceVersion, and the
        stored one skipped.
        """
        cdef Py_ssize_t kstart, kend, mark, j
        cdef bint escaped
        cdef CField* f
        cdef CField** guess = &self.messages[msg].first  # NULL after an unknown key
        cdef int reserved[MAX_PATH]
        cdef int p
        cdef Py_ssize_t marks[MAX_PATH]
        cdef bytes keybuf
        if depth > MAX_NESTING:
            raise EncodeError("stored JSON nests messages too deep")
        i = ws(s, i, n)
        if i >= n or s[i] != 123:
            bad("expected an object", s, i)
        cdef bint is_meta = self.messages[msg].is_object_meta
        cdef bint meta_seen = False
        if rv >= 0 and is_meta:
            put_decimal_field(o, 6, <uint64_t>rv)
        i = ws(s, i + 1, n)
        if i < n and s[i] == 125:
            i += 1
            if rv >= 0 and not is_meta:
                self.missing_metadata(o, msg, rv)
            return i
        while True:
            # each ws after a check of the byte expected in compact JSON, which saves most of them
            if i >= n or s[i] != 34:
                i = ws(s, i, n)
                if i >= n or s[i] != 34:
                    bad("expected a key", s, i)
            kstart = i + 1
            f = guess[0] if guess != NULL else NULL
            if f != NULL and kstart + f.keylen < n and s[kstart + f.keylen] == 34 and kp_same_key(f.key, s + kstart, f.keylen):
                kend = kstart + f.keylen
            else:
                kend = string_end(s, i, n, &escaped)
                if escaped:
                    keybuf = _unescape(s, kstart, kend)
                    f = self.lookup(msg, <const uint8_t*>PyBytes_AS_STRING(keybuf), len(keybuf))
                else:
                    f = self.lookup(msg, s + kstart, kend - kstart)
                if guess != NULL and f != NULL and f.plain:
                    guess[0] = f
            guess = &f.next if f != NULL else NULL
            i = kend + 1
            if i >= n or s[i] != 58:
                i = ws(s, i, n)
                if i >= n or s[i] != 58:
                    bad("expected ':'", s, i)
            i = ws(s, i + 1, n)
            if i >= n:
                bad("truncated object", s, i)
            if f == NULL or s[i] == 110 or (rv >= 0 and f.number == 6 and is_meta):
                i = skip_value(s, i, n)  # unknown key, null, or the stored resourceVersion
            elif rv >= 0 and not is_meta and f.kind == K_MESSAGE and f.shape == S_ONE and f.npath == 0 and self.messages[f.message].is_object_meta:
                if s[i] != 123:
                    self.wrong(f, "an object", s, i, n)
                meta_seen = True
                put_tag(o, f.number, 2)
                mark = open_len(o, n - i, &reserved[0])
                i = self.message(o, s, i, n, f.message, rv, depth + 1)
                close_len(o, mark, reserved[0])
            elif f.fast and f.shape == S_ONE and f.npath == 0 and (j := scalar(o, s, i, n, f)) >= 0:
                i = j
            elif f.kind == K_MESSAGE and f.shape == S_ONE and f.npath == 0 and s[i] == 123:
                i = self.nested(o, s, i, n, f, f.number, depth)  # single's, without its call
            else:
                for p in range(f.npath):
                    put_tag(o, f.path[p], 2)
                    marks[p] = open_len(o, 1, &reserved[p])
                if f.shape == S_ONE:
                    i = self.single(o, s, i, n, f, f.number, depth)
                elif f.shape == S_REPEATED:
                    i = self.repeated(o, s, i, n, f, depth)
                else:
                    i = self.map(o, s, i, n, f, depth)
                for p in range(f.npath - 1, -1, -1):
                    close_len(o, marks[p], reserved[p])
            i = ws(s, i, n)
            if i < n and s[i] == 44:
                i += 1
                continue
            if i < n and s[i] == 125:
                if rv >= 0 and not is_meta and not meta_seen:
                    self.missing_metadata(o, msg, rv)
                return i + 1
            bad("expected ',' or '}'", s, i)

    cdef int missing_metadata(self, Out* o, int msg, int64_t rv) except -1:
        """A stored object without metadata still reports its resourceVersion."""
        cdef CField* f = self.lookup(msg, <const uint8_t*>b"metadata", 8)
        if f == NULL or f.kind != K_MESSAGE or not self.messages[f.message].is_object_meta:
            raise EncodeError("the object has no metadata field to carry its resourceVersion")
        put_tag(o, f.number, 2)
        put_varint(o, decimal_len(<uint64_t>rv) + 2)
        return put_decimal_field(o, 6, <uint64_t>rv)

    cdef Py_ssize_t repeated(self, Out* o, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, CField* f, int depth) except -1:
        cdef Py_ssize_t j
        if s[i] != 91:
            raise EncodeError(f"stored JSON: field {f.key[:f.keylen].decode()!r} expects an array")
        i = ws(s, i + 1, n)
        if i < n and s[i] == 93:
            return i + 1
        while True:
            i = ws(s, i, n)
            if f.fast and i < n and (j := scalar(o, s, i, n, f)) >= 0:
                i = j
            elif f.kind == K_MESSAGE and i < n and s[i] == 123:
                i = self.nested(o, s, i, n, f, f.number, depth)
            else:
                i = self.single(o, s, i, n, f, f.number, depth)
            i = ws(s, i, n)
            if i < n and s[i] == 44:
                i += 1
                continue
            if i < n and s[i] == 93:
                return i + 1
            bad("expected ',' or ']'", s, i)

    cdef Py_ssize_t map(self, Out* o, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, CField* f, int depth) except -1:
        cdef Py_ssize_t kend, mark, j
        cdef int reserved
        cdef bint escaped
        if s[i] != 123:
            raise EncodeError(f"stored JSON: field {f.key[:f.keylen].decode()!r} expects an object")
        i = ws(s, i + 1, n)
        if i < n and s[i] == 125:
            return i + 1
        while True:
            i = ws(s, i, n)
            if i >= n or s[i] != 34:
                bad("expected a key", s, i)
            j = map_entry(o, s, i, n, f) if f.fast else -1
            if j >= 0:
                i = j
            else:
                put_tag(o, f.number, 2)
                mark = open_len(o, self.entry_estimate(s, i, n, f), &reserved)
                i = self.string_field(o, s, i, n, 1)
                i = ws(s, i, n)
                if i >= n or s[i] != 58:
                    bad("expected ':'", s, i)
                i = ws(s, i + 1, n)
                if i < n and s[i] == 110:
                    i = skip_value(s, i, n)
                else:
                    i = self.single(o, s, i, n, f, 2, depth)
                close_len(o, mark, reserved)
            i = ws(s, i, n)
            if i < n and s[i] == 44:
                i += 1
                continue
            if i < n and s[i] == 125:
                return i + 1
            bad("expected ',' or '}'", s, i)

    cdef Py_ssize_t entry_estimate(self, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, CField* f) except -1:
        """A map entry's length when its value is a string (exact unless escaped: a big Secret value
        then needs no move), else 1."""
        cdef bint escaped
        cdef Py_ssize_t kend = string_end(s, i, n, &escaped), v, vend, k, size
        v = ws(s, kend + 1, n)
        if v >= n or s[v] != 58:
            return 1
        v = ws(s, v + 1, n)
        if v >= n or s[v] != 34:
            return 1
        vend = string_end(s, v, n, &escaped)
        k = kend - i - 1
        size = vend - v - 1
        if f.kind == K_BYTES:
            size = size // 4 * 3
        return 1 + vsize(k) + k + 1 + vsize(size) + size

    cdef Py_ssize_t string_field(self, Out* o, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, int number) except -1:
        """A length-delimited field holding the text of the JSON string at ``s[i]``."""
        cdef bint escaped
        cdef Py_ssize_t end, mark
        cdef int reserved
        if i >= n or s[i] != 34:
            bad("expected a string", s, i)
        end = string_end(s, i, n, &escaped)
        if not escaped:
            put_len_field(o, number, s + i + 1, end - i - 1)
        else:
            put_tag(o, number, 2)
            mark = open_len(o, end - i - 1, &reserved)
            put_unescaped(o, s, i + 1, end)
            close_len(o, mark, reserved)
        return end + 1

    cdef inline Py_ssize_t nested(self, Out* o, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, CField* f, int number, int depth) except -1:
        """The object at ``s[i]`` as field ``number`` of MESSAGE field ``f``'s message."""
        cdef Py_ssize_t mark
        put_tag(o, number, 2)
        mark = reserve_len(o, f.len_bytes)
        i = self.message(o, s, i, n, f.message, -1, depth + 1)
        f.len_bytes = close_len(o, mark, f.len_bytes)
        return i

    cdef Py_ssize_t single(self, Out* o, const uint8_t* s, Py_ssize_t i, Py_ssize_t n, CField* f, int number, int depth) except -1:
        cdef int kind = f.kind
        cdef Py_ssize_t end, mark, mark2
        cdef int reserved, reserved2
        cdef bint escaped, integral
        cdef int64_t v, seconds
        cdef int nanos
        cdef double d
        cdef char numbuf[64]
        cdef uint8_t c = s[i]
        if c == 110:  # null inside an array or a map: the zero value
            end = skip_value(s, i, n)
            if kind == K_BOOL or kind == K_INT32 or kind == K_INT64:
                put_tag(o, number, 0)
                put_varint(o, 0)
            elif kind == K_DOUBLE:
                put_tag(o, number, 1)
                put(o, b"\0\0\0\0\0\0\0\0", 8)
            else:
                put_tag(o, number, 2)
                put_varint(o, 0)
            return end
        if kind == K_STRING:
            if c != 34:
                self.wrong(f, "a string", s, i, n)
            return self.string_field(o, s, i, n, number)
        if kind == K_MESSAGE:
            if c != 123:
                self.wrong(f, "an object", s, i, n)
            return self.nested(o, s, i, n, f, number, depth)
        if kind == K_BYTES:
            if c != 34:
                self.wrong(f, "a string", s, i, n)
            end = string_end(s, i, n, &escaped)
            if escaped:
                text = _unescape(s, i + 1, end)
                self.base64(o, <const uint8_t*>PyBytes_AS_STRING(text), len(text), number, f)
            else:
                self.base64(o, s + i + 1, end - i - 1, number, f)
            return end + 1
        if kind == K_BOOL:
            if n - i >= 4 and memcmp(s + i, b"true", 4) == 0:
                put_tag(o, number, 0)
                put(o, b"\x01", 1)
                return i + 4
            if n - i >= 5 and memcmp(s + i, b"false", 5) == 0:
                put_tag(o, number, 0)
                put(o, b"\x00", 1)
                return i + 5
            self.wrong(f, "a boolean", s, i, n)
        if kind == K_INT32 or kind == K_INT64:
            if not (c == 45 or 48 <= c <= 57):
                self.wrong(f, "an integer", s, i, n)
            end = number_end(s, i, n, &integral)
            if not integral:
                self.wrong(f, "an integer", s, i, n)
            if kind == K_INT32:
                v = parse_int(s, i, end, -2147483648, 2147483647, f)
            else:
                v = parse_int(s, i, end, INT64_MIN, INT64_MAX, f)
            put_tag(o, number, 0)
            put_varint(o, <uint64_t>v)
            return end
        if kind == K_DOUBLE:
            if not (c == 45 or 48 <= c <= 57):
                self.wrong(f, "a number", s, i, n)
            end = number_end(s, i, n, &integral)
            if end - i >= 63:
                self.wrong(f, "a number", s, i, n)
            memcpy(numbuf, s + i, end - i)
            numbuf[end - i] = 0
            d = strtod(numbuf, NULL)
            if d != d or d == float("inf") or d == -float("inf"):
                raise EncodeError(f"{self.name(f)}: {bytes(s[i:end]).decode()} is not a finite double")
            put_tag(o, number, 1)
            put(o, &d, 8)  # little-endian hosts (x86-64, arm64)
            return end
        if kind == K_TIME:
            if c != 34:
                self.wrong(f, "an RFC 3339 time", s, i, n)
            end = string_end(s, i, n, &escaped)
            parse_time(s, i + 1, end, &seconds, &nanos, f)
            put_tag(o, number, 2)
            mark = open_len(o, 2, &reserved)
            put_tag(o, 1, 0)
            put_varint(o, <uint64_t>seconds)
            if nanos:
                put_tag(o, 2, 0)
                put_varint(o, <uint64_t>nanos)
            close_len(o, mark, reserved)
            return end + 1
        if kind == K_QUANTITY:
            put_tag(o, number, 2)
            mark = open_len(o, 8, &reserved)
            if c == 34:
                end = self.string_field(o, s, i, n, 1)
            elif c == 45 or 48 <= c <= 57:
                end = number_end(s, i, n, &integral)
                put_len_field(o, 1, s + i, end - i)
            else:
                self.wrong(f, "a quantity", s, i, n)
            close_len(o, mark, reserved)
            return end
        if kind == K_INTORSTRING:
            put_tag(o, number, 2)
            mark = open_len(o, 8, &reserved)
            if c == 34:
                put(o, b"\x08\x01", 2)
                end = self.string_field(o, s, i, n, 3)
            elif c == 45 or 48 <= c <= 57:
                end = number_end(s, i, n, &integral)
                if not integral:
                    self.wrong(f, "an integer or a string", s, i, n)
                v = parse_int(s, i, end, -2147483648, 2147483647, f)
                put(o, b"\x08\x00\x10", 3)
                put_varint(o, <uint64_t>v)
            else:
                self.wrong(f, "an integer or a string", s, i, n)
            close_len(o, mark, reserved)
            return end
        if kind == K_RAWJSON:
            end = skip_value(s, i, n)
            put_tag(o, number, 2)
            mark = open_len(o, end - i + 2, &reserved)
            put_len_field(o, 1, s + i, end - i)
            close_len(o, mark, reserved)
            return end
        if kind == K_DURATION:
            if c != 34:
                self.wrong(f, "a duration", s, i, n)
            end = string_end(s, i, n, &escaped)
            v = parse_duration(_unescape(s, i + 1, end).decode("utf-8", "replace"), self.name(f))
            put_tag(o, number, 2)
            mark = open_len(o, 4, &reserved)
            put_tag(o, 1, 0)
            put_varint(o, <uint64_t>v)
            close_len(o, mark, reserved)
            return end + 1
        raise AssertionError(kind)

    cdef int base64(self, Out* o, const uint8_t* t, Py_ssize_t k, int number, CField* f) except -1:
        cdef Py_ssize_t pad = 0, size, j
        cdef int a, b, c2
        if k % 4:
            raise EncodeError(f"{self.name(f)}: not valid base64")
        if k and t[k - 1] == 61:
            pad = 2 if t[k - 2] == 61 else 1
        size = k // 4 * 3 - pad
        put_tag(o, number, 2)
        put_varint(o, size)
        if o.pos + size > o.cap:
            full(o, size)
        cdef Py_ssize_t body = k - 4 if pad else k  # whole quads before a padded last one
        cdef uint8_t* w = o.base + o.pos if o.base != NULL else NULL
        cdef int bad_bits = 0
        cdef uint32_t group, invalid = 0
        j = 0
        if w != NULL:
            while j < body:
                group = B64Q0[t[j]] | B64Q1[t[j + 1]] | B64Q2[t[j + 2]] | B64Q3[t[j + 3]]
                invalid |= group
                w[0] = <uint8_t>(group >> 16)
                w[1] = <uint8_t>(group >> 8)
                w[2] = <uint8_t>group
                w += 3
                j += 4
        else:
            while j < body:
                invalid |= B64Q0[t[j]] | B64Q1[t[j + 1]] | B64Q2[t[j + 2]] | B64Q3[t[j + 3]]
                j += 4
        if invalid >> 24:
            bad_bits = -1
        if pad:
            a = B64DEC[t[j]]
            b = B64DEC[t[j + 1]]
            c2 = B64DEC[t[j + 2]] if pad == 1 else 0
            bad_bits |= a | b | c2
            if w != NULL:
                w[0] = <uint8_t>((a << 2) | (b >> 4))
                if pad == 1:
                    w[1] = <uint8_t>((b << 4) | (c2 >> 2))
        if bad_bits < 0:
            raise EncodeError(f"{self.name(f)}: not valid base64")
        o.pos += size
        return 0

    cdef str name(self, CField* f):
        return field_name(f)

    cdef int wrong(self, CField* f, str expected, const uint8_t* s, Py_ssize_t i, Py_ssize_t n) except -1:
        raise EncodeError(f"{self.name(f)}: expected {expected}, not {bytes(s[i:min(n, i + 40)])!r}")

    # -- entry points --------------------------------------------------------

    cdef Py_ssize_t run(self, Out* o, object stored, int msg, int64_t rv, int what, bytes type_meta, bytes head) except -1:
        """what: 0 = message body alone, 1 = list item field (2), 2 = object frame (envelope), 3 = event frame."""
        cdef Py_buffer view
        cdef Py_ssize_t start = o.pos, mark1 = 0, mark2 = 0, mark3 = 0, end
        cdef int r1 = 0, r2 = 0, r3 = 0
        cdef const uint8_t* s
        PyObject_GetBuffer(stored, &view, PyBUF_SIMPLE)
        try:
            s = <const uint8_t*>view.buf
            if what == 3:
                put(o, b"\0\0\0\0", 4)
                put(o, PyBytes_AS_STRING(head), len(head))  # type field + RawExtension tag
                mark1 = open_len(o, view.len + 64, &r1)
                put(o, b"\x0a", 1)
                mark2 = open_len(o, view.len + 64, &r2)
            if what >= 2:
                put(o, b"k8s\0", 4)
                put(o, PyBytes_AS_STRING(type_meta), len(type_meta))
                put(o, b"\x12", 1)
                mark3 = open_len(o, view.len, &r3)
            elif what == 1:
                put(o, b"\x12", 1)
                mark3 = open_len(o, view.len, &r3)
            end = self.message(o, s, 0, view.len, msg, rv, 0)
            if ws(s, end, view.len) != view.len:
                bad("data after the object", s, end)
            if what >= 1:
                close_len(o, mark3, r3)
            if what >= 2:
                put(o, b"\x1a\x00\x22\x00", 4)
            if what == 3:
                close_len(o, mark2, r2)
                close_len(o, mark1, r1)
                size = o.pos - start - 4
                if size > 0xFFFFFFFF:
                    raise FrameTooLarge("event does not fit a 4-byte length prefix", o.cap)
                if o.base != NULL:
                    o.base[start] = (size >> 24) & 0xFF
                    o.base[start + 1] = (size >> 16) & 0xFF
                    o.base[start + 2] = (size >> 8) & 0xFF
                    o.base[start + 3] = size & 0xFF
        finally:
            PyBuffer_Release(&view)
        return o.pos - start

    def encode(self, object stored, int msg, int64_t rv, int what, bytes type_meta, bytes head, object buf, Py_ssize_t max_frame_size):
        """Write into ``buf`` (a PoolBuffer; None: only count) and return the frame's size."""
        return self.write(stored, msg, rv, what, type_meta, head, buf, max_frame_size)

    cdef Py_ssize_t write(self, object stored, int msg, int64_t rv, int what, bytes type_meta, bytes head, object buf,
                          Py_ssize_t max_frame_size) except -1:
        cdef Out o
        cdef Py_ssize_t n, start
        if buf is None:
            o.base = NULL
            o.pos = 0
            o.cap = max_frame_size
            return self.run(&o, stored, msg, rv, what, type_meta, head)
        data = buf.data
        start = buf.length
        if not PyByteArray_CheckExact(data) or not 0 <= start <= PyByteArray_GET_SIZE(data):
            raise TypeError("buf must be a PoolBuffer")
        o.base = <uint8_t*>PyByteArray_AS_STRING(data)
        o.pos = start
        o.cap = min(PyByteArray_GET_SIZE(data), start + max_frame_size + 1)
        try:
            n = self.run(&o, stored, msg, rv, what, type_meta, head)
        except BufferFull:
            if o.cap == start + max_frame_size + 1:
                raise FrameTooLarge(f"frame exceeds max_frame_size {max_frame_size}", max_frame_size) from None
            raise
        if n > max_frame_size:
            raise FrameTooLarge(f"frame of {n} bytes exceeds max_frame_size {max_frame_size}", max_frame_size)
        buf.length = start + n
        return n


cdef bytes _unescape(const uint8_t* s, Py_ssize_t i, Py_ssize_t end):
    cdef Out o
    o.base = NULL
    o.pos = 0
    o.cap = end - i + 1
    put_unescaped(&o, s, i, end)
    out = PyBytes_FromStringAndSize(NULL, o.pos)
    o.base = <uint8_t*>PyBytes_AS_STRING(out)
    o.pos = 0
    put_unescaped(&o, s, i, end)
    return out


def _type_meta(api_version, kind):
    tm = _kubeproto_py._len_field(1, api_version.encode()) + _kubeproto_py._len_field(2, kind.encode())
    return _kubeproto_py._len_field(1, tm)


class _Scratch:
    """A stand-in PoolBuffer for building a bytes frame."""

    __slots__ = ("data", "length", "capacity")

    def __init__(self, size):
        self.data = bytearray(size)
        self.length = 0
        self.capacity = size


cdef class _StoredEvents:
    """One kind's ``encode_stored_event_into``, made once: the watch stream's hot path is then one C call,
    the tables and heads looked up again only when the schema changes."""

    cdef object base  # the KubeProtoEncoder
    cdef object api_version, kind
    cdef object schema
    cdef int schema_version
    cdef StoredTranscoder tables
    cdef int msg
    cdef bytes type_meta
    cdef Py_ssize_t max_frame_size
    cdef dict heads  # event type -> its head (type field + RawExtension tag)

    def __init__(self, base, api_version, kind):
        self.base = base
        self.api_version = api_version
        self.kind = kind
        self.schema_version = -1
        self.heads = {}

    cdef int refresh(self) except -1:
        self.schema = self.base.schema
        self.schema_version = self.schema.version
        self.tables = self.base._tables()
        self.msg, self.type_meta = self.base._head(self.api_version, self.kind)
        self.max_frame_size = self.base._max_frame_size
        return 0

    def encode_stored_event_into(self, type, stored, resource_version, buf):
        cdef bytes head = self.heads.get(type)
        if head is None:
            if type not in _kubeproto_py._EVENT_TYPES:
                raise EncodeError(f"unknown watch event type {type!r}")
            head = self.heads[type] = _kubeproto_py._len_field(1, type.encode("ascii")) + b"\x12"
        if self.schema is not self.base.schema or self.schema_version != self.schema.version:
            self.refresh()
        return self.tables.write(stored, self.msg, -1 if resource_version is None else resource_version, 3, self.type_meta,
                                 head, buf, self.max_frame_size)


class KindEncoder(_kubeproto_py.KindEncoder):
    __doc__ = _kubeproto_py.KindEncoder.__doc__

    def __init__(self, base, api_version, kind):
        super().__init__(base, api_version, kind)
        # encode_stored_event_into(type, stored, resource_version, buf) is the compiled call itself, with
        # no method of this class between the watch stream and it
        self.encode_stored_event_into = _StoredEvents(base, api_version, kind).encode_stored_event_into


class KubeProtoEncoder(_kubeproto_py.KubeProtoEncoder):
    __doc__ = _kubeproto_py.KubeProtoEncoder.__doc__

    def __init__(self, schema=None, *, max_frame_size=_kubeproto_py.DEFAULT_MAX_FRAME_SIZE):
        super().__init__(schema, max_frame_size=max_frame_size)
        self._compiled = StoredTranscoder(self.schema)
        self._heads = {}
        self._event_calls = {}  # (type, apiVersion, kind) -> (tables, message, typeMeta, event head)

    def for_kind(self, api_version, kind):  # the twin's, making this module's KindEncoder
        if self.schema.message_name(api_version, kind) is None:
            return None
        enc = self._kinds.get((api_version, kind))
        if enc is None:
            enc = self._kinds[(api_version, kind)] = KindEncoder(self, api_version, kind)
        return enc

    def _tables(self):
        if self._compiled.schema_version != self.schema.version:
            self._compiled = StoredTranscoder(self.schema)
            self._heads.clear()
            self._event_calls.clear()
        return self._compiled

    def _head(self, api_version, kind):
        tables = self._tables()  # first: after a schema change, the heads cached hold the old tables' indexes
        head = self._heads.get((api_version, kind))
        if head is None:
            head = self._heads[(api_version, kind)] = (
                tables.index[self._message_name(api_version, kind)], _type_meta(api_version, kind)
            )
        return head

    def encode_stored(self, api_version, kind, stored, resource_version=None):
        msg, type_meta = self._head(api_version, kind)
        rv = -1 if resource_version is None else resource_version
        size = self._tables().encode(stored, msg, rv, 2, type_meta, b"", None, self._max_frame_size)
        scratch = _Scratch(size)
        self._tables().encode(stored, msg, rv, 2, type_meta, b"", scratch, self._max_frame_size)
        return bytes(scratch.data)

    def encode_stored_event_into(self, type, api_version, kind, stored, resource_version, buf):
        key = (type, api_version, kind)
        call = self._event_calls.get(key)
        if call is None or call[0] is not self._compiled or self._compiled.schema_version != self.schema.version:
            if type not in _kubeproto_py._EVENT_TYPES:
                raise EncodeError(f"unknown watch event type {type!r}")
            msg, type_meta = self._head(api_version, kind)
            head = _kubeproto_py._len_field(1, type.encode("ascii")) + b"\x12"
            call = self._event_calls[key] = (self._tables(), msg, type_meta, head)
        tables, msg, type_meta, head = call
        return tables.encode(stored, msg, -1 if resource_version is None else resource_version, 3, type_meta, head, buf, self._max_frame_size)

    def stored_list_item_size(self, api_version, kind, stored, resource_version):
        msg, type_meta = self._head(api_version, kind)
        return self._tables().encode(
            stored, msg, -1 if resource_version is None else resource_version, 1, type_meta, b"", None, self._max_frame_size
        )

    def encode_stored_list_item_into(self, api_version, kind, stored, resource_version, buf):
        msg, type_meta = self._head(api_version, kind)
        return self._tables().encode(
            stored, msg, -1 if resource_version is None else resource_version, 1, type_meta, b"", buf, self._max_frame_size
        )

    def stored_list_item(self, api_version, kind, stored, resource_version):
        size = self.stored_list_item_size(api_version, kind, stored, resource_version)
        scratch = _Scratch(size)
        self.encode_stored_list_item_into(api_version, kind, stored, resource_version, scratch)
        return bytes(scratch.data)


# ---------------------------------------------------------------------------- decoding
#
# The twin's _FrameReader in C, the same algorithm step for step, so that both build the same dicts and
# raise the same errors at the same offsets: a message's fields are indexed first (which checks its
# framing and stops at the max_values budget), then handled field number by field number in the order
# each number first appears, every occurrence in wire order.  The rare kinds' text (times out of the
# fast path's range, durations, raw JSON) comes from the twin's own helpers.

cdef enum:
    LAST_ON_STACK = 64  # a scope with more fields than this allocates its per-field table

ctypedef struct DField:
    uint64_t number
    int kind        # K_*, or -1: an inlined message (its fields are the parent's)
    int shape
    int target      # kind MESSAGE: the message's index; an inlined message: its scope's index
    PyObject* name  # the JSON key (a str the tables keep alive); NULL for an inlined message
    bint omit_empty # a zero of it is left out, as Go's JSON leaves it out (kube_schema's OMITEMPTY)

ctypedef struct DScope:
    int message     # whose fields these are (named in errors)
    int nfields
    DField* fields  # sorted by number: binary search

ctypedef struct Entry:
    uint64_t number
    Py_ssize_t start
    Py_ssize_t end
    Py_ssize_t next  # the next entry (index in the message's run) of the same field; -1: none
    int wire
    int slot         # index into the scope's fields; -1: not in the message
    bint first       # the field's first entry: where the field is handled

ctypedef struct Span:
    Py_ssize_t start
    Py_ssize_t end
    int wire
    bint present


cdef Py_ssize_t read_varint(const uint8_t* d, Py_ssize_t pos, Py_ssize_t end, uint64_t* out) except -1:
    cdef int shift = 0
    cdef uint64_t value = 0
    cdef uint8_t b
    while True:
        if pos >= end or shift > 63:
            raise DecodeError("truncated or overlong varint", pos)
        b = d[pos]
        pos += 1
        value |= (<uint64_t>(b & 0x7F)) << shift  # the 10th byte's bits past 64 drop, as the twin masks them
        if b < 0x80:
            out[0] = value
            return pos
        shift += 7


cdef Py_ssize_t next_field(const uint8_t* d, Py_ssize_t pos, Py_ssize_t end, uint64_t* number, int* wire,
                           Py_ssize_t* vstart, Py_ssize_t* vend) except -1:
    """The field at ``pos`` (its number, wire type and payload); returns the position past it."""
    cdef uint64_t tag, n
    pos = read_varint(d, pos, end, &tag)
    number[0] = tag >> 3
    wire[0] = <int>(tag & 7)
    if number[0] == 0:
        raise DecodeError("field number 0", pos)
    if wire[0] == 0:
        vstart[0] = pos
        pos = read_varint(d, pos, end, &n)
    elif wire[0] == 2:
        pos = read_varint(d, pos, end, &n)
        if n > <uint64_t>(end - pos):
            raise DecodeError("length-delimited field past the end of its message", pos)
        vstart[0] = pos
        pos += <Py_ssize_t>n
    elif wire[0] == 1:
        if pos + 8 > end:
            raise DecodeError("truncated fixed64", pos)
        vstart[0] = pos
        pos += 8
    elif wire[0] == 5:
        if pos + 4 > end:
            raise DecodeError("truncated fixed32", pos)
        vstart[0] = pos
        pos += 4
    else:
        raise DecodeError(f"unsupported wire type {wire[0]}", pos)
    vend[0] = pos
    return pos


cdef int scan_small(const uint8_t* d, Py_ssize_t pos, Py_ssize_t end, Span* spans) except -1:
    """Checks the message ``d[pos:end]`` and keeps the last occurrence of its fields 1-3 in ``spans[1..3]``
    (a map entry, or a Time, Quantity, IntOrString, FieldsV1 or Duration)."""
    cdef uint64_t number
    cdef int wire, k
    cdef Py_ssize_t vs, ve
    for k in range(4):
        spans[k].present = False
    while pos < end:
        pos = next_field(d, pos, end, &number, &wire, &vs, &ve)
        if number <= 3:
            spans[number].start = vs
            spans[number].end = ve
            spans[number].wire = wire
            spans[number].present = True
    return 0


cdef void b64_encode(const uint8_t* s, Py_ssize_t n, char* o) noexcept nogil:
    cdef Py_ssize_t i = 0
    cdef uint32_t v
    while i + 3 <= n:
        v = (<uint32_t>s[i] << 16) | (<uint32_t>s[i + 1] << 8) | s[i + 2]
        memcpy(o, &B64PAIR[(v >> 12) << 1], 2)
        memcpy(o + 2, &B64PAIR[(v & 0xFFF) << 1], 2)
        i += 3
        o += 4
    if n - i == 1:
        v = <uint32_t>s[i] << 16
        memcpy(o, &B64PAIR[(v >> 12) << 1], 2)
        o[2] = o[3] = 61  # '='
    elif n - i == 2:
        v = (<uint32_t>s[i] << 16) | (<uint32_t>s[i + 1] << 8)
        memcpy(o, &B64PAIR[(v >> 12) << 1], 2)
        o[2] = B64PAIR[((v & 0xFFF) << 1)]
        o[3] = 61


cdef str b64_text(const uint8_t* s, Py_ssize_t n):
    """``s[:n]`` as base64 text, written straight into the str (no bytes object to decode)."""
    cdef str out = PyUnicode_New(((n + 2) // 3) * 4, 127)
    b64_encode(s, n, <char*>PyUnicode_DATA(out))
    return out


cdef inline void put2(char* o, int v) noexcept nogil:
    o[0] = <char>(48 + v // 10)
    o[1] = <char>(48 + v % 10)


cdef str time_text(int64_t seconds, uint64_t nanos):
    """The twin's _time_text for the years 1-9999 and nanos < 10^9: ``YYYY-MM-DDTHH:MM:SS[.frac]Z``."""
    cdef char buf[32]
    cdef int64_t days = seconds // 86400, rem = seconds % 86400  # cdivision: truncated, fixed below
    cdef int64_t z, era, doe, yoe, y, doy, mp, dd, mm
    cdef int k, n = 19
    cdef uint64_t frac
    if rem < 0:
        rem += 86400
        days -= 1
    z = days + 719468  # civil_from_days (H. Hinnant)
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    dd = doy - (153 * mp + 2) // 5 + 1
    mm = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if mm <= 2 else 0)
    put2(buf, <int>(y // 100))
    put2(buf + 2, <int>(y % 100))
    buf[4] = 45
    put2(buf + 5, <int>mm)
    buf[7] = 45
    put2(buf + 8, <int>dd)
    buf[10] = 84
    put2(buf + 11, <int>(rem // 3600))
    buf[13] = 58
    put2(buf + 14, <int>(rem // 60 % 60))
    buf[16] = 58
    put2(buf + 17, <int>(rem % 60))
    if nanos:
        buf[19] = 46
        frac = nanos
        for k in range(9):
            buf[28 - k] = <char>(48 + frac % 10)
            frac //= 10
        n = 29
        while buf[n - 1] == 48:
            n -= 1
    buf[n] = 90
    return PyUnicode_DecodeASCII(buf, n + 1, NULL)


cdef class DecodeTables:
    """A schema's messages as the decoder's C tables: per message and per inlined message in it, its
    field numbers (sorted) with what they hold."""

    cdef DScope* scopes
    cdef int nscopes
    cdef int* roots  # message index -> its scope
    cdef list names  # message names (for errors)
    cdef list _keys  # keeps the key strs the tables point to
    cdef readonly dict index
    cdef readonly int schema_version  # no reference to the schema itself: it is the key of _TABLES, a weak one

    def __cinit__(self):
        self.scopes = NULL
        self.nscopes = 0
        self.roots = NULL

    def __init__(self, schema):
        names = schema.message_names()
        self.schema_version = schema.version
        self.names = list(names)
        self.index = {name: i for i, name in enumerate(names)}
        self._keys = []
        scopes = []  # (message index, path): the root's path is ()
        scope_of = {}
        for i, name in enumerate(names):
            for path in [()] + sorted(schema.message(name).inlined):
                scope_of[(i, path)] = len(scopes)
                scopes.append((i, path))
        self.roots = <int*>malloc(max(1, len(names)) * sizeof(int))
        self.scopes = <DScope*>malloc(max(1, len(scopes)) * sizeof(DScope))
        if self.roots == NULL or self.scopes == NULL:
            raise MemoryError()
        for k in range(len(scopes)):
            self.scopes[k].fields = NULL
            self.scopes[k].nfields = 0
        self.nscopes = len(scopes)
        for k, (i, path) in enumerate(scopes):
            message = schema.message(names[i])
            if not path:
                self.roots[i] = k
            here = {}  # number -> (kind, shape, target, key, omit_empty)
            for inner in message.inlined:  # (no negative indexes: the module is compiled without wraparound)
                if len(inner) == len(path) + 1 and inner[:len(path)] == path:
                    here[inner[len(path)]] = (-1, 0, scope_of[(i, inner)], None, False)
            for f in message.fields:  # a field wins over an inlined message of its number, as in the twin
                if f.path == path:
                    here[f.number] = (KINDS.index(f.kind), SHAPES.index(f.shape),
                                      self.index[f.message] if f.message is not None else -1, sys.intern(f.json_name),
                                      f.omit_empty)
            table = <DField*>malloc(max(1, len(here)) * sizeof(DField))
            if table == NULL:
                raise MemoryError()
            self.scopes[k].fields = table
            self.scopes[k].nfields = len(here)
            self.scopes[k].message = i
            for j, number in enumerate(sorted(here)):
                kind, shape, target, key, omit_empty = here[number]
                table[j].number = number
                table[j].kind = kind
                table[j].shape = shape
                table[j].target = target
                table[j].omit_empty = omit_empty
                table[j].name = NULL
                if key is not None:
                    self._keys.append(key)
                    table[j].name = <PyObject*>key

    def __dealloc__(self):
        if self.scopes != NULL:
            for k in range(self.nscopes):
                free(self.scopes[k].fields)
            free(self.scopes)
        free(self.roots)

    cdef inline int slot(self, DScope* sc, uint64_t number) noexcept:
        cdef int lo = 0, hi = sc.nfields - 1, mid
        while lo <= hi:
            mid = (lo + hi) >> 1
            if sc.fields[mid].number == number:
                return mid
            if sc.fields[mid].number < number:
                lo = mid + 1
            else:
                hi = mid - 1
        return -1


_TABLES = weakref.WeakKeyDictionary()  # schema -> its DecodeTables (a server makes a decoder per request body)


def decode_tables(schema):
    """The DecodeTables of ``schema`` as it is now (rebuilt after a ``register``)."""
    tables = _TABLES.get(schema)
    if tables is None or (<DecodeTables>tables).schema_version != schema.version:
        tables = _TABLES[schema] = DecodeTables(schema)
    return tables


cdef class FrameReader:
    """The twin's _FrameReader compiled: builds the JSON-shaped dict of one frame's message, counting
    its values against ``max_values``."""

    cdef DecodeTables tables
    cdef Py_buffer view
    cdef bint has_view
    cdef const uint8_t* d
    cdef Py_ssize_t size
    cdef readonly Py_ssize_t max_values
    cdef readonly Py_ssize_t values_left
    cdef Entry* ent  # the indexes of the messages being built, innermost last
    cdef Py_ssize_t cap
    cdef Py_ssize_t top

    def __cinit__(self, DecodeTables tables not None, data, Py_ssize_t max_values):
        self.has_view = False
        self.ent = NULL
        self.cap = self.top = 0
        PyObject_GetBuffer(data, &self.view, PyBUF_SIMPLE)
        self.has_view = True
        self.d = <const uint8_t*>self.view.buf
        self.size = self.view.len
        self.tables = tables
        self.max_values = self.values_left = max_values

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)
        free(self.ent)

    def count(self, Py_ssize_t n, Py_ssize_t offset):
        """Counts ``n`` values about to be built for the field at ``offset``."""
        self.take(n, offset)

    def message(self, str name, Py_ssize_t start, Py_ssize_t end, int depth):
        """The dict of message ``name`` in ``data[start:end]``."""
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"message bounds {start}:{end} outside the {self.size} bytes")
        return self.build(self.tables.index[name], start, end, depth)

    cdef inline int take(self, Py_ssize_t n, Py_ssize_t offset) except -1:
        self.values_left -= n
        if self.values_left < 0:
            raise TooManyValues(self.max_values, offset)
        return 0

    cdef dict build(self, int msg, Py_ssize_t start, Py_ssize_t end, int depth):
        if depth > 100:
            raise DecodeError("messages nested too deep", start)
        cdef dict out = {}
        self.fill(self.tables.roots[msg], start, end, out, depth)
        return out

    cdef Py_ssize_t index(self, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t most) except -1:
        """Appends the fields of ``d[pos:end]`` to the entries, at most ``most`` of them; returns how many."""
        cdef Py_ssize_t base = self.top, vs, ve
        cdef uint64_t number
        cdef int wire
        cdef Entry* grown
        cdef Entry* e
        while pos < end:
            most -= 1
            if most < 0:  # each field is at least one value: index no more of them than the budget has left
                raise TooManyValues(self.max_values, pos)
            pos = next_field(self.d, pos, end, &number, &wire, &vs, &ve)
            if self.top == self.cap:
                grown = <Entry*>realloc(self.ent, (self.cap * 2 + 64) * sizeof(Entry))
                if grown == NULL:
                    raise MemoryError()
                self.ent = grown
                self.cap = self.cap * 2 + 64
            e = &self.ent[self.top]
            e.number = number
            e.wire = wire
            e.start = vs
            e.end = ve
            self.top += 1
        return self.top - base

    cdef int fill(self, int scope, Py_ssize_t start, Py_ssize_t end, dict out, int depth) except -1:
        cdef DScope* sc = &self.tables.scopes[scope]
        cdef Py_ssize_t base = self.top, n, i, j, nxt
        cdef Py_ssize_t last_on_stack[LAST_ON_STACK]
        cdef Py_ssize_t* last = last_on_stack
        cdef Entry* e
        cdef Entry entry
        cdef int k
        try:
            n = self.index(start, end, self.values_left)
            if sc.nfields > LAST_ON_STACK:
                last = <Py_ssize_t*>malloc(sc.nfields * sizeof(Py_ssize_t))
                if last == NULL:
                    raise MemoryError()
            for k in range(sc.nfields):
                last[k] = -1
            for i in range(n - 1, -1, -1):  # backwards: each entry learns the next one of its field
                e = &self.ent[base + i]
                e.slot = self.tables.slot(sc, e.number)
                e.first = e.slot < 0
                e.next = -1
                if e.slot >= 0:
                    e.next = last[e.slot]
                    last[e.slot] = i
            for k in range(sc.nfields):
                if last[k] >= 0:
                    self.ent[base + last[k]].first = True
            for i in range(n):
                if not self.ent[base + i].first:
                    continue
                j = i
                while j >= 0:
                    entry = self.ent[base + j]  # a copy: nested messages may move the entries
                    self.field(sc, &entry, out, depth)
                    j = entry.next
        finally:
            self.top = base
            if last != last_on_stack:
                free(last)
        return 0

    cdef int field(self, DScope* sc, Entry* entry, dict out, int depth) except -1:
        cdef DField* f
        cdef Py_ssize_t s = entry.start
        cdef PyObject* have
        cdef Span spans[4]
        if entry.slot < 0:
            raise DecodeError(f"{self.tables.names[sc.message]}: field {entry.number} is not in the message", s)
        f = &sc.fields[entry.slot]
        if f.kind < 0:
            if entry.wire != 2:
                raise DecodeError(f"{self.tables.names[sc.message]}: field {entry.number} is not in the message", s)
            return self.fill(f.target, s, entry.end, out, depth)  # an inlined message: its fields are the parent's
        key = <object>f.name
        if f.shape == S_MAP:  # an entry message: key = 1, value = 2
            have = PyDict_GetItem(out, key)
            if have == NULL:
                self.take(2, s)  # the map's key in ``out``, and the map
                entries = out[key] = {}
            else:
                entries = <object>have
            self.take(2, s)
            scan_small(self.d, s, entry.end, spans)
            name = self.text(spans[1].start, spans[1].end) if spans[1].present else ""
            entries[name] = self.value(f, spans[2].start, spans[2].end, spans[2].wire, depth) if spans[2].present else None
        elif f.shape == S_REPEATED:
            have = PyDict_GetItem(out, key)
            if have == NULL:
                self.take(2, s)  # the list's key in ``out``, and the list
                elements = out[key] = []
            else:
                elements = <object>have
            self.take(1, s)
            elements.append(self.value(f, s, entry.end, entry.wire, depth))
        elif f.omit_empty:  # a scalar: its zero is what Go's JSON leaves out (the last one given wins)
            scalar = self.value(f, s, entry.end, entry.wire, depth)
            if scalar:
                self.take(2, s)
                out[key] = scalar
            else:
                out.pop(key, None)
        else:
            self.take(2, s)
            out[key] = self.value(f, s, entry.end, entry.wire, depth)
        return 0

    cdef str text(self, Py_ssize_t s, Py_ssize_t e):
        try:
            return PyUnicode_DecodeUTF8(<const char*>self.d + s, e - s, NULL)
        except UnicodeDecodeError:
            raise DecodeError("a string is not valid UTF-8", s) from None

    cdef uint64_t varint_of(self, Span* span) except? 0xFFFFFFFFFFFFFFFF:
        """The twin's _int_of: the varint at the start of the span, 0 when the field is absent."""
        cdef uint64_t n = 0
        if span.present:
            read_varint(self.d, span.start, span.end, &n)
        return n

    cdef object wrong_wire(self, DField* f, Py_ssize_t s):
        raise DecodeError(f"{<object>f.name}: wrong wire type", s)

    cdef object value(self, DField* f, Py_ssize_t s, Py_ssize_t e, int wire, int depth):
        cdef int kind = f.kind
        cdef uint64_t n
        cdef int64_t seconds
        cdef double x
        cdef int k
        cdef Span spans[4]
        if kind == K_BOOL or kind == K_INT32 or kind == K_INT64:
            if wire != 0:
                return self.wrong_wire(f, s)
            read_varint(self.d, s, e, &n)
            if kind == K_BOOL:
                return n != 0
            return <int64_t>n
        if kind == K_DOUBLE:
            if wire != 1:
                return self.wrong_wire(f, s)
            n = 0
            for k in range(8):  # little-endian, whatever the machine's order
                n |= (<uint64_t>self.d[s + k]) << (8 * k)
            memcpy(&x, &n, 8)
            return x
        if wire != 2:
            return self.wrong_wire(f, s)
        if kind == K_STRING:
            return self.text(s, e)
        if kind == K_BYTES:
            return b64_text(self.d + s, e - s)
        if kind == K_MESSAGE:
            return self.build(f.target, s, e, depth + 1)
        scan_small(self.d, s, e, spans)
        if kind == K_TIME:
            seconds = <int64_t>self.varint_of(&spans[1])
            n = self.varint_of(&spans[2])
            if s == e or (seconds == -62135596800 and n == 0):  # Go's zero time (written as no bytes): JSON's null
                return None
            if -62135596800 <= seconds <= 253402300799 and n < 1000000000:  # 0001-01-01 .. 9999-12-31
                return time_text(seconds, n)
            return _kubeproto_py._time_text(seconds, n, s)
        if kind == K_QUANTITY:
            return self.text(spans[1].start, spans[1].end) if spans[1].present else ""
        if kind == K_INTORSTRING:
            if self.varint_of(&spans[1]) == 1:
                return self.text(spans[3].start, spans[3].end) if spans[3].present else ""
            return <int64_t>self.varint_of(&spans[2])
        if kind == K_RAWJSON:
            if not spans[1].present:
                return None
            raw = PyBytes_FromStringAndSize(<const char*>self.d + spans[1].start, spans[1].end - spans[1].start)
            return _kubeproto_py._raw_json(self, raw, spans[1].start)
        if kind == K_DURATION:
            return _kubeproto_py._duration_text(<int64_t>self.varint_of(&spans[1]))
        raise AssertionError(kind)


class KubeProtoDecoder(_kubeproto_py.KubeProtoDecoder):
    __doc__ = _kubeproto_py.KubeProtoDecoder.__doc__

    def _reader(self, data):
        return FrameReader(decode_tables(self.schema), data, self._values_limit)
