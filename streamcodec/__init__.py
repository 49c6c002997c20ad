"""streamcodec: encode huge collections one object at a time into a bounded buffer pool.

Set the environment variable ``STREAMCODEC_PURE_PYTHON=1`` (before import) to
use the pure-Python twins of the compiled modules.  ``IMPLEMENTATION`` tells
which one is in use: ``"cython"`` only when every compiled module loaded.
"""

from __future__ import annotations

import os as _os

from .errors import (
    BufferExported,
    BufferFull,
    DecodeError,
    EncodeError,
    FrameTooLarge,
    PoolExhausted,
    StreamCodecError,
)
from .limits import PURE_PYTHON_ENV as _PURE_PYTHON_ENV
from .pool import BufferPool, PoolBuffer, PoolStats
from .protocol import Event

PURE_PYTHON: bool = _os.environ.get(_PURE_PYTHON_ENV, "") not in ("", "0")
_compiled_missing = []

if PURE_PYTHON:
    from ._json_py import JSONDecoder, JSONEncoder
else:
    try:
        from ._json import JSONDecoder, JSONEncoder
    except ImportError:
        _compiled_missing.append("_json")
        from ._json_py import JSONDecoder, JSONEncoder

IMPLEMENTATION: str = "python" if PURE_PYTHON or _compiled_missing else "cython"

__all__ = [
    "IMPLEMENTATION",
    "PURE_PYTHON",
    "BufferExported",
    "BufferFull",
    "BufferPool",
    "DecodeError",
    "EncodeError",
    "Event",
    "FrameTooLarge",
    "JSONDecoder",
    "JSONEncoder",
    "PoolBuffer",
    "PoolExhausted",
    "PoolStats",
    "StreamCodecError",
]
