"""JSON encoder and incremental watch-stream decoder, pure-Python twin of ``_json.pyx``.

Output is byte-identical to ``json.dumps(obj, separators=(",", ":"),
ensure_ascii=False).encode()`` (bytes-likes become padded standard base64
strings, as Go encodes ``[]byte``).  Both implementations raise the same
exceptions with the same messages in the same situations; where several
problems exist, the first one in output order is reported.
"""

from __future__ import annotations

import base64
import json
import math
import re
from json.encoder import encode_basestring as _quote_str  # json's own escaping (ensure_ascii=False)
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ._framing_py import check_max_values, check_unique_keys
from .errors import BufferFull, DecodeError, DuplicateKey, EncodeError, FrameTooLarge, TooManyValues
from .limits import DEFAULT_MAX_FRAME_SIZE, EVENT_TYPES, MAX_DEPTH, MAX_DEPTH_LIMIT
from .pool import PoolBuffer
from .protocol import BytesLike, Event

__all__ = ["JSONEncoder", "JSONDecoder"]


_EVENT_HEADERS = {t: ('{"type":"%s","object":' % t).encode() for t in EVENT_TYPES}
_BYTES_TYPES = (bytes, bytearray, memoryview)


def _check_limits(max_frame_size: int, max_depth: int) -> None:
    if type(max_frame_size) is not int or max_frame_size <= 0:
        raise ValueError(f"max_frame_size must be a positive int, not {max_frame_size!r}")
    if type(max_depth) is not int or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be an int in 1..{MAX_DEPTH_LIMIT}, not {max_depth!r}")


def _format_path(path: List[Any]) -> str:
    return "$" + "".join(f"[{p!r}]" for p in path)


def _check_event_type(type: Any) -> bytes:
    header = _EVENT_HEADERS.get(type) if isinstance(type, str) else None
    if header is None:
        raise EncodeError(f"invalid watch event type {type!r}: expected one of {', '.join(EVENT_TYPES)}")
    return header


def _check_index(index: Any) -> None:
    if type(index) is not int or index < 0:
        raise ValueError(f"list item index must be a non-negative int, not {index!r}")


def _raw_bytes(raw: Any) -> bytes:
    if not isinstance(raw, _BYTES_TYPES):
        raise EncodeError(f"raw frame must be bytes, bytearray or memoryview, not {type(raw).__name__}")
    try:
        data = bytes(raw)
    except ValueError as exc:  # a released memoryview
        raise EncodeError(f"raw frame is unreadable: {exc}") from None
    if not data:
        raise EncodeError("raw frame is empty")
    return data


class _Overflow(Exception):
    """Internal: the frame grew past its limit (becomes FrameTooLarge)."""


