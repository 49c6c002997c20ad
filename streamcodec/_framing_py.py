"""Helpers shared by the pure-Python CBOR and MessagePack twins.

* argument checks common to every encoder/decoder constructor;
* :func:`put_frame`: the one place a finished frame is copied into a
  :class:`~streamcodec.pool.PoolBuffer` (with the FrameTooLarge / BufferFull
  distinction the contract asks for);
* :class:`StreamDecoderBase`: the sans-IO framing state machine (buffering,
  frame boundaries, sticky errors, offsets) around a format's resumable
  *scanner* and its *builder*.

The compiled modules carry their own copies of this logic in C; the tests
check that both give identical results.
"""

from __future__ import annotations

import collections
from typing import Any, Deque, Iterator, List, Optional, Tuple

from .errors import BufferFull, DecodeError, EncodeError, FrameTooLarge
from .limits import EVENT_TYPES
from .pool import PoolBuffer
from .protocol import Event

__all__ = [
    "HARD_MAX_DEPTH",
    "check_limits",
    "check_event_type",
    "put_frame",
    "target_buffer",
    "StreamDecoderBase",
]

#: The largest ``max_depth`` a codec accepts.  The encoders recurse once per
#: container level (the pure-Python twins on the Python stack, whose default
#: limit is 1000 frames), so the limit must stay well below that.
HARD_MAX_DEPTH = 512


def check_limits(max_frame_size: int, max_depth: int) -> None:
    """ValueError unless both limits are usable ints."""
    if type(max_frame_size) is not int or max_frame_size <= 0:
        raise ValueError(f"max_frame_size must be a positive int, got {max_frame_size!r}")
    if type(max_depth) is not int or not 1 <= max_depth <= HARD_MAX_DEPTH:
        raise ValueError(f"max_depth must be an int in [1, {HARD_MAX_DEPTH}], got {max_depth!r}")


def check_event_type(type_: Any) -> str:
    if type(type_) is not str or type_ not in EVENT_TYPES:
        raise EncodeError(f"event type must be one of {', '.join(EVENT_TYPES)}; got {type_!r}")
    return type_


def raw_bytes(raw: Any) -> bytes:
    """The bytes of a raw frame (bytes, bytearray or contiguous memoryview)."""
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    if isinstance(raw, memoryview):
        if not raw.c_contiguous:
            raise EncodeError("raw frame memoryview is not C-contiguous")
        return raw.tobytes()
    raise EncodeError(f"raw frame must be bytes, bytearray or memoryview, not {type(raw).__name__}")


def target_buffer(buf: Any) -> Tuple[bytearray, int]:
    """``(buf.data, buf.length)`` after checking they are what a PoolBuffer holds."""
    if not isinstance(buf, PoolBuffer):
        raise TypeError(f"buf must be a PoolBuffer, not {type(buf).__name__}")
    data, length = buf.data, buf.length
    if type(data) is not bytearray or type(length) is not int or not 0 <= length <= len(data):
        raise ValueError("PoolBuffer is inconsistent (data must be a bytearray, 0 <= length <= capacity)")
    return data, length


def put_frame(frame: bytes, buf: PoolBuffer, max_frame_size: int) -> int:
    """Copy one finished frame into ``buf`` at ``buf.length``; the buffer is
    untouched on error."""
    data, length = target_buffer(buf)
    n = len(frame)
    if n > max_frame_size:
        raise FrameTooLarge(f"frame of {n} bytes exceeds max_frame_size {max_frame_size}", max_frame_size)
    if n > len(data) - length:
        raise BufferFull(f"frame of {n} bytes does not fit the {len(data) - length} bytes left in the buffer")
    data[length : length + n] = frame
    buf.length = length + n
    return n


