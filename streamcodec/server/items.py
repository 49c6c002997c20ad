"""Stored values as list items and watch events: how one response's objects become frames.

:class:`ItemWriter` writes each stored value the cheapest way its format
allows (pass-through, transcoding, or decode and re-encode);
:func:`bookmark_object` and :func:`tombstone_object` are the objects a watch
makes up itself.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Dict, Optional, Tuple

from streamcodec import BufferFull, FrameTooLarge, PoolBuffer
from streamcodec.writer import FrameWriter

from .objects import (
    _JSON_LAYOUT_PREFIX,
    _PREFIX_LEN,
    _RV_KEY,
    decode_stored,
    detect_format,
    splice_resource_version,
    with_byte_strings,
)

__all__ = ["FrameCache", "ItemWriter", "bookmark_object", "tombstone_object"]

_CLOSE_BRACE = ord("}")


class FrameCache:
    """The watch-event frames encoded last, so each object is transcoded once, not once per reader.

    The readers of one collection (the members of a shared scan, the watchers of a shared watch)
    ask for the same objects at about the same time.  An entry is keyed by the etcd key, the
    revision, the event type, the format and the kind: everything a frame depends on (a key has
    one value at one revision, and every ItemWriter of one app encodes a kind alike).  At most
    ``max_bytes`` of frames, least recently used out first; a frame over a quarter of it is not
    kept.  kube-apiserver's watch cache does the same for its watchers (one serialization per
    object and format).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._frames: "collections.OrderedDict[Tuple[Any, ...], bytes]" = collections.OrderedDict()

    def get(self, key: Tuple[Any, ...]) -> Optional[bytes]:
        frame = self._frames.get(key)
        if frame is None:
            self.misses += 1
            return None
        self._frames.move_to_end(key)
        self.hits += 1
        return frame

    def put(self, key: Tuple[Any, ...], frame: bytes) -> None:
        if len(frame) * 4 > self.max_bytes:
            return
        old = self._frames.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self._frames[key] = frame
        self.bytes += len(frame)
        while self.bytes > self.max_bytes:
            self.bytes -= len(self._frames.popitem(last=False)[1])


_NO_PATHS: Dict[str, Any] = {}


@functools.lru_cache(maxsize=None)
def _list_suffix(kind: str) -> bytes:
    """What a stored object of ``kind`` ends with, that a list item drops (one per kind, not per response)."""
    return b',"kind":"%s","apiVersion":"v1"}' % kind.encode()


