"""The encoder/decoder contract (streamcodec.protocol), checked identically
for every format.  Each format's own test file checks its bytes against an
independent decoder; this file checks the behaviour they must share."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from typing import Any, Callable, Dict, List, Tuple

import pytest

import streamcodec
from streamcodec import (
    BufferFull,
    DecodeError,
    EncodeError,
    FrameTooLarge,
    PoolBuffer,
    StreamCodecError,
)
from streamcodec.limits import EVENT_TYPES
from streamcodec.protocol import Event

FORMATS = ["JSON", "CBOR", "Msgpack", "Proto"]


def _pair(name: str) -> Tuple[Any, Any]:
    return getattr(streamcodec, name + "Encoder"), getattr(streamcodec, name + "Decoder")


@pytest.fixture(params=FORMATS)
def fmt(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def enc(fmt: str) -> Any:
    return _pair(fmt)[0]()


@pytest.fixture
def dec(fmt: str) -> Any:
    return _pair(fmt)[1]()


SAMPLE: Dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "s", "labels": {"a": "b"}, "n": 3},
    "data": {"k": "dmFsdWU=", "list": [1, 2.5, True, None, "x", []], "empty": {}},
    "unicode": "naïve ✓ 𝄞",
}


def test_compiled_modules_loaded_unless_pure_python_asked() -> None:
    # CI runs the suite twice; the compiled run must really use the compiled
    # modules (a missing build silently falling back would test nothing new).
    if os.environ.get("STREAMCODEC_PURE_PYTHON"):
        assert streamcodec.IMPLEMENTATION == "python"
        assert streamcodec.JSONEncoder.__module__.endswith("_py")
    else:
        assert streamcodec.IMPLEMENTATION == "cython", streamcodec._compiled_missing
        for name in FORMATS:
            assert not _pair(name)[0].__module__.endswith("_py")


def test_protocol_surface(enc: Any, dec: Any) -> None:
    for attr in (
        "encode", "encode_into", "encode_event", "encode_event_into", "encode_raw_event",
        "encode_raw_event_into", "encode_list_start_into", "encode_list_item_into",
        "encode_raw_list_item_into", "encode_list_end_into",
    ):
        assert callable(getattr(enc, attr)), attr
    assert isinstance(enc.content_type, str) and "/" in enc.content_type
    assert isinstance(enc.stream_content_type, str) and "/" in enc.stream_content_type
    assert enc.max_frame_size == streamcodec.limits.DEFAULT_MAX_FRAME_SIZE
    for attr in ("decode", "feed", "close", "__iter__"):
        assert callable(getattr(dec, attr)), attr


def test_encode_into_equals_encode_and_appends(enc: Any, dec: Any) -> None:
    frame = enc.encode(SAMPLE)
    assert isinstance(frame, bytes)
    buf = PoolBuffer(1 << 16)
    buf.data[0:4] = b"HEAD"
    buf.length = 4
    n = enc.encode_into(SAMPLE, buf)
    assert n == len(frame) and buf.length == 4 + n
    assert bytes(buf.data[:4]) == b"HEAD" and bytes(buf.data[4 : 4 + n]) == frame
    assert _normalise(dec.decode(frame)) == _normalise(SAMPLE)


def test_event_frames_and_raw_pass_through_are_identical(enc: Any, dec: Any) -> None:
    raw = enc.encode(SAMPLE)
    stream = b""
    for t in EVENT_TYPES:
        ev = enc.encode_event(t, SAMPLE)
        assert enc.encode_raw_event(t, raw) == ev
        assert enc.encode_raw_event(t, memoryview(raw)) == ev
        assert enc.encode_raw_event(t, bytearray(raw)) == ev
        buf = PoolBuffer(1 << 16)
        assert enc.encode_event_into(t, SAMPLE, buf) == len(ev) and buf.getvalue() == ev
        buf.clear()
        assert enc.encode_raw_event_into(t, raw, buf) == len(ev) and buf.getvalue() == ev
        stream += ev
    # Fed one byte at a time, the stream decodes to the same events.
    events: List[Event] = []
    for i in range(len(stream)):
        dec.feed(stream[i : i + 1])
        events.extend(dec)
    dec.close()
    assert [e.type for e in events] == list(EVENT_TYPES)
    assert all(_normalise(e.object) == _normalise(SAMPLE) for e in events)


def test_bad_event_type_rejected(enc: Any) -> None:
    for bad in ("added", "", "UPDATED"):
        with pytest.raises(EncodeError):
            enc.encode_event(bad, SAMPLE)
        with pytest.raises(EncodeError):
            enc.encode_raw_event(bad, enc.encode(SAMPLE))


def _cyclic() -> Any:
    d: Dict[str, Any] = {}
    d["self"] = d
    return d


def _deep(n: int) -> Any:
    x: Any = 1
    for _ in range(n):
        x = [x]
    return x


BAD_INPUTS: List[Tuple[str, Callable[[], Any]]] = [
    ("set", lambda: {"a": {1, 2}}),
    ("object", lambda: {"a": object()}),
    ("complex", lambda: [1j]),
    ("int key", lambda: {1: "x"}),
    ("none key", lambda: {None: "x"}),
    ("cycle", _cyclic),
    ("too deep", lambda: _deep(streamcodec.limits.MAX_DEPTH + 5)),
    ("lone surrogate", lambda: {"a": "x\ud800y"}),
    ("lone surrogate key", lambda: {"\udfff": 1}),
]


@pytest.mark.parametrize("name,make", BAD_INPUTS, ids=[n for n, _ in BAD_INPUTS])
def test_bad_input_is_a_named_error_and_buffer_untouched(enc: Any, name: str, make: Callable[[], Any]) -> None:
    obj = make()
    with pytest.raises(EncodeError):
        enc.encode(obj)
    buf = PoolBuffer(1 << 16)
    buf.data[0:2] = b"ok"
    buf.length = 2
    before = bytes(buf.data)
    for call in (
        lambda: enc.encode_into(obj, buf),
        lambda: enc.encode_event_into("ADDED", obj, buf),
        lambda: enc.encode_list_item_into(obj, buf, 1),
    ):
        with pytest.raises(EncodeError):
            call()
        assert buf.length == 2 and bytes(buf.data[:2]) == b"ok"
    assert bytes(buf.data[:2]) == before[:2]


def test_depth_limit_is_exact(fmt: str) -> None:
    enc = _pair(fmt)[0](max_depth=10)
    enc.encode({"a": _deep(8)})  # 9 containers deep
    with pytest.raises(EncodeError):
        enc.encode({"a": _deep(11)})


def test_frame_too_large_and_buffer_full(fmt: str) -> None:
    Enc = _pair(fmt)[0]
    obj = {"kind": "Secret", "data": {"payload": "x" * 5000}}
    size = len(Enc().encode(obj))
    small = Enc(max_frame_size=size - 1)
    buf = PoolBuffer(1 << 16)
    buf.data[0:3] = b"abc"
    buf.length = 3
    with pytest.raises(FrameTooLarge):
        small.encode_into(obj, buf)
    with pytest.raises(FrameTooLarge):
        small.encode(obj)
    with pytest.raises(FrameTooLarge):
        small.encode_event("ADDED", obj)
    assert buf.length == 3
    exact = Enc(max_frame_size=size)
    assert exact.encode(obj) == Enc().encode(obj)
    tight = PoolBuffer(size + 2)  # 3 bytes used: one byte short
    tight.data[0:3] = b"abc"
    tight.length = 3
    snapshot = bytes(tight.data)
    with pytest.raises(BufferFull):
        exact.encode_into(obj, tight)
    # Bytes past ``length`` are free space an encoder may have scribbled on;
    # what was written stays.
    assert tight.length == 3 and bytes(tight.data[:3]) == snapshot[:3]
    tight.length = 2
    assert exact.encode_into(obj, tight) == size and tight.length == size + 2
    assert issubclass(FrameTooLarge, EncodeError) and issubclass(BufferFull, StreamCodecError)


def test_decoder_rejects_garbage_with_offset(dec: Any) -> None:
    with pytest.raises(DecodeError) as info:
        dec.decode(b"\xff\xfe\xfd\x00garbage")
    assert isinstance(info.value, ValueError) and info.value.offset >= 0


def test_truncated_stream_reported_on_close(enc: Any, dec: Any) -> None:
    ev = enc.encode_event("ADDED", SAMPLE)
    dec.feed(ev + ev[:-1])
    assert len(list(dec)) == 1
    with pytest.raises(DecodeError):
        dec.close()


def _normalise(x: Any) -> Any:
    """Equality modulo what a format cannot distinguish (tuple/list, int/float)."""
    if isinstance(x, dict):
        return {k: _normalise(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_normalise(v) for v in x]
    if isinstance(x, float) and not math.isnan(x) and x.is_integer():
        return int(x)
    return x


MEMORY_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, tracemalloc
    sys.path.insert(0, sys.argv[1])
    import streamcodec
    from streamcodec import BufferPool
    from streamcodec.writer import FrameWriter
    from benchmarks.fixtures import pod

    fmt, budget, buffer_size, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    enc = getattr(streamcodec, fmt + "Encoder")()
    obj = pod()
    sent = 0

    async def send(view):
        global sent
        sent += len(view)

    async def main():
        pool = BufferPool(budget, buffer_size)
        async with FrameWriter(enc, pool, send) as w:
            await w.list_start(kind="PodList", api_version="v1", metadata={"resourceVersion": "1"}, count=n)
            for i in range(n):
                obj["metadata"]["name"] = "pod-%d" % i
                await w.list_item(obj)
            await w.list_end()
        return pool.stats()

    tracemalloc.start()
    tracemalloc.reset_peak()
    stats = asyncio.run(main())
    peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"peak": peak, "sent": sent, "high_water": stats.high_water, "in_use": stats.in_use}))
    """
)


@pytest.mark.slow
def test_encoding_many_objects_stays_within_pool_budget(fmt: str) -> None:
    """tracemalloc peak of the whole encode loop ≤ budget + a small constant.

    100,000 Pods with the compiled encoders; 20,000 with the pure-Python twins, which tracemalloc slows
    most (100,000 cost them 11 minutes of CI): still ~40 MiB through a 1 MiB budget.
    """
    budget, buffer_size = 1 << 20, 256 << 10
    n = 100_000 if streamcodec.IMPLEMENTATION == "cython" else 20_000
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, root, fmt, str(budget), str(buffer_size), str(n)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    import json

    r = json.loads(out.stdout)
    one_frame = len(_pair(fmt)[0]().encode(__import__("benchmarks.fixtures").fixtures.pod()))
    assert r["sent"] > n * one_frame * 0.9  # really encoded ~n objects
    assert r["in_use"] == 0 and r["high_water"] <= budget
    # Small constant: the event loop, the writer and one object's encode
    # scratch (the pure-Python twins build a frame before copying it).
    assert r["peak"] <= r["high_water"] + 256 * 1024, r
    assert r["peak"] <= budget + 256 * 1024, r
