"""MessagePack encoding against msgpack and msgspec, one pytest-benchmark
group per fixture.

Ours writes with ``encode_into`` into a reused PoolBuffer (after
``buf.length = 0``); a peer's call returns bytes that are then copied into a
reused bytearray.  All three write byte-identical frames (asserted).
Targets on the Pod: median ≤ msgpack.packb and ≤ 1.3 × msgspec.

    /work/venv/bin/pytest benchmarks/bench_msgpack.py --benchmark-only
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import msgpack  # type: ignore[import-untyped]
import msgspec
import pytest

from streamcodec import MsgpackDecoder, MsgpackEncoder, PoolBuffer

from .fixtures import FIXTURES

BUFFER_SIZE = 8 * 1024 * 1024

PEERS: Dict[str, Callable[[Any], bytes]] = {
    "msgpack": msgpack.packb,
    "msgspec": msgspec.msgpack.Encoder().encode,
}


@pytest.fixture(params=sorted(FIXTURES))
def fixture_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("contender", ["streamcodec"] + list(PEERS))
def test_encode_into_buffer(benchmark: Any, fixture_name: str, contender: str) -> None:
    obj = FIXTURES[fixture_name]()
    reference = MsgpackEncoder().encode(obj)
    benchmark.group = f"msgpack-{fixture_name}"
    benchmark.extra_info["frame_bytes"] = len(reference)
    if contender == "streamcodec":
        enc = MsgpackEncoder()
        buf = PoolBuffer(BUFFER_SIZE)

        def run() -> None:
            buf.length = 0
            enc.encode_into(obj, buf)

        benchmark(run)
        assert buf.getvalue() == reference
    else:
        packb = PEERS[contender]
        data = bytearray(BUFFER_SIZE)

        def run() -> None:
            out = packb(obj)
            data[0 : len(out)] = out

        benchmark(run)
        assert bytes(data[: len(reference)]) == reference


@pytest.mark.parametrize("contender", ["streamcodec", "msgpack", "msgspec"])
def test_decode(benchmark: Any, fixture_name: str, contender: str) -> None:
    frame = MsgpackEncoder().encode(FIXTURES[fixture_name]())
    benchmark.group = f"msgpack-decode-{fixture_name}"
    decoders: Dict[str, Callable[[bytes], Any]] = {
        "streamcodec": MsgpackDecoder().decode,
        "msgpack": lambda b: msgpack.unpackb(b, raw=False),
        "msgspec": msgspec.msgpack.Decoder().decode,
    }
    result = benchmark(decoders[contender], frame)
    assert result == FIXTURES[fixture_name]()
