"""Incremental readers of list bodies and watch streams: JSON, CBOR and Kubernetes protobuf.

Each reader is sans-IO: ``feed(bytes)`` returns what the bytes completed (list items, or watch
events as ``(type, object)``), holding back only the incomplete tail.  So a client holds one object
in flight whatever the collection's size; an object larger than ``max_object_bytes`` is an error,
not something to buffer.  ``head`` of a list reader is its ``metadata`` (resourceVersion, continue).

CBOR (``application/cbor`` for a list, ``application/cbor-seq`` for a watch: a CBOR sequence of events)
is read as Kubernetes writes it: each top-level item after the self-described tag 55799 (``d9 d9 f7``),
strings and field names as byte strings, ``[]byte`` as a byte string in tag 22; objects come out equal
to what the JSON readers give for the same object (``[]byte`` as base64 text).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
from typing import Any, Dict, List, Optional, Tuple

import streamcodec
from streamcodec._kubeproto_py import _fields as kubeproto_fields
from streamcodec._kubeproto_py import _int_of as kubeproto_int
from streamcodec._kubeproto_py import _text as kubeproto_text
from streamcodec.formats import CBOR_MAGIC, FORMATS, PROTOBUF_MAGIC
from streamcodec.kube_cbor import TAG_LATER_BASE64 as _LATER_BASE64
from streamcodec.kube_cbor import text_head
from streamcodec.kube_schema import KubeSchema
from streamcodec.limits import MAX_DEPTH

__all__ = [
    "DecodeFailed", "JSONListReader", "JSONWatchReader", "CBORListReader", "CBORWatchReader", "ProtoListReader",
    "ProtoWatchReader", "cbor_object", "DEFAULT_MAX_OBJECT_BYTES", "JSON", "CBOR", "CBOR_SEQ", "PROTOBUF",
    "PROTOBUF_WATCH",
]

JSON = FORMATS["json"].media_types[0]
CBOR, CBOR_SEQ = FORMATS["cbor"].media_types[:2]  # application/cbor, application/cbor-seq
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
                with memoryview(buf) as view, view[q:q + size] as item:  # read in place: no copy
                    try:  # no kind/apiVersion: a List's items carry none, as in its JSON
                        out.append(self._decoder.decode_message(item, self._api_version, self._item_kind))
                    except streamcodec.DecodeError as exc:
                        raise DecodeFailed(f"an undecodable protobuf object: {exc}") from None
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


# ----------------------------------------------------------------------------- CBOR
#: The tags of RFC 8949 §3.4.5.2 ("expected later encoding"): a byte string in one of them stands for the
#: text JSON would carry.  Kubernetes writes every ``[]byte`` as a byte string in tag 22 (base64), as JSON
#: writes it as base64 text.
_LATER_BASE64URL, _LATER_BASE16 = 21, 23
_BREAK = 0xFF


_base64_encoder: Any = None


def _base64(payload: Any) -> Any:
    """Standard padded base64 of ``payload``: the compiled JSON encoder's (twice binascii's speed), else
    binascii's."""
    global _base64_encoder
    if _base64_encoder is None:
        _base64_encoder = streamcodec.JSONEncoder(max_frame_size=2**62) if streamcodec.IMPLEMENTATION == "cython" else False
    if _base64_encoder is False:
        return binascii.b2a_base64(payload, newline=False)
    return memoryview(_base64_encoder.encode(payload))[1:-1]  # the JSON string's text, without its quotes


def _later_text(tag: int, payload: Any) -> Any:
    if tag == _LATER_BASE64:
        return _base64(payload)
    if tag == _LATER_BASE64URL:
        return base64.urlsafe_b64encode(payload).rstrip(b"=")
    return binascii.hexlify(payload)