class ItemWriter:
    """How the stored values of one response become its list items and watch events.

    One per response: it knows the format, the kind and the encoder.

    * JSON in this server's stored layout goes out as stored (pass-through), with
      ``metadata.resourceVersion`` spliced in; a list item also loses the stored
      ``kind``/``apiVersion`` (kube-apiserver's list items carry neither; watch objects do).
    * Kubernetes' typed protobuf is transcoded from the stored JSON in one pass.
    * Everything else is decoded, patched and re-encoded; for CBOR, the kind's ``[]byte``
      fields (per the schema registry) become byte strings, as Kubernetes writes them.
    """

    __slots__ = ("encoder", "fmt", "kind", "passthrough", "typed", "byte_paths", "frames", "_list_suffix")

    def __init__(
        self, encoder: Any, fmt: str, resource: Any, passthrough: bool, byte_paths: Optional[Dict[str, Any]] = None,
        frames: Optional[FrameCache] = None,
    ) -> None:
        self.encoder = encoder
        #: watch-event frames shared with the app's other responses (None: encode every one)
        self.frames = frames
        self.fmt = fmt
        self.kind = resource.kind
        self.passthrough = passthrough and fmt == "json"
        self.typed = hasattr(encoder, "encode_stored_event_into")
        self.byte_paths = byte_paths or _NO_PATHS
        self._list_suffix = _list_suffix(resource.kind)

    @property
    def needs_items_size(self) -> bool:
        """A list body that needs its items' total size before them (typed protobuf)."""
        return self.typed

    def _object(self, value: Any, revision: int, list_item: bool) -> Dict[str, Any]:
        obj = decode_stored(value, revision)
        if list_item:
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
        if self.byte_paths:
            obj = with_byte_strings(obj, self.byte_paths)
        return obj

    def item_size(self, value: Any, revision: int) -> int:
        """Bytes one list item adds to a typed protobuf list body."""
        if detect_format(value) == "json":
            return int(self.encoder.list_item_size(value, revision))
        probe = PoolBuffer(self.encoder.max_frame_size)
        return int(self.encoder.encode_list_item_into(self._object(value, revision, True), probe, 0))

    async def item(self, writer: FrameWriter, value: Any, revision: int) -> None:
        """One list item."""
        if self.passthrough:
            spliced = splice_resource_version(value, revision, drop_suffix=self._list_suffix)
            if spliced is not None:
                await writer.list_raw_item(spliced)
                return
        elif self.typed and detect_format(value) == "json":
            encode = self.encoder.encode_stored_list_item_into
            await writer.list_item_with(lambda buf, index: encode(value, revision, buf, index))
            return
        await writer.list_item(self._object(value, revision, True))

    async def event(self, writer: FrameWriter, type: str, value: Any, revision: int, key: Optional[bytes] = None) -> None:
        """One watch event of the value at etcd key ``key`` (shared through the frame cache when given)."""
        if self.passthrough and bytes(value[:_PREFIX_LEN]) == _JSON_LAYOUT_PREFIX:
            await writer.write(_SplicedEventInto(writer.encoder, type, value, revision))  # a copy: cheaper than a cache
            return
        frames = self.frames if key is not None else None
        if frames is not None:
            entry = (bytes(key or b""), revision, type, self.fmt, self.kind)
            frame = frames.get(entry)
            if frame is not None:
                await writer.write_bytes(frame)
                return
        write_frame: Callable[[PoolBuffer], int]
        if self.typed and detect_format(value) == "json":
            encode = self.encoder.encode_stored_event_into
            write_frame = lambda buf: encode(type, value, revision, buf)  # noqa: E731
        else:
            obj = self._object(value, revision, False)
            write_frame = lambda buf: writer.encoder.encode_event_into(type, obj, buf)  # noqa: E731
        if frames is None:
            await writer.write(write_frame)
            return
        cache = frames

        def write_and_keep(buf: PoolBuffer) -> int:
            start = buf.length
            n = int(write_frame(buf))
            cache.put(entry, bytes(memoryview(buf.data)[start : start + n]))
            return n

        await writer.write(write_and_keep)


#: A stored object in this server's layout with nothing in it: finds where an
#: encoder puts the raw object inside its event frame.
_PROBE_OBJECT = _JSON_LAYOUT_PREFIX + b"}}"
_event_edges: Dict[Tuple[type, str], Tuple[bytes, bytes]] = {}


def _raw_event_edges(encoder: Any, type: str) -> Tuple[bytes, bytes]:
    """(bytes before, bytes after) the raw object in ``encoder``'s raw event frame."""
    key = (encoder.__class__, type)
    edges = _event_edges.get(key)
    if edges is None:
        frame = encoder.encode_raw_event(type, _PROBE_OBJECT)
        at = frame.index(_PROBE_OBJECT)
        edges = _event_edges[key] = (frame[:at], frame[at + len(_PROBE_OBJECT) :])
    return edges


#: Below this many bytes a plain search is already cheap.
_QUOTE_WALK_MIN_BYTES = 64 * 1024
#: Quotes the walk tries before it hands the rest to the plain search.
_QUOTE_WALK_LIMIT = 64


