"""Kubernetes-style protobuf codec, pure-Python twin of ``_proto.pyx``.

Wire format (described message by message in ``streamcodec.proto``):

object frame
    ``k8s\\x00`` + ``runtime.Unknown`` {1: typeMeta {1: apiVersion, 2: kind},
    2: raw, 3: contentEncoding, 4: contentType}.  ``raw`` is the object as a
    ``google.protobuf.Struct``.  Fields are written the way Kubernetes'
    gogo-generated ``Unknown.MarshalToSizedBuffer`` writes them: typeMeta
    (with both strings) and the two content fields always, even when empty.
event frame
    4-byte big-endian length + ``metav1.WatchEvent`` {1: type, 2: object =
    ``RawExtension`` {1: raw = object frame}} (Kubernetes' length-delimited
    framer; the WatchEvent itself has no magic and no envelope).
list body
    A stream of the same length-prefixed frames: first the list header (an
    object frame whose Struct holds ``metadata`` and, when known, ``count``),
    then one frame per item holding the item's object frame.  Kubernetes'
    own List needs the byte length of all items up front, which a stream
    read from etcd does not know; this framing lets the body be written one
    item at a time within a fixed buffer budget.

The output is canonical protobuf: minimal varints, fields in field-number
order, Struct map entries sorted by the UTF-8 bytes of their keys
(ascending, as Go's and C++'s deterministic serialisers sort them).
"""

from __future__ import annotations

import base64
import struct
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Tuple, Union

from ._framing_py import check_max_values
from .errors import BufferFull, DecodeError, EncodeError, FrameTooLarge, TooManyValues
from .limits import DEFAULT_MAX_FRAME_SIZE, EVENT_TYPES, MAX_DEPTH, MAX_DEPTH_LIMIT
from .pool import PoolBuffer
from .protocol import Event

__all__ = ["ProtoEncoder", "ProtoDecoder"]

BytesLike = Union[bytes, bytearray, memoryview]

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.streamcodec.struct+protobuf"
STREAM_CONTENT_TYPE = "application/vnd.streamcodec.struct+protobuf;stream=watch"
#: A 4-byte length prefix cannot describe a longer frame body.
_MAX_PREFIXED = 0xFFFFFFFF
_INT_LIMIT = 1 << 53
_EVENT_TYPES = frozenset(EVENT_TYPES)
_ENCODED_EVENT_TYPES = {t: t.encode("ascii") for t in EVENT_TYPES}

_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from
_pack_u32be = struct.Struct(">I").pack

# An empty contentEncoding (field 3) and contentType (field 4): Kubernetes
# always writes both.
_UNKNOWN_TAIL = b"\x1a\x00\x22\x00"


def _check_limits(max_frame_size: int, max_depth: int) -> None:
    if type(max_frame_size) is not int or max_frame_size < 1:
        raise ValueError("max_frame_size must be a positive int")
    if type(max_depth) is not int or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be an int in 1..{MAX_DEPTH_LIMIT}")


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _utf8(s: str) -> bytes:
    try:
        # str.encode via the base class: a subclass cannot change the text.
        return str.encode(s, "utf-8")
    except UnicodeEncodeError:
        raise EncodeError("string contains a lone surrogate and is not valid UTF-8") from None


def _bytes_of(o: Any) -> memoryview:
    try:
        view = memoryview(o)
    except (ValueError, TypeError) as exc:
        raise EncodeError(f"cannot read bytes of {type(o).__name__}: {exc}") from None
    if not view.c_contiguous:
        raise EncodeError("memoryview is not C-contiguous")
    return view


