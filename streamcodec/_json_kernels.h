/* C kernels of the compiled JSON encoder (_json.pyx declares what it uses of them).
 * Written for speed, checked against the pure-Python twin _json_py.py by the tests. */
#ifndef STREAMCODEC_JSON_KERNELS_H
#define STREAMCODEC_JSON_KERNELS_H

#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static const char sc_hex[] = "0123456789abcdef";

/* 1 for the bytes JSON escapes inside strings: controls, '"' and '\'. */
static const unsigned char sc_escaped[256] = {
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,
    0,0,1,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,
};
static const char sc_b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Bytes of JSON output for code point c inside a string (escapes as json.dumps). */
static inline Py_ssize_t sc_char_len(Py_UCS4 c) {
    if (c < 0x80) {
        if (c >= 0x20) return (c == '"' || c == '\\') ? 2 : 1;
        return (c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') ? 2 : 6;
    }
    return c < 0x800 ? 2 : (c < 0x10000 ? 3 : 4);
}

static inline Py_ssize_t sc_write_escape(char *out, unsigned c) {
    out[0] = '\\';
    switch (c) {
    case '"': out[1] = '"'; return 2;
    case '\\': out[1] = '\\'; return 2;
    case '\n': out[1] = 'n'; return 2;
    case '\r': out[1] = 'r'; return 2;
    case '\t': out[1] = 't'; return 2;
    case '\b': out[1] = 'b'; return 2;
    case '\f': out[1] = 'f'; return 2;
    default:
        out[1] = 'u'; out[2] = '0'; out[3] = '0';
        out[4] = sc_hex[c >> 4]; out[5] = sc_hex[c & 15];
        return 6;
    }
}

/* Writes code point c (JSON-escaped, UTF-8); the caller reserved sc_char_len(c). */
static inline Py_ssize_t sc_write_char(char *out, Py_UCS4 c) {
    if (c < 0x80) {
        if (c >= 0x20 && c != '"' && c != '\\') { out[0] = (char)c; return 1; }
        return sc_write_escape(out, c);
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | (c >> 6)); out[1] = (char)(0x80 | (c & 0x3F)); return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12)); out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F)); return 3;
    }
    out[0] = (char)(0xF0 | (c >> 18)); out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F)); out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* Index of the first '"', '\\' or control byte in ASCII s[0:n], or n. */
static inline Py_ssize_t sc_find_escape(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20);
    /* Signed compare is right: the input is ASCII (< 0x80). */
    for (; i + 32 <= n; i += 32) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
        __m128i ma = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(a, quote), _mm_cmpeq_epi8(a, bslash)),
                                  _mm_cmplt_epi8(a, space));
        __m128i mb = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(b, quote), _mm_cmpeq_epi8(b, bslash)),
                                  _mm_cmplt_epi8(b, space));
        unsigned mask = (unsigned)_mm_movemask_epi8(ma) | ((unsigned)_mm_movemask_epi8(mb) << 16);
        if (mask) return i + __builtin_ctz(mask);
    }
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(s + i));
        __m128i ma = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(a, quote), _mm_cmpeq_epi8(a, bslash)),
                                  _mm_cmplt_epi8(a, space));
        unsigned mask = (unsigned)_mm_movemask_epi8(ma);
        if (mask) return i + __builtin_ctz(mask);
    }
#else
    /* SWAR, 8 bytes a word: a byte b < 0x20 iff (b - 0x20) borrows into bit 7,
       and an x equal to the target iff (x ^ target) - 1 does; all inputs < 0x80. */
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    for (; i + 8 <= n; i += 8) {
        uint64_t w, q, b;
        memcpy(&w, s + i, 8);
        q = w ^ (ones * '"');
        b = w ^ (ones * '\\');
        if ((((q - ones) | (b - ones) | (w - ones * 0x20)) & highs) != 0) break;
    }
#endif
    for (; i < n; i++) {
        unsigned char c = s[i];
        if (c < 0x20 || c == '"' || c == '\\') return i;
    }
    return n;
}

/* Nonzero iff a byte of the ASCII word w needs escaping (< 0x20, '"' or '\').
   Exact for bytes < 0x80: x - 0x01 per byte borrows (sets bit 7) only
   where x is zero, w - 0x20 only where w < 0x20. */
static inline uint64_t sc_escapes8(uint64_t w) {
    const uint64_t ones = 0x0101010101010101ULL;
    uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
    return ((q - ones) | (b - ones) | (w - ones * 0x20)) & 0x8080808080808080ULL;
}

