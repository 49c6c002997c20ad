"""Plumbing shared by the CBOR and MessagePack codecs.

* argument checks common to every encoder/decoder constructor;
* :func:`put_frame`: the one place a finished frame is copied into a
  :class:`~streamcodec.pool.PoolBuffer` (with the FrameTooLarge / BufferFull
  distinction the contract asks for);
* :class:`EncodingBase` and :class:`FrameEncoderBase`: the pure-Python
  twins' walk over the data model and their Encoder protocol methods
  (frames, events, raw pass-through, list bodies); a format supplies only
  its heads, numbers and envelope bytes;
* :class:`StreamDecoderBase`: the sans-IO framing state machine (buffering,
  frame boundaries, sticky errors, offsets) around a format's resumable
  *scanner* and its *builder*.  The twins' decoders and the compiled ones
  alike are built on it: a compiled module supplies a compiled scanner and
  builder, so the stream logic exists once.

The compiled encoders keep their plumbing in C (``_binary_codec.pxi``)
because it runs once per encoded object; the tests check that both give
identical results.
"""

from __future__ import annotations

import collections
import sys
from typing import Any, Callable, ClassVar, Deque, Dict, Iterator, List, Optional, Tuple, Type

from .errors import BufferFull, DecodeError, DuplicateKey, EncodeError, FrameTooLarge
from .limits import DEFAULT_MAX_FRAME_SIZE, EVENT_TYPES, MAX_DEPTH, MAX_DEPTH_LIMIT
from .pool import PoolBuffer
from .protocol import BytesLike, Event

__all__ = [
    "check_limits",
    "check_event_type",
    "check_list_header",
    "event_prefixes",
    "put_frame",
    "raw_bytes",
    "target_buffer",
    "EncodingBase",
    "FrameEncoderBase",
    "Limits",
    "ScanState",
    "StreamDecoderBase",
    "close_item",
]



def check_limits(max_frame_size: int, max_depth: int) -> None:
    """ValueError unless both limits are usable ints."""
    if type(max_frame_size) is not int or max_frame_size <= 0:
        raise ValueError(f"max_frame_size must be a positive int, got {max_frame_size!r}")
    if type(max_depth) is not int or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be an int in [1, {MAX_DEPTH_LIMIT}], got {max_depth!r}")


def check_max_values(max_values: Optional[int]) -> int:
    """A decoder's ``max_values`` as the count its scanner starts from (None: no limit), or ValueError."""
    if max_values is None:
        return sys.maxsize
    if type(max_values) is not int or max_values < 1:
        raise ValueError(f"max_values must be a positive int or None, got {max_values!r}")
    return min(max_values, sys.maxsize)  # a compiled scanner counts in a Py_ssize_t


def check_unique_keys(unique_keys: bool) -> bool:
    """A decoder's ``unique_keys`` (a key twice in one map is :class:`~streamcodec.errors.DuplicateKey`), or ValueError."""
    if type(unique_keys) is not bool:
        raise ValueError(f"unique_keys must be a bool, got {unique_keys!r}")
    return unique_keys


def duplicate_key(key: str, index: int, offset: int) -> DuplicateKey:
    """The error of a CBOR / MessagePack map whose entry ``index`` (its key's head at ``offset``) repeats ``key``."""
    return DuplicateKey([key], offset, index=index)


def check_event_type(type_: Any) -> str:
    if type(type_) is not str or type_ not in EVENT_TYPES:
        raise EncodeError(f"event type must be one of {', '.join(EVENT_TYPES)}; got {type_!r}")
    return type_


def check_list_header(kind: Any, api_version: Any, metadata: Any) -> None:
    """EncodeError unless a list body's header fields have the types the contract asks for."""
    if type(kind) is not str or type(api_version) is not str:
        raise EncodeError("kind and api_version must be str")
    if not isinstance(metadata, dict):
        raise EncodeError(f"metadata must be a dict, not {type(metadata).__name__}")


def event_prefixes(envelope_head: bytes, text: Callable[[str], bytes]) -> Dict[str, bytes]:
    """Per event type, the bytes of an event frame before its object:
    ``envelope_head`` (a two-entry map head) "type" <type> "object"."""
    return {t: envelope_head + text("type") + text(t) + text("object") for t in EVENT_TYPES}


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


class Limits:
    """The two limits every encoder and decoder takes, checked once."""

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, max_depth: int = MAX_DEPTH) -> None:
        check_limits(max_frame_size, max_depth)
        self._max_frame_size = max_frame_size
        self._max_depth = max_depth

    @property
    def max_frame_size(self) -> int:
        """Largest frame written or accepted, in bytes (FrameTooLarge / DecodeError beyond)."""
        return self._max_frame_size

    @property
    def max_depth(self) -> int:
        """Deepest container nesting of an object written or accepted (EncodeError / DecodeError beyond)."""
        return self._max_depth