class _ObjectEncoder:
    """One encoding run: walks the object and returns Struct bytes."""

    __slots__ = ("max_depth", "path")

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.path: List[Any] = []

    def enter(self, container: Any, depth: int) -> None:
        if depth > self.max_depth:
            if any(p is container for p in self.path):
                raise EncodeError("cycle: a container contains itself")
            raise EncodeError(f"nesting deeper than max_depth ({self.max_depth})")
        self.path.append(container)

    def struct_body(self, d: Dict[Any, Any], depth: int) -> bytes:
        self.enter(d, depth)
        items: List[Tuple[bytes, Any]] = []
        for key, value in dict.items(d):
            if not isinstance(key, str):
                raise EncodeError(f"dict key must be str, not {type(key).__name__}")
            items.append((_utf8(key), value))
        items.sort(key=_first)
        for i in range(1, len(items)):
            if items[i][0] == items[i - 1][0]:
                raise EncodeError("two dict keys have the same text")
        parts = []
        for key_bytes, value in items:
            entry = _len_field(b"\x0a", key_bytes) + _len_field(b"\x12", self.value(value, depth))
            parts.append(_len_field(b"\x0a", entry))
        self.path.pop()
        return b"".join(parts)

    def list_body(self, items: Any, depth: int) -> bytes:
        self.enter(items, depth)
        it = list.__iter__(items) if isinstance(items, list) else tuple.__iter__(items)
        body = b"".join([_len_field(b"\x0a", self.value(item, depth)) for item in it])
        self.path.pop()
        return body

    def value(self, o: Any, depth: int) -> bytes:
        """The body of a google.protobuf.Value holding ``o``."""
        if o is None:
            return b"\x08\x00"
        if o is True:
            return b"\x20\x01"
        if o is False:
            return b"\x20\x00"
        if isinstance(o, str):
            return _len_field(b"\x1a", _utf8(o))
        if isinstance(o, int):
            n = int.__int__(o)
            if not -_INT_LIMIT <= n <= _INT_LIMIT:
                raise EncodeError(f"int {n} is beyond ±2**53: a double cannot carry it exactly")
            return b"\x11" + _pack_double(float(n))
        if isinstance(o, float):
            return b"\x11" + _pack_double(o)
        if isinstance(o, dict):
            return _len_field(b"\x2a", self.struct_body(o, depth + 1))
        if isinstance(o, (list, tuple)):
            return _len_field(b"\x32", self.list_body(o, depth + 1))
        if isinstance(o, (bytes, bytearray, memoryview)):
            return _len_field(b"\x1a", base64.b64encode(_bytes_of(o)))
        raise EncodeError(f"cannot encode object of type {type(o).__name__}")


def _first(item: Tuple[bytes, Any]) -> bytes:
    return item[0]


def _type_meta_string(obj: Dict[Any, Any], key: str) -> bytes:
    value = dict.get(obj, key)
    return _utf8(value) if isinstance(value, str) else b""


def _object_frame(obj: Any, max_depth: int, api_version: Optional[bytes] = None, kind: Optional[bytes] = None) -> bytes:
    if not isinstance(obj, dict):
        raise EncodeError(
            f"a protobuf object frame carries a google.protobuf.Struct: the object must be a dict, not {type(obj).__name__}"
        )
    try:
        raw = _ObjectEncoder(max_depth).struct_body(obj, 1)
    except RecursionError:
        raise EncodeError("nesting too deep for the pure-Python encoder") from None
    if api_version is None:
        api_version = _type_meta_string(obj, "apiVersion")
    if kind is None:
        kind = _type_meta_string(obj, "kind")
    type_meta = _len_field(b"\x0a", api_version) + _len_field(b"\x12", kind)
    return MAGIC + _len_field(b"\x0a", type_meta) + _len_field(b"\x12", raw) + _UNKNOWN_TAIL


def _raw_frame(raw: Any) -> memoryview:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise EncodeError(f"raw must be bytes-like, not {type(raw).__name__}")
    view = _bytes_of(raw).cast("B") if isinstance(raw, memoryview) else memoryview(raw)
    if bytes(view[:4]) != MAGIC:
        raise EncodeError("raw frame does not start with the k8s\\x00 magic")
    return view


def _event_type(type: Any) -> bytes:
    encoded = _ENCODED_EVENT_TYPES.get(type) if isinstance(type, str) else None
    if encoded is None:
        raise EncodeError(f"event type must be one of {', '.join(EVENT_TYPES)}, not {type!r}")
    return encoded


def _event_frame(type_bytes: bytes, object_frame: Any) -> bytes:
    raw_extension = _len_field(b"\x0a", bytes(object_frame))
    message = _len_field(b"\x0a", type_bytes) + _len_field(b"\x12", raw_extension)
    return _pack_u32be(len(message)) + message


