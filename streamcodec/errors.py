"""The one exception hierarchy of streamcodec.

Every error the library raises on purpose is a :class:`StreamCodecError`, so a
server can catch one class and map it to a response.
"""

from __future__ import annotations

__all__ = [
    "StreamCodecError",
    "EncodeError",
    "FrameTooLarge",
    "DecodeError",
    "TooManyValues",
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


class PoolExhausted(StreamCodecError):
    """A non-blocking acquire found the pool's byte budget used up."""


class BufferExported(StreamCodecError, BufferError):
    """A pool buffer was cleared or released while a memoryview of it is alive.

    Recycling it then would let the holder of the view see other data, so
    the pool refuses instead.
    """