class _ItemScan:
    """Where one CBOR data item (from ``start`` of a buffer) ends, found as its bytes arrive (resumable:
    each byte's head is read once), and the edits that make it what the codec's decoder reads as the
    JSON reader's object:

    * a byte string in tag 21/22/23 becomes the text string of its base64url/base64/base16 form (JSON's
      ``[]byte``; the codec's decoder refuses these tags);
    * any other byte string becomes a text string of the same bytes: Kubernetes writes every Go string and
      every field name as a CBOR byte string (its ``StringToByteString``/``FieldNameToByteString``
      options), and decodes them to strings, which is what JSON has (so such a string must be UTF-8: one
      that is not makes the object an error, :class:`DecodeFailed`).

    Other tags are left to the codec's decoder: 55799 anywhere (ignored) and bignums; any other is an error.

    Positions are relative to ``start``; the caller moves ``start`` when it drops consumed bytes.
    """

    __slots__ = ("start", "pos", "stack", "tag", "tag_at", "flips", "spans", "limit", "depth")

    def __init__(self, start: int, limit: int, depth: int = MAX_DEPTH) -> None:
        self.start = start
        self.pos = 0
        self.stack: List[int] = []  # remaining entries of each open container (-1: indefinite length)
        self.tag = -1  # a later-encoding tag waiting for its byte string (-1: none)
        self.tag_at = 0  # where that tag's head is
        self.flips: List[int] = []  # heads of byte strings to read as text strings
        self.spans: List[Tuple[int, int, int, int]] = []  # (tag head, payload start, payload end, tag)
        self.limit = limit
        self.depth = depth

    def scan(self, buf: Any, end: int) -> bool:
        """True once the item is whole within ``buf[:end]``; ``self.pos`` is then its size."""
        start, stack = self.start, self.stack
        pos = start + self.pos
        limit = start + self.limit
        while pos < end:
            ib = buf[pos]
            major, ai = ib >> 5, ib & 31
            if ai < 24:
                arg, head_end = ai, pos + 1
            elif ai < 28:
                head_end = pos + 1 + (1 << (ai - 24))
                if head_end > end:
                    break
                arg = int.from_bytes(buf[pos + 1:head_end], "big")
            elif ai == 31 and major in (2, 3, 4, 5, 7):
                arg, head_end = -1, pos + 1
            else:
                raise DecodeFailed(f"malformed CBOR at byte {pos - start} of an object")
            if self.tag >= 0 and major != 2:
                raise DecodeFailed(f"CBOR tag {self.tag} on something else than a byte string")
            if major == 6:
                if arg in (_LATER_BASE64URL, _LATER_BASE64, _LATER_BASE16):
                    self.tag, self.tag_at = arg, pos - start
                pos = head_end  # a tag is not an item: its content is (55799 and bignums: the decoder's)
                continue
            if major in (2, 3):
                if arg < 0:
                    raise DecodeFailed("an indefinite-length CBOR string")
                if head_end + arg > limit:
                    raise DecodeFailed(f"an object longer than {self.limit} bytes")
                if head_end + arg > end:
                    break
                if self.tag >= 0:
                    self.spans.append((self.tag_at, head_end - start, head_end + arg - start, self.tag))
                    self.tag = -1
                elif major == 2:
                    self.flips.append(pos - start)
                pos = head_end + arg
            elif major in (4, 5) and arg != 0:
                if len(stack) >= self.depth:
                    raise DecodeFailed(f"CBOR nested deeper than {self.depth}")
                if arg > self.limit:
                    raise DecodeFailed(f"a CBOR container of {arg} entries")
                stack.append(-1 if arg < 0 else arg << (major - 4))
                pos = head_end
                continue
            elif ib == _BREAK:
                if not stack or stack[-1] != -1:
                    raise DecodeFailed(f"a CBOR break outside an indefinite-length container at byte {pos - start}")
                stack.pop()
                pos = head_end
            else:  # integers, simple values, floats, empty containers
                pos = head_end
            while True:  # an item ended: it counts in its container, which may end too
                if not stack:
                    self.pos = pos - start
                    return True
                top = stack[-1]
                if top < 0:
                    break
                if top > 1:
                    stack[-1] = top - 1
                    break
                stack.pop()
        if pos > limit:
            raise DecodeFailed(f"an object longer than {self.limit} bytes")
        self.pos = pos - start
        return False

    def frame(self, buf: bytearray, view: memoryview) -> Any:
        """The item, edited (byte strings read as text are flipped in ``buf`` itself): a view of ``buf`` when
        no tagged byte string needs its text, else one joined copy."""
        start, end = self.start, self.start + self.pos
        for at in self.flips:
            buf[start + at] ^= 0x20  # major type 2 -> 3, same argument
        self.flips = []
        if not self.spans:
            return view[start:end]
        pieces: List[Any] = []
        last = start
        for at, p, q, tag in self.spans:
            text = _later_text(tag, view[start + p:start + q])
            pieces += (view[last:start + at], text_head(len(text)), text)
            last = start + q
        pieces.append(view[last:end])
        return b"".join(pieces)