class ProtoEncoder:
    """Encodes objects, watch events and list bodies in Kubernetes' protobuf framing.

    ``encode`` gives an object frame: ``k8s\\x00`` + ``runtime.Unknown`` whose
    ``raw`` is the object as a ``google.protobuf.Struct`` (the object must be
    a dict; numbers become doubles, bytes become base64 strings).  Event
    frames and list bodies use Kubernetes' length-delimited framing
    (4-byte big-endian length + message); see ``streamcodec.proto``.
    """

    content_type: ClassVar[str] = CONTENT_TYPE
    stream_content_type: ClassVar[str] = STREAM_CONTENT_TYPE

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, max_depth: int = MAX_DEPTH) -> None:
        _check_limits(max_frame_size, max_depth)
        self._max_frame_size = max_frame_size
        self._max_depth = max_depth

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @property
    def max_depth(self) -> int:
        return self._max_depth

    # -- helpers -----------------------------------------------------------
    def _checked(self, frame: bytes, prefixed: bool) -> bytes:
        if len(frame) > self._max_frame_size or (prefixed and len(frame) - 4 > _MAX_PREFIXED):
            raise FrameTooLarge(
                f"frame of {len(frame)} bytes exceeds max_frame_size ({self._max_frame_size})",
                self._max_frame_size,
            )
        return frame

    def _put(self, frame: bytes, buf: PoolBuffer) -> int:
        data = buf.data
        start = buf.length
        if type(data) is not bytearray or type(start) is not int or not 0 <= start <= len(data):
            raise ValueError("buf is not a valid PoolBuffer (data must be a bytearray, 0 <= length <= capacity)")
        n = len(frame)
        if n > len(data) - start:
            raise BufferFull(f"frame of {n} bytes does not fit the {len(data) - start} bytes left in the buffer")
        data[start : start + n] = frame  # same length: never resizes
        buf.length = start + n
        return n

    # -- object frames -----------------------------------------------------
    def encode(self, obj: Any) -> bytes:
        """One object frame: ``k8s\\x00`` + runtime.Unknown holding ``obj`` as a Struct."""
        return self._checked(_object_frame(obj, self._max_depth), False)

    def encode_into(self, obj: Any, buf: PoolBuffer) -> int:
        """Append ``encode(obj)`` to ``buf``; returns its size."""
        return self._put(self.encode(obj), buf)

    # -- watch events --------------------------------------------------------
    def encode_event(self, type: str, obj: Any) -> bytes:
        """One event frame: length + WatchEvent{type, RawExtension{object frame}}."""
        type_bytes = _event_type(type)
        return self._checked(_event_frame(type_bytes, _object_frame(obj, self._max_depth)), True)

    def encode_event_into(self, type: str, obj: Any, buf: PoolBuffer) -> int:
        return self._put(self.encode_event(type, obj), buf)

    def encode_raw_event(self, type: str, raw: BytesLike) -> bytes:
        """Event frame embedding ``raw`` (an earlier object frame) verbatim."""
        type_bytes = _event_type(type)
        return self._checked(_event_frame(type_bytes, _raw_frame(raw)), True)

    def encode_raw_event_into(self, type: str, raw: BytesLike, buf: PoolBuffer) -> int:
        return self._put(self.encode_raw_event(type, raw), buf)

    # -- list bodies -------------------------------------------------------
    def encode_list_start_into(
        self,
        buf: PoolBuffer,
        *,
        kind: str,
        api_version: str,
        metadata: Dict[str, Any],
        count: Optional[int] = None,
    ) -> int:
        """Frame holding the list header: Unknown{typeMeta, Struct{metadata[, count]}}."""
        if not isinstance(kind, str) or not isinstance(api_version, str):
            raise EncodeError("kind and api_version must be str")
        header: Dict[str, Any] = {"metadata": metadata}
        if count is not None:
            if type(count) is not int or count < 0:
                raise EncodeError(f"count must be a non-negative int or None, not {count!r}")
            header["count"] = count
        frame = _object_frame(header, self._max_depth, _utf8(api_version), _utf8(kind))
        return self._put(self._checked(_pack_u32be(len(frame)) + frame, True), buf)

    def encode_list_item_into(self, obj: Any, buf: PoolBuffer, index: int) -> int:
        """Frame holding one item's object frame (``index`` is not needed: no separators)."""
        frame = _object_frame(obj, self._max_depth)
        return self._put(self._checked(_pack_u32be(len(frame)) + frame, True), buf)

    def encode_raw_list_item_into(self, raw: BytesLike, buf: PoolBuffer, index: int) -> int:
        """Frame holding ``raw`` (an earlier object frame) verbatim."""
        view = _raw_frame(raw)
        return self._put(self._checked(_pack_u32be(len(view)) + bytes(view), True), buf)

    def encode_list_end_into(self, buf: PoolBuffer, count: int) -> int:
        """Writes nothing: the stream of frames simply ends."""
        return 0