static inline uint32_t sc_escapes4(uint32_t w) {
    const uint32_t ones = 0x01010101u;
    uint32_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
    return ((q - ones) | (b - ones) | (w - ones * 0x20)) & 0x80808080u;
}

/* Copies ASCII s[0:n] to out a word at a time (overlapping last word) and
   returns 1 if no byte needs escaping; else 0, out[0:n] left clobbered.
   The caller reserved n bytes. */
static inline int sc_copy_ascii_clean(char *out, const unsigned char *s, Py_ssize_t n) {
    if (n >= 8) {
        uint64_t w, found = 0;
        Py_ssize_t i = 0;
        for (; i + 8 < n; i += 8) {
            memcpy(&w, s + i, 8);
            found |= sc_escapes8(w);
            memcpy(out + i, &w, 8);
        }
        memcpy(&w, s + n - 8, 8);
        found |= sc_escapes8(w);
        memcpy(out + n - 8, &w, 8);
        return found == 0;
    }
    if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        if (sc_escapes4(a) | sc_escapes4(b)) return 0;
        memcpy(out, &a, 4);
        memcpy(out + n - 4, &b, 4);
        return 1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (sc_escaped[s[i]]) return 0;
        out[i] = (char)s[i];
    }
    return 1;
}

/* Short ASCII string, escapes included; the caller reserved 6 * n. */
#if defined(__GNUC__)
#define SC_ALWAYS_INLINE static inline __attribute__((always_inline))
#define SC_NOINLINE static __attribute__((noinline))
#else
#define SC_ALWAYS_INLINE static inline
#define SC_NOINLINE static
#endif

/* ASCII s[0:n] one byte at a time, escapes included; the caller reserved 6 * n. */
SC_NOINLINE Py_ssize_t sc_write_ascii_escaped(char *out, const unsigned char *s, Py_ssize_t n) {
    char *p = out;
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') *p++ = (char)c;
        else p += sc_write_escape(p, c);
    }
    return p - out;
}

SC_ALWAYS_INLINE Py_ssize_t sc_write_ascii_short(char *out, const unsigned char *s, Py_ssize_t n) {
    if (sc_copy_ascii_clean(out, s, n)) return n;
    return sc_write_ascii_escaped(out, s, n);
}

/* [prefix]"s"[suffix] for an ASCII str s shorter than short_max when
   6 * len + 4 bytes of room are there: the bytes written; else 0 and
   nothing written.  A zero prefix/suffix is left out.  Always inlined:
   it is most of the work for most values and keys. */
SC_ALWAYS_INLINE Py_ssize_t sc_short_ascii(char *out, Py_ssize_t room, PyObject *s,
                                           Py_ssize_t short_max, char prefix, char suffix) {
    char *p = out;
    Py_ssize_t n;
    if (!PyUnicode_IS_ASCII(s)) return 0;
    n = PyUnicode_GET_LENGTH(s);
    if (n >= short_max || 6 * n + 4 > room) return 0;
    if (prefix) *p++ = prefix;
    *p++ = '"';
    p += sc_write_ascii_short(p, (const unsigned char *)PyUnicode_DATA(s), n);
    *p++ = '"';
    if (suffix) *p++ = suffix;
    return p - out;
}

/* Block fast paths for ASCII runs inside non-ASCII strings: 8 latin-1
   bytes or 4 UCS-2 units a word, copied when none needs escaping.
   Unit order in a word is byte order: the UCS-2 one is little-endian only. */
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SC_UCS2_BLOCKS 1
#else
#define SC_UCS2_BLOCKS 0
#endif

/* 1 if the 8 latin-1 bytes at s are ASCII needing no escape (then copied to out). */
static inline int sc_ucs1_block(char *out, const Py_UCS1 *s) {
    uint64_t w;
    memcpy(&w, s, 8);
    if ((w & 0x8080808080808080ULL) || sc_escapes8(w)) return 0;
    memcpy(out, &w, 8);
    return 1;
}

/* 1 if the 4 UCS-2 units at s are ASCII needing no escape (then narrowed to out). */
static inline int sc_ucs2_block(char *out, const Py_UCS2 *s) {
    const uint64_t ones = 0x0001000100010001ULL;
    uint64_t w, q, b;
    uint32_t narrow;
    memcpy(&w, s, 8);
    if (w & 0xFF80FF80FF80FF80ULL) return 0;
    /* Every unit < 0x80: as in sc_escapes8, per 16-bit unit. */
    q = w ^ (ones * '"');
    b = w ^ (ones * '\\');
    if (((q - ones) | (b - ones) | (w - ones * 0x20)) & 0x8000800080008000ULL) return 0;
    narrow = (uint32_t)((w & 0x7F) | ((w >> 8) & 0x7F00) | ((w >> 16) & 0x7F0000) | ((w >> 24) & 0x7F000000));
    memcpy(out, &narrow, 4);
    return 1;
}

