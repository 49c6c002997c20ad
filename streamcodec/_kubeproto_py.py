"""Kubernetes' typed protobuf from JSON, pure-Python twin of ``_kubeproto.pyx``.

What kube-apiserver sends as ``application/vnd.kubernetes.protobuf``:

object frame
    ``k8s\\x00`` + ``runtime.Unknown`` {1: typeMeta {1: apiVersion, 2: kind}, 2: raw, 3: "", 4: ""}
    where ``raw`` is the kind's generated message (``Secret``, ``Pod``, ...), not a Struct.
event frame
    4-byte big-endian length + ``metav1.WatchEvent`` {1: type, 2: ``RawExtension`` {1: object frame}}.
list body
    One object frame of the ``*List`` kind: {1: ``ListMeta``, 2: item messages (no envelope,
    no kind/apiVersion)}.  Its byte length precedes the items, so the caller gives the items'
    total size (``items_size``, from :meth:`KindEncoder.list_item_size`) at the start.

The message comes from the stored JSON (``encode_stored*``: the bytes etcd holds, with
``metadata.resourceVersion`` set to the given revision) or from a dict (bookmarks, Status).
Fields are written in the JSON's order; JSON keys the message does not have are dropped (as
kube-apiserver's decoder drops them), ``null`` means absent.  A value the field cannot hold (text
for an int, 1.5 for an int32, an int beyond the field's range, bad base64 or RFC 3339) is an
:class:`EncodeError`: such an object was never valid for its kind.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
import struct
import sys
from typing import Any, Callable, ClassVar, Dict, List, Optional, Protocol, Tuple, Union

from ._framing_py import check_max_values
from .errors import BufferFull, DecodeError, EncodeError, FrameTooLarge, TooManyValues
from .kube_schema import DEFAULT_SCHEMA, Field, KubeSchema, Message
from .limits import DEFAULT_MAX_FRAME_SIZE, EVENT_TYPES
from .pool import PoolBuffer

__all__ = ["KubeProtoEncoder", "KindEncoder", "KubeProtoDecoder"]

BytesLike = Union[bytes, bytearray, memoryview]

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
STREAM_CONTENT_TYPE = "application/vnd.kubernetes.protobuf;stream=watch"
#: An empty contentEncoding (3) and contentType (4), which Kubernetes always writes.
UNKNOWN_TAIL = b"\x1a\x00\x22\x00"
LIST_META = "k8s.io.apimachinery.pkg.apis.meta.v1.ListMeta"
OBJECT_META = "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_MAX_PREFIXED = 0xFFFFFFFF
_INT32 = (-(1 << 31), (1 << 31) - 1)
_INT64 = (-(1 << 63), (1 << 63) - 1)
_EVENT_TYPES = frozenset(EVENT_TYPES)
_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d\d):(\d\d))\Z"
)
_EPOCH = datetime.date(1970, 1, 1).toordinal()


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # negative ints: 10-byte two's complement, as Go writes them
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _utf8(s: Any, where: str) -> bytes:
    if not isinstance(s, str):
        raise EncodeError(f"{where}: expected a string, not {_json_type(s)}")
    try:
        return str.encode(s, "utf-8")
    except UnicodeEncodeError:
        raise EncodeError(f"{where}: string contains a lone surrogate and is not valid UTF-8") from None


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "an array"
    return type(v).__name__


def _int(v: Any, bounds: Tuple[int, int], where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise EncodeError(f"{where}: expected an integer, not {_json_type(v)}")
    n = int(v)
    if not bounds[0] <= n <= bounds[1]:
        raise EncodeError(f"{where}: {n} is out of range for the field")
    return n


def parse_rfc3339(text: Any, where: str) -> Tuple[int, int]:
    """(seconds since the epoch, nanoseconds) of an RFC 3339 time, as Go's time.Parse reads it."""
    m = _RFC3339.match(text) if isinstance(text, str) else None
    if m is None:
        raise EncodeError(f"{where}: expected an RFC 3339 time, not {text!r}"[:200])
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    if not (1 <= month <= 12 and hour < 24 and minute < 60 and second < 60):
        raise EncodeError(f"{where}: {text!r} is not a valid time")
    try:
        days = datetime.date(year, month, day).toordinal() - _EPOCH
    except ValueError:
        raise EncodeError(f"{where}: {text!r} is not a valid date") from None
    seconds = days * 86400 + hour * 3600 + minute * 60 + second
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        if int(m.group(10)) > 23 or int(m.group(11)) > 59:
            raise EncodeError(f"{where}: {text!r} has an invalid zone offset")
        seconds -= offset if m.group(9) == "+" else -offset
    fraction = m.group(7) or ""
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return seconds, nanos