# ---------------------------------------------------------------------------
# Decoder


class _Parser:
    """Parses one object frame out of ``data``; offsets reported are ``base + index``.

    Counts the values it builds against ``max_values``: the frame's Struct up front, then each
    Struct key where its entry starts and each Value (an entry's value, a list element) where
    its body starts, before building it.
    """

    __slots__ = ("data", "base", "max_depth", "max_values", "values_left")

    def __init__(self, data: bytes, base: int, max_depth: int, max_values: int) -> None:
        self.data = data
        self.base = base
        self.max_depth = max_depth
        self.max_values = max_values
        self.values_left = max_values - 1  # the frame's Struct: max_values >= 1 always holds it

    def error(self, message: str, pos: int) -> DecodeError:
        return DecodeError(message, self.base + pos)

    def too_many(self, pos: int) -> TooManyValues:
        return TooManyValues(self.max_values, self.base + pos)

    def varint(self, pos: int, end: int) -> Tuple[int, int]:
        data = self.data
        start = pos
        result = 0
        shift = 0
        while True:
            if pos >= end:
                raise self.error("truncated varint", pos)
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift >= 70:
                raise self.error("varint longer than 10 bytes", start)
        if result >> 64:
            raise self.error("varint overflows 64 bits", start)
        return result, pos

    def tag(self, pos: int, end: int) -> Tuple[int, int, int]:
        key, after = self.varint(pos, end)
        field = key >> 3
        if field == 0:
            raise self.error("invalid field number 0", pos)
        return field, key & 7, after

    def length(self, pos: int, end: int) -> Tuple[int, int]:
        """Reads a length prefix at ``pos``; returns (start, stop) of the payload."""
        n, after = self.varint(pos, end)
        if n > end - after:
            raise self.error(f"length {n} runs past the end of its message", pos)
        return after, after + n

    def skip(self, wire_type: int, tag_pos: int, pos: int, end: int) -> int:
        if wire_type == 0:
            return self.varint(pos, end)[1]
        if wire_type == 2:
            return self.length(pos, end)[1]
        if wire_type == 1 or wire_type == 5:
            width = 8 if wire_type == 1 else 4
            if end - pos < width:
                raise self.error("truncated fixed-width field", end)
            return pos + width
        raise self.error(f"unsupported wire type {wire_type}", tag_pos)

    def expect(self, wire_type: int, expected: int, field: int, message: str, tag_pos: int) -> None:
        if wire_type != expected:
            raise self.error(f"field {field} of {message} has wire type {wire_type}, expected {expected}", tag_pos)

    def text(self, start: int, stop: int) -> str:
        try:
            return self.data[start:stop].decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("string is not valid UTF-8", start) from None

    # -- messages --------------------------------------------------------
    def object_frame(self, start: int, end: int) -> Any:
        if end - start < 4:
            raise self.error("object frame is shorter than the k8s\\x00 magic", end)
        if self.data[start : start + 4] != MAGIC:
            raise self.error("object frame does not start with the k8s\\x00 magic", start)
        pos = start + 4
        raw: Optional[Tuple[int, int]] = None
        while pos < end:
            tag_pos = pos
            field, wt, pos = self.tag(pos, end)
            if 1 <= field <= 4:
                self.expect(wt, 2, field, "runtime.Unknown", tag_pos)
                s, pos = self.length(pos, end)
                if field == 1:
                    self.type_meta(s, pos)
                elif field == 2:
                    raw = (s, pos)
                elif pos != s:
                    name = "contentEncoding" if field == 3 else "contentType"
                    raise self.error(f"unsupported {name} {self.text(s, pos)!r} (only empty is supported)", tag_pos)
            else:
                pos = self.skip(wt, tag_pos, pos, end)
        if raw is None:
            raise self.error("runtime.Unknown has no raw field", end)
        return self.struct(raw[0], raw[1], 1)

    def type_meta(self, pos: int, end: int) -> None:
        while pos < end:
            tag_pos = pos
            field, wt, pos = self.tag(pos, end)
            if field == 1 or field == 2:
                self.expect(wt, 2, field, "runtime.TypeMeta", tag_pos)
                s, pos = self.length(pos, end)
                self.text(s, pos)
            else:
                pos = self.skip(wt, tag_pos, pos, end)

    def struct(self, pos: int, end: int, depth: int) -> Dict[str, Any]:
        result: Dict[str, Any] = {}
        while pos < end:
            tag_pos = pos
            field, wt, pos = self.tag(pos, end)
            if field != 1:
                pos = self.skip(wt, tag_pos, pos, end)
                continue
            self.expect(wt, 2, 1, "google.protobuf.Struct", tag_pos)
            entry_start, pos = self.length(pos, end)
            self.values_left -= 1  # the key; value() counts the value
            if self.values_left < 0:
                raise self.too_many(entry_start)
            key = ""
            value_range: Optional[Tuple[int, int]] = None
            p = entry_start
            while p < pos:
                entry_tag = p
                f, w, p = self.tag(p, pos)
                if f == 1:
                    self.expect(w, 2, 1, "a Struct map entry", entry_tag)
                    s, p = self.length(p, pos)
                    key = self.text(s, p)
                elif f == 2:
                    self.expect(w, 2, 2, "a Struct map entry", entry_tag)
                    value_range = self.length(p, pos)
                    p = value_range[1]
                else:
                    p = self.skip(w, entry_tag, p, pos)
            if value_range is None:
                raise self.error("Struct map entry has no value", entry_start)
            result[key] = self.value(value_range[0], value_range[1], depth)
        return result

    def list(self, pos: int, end: int, depth: int) -> List[Any]:
        result: List[Any] = []
        while pos < end:
            tag_pos = pos
            field, wt, pos = self.tag(pos, end)
            if field != 1:
                pos = self.skip(wt, tag_pos, pos, end)
                continue
            self.expect(wt, 2, 1, "google.protobuf.ListValue", tag_pos)
            s, pos = self.length(pos, end)
            result.append(self.value(s, pos, depth))
        return result

    def value(self, pos: int, end: int, depth: int) -> Any:
        start = pos
        self.values_left -= 1
        if self.values_left < 0:
            raise self.too_many(start)
        found = False
        result: Any = None
        while pos < end:
            tag_pos = pos
            field, wt, pos = self.tag(pos, end)
            if field == 1 or field == 4:
                self.expect(wt, 0, field, "google.protobuf.Value", tag_pos)
                n, pos = self.varint(pos, end)
                result = None if field == 1 else n != 0
            elif field == 2:
                self.expect(wt, 1, 2, "google.protobuf.Value", tag_pos)
                if end - pos < 8:
                    raise self.error("truncated fixed-width field", end)
                result = _unpack_double(self.data, pos)[0]
                pos += 8
            elif 3 <= field <= 6:
                self.expect(wt, 2, field, "google.protobuf.Value", tag_pos)
                s, pos = self.length(pos, end)
                if field == 3:
                    result = self.text(s, pos)
                else:
                    if depth + 1 > self.max_depth:
                        raise self.error(f"nesting deeper than max_depth ({self.max_depth})", tag_pos)
                    result = self.struct(s, pos, depth + 1) if field == 5 else self.list(s, pos, depth + 1)
            else:
                pos = self.skip(wt, tag_pos, pos, end)
                continue
            found = True
        if not found:
            raise self.error("google.protobuf.Value has no kind set", start)
        return result

    def watch_event(self, pos: int, end: int) -> Event:
        start = pos
        type_: Optional[str] = None
        obj_range: Optional[Tuple[int, int]] = None
        while pos < end:
            tag_pos = pos
            field, wt, pos = self.tag(pos, end)
            if field == 1:
                self.expect(wt, 2, 1, "WatchEvent", tag_pos)
                s, pos = self.length(pos, end)
                type_ = self.text(s, pos)
                if type_ not in _EVENT_TYPES:
                    raise self.error(f"unknown watch event type {type_!r}", tag_pos)
            elif field == 2:
                self.expect(wt, 2, 2, "WatchEvent", tag_pos)
                s, pos = self.length(pos, end)
                p = s
                while p < pos:
                    inner_tag = p
                    f, w, p = self.tag(p, pos)
                    if f == 1:
                        self.expect(w, 2, 1, "RawExtension", inner_tag)
                        obj_range = self.length(p, pos)
                        p = obj_range[1]
                    else:
                        p = self.skip(w, inner_tag, p, pos)
            else:
                pos = self.skip(wt, tag_pos, pos, end)
        if type_ is None:
            raise self.error("WatchEvent has no type", start)
        if obj_range is None:
            raise self.error("WatchEvent has no object", start)
        return Event(type_, self.object_frame(obj_range[0], obj_range[1]))


