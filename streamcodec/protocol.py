"""The contract every format implements: one symmetric API per format.

``JSONEncoder``, ``CBOREncoder``, ``ProtoEncoder`` and ``MsgpackEncoder`` (and
their decoders) all have exactly these methods, in the compiled module and in
its pure-Python twin alike.  The typing ``Protocol`` classes below are the
reference; tests check every implementation against them.

Vocabulary
----------
object frame
    What ``encode(obj)`` returns: one complete object in the format (JSON
    text; CBOR item behind the self-describe tag d9 d9 f7; protobuf-like
    ``k8s\\x00`` + ``runtime.Unknown`` envelope; one MessagePack object).
event frame
    One watch event exactly as it appears in a watch stream (JSON line;
    tagged CBOR map in a CBOR sequence; 4-byte big-endian length + WatchEvent
    message; MessagePack map).  The event's object is the object frame.
raw
    An object frame produced earlier (typically the value stored in etcd) in
    the encoder's own format.  The ``raw`` methods embed it without decoding
    or re-encoding it (pass-through); where the format forbids a byte in a
    frame (a newline in JSON lines) the encoder re-encodes instead.
``*_into`` methods
    Append one frame to a :class:`~streamcodec.pool.PoolBuffer` at its
    ``length`` and return the frame's size.  On any error (``EncodeError``,
    ``FrameTooLarge``, ``BufferFull``) the buffer is left as it was: same
    ``length``, same bytes before it (the space past ``length`` is free and
    an encoder may have written into it before finding the frame too big).
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterator, NamedTuple, Optional, Protocol, Union

from .pool import PoolBuffer

__all__ = ["Event", "Encoder", "Decoder", "BytesLike"]

BytesLike = Union[bytes, bytearray, memoryview]


class Event(NamedTuple):
    """One decoded watch event."""

    type: str  #: ADDED, MODIFIED, DELETED, BOOKMARK or ERROR
    object: Any


class Encoder(Protocol):
    #: MIME type of an object frame / list body
    content_type: ClassVar[str]
    #: MIME type of a watch stream of event frames
    stream_content_type: ClassVar[str]

    @property
    def max_frame_size(self) -> int: ...

    def encode(self, obj: Any) -> bytes: ...
    def encode_into(self, obj: Any, buf: PoolBuffer) -> int: ...

    def encode_event(self, type: str, obj: Any) -> bytes: ...
    def encode_event_into(self, type: str, obj: Any, buf: PoolBuffer) -> int: ...

    def encode_raw_event(self, type: str, raw: BytesLike) -> bytes: ...
    def encode_raw_event_into(self, type: str, raw: BytesLike, buf: PoolBuffer) -> int: ...

    # A list body is: start, then one item per object, then end.
    # Encoders keep no per-list state (one encoder serves many streams):
    # ``index`` is the item's position (0 for the first) so an encoder can
    # write separators; ``count`` is the number of items when known up front.
    # A format that cannot express an unknown count raises ValueError at
    # start when it is None; the caller (streamcodec.writer) checks that
    # exactly ``count`` items were written before calling end.
    def encode_list_start_into(
        self,
        buf: PoolBuffer,
        *,
        kind: str,
        api_version: str,
        metadata: dict,
        count: Optional[int] = None,
    ) -> int: ...
    def encode_list_item_into(self, obj: Any, buf: PoolBuffer, index: int) -> int: ...
    def encode_raw_list_item_into(self, raw: BytesLike, buf: PoolBuffer, index: int) -> int: ...
    def encode_list_end_into(self, buf: PoolBuffer, count: int) -> int: ...


class Decoder(Protocol):
    """Sans-IO: ``decode`` one object frame, or ``feed`` a watch stream and iterate events."""

    def decode(self, frame: BytesLike) -> Any: ...
    def feed(self, data: BytesLike) -> None: ...
    def __iter__(self) -> Iterator[Event]: ...
    def close(self) -> None:
        """End of stream: raises DecodeError if a partial frame is left over."""
        ...