/* count code points from index start of a kind-k string; caller reserved 6 * count. */
static Py_ssize_t sc_write_ucs(char *out, const void *data, int kind, Py_ssize_t start, Py_ssize_t count) {
    char *p = out;
    Py_ssize_t i, end = start + count;
    if (kind == 1) {
        const Py_UCS1 *s = (const Py_UCS1 *)data;
        for (i = start; i < end; ) {
            Py_ssize_t stop;
            if (i + 8 <= end && sc_ucs1_block(p, s + i)) { p += 8; i += 8; continue; }
            for (stop = i + 8 < end ? i + 8 : end; i < stop; i++) {
                Py_UCS1 c = s[i];
                if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') *p++ = (char)c;
                else p += sc_write_char(p, c);
            }
        }
    } else if (kind == 2) {
        const Py_UCS2 *s = (const Py_UCS2 *)data;
        for (i = start; i < end; ) {
            Py_ssize_t stop;
            if (SC_UCS2_BLOCKS && i + 4 <= end && sc_ucs2_block(p, s + i)) { p += 4; i += 4; continue; }
            for (stop = i + 4 < end ? i + 4 : end; i < stop; i++) {
                Py_UCS2 c = s[i];
                if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') *p++ = (char)c;
                else p += sc_write_char(p, c);
            }
        }
    } else {
        const Py_UCS4 *s = (const Py_UCS4 *)data;
        for (i = start; i < end; i++) p += sc_write_char(p, s[i]);
    }
    return p - out;
}

/* Whole string of n code points in one pass, stopping at a surrogate (never
   valid UTF-8): bytes written, or -(index + 1) of the surrogate.  The
   caller reserved 6 * n. */
static Py_ssize_t sc_write_ucs_checked(char *out, const void *data, int kind, Py_ssize_t n) {
    char *p = out;
    Py_ssize_t i;
    if (kind == 1) return sc_write_ucs(out, data, 1, 0, n);
    if (kind == 2) {
        const Py_UCS2 *s = (const Py_UCS2 *)data;
        for (i = 0; i < n; ) {
            Py_ssize_t stop;
            if (SC_UCS2_BLOCKS && i + 4 <= n && sc_ucs2_block(p, s + i)) { p += 4; i += 4; continue; }
            for (stop = i + 4 < n ? i + 4 : n; i < stop; i++) {
                Py_UCS2 c = s[i];
                if (c < 0x80 && !sc_escaped[c]) *p++ = (char)c;
                else if ((c & 0xF800) == 0xD800) return -(i + 1);
                else p += sc_write_char(p, c);
            }
        }
    } else {
        const Py_UCS4 *s = (const Py_UCS4 *)data;
        for (i = 0; i < n; i++) {
            Py_UCS4 c = s[i];
            if (c < 0x80 && !sc_escaped[c]) *p++ = (char)c;
            else if ((c & 0xFFFFF800u) == 0xD800) return -(i + 1);
            else p += sc_write_char(p, c);
        }
    }
    return p - out;
}

/* Index of the first surrogate code point (never valid UTF-8), or -1. */
static Py_ssize_t sc_find_surrogate(const void *data, int kind, Py_ssize_t n) {
    Py_ssize_t i;
    if (kind == 2) {
        const Py_UCS2 *s = (const Py_UCS2 *)data;
        for (i = 0; i < n; i++) if ((s[i] & 0xF800) == 0xD800) return i;
    } else if (kind == 4) {
        const Py_UCS4 *s = (const Py_UCS4 *)data;
        for (i = 0; i < n; i++) if ((s[i] & 0xFFFFF800u) == 0xD800) return i;
    }
    return -1;
}