_DURATION_UNITS = {"ns": 1, "us": 1000, "µs": 1000, "μs": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: Any, where: str) -> int:
    """Nanoseconds of a Go duration string ("1h2m3.5s", "-300ms", "0")."""
    if not isinstance(text, str) or not text:
        raise EncodeError(f"{where}: expected a duration string, not {_json_type(text)}")
    sign, rest = (-1, text[1:]) if text[0] == "-" else (1, text[1:] if text[0] == "+" else text)
    if rest == "0":
        return 0
    total, pos = 0, 0
    while pos < len(rest):
        m = _DURATION_PART.match(rest, pos)
        if m is None:
            raise EncodeError(f"{where}: invalid duration {text!r}")
        whole, _, frac = m.group(1).partition(".")
        unit = _DURATION_UNITS[m.group(2)]
        total += int(whole or "0") * unit + (int(frac) * unit // 10 ** len(frac) if frac else 0)
        pos = m.end()
    if not pos:
        raise EncodeError(f"{where}: invalid duration {text!r}")
    total *= sign
    if not _INT64[0] <= total <= _INT64[1]:
        raise EncodeError(f"{where}: duration {text!r} out of range")
    return total


class _Transcoder:
    """Turns decoded JSON values into message bodies by the schema."""

    __slots__ = ("schema",)

    def __init__(self, schema: KubeSchema) -> None:
        self.schema = schema

    def message(self, name: str, obj: Any, where: str) -> bytes:
        if not isinstance(obj, dict):
            raise EncodeError(f"{where}: expected an object, not {_json_type(obj)}")
        table = self.schema.message(name).by_json
        parts: List[bytes] = []
        for key, value in obj.items():
            f = table.get(key)
            if f is None or value is None:
                continue
            encoded = self.field(f, value, f"{where}.{key}")
            for number in reversed(f.path):
                encoded = _len_field(number, encoded)
            parts.append(encoded)
        return b"".join(parts)

    def field(self, f: Field, value: Any, where: str) -> bytes:
        if f.shape == "ONE":
            return self.single(f, f.number, value, where)
        if f.shape == "REPEATED":
            if not isinstance(value, list):
                raise EncodeError(f"{where}: expected an array, not {_json_type(value)}")
            return b"".join(self.single(f, f.number, item, f"{where}[{i}]") for i, item in enumerate(value))
        if not isinstance(value, dict):
            raise EncodeError(f"{where}: expected an object, not {_json_type(value)}")
        out = []
        for key, item in value.items():
            entry = _len_field(1, _utf8(key, where))
            if item is not None:
                entry += self.single(f, 2, item, f"{where}[{key!r}]")
            out.append(_len_field(f.number, entry))
        return b"".join(out)

    def single(self, f: Field, number: int, value: Any, where: str) -> bytes:
        kind = f.kind
        if value is None:  # inside an array or map: the zero value
            value = {"STRING": "", "BYTES": "", "BOOL": False, "INT32": 0, "INT64": 0, "DOUBLE": 0.0}.get(kind, {})
            if kind in ("TIME", "QUANTITY", "INTORSTRING", "RAWJSON", "DURATION"):
                return _len_field(number, b"")
        if kind == "STRING":
            return _len_field(number, _utf8(value, where))
        if kind == "MESSAGE":
            assert f.message is not None
            return _len_field(number, self.message(f.message, value, where))
        if kind == "BYTES":
            text = _utf8(value, where)
            try:
                return _len_field(number, base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise EncodeError(f"{where}: not valid base64") from None
        if kind == "BOOL":
            if not isinstance(value, bool):
                raise EncodeError(f"{where}: expected a boolean, not {_json_type(value)}")
            return _varint(number << 3) + (b"\x01" if value else b"\x00")
        if kind == "INT32":
            return _varint(number << 3) + _varint(_int(value, _INT32, where))
        if kind == "INT64":
            return _varint(number << 3) + _varint(_int(value, _INT64, where))
        if kind == "DOUBLE":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise EncodeError(f"{where}: expected a number, not {_json_type(value)}")
            d = float(value)
            if not math.isfinite(d):
                raise EncodeError(f"{where}: {d} is not a finite number")
            return _varint(number << 3 | 1) + _pack_double(d)
        if kind == "TIME":
            seconds, nanos = parse_rfc3339(value, where)
            body = _varint(1 << 3) + _varint(seconds) + (_varint(2 << 3) + _varint(nanos) if nanos else b"")
            return _len_field(number, body)
        if kind == "QUANTITY":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = json.dumps(value)
            return _len_field(number, _len_field(1, _utf8(value, where)))
        if kind == "INTORSTRING":
            if isinstance(value, str):
                return _len_field(number, b"\x08\x01" + _len_field(3, _utf8(value, where)))
            n = _int(value, _INT32, where)
            return _len_field(number, b"\x08\x00\x10" + _varint(n))
        if kind == "RAWJSON":
            raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            return _len_field(number, _len_field(1, _utf8(raw, where)))
        if kind == "DURATION":
            return _len_field(number, _varint(1 << 3) + _varint(parse_duration(value, where)))
        raise AssertionError(kind)


def _append(buf: PoolBuffer, frame: bytes, max_frame_size: int) -> int:
    n = len(frame)
    if n > max_frame_size:
        raise FrameTooLarge(f"frame of {n} bytes exceeds max_frame_size {max_frame_size}", max_frame_size)
    if buf.length + n > buf.capacity:
        raise BufferFull(f"frame of {n} bytes does not fit the {buf.capacity - buf.length} bytes left in the buffer")
    buf.data[buf.length : buf.length + n] = frame
    buf.length += n
    return n


def _loads(stored: BytesLike) -> Any:
    try:
        return json.loads(bytes(stored))
    except (ValueError, UnicodeDecodeError) as exc:
        raise EncodeError(f"stored value is not valid JSON: {exc}") from None


class MessageReader(Protocol):
    """What builds one frame's message: the twin's :class:`_FrameReader`, or the compiled module's."""

    def count(self, n: int, offset: int) -> None: ...

    def message(self, name: str, start: int, end: int, depth: int) -> Dict[str, Any]: ...


class KubeProtoDecoder:
    """Kubernetes' typed protobuf back to JSON-shaped objects (request bodies of client-go's default writes).

    ``decode(frame)`` takes an object frame (``k8s\x00`` + ``runtime.Unknown``) of a kind the schema
    knows and returns the dict its JSON form would decode to: ``kind``/``apiVersion`` from the
    envelope, ``[]byte`` as base64 text, times as RFC 3339, quantities as text.  Fields the message
    does not declare are refused (:class:`~streamcodec.errors.DecodeError`): a body is checked, not
    guessed at.  The compiled module's subclass builds the message in C (the informer decodes every
    object of a collection through it); this twin is written for clarity, and both give the same
    objects and raise the same errors at the same offsets.

    ``max_values`` (None: no limit) bounds the values of the returned dict, counted as the JSON
    data model has them: the dict 1, each of its keys and values 1 (``kind`` and ``apiVersion``
    included), each list element 1, recursively, a ``fieldsV1``'s JSON too.  Over it,
    :class:`~streamcodec.errors.TooManyValues` is raised at the offset of the field that goes over,
    before its value is built: a body of tiny messages (an empty container of a Pod is 2 bytes on
    the wire and a 64-byte dict decoded) would otherwise decode into far more memory than
    ``max_frame_size`` suggests.  Values are counted as built, so a field repeated on the wire
    (the last one wins) counts each time.
    """

    def __init__(
        self,
        schema: Optional[KubeSchema] = None,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_values: Optional[int] = None,
    ) -> None:
        self.schema = schema if schema is not None else DEFAULT_SCHEMA
        self.max_frame_size = max_frame_size
        self._values_limit = check_max_values(max_values)
        self._max_values = max_values

    @property
    def max_values(self) -> Optional[int]:
        return self._max_values

    def decode(self, frame: BytesLike) -> Dict[str, Any]:
        data = _frame_bytes(frame)
        if len(data) > self.max_frame_size:
            raise DecodeError(f"frame of {len(data)} bytes exceeds max_frame_size {self.max_frame_size}", 0)
        if data[:4] != MAGIC:
            raise DecodeError("not Kubernetes protobuf: the frame does not start with k8s\\x00", 0)
        unknown = _fields(data, 4, len(data))
        type_meta = _fields(data, *unknown.get(1, [(0, 0, 2)])[-1][:2]) if 1 in unknown else {}
        api_version = _text(data, type_meta.get(1))
        kind = _text(data, type_meta.get(2))
        if unknown.get(3) and _text(data, unknown.get(3)):
            raise DecodeError("runtime.Unknown with a contentEncoding is not supported", 0)
        name = self.schema.message_name(api_version, kind)
        if name is None:
            raise DecodeError(f"no protobuf message is registered for {api_version}/{kind}", 0)
        raw = unknown.get(2, [(4, 4, 2)])[-1]
        reader = self._reader(data)
        reader.count(5, 0)  # the object, and the kind and apiVersion entries it is given below
        obj = reader.message(name, raw[0], raw[1], 0)
        obj["kind"], obj["apiVersion"] = kind, api_version
        return obj

    def decode_message(self, data: BytesLike, api_version: str, kind: str) -> Dict[str, Any]:
        """The object of one ``kind`` message without an envelope (a List's item), read in place as
        :meth:`decode` reads a frame: the dict its JSON form has, which, like a List's items in JSON,
        carries no ``kind`` or ``apiVersion``."""
        data = _frame_bytes(data)
        if len(data) > self.max_frame_size:
            raise DecodeError(f"message of {len(data)} bytes exceeds max_frame_size {self.max_frame_size}", 0)
        name = self.schema.message_name(api_version, kind)
        if name is None:
            raise DecodeError(f"no protobuf message is registered for {api_version}/{kind}", 0)
        reader = self._reader(data)
        reader.count(1, 0)
        return reader.message(name, 0, len(data), 0)

    def _reader(self, data: "bytes | memoryview") -> "MessageReader":
        """What builds the message of ``data`` (the compiled module returns its own)."""
        return _FrameReader(self.schema, data, self._values_limit)


def _frame_bytes(frame: BytesLike) -> "bytes | memoryview":
    """The bytes a frame is read from: bytes as given, a contiguous memoryview read in place as bytes (no
    1 MiB copy: the informer passes each watch event's object as a view of what it received; the buffer
    must not change while it is decoded), anything else copied."""
    if type(frame) is bytes:
        return frame
    if isinstance(frame, memoryview) and frame.c_contiguous:
        return frame.cast("B")
    return bytes(frame)


class _FrameReader:
    """Builds the JSON-shaped dict of one frame's message, counting its values against ``max_values``."""

    __slots__ = ("schema", "data", "max_values", "values_left")

    def __init__(self, schema: KubeSchema, data: BytesLike, max_values: int) -> None:
        self.schema = schema
        self.data = data
        self.max_values = max_values
        self.values_left = max_values

    def count(self, n: int, offset: int) -> None:
        """Counts ``n`` values about to be built for the field at ``offset``."""
        self.values_left -= n
        if self.values_left < 0:
            raise TooManyValues(self.max_values, offset)

    def message(self, name: str, start: int, end: int, depth: int) -> Dict[str, Any]:
        if depth > 100:
            raise DecodeError("messages nested too deep", start)
        out: Dict[str, Any] = {}
        self.fill(self.schema.message(name), (), start, end, out, depth)
        return out

    def fill(self, message: Message, path: Tuple[int, ...], start: int, end: int, out: Dict[str, Any], depth: int) -> None:
        data = self.data
        try:
            # each field is at least one value: index no more of them than the budget has left
            fields = _fields(data, start, end, self.values_left)
        except _TooManyFields as exc:
            raise TooManyValues(self.max_values, exc.offset) from None
        for number, items in fields.items():
            field_path = path + (number,)
            for s, e, wire in items:
                f = message.by_number.get(field_path)
                if f is None and wire == 2 and field_path in message.inlined:
                    self.fill(message, field_path, s, e, out, depth)  # an inlined message: its fields are the parent's
                    continue
                if f is None:
                    raise DecodeError(f"{message.name}: field {number} is not in the message", s)
                if f.shape == "MAP":  # an entry message: key = 1, value = 2
                    entries = out.get(f.json_name)
                    if entries is None:
                        self.count(2, s)  # the map's key in ``out``, and the map
                        entries = out[f.json_name] = {}
                    self.count(2, s)
                    entry = _fields(data, s, e)
                    key = _text(data, entry.get(1))
                    v = entry.get(2)
                    entries[key] = self.value(f, v[-1][0], v[-1][1], v[-1][2], depth) if v else None
                elif f.shape == "REPEATED":
                    elements = out.get(f.json_name)
                    if elements is None:
                        self.count(2, s)  # the list's key in ``out``, and the list
                        elements = out[f.json_name] = []
                    self.count(1, s)
                    elements.append(self.value(f, s, e, wire, depth))
                elif f.omit_empty:  # a scalar: its zero is what Go's JSON leaves out (the last one given wins)
                    value = self.value(f, s, e, wire, depth)
                    if value:
                        self.count(2, s)
                        out[f.json_name] = value
                    else:
                        out.pop(f.json_name, None)
                else:
                    self.count(2, s)
                    out[f.json_name] = self.value(f, s, e, wire, depth)

    def value(self, f: Field, s: int, e: int, wire: int, depth: int) -> Any:
        data = self.data
        kind = f.kind
        if kind in ("BOOL", "INT32", "INT64"):
            if wire != 0:
                raise DecodeError(f"{f.json_name}: wrong wire type", s)
            n = _read_varint(data, s, e)[0]
            return bool(n) if kind == "BOOL" else _signed(n)
        if kind == "DOUBLE":
            if wire != 1:
                raise DecodeError(f"{f.json_name}: wrong wire type", s)
            return _unpack_double(data, s)[0]
        if wire != 2:
            raise DecodeError(f"{f.json_name}: wrong wire type", s)
        if kind == "STRING":
            return _text(data, [(s, e, 2)])
        if kind == "BYTES":
            return base64.b64encode(memoryview(data)[s:e]).decode("ascii")  # a view: no 1 MiB slice copy
        if kind == "MESSAGE":
            assert f.message is not None
            return self.message(f.message, s, e, depth + 1)
        inner = _fields(data, s, e)
        if kind == "TIME":  # Go's zero time (written as no bytes) is JSON's null
            seconds, nanos = _signed(_int_of(data, inner.get(1))), _int_of(data, inner.get(2))
            return None if seconds == _ZERO_TIME_SECONDS and not nanos or s == e else _time_text(seconds, nanos, s)
        if kind == "QUANTITY":
            return _text(data, inner.get(1))
        if kind == "INTORSTRING":
            if _int_of(data, inner.get(1)) == 1:
                return _text(data, inner.get(3))
            return _signed(_int_of(data, inner.get(2)))
        if kind == "RAWJSON":
            raw = inner.get(1)
            return _raw_json(self, data[raw[-1][0]:raw[-1][1]], raw[-1][0]) if raw else None
        if kind == "DURATION":
            return _duration_text(_signed(_int_of(data, inner.get(1))))
        raise AssertionError(kind)


def _signed(n: int) -> int:
    """A varint's 64 bits as Go's int64 (negative numbers are written as 10-byte two's complement)."""
    return n - (1 << 64) if n >= 1 << 63 else n


_UNIX_EPOCH = datetime.datetime(1970, 1, 1)
#: Go's zero time.Time (0001-01-01T00:00:00Z) in Unix seconds: metav1.Time's JSON of it is null
_ZERO_TIME_SECONDS = -62135596800


def _time_text(seconds: int, nanos: int, offset: int) -> str:
    """The RFC 3339 text of a ``metav1.Time`` {1: seconds, 2: nanos}; DecodeError past the years 1-9999."""
    try:
        t = _UNIX_EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        raise DecodeError(f"a time {seconds} s from the epoch is out of range", offset) from None
    # not strftime: its %Y does not pad the years before 1000 to 4 digits, as RFC 3339 (and Go) do
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    return text + (f".{nanos:09d}".rstrip("0") if nanos else "") + "Z"


def _duration_text(nanoseconds: int) -> str:
    """The text of a ``metav1.Duration`` {1: nanoseconds} as Go's ``time.Duration.String`` writes it
    ("1h0m0s", "1.5s", "300ms", "0s"): exact, and what a Go client would show."""
    if nanoseconds == 0:
        return "0s"
    sign, n = ("-", -nanoseconds) if nanoseconds < 0 else ("", nanoseconds)
    if n < 1000:
        return f"{sign}{n}ns"
    if n < 10**9:
        unit, scale = ("µs", 1000) if n < 10**6 else ("ms", 10**6)
        return sign + _with_fraction(n, scale) + unit
    seconds, rest = divmod(n, 10**9)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    text = _with_fraction(seconds * 10**9 + rest, 10**9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    return f"{sign}{minutes}m{text}" if minutes else sign + text


def _with_fraction(n: int, scale: int) -> str:
    """``n / scale`` in decimal, exact, without trailing zeros (Go's fmtFrac and fmtInt)."""
    whole, frac = divmod(n, scale)
    if not frac:
        return str(whole)
    return f"{whole}." + f"{frac:0{len(str(scale)) - 1}d}".rstrip("0")


def _raw_json(reader: MessageReader, raw: BytesLike, offset: int) -> Any:
    """The value of a ``FieldsV1``/``RawExtension``'s JSON bytes, counted against the reader's ``max_values``
    first (the field counted the value itself)."""
    raw = bytes(raw)
    reader.count(_json_value_count(raw) - 1, offset)
    try:
        return json.loads(raw)
    except ValueError as exc:  # bad JSON, or text that is not UTF-8: the message is damaged, not the decoder
        raise DecodeError(f"the JSON of a FieldsV1 or RawExtension is not valid: {exc}", offset) from None


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _json_value_count(text: bytes) -> int:
    """The values JSON ``text`` decodes into, counted from its punctuation without building them.

    With strings blanked and whitespace gone, each ``,`` and ``:`` starts one more value, and each
    non-empty container holds one more value than its commas and colons start.
    """
    bare = _JSON_STRING.sub(b'""', text).translate(None, b" \t\n\r")
    opened = bare.count(b"[") + bare.count(b"{") - bare.count(b"[]") - bare.count(b"{}")
    return 1 + bare.count(b",") + bare.count(b":") + opened


def _read_varint(data: BytesLike, pos: int, end: int) -> Tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= end or shift > 63:
            raise DecodeError("truncated or overlong varint", pos)
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7


class _TooManyFields(Exception):
    """_fields met more fields than it was allowed to index; ``offset``: the first one past it."""

    def __init__(self, offset: int) -> None:
        self.offset = offset


def _fields(data: BytesLike, start: int, end: int, most: int = sys.maxsize) -> Dict[int, List[Tuple[int, int, int]]]:
    """The fields of a message in ``data[start:end]``: number -> [(start, end, wire)] of their payloads.

    At most ``most`` of them (_TooManyFields beyond): the index itself costs ~100 bytes a field.
    """
    out: Dict[int, List[Tuple[int, int, int]]] = {}
    pos = start
    while pos < end:
        most -= 1
        if most < 0:
            raise _TooManyFields(pos)
        tag, pos = _read_varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise DecodeError("field number 0", pos)
        if wire == 0:
            value_start = pos
            pos = _read_varint(data, pos, end)[1]
            out.setdefault(number, []).append((value_start, pos, 0))
        elif wire == 2:
            n, pos = _read_varint(data, pos, end)
            if pos + n > end:
                raise DecodeError("length-delimited field past the end of its message", pos)
            out.setdefault(number, []).append((pos, pos + n, 2))
            pos += n
        elif wire == 1:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64", pos)
            out.setdefault(number, []).append((pos, pos + 8, 1))
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32", pos)
            out.setdefault(number, []).append((pos, pos + 4, 5))
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire}", pos)
    return out


def _text(data: BytesLike, items: Optional[List[Tuple[int, int, int]]]) -> str:
    if not items:
        return ""
    s, e, _ = items[-1]
    try:
        return str(data[s:e], "utf-8")  # bytes or a memoryview (the informer's watch frames)
    except UnicodeDecodeError:
        raise DecodeError("a string is not valid UTF-8", s) from None


def _int_of(data: BytesLike, items: Optional[List[Tuple[int, int, int]]]) -> int:
    return _read_varint(data, items[-1][0], items[-1][1])[0] if items else 0


class KubeProtoEncoder:
    """Typed Kubernetes protobuf for the kinds of a :class:`KubeSchema`.

    ``for_kind(api_version, kind)`` gives the encoder of one kind (None when the schema has
    no message for it): that object is what a stream writes through.
    """

    content_type: ClassVar[str] = CONTENT_TYPE
    stream_content_type: ClassVar[str] = STREAM_CONTENT_TYPE

    def __init__(self, schema: Optional[KubeSchema] = None, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if type(max_frame_size) is not int or max_frame_size < 1:
            raise ValueError("max_frame_size must be a positive int")
        self.schema = schema if schema is not None else DEFAULT_SCHEMA
        self._max_frame_size = max_frame_size
        self._transcoder = _Transcoder(self.schema)
        self._kinds: Dict[Tuple[str, str], "KindEncoder"] = {}

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    def supports(self, api_version: str, kind: str) -> bool:
        return self.schema.message_name(api_version, kind) is not None

    def for_kind(self, api_version: str, kind: str) -> Optional["KindEncoder"]:
        if self.schema.message_name(api_version, kind) is None:
            return None
        enc = self._kinds.get((api_version, kind))
        if enc is None:
            enc = self._kinds[(api_version, kind)] = KindEncoder(self, api_version, kind)
        return enc

    # -- bodies (shared with KindEncoder) ---------------------------------

    def _message_name(self, api_version: str, kind: str) -> str:
        name = self.schema.message_name(api_version, kind)
        if name is None:
            raise EncodeError(f"no protobuf message is registered for {api_version}/{kind}")
        return name

    def _body(self, api_version: str, kind: str, obj: Any, resource_version: Optional[int]) -> bytes:
        if resource_version is not None:
            if not isinstance(obj, dict):
                raise EncodeError("the object must be a JSON object")
            metadata = obj.get("metadata")
            if metadata is not None and not isinstance(metadata, dict):
                raise EncodeError(f"{kind}.metadata: expected an object, not {_json_type(metadata)}")
            # first, as the compiled transcoder writes it (byte-identical output)
            patched = {"resourceVersion": str(resource_version)}
            patched.update((k, v) for k, v in (metadata or {}).items() if k != "resourceVersion")
            obj = dict(obj)
            obj["metadata"] = patched
        return self._transcoder.message(self._message_name(api_version, kind), obj, kind)

    def _object_frame(self, api_version: str, kind: str, body: bytes) -> bytes:
        type_meta = _len_field(1, _utf8(api_version, "apiVersion")) + _len_field(2, _utf8(kind, "kind"))
        return MAGIC + _len_field(1, type_meta) + _len_field(2, body) + UNKNOWN_TAIL

    def _event_frame(self, type: str, object_frame: bytes) -> bytes:
        if type not in _EVENT_TYPES:
            raise EncodeError(f"unknown watch event type {type!r}")
        event = _len_field(1, type.encode("ascii")) + _len_field(2, _len_field(1, object_frame))
        if len(event) > _MAX_PREFIXED:
            raise FrameTooLarge("event does not fit a 4-byte length prefix", self._max_frame_size)
        return struct.pack(">I", len(event)) + event

    def _dict_type(self, obj: Any, default: Optional[Tuple[str, str]]) -> Tuple[str, str]:
        if isinstance(obj, dict) and isinstance(obj.get("kind"), str) and isinstance(obj.get("apiVersion"), str):
            return obj["apiVersion"], obj["kind"]
        if default is None:
            raise EncodeError("a protobuf object needs its kind and apiVersion")
        return default

    # -- objects given as dicts --------------------------------------------

    def encode(self, obj: Any, *, default_type: Optional[Tuple[str, str]] = None) -> bytes:
        api_version, kind = self._dict_type(obj, default_type)
        frame = self._object_frame(api_version, kind, self._body(api_version, kind, obj, None))
        if len(frame) > self._max_frame_size:
            raise FrameTooLarge(f"frame of {len(frame)} bytes exceeds max_frame_size {self._max_frame_size}", self._max_frame_size)
        return frame

    def encode_into(self, obj: Any, buf: PoolBuffer, *, default_type: Optional[Tuple[str, str]] = None) -> int:
        return _append(buf, self.encode(obj, default_type=default_type), self._max_frame_size)

    def encode_event(self, type: str, obj: Any, *, default_type: Optional[Tuple[str, str]] = None) -> bytes:
        api_version, kind = self._dict_type(obj, default_type)
        frame = self._event_frame(type, self._object_frame(api_version, kind, self._body(api_version, kind, obj, None)))
        if len(frame) > self._max_frame_size:
            raise FrameTooLarge(f"frame of {len(frame)} bytes exceeds max_frame_size {self._max_frame_size}", self._max_frame_size)
        return frame

    def encode_event_into(self, type: str, obj: Any, buf: PoolBuffer, *, default_type: Optional[Tuple[str, str]] = None) -> int:
        return _append(buf, self.encode_event(type, obj, default_type=default_type), self._max_frame_size)

    # -- objects given as stored JSON ----------------------------------------

    def encode_stored(self, api_version: str, kind: str, stored: BytesLike, resource_version: Optional[int] = None) -> bytes:
        """The object frame of a stored JSON object of ``kind``."""
        body = self._body(api_version, kind, _loads(stored), resource_version)
        return self._object_frame(api_version, kind, body)

    def encode_stored_event_into(
        self, type: str, api_version: str, kind: str, stored: BytesLike, resource_version: Optional[int], buf: PoolBuffer
    ) -> int:
        frame = self._event_frame(type, self.encode_stored(api_version, kind, stored, resource_version))
        return _append(buf, frame, self._max_frame_size)

    def stored_list_item(self, api_version: str, kind: str, stored: BytesLike, resource_version: Optional[int]) -> bytes:
        """One list item field (2: the message, no envelope)."""
        return _len_field(2, self._body(api_version, kind, _loads(stored), resource_version))

    def stored_list_item_size(self, api_version: str, kind: str, stored: BytesLike, resource_version: Optional[int]) -> int:
        return len(self.stored_list_item(api_version, kind, stored, resource_version))

    def encode_stored_list_item_into(
        self, api_version: str, kind: str, stored: BytesLike, resource_version: Optional[int], buf: PoolBuffer
    ) -> int:
        return _append(buf, self.stored_list_item(api_version, kind, stored, resource_version), self._max_frame_size)

    def list_start(self, api_version: str, list_kind: str, metadata: Dict[str, Any], items_size: int) -> bytes:
        """Everything of a list body before its items (``items_size``: their fields' total bytes)."""
        meta = _len_field(1, self._transcoder.message(LIST_META, metadata, "metadata"))
        type_meta = _len_field(1, _utf8(api_version, "apiVersion")) + _len_field(2, _utf8(list_kind, "kind"))
        raw_size = len(meta) + items_size
        return MAGIC + _len_field(1, type_meta) + _varint(2 << 3 | 2) + _varint(raw_size) + meta


class KindEncoder:
    """The typed protobuf of one kind, with the methods a stream writes through.

    Besides the contract's dict methods (``encode``, ``encode_event_into``, ... used for
    bookmarks and Status), ``encode_stored_event_into`` and ``encode_stored_list_item_into``
    take the JSON bytes stored in etcd and the revision to report as
    ``metadata.resourceVersion``.  A list body needs its items' total size up front:
    :meth:`list_item_size` gives one item's share, and ``encode_list_start_into`` takes the sum.
    """

    content_type: ClassVar[str] = CONTENT_TYPE
    stream_content_type: ClassVar[str] = STREAM_CONTENT_TYPE
    #: list bodies need ``items_size`` at their start
    needs_items_size: ClassVar[bool] = True

    def __init__(self, base: KubeProtoEncoder, api_version: str, kind: str) -> None:
        self.base = base
        self.api_version = api_version
        self.kind = kind

    @property
    def max_frame_size(self) -> int:
        return self.base.max_frame_size

    def encode(self, obj: Any) -> bytes:
        return self.base.encode(obj, default_type=(self.api_version, self.kind))

    def encode_into(self, obj: Any, buf: PoolBuffer) -> int:
        return self.base.encode_into(obj, buf, default_type=(self.api_version, self.kind))

    def encode_event(self, type: str, obj: Any) -> bytes:
        return self.base.encode_event(type, obj, default_type=(self.api_version, self.kind))

    def encode_event_into(self, type: str, obj: Any, buf: PoolBuffer) -> int:
        return self.base.encode_event_into(type, obj, buf, default_type=(self.api_version, self.kind))

    def encode_stored(self, stored: BytesLike, resource_version: Optional[int] = None) -> bytes:
        return self.base.encode_stored(self.api_version, self.kind, stored, resource_version)

    def encode_stored_event_into(self, type: str, stored: BytesLike, resource_version: Optional[int], buf: PoolBuffer) -> int:
        return self.base.encode_stored_event_into(type, self.api_version, self.kind, stored, resource_version, buf)

    def list_item_size(self, stored: BytesLike, resource_version: Optional[int]) -> int:
        return self.base.stored_list_item_size(self.api_version, self.kind, stored, resource_version)

    def encode_stored_list_item_into(self, stored: BytesLike, resource_version: Optional[int], buf: PoolBuffer, index: int) -> int:
        return self.base.encode_stored_list_item_into(self.api_version, self.kind, stored, resource_version, buf)

    def encode_list_item_into(self, obj: Any, buf: PoolBuffer, index: int) -> int:
        item = _len_field(2, self.base._body(self.api_version, self.kind, obj, None))
        return _append(buf, item, self.base.max_frame_size)

    def encode_list_start_into(
        self, buf: PoolBuffer, *, kind: str, api_version: str, metadata: dict, count: Optional[int] = None,
        items_size: Optional[int] = None,
    ) -> int:
        if items_size is None:
            raise ValueError("a protobuf list body needs its items' total size (items_size) up front")
        return _append(buf, self.base.list_start(api_version, kind, metadata, items_size), self.base.max_frame_size)

    def encode_list_end_into(self, buf: PoolBuffer, count: int) -> int:
        return _append(buf, UNKNOWN_TAIL, self.base.max_frame_size)
