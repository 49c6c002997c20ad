"""MessagePack encoder and incremental decoder: the pure-Python twin of
:mod:`streamcodec._msgpack`, with identical output and errors.

Encoding rules (those of ``msgpack.packb(obj, use_bin_type=True)``, so the
bytes are identical to it):

* one MessagePack object per frame, no envelope;
* ints in the shortest form (positive fixint / uint 8–64, negative fixint /
  int 8–64); ints outside [-2**63, 2**64) cannot be carried: EncodeError;
* floats always as float 64 (as msgpack's ``packb`` and msgspec write them);
* str → str family (UTF-8), bytes/bytearray/memoryview → bin family,
  dict → map with str keys (insertion order kept), list/tuple → array;
* str, bin, array and map lengths up to 2**32 - 1.

An event frame is the map {"type": str, "object": object}; a watch stream
is a plain concatenation of them.  A list body is the map(4) {"kind",
"apiVersion", "metadata", "items": array(count)}: MessagePack has no
indefinite length, so ``count`` is required (ValueError at start without
it) and ``encode_list_end_into`` writes nothing.

Content type (objects and streams alike): ``application/vnd.msgpack``.
"""

from __future__ import annotations

import struct
from typing import Any, List, Optional, cast

from ._framing_py import EncodingBase, FrameEncoderBase, ScanState, StreamDecoderBase, close_item, duplicate_key, event_prefixes
from .errors import DecodeError, EncodeError, TooManyValues

__all__ = ["MsgpackEncoder", "MsgpackDecoder"]

_TWO_32 = 1 << 32
_TWO_63 = 1 << 63
_TWO_64 = 1 << 64

_pack_double = struct.Struct(">d").pack
_unpack_single = struct.Struct(">f").unpack_from
_unpack_double = struct.Struct(">d").unpack_from


def _int_bytes(v: int) -> bytes:
    if v >= 0:
        if v < 0x80:
            return bytes((v,))
        if v < 0x100:
            return b"\xcc" + bytes((v,))
        if v < 0x10000:
            return b"\xcd" + v.to_bytes(2, "big")
        if v < _TWO_32:
            return b"\xce" + v.to_bytes(4, "big")
        if v < _TWO_64:
            return b"\xcf" + v.to_bytes(8, "big")
    else:
        if v >= -32:
            return bytes((v & 0xFF,))
        if v >= -0x80:
            return b"\xd0" + v.to_bytes(1, "big", signed=True)
        if v >= -0x8000:
            return b"\xd1" + v.to_bytes(2, "big", signed=True)
        if v >= -0x80000000:
            return b"\xd2" + v.to_bytes(4, "big", signed=True)
        if v >= -_TWO_63:
            return b"\xd3" + v.to_bytes(8, "big", signed=True)
    raise EncodeError(f"int {v} is outside MessagePack's range [-2**63, 2**64)")


def _sized_head(n: int, fix_base: int, fix_limit: int, b8: int, b16: int, b32: int, what: str) -> bytes:
    """Head of a str/bin/array/map of ``n`` bytes or entries (b8 = 0: no 8-bit form)."""
    if n < fix_limit:
        return bytes((fix_base | n,))
    if b8 and n < 0x100:
        return bytes((b8, n))
    if n < 0x10000:
        return bytes((b16,)) + n.to_bytes(2, "big")
    if n < _TWO_32:
        return bytes((b32,)) + n.to_bytes(4, "big")
    raise EncodeError(f"{what} of {n} is too long for MessagePack (at most 2**32 - 1)")


def _str_head(n: int) -> bytes:
    return _sized_head(n, 0xA0, 32, 0xD9, 0xDA, 0xDB, "str")


def _bin_head(n: int) -> bytes:
    return _sized_head(n, 0, 0, 0xC4, 0xC5, 0xC6, "bin")


def _array_head(n: int) -> bytes:
    return _sized_head(n, 0x90, 16, 0, 0xDC, 0xDD, "array")


def _map_head(n: int) -> bytes:
    return _sized_head(n, 0x80, 16, 0, 0xDE, 0xDF, "map")