class _FrameBuilder:
    """Collects one frame as bytes pieces, failing as soon as it outgrows ``limit``."""

    __slots__ = ("parts", "size", "limit", "max_depth", "stack", "path")

    def __init__(self, limit: int, max_depth: int) -> None:
        self.parts: List[bytes] = []
        self.size = 0
        self.limit = limit
        self.max_depth = max_depth
        self.stack: List[int] = []  # ids of the containers being encoded
        self.path: List[Any] = []  # key or index of each level, for messages

    def put(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.limit:
            raise _Overflow
        self.parts.append(piece)

    def fail(self, message: str) -> EncodeError:
        return EncodeError(f"{message} at {_format_path(self.path)}")

    def put_str(self, s: str) -> None:
        if s.isascii():
            self.put(_quote_str(s).encode("ascii"))
            return
        try:
            self.put(_quote_str(s).encode("utf-8"))
        except UnicodeEncodeError as exc:
            cp = ord(exc.object[exc.start])
            raise self.fail(f"lone surrogate U+{cp:04X} in a str") from None

    def value(self, obj: Any, depth: int) -> None:
        t = type(obj)
        if t is str:
            self.put_str(obj)
        elif t is dict:
            self.mapping(obj, obj, depth)
        elif t is list or t is tuple:
            self.sequence(obj, depth)
        elif t is int:
            self.put_int(obj)
        elif obj is True:
            self.put(b"true")
        elif obj is False:
            self.put(b"false")
        elif obj is None:
            self.put(b"null")
        elif t is float:
            self.put_float(obj)
        elif isinstance(obj, str):
            self.put_str(obj)
        elif isinstance(obj, dict):
            # json.dumps uses .items() of a dict subclass (an OrderedDict's order).
            try:
                items = list(obj.items())
            except Exception as exc:
                raise self.fail(f"{t.__name__}.items() failed: {exc!r}") from None
            for pair in items:
                if type(pair) is not tuple or len(pair) != 2:
                    raise self.fail(f"{t.__name__}.items() must give (key, value) pairs")
            self.mapping(obj, items, depth)
        elif isinstance(obj, (list, tuple)):
            self.sequence(obj, depth)
        elif isinstance(obj, int):
            self.put_int(obj)
        elif isinstance(obj, float):
            self.put_float(obj)
        elif isinstance(obj, _BYTES_TYPES):
            self.put_bytes(obj)
        else:
            raise self.fail(f"cannot encode object of type {t.__name__}")

    def put_int(self, obj: int) -> None:
        try:
            text = int.__repr__(obj)
        except ValueError as exc:  # over sys.get_int_max_str_digits()
            raise self.fail(f"int too large to format ({exc})") from None
        self.put(text.encode("ascii"))

    def put_float(self, obj: float) -> None:
        if not math.isfinite(obj):
            raise self.fail(f"cannot encode float {float.__repr__(obj)} (NaN and Infinity are not JSON)")
        self.put(float.__repr__(obj).encode("ascii"))

    def put_bytes(self, obj: Any) -> None:
        try:
            if isinstance(obj, memoryview) and not obj.c_contiguous:
                obj = obj.tobytes()
            encoded = base64.b64encode(obj)
        except (ValueError, TypeError) as exc:
            raise self.fail(f"cannot read {type(obj).__name__} ({exc})") from None
        self.put(b'"')
        self.put(encoded)
        self.put(b'"')

    def enter(self, obj: Any, depth: int) -> None:
        if depth >= self.max_depth:
            if id(obj) in self.stack:
                raise self.fail("circular reference")
            raise self.fail(f"nesting deeper than max_depth={self.max_depth}")
        self.stack.append(id(obj))

    def mapping(self, obj: Any, items: Any, depth: int) -> None:
        self.enter(obj, depth)
        self.put(b"{")
        path = self.path
        path.append(None)
        first = True
        for key, value in items.items() if type(items) is dict else items:
            path[-1] = key
            if not first:
                self.put(b",")
            first = False
            if not isinstance(key, str):
                raise self.fail(f"dict key of type {type(key).__name__} is not a str")
            self.put_str(key)
            self.put(b":")
            self.value(value, depth + 1)
        path.pop()
        self.put(b"}")
        self.stack.pop()

    def sequence(self, obj: Any, depth: int) -> None:
        self.enter(obj, depth)
        self.put(b"[")
        path = self.path
        path.append(0)
        for i, item in enumerate(obj):
            path[-1] = i
            if i:
                self.put(b",")
            self.value(item, depth + 1)
        path.pop()
        self.put(b"]")
        self.stack.pop()

    def raw(self, raw: Any, depth: int) -> None:
        """A raw object frame: verbatim unless it holds a newline (then re-encoded)."""
        data = _raw_bytes(raw)
        if b"\n" not in data:
            self.put(data)
            return
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise EncodeError(f"raw frame holds a newline and is not valid JSON: {exc}") from None
        self.value(obj, depth)


class JSONEncoder:
    """Encodes objects, watch events and list bodies as compact UTF-8 JSON.

    ``max_frame_size`` caps every frame (:class:`FrameTooLarge`);
    ``max_depth`` caps container nesting (:class:`EncodeError`).
    """

    content_type = "application/json"
    stream_content_type = "application/json;stream=watch"

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, max_depth: int = MAX_DEPTH) -> None:
        _check_limits(max_frame_size, max_depth)
        self._max_frame_size = max_frame_size
        self._max_depth = max_depth

    @property
    def max_frame_size(self) -> int:
        """Largest frame this encoder produces, in bytes."""
        return self._max_frame_size

    @property
    def max_depth(self) -> int:
        """Deepest container nesting this encoder accepts."""
        return self._max_depth

    # -- building ------------------------------------------------------------

    def _build(self, write: Any, *args: Any) -> bytes:
        builder = _FrameBuilder(self._max_frame_size, self._max_depth)
        try:
            write(builder, *args)
        except _Overflow:
            raise FrameTooLarge(
                f"JSON frame exceeds max_frame_size={self._max_frame_size} bytes", self._max_frame_size
            ) from None
        except RecursionError:
            raise EncodeError("nesting too deep for the Python recursion limit") from None
        return b"".join(builder.parts)

    def _into(self, buf: PoolBuffer, write: Any, *args: Any) -> int:
        data = buf.data
        start = buf.length
        if not 0 <= start <= len(data):
            raise ValueError(f"buffer length {start} outside 0..{len(data)}")
        frame = self._build(write, *args)
        n = len(frame)
        if n > len(data) - start:
            raise BufferFull(f"JSON frame of {n} bytes does not fit the {len(data) - start} bytes left in the buffer")
        data[start : start + n] = frame
        buf.length = start + n
        return n

    @staticmethod
    def _write_object(b: _FrameBuilder, obj: Any) -> None:
        b.value(obj, 0)

    @staticmethod
    def _write_event(b: _FrameBuilder, type: Any, obj: Any) -> None:
        b.put(_check_event_type(type))
        b.value(obj, 0)
        b.put(b"}\n")

    @staticmethod
    def _write_raw_event(b: _FrameBuilder, type: Any, raw: Any) -> None:
        b.put(_check_event_type(type))
        b.raw(raw, 0)
        b.put(b"}\n")

    @staticmethod
    def _write_item(b: _FrameBuilder, obj: Any, index: int) -> None:
        _check_index(index)
        if index:
            b.put(b",")
        b.value(obj, 0)

    @staticmethod
    def _write_raw_item(b: _FrameBuilder, raw: Any, index: int) -> None:
        _check_index(index)
        if index:
            b.put(b",")
        b.raw(raw, 0)

    @staticmethod
    def _write_list_start(b: _FrameBuilder, kind: Any, api_version: Any, metadata: Any, count: Any) -> None:
        if not isinstance(kind, str) or not isinstance(api_version, str):
            raise EncodeError("list kind and api_version must be str")
        if not isinstance(metadata, dict):
            raise EncodeError(f"list metadata must be a dict, not {type(metadata).__name__}")
        if count is not None and (type(count) is not int or count < 0):
            raise ValueError(f"count must be None or a non-negative int, not {count!r}")
        b.put(b'{"kind":')
        b.put_str(kind)
        b.put(b',"apiVersion":')
        b.put_str(api_version)
        b.put(b',"metadata":')
        b.value(metadata, 0)
        b.put(b',"items":[')

    @staticmethod
    def _write_list_end(b: _FrameBuilder, count: Any) -> None:
        if type(count) is not int or count < 0:
            raise ValueError(f"count must be a non-negative int, not {count!r}")
        b.put(b"]}")

    # -- the Encoder protocol ------------------------------------------------

    def encode(self, obj: Any) -> bytes:
        """The object frame of ``obj``: compact JSON as UTF-8 bytes."""
        return self._build(self._write_object, obj)

    def encode_into(self, obj: Any, buf: PoolBuffer) -> int:
        """Append the object frame of ``obj`` to ``buf``; returns its size."""
        return self._into(buf, self._write_object, obj)

    def encode_event(self, type: str, obj: Any) -> bytes:
        """One watch event line: ``{"type":T,"object":OBJ}`` and a newline."""
        return self._build(self._write_event, type, obj)

    def encode_event_into(self, type: str, obj: Any, buf: PoolBuffer) -> int:
        """Append one watch event line to ``buf``; returns its size."""
        return self._into(buf, self._write_event, type, obj)

    def encode_raw_event(self, type: str, raw: BytesLike) -> bytes:
        """A watch event line embedding the JSON object frame ``raw`` as is."""
        return self._build(self._write_raw_event, type, raw)

    def encode_raw_event_into(self, type: str, raw: BytesLike, buf: PoolBuffer) -> int:
        """Append a watch event line embedding ``raw`` to ``buf``; returns its size."""
        return self._into(buf, self._write_raw_event, type, raw)

    def encode_list_start_into(
        self,
        buf: PoolBuffer,
        *,
        kind: str,
        api_version: str,
        metadata: dict,
        count: Optional[int] = None,
    ) -> int:
        """Append ``{"kind":K,"apiVersion":V,"metadata":M,"items":[`` to ``buf``."""
        return self._into(buf, self._write_list_start, kind, api_version, metadata, count)

    def encode_list_item_into(self, obj: Any, buf: PoolBuffer, index: int) -> int:
        """Append list item ``index`` (preceded by ``,`` unless it is the first)."""
        return self._into(buf, self._write_item, obj, index)

    def encode_raw_list_item_into(self, raw: BytesLike, buf: PoolBuffer, index: int) -> int:
        """Append the raw object frame ``raw`` as list item ``index``."""
        return self._into(buf, self._write_raw_item, raw, index)

    def encode_list_end_into(self, buf: PoolBuffer, count: int) -> int:
        """Append ``]}``, closing the list body."""
        return self._into(buf, self._write_list_end, count)


