"""Incremental readers of list bodies and watch streams, JSON and Kubernetes protobuf.

Each reader is sans-IO: ``feed(bytes)`` returns what the bytes completed (list items, or watch
events as ``(type, object)``), holding back only the incomplete tail.  So a client holds one object
in flight whatever the collection's size; an object larger than ``max_object_bytes`` is an error,
not something to buffer.  ``head`` of a list reader is its ``metadata`` (resourceVersion, continue).
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Dict, List, Optional, Tuple

import streamcodec
from streamcodec._kubeproto_py import _fields as kubeproto_fields
from streamcodec._kubeproto_py import _int_of as kubeproto_int
from streamcodec._kubeproto_py import _len_field
from streamcodec._kubeproto_py import _text as kubeproto_text
from streamcodec._kubeproto_py import _varint as _encode_varint
from streamcodec.formats import FORMATS, PROTOBUF_MAGIC
from streamcodec.kube_schema import KubeSchema

__all__ = [
    "DecodeFailed", "JSONListReader", "JSONWatchReader", "ProtoListReader", "ProtoWatchReader",
    "DEFAULT_MAX_OBJECT_BYTES", "JSON", "PROTOBUF", "PROTOBUF_WATCH",
]

JSON = FORMATS["json"].media_types[0]
PROTOBUF = FORMATS["protobuf"].media_types[0]
PROTOBUF_WATCH = PROTOBUF + ";stream=watch"
MAGIC = PROTOBUF_MAGIC

#: The largest object (one list item, one watch event) a reader will buffer; etcd's own cap is 1.5 MiB
#: per value by default, and a JSON object of it is about 4/3 of that.
DEFAULT_MAX_OBJECT_BYTES = 64 * 1024 * 1024

WatchEvent = Tuple[str, Dict[str, Any]]


class DecodeFailed(ValueError):
    """The body is not what its media type says, or an object exceeds ``max_object_bytes``."""


# ----------------------------------------------------------------------------- JSON
class JSONWatchReader:
    """Newline-delimited JSON watch events (``{"type":...,"object":{...}}`` per line), through the codec's
    sans-IO :class:`streamcodec.JSONDecoder`."""

    def __init__(self, max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES) -> None:
        self.max_object_bytes = max_object_bytes
        self._decoder = streamcodec.JSONDecoder(max_frame_size=max_object_bytes)

    def feed(self, data: bytes) -> List[WatchEvent]:
        try:
            self._decoder.feed(data)
            return [_event(e.type, e.object) for e in self._decoder]
        except streamcodec.DecodeError as exc:
            raise DecodeFailed(f"not a JSON watch stream: {exc}") from None

    def close(self) -> None:
        """The stream's end: a last event need not end with a newline, but must be whole."""
        try:
            self._decoder.close()
        except streamcodec.DecodeError as exc:
            raise DecodeFailed(f"the watch stream ended inside an event: {exc}") from None


def _loads(data: Any) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeFailed(f"invalid JSON: {exc}") from None


def _event(type: Any, obj: Any) -> WatchEvent:
    """A decoded watch event, checked: an object, not any JSON value."""
    if not isinstance(type, str) or not isinstance(obj, dict):
        raise DecodeFailed(f"not a watch event: {str(obj)[:200]}")
    return type, obj


_ITEMS = re.compile(r'"items"\s*:\s*\[')