def _str(s: str) -> bytes:
    data = s.encode()
    return _str_head(len(data)) + data


# Precomputed envelope prefixes: {"type": <type>, "object": ...
EVENT_PREFIXES = event_prefixes(b"\x82", _str)


def _float_bytes(v: float) -> bytes:
    return b"\xcb" + _pack_double(v)


class _Encoding(EncodingBase):
    """One encode call writing MessagePack."""

    __slots__ = ()

    FORMAT = "MessagePack"
    NULL = b"\xc0"
    TRUE = b"\xc3"
    FALSE = b"\xc2"
    text_head = staticmethod(_str_head)
    bytes_head = staticmethod(_bin_head)
    array_head = staticmethod(_array_head)
    map_head = staticmethod(_map_head)
    real = staticmethod(_float_bytes)  # always float 64, as msgpack and msgspec write them

    def integer(self, v: int) -> None:
        self.out += _int_bytes(v)


class MsgpackEncoder(FrameEncoderBase):
    """Encodes objects, watch events and list bodies as MessagePack
    (``application/vnd.msgpack``; see the module docstring).

    An object frame is the object alone; an event frame the map {"type":
    type, "object": obj}; a list body needs its ``count`` up front (the
    items array has a definite length) and writes nothing at the end.
    """

    content_type = "application/vnd.msgpack"
    stream_content_type = "application/vnd.msgpack"

    _Encoding = _Encoding
    _EVENT_PREFIXES = EVENT_PREFIXES
    _LIST_HEAD = b"\x84"
    _LIST_END = b""

    def _check_raw(self, data: bytes) -> None:
        if not data:
            raise EncodeError("raw MessagePack frame is empty")

    def _check_count(self, count: Optional[int]) -> None:
        if count is None:
            raise ValueError("MessagePack has no indefinite-length array: a list body needs count")
        if type(count) is not int or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")

    def _items_head(self, count: Optional[int]) -> bytes:
        return _array_head(cast(int, count))  # _check_count refused None


# ---------------------------------------------------------------------------
# Decoding


# For each first byte: (kind, argument) where kind says how to read the rest.
#   0 scalar with `arg` more bytes   1 str, length in `arg` bytes (fixstr: -len-1)
#   2 bin, length in `arg` bytes     3 array (fix: -n-1, else length width)
#   4 map (same)                     5 invalid / unsupported
def _lead_table() -> List[Any]:
    table: List[Any] = [None] * 256
    for b in range(256):
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            table[b] = (0, 0)
        elif b <= 0x8F:
            table[b] = (4, -(b & 0x0F) - 1)
        elif b <= 0x9F:
            table[b] = (3, -(b & 0x0F) - 1)
        elif b <= 0xBF:
            table[b] = (1, -(b & 0x1F) - 1)
        elif b in (0xC4, 0xC5, 0xC6):
            table[b] = (2, 1 << (b - 0xC4))
        elif b == 0xCA:
            table[b] = (0, 4)
        elif b == 0xCB:
            table[b] = (0, 8)
        elif 0xCC <= b <= 0xCF:
            table[b] = (0, 1 << (b - 0xCC))
        elif 0xD0 <= b <= 0xD3:
            table[b] = (0, 1 << (b - 0xD0))
        elif b in (0xD9, 0xDA, 0xDB):
            table[b] = (1, 1 << (b - 0xD9))
        elif b in (0xDC, 0xDD):
            table[b] = (3, 2 << (b - 0xDC))
        elif b in (0xDE, 0xDF):
            table[b] = (4, 2 << (b - 0xDE))
        else:  # 0xc1 (never used), ext and fixext
            table[b] = (5, 0)
    return table


_LEAD = _lead_table()


