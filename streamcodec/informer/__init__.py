"""A watch-list informer for Python: keeps a local store of one Kubernetes resource in sync.

Depends on the codec (its decoders) and the standard library only, never on :mod:`streamcodec.storage`
or :mod:`streamcodec.server`: it talks to any Kubernetes API server.  See :class:`Reflector`.
"""

from .decode import (
    DEFAULT_MAX_OBJECT_BYTES, CBORListReader, CBORWatchReader, DecodeFailed, JSONListReader, JSONWatchReader, ProtoListReader,
    ProtoWatchReader,
)
from .reflector import INITIAL_EVENTS_END, InformerError, InformerEvent, Reflector, WatchListUnavailable, object_key

#: client-go's name for what this is
Informer = Reflector

__all__ = [
    "Reflector", "Informer", "InformerEvent", "InformerError", "WatchListUnavailable", "INITIAL_EVENTS_END",
    "object_key", "DecodeFailed", "JSONListReader", "JSONWatchReader", "CBORListReader", "CBORWatchReader", "ProtoListReader",
    "ProtoWatchReader",
    "DEFAULT_MAX_OBJECT_BYTES",
]