class _CBORBase:
    """A buffer of CBOR bytes and the item being received in it; items decoded by the codec's
    :class:`streamcodec.CBORDecoder` once whole (:class:`_ItemScan` finds where each ends)."""

    def __init__(self, max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES) -> None:
        self.max_object_bytes = max_object_bytes
        self._decoder = streamcodec.CBORDecoder(max_frame_size=max_object_bytes + max_object_bytes // 2 + 1024)
        self._buf = bytearray()
        self._scan: Optional[_ItemScan] = None

    def _item(self, p: int) -> Tuple[Any, int]:
        """The item at ``p`` of the buffer when whole (decoded, and where it ends), else (None, -1)."""
        scan = self._scan
        if scan is None or scan.start != p:
            scan = self._scan = _ItemScan(p, self.max_object_bytes)
        if not scan.scan(self._buf, len(self._buf)):
            return None, -1
        self._scan = None
        with memoryview(self._buf) as view:
            frame = scan.frame(self._buf, view)
            try:
                return self._decoder.decode(frame), p + scan.pos
            except streamcodec.DecodeError as exc:
                raise DecodeFailed(f"an undecodable CBOR object: {exc}") from None
            finally:
                if isinstance(frame, memoryview):
                    frame.release()

    def _consume(self, p: int) -> None:
        if p:
            del self._buf[:p]
            if self._scan is not None:
                self._scan.start -= p


def cbor_object(body: bytes, max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES) -> Any:
    """The one data item of a whole CBOR body (an error Status), read as the readers read objects."""
    reader = _CBORBase(max_object_bytes)
    reader._buf += body
    value, end = reader._item(0) if body else (None, -1)
    if end != len(body):
        raise DecodeFailed("not one whole CBOR data item")
    return value


class CBORWatchReader(_CBORBase):
    """A CBOR watch stream (``application/cbor-seq``, RFC 8742): one data item per event, ``d9 d9 f7`` +
    ``{"type": ..., "object": {...}}``, as Kubernetes writes it (strings and field names as byte strings,
    ``[]byte`` in tag 22) or as our server does (text strings); see :class:`_ItemScan`."""

    def feed(self, data: bytes) -> List[WatchEvent]:
        self._buf += data
        out: List[WatchEvent] = []
        p = 0
        while p < len(self._buf):
            event, end = self._item(p)
            if end < 0:
                break
            if not isinstance(event, dict):
                raise DecodeFailed(f"not a watch event: {str(event)[:200]}")
            out.append(_event(event.get("type"), event.get("object")))
            p = end
        self._consume(p)
        return out

    def close(self) -> None:
        """The stream's end: it must not end inside an event."""
        if self._buf:
            n = len(self._buf)
            self._buf.clear()
            self._scan = None
            raise DecodeFailed(f"the watch stream ended inside an event ({n} bytes)")


class CBORListReader(_CBORBase):
    """A CBOR list body (``application/cbor``): one data item, ``d9 d9 f7`` + the List map, whose
    ``items`` array (definite length, as Kubernetes writes it, or indefinite, as our server does) is
    decoded one item at a time as each completes; the map's other entries (``kind``, ``apiVersion``,
    ``metadata``, in any order: Kubernetes may put ``items`` first) go to ``head``."""

    def __init__(self, max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES) -> None:
        super().__init__(max_object_bytes)
        self.head: Dict[str, Any] = {}
        self.done = False
        self._entries: Optional[int] = None  # map entries left (-1: indefinite); None: before the map
        self._key: Optional[str] = None  # the entry whose value comes next
        self._items: Optional[int] = None  # items left in the items array (-1: indefinite)

    @property
    def metadata(self) -> Dict[str, Any]:
        meta = self.head.get("metadata")
        return meta if isinstance(meta, dict) else {}

    def feed(self, data: bytes) -> List[Dict[str, Any]]:
        self._buf += data
        out: List[Dict[str, Any]] = []
        buf = self._buf
        p, n = 0, len(buf)
        while p < n and not self.done:
            if self._items is not None:  # inside the items array
                if self._items < 0 and buf[p] == _BREAK:
                    p += 1
                    self._items = None
                    self._key = None
                    continue
                item, end = self._item(p)
                if end < 0:
                    break
                if not isinstance(item, dict):
                    raise DecodeFailed("a list item that is not an object")
                out.append(item)
                p = end
                if self._items > 0:
                    self._items -= 1
                    if not self._items:  # a definite-length array ends with its last item
                        self._items = self._key = None
            elif self._entries is None:  # the body's start: self-described tags, then the map's head
                if buf[p] == CBOR_MAGIC[0]:
                    if n - p < 3:
                        break
                    if buf[p:p + 3] != CBOR_MAGIC:
                        raise DecodeFailed("a CBOR list body with a tag other than 55799 around it")
                    p += 3
                    continue
                count, end = _container_head(buf, p, n, 5)
                if end < 0:
                    break
                self._entries, p = count, end
            elif self._key is None:  # the next key, or the map's end
                if self._entries == 0 or (self._entries < 0 and buf[p] == _BREAK):
                    p += self._entries < 0
                    self.done = True
                    break
                key, end = self._item(p)
                if end < 0:
                    break
                if not isinstance(key, str):
                    raise DecodeFailed("a list body whose map has a key that is not a string")
                self._key, p = key, end
                if self._entries > 0:
                    self._entries -= 1
            elif self._key == "items" and buf[p] != 0xF6:  # the items array's head (0xf6: null)
                count, end = _container_head(buf, p, n, 4)
                if end < 0:
                    break
                self._items, p = count, end
                if not count:
                    self._items = self._key = None
            else:
                value, end = self._item(p)
                if end < 0:
                    break
                if self._key != "items":
                    self.head[self._key] = value
                self._key, p = None, end
        if self._entries == 0 and self._key is None:
            self.done = True  # a definite-length map ends with its last value
        self._consume(p)
        if self.done and self._buf:
            raise DecodeFailed(f"{len(self._buf)} bytes after the end of the CBOR list body")
        return out

    def close(self) -> List[Dict[str, Any]]:
        """The body's end (every item has been returned by :meth:`feed`)."""
        if not self.done:
            raise DecodeFailed("the CBOR list body ended before its items did")
        return []


def _container_head(buf: Any, p: int, n: int, major: int) -> Tuple[int, int]:
    """(entries, next position) of the map (5) or array (4) head at ``p`` (entries -1: indefinite
    length); (0, -1) when the head is not complete."""
    ib = buf[p]
    if ib >> 5 != major:
        raise DecodeFailed(f"a CBOR list body without its {'map' if major == 5 else 'items array'} "
                           f"(byte 0x{ib:02x})")
    ai = ib & 31
    if ai < 24:
        return ai, p + 1
    if ai == 31:
        return -1, p + 1
    if ai > 27:
        raise DecodeFailed("a malformed CBOR head in a list body")
    end = p + 1 + (1 << (ai - 24))
    if end > n:
        return 0, -1
    return int.from_bytes(buf[p + 1:end], "big"), end