class MsgpackDecoder(StreamDecoderBase):
    """Incremental, sans-IO MessagePack decoder.

    ``decode(frame)`` returns the object of one object frame; ``feed`` a
    stream of event frames and iterate :class:`~streamcodec.protocol.Event`.
    Accepts every well-formed encoding of the data model (any width, float
    32 or 64); rejects (DecodeError) map keys that are not str, ext types
    and the unused byte 0xc1.  Kubernetes has no MessagePack; its CBOR
    decoder is the model: with ``unique_keys``, a map holding a key twice is
    DuplicateKey (the server always asks for it).
    """

    def _scan(self, data: Any, end: int, state: ScanState, frame_start: int, depth_limit: int, base: int) -> Optional[int]:
        pos = state.pos
        if state.complete:
            return pos if pos <= end else None
        stack = state.stack
        limit = frame_start + self._max_frame_size
        while True:
            if pos >= end:
                state.pos = pos
                return None
            head = pos
            b = data[pos]
            kind, arg = _LEAD[b]
            top = stack[-1] if stack else 0
            if top & 1 and (top >> 1) & 1 == 0 and kind != 1:
                raise DecodeError("map key is not a str", base + head)
            state.values_left -= 1
            if state.values_left < 0:
                raise TooManyValues(self._values_budget, base + head)
            done = True
            if kind == 0:
                pos += 1 + arg
            elif kind == 5:
                raise DecodeError(f"unsupported type byte 0x{b:02x}", base + head)
            else:
                if arg < 0:
                    n = -arg - 1
                    pos += 1
                else:
                    if pos + 1 + arg > end:
                        state.pos = pos
                        return None
                    n = int.from_bytes(data[pos + 1 : pos + 1 + arg], "big")
                    pos += 1 + arg
                if kind <= 2:
                    if pos + n > limit:
                        raise DecodeError(f"{'str' if kind == 1 else 'bin'} reaches past max_frame_size {self._max_frame_size}", base + head)
                    pos += n
                elif n:
                    if len(stack) >= depth_limit:
                        raise DecodeError(f"nesting deeper than max_depth {depth_limit}", base + head)
                    items = n if kind == 3 else 2 * n
                    # Each item takes at least one byte.
                    if pos + items > limit:
                        raise DecodeError(f"container count {n} reaches past max_frame_size", base + head)
                    stack.append((items << 1) | (kind == 4))
                    done = False
                elif len(stack) >= depth_limit:
                    raise DecodeError(f"nesting deeper than max_depth {depth_limit}", base + head)
            if pos > limit:
                raise DecodeError(f"frame exceeds max_frame_size {self._max_frame_size}", base + limit)
            if done and close_item(stack):
                return state.frame_end(pos, end)

    def _build(self, data: Any, start: int, end: int, base: int) -> Any:
        return self._item(data, start, base)[0]

    def _item(self, data: Any, pos: int, base: int) -> Any:
        b = data[pos]
        if b <= 0x7F:
            return b, pos + 1
        if b >= 0xE0:
            return b - 0x100, pos + 1
        kind, arg = _LEAD[b]
        if kind == 0:
            if b == 0xC0:
                return None, pos + 1
            if b == 0xC2:
                return False, pos + 1
            if b == 0xC3:
                return True, pos + 1
            if b == 0xCA:
                return _unpack_single(data, pos + 1)[0], pos + 5
            if b == 0xCB:
                return _unpack_double(data, pos + 1)[0], pos + 9
            return int.from_bytes(data[pos + 1 : pos + 1 + arg], "big", signed=b >= 0xD0), pos + 1 + arg
        if arg < 0:
            n = -arg - 1
            pos += 1
        else:
            n = int.from_bytes(data[pos + 1 : pos + 1 + arg], "big")
            pos += 1 + arg
        if kind == 1:
            try:
                return str(data[pos : pos + n], "utf-8"), pos + n
            except UnicodeDecodeError as exc:
                raise DecodeError(f"invalid UTF-8 in str: {exc.reason}", base + pos + exc.start) from None
        if kind == 2:
            return bytes(data[pos : pos + n]), pos + n
        if kind == 3:
            items = []
            for _ in range(n):
                value, pos = self._item(data, pos, base)
                items.append(value)
            return items, pos
        result = {}
        unique = self._unique_keys
        for i in range(n):
            at = pos
            key, pos = self._item(data, pos, base)
            result[key], pos = self._item(data, pos, base)
            if unique and len(result) <= i:  # the map did not grow: a key it had
                raise duplicate_key(key, i, base + at)
        return result, pos

