"""JSON encoding against its peers, one pytest-benchmark group per fixture.

Every contender produces the same frame into a reused buffer: ours writes
it with ``encode_into`` (after ``buf.length = 0``); a peer's call returns
bytes that are then copied into a reused bytearray, which is what a server
writing into pool buffers would have to do with it.  The raw pass-through
group compares embedding a stored frame in a watch event with a plain copy
of the same bytes.

    /work/venv/bin/pytest benchmarks/bench_json.py --benchmark-only
"""

from __future__ import annotations

import json
from typing import Any, Callable

import msgspec
import orjson
import pytest

from streamcodec import JSONEncoder, PoolBuffer

from .fixtures import FIXTURES

BUFFER_SIZE = 8 * 1024 * 1024


def _stdlib(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


PEERS = {
    "orjson": orjson.dumps,
    "msgspec": msgspec.json.Encoder().encode,
    "stdlib_json": _stdlib,
}


@pytest.fixture(params=sorted(FIXTURES))
def fixture_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("contender", ["streamcodec"] + list(PEERS))
def test_encode_into_buffer(benchmark: Any, fixture_name: str, contender: str) -> None:
    obj = FIXTURES[fixture_name]()
    reference = JSONEncoder().encode(obj)
    benchmark.group = f"json-{fixture_name}"
    benchmark.extra_info["frame_bytes"] = len(reference)
    if contender == "streamcodec":
        enc = JSONEncoder()
        buf = PoolBuffer(BUFFER_SIZE)

        def run() -> None:
            buf.length = 0
            enc.encode_into(obj, buf)

        benchmark(run)
        assert buf.getvalue() == reference
    else:
        dumps: Callable[[Any], bytes] = PEERS[contender]
        data = bytearray(BUFFER_SIZE)

        def run() -> None:
            out = dumps(obj)
            data[0 : len(out)] = out

        benchmark(run)
        # orjson/msgspec escape differently in corner cases; the fixtures are
        # chosen so every contender writes the same bytes.
        assert bytes(data[: len(reference)]) == reference


@pytest.mark.parametrize("size", ["pod", "secret_1mb"])
@pytest.mark.parametrize("contender", ["streamcodec_raw_event", "memcpy"])
def test_raw_pass_through(benchmark: Any, size: str, contender: str) -> None:
    raw = JSONEncoder().encode(FIXTURES[size]())
    benchmark.group = f"json-raw-{size}"
    benchmark.extra_info["frame_bytes"] = len(raw)
    buf = PoolBuffer(BUFFER_SIZE)
    if contender == "streamcodec_raw_event":
        enc = JSONEncoder()

        def run() -> None:
            buf.length = 0
            enc.encode_raw_event_into("MODIFIED", raw, buf)

        benchmark(run)
        assert buf.getvalue() == b'{"type":"MODIFIED","object":' + raw + b"}\n"
    else:
        data = buf.data
        n = len(raw)

        def run() -> None:
            data[0:n] = raw

        benchmark(run)
        assert bytes(data[:n]) == raw


DISTINCT_PODS = 200


@pytest.mark.parametrize("contender", ["streamcodec"] + list(PEERS))
def test_encode_distinct_decoded_pods(benchmark: Any, contender: str) -> None:
    """200 Pods decoded separately (each with its own key strs, as objects
    read from storage are), one frame each per round: the encoder cannot
    recognise a key by its str object, only by its text."""
    objs = [json.loads(_stdlib(FIXTURES["pod"]())) for _ in range(DISTINCT_PODS)]
    reference = JSONEncoder().encode(objs[0])
    benchmark.group = f"json-pod-x{DISTINCT_PODS}-decoded"
    benchmark.extra_info["frame_bytes"] = len(reference) * DISTINCT_PODS
    if contender == "streamcodec":
        enc = JSONEncoder()
        buf = PoolBuffer(BUFFER_SIZE)

        def run() -> None:
            for obj in objs:
                buf.length = 0
                enc.encode_into(obj, buf)

        benchmark(run)
        assert buf.getvalue() == reference
    else:
        dumps: Callable[[Any], bytes] = PEERS[contender]
        data = bytearray(BUFFER_SIZE)

        def run() -> None:
            for obj in objs:
                out = dumps(obj)
                data[0 : len(out)] = out

        benchmark(run)
        assert bytes(data[: len(reference)]) == reference
