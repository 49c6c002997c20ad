"""Content negotiation end to end: every format the server speaks, decoded by an
independent decoder (stdlib json, cbor2, msgpack, the protobuf package), and the
stored-format detection (CBOR / protobuf / foreign JSON values in etcd)."""

from __future__ import annotations

import importlib
import base64
import io
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import cbor2
import httpx
import msgpack
import pytest

import streamcodec
from tests.apiserver_harness import ServerThread

NS = "/api/v1/namespaces/default/secrets"
WATCH_LIST = "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
PROTO_FILE = Path(streamcodec.__file__).with_name("streamcodec.proto")

CBOR = "application/cbor"
PROTO = "application/vnd.streamcodec.struct+protobuf"  # this project's Struct protobuf (typed: test_server_kube_proto)
MSGPACK = "application/vnd.msgpack"


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """streamcodec.proto compiled by protoc (grpcio-tools) into official protobuf classes."""
    import grpc_tools

    out = tmp_path_factory.mktemp("server_proto")
    (out / "streamcodec.proto").write_text(PROTO_FILE.read_text())
    well_known = Path(grpc_tools.__file__).with_name("_proto")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"-I{well_known}", f"--python_out={out}", "streamcodec.proto"],
        check=True, capture_output=True,
    )
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("streamcodec_pb2")
    finally:
        sys.path.remove(str(out))


def proto_object(pb: Any, frame: bytes) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(typeMeta, object) of an object frame, parsed by the protobuf package."""
    from google.protobuf import json_format

    assert frame[:4] == b"k8s\x00"
    view = pb.ObjectFrameView.FromString(frame[4:])
    return json_format.MessageToDict(view.typeMeta), json_format.MessageToDict(view.raw)


def length_prefixed(body: bytes) -> List[bytes]:
    frames, pos = [], 0
    while pos < len(body):
        (n,) = struct.unpack_from(">I", body, pos)
        frames.append(body[pos + 4 : pos + 4 + n])
        pos += 4 + n
    assert pos == len(body)
    return frames


def cbor_sequence(body: bytes) -> List[Any]:
    stream = io.BytesIO(body)
    decoder = cbor2.CBORDecoder(stream)
    items = []
    while stream.tell() < len(body):
        items.append(decoder.decode())
    return items


def untag(item: Any) -> Any:
    """Drop the self-describe tag and thaw cbor2's immutable containers for comparison."""
    if isinstance(item, cbor2.CBORTag) and item.tag == 55799:
        item = item.value
    if isinstance(item, (list, tuple)):
        return [untag(v) for v in item]
    if hasattr(item, "items") and not isinstance(item, dict) or isinstance(item, dict):
        return {k: untag(v) for k, v in item.items()}
    return item


def b64_text(item: Any) -> Any:
    """CBOR byte strings as the base64 text JSON carries them (Kubernetes' []byte)."""
    if isinstance(item, cbor2.CBORTag) and item.tag == 22:  # "expected later base64", as Kubernetes tags []byte
        item = item.value
    if isinstance(item, bytes):
        return base64.b64encode(item).decode()
    if isinstance(item, list):
        return [b64_text(v) for v in item]
    if isinstance(item, dict):
        return {k: b64_text(v) for k, v in item.items()}
    return item


def as_list_item(obj: Dict[str, Any]) -> Dict[str, Any]:
    """A list item as kube-apiserver sends it: no kind, no apiVersion."""
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


@pytest.fixture
def make_server(etcd: Any, prefix: bytes) -> Iterator[Any]:
    servers: List[ServerThread] = []

    def make(**config: Any) -> ServerThread:
        srv = ServerThread(etcd.endpoint, prefix, **config).__enter__()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.__exit__(None, None, None)


def fill(server: ServerThread, n: int) -> List[Dict[str, Any]]:
    c = httpx.Client(base_url=server.url, timeout=10)
    out = []
    for i in range(n):
        r = c.post(NS, json={"metadata": {"name": f"o{i}", "labels": {"i": str(i)}}, "data": {"k": "dmFs"}, "type": "Opaque"})
        assert r.status_code == 201
        out.append(json.loads(r.content))
    return out


@pytest.mark.parametrize("list_mode", ["streaming", "buffered"])
def test_list_in_every_format_matches_json(make_server: Any, list_mode: str, pb: Any) -> None:
    server = make_server(list_mode=list_mode)
    expected = fill(server, 3)
    c = httpx.Client(base_url=server.url, timeout=10)
    as_json = json.loads(c.get(NS).content)
    assert as_json["items"] == [as_list_item(e) for e in expected]
    rv = as_json["metadata"]["resourceVersion"]

    r = c.get(NS, headers={"Accept": CBOR})
    assert r.headers["content-type"] == CBOR and r.content[:3] == b"\xd9\xd9\xf7"
    as_cbor = untag(cbor2.loads(r.content))
    # []byte as a CBOR byte string in tag 22, as Kubernetes writes it
    assert as_cbor["items"][0]["data"] == {"k": cbor2.CBORTag(22, b"val")}
    assert b64_text(as_cbor) == as_json

    r = c.get(NS, headers={"Accept": MSGPACK})
    assert r.headers["content-type"] == MSGPACK
    assert msgpack.unpackb(r.content) == as_json

    r = c.get(NS, headers={"Accept": PROTO})
    assert r.headers["content-type"] == PROTO
    header, *items = length_prefixed(r.content)
    type_meta, list_meta = proto_object(pb, header)
    assert type_meta == {"apiVersion": "v1", "kind": "SecretList"}
    assert list_meta["metadata"] == {"resourceVersion": rv}
    assert [proto_object(pb, f)[1]["metadata"]["name"] for f in items] == ["o0", "o1", "o2"]
    assert proto_object(pb, items[1])[1]["metadata"]["resourceVersion"] == expected[1]["metadata"]["resourceVersion"]


