"""Kubernetes' typed protobuf from stored JSON, against the server's JSON pass-through and a peer.

One watch event of a stored object per round, into a reused pool buffer:

* ``typed_protobuf``: ``KubeProtoEncoder``'s kind encoder transcodes the stored JSON (resourceVersion
  set) into the WatchEvent frame (what a client-go informer gets);
* ``json_passthrough``: the server's JSON event path (stored bytes copied, resourceVersion spliced
  in place: the fastest thing the server does);
* ``official_protobuf``: the protobuf package with Kubernetes' generated.proto (json_format.Parse
  into the typed message, SerializeToString, framed the same way): what Python had before.

    .venv/bin/pytest benchmarks/bench_kubeproto.py --benchmark-only
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streamcodec.server.objects import DEFAULT_RESOURCES, encode_for_storage
from streamcodec.server.items import _SplicedEventInto
from streamcodec import JSONEncoder, KubeProtoEncoder, PoolBuffer
from tests import kube_proto

from .fixtures import FIXTURES

BUFFER_SIZE = 8 * 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
KINDS = {"pod": "Pod", "secret_1mb": "Secret"}


@pytest.fixture(scope="module")
def oracle() -> Any:
    out = subprocess.run([str(ROOT / "scripts" / "provision-kube-proto")], capture_output=True, text=True, check=True)
    return kube_proto.load(out.stdout.strip())


def stored_value(name: str) -> bytes:
    obj = FIXTURES[name]()
    obj["metadata"].pop("resourceVersion", None)
    return encode_for_storage(obj)


# The protobuf package's json_format cannot read Kubernetes' JSON of a Time ("2026-...Z" for a message
# field), so its Pod would need a converter of our writing: it is measured on the Secret only.
CASES = [(c, n) for n in sorted(KINDS) for c in ("typed_protobuf", "json_passthrough", "official_protobuf")
         if not (c == "official_protobuf" and n == "pod")]


@pytest.mark.parametrize("contender, name", CASES)
def test_stored_object_to_watch_event(benchmark: Any, oracle: Any, name: str, contender: str) -> None:
    value = stored_value(name)
    kind = KINDS[name]
    benchmark.group = f"kubeproto-event-{name}"
    benchmark.extra_info["stored_bytes"] = len(value)
    buf = PoolBuffer(BUFFER_SIZE)
    if contender == "typed_protobuf":
        enc = KubeProtoEncoder().for_kind("v1", kind)
        assert enc is not None

        def run() -> None:
            buf.length = 0
            enc.encode_stored_event_into("ADDED", value, 12345, buf)

    elif contender == "json_passthrough":
        write = _SplicedEventInto(JSONEncoder(), "ADDED", value, 12345)

        def run() -> None:
            buf.length = 0
            write(buf)

    else:
        cls = oracle.message(f"k8s.io.api.core.v1.{kind}")
        from google.protobuf import json_format

        def run() -> None:
            obj = json.loads(value)
            obj["metadata"]["resourceVersion"] = "12345"
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
            msg = json_format.ParseDict(obj, cls())
            frame = oracle.encode_watch_frame("ADDED", msg, "v1", kind)
            buf.length = 0
            buf.data[: len(frame)] = frame
            buf.length = len(frame)

    benchmark(run)
    if contender != "json_passthrough":
        events = oracle.decode_watch_stream(bytes(buf.data[: buf.length]))
        assert len(events) == 1 and events[0][3].metadata.resourceVersion == "12345"