# -- decoding -----------------------------------------------------------------

# The bytes that matter for the pre-scan: a whole string (escapes included;
# unterminated runs to the end), an opening bracket of an empty container, of
# another container, a closing bracket, a comma or colon, or the first letter
# of NaN / Infinity (no other JSON token outside a string holds an N or an I).
_PRESCAN = re.compile(rb'(?P<s>"[^"\\]*(?:\\.[^"\\]*)*"?)|(?P<e>[\[{])(?=[ \t\n\r]*[\]}])|(?P<o>[\[{])|(?P<c>[\]}])|(?P<v>[,:])|[NI]', re.DOTALL)


def _prescan(data: bytes, max_depth: int, max_values: int) -> Optional[Tuple[int, int]]:
    """(what, offset) of the first too-deep bracket (1), NaN/Infinity (2) or token past the values
    budget (3), else None.  A text holds 1 + commas + colons + non-empty containers values."""
    depth = 0
    values_left = max_values - 1
    for m in _PRESCAN.finditer(data):
        kind = m.lastgroup
        if kind == "s":
            continue
        if kind == "e" or kind == "o":
            depth += 1
            if depth > max_depth:
                return (1, m.start())
            if kind == "o":
                values_left -= 1
                if values_left < 0:
                    return (3, m.start())
        elif kind == "c":
            depth -= 1
        elif kind == "v":
            values_left -= 1
            if values_left < 0:
                return (3, m.start())
        else:
            return (2, m.start())
    return None