class StreamDecoderBase:
    """Sans-IO framing shared by the twins' decoders.

    A format supplies ``_scan`` (resumable: finds where the frame that starts
    at ``self._frame_start`` ends, keeping its progress in a state object, and
    validates its structure) and ``_build`` (turns a complete, already
    validated frame into Python objects).

    Bytes are buffered only while they belong to a frame that is not yet
    complete, and at most ``max_frame_size`` of them: a longer partial frame
    is an error.  Errors are sticky: once one has been raised, every later
    ``feed``, iteration and ``close`` raises it again.
    """

    def __init__(self, *, max_frame_size: int, max_depth: int) -> None:
        check_limits(max_frame_size, max_depth)
        self._max_frame_size = max_frame_size
        self._max_depth = max_depth
        self._buf = bytearray()
        self._base = 0  # absolute stream offset of self._buf[0]
        self._frame_start = 0  # index in _buf of the frame being scanned
        self._scan_state: Any = None  # format-specific resumable scanner state
        self._ready: Deque[Tuple[int, int]] = collections.deque()  # complete frames in _buf
        self._pending: Optional[DecodeError] = None  # found, not yet raised
        self._error: Optional[DecodeError] = None  # raised; raised again forever

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @property
    def max_depth(self) -> int:
        return self._max_depth

    # -- format hooks ------------------------------------------------------
    def _new_scan_state(self, pos: int) -> Any:  # pragma: no cover - abstract
        """Scanner state for a frame starting at ``pos``."""
        raise NotImplementedError

    def _scan(self, data: Any, end: int, state: Any, frame_start: int, depth_limit: int, base: int) -> Optional[int]:  # pragma: no cover - abstract
        """Advance ``state`` over ``data[:end]``; the frame's end index once complete, else None.

        Raises DecodeError (offset ``base`` + index) for malformed input, a
        declared length reaching past ``max_frame_size`` or nesting deeper
        than ``depth_limit``.
        """
        raise NotImplementedError

    def _build(self, data: Any, start: int, end: int, base: int) -> Any:  # pragma: no cover - abstract
        """The object of the complete, scanned frame ``data[start:end]``."""
        raise NotImplementedError

    @staticmethod
    def _rebase(state: Any, cut: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- one frame ---------------------------------------------------------
    def decode(self, frame: Any) -> Any:
        """Decode one complete object frame (no trailing bytes allowed)."""
        if isinstance(frame, memoryview):
            if not frame.c_contiguous:
                raise TypeError("decode() needs a C-contiguous buffer")
            data = frame.tobytes()
        elif isinstance(frame, (bytes, bytearray)):
            data = bytes(frame)
        else:
            raise TypeError(f"decode() takes bytes-like data, not {type(frame).__name__}")
        n = len(data)
        if n > self._max_frame_size:
            raise DecodeError(f"frame of {n} bytes exceeds max_frame_size {self._max_frame_size}", self._max_frame_size)
        end = self._scan(data, n, self._new_scan_state(0), 0, self._max_depth, 0)
        if end is None:
            raise DecodeError("truncated frame", n)
        if end != n:
            raise DecodeError(f"{n - end} bytes after the end of the frame", end)
        return self._build(data, 0, n, 0)

    # -- stream ------------------------------------------------------------
    def feed(self, data: Any) -> None:
        """Append bytes of the stream; complete frames become iterable events."""
        if self._error is not None:
            raise self._error
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"feed() takes bytes-like data, not {type(data).__name__}")
        if self._pending is not None:
            return  # the stream is already broken at an earlier byte: drop the rest
        if isinstance(data, memoryview) and not data.c_contiguous:
            data = data.tobytes()
        self._buf += data
        buf = self._buf
        while self._frame_start < len(buf):
            if self._scan_state is None:
                self._scan_state = self._new_scan_state(self._frame_start)
            try:
                # The event map is one level above the object it carries.
                end = self._scan(buf, len(buf), self._scan_state, self._frame_start, self._max_depth + 1, self._base)
            except DecodeError as exc:
                self._fail_scan(exc)
                return
            if end is None:
                partial = len(buf) - self._frame_start
                if partial > self._max_frame_size:
                    self._fail_scan(
                        DecodeError(
                            f"frame exceeds max_frame_size {self._max_frame_size}",
                            self._base + self._frame_start + self._max_frame_size,
                        )
                    )
                return
            self._ready.append((self._frame_start, end))
            self._frame_start = end
            self._scan_state = None

    def _fail_scan(self, exc: DecodeError) -> None:
        self._pending = exc
        # Keep only the complete frames still to be delivered.
        del self._buf[self._frame_start :]

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self._error is not None:
            raise self._error
        if self._ready:
            start, end = self._ready.popleft()
            try:
                obj = self._build(self._buf, start, end, self._base)
                event = self._event(obj, self._base + start)
            except DecodeError as exc:
                self._error = exc
                self._ready.clear()
                self._buf = bytearray()
                raise
            if not self._ready:
                self._compact()
            return event
        if self._pending is not None:
            self._error = self._pending
            raise self._error
        raise StopIteration

    def _compact(self) -> None:
        # Called when every complete frame has been delivered: drop them.
        cut = self._frame_start
        if cut:
            del self._buf[:cut]
            self._base += cut
            self._frame_start = 0
            if self._scan_state is not None:
                self._rebase(self._scan_state, cut)

    @staticmethod
    def _event(obj: Any, offset: int) -> Event:
        if type(obj) is not dict or len(obj) != 2 or "type" not in obj or "object" not in obj:
            raise DecodeError('event frame is not a map of exactly "type" and "object"', offset)
        type_ = obj["type"]
        if type_ not in EVENT_TYPES:
            raise DecodeError(f"unknown event type {type_!r}", offset)
        return Event(type_, obj["object"])

    def close(self) -> None:
        """End of stream: raises DecodeError if a partial frame is left over."""
        if self._error is not None:
            raise self._error
        if self._pending is not None and not self._ready:
            self._error = self._pending
            raise self._error
        if self._frame_start < len(self._buf):
            self._error = DecodeError(
                f"stream ends inside a frame that starts at byte {self._base + self._frame_start}",
                self._base + len(self._buf),
            )
            raise self._error