def _find_key(data: bytearray, start: int, end: int) -> int:
    """Where ``"resourceVersion"`` first occurs in ``data[start:end]``, or -1.

    ``bytearray.find`` with a 17-byte needle runs at ~6 GB/s (two-way), which
    made this check the costliest step of a large object's event.  Large
    stored objects are mostly one long string (a Secret's base64): walking
    its few quotes with the memchr-based one-byte search is ~10 x faster.  A
    quote-dense value stops the walk after a few quotes and is searched
    plainly from there, so no input gets much slower.
    """
    if end - start < _QUOTE_WALK_MIN_BYTES:
        return data.find(_RV_KEY, start, end)
    pos = start
    for _ in range(_QUOTE_WALK_LIMIT):
        quote = data.find(b'"', pos, end)
        if quote == -1 or data.startswith(_RV_KEY, quote, end):
            return quote
        pos = quote + 1
    return data.find(_RV_KEY, pos, end)


class _SplicedEventInto:
    """Writes a stored JSON object as a raw watch event with resourceVersion spliced in, in the pool buffer.

    The encoder writes the stored bytes into the buffer as they are (its
    ``encode_raw_event_into``: the one copy of the object); then the tail
    after ``{"metadata":{`` moves right, in place, to make room for
    ``"resourceVersion":"N",``.  No object-sized temporary is allocated.
    The checks of :func:`splice_resource_version` run on the frame where it
    lies: the object starts with this server's layout prefix and holds no
    ``"resourceVersion"``.  When they fail the frame is undone and written the
    slow way (decoded, patched, re-encoded).
    """

    __slots__ = ("encoder", "type", "value", "revision")

    def __init__(self, encoder: Any, type: str, value: Any, revision: int) -> None:
        self.encoder = encoder
        self.type = type
        self.value = value
        self.revision = revision

    def __call__(self, buf: PoolBuffer) -> int:
        encoder = self.encoder
        header, trailer = _raw_event_edges(encoder, self.type)
        start = buf.length
        n = encoder.encode_raw_event_into(self.type, self.value, buf)  # BufferFull leaves buf as it was
        data = buf.data
        at = start + len(header) + _PREFIX_LEN  # just inside the top-level metadata object
        end = start + n - len(trailer)  # just past the object
        if (
            at >= end
            or data[start : start + len(header)] != header
            or data[end : start + n] != trailer
            or data[at - _PREFIX_LEN : at] != _JSON_LAYOUT_PREFIX
            or _find_key(data, at, end) != -1
        ):
            buf.length = start
            return encoder.encode_event_into(self.type, decode_stored(self.value, self.revision), buf)
        insert = b'"resourceVersion":"%d"%s' % (self.revision, b"" if data[at] == _CLOSE_BRACE else b",")
        size = n + len(insert)
        if size > encoder.max_frame_size:
            buf.length = start
            raise FrameTooLarge(f"frame of {size} bytes exceeds max_frame_size {encoder.max_frame_size}", encoder.max_frame_size)
        if start + size > len(data):
            buf.length = start
            raise BufferFull(f"frame of {size} bytes does not fit the {len(data) - start} bytes left in the buffer")
        with memoryview(data) as mv:
            # memoryview slice assignment copies overlapping ranges correctly (memmove).
            mv[at + len(insert) : start + size] = mv[at : start + n]
            mv[at : at + len(insert)] = insert
        buf.length = start + size
        return size


def bookmark_object(kind: str, revision: int, initial_events_end: bool) -> Dict[str, Any]:
    metadata: Dict[str, Any] = {"resourceVersion": str(revision)}
    if initial_events_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"kind": kind, "apiVersion": "v1", "metadata": metadata}


def tombstone_object(kind: str, key: bytes, revision: int) -> Dict[str, Any]:
    """A DELETED event's object when etcd no longer had the previous value."""
    parts = key.decode("utf-8", "replace").rstrip("/").split("/")
    metadata: Dict[str, Any] = {"name": parts[-1], "resourceVersion": str(revision)}
    return {"kind": kind, "apiVersion": "v1", "metadata": metadata}
