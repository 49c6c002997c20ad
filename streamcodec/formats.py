"""The codec's formats in one table: media types, classes, magic bytes, what a list body needs up
front, and the depth cap.

The server negotiates from this table and stores values by it; nothing else restates a media type
or a magic prefix.  Classes are named, not imported, so the table loads before the compiled modules
(``streamcodec`` picks a compiled module or its twin; :meth:`Format.encoder` asks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .limits import MAX_DEPTH_LIMIT

__all__ = ["Format", "FORMATS", "PROTOBUF_MAGIC", "CBOR_MAGIC", "by_media_type"]

#: First bytes of every Kubernetes protobuf value (typed or this project's Struct): "k8s" and a NUL.
PROTOBUF_MAGIC = b"k8s\x00"
#: First bytes of every CBOR value we write: the self-described CBOR tag 55799 (RFC 8949 §3.4.6),
#: as Kubernetes writes it, so a stored value tells its format.
CBOR_MAGIC = b"\xd9\xd9\xf7"


@dataclass(frozen=True)
class Format:
    """One wire format of the codec."""

    name: str
    encoder_class: str  #: attribute of :mod:`streamcodec`
    decoder_class: str
    #: accepted in Accept / Content-Type; the first is the canonical one
    media_types: Tuple[str, ...]
    #: first bytes of every value (``b""``: none, told apart by elimination: JSON)
    magic: bytes
    #: what a list body must know before its first item: ``None``, ``"count"`` (MessagePack has no
    #: indefinite-length array) or ``"size"`` (a typed protobuf list is one length-delimited message)
    list_needs: Optional[str]
    #: the highest ``max_depth`` its encoder and decoder accept
    max_depth_limit: int = MAX_DEPTH_LIMIT

    def encoder(self, **options: Any) -> Any:
        """A new encoder of this format (the compiled one, or its twin)."""
        import streamcodec

        return getattr(streamcodec, self.encoder_class)(**options)

    def decoder(self, **options: Any) -> Any:
        """A new decoder of this format (the compiled one, or its twin)."""
        import streamcodec

        return getattr(streamcodec, self.decoder_class)(**options)


FORMATS: Dict[str, Format] = {
    f.name: f
    for f in (
        Format("json", "JSONEncoder", "JSONDecoder", ("application/json",), b"", None),
        Format("cbor", "CBOREncoder", "CBORDecoder", ("application/cbor", "application/cbor-seq"), CBOR_MAGIC, None),
        Format("protobuf", "KubeProtoEncoder", "KubeProtoDecoder", ("application/vnd.kubernetes.protobuf",),
               PROTOBUF_MAGIC, "size"),
        Format("protobuf-struct", "ProtoEncoder", "ProtoDecoder", ("application/vnd.streamcodec.struct+protobuf",),
               PROTOBUF_MAGIC, None),
        Format("msgpack", "MsgpackEncoder", "MsgpackDecoder", ("application/vnd.msgpack", "application/msgpack"),
               b"", "count"),
    )
}

_BY_MEDIA_TYPE = {media_type: f for f in FORMATS.values() for media_type in f.media_types}


def by_media_type(media_type: str) -> Optional[Format]:
    """The format of a media type (lower case, without parameters), or None."""
    return _BY_MEDIA_TYPE.get(media_type)