def _unset_head(n: int, /) -> bytes:  # pragma: no cover - every format sets its own
    raise NotImplementedError


def _unset_real(v: float, /) -> bytes:  # pragma: no cover - every format sets its own
    raise NotImplementedError


class EncodingBase:
    """One encode call of a twin: a growing bytearray, a depth limit and the
    container path, and the walk over the data model.

    A format's subclass supplies the bytes of None/True/False, the heads of
    its sized types (each raising EncodeError for a size the format cannot
    carry) and how it writes ints and floats.  Subclasses of the data
    model's types are encoded as their base type, through the base type's
    methods, so no method of the subclass runs.
    """

    __slots__ = ("out", "max_depth", "limit", "path")

    FORMAT: ClassVar[str]  # name in "cannot encode" errors
    #: written before every byte string's head (a CBOR tag, for an encoder made so)
    BYTES_PREFIX: ClassVar[bytes] = b""
    NULL: ClassVar[bytes]
    TRUE: ClassVar[bytes]
    FALSE: ClassVar[bytes]

    def __init__(self, max_depth: int, limit: int) -> None:
        self.out = bytearray()
        self.max_depth = max_depth
        self.limit = limit
        self.path: List[Any] = []

    # -- format hooks ------------------------------------------------------
    # The heads of a text string (n UTF-8 bytes), byte string, array and map
    # (n entries), each raising EncodeError for a size the format cannot
    # carry; the bytes of a float; appending an int.
    text_head = bytes_head = array_head = map_head = staticmethod(_unset_head)
    real = staticmethod(_unset_real)

    def integer(self, v: int) -> None:  # pragma: no cover - abstract
        """Append the int ``v``."""
        raise NotImplementedError

    # -- the walk ----------------------------------------------------------

    def too_large(self) -> FrameTooLarge:
        return FrameTooLarge(f"frame exceeds max_frame_size {self.limit}", self.limit)

    def enter(self, container: Any) -> None:
        path = self.path
        if len(path) >= self.max_depth:
            ids = {id(c) for c in path}
            if id(container) in ids or len(ids) != len(path):
                raise EncodeError("cycle: a container contains itself")
            raise EncodeError(f"nesting deeper than max_depth {self.max_depth}")
        path.append(container)

    def item(self, obj: Any) -> None:
        out = self.out
        t = type(obj)
        if t is str or (t is not bool and isinstance(obj, str)):
            self.text(obj)
        elif obj is None:
            out += self.NULL
        elif obj is True:
            out += self.TRUE
        elif obj is False:
            out += self.FALSE
        elif isinstance(obj, int):
            self.integer(int.__index__(obj))
        elif isinstance(obj, float):
            out += self.real(float.__float__(obj))
        elif isinstance(obj, dict):
            self.enter(obj)
            out += self.map_head(dict.__len__(obj))
            for key, value in dict.items(obj):
                if not isinstance(key, str):
                    raise EncodeError(f"dict keys must be str, got {type(key).__name__}")
                self.text(key)
                self.item(value)
            self.path.pop()
        elif isinstance(obj, (list, tuple)):
            self.enter(obj)
            items = list.__iter__(obj) if isinstance(obj, list) else tuple.__iter__(obj)
            out += self.array_head(list.__len__(obj) if isinstance(obj, list) else tuple.__len__(obj))
            for value in items:
                self.item(value)
            self.path.pop()
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            if isinstance(obj, memoryview) and not obj.c_contiguous:
                raise EncodeError("memoryview is not C-contiguous")
            data = obj.tobytes() if isinstance(obj, memoryview) else obj
            out += self.BYTES_PREFIX
            out += self.bytes_head(len(data))
            out += data
            if len(out) > self.limit:
                raise self.too_large()
        else:
            raise EncodeError(f"cannot encode objects of type {t.__name__} in {self.FORMAT}")

    def text(self, s: str) -> None:
        try:
            data = str.encode(s, "utf-8")
        except UnicodeEncodeError:
            raise EncodeError("str contains a lone surrogate (not valid UTF-8)") from None
        out = self.out
        out += self.text_head(len(data))
        out += data
        if len(out) > self.limit:
            raise self.too_large()