def test_watch_list_in_every_format(make_server: Any, pb: Any) -> None:
    server = make_server()
    expected = fill(server, 2)
    c = httpx.Client(base_url=server.url, timeout=20)
    names = ["o0", "o1"]
    url = f"{NS}?{WATCH_LIST}&timeoutSeconds=1"

    r = c.get(url, headers={"Accept": "application/cbor-seq"})
    assert r.headers["content-type"] == "application/cbor-seq"
    evs = [untag(e) for e in cbor_sequence(r.content)]
    assert [e["type"] for e in evs[:3]] == ["ADDED", "ADDED", "BOOKMARK"]
    assert [e["object"]["metadata"]["name"] for e in evs[:2]] == names
    assert b64_text(evs[0]["object"]) == expected[0]
    assert evs[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}

    r = c.get(url, headers={"Accept": PROTO})
    assert r.headers["content-type"] == PROTO + ";stream=watch"
    evs = [pb.WatchEvent.FromString(f) for f in length_prefixed(r.content)]
    assert [e.type for e in evs[:3]] == ["ADDED", "ADDED", "BOOKMARK"]
    assert proto_object(pb, evs[1].object.raw)[1]["metadata"]["name"] == "o1"
    bookmark_meta, bookmark = proto_object(pb, evs[2].object.raw)
    assert bookmark_meta["kind"] == "Secret"
    assert bookmark["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}

    r = c.get(url, headers={"Accept": MSGPACK})
    unpacker = msgpack.Unpacker()
    unpacker.feed(r.content)
    evs = list(unpacker)
    assert [e["type"] for e in evs[:3]] == ["ADDED", "ADDED", "BOOKMARK"]
    assert evs[1]["object"] == expected[1]


def test_single_objects_and_errors_follow_accept(make_server: Any, pb: Any) -> None:
    server = make_server()
    expected = fill(server, 1)[0]
    c = httpx.Client(base_url=server.url, timeout=10)
    assert b64_text(untag(cbor2.loads(c.get(f"{NS}/o0", headers={"Accept": CBOR}).content))) == expected
    assert msgpack.unpackb(c.get(f"{NS}/o0", headers={"Accept": MSGPACK}).content) == expected
    meta, obj = proto_object(pb, c.get(f"{NS}/o0", headers={"Accept": PROTO}).content)
    assert meta == {"apiVersion": "v1", "kind": "Secret"} and obj["metadata"]["uid"] == expected["metadata"]["uid"]
    missing = c.get(f"{NS}/nope", headers={"Accept": CBOR})
    assert missing.status_code == 404 and untag(cbor2.loads(missing.content))["reason"] == "NotFound"
    # Accept with q-values and kubectl's Table preference: plain JSON wins
    r = c.get(f"{NS}/o0", headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"})
    assert r.headers["content-type"] == "application/json" and json.loads(r.content) == expected
    r = c.get(f"{NS}/o0", headers={"Accept": "application/json;q=0.5, application/vnd.msgpack"})
    assert msgpack.unpackb(r.content) == expected
    r = c.get(f"{NS}/o0", headers={"Accept": "*/*"})
    assert json.loads(r.content) == expected
    # a body in CBOR is accepted too
    body = cbor2.dumps({"metadata": {"name": "from-cbor"}, "data": {"k": "eA=="}})
    r = c.post(NS, content=body, headers={"Content-Type": CBOR})
    assert r.status_code == 201 and json.loads(r.content)["metadata"]["name"] == "from-cbor"


def test_stored_formats_are_detected_and_resource_version_patched(make_server: Any, etcd: Any, prefix: bytes) -> None:
    """CBOR and protobuf values (written by another writer) and JSON in a foreign
    layout (stale resourceVersion inside, metadata not first) all come out right."""
    server = make_server()
    base = prefix.decode() + "secrets/default/"
    objects = {
        "cbor": {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "cbor"}, "data": {"k": "Y2Jvcg=="}},
        "proto": {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "proto"}, "data": {"k": "cHJvdG8="}},
        "foreign": {"kind": "Secret", "metadata": {"name": "foreign", "resourceVersion": "1"}, "data": {"k": "Zg=="}},
    }
    stored = {
        "cbor": cbor2.dumps(cbor2.CBORTag(55799, objects["cbor"])),
        "proto": streamcodec.ProtoEncoder().encode(objects["proto"]),
        "foreign": json.dumps(objects["foreign"], indent=1).encode(),
    }

    async def put_all() -> Dict[str, int]:
        store = await server.app.store()
        return {name: await store.put((base + name).encode(), value) for name, value in stored.items()}

    revisions = server.call(put_all())
    c = httpx.Client(base_url=server.url, timeout=10)
    for name, obj in objects.items():
        got = json.loads(c.get(f"{NS}/{name}").content)
        assert got["metadata"]["resourceVersion"] == str(revisions[name])
        assert got["data"] == obj["data"] and got["metadata"]["name"] == name
    listed = json.loads(c.get(NS).content)
    assert {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in listed["items"]} == {
        n: str(r) for n, r in revisions.items()
    }
    as_cbor = untag(cbor2.loads(c.get(NS, headers={"Accept": CBOR}).content))
    assert b64_text(as_cbor) == listed
