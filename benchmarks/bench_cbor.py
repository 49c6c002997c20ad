"""CBOR encoding against cbor2, one pytest-benchmark group per fixture.

Ours writes with ``encode_into`` into a reused PoolBuffer (after
``buf.length = 0``); cbor2's ``dumps`` returns bytes that are then copied
into a reused bytearray, which is what a server writing into pool buffers
would have to do with them.  Target on the Pod: median ≤ 0.25 × cbor2.
The decode group compares our one-shot ``decode`` with ``cbor2.loads``.

    /work/venv/bin/pytest benchmarks/bench_cbor.py --benchmark-only
"""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from streamcodec import CBORDecoder, CBOREncoder, PoolBuffer

from .fixtures import FIXTURES

BUFFER_SIZE = 8 * 1024 * 1024


@pytest.fixture(params=sorted(FIXTURES))
def fixture_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("contender", ["streamcodec", "cbor2"])
def test_encode_into_buffer(benchmark: Any, fixture_name: str, contender: str) -> None:
    obj = FIXTURES[fixture_name]()
    benchmark.group = f"cbor-{fixture_name}"
    if contender == "streamcodec":
        enc = CBOREncoder()
        buf = PoolBuffer(BUFFER_SIZE)

        def run() -> None:
            buf.length = 0
            enc.encode_into(obj, buf)

        benchmark(run)
        frame = buf.getvalue()
    else:
        data = bytearray(BUFFER_SIZE)
        holder = [b""]

        def run() -> None:
            # cbor2 writes the same self-described tag our frames carry.
            out = cbor2.dumps(cbor2.CBORTag(55799, obj))
            data[0 : len(out)] = out
            holder[0] = out

        benchmark(run)
        frame = holder[0]
    benchmark.extra_info["frame_bytes"] = len(frame)
    # Both frames carry the same object (ours writes floats shorter).
    assert _thaw(cbor2.loads(frame)) == _thaw(obj)


def _thaw(x: Any) -> Any:
    if isinstance(x, (dict, cbor2.frozendict)):
        return {k: _thaw(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_thaw(v) for v in x]
    return x


@pytest.mark.parametrize("contender", ["streamcodec", "cbor2"])
def test_decode(benchmark: Any, fixture_name: str, contender: str) -> None:
    frame = CBOREncoder().encode(FIXTURES[fixture_name]())
    benchmark.group = f"cbor-decode-{fixture_name}"
    decode = CBORDecoder().decode if contender == "streamcodec" else cbor2.loads
    result = benchmark(decode, frame)
    assert _thaw(result) == _thaw(FIXTURES[fixture_name]())


@pytest.mark.parametrize("contender", ["streamcodec_raw_event", "memcpy"])
def test_raw_pass_through(benchmark: Any, contender: str) -> None:
    raw = CBOREncoder().encode(FIXTURES["pod"]())
    benchmark.group = "cbor-raw-pod"
    enc = CBOREncoder()
    buf = PoolBuffer(BUFFER_SIZE)
    if contender == "streamcodec_raw_event":

        def run() -> None:
            buf.length = 0
            enc.encode_raw_event_into("ADDED", raw, buf)

    else:

        def run() -> None:
            buf.data[0 : len(raw)] = raw

    benchmark(run)
