"""ProtoEncoder/ProtoDecoder against the protobuf package, same run, same objects.

* ``ours``  -- ``ProtoEncoder.encode_into(obj, buf)`` into a reused PoolBuffer
  (the object frame: ``k8s\\x00`` + Unknown + Struct).
* ``peer``  -- the protobuf-package route to the same frame:
  ``json_format.ParseDict(obj, Struct())``, ``SerializeToString()``, wrap it in
  the ``Unknown`` envelope (message class generated from
  ``streamcodec/streamcodec.proto`` by grpc_tools.protoc), serialise, and copy
  magic + envelope into a reused bytearray.
* decode: ``ProtoDecoder.decode(frame)`` against ``Unknown.FromString`` +
  ``Struct.FromString`` + ``json_format.MessageToDict``.

Medians and the ours/peer ratios are printed at the end of the module (target
on Pod: encode ratio <= 0.05).

    /work/venv/bin/pytest benchmarks/bench_proto.py --benchmark-only
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest
from google.protobuf import json_format, struct_pb2

import streamcodec
from streamcodec import PoolBuffer, ProtoDecoder, ProtoEncoder

from .fixtures import FIXTURES

MAGIC = b"k8s\x00"
NAMES = ["pod", "configmap_1000", "deep_cr", "secret_1mb"]
_medians: Dict[Tuple[str, str, str], float] = {}


@pytest.fixture(scope="module")
def unknown_cls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import grpc_tools
    from google.protobuf.internal import api_implementation

    if api_implementation.Type() == "upb":
        from google._upb import _message

        _message.SetAllowOversizeProtos(True)  # deep_cr nests past upb's default depth of 100
    out = tmp_path_factory.mktemp("bench_proto_gen")
    proto = Path(streamcodec.__file__).with_name("streamcodec.proto")
    (out / "streamcodec.proto").write_text(proto.read_text())
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"-I{Path(grpc_tools.__file__).with_name('_proto')}",
         f"--python_out={out}", "streamcodec.proto"],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("streamcodec_pb2").Unknown
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module", autouse=True)
def ratio_report() -> Iterator[None]:
    yield
    lines = [f"\nproto benchmark medians (ours: {ProtoEncoder.__module__})"]
    for op in ("encode", "decode"):
        for name in NAMES:
            ours = _medians.get((op, name, "ours"))
            peer = _medians.get((op, name, "peer"))
            if ours is not None and peer is not None:
                lines.append(
                    f"  {op:6} {name:15} ours {ours * 1e6:10.1f} us   peer {peer * 1e6:10.1f} us   ratio {ours / peer:.4f}"
                )
    print("\n".join(lines))


def _record(benchmark: Any, key: Tuple[str, str, str]) -> None:
    _medians[key] = benchmark.stats.stats.median
    benchmark.extra_info["implementation"] = ProtoEncoder.__module__
    op, name, side = key
    other = _medians.get((op, name, "peer" if side == "ours" else "ours"))
    if other is not None:
        ours, peer = (_medians[key], other) if side == "ours" else (other, _medians[key])
        benchmark.extra_info["ours_over_peer"] = ours / peer


@pytest.mark.parametrize("name", NAMES)
def test_encode_peer(benchmark: Any, unknown_cls: Any, name: str) -> None:
    benchmark.group = f"proto-encode-{name}"
    obj = FIXTURES[name]()
    target = bytearray(8 * 1024 * 1024)

    def peer() -> int:
        raw = json_format.ParseDict(obj, struct_pb2.Struct(), max_recursion_depth=1000).SerializeToString()
        envelope = unknown_cls(raw=raw, contentEncoding="", contentType="")
        envelope.typeMeta.apiVersion = obj.get("apiVersion", "")
        envelope.typeMeta.kind = obj.get("kind", "")
        body = envelope.SerializeToString()
        target[:4] = MAGIC
        target[4 : 4 + len(body)] = body
        return 4 + len(body)

    n = benchmark(peer)
    # the peer's frame carries the same object (its map order differs from ours)
    envelope = unknown_cls.FromString(bytes(target[4:n]))
    assert target[:4] == MAGIC and json_format.MessageToDict(struct_pb2.Struct.FromString(envelope.raw)) == obj
    _record(benchmark, ("encode", name, "peer"))


@pytest.mark.parametrize("name", NAMES)
def test_encode_ours(benchmark: Any, name: str) -> None:
    benchmark.group = f"proto-encode-{name}"
    obj = FIXTURES[name]()
    enc = ProtoEncoder()
    buf = PoolBuffer(8 * 1024 * 1024)

    def ours() -> int:
        buf.length = 0
        return enc.encode_into(obj, buf)

    n = benchmark(ours)
    assert buf.getvalue() == enc.encode(obj) and n == buf.length
    _record(benchmark, ("encode", name, "ours"))


@pytest.mark.parametrize("name", NAMES)
def test_decode_peer(benchmark: Any, unknown_cls: Any, name: str) -> None:
    benchmark.group = f"proto-decode-{name}"
    frame = ProtoEncoder().encode(FIXTURES[name]())

    def peer() -> Any:
        envelope = unknown_cls.FromString(frame[4:])
        return json_format.MessageToDict(struct_pb2.Struct.FromString(envelope.raw))

    assert benchmark(peer) == FIXTURES[name]()
    _record(benchmark, ("decode", name, "peer"))


@pytest.mark.parametrize("name", NAMES)
def test_decode_ours(benchmark: Any, name: str) -> None:
    benchmark.group = f"proto-decode-{name}"
    frame = ProtoEncoder().encode(FIXTURES[name]())
    dec = ProtoDecoder()
    assert benchmark(dec.decode, frame) == FIXTURES[name]()
    _record(benchmark, ("decode", name, "ours"))
