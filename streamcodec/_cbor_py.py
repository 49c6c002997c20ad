"""CBOR (RFC 8949) encoder and incremental decoder: the pure-Python twin of
:mod:`streamcodec._cbor`, with identical output and errors.

Encoding rules (deterministic, no options):

* every object frame is the self-described tag 55799 (``d9 d9 f7``, as
  Kubernetes writes it) followed by one data item;
* definite lengths and shortest-form heads everywhere in an object;
* str → text string, bytes/bytearray/memoryview → byte string, dict → map
  with text keys (insertion order kept), list/tuple → array;
* ints in [-2**64, 2**64) as major type 0/1, larger ones as bignums
  (tags 2/3 with the shortest big-endian magnitude);
* floats as the shortest of half/single/double precision that keeps the
  value exactly (RFC 8949 §4.2.2 preferred serialization); NaN → ``f9 7e 00``,
  ±Infinity → half.  cbor2's default (``canonical=False``) always writes
  doubles; its ``canonical=True`` float choice matches ours.

An event frame is ``d9 d9 f7`` + map(2) {"type": text, "object": object
frame (with its own tag)}, so re-encoding and raw pass-through give the same
bytes.  A watch stream is a CBOR sequence (RFC 8742) of event frames.

A list body is ``d9 d9 f7`` + map(4) {"kind", "apiVersion", "metadata",
"items": *indefinite-length* array of object frames}, closed by ``ff`` at
the end.  The items array is the one indefinite length we write: encoders
keep no per-list state, so ``encode_list_end_into`` cannot know whether the
start announced a count; an indefinite array makes the end marker the same
(``ff``) in every case.  ``count`` is still validated when given.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Callable, Optional

from ._framing_py import (
    INDEF_ARRAY,
    INDEF_MAP_KEY,
    EncodingBase,
    FrameEncoderBase,
    ScanState,
    StreamDecoderBase,
    close_item,
    duplicate_key,
    event_prefixes,
)
from .errors import DecodeError, EncodeError, TooManyValues
from .limits import DEFAULT_MAX_FRAME_SIZE, MAX_DEPTH

__all__ = ["CBOREncoder", "CBORDecoder"]

SELF_DESCRIBE = b"\xd9\xd9\xf7"
_TAG_SELF_DESCRIBE = 55799
_TAG_POS_BIGNUM = 2
_TAG_NEG_BIGNUM = 3
_TWO_64 = 1 << 64

_pack_half = struct.Struct(">e").pack
_pack_single = struct.Struct(">f").pack
_pack_double = struct.Struct(">d").pack
_unpack_half = struct.Struct(">e").unpack_from
_unpack_single = struct.Struct(">f").unpack_from
_unpack_double = struct.Struct(">d").unpack_from


def _head(major: int, n: int) -> bytes:
    """The shortest head of major type ``major`` with argument ``n`` (0 ≤ n < 2**64)."""
    m = major << 5
    if n < 24:
        return bytes((m | n,))
    if n < 0x100:
        return bytes((m | 24, n))
    if n < 0x10000:
        return bytes((m | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((m | 26,)) + n.to_bytes(4, "big")
    return bytes((m | 27,)) + n.to_bytes(8, "big")


def _text(s: str) -> bytes:
    return _head(3, len(s.encode())) + s.encode()


def _float_bytes(v: float) -> bytes:
    if v != v:
        return b"\xf9\x7e\x00"
    if math.isinf(v):
        return b"\xf9\x7c\x00" if v > 0 else b"\xf9\xfc\x00"
    try:
        half = _pack_half(v)
        if _unpack_half(half)[0] == v:
            return b"\xf9" + half
    except OverflowError:
        pass
    try:
        single = _pack_single(v)
        if _unpack_single(single)[0] == v:
            return b"\xfa" + single
    except OverflowError:
        pass
    return b"\xfb" + _pack_double(v)


# Precomputed envelope prefixes: d9d9f7 a2 "type" <type> "object".
EVENT_PREFIXES = event_prefixes(SELF_DESCRIBE + b"\xa2", _text)


def _major_head(major: int) -> Callable[[int], bytes]:
    def head(n: int) -> bytes:
        return _head(major, n)

    return head


class _Encoding(EncodingBase):
    """One encode call writing CBOR."""

    __slots__ = ()

    FORMAT = "CBOR"
    NULL = b"\xf6"
    TRUE = b"\xf5"
    FALSE = b"\xf4"
    bytes_head = staticmethod(_major_head(2))
    text_head = staticmethod(_major_head(3))
    array_head = staticmethod(_major_head(4))
    map_head = staticmethod(_major_head(5))
    real = staticmethod(_float_bytes)

    def integer(self, v: int) -> None:
        if 0 <= v < _TWO_64:
            self.out += _head(0, v)
        elif -_TWO_64 <= v < 0:
            self.out += _head(1, -1 - v)
        else:
            tag, magnitude = (0xC2, v) if v > 0 else (0xC3, -1 - v)
            data = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
            self.out += bytes((tag,)) + _head(2, len(data)) + data
            if len(self.out) > self.limit:
                raise self.too_large()


class CBOREncoder(FrameEncoderBase):
    """Encodes objects, watch events and list bodies as CBOR (see the module docstring).

    Object frames are ``d9 d9 f7`` + the item; event frames ``d9 d9 f7``
    {"type": type, "object": object frame}; a list body's items array is
    indefinite-length, closed by ``ff`` at the end.
    """

    content_type = "application/cbor"
    stream_content_type = "application/cbor-seq"

    _Encoding = _Encoding
    _OBJECT_TAG = SELF_DESCRIBE
    _EVENT_PREFIXES = EVENT_PREFIXES
    _LIST_HEAD = SELF_DESCRIBE + b"\xa4"
    _LIST_END = b"\xff"

    def __init__(
        self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, max_depth: int = MAX_DEPTH, byte_string_tag: Optional[int] = None
    ) -> None:
        """``byte_string_tag``: a tag every byte string is enclosed in (Kubernetes: 22, "expected later base64")."""
        super().__init__(max_frame_size=max_frame_size, max_depth=max_depth)
        if byte_string_tag is not None:
            if type(byte_string_tag) is not int or not 0 <= byte_string_tag < _TWO_64:
                raise ValueError("byte_string_tag must be an int in 0..2**64-1")
            self._Encoding = type("_TaggedEncoding", (_Encoding,), {"__slots__": (), "BYTES_PREFIX": _head(6, byte_string_tag)})

    def _check_raw(self, data: bytes) -> None:
        if len(data) < 4 or data[:3] != SELF_DESCRIBE:
            raise EncodeError("raw CBOR frame must start with the self-described tag d9 d9 f7 and hold an item")

    def _check_count(self, count: Optional[int]) -> None:
        if count is not None and (type(count) is not int or count < 0):
            raise ValueError(f"count must be a non-negative int or None, got {count!r}")

    def _items_head(self, count: Optional[int]) -> bytes:
        return b"\x9f"  # indefinite length: the end marker is ff whatever the count


# ---------------------------------------------------------------------------
# Decoding


class _ScanState(ScanState):
    """The open containers are ``(remaining items << 1) | is_map`` or
    INDEF_ARRAY / INDEF_MAP_KEY / INDEF_MAP_VALUE; ``tag`` is a tag waiting
    for its item (-1: none)."""

    __slots__ = ("tag",)

    def __init__(self, pos: int, values_left: int) -> None:
        super().__init__(pos, values_left)
        self.tag = -1


class CBORDecoder(StreamDecoderBase):
    """Incremental, sans-IO CBOR decoder.

    ``decode(frame)`` returns the object of one object frame; ``feed`` a
    CBOR sequence of event frames and iterate :class:`~streamcodec.protocol.Event`.
    It accepts what :class:`CBOREncoder` writes plus other well-formed CBOR
    of the same data model: the self-described tag anywhere (ignored),
    bignums, any head width, indefinite-length arrays and maps.  It rejects
    (DecodeError) map keys that are not text, other tags, a tag directly on a
    tag, undefined and other simple values, and indefinite-length strings;
    with ``unique_keys``, a map holding a key twice (DuplicateKey).
    """

    def _new_scan_state(self, pos: int) -> _ScanState:
        return _ScanState(pos, self._values_budget)

    def _scan(self, data: Any, end: int, state: _ScanState, frame_start: int, depth_limit: int, base: int) -> Optional[int]:
        pos = state.pos
        if state.complete:
            return pos if pos <= end else None
        stack = state.stack
        limit = frame_start + self._max_frame_size
        while True:
            if pos >= end:
                state.pos = pos
                return None
            ib = data[pos]
            major = ib >> 5
            ai = ib & 31
            if ai < 24:
                arg = ai
                head_end = pos + 1
            elif ai < 28:
                width = 1 << (ai - 24)
                head_end = pos + 1 + width
                if head_end > end:
                    state.pos = pos
                    return None
                arg = int.from_bytes(data[pos + 1 : head_end], "big")
            elif ai == 31:
                arg = -1
                head_end = pos + 1
            else:
                raise DecodeError(f"reserved additional information {ai}", base + pos)
            # Definite entries are (remaining << 1) | is_map; a map's
            # remaining count is even exactly when a key comes next.
            top = stack[-1] if stack else 0
            at_key = top == INDEF_MAP_KEY or (top > 0 and top & 1 == 1 and (top >> 1) & 1 == 0)
            if at_key and ib != 0xFF and (major != 3 or arg < 0 or state.tag >= 0):
                raise DecodeError("map key is not a definite-length text string", base + pos)
            if state.tag >= 0:
                if ib == 0xFF:
                    # A break cannot be a tag's content: letting it through
                    # would close a container the builder never opened.
                    raise DecodeError("tag without an item", base + pos)
                # Tag chains stay bounded: 55799 may wrap a bignum, nothing else nests.
                if state.tag != _TAG_SELF_DESCRIBE:
                    if major != 2 or arg < 0:
                        raise DecodeError("bignum tag must be followed by a definite byte string", base + pos)
                elif major == 6 and arg == _TAG_SELF_DESCRIBE:
                    raise DecodeError("self-described tag directly on itself", base + pos)
                state.tag = -1
            if major != 6 and ib != 0xFF:
                state.values_left -= 1
                if state.values_left < 0:
                    raise TooManyValues(self._values_budget, base + pos)
            done = False
            if major <= 1:
                if arg < 0:
                    raise DecodeError("indefinite length on an integer", base + pos)
                done = True
            elif major <= 3:
                if arg < 0:
                    raise DecodeError("indefinite-length strings are not supported", base + pos)
                if head_end + arg > limit:
                    raise DecodeError(f"string reaches past max_frame_size {self._max_frame_size}", base + pos)
                head_end += arg
                done = True
            elif major <= 5:
                if len(stack) >= depth_limit:
                    raise DecodeError(f"nesting deeper than max_depth {depth_limit}", base + pos)
                if arg < 0:
                    stack.append(INDEF_ARRAY if major == 4 else INDEF_MAP_KEY)
                elif arg == 0:
                    done = True
                else:
                    n = arg if major == 4 else 2 * arg
                    # Each item takes at least one byte: a count beyond the
                    # frame limit can never complete.
                    if head_end + n > limit:
                        raise DecodeError(f"container count {arg} reaches past max_frame_size", base + pos)
                    stack.append((n << 1) | (major == 5))
            elif major == 6:
                if arg < 0:
                    raise DecodeError("indefinite length on a tag", base + pos)
                if arg not in (_TAG_SELF_DESCRIBE, _TAG_POS_BIGNUM, _TAG_NEG_BIGNUM):
                    raise DecodeError(f"unsupported tag {arg}", base + pos)
                state.tag = arg
            else:  # major 7
                if ai in (20, 21, 22) or ai in (25, 26, 27):
                    done = True
                elif ai == 31:
                    if not stack or stack[-1] not in (INDEF_ARRAY, INDEF_MAP_KEY):
                        raise DecodeError("break outside an indefinite-length container", base + pos)
                    stack.pop()
                    done = True
                else:
                    raise DecodeError(f"unsupported simple value (additional information {ai})", base + pos)
            pos = head_end
            if pos > limit:
                raise DecodeError(f"frame exceeds max_frame_size {self._max_frame_size}", base + limit)
            if done and close_item(stack):
                return state.frame_end(pos, end)

    def _build(self, data: Any, start: int, end: int, base: int) -> Any:
        value, pos = self._item(data, start, base)
        return value

    def _item(self, data: Any, pos: int, base: int) -> Any:
        ib = data[pos]
        major = ib >> 5
        ai = ib & 31
        if ai < 24:
            arg = ai
            pos += 1
        elif ai < 28:
            width = 1 << (ai - 24)
            arg = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
            if major == 7:
                if ai == 25:
                    return _unpack_half(data, pos + 1)[0], pos + 3
                if ai == 26:
                    return _unpack_single(data, pos + 1)[0], pos + 5
                return _unpack_double(data, pos + 1)[0], pos + 9
            pos += 1 + width
        else:  # 31: indefinite container (the scanner allowed nothing else)
            arg = -1
            pos += 1
        if major == 0:
            return arg, pos
        if major == 1:
            return -1 - arg, pos
        if major == 2:
            return bytes(data[pos : pos + arg]), pos + arg
        if major == 3:
            return self._str(data, pos, arg, base), pos + arg
        if major == 4:
            items = []
            if arg >= 0:
                for _ in range(arg):
                    value, pos = self._item(data, pos, base)
                    items.append(value)
                return items, pos
            while data[pos] != 0xFF:
                value, pos = self._item(data, pos, base)
                items.append(value)
            return items, pos + 1
        if major == 5:
            result = {}
            unique = self._unique_keys
            # A map that did not grow took a key it had (checked after the value, as Go's decoder does).
            if arg >= 0:
                for i in range(arg):
                    at = pos
                    key, pos = self._key(data, pos, base)
                    result[key], pos = self._item(data, pos, base)
                    if unique and len(result) <= i:
                        raise duplicate_key(key, i, base + at)
                return result, pos
            i = 0
            while data[pos] != 0xFF:
                at = pos
                key, pos = self._key(data, pos, base)
                result[key], pos = self._item(data, pos, base)
                if unique and len(result) <= i:
                    raise duplicate_key(key, i, base + at)
                i += 1
            return result, pos + 1
        if major == 6:
            value, pos = self._item(data, pos, base)
            if arg == _TAG_SELF_DESCRIBE:
                return value, pos
            magnitude = int.from_bytes(value, "big")
            return (magnitude if arg == _TAG_POS_BIGNUM else -1 - magnitude), pos
        # major 7: false/true/null (floats returned above)
        return (False, True, None)[ai - 20], pos

    def _key(self, data: Any, pos: int, base: int) -> Any:
        ib = data[pos]
        ai = ib & 31
        if ai < 24:
            n, pos = ai, pos + 1
        else:
            width = 1 << (ai - 24)
            n, pos = int.from_bytes(data[pos + 1 : pos + 1 + width], "big"), pos + 1 + width
        return self._str(data, pos, n, base), pos + n

    @staticmethod
    def _str(data: Any, pos: int, n: int, base: int) -> str:
        try:
            return str(data[pos : pos + n], "utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"invalid UTF-8 in text string: {exc.reason}", base + pos + exc.start) from None