class JSONListReader:
    """A JSON list body ``{"kind":..,"metadata":{..},"items":[item,...]}`` one item at a time.

    Items are cut with :meth:`json.JSONDecoder.raw_decode`; an incomplete item is retried only once the
    buffered text has grown by half, so a large item costs a bounded number of scans, not one per chunk.
    """

    def __init__(self, max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES) -> None:
        self.max_object_bytes = max_object_bytes
        self.head: Dict[str, Any] = {}
        self.done = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""  # the unparsed text, from an item's start (or the body's start)
        self._pending: List[str] = []  # text received since the last attempt
        self._pending_len = 0
        self._retry_at = 0  # attempt again once this many characters are pending
        self._in_items = False
        self._json = json.JSONDecoder()

    @property
    def metadata(self) -> Dict[str, Any]:
        meta = self.head.get("metadata")
        return meta if isinstance(meta, dict) else {}

    def feed(self, data: bytes) -> List[Dict[str, Any]]:
        try:
            text = self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            raise DecodeFailed(f"a list body that is not UTF-8: {exc}") from None
        if self.done:
            self._text += text
            return []
        self._pending.append(text)
        self._pending_len += len(text)
        if self._pending_len < self._retry_at:
            if len(self._text) + self._pending_len > self.max_object_bytes:
                raise DecodeFailed(f"a list item longer than {self.max_object_bytes} characters")
            return []
        self._text += "".join(self._pending)
        self._pending.clear()
        self._pending_len = 0
        return self._parse()

    def _parse(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        buf, pos = self._text, 0
        if not self._in_items:
            m = _ITEMS.search(buf)
            if m is None:
                if len(buf) > self.max_object_bytes:
                    raise DecodeFailed("no items in the first bytes of the list body")
                return out
            head = _loads(buf[: m.start()].rstrip().rstrip(",") + "}")
            if not isinstance(head, dict):
                raise DecodeFailed("a list body that is not a JSON object")
            self.head = head
            self._in_items = True
            pos = m.end()
        n = len(buf)
        while True:
            while pos < n and buf[pos] in " \t\r\n,":
                pos += 1
            if pos >= n:
                break
            if buf[pos] == "]":
                self.done = True
                pos += 1
                break
            try:
                item, end = self._json.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if n - pos > self.max_object_bytes:
                    raise DecodeFailed(f"a list item longer than {self.max_object_bytes} characters") from None
                self._retry_at = (n - pos) // 2
                break
            if not isinstance(item, dict):
                raise DecodeFailed("a list item that is not an object")
            out.append(item)
            pos = end
        self._text = buf[pos:]
        if out or self.done:
            self._retry_at = 0
        return out

    def close(self) -> List[Dict[str, Any]]:
        """The body's end: returns the items still held back; the items must have ended, and what follows
        them is merged into ``head``."""
        out: List[Dict[str, Any]] = []
        if self._pending:
            self._text += "".join(self._pending)
            self._pending.clear()
            self._pending_len = 0
            self._retry_at = 0
            out = self._parse()
        if not self._in_items:  # no items array at all ("items":null, or an empty list without one)
            doc = _loads(self._text)
            if not isinstance(doc, dict) or doc.get("items") not in (None, []):
                raise DecodeFailed("a list body without an items array")
            self.head, self.done, self._text = doc, True, ""
            return out
        if not self.done:
            raise DecodeFailed("the list body ended before its items did")
        tail = self._text.strip().lstrip(",").strip()
        if tail and tail != "}":
            extra = _loads("{" + tail)
            if isinstance(extra, dict):
                self.head.update(extra)
        return out


# ----------------------------------------------------------------------------- Kubernetes protobuf
def _varint(data: Any, pos: int, end: int) -> Tuple[int, int]:
    """(value, next position); (-1, pos) when the varint is not complete before ``end`` (more may come:
    unlike the decoder's reader of complete messages, a list body is read as it arrives)."""
    shift = value = 0
    start = pos
    while pos < end:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise DecodeFailed(f"an overlong varint at byte {start}")
    return -1, start


Fields = Dict[int, List[Tuple[int, int, int]]]


def _fields(data: Any, start: int, end: int) -> Fields:
    """The fields of a complete message (the decoder's own index of them: number -> [(start, end, wire)])."""
    try:
        return kubeproto_fields(data, start, end)
    except streamcodec.DecodeError as exc:
        raise DecodeFailed(f"a malformed protobuf message: {exc}") from None


def _span(fields: Fields, number: int) -> Optional[Tuple[int, int]]:
    """The payload of field ``number``'s last occurrence when it is length-delimited, else None."""
    items = fields.get(number)
    return (items[-1][0], items[-1][1]) if items and items[-1][2] == 2 else None


def _text(data: Any, fields: Fields, number: int) -> str:
    try:
        return kubeproto_text(data, fields.get(number))
    except streamcodec.DecodeError:
        raise DecodeFailed("a protobuf string that is not UTF-8") from None


def _list_meta(data: Any, span: Tuple[int, int]) -> Dict[str, Any]:
    f = _fields(data, *span)
    meta: Dict[str, Any] = {"resourceVersion": _text(data, f, 2)}
    if _text(data, f, 3):
        meta["continue"] = _text(data, f, 3)
    remaining = f.get(4)
    if remaining and remaining[-1][2] == 0:
        meta["remainingItemCount"] = kubeproto_int(data, remaining)
    return meta


class _ProtoBase:
    def __init__(self, schema: Optional[KubeSchema], max_object_bytes: int) -> None:
        self.max_object_bytes = max_object_bytes
        self._decoder = streamcodec.KubeProtoDecoder(schema, max_frame_size=max_object_bytes + 1024) \
            if schema is not None else streamcodec.KubeProtoDecoder(max_frame_size=max_object_bytes + 1024)

    def _object(self, frame: "bytes | memoryview") -> Dict[str, Any]:
        try:
            return dict(self._decoder.decode(frame))
        except streamcodec.DecodeError as exc:
            raise DecodeFailed(f"an undecodable protobuf object: {exc}") from None


class ProtoListReader(_ProtoBase):
    """A protobuf list body: ``k8s\\x00`` + runtime.Unknown{typeMeta, raw = e.g. v1.SecretList}, whose
    items (field 2 of the list message) are decoded one by one as they complete."""

    def __init__(self, schema: Optional[KubeSchema] = None, max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES) -> None:
        super().__init__(schema, max_object_bytes)
        self.head: Dict[str, Any] = {}
        self.done = False
        self._buf = bytearray()
        self._pos = 0  # bytes of the body consumed before _buf
        self._raw_end: Optional[int] = None  # body offset where the list message ends
        self._api_version = ""
        self._item_kind = ""

    @property
    def metadata(self) -> Dict[str, Any]:
        return dict(self.head.get("metadata") or {})

    def feed(self, data: bytes) -> List[Dict[str, Any]]:
        buf = self._buf
        buf += data
        out: List[Dict[str, Any]] = []
        p = 0
        if self._raw_end is None and self._pos == 0:
            if len(buf) < 4:
                return out
            if bytes(buf[:4]) != MAGIC:
                raise DecodeFailed("not Kubernetes protobuf: the body does not start with k8s\\x00")
            p = 4
        n = len(buf)
        while True:
            tag, q = _varint(buf, p, n)
            if tag < 0:
                break
            wire, number = tag & 7, tag >> 3
            in_list = self._raw_end is not None and self._pos + p < self._raw_end
            if wire == 0:
                v, q = _varint(buf, q, n)
                if v < 0:
                    break
                p = q
                continue
            if wire != 2:
                raise DecodeFailed(f"unexpected protobuf wire type {wire} in a list body")
            size, q = _varint(buf, q, n)
            if size < 0:
                break
            if size > self.max_object_bytes:
                raise DecodeFailed(f"a list item of {size} bytes, more than {self.max_object_bytes}")
            if not in_list and number == 2 and self._raw_end is None:
                self._raw_end = self._pos + q + size  # the list message: descend into it
                p = q
                continue
            if q + size > n:
                break
            if not in_list and number == 1:  # runtime.Unknown's TypeMeta
                f = _fields(buf, q, q + size)
                self._api_version = _text(buf, f, 1)
                kind = _text(buf, f, 2)
                self.head.update(apiVersion=self._api_version, kind=kind)
                self._item_kind = kind[:-4] if kind.endswith("List") else kind
            elif in_list and number == 1:
                self.head["metadata"] = _list_meta(buf, (q, q + size))
            elif in_list and number == 2:
                type_meta = _len_field(1, self._api_version.encode()) + _len_field(2, self._item_kind.encode())
                with memoryview(buf) as view:
                    head = MAGIC + _len_field(1, type_meta) + _encode_varint(2 << 3 | 2) + _encode_varint(size)
                    frame = b"".join((head, view[q:q + size]))  # one copy of the item
                out.append(self._object(frame))
            p = q + size
            if self._raw_end is not None and self._pos + p >= self._raw_end and in_list:
                self.done = True
        if p:
            del buf[:p]
            self._pos += p
        if len(buf) > self.max_object_bytes + 64:
            raise DecodeFailed("a list item larger than the reader's limit")
        return out

    def close(self) -> List[Dict[str, Any]]:
        """The body's end (every item has been returned by :meth:`feed`)."""
        if self._raw_end is not None and self._pos >= self._raw_end:
            self.done = True  # e.g. a list message without items
        if not self.done:
            raise DecodeFailed("the protobuf list body ended before its items did")
        return []


class ProtoWatchReader(_ProtoBase):
    """A protobuf watch stream: 4-byte big-endian length frames, each ``k8s\\x00`` + runtime.Unknown of a
    metav1.WatchEvent{type, object: RawExtension{raw = k8s\\x00 + Unknown of the typed object}}."""

    def __init__(self, schema: Optional[KubeSchema] = None, max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES) -> None:
        super().__init__(schema, max_object_bytes)
        # The frame being received, in a buffer kept from frame to frame: pieces are copied into memory
        # already faulted in, not joined into a new 1 MiB bytes per frame (fresh pages: a page fault each
        # 4 KiB, which cost more than the copy).  It grows to the largest frame as its bytes arrive, so a
        # length prefix alone commits no memory.  Frames whole in one piece are decoded where they are.
        self._buf = bytearray()
        self._have = 0  # bytes of _buf in use: a length prefix, then (part of) its frame

    def feed(self, data: bytes) -> List[WatchEvent]:
        out: List[WatchEvent] = []
        with memoryview(data) as piece:
            p, n = 0, len(piece)
            if self._have:
                p = self._buffer(piece, out)
            if not self._have:
                while n - p >= 4:  # frames whole in the piece
                    size = self._size(piece[p:p + 4])
                    if n - p - 4 < size:
                        break
                    out.append(self._event(piece[p + 4:p + 4 + size]))
                    p += 4 + size
                if p < n:
                    self._buffer(piece[p:], out)  # the start of a frame: never completes it
        return out

    def _size(self, prefix: Any) -> int:
        size = int.from_bytes(prefix, "big")
        if size > self.max_object_bytes + 1024:
            raise DecodeFailed(f"a watch event of {size} bytes, more than {self.max_object_bytes}")
        return size

    def _reserve(self, size: int, most: int) -> None:
        """Room for ``size`` bytes: a new buffer (a resize could be refused while a view of the old one is
        held), at least twice the old one so that a large frame is copied a bounded number of times, and
        at most ``most``."""
        if len(self._buf) < size:
            grown = bytearray(min(most, max(size, 2 * len(self._buf), 64 * 1024)))
            with memoryview(self._buf) as old:
                grown[:self._have] = old[:self._have]
            self._buf = grown

    def _buffer(self, piece: memoryview, out: List[WatchEvent]) -> int:
        """Adds the start of ``piece`` to the buffered frame (its length prefix, then the frame), decoding
        the frame once whole; returns the bytes of ``piece`` used."""
        p = 0
        if self._have < 4:
            p = min(4 - self._have, len(piece))
            self._reserve(4, 4 + self.max_object_bytes + 1024)
            self._buf[self._have:self._have + p] = piece[:p]
            self._have += p
            if self._have < 4:
                return p
        need = 4 + self._size(self._buf[:4])
        k = min(need - self._have, len(piece) - p)
        self._reserve(self._have + k, need)
        self._buf[self._have:self._have + k] = piece[p:p + k]  # same length: a copy in place
        self._have += k
        if self._have == need:
            self._have = 0
            with memoryview(self._buf) as buf:
                out.append(self._event(buf[4:need]))
        return p + k

    def _event(self, frame: memoryview) -> WatchEvent:
        start, end = 0, len(frame)
        if frame[:4] == MAGIC:  # the envelope around the WatchEvent
            raw = _span(_fields(frame, 4, end), 2)
            if raw is None:
                raise DecodeFailed("a watch frame without a WatchEvent")
            start, end = raw
        event = _fields(frame, start, end)
        type_ = _text(frame, event, 1)
        ext = _span(event, 2)
        if not type_ or ext is None:
            raise DecodeFailed("a WatchEvent without a type or an object")
        raw_obj = _span(_fields(frame, *ext), 1)
        if raw_obj is None:
            raise DecodeFailed("a WatchEvent whose object has no raw bytes")
        return type_, self._object(frame[raw_obj[0]:raw_obj[1]])  # a view: the decoder reads it in place

    def close(self) -> None:
        if self._have:
            n, self._have = self._have, 0
            raise DecodeFailed(f"the watch stream ended inside an event ({n} bytes)")