static const char sc_digit_pairs[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Decimal digits of u, written to end at tmp_end; returns the first. */
static inline char *sc_format_u64(char *tmp_end, unsigned long long u) {
    char *p = tmp_end;
    while (u >= 100) {
        unsigned r = (unsigned)(u % 100);
        u /= 100;
        p -= 2;
        memcpy(p, sc_digit_pairs + 2 * r, 2);
    }
    if (u >= 10) {
        p -= 2;
        memcpy(p, sc_digit_pairs + 2 * u, 2);
    } else {
        *--p = (char)('0' + u);
    }
    return p;
}

static inline Py_ssize_t sc_format_ll(char *out, long long v) {
    char tmp[24];
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    char *p = sc_format_u64(tmp + 24, u);
    if (v < 0) *--p = '-';
    memcpy(out, p, (size_t)(tmp + 24 - p));
    return tmp + 24 - p;
}

/* An exact int's value when it fits one internal digit (|v| < 2**30),
   read without a call; *ok = 0 otherwise. */
static inline long sc_small_int(PyObject *op, int *ok) {
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnstable_Long_IsCompact((PyLongObject *)op)) {
        *ok = 1;
        return (long)PyUnstable_Long_CompactValue((PyLongObject *)op);
    }
#else
    Py_ssize_t size = Py_SIZE(op);
    if (size >= -1 && size <= 1) {
        *ok = 1;
        return (long)size * (long)((PyLongObject *)op)->ob_digit[0];
    }
#endif
    *ok = 0;
    return 0;
}

/* An exact int of one internal digit, in decimal, if 12 bytes of room
   are there: bytes written, else 0 (nothing written). */
SC_ALWAYS_INLINE Py_ssize_t sc_write_small_int(char *out, Py_ssize_t room, PyObject *op) {
    int small;
    long v;
    if (room < 12) return 0;
    v = sc_small_int(op, &small);
    return small ? sc_format_ll(out, v) : 0;
}

static const double sc_pow10[16] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};

/* float.__repr__(v) for the common floats, without dtoa: when some
   m / 10**k (m < 10**15, so at most 15 significant digits) rounds to v.
   No other decimal of at most 15 digits rounds to the same double (the
   DBL_DIG guarantee), so that is the shortest round-trip form repr
   prints; 1e-4 <= |v| < 1e15 keeps repr in fixed notation.  Returns the
   length written (at most 24), or 0: use PyOS_double_to_string. */
static Py_ssize_t sc_format_double_short(char *out, double v) {
    double a = v < 0 ? -v : v, t;
    unsigned long long m = 0;
    int k, found = 0, digits;
    char tmp[24], *p, *o = out;
    if (v == 0.0) {
        if (signbit(v)) { memcpy(out, "-0.0", 4); return 4; }
        memcpy(out, "0.0", 3);
        return 3;
    }
    if (!(a >= 1e-4 && a < 1e15)) return 0;
    for (k = 0; k < 16; k++) {
        t = a * sc_pow10[k];
        if (t >= 1e15) return 0;
        m = (unsigned long long)t;
        if ((double)m == t && (double)m / sc_pow10[k] == a) { found = 1; break; }
    }
    if (!found) return 0;
    while (k > 0 && m % 10 == 0) { m /= 10; k--; }
    p = sc_format_u64(tmp + 24, m);
    digits = (int)(tmp + 24 - p);
    if (v < 0) *o++ = '-';
    if (k == 0) {
        memcpy(o, p, (size_t)digits);
        o += digits;
        memcpy(o, ".0", 2);
        o += 2;
    } else if (digits > k) {
        memcpy(o, p, (size_t)(digits - k));
        o += digits - k;
        *o++ = '.';
        memcpy(o, p + digits - k, (size_t)k);
        o += k;
    } else {
        *o++ = '0';
        *o++ = '.';
        memset(o, '0', (size_t)(k - digits));
        o += k - digits;
        memcpy(o, p, (size_t)digits);
        o += digits;
    }
    return o - out;
}

static inline Py_ssize_t sc_base64_len(Py_ssize_t n) { return (n + 2) / 3 * 4; }

/* Standard alphabet with '=' padding (Go's encoding of []byte). */
static void sc_base64(char *out, const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8) | s[i + 2];
        out[0] = sc_b64[v >> 18]; out[1] = sc_b64[(v >> 12) & 63];
        out[2] = sc_b64[(v >> 6) & 63]; out[3] = sc_b64[v & 63];
        out += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        out[0] = sc_b64[v >> 18]; out[1] = sc_b64[(v >> 12) & 63]; out[2] = '='; out[3] = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8);
        out[0] = sc_b64[v >> 18]; out[1] = sc_b64[(v >> 12) & 63];
        out[2] = sc_b64[(v >> 6) & 63]; out[3] = '=';
    }
}

/* Per-encoder cache of encoded dict keys ('"key":'), direct-mapped by
   the str's hash.  Each entry holds a strong reference to a str with that
   text, so the pointer stays valid (never a freed-and-reused address);
   a different str object with equal text hits too (decoded objects each
   have their own key strs).  SC_KEY_SLOTS * sizeof(sc_key_entry) = 32 KiB. */