def prescan_error(what: int, offset: int, max_depth: int, max_values: int) -> DecodeError:
    """The error of a pre-scan finding (both twins')."""
    if what == 1:
        return DecodeError(f"nesting deeper than max_depth={max_depth}", offset)
    if what == 3:
        return TooManyValues(max_values, offset)
    return DecodeError("NaN and Infinity are not JSON", offset)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_parse = json.JSONDecoder(parse_constant=_reject_constant).decode


class _Duplicate(Exception):
    """Internal: an object of the text holds a key twice (not a ValueError: json must not wrap it)."""


def _unique_object(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """object_pairs_hook of the unique-keys parser: the object json builds, or _Duplicate."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Duplicate
    return obj


# The same scanner (same values, same errors) telling each object's keys apart.  Its cost on a
# text without a duplicate is json's pairs path (a list of pairs per object, then the hook):
# measured ~+50% of the parse for small objects (a Pod), nothing measurable for long strings.
_parse_unique = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_object).decode


def _duplicate_keys(data: bytes) -> Dict[str, int]:
    """Each key met again in its object, by its path as Kubernetes' strict decoding names it
    (``a.b``, ``a[0].b``), mapped to the offset of its repeat, in document order, each path once,
    at most DuplicateKey.MAX_PATHS (sigs.k8s.io/json's rules).  ``data`` is valid JSON."""
    found: Dict[str, int] = {}
    for path, offset, again in key_paths(data):
        if again and path not in found:
            found[path] = offset
            if len(found) == DuplicateKey.MAX_PATHS:
                break
    return found


def key_paths(data: bytes) -> Iterator[Tuple[str, int, bool]]:
    """Every key of valid JSON ``data`` in document order: its path as Kubernetes' strict decoding names
    it (``a.b``, ``a[0].b``), its offset, and whether its object held it before."""
    # Per open container: [its path, the keys seen (an object) or None (an array), the path of
    # the current key (an object) or the current item's index (an array)].
    stack: List[List[Any]] = []
    want_key = False
    for m in _PRESCAN.finditer(data):
        kind = m.lastgroup
        if kind == "s":
            if not want_key:
                continue
            want_key = False
            top = stack[-1]
            token = m.group()
            key = json.loads(token) if b"\\" in token else token[1:-1].decode("utf-8")
            top[2] = f"{top[0]}.{key}" if top[0] else key
            again = key in top[1]
            top[1].add(key)
            yield top[2], m.start(), again
        elif kind == "e" or kind == "o":
            parent = stack[-1] if stack else None
            if parent is None:
                path = ""
            elif parent[1] is None:
                path = f"{parent[0]}[{parent[2]}]"
            else:
                path = parent[2]
            want_key = data[m.start()] == 0x7B  # '{'
            stack.append([path, set(), ""] if want_key else [path, None, 0])
        elif kind == "c":
            stack.pop()
            want_key = False  # an empty object's "{" wanted one
        elif data[m.start()] == 0x2C:  # ',' (':' changes nothing)
            top = stack[-1]
            if top[1] is None:
                top[2] += 1
            else:
                want_key = True


def parse_text(text: str, base: int, unique_in: Optional[bytes] = None) -> Any:
    """The value of a pre-scanned JSON text (both twins'); errors carry offsets relative to ``base``.

    ``unique_in``: the text's bytes, when a key twice in one object is DuplicateKey (carrying every
    duplicate and the value as decoded without the check)."""
    try:
        if unique_in is None:
            return _parse(text)
        try:
            return _parse_unique(text)
        except _Duplicate:
            # Rare: parse the whole text again, so a syntax error after the duplicate is the
            # error it would be without the check, and a caller may accept the value and warn.
            value = _parse(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc.msg}", base + len(text[: exc.pos].encode("utf-8"))) from None
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"invalid JSON: {exc}", base) from None
    found = _duplicate_keys(unique_in)
    raise DuplicateKey(list(found), base + next(iter(found.values()), 0), value=value,
                       offsets=[base + at for at in found.values()])


def _parse_frame(data: bytes, base: int, max_depth: int, max_values: int, unique_keys: bool) -> Any:
    """Parse one complete JSON text; errors carry offsets relative to ``base``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8: {exc.reason}", base + exc.start) from None
    problem = _prescan(data, max_depth, max_values)
    if problem is not None:
        raise prescan_error(problem[0], base + problem[1], max_depth, max_values)
    return parse_text(text, base, data if unique_keys else None)


class JSONDecoder:
    """Decodes object frames, and watch streams fed in arbitrary pieces.

    ``feed`` bytes, then iterate to get one :class:`Event` per complete line.
    Offsets in errors count from the first byte ever fed.  After an error the
    decoder raises that error again on every call.  ``unique_keys``: an object
    holding a key twice is :class:`~streamcodec.errors.DuplicateKey` (every
    duplicate's path, and the value as decoded without the check), not the last
    value winning silently; it costs json's pairs path for each object.
    """

    # The compiled module subclasses this decoder and swaps in its own parser.
    _parse_frame = staticmethod(_parse_frame)

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_depth: int = MAX_DEPTH,
        max_values: Optional[int] = None,
        unique_keys: bool = False,
    ) -> None:
        _check_limits(max_frame_size, max_depth)
        self._max_frame_size = max_frame_size
        self._max_depth = max_depth
        self._values_budget = check_max_values(max_values)
        self._max_values = max_values
        self._unique_keys = check_unique_keys(unique_keys)
        self._buf = bytearray()
        self._base = 0  # stream offset of self._buf[0]; lines are consumed whole
        self._tail = 0  # index in self._buf just after its last newline
        self._pending: Optional[DecodeError] = None  # found by feed, raised after earlier lines
        self._error: Optional[DecodeError] = None  # raised already: raised again forever

    @property
    def max_frame_size(self) -> int:
        """Longest line (newline included) or frame accepted, in bytes."""
        return self._max_frame_size

    @property
    def max_values(self) -> Optional[int]:
        """Most values one frame (or event line) may hold (TooManyValues beyond), or None."""
        return self._max_values

    @property
    def unique_keys(self) -> bool:
        """Whether an object holding a key twice is DuplicateKey (else its last value wins)."""
        return self._unique_keys

    def decode(self, frame: BytesLike) -> Any:
        """Decode one object frame (a complete JSON text)."""
        if not isinstance(frame, _BYTES_TYPES):
            raise TypeError(f"frame must be bytes, bytearray or memoryview, not {type(frame).__name__}")
        data = bytes(frame)
        if len(data) > self._max_frame_size:
            raise DecodeError(f"frame of {len(data)} bytes exceeds max_frame_size={self._max_frame_size}", self._max_frame_size)
        return self._parse_frame(data, 0, self._max_depth, self._values_budget, self._unique_keys)

    def feed(self, data: BytesLike) -> None:
        """Add stream bytes; complete lines become available to iteration."""
        if self._error is not None:
            raise self._error
        if not isinstance(data, _BYTES_TYPES):
            raise TypeError(f"data must be bytes, bytearray or memoryview, not {type(data).__name__}")
        if self._pending is not None:
            return  # the stream is already broken before this point: drop
        buf = self._buf
        old_len = len(buf)
        buf += data
        nl = buf.rfind(b"\n", old_len)
        if nl >= 0:
            self._tail = nl + 1
        # Bound the unterminated tail: a line may not outgrow max_frame_size.
        if len(buf) - self._tail >= self._max_frame_size:
            offset = self._base + self._tail + self._max_frame_size
            self._pending = DecodeError(f"line longer than max_frame_size={self._max_frame_size} bytes", offset)
            del buf[self._tail :]

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self._error is not None:
            raise self._error
        buf = self._buf
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if self._pending is not None:
                    self._error, self._pending = self._pending, None
                    raise self._error
                raise StopIteration
            line = bytes(buf[:nl])
            base = self._base
            del buf[: nl + 1]
            self._base += nl + 1
            self._tail -= nl + 1
            if not line.strip(b" \t\r"):
                continue
            try:
                return self._event(line, base)
            except DecodeError as exc:
                self._error = exc
                raise

    def _event(self, line: bytes, base: int) -> Event:
        if len(line) + 1 > self._max_frame_size:  # fed as one chunk: the tail check did not see it
            raise DecodeError(f"line longer than max_frame_size={self._max_frame_size} bytes", base + self._max_frame_size)
        # The event envelope is one level of nesting above the object.
        msg = self._parse_frame(line, base, self._max_depth + 1, self._values_budget, self._unique_keys)
        if type(msg) is not dict or msg.keys() != {"type", "object"}:
            raise DecodeError('watch event line is not an object with exactly the keys "type" and "object"', base)
        etype = msg["type"]
        if type(etype) is not str or etype not in EVENT_TYPES:
            raise DecodeError(f"invalid watch event type {etype!r}", base)
        return Event(etype, msg["object"])

    def close(self) -> None:
        """End of stream: raises DecodeError if a partial line is left over."""
        if self._error is not None:
            raise self._error
        if self._pending is not None:
            self._error, self._pending = self._pending, None
            raise self._error
        tail = self._buf[self._tail :]
        if tail.strip(b" \t\r"):
            self._error = DecodeError(f"stream ends inside a line of {len(tail)} bytes", self._base + len(self._buf))
            raise self._error