class ProtoDecoder:
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

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_depth: int = MAX_DEPTH,
        max_values: Optional[int] = None,
    ) -> None:
        _check_limits(max_frame_size, max_depth)
        self._max_frame_size = max_frame_size
        self._max_depth = max_depth
        self._values_limit = check_max_values(max_values)
        self._max_values = max_values
        self._buf = bytearray()
        self._pos = 0  # start of unparsed data in _buf
        self._base = 0  # stream offset of _buf[0]
        self._error: Optional[DecodeError] = None
        self._closed = False

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @property
    def max_depth(self) -> int:
        return self._max_depth

    @property
    def max_values(self) -> Optional[int]:
        return self._max_values

    def decode(self, frame: BytesLike) -> Any:
        """Parse one object frame (``k8s\\x00`` + Unknown + Struct) into a dict."""
        view = memoryview(frame)  # like the compiled decoder: any C-contiguous buffer, nothing else
        if not view.c_contiguous:
            raise BufferError("frame is not a C-contiguous buffer")
        data = view.tobytes()
        if len(data) > self._max_frame_size:
            raise DecodeError(f"frame of {len(data)} bytes exceeds max_frame_size ({self._max_frame_size})", 0)
        try:
            return _Parser(data, 0, self._max_depth, self._values_limit).object_frame(0, len(data))
        except RecursionError:
            raise DecodeError("nesting too deep for the pure-Python decoder", 0) from None

    def _raise_stored(self) -> None:
        assert self._error is not None
        raise self._error.with_traceback(None)

    def _fail(self, error: DecodeError) -> None:
        self._error = error
        raise error

    def _declared(self) -> Optional[int]:
        """Body length of the frame at _pos if its header is complete (checked against the limit)."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 4:
            return None
        n = int.from_bytes(buf[pos : pos + 4], "big")
        if 4 + n > self._max_frame_size:
            self._fail(
                DecodeError(
                    f"frame declares {4 + n} bytes, over max_frame_size ({self._max_frame_size})",
                    self._base + pos,
                )
            )
        return n

    def feed(self, data: BytesLike) -> None:
        """Append stream bytes; raises at once if the next frame declares a length over the limit."""
        if self._error is not None:
            self._raise_stored()
        if self._closed:
            self._fail(DecodeError("data fed after close()", self._base + len(self._buf)))
        self._buf += data
        self._declared()

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self._error is not None:
            self._raise_stored()
        n = self._declared()
        pos = self._pos
        if n is None or len(self._buf) - pos - 4 < n:
            raise StopIteration
        start = pos + 4
        body = bytes(self._buf[start : start + n])
        parser = _Parser(body, self._base + start, self._max_depth, self._values_limit)
        try:
            event = parser.watch_event(0, n)
        except DecodeError as exc:
            self._fail(exc)
        except RecursionError:
            self._fail(DecodeError("nesting too deep for the pure-Python decoder", self._base + start))
        self._pos = start + n
        if self._pos == len(self._buf):
            self._base += self._pos
            self._buf = bytearray()
            self._pos = 0
        elif self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0
        return event

    def close(self) -> None:
        """End of stream: raises DecodeError if a partial frame is left over."""
        if self._error is not None:
            self._raise_stored()
        self._closed = True
        buf = self._buf
        pos = self._pos
        while pos < len(buf):
            if len(buf) - pos < 4:
                self._fail(DecodeError("stream ends inside a frame header", self._base + pos))
            n = int.from_bytes(buf[pos : pos + 4], "big")
            if 4 + n > self._max_frame_size:
                self._fail(
                    DecodeError(
                        f"frame declares {4 + n} bytes, over max_frame_size ({self._max_frame_size})",
                        self._base + pos,
                    )
                )
            if len(buf) - pos - 4 < n:
                self._fail(DecodeError("stream ends inside a frame", self._base + pos))
            pos += 4 + n