#if PY_VERSION_HEX < 0x030C0000
#define SC_STR_READY(op) PyUnicode_IS_READY(op)
#else
#define SC_STR_READY(op) 1
#endif
#define SC_KEY_SLOTS 512
#define SC_KEY_BYTES 40
typedef struct {
    PyObject *key;      /* strong reference, or NULL: an empty slot */
    Py_hash_t hash;     /* key's hash: a mismatch is told without touching key */
    int32_t len;        /* bytes used in text */
    int32_t used;       /* 1 if hit (or stored) since the last miss on this slot */
    char text[SC_KEY_BYTES];
} sc_key_entry;

/* The entry for exact-str key k (hash already computed: it is a dict key), or NULL. */
static inline sc_key_entry *sc_key_lookup(sc_key_entry *table, PyObject *k) {
    Py_hash_t h = ((PyASCIIObject *)k)->hash;
    sc_key_entry *e;
    PyObject *c;
    Py_ssize_t n;
    int kind;
    if (h == -1) return NULL;
    e = &table[(size_t)h & (SC_KEY_SLOTS - 1)];
    c = e->key;
    if (c == k) { e->used = 1; return e; }
    if (c == NULL || e->hash != h) return NULL;
    /* Both compact and ready: cached keys were readied when first encoded,
       and a not-ready k has a different (wchar) kind. */
    if (!PyUnicode_IS_COMPACT(k) || !SC_STR_READY(k)) return NULL;
    n = PyUnicode_GET_LENGTH(k);
    kind = PyUnicode_KIND(k);
    if (PyUnicode_GET_LENGTH(c) != n || PyUnicode_KIND(c) != kind) return NULL;
    if (memcmp(PyUnicode_DATA(c), PyUnicode_DATA(k), (size_t)n * (size_t)kind) != 0) return NULL;
    e->used = 1;
    return e;
}

/* Remember text[0:len] as the encoding of exact-str key k (if it fits),
   after a miss.  An entry hit since the previous miss on its slot stays
   (it only loses its mark): keys colliding in a slot, say two of the
   thousand keys of one ConfigMap, would otherwise evict each other on
   every object and never hit. */
static void sc_key_store(sc_key_entry *table, PyObject *k, const char *text, Py_ssize_t len) {
    Py_hash_t h = ((PyASCIIObject *)k)->hash;
    sc_key_entry *e;
    PyObject *old;
    if (h == -1 || len > SC_KEY_BYTES || !PyUnicode_IS_COMPACT(k) || !SC_STR_READY(k)) return;
    e = &table[(size_t)h & (SC_KEY_SLOTS - 1)];
    if (e->used) {
        e->used = 0;
        return;
    }
    old = e->key;
    Py_INCREF(k);
    e->key = k;
    memcpy(e->text, text, (size_t)len);
    e->hash = h;
    e->len = (int32_t)len;
    e->used = 1;
    Py_XDECREF(old);  /* an exact str: freeing it runs no Python code */
}

static void sc_key_clear(sc_key_entry *table) {
    Py_ssize_t i;
    for (i = 0; i < SC_KEY_SLOTS; i++) Py_CLEAR(table[i].key);
}

/* Decoder pre-scan: offset of the first bracket nesting deeper than max_depth
   (*what = 1), first N/I outside a string, i.e. NaN/Infinity (*what = 2), or
   first token past the values budget (*what = 3); -1 if none.  A text holds
   1 + commas + colons + non-empty containers values (every element, key and
   map value, and the text's own).  String skipping matches the twin's regex:
   a backslash escapes the next byte, an unterminated string runs to the end. */
static Py_ssize_t sc_prescan(const unsigned char *s, Py_ssize_t n, Py_ssize_t max_depth,
                             Py_ssize_t max_values, int *what) {
    Py_ssize_t depth = 0, i = 0, j, values_left = max_values - 1;
    while (i < n) {
        unsigned char c = s[i];
        if (c == '"') {
            i++;
            while (i < n) {
                unsigned char d = s[i];
                if (d == '\\') { i += 2; continue; }
                if (d == '"') break;
                i++;
            }
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth) { *what = 1; return i; }
            for (j = i + 1; j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r'); j++) {}
            if (!(j < n && (s[j] == ']' || s[j] == '}')) && --values_left < 0) { *what = 3; return i; }
        } else if (c == ']' || c == '}') {
            depth--;
        } else if (c == ',' || c == ':') {
            if (--values_left < 0) { *what = 3; return i; }
        } else if (c == 'N' || c == 'I') {
            *what = 2; return i;
        }
        i++;
    }
    return -1;
}

#endif /* STREAMCODEC_JSON_KERNELS_H */