class FrameEncoderBase(Limits):
    """The Encoder protocol (:mod:`streamcodec.protocol`) of a twin.

    A format's subclass sets the content types and these class attributes:
    ``_Encoding`` (its :class:`EncodingBase`), ``_OBJECT_TAG`` (bytes before
    every object's item), ``_EVENT_PREFIXES`` (see :func:`event_prefixes`),
    ``_LIST_HEAD`` (a list body up to its "kind" key), ``_LIST_END``; and
    implements ``_check_raw``, ``_check_count`` and ``_items_head``.
    """

    content_type: ClassVar[str]
    stream_content_type: ClassVar[str]
    _Encoding: ClassVar[Type[EncodingBase]]
    _OBJECT_TAG: ClassVar[bytes] = b""
    _EVENT_PREFIXES: ClassVar[Dict[str, bytes]]
    _LIST_HEAD: ClassVar[bytes]
    _LIST_END: ClassVar[bytes]

    # -- format hooks ------------------------------------------------------
    def _check_raw(self, data: bytes) -> None:  # pragma: no cover - abstract
        """EncodeError unless ``data`` can be an object frame of the format."""
        raise NotImplementedError

    def _check_count(self, count: Optional[int]) -> None:  # pragma: no cover - abstract
        """ValueError unless ``count`` is a list body's item count the format accepts."""
        raise NotImplementedError

    def _items_head(self, count: Optional[int]) -> bytes:  # pragma: no cover - abstract
        """The head of a list body's items array."""
        raise NotImplementedError

    # -- frames ------------------------------------------------------------
    def _frame(self, prefix: bytes, obj: Any) -> bytes:
        enc = self._Encoding(self._max_depth, self._max_frame_size)
        enc.out += prefix
        enc.out += self._OBJECT_TAG
        enc.item(obj)
        if len(enc.out) > self._max_frame_size:
            raise enc.too_large()
        return bytes(enc.out)

    def _raw_frame(self, prefix: bytes, raw: Any) -> bytes:
        data = raw_bytes(raw)
        self._check_raw(data)
        n = len(prefix) + len(data)
        if n > self._max_frame_size:
            raise FrameTooLarge(f"frame of {n} bytes exceeds max_frame_size {self._max_frame_size}", self._max_frame_size)
        return prefix + data

    def _event_prefix(self, type_: Any) -> bytes:
        return self._EVENT_PREFIXES[check_event_type(type_)]

    # -- objects -----------------------------------------------------------
    def encode(self, obj: Any) -> bytes:
        """One object frame."""
        return self._frame(b"", obj)

    def encode_into(self, obj: Any, buf: PoolBuffer) -> int:
        """Append one object frame to ``buf``; returns its size."""
        target_buffer(buf)
        return put_frame(self._frame(b"", obj), buf, self._max_frame_size)

    # -- watch events ------------------------------------------------------
    def encode_event(self, type: str, obj: Any) -> bytes:
        """One event frame: {"type": type, "object": the object frame of ``obj``}."""
        return self._frame(self._event_prefix(type), obj)

    def encode_event_into(self, type: str, obj: Any, buf: PoolBuffer) -> int:
        """Append one event frame to ``buf``; returns its size."""
        prefix = self._event_prefix(type)
        target_buffer(buf)
        return put_frame(self._frame(prefix, obj), buf, self._max_frame_size)

    def encode_raw_event(self, type: str, raw: BytesLike) -> bytes:
        """The event frame of an object frame ``raw`` encoded earlier, embedded verbatim."""
        return self._raw_frame(self._event_prefix(type), raw)

    def encode_raw_event_into(self, type: str, raw: BytesLike, buf: PoolBuffer) -> int:
        """Append the event frame of ``raw`` (embedded verbatim) to ``buf``; returns its size."""
        prefix = self._event_prefix(type)
        target_buffer(buf)
        return put_frame(self._raw_frame(prefix, raw), buf, self._max_frame_size)

    # -- list bodies -------------------------------------------------------
    def encode_list_start_into(
        self,
        buf: PoolBuffer,
        *,
        kind: str,
        api_version: str,
        metadata: dict,
        count: Optional[int] = None,
    ) -> int:
        """map(4) {kind, apiVersion, metadata, "items": the items array's head}."""
        self._check_count(count)
        check_list_header(kind, api_version, metadata)
        enc = self._Encoding(self._max_depth, self._max_frame_size)
        enc.out += self._LIST_HEAD
        enc.text("kind")
        enc.text(kind)
        enc.text("apiVersion")
        enc.text(api_version)
        enc.text("metadata")
        enc.item(metadata)
        enc.text("items")
        enc.out += self._items_head(count)
        target_buffer(buf)
        return put_frame(bytes(enc.out), buf, self._max_frame_size)

    def encode_list_item_into(self, obj: Any, buf: PoolBuffer, index: int) -> int:
        """One item: the object frame, exactly as ``encode`` writes it."""
        return self.encode_into(obj, buf)

    def encode_raw_list_item_into(self, raw: BytesLike, buf: PoolBuffer, index: int) -> int:
        """One item from an object frame encoded earlier, copied verbatim."""
        target_buffer(buf)
        return put_frame(self._raw_frame(b"", raw), buf, self._max_frame_size)

    def encode_list_end_into(self, buf: PoolBuffer, count: int) -> int:
        """What closes the items array (and so the list body), if anything."""
        return put_frame(self._LIST_END, buf, self._max_frame_size)


