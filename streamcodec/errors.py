"""The one exception hierarchy of streamcodec.

Every error the library raises on purpose is a :class:`StreamCodecError`, so a
server can catch one class and map it to a response.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

__all__ = [
    "StreamCodecError",
    "EncodeError",
    "FrameTooLarge",
    "DecodeError",
    "TooManyValues",
    "DuplicateKey",
    "go_quote",
    "PoolExhausted",
    "BufferFull",
    "BufferExported",
]


class StreamCodecError(Exception):
    """Base class of every error streamcodec raises on purpose."""


class EncodeError(StreamCodecError, TypeError):
    """An object cannot be encoded exactly in the requested format.

    Raised for unsupported types, non-str dict keys, cycles, nesting deeper
    than :data:`streamcodec.limits.MAX_DEPTH`, lone surrogates, NaN/Infinity
    where the format cannot carry them and ints the format cannot carry
    exactly.  No output is produced (or the target buffer is left untouched).
    """


class FrameTooLarge(EncodeError):
    """A frame would exceed the encoder's ``max_frame_size``.

    The target buffer is left exactly as it was; no partial frame is emitted.
    """

    def __init__(self, message: str, max_frame_size: int) -> None:
        super().__init__(message)
        self.max_frame_size = max_frame_size


class BufferFull(StreamCodecError):
    """A frame fits ``max_frame_size`` but not the space left in the buffer.

    The buffer is left as it was: flush it (or take a fresh one) and retry.
    """


class DecodeError(StreamCodecError, ValueError):
    """Input bytes are malformed, truncated or over a limit.

    ``offset`` is the byte offset in the decoder's input stream (counted
    from the first byte ever fed) at which the problem was found.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


class TooManyValues(DecodeError):
    """A frame holds more values than the decoder's ``max_values``.

    Values are counted as the data model has them (the frame's own value, every
    element, every map key and value) before a value past the limit is built (the
    JSON, CBOR and MessagePack decoders count in their checking scan, before they
    build anything), so a small frame of many tiny containers cannot make a
    decoder build far more in memory than it read.
    """

    def __init__(self, max_values: int, offset: int) -> None:
        super().__init__(f"more than max_values={max_values} values in one frame", offset)
        self.max_values = max_values


#: Go's strconv.Quote escapes of the ASCII control characters that have a short form
_GO_SHORT_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(text: str) -> str:
    """``text`` quoted as Go's ``strconv.Quote`` (``%q``) quotes it: how Kubernetes' messages quote names.

    Printable characters stay as they are; quotes and backslashes are escaped, other characters
    written as ``\\xNN`` (ASCII), ``\\uNNNN`` or ``\\UNNNNNNNN``, so the result is always printable.
    """
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    out = []
    for ch in text:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ch in _GO_SHORT_ESCAPES:
            out.append(_GO_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


class DuplicateKey(DecodeError):
    """A map (a JSON object) holds a key more than once, in a decoder made with ``unique_keys=True``.

    ``paths``: the duplicated keys.  The JSON decoder reports every one, as Kubernetes' strict JSON
    decoding (``sigs.k8s.io/json``) does: by its path (``metadata.name``, ``spec.ports[0].name``), in
    document order, each path once, at most 100.  The CBOR and MessagePack decoders stop at the first,
    as Kubernetes' CBOR decoder does, and give its key alone, with ``index``, its entry's index in its
    map.  ``problems``: one text per path, Kubernetes' (``duplicate field "metadata.name"``).
    ``value``: (JSON) the frame decoded as without the option (the last of a key's values wins), so a
    caller may accept it and only warn; else None.  ``offset``: the first duplicate key's;
    ``offsets``: each path's (its repeat's), as ``paths`` has them.
    """

    #: Kubernetes' cap on the strict decoding errors of one object
    MAX_PATHS = 100

    def __init__(self, paths: Sequence[str], offset: int, *, index: Optional[int] = None, value: Any = None,
                 offsets: Optional[Sequence[int]] = None) -> None:
        self.paths = list(paths)
        self.offsets = list(offsets) if offsets is not None else [offset] * len(self.paths)
        self.problems = [f"duplicate field {go_quote(path)}" for path in self.paths]
        super().__init__(", ".join(self.problems), offset)
        self.index = index
        self.value = value


class PoolExhausted(StreamCodecError):
    """A non-blocking acquire found the pool's byte budget used up."""


class BufferExported(StreamCodecError, BufferError):
    """A pool buffer was cleared or released while a memoryview of it is alive.

    Recycling it then would let the holder of the view see other data, so
    the pool refuses instead.
    """
