"""Kubernetes-style protobuf codec (``_proto`` compiled, ``_proto_py`` twin).

Object frame: ``k8s\\x00`` + ``runtime.Unknown`` {1: typeMeta {1: apiVersion,
2: kind}, 2: raw = the object as a ``google.protobuf.Struct``, 3:
contentEncoding = "", 4: contentType = ""}; typeMeta and both content fields
are always written, as Kubernetes' own serializer writes them.  Values: dict
-> Struct, list/tuple -> ListValue, str -> string, bool -> bool, None -> null,
int/float -> double (ints beyond ±2**53 are refused), bytes -> base64 string.
Canonical protobuf: minimal varints, fields in number order, map keys sorted
by their UTF-8 bytes.

Watch stream: 4-byte big-endian length + ``metav1.WatchEvent`` {1: type, 2:
RawExtension {1: raw = object frame}} per event.

List body (a deliberate deviation from Kubernetes, whose List needs the byte
length of all items before the first byte, which a stream from etcd does not
know): the same length-delimited framing, a first frame holding the list
header (object frame of Struct {"metadata": ..., "count": n when known} with
the list's apiVersion/kind in typeMeta), then one frame per item holding the
item's object frame; nothing marks the end.

``streamcodec/streamcodec.proto`` describes every message.
"""

from typing import Any, ClassVar, Iterator, Optional

from .pool import PoolBuffer
from .protocol import BytesLike, Event

__all__ = ["ProtoEncoder", "ProtoDecoder"]

MAGIC: bytes
CONTENT_TYPE: str
STREAM_CONTENT_TYPE: str
#: Largest max_depth accepted (keeps the compiled codec's recursion shallow).

class ProtoEncoder:
    """Encodes objects, watch events and list bodies in Kubernetes' protobuf framing.

    Raises :class:`~streamcodec.EncodeError` for anything it cannot carry
    exactly (non-dict top level, unsupported types, non-str keys, cycles,
    nesting over ``max_depth``, lone surrogates, ints beyond ±2**53),
    :class:`~streamcodec.FrameTooLarge` over ``max_frame_size`` (the whole
    frame, length prefix included) and :class:`~streamcodec.BufferFull` when
    a frame fits the limit but not the buffer; ``*_into`` leave the buffer
    unchanged on every error.
    """

    content_type: ClassVar[str]
    stream_content_type: ClassVar[str]

    def __init__(self, *, max_frame_size: int = ..., max_depth: int = ...) -> None: ...
    @property
    def max_frame_size(self) -> int: ...
    @property
    def max_depth(self) -> int: ...
    def encode(self, obj: Any) -> bytes:
        """One object frame: ``k8s\\x00`` + Unknown holding ``obj`` (a dict) as a Struct."""
    def encode_into(self, obj: Any, buf: PoolBuffer) -> int:
        """Append ``encode(obj)`` to ``buf``; returns its size."""
    def encode_event(self, type: str, obj: Any) -> bytes:
        """Length + WatchEvent{type, RawExtension{object frame of obj}}."""
    def encode_event_into(self, type: str, obj: Any, buf: PoolBuffer) -> int: ...
    def encode_raw_event(self, type: str, raw: BytesLike) -> bytes:
        """Like encode_event with ``raw`` (an earlier object frame, checked to
        start with ``k8s\\x00``) embedded verbatim."""
    def encode_raw_event_into(self, type: str, raw: BytesLike, buf: PoolBuffer) -> int: ...
    def encode_list_start_into(
        self,
        buf: PoolBuffer,
        *,
        kind: str,
        api_version: str,
        metadata: dict[str, Any],
        count: Optional[int] = None,
    ) -> int:
        """Length + object frame of the list header (see module docstring)."""
    def encode_list_item_into(self, obj: Any, buf: PoolBuffer, index: int) -> int:
        """Length + the item's object frame (``index`` is unused: no separators)."""
    def encode_raw_list_item_into(self, raw: BytesLike, buf: PoolBuffer, index: int) -> int:
        """Length + ``raw`` (an earlier object frame) verbatim."""
    def encode_list_end_into(self, buf: PoolBuffer, count: int) -> int:
        """Writes nothing (returns 0): the frame stream simply ends."""

class ProtoDecoder:
    """Sans-IO decoder: ``decode`` one object frame, or ``feed`` a watch stream and iterate events.

    Numbers come back as floats.  Malformed, truncated or over-limit input
    raises :class:`~streamcodec.DecodeError` (offset counted from the first
    byte fed); a declared frame length over ``max_frame_size`` is refused as
    soon as its 4 bytes arrive; after an error every call raises again.

    ``max_values`` (None: no limit) bounds the values one frame (one event's
    object) decodes into: the object, each key, each value, each list element
    count 1.  Over it, :class:`~streamcodec.TooManyValues` is raised before
    the value that goes over is built, since a frame of tiny containers
    decodes into far more memory than its bytes.
    """

    def __init__(self, *, max_frame_size: int = ..., max_depth: int = ..., max_values: Optional[int] = None) -> None: ...
    @property
    def max_frame_size(self) -> int: ...
    @property
    def max_depth(self) -> int: ...
    @property
    def max_values(self) -> Optional[int]: ...
    def decode(self, frame: BytesLike) -> Any: ...
    def feed(self, data: BytesLike) -> None: ...
    def __iter__(self) -> Iterator[Event]: ...
    def __next__(self) -> Event: ...
    def close(self) -> None:
        """End of stream: raises DecodeError if a partial frame is left over."""