class ScanState:
    """A twin scanner's progress through one frame: the next head's index,
    the open containers as ``(remaining items << 1) | is_map`` (a format may
    add codes of its own) and whether the structure is done while the last
    string's bytes are still missing; ``values_left`` counts down the
    frame's values budget (max_values)."""

    __slots__ = ("pos", "stack", "complete", "values_left")

    def __init__(self, pos: int, values_left: int) -> None:
        self.pos = pos
        self.values_left = values_left
        self.stack: List[int] = []
        self.complete = False

    def frame_end(self, pos: int, end: int) -> Optional[int]:
        """The frame's structure ends at ``pos``: that index, or None while
        the bytes of its last string (up to ``pos``) are not all here yet."""
        self.pos = pos
        if pos > end:
            self.complete = True
            return None
        return pos


#: Scan-stack codes of open indefinite-length containers (CBOR's); an open
#: definite container is ``(remaining items << 1) | is_map``, always > 0.
INDEF_ARRAY = -1
INDEF_MAP_KEY = -2
INDEF_MAP_VALUE = -3


def close_item(stack: List[int]) -> bool:
    """An item ended: count it against the open containers it completes.

    True when no container is left open (the item was the frame's own)."""
    while stack:
        top = stack[-1]
        if top > 0:
            if top >> 1 == 1:
                stack.pop()
                continue
            stack[-1] = top - 2
        elif top == INDEF_MAP_KEY:
            stack[-1] = INDEF_MAP_VALUE
        elif top == INDEF_MAP_VALUE:
            stack[-1] = INDEF_MAP_KEY
        return False
    return True


class StreamDecoderBase(Limits):
    """Sans-IO framing shared by every CBOR and MessagePack decoder, the
    twins' and the compiled ones.

    A format supplies ``_scan`` (resumable: finds where the frame that starts
    at ``self._frame_start`` ends, keeping its progress in a state object, and
    validates its structure) and ``_build`` (turns a complete, already
    validated frame into Python objects).

    Bytes are buffered only while they belong to a frame that is not yet
    complete, and at most ``max_frame_size`` of them: a longer partial frame
    is an error.  Errors are sticky: once one has been raised, every later
    ``feed``, iteration and ``close`` raises it again.

    ``unique_keys``: a map holding a key twice is
    :class:`~streamcodec.errors.DuplicateKey` at the first repeat (its key, its
    entry's index and offset), as Kubernetes' CBOR decoder refuses it; else the
    last value wins.  The builder tells a repeat by the map not growing.
    """

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_depth: int = MAX_DEPTH,
        max_values: Optional[int] = None,
        unique_keys: bool = False,
    ) -> None:
        super().__init__(max_frame_size=max_frame_size, max_depth=max_depth)
        self._values_budget = check_max_values(max_values)
        self._max_values = max_values
        self._unique_keys = check_unique_keys(unique_keys)
        self._buf = bytearray()
        self._base = 0  # absolute stream offset of self._buf[0]
        self._frame_start = 0  # index in _buf of the frame being scanned
        self._scan_state: Any = None  # format-specific resumable scanner state
        self._ready: Deque[Tuple[int, int]] = collections.deque()  # complete frames in _buf
        self._pending: Optional[DecodeError] = None  # found, not yet raised
        self._error: Optional[DecodeError] = None  # raised; raised again forever

    @property
    def max_values(self) -> Optional[int]:
        """Most values one frame may hold (TooManyValues beyond; see :class:`~streamcodec.errors.TooManyValues`), or None."""
        return self._max_values

    @property
    def unique_keys(self) -> bool:
        """Whether a map holding a key twice is DuplicateKey (else its last value wins)."""
        return self._unique_keys

    # -- format hooks ------------------------------------------------------
    def _new_scan_state(self, pos: int) -> Any:
        """Scanner state for a frame starting at ``pos``."""
        return ScanState(pos, self._values_budget)

    def _scan(self, data: Any, end: int, state: Any, frame_start: int, depth_limit: int, base: int) -> Optional[int]:  # pragma: no cover - abstract
        """Advance ``state`` over ``data[:end]``; the frame's end index once complete, else None.

        Raises DecodeError (offset ``base`` + index) for malformed input, a
        declared length reaching past ``max_frame_size`` or nesting deeper
        than ``depth_limit``.
        """
        raise NotImplementedError

    def _build(self, data: Any, start: int, end: int, base: int) -> Any:  # pragma: no cover - abstract
        """The object of the complete, scanned frame ``data[start:end]`` (DuplicateKey, with
        ``unique_keys``, from :func:`duplicate_key`)."""
        raise NotImplementedError

    @staticmethod
    def _rebase(state: Any, cut: int) -> None:
        """``cut`` bytes were dropped from the front of the buffer: shift ``state``."""
        state.pos -= cut

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

