"""streamcodec: encode huge collections one object at a time into a bounded buffer pool.

Set the environment variable ``STREAMCODEC_PURE_PYTHON=1`` (before import) to
use the pure-Python twins of the compiled modules.  ``IMPLEMENTATION`` tells
which one is in use: ``"cython"`` only when every compiled module loaded.
"""

from __future__ import annotations

import importlib as _importlib
import os as _os
from types import ModuleType as _ModuleType
from typing import TYPE_CHECKING as _TYPE_CHECKING

from .errors import (
    BufferExported,
    BufferFull,
    DecodeError,
    DuplicateKey,
    EncodeError,
    FrameTooLarge,
    PoolExhausted,
    StreamCodecError,
    TooManyValues,
)
from .limits import PURE_PYTHON_ENV as _PURE_PYTHON_ENV
from .pool import BufferPool, PoolBuffer, PoolStats
from .protocol import Event

PURE_PYTHON: bool = _os.environ.get(_PURE_PYTHON_ENV, "") not in ("", "0")
_compiled_missing: list = []


def _load(name: str) -> _ModuleType:
    """The compiled module, or its pure-Python twin when asked for (or not built)."""
    if not PURE_PYTHON:
        try:
            return _importlib.import_module(f"streamcodec.{name}")
        except ImportError:
            _compiled_missing.append(name)
    return _importlib.import_module(f"streamcodec.{name}_py")


if _TYPE_CHECKING:  # the stubs of the compiled modules describe both twins
    from ._cbor import CBORDecoder, CBOREncoder
    from ._json import JSONDecoder, JSONEncoder
    from ._kubeproto import KubeProtoDecoder, KubeProtoEncoder
    from ._msgpack import MsgpackDecoder, MsgpackEncoder
    from ._proto import ProtoDecoder, ProtoEncoder
else:
    _json, _cbor, _msgpack, _proto, _kubeproto = (_load(m) for m in ("_json", "_cbor", "_msgpack", "_proto", "_kubeproto"))
    KubeProtoEncoder, KubeProtoDecoder = _kubeproto.KubeProtoEncoder, _kubeproto.KubeProtoDecoder  # type: ignore[misc]
    JSONEncoder, JSONDecoder = _json.JSONEncoder, _json.JSONDecoder  # type: ignore[misc]
    CBOREncoder, CBORDecoder = _cbor.CBOREncoder, _cbor.CBORDecoder  # type: ignore[misc]
    MsgpackEncoder, MsgpackDecoder = _msgpack.MsgpackEncoder, _msgpack.MsgpackDecoder  # type: ignore[misc]
    ProtoEncoder, ProtoDecoder = _proto.ProtoEncoder, _proto.ProtoDecoder  # type: ignore[misc]

IMPLEMENTATION: str = "python" if PURE_PYTHON or _compiled_missing else "cython"

__all__ = [
    "IMPLEMENTATION",
    "PURE_PYTHON",
    "BufferExported",
    "BufferFull",
    "BufferPool",
    "CBORDecoder",
    "CBOREncoder",
    "DecodeError",
    "DuplicateKey",
    "EncodeError",
    "Event",
    "FrameTooLarge",
    "JSONDecoder",
    "JSONEncoder",
    "KubeProtoDecoder",
    "KubeProtoEncoder",
    "MsgpackDecoder",
    "MsgpackEncoder",
    "PoolBuffer",
    "PoolExhausted",
    "PoolStats",
    "ProtoDecoder",
    "ProtoEncoder",
    "StreamCodecError",
    "TooManyValues",
]
