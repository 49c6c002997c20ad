"""Kubernetes' typed protobuf (streamcodec.KubeProtoEncoder) checked by Kubernetes' own generated.proto.

Every frame is decoded by the oracle (tests/kube_proto.py: the official .proto files compiled with
grpcio-tools, strict about unknown fields) and compared with the JSON it came from; the compiled
transcoder and its pure-Python twin must write the same bytes.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict

import pytest

from benchmarks import fixtures
from streamcodec import BufferPool, EncodeError, FrameTooLarge, _kubeproto_py
from streamcodec.kube_schema import DEFAULT_SCHEMA, KubeSchema

try:
    from streamcodec import _kubeproto as _compiled
except ImportError:  # pure-Python installation: the twin is compared with itself
    _compiled = _kubeproto_py

IMPLEMENTATIONS = {"compiled": _compiled, "twin": _kubeproto_py}


def stored(obj: Dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def objects() -> Dict[str, Dict[str, Any]]:
    pod = fixtures.pod()
    return {
        "pod": pod,
        "secret": fixtures.secret(64 * 1024),
        "configmap": fixtures.configmap(50),
        "namespace": {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1", "labels": {"a": "b"}}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}},
        "service": {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}, {"port": 443, "targetPort": 8443}], "selector": {"app": "web"}, "clusterIP": "10.0.0.1"},
        },
        "pvc": {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
        },
    }


KIND_OF = {"pod": "Pod", "secret": "Secret", "configmap": "ConfigMap", "namespace": "Namespace", "service": "Service", "pvc": "PersistentVolumeClaim"}


def proto_json(kp: Any, msg: Any) -> Dict[str, Any]:
    return kp.to_dict(msg)


@pytest.mark.parametrize("name", sorted(KIND_OF))
def test_stored_json_becomes_the_kinds_own_message_decodable_by_kubernetes_proto(kube_proto: Any, name: str) -> None:
    obj = objects()[name]
    value = stored(obj)
    frames = {impl: mod.KubeProtoEncoder().encode_stored("v1", KIND_OF[name], value, 4242) for impl, mod in IMPLEMENTATIONS.items()}
    assert frames["compiled"] == frames["twin"]
    api_version, kind, msg = kube_proto.decode_object(frames["compiled"])  # strict: no unknown field anywhere
    assert (api_version, kind) == ("v1", KIND_OF[name])
    got = proto_json(kube_proto, msg)
    assert got["metadata"]["resourceVersion"] == "4242"
    assert got["metadata"]["name"] == obj["metadata"]["name"]
    if name == "pod":
        c0 = msg.spec.containers[0]
        assert c0.image == obj["spec"]["containers"][0]["image"]
        assert c0.resources.limits["memory"].string == "256Mi"
        assert c0.readinessProbe.handler.httpGet.port.intVal == 8080 and c0.readinessProbe.handler.httpGet.port.type == 0
        assert c0.env[0].value == "value-0-é"
        assert msg.metadata.creationTimestamp.seconds == 1795860000  # 2026-11-28T10:00:00Z
        assert msg.metadata.ownerReferences[0].controller is True
        assert msg.spec.volumes[0].volumeSource.projected.defaultMode == 420  # inlined VolumeSource
        assert msg.spec.tolerations[0].tolerationSeconds == 300
        assert msg.status.containerStatuses[1].state.running.startedAt.seconds == 1795860003
        assert [c.type for c in msg.status.conditions] == ["Initialized", "Ready", "ContainersReady", "PodScheduled"]
    if name == "secret":
        assert msg.data["payload"] == base64.b64decode(obj["data"]["payload"])
        assert msg.type == "Opaque"
    if name == "configmap":
        assert dict(msg.data) == obj["data"]
    if name == "service":
        assert msg.spec.ports[0].targetPort.type == 1 and msg.spec.ports[0].targetPort.strVal == "http"
        assert msg.spec.ports[1].targetPort.intVal == 8443
    if name == "pvc":
        assert msg.spec.resources.requests["storage"].string == "10Gi"


def test_event_frames_and_list_bodies_decode_as_kubernetes_writes_them(kube_proto: Any) -> None:
    secrets = [stored(fixtures.secret(1000 + 300 * i, name=f"s{i}")) for i in range(3)]
    pool = BufferPool(1 << 22, 1 << 21)
    for impl, mod in IMPLEMENTATIONS.items():
        kind = mod.KubeProtoEncoder().for_kind("v1", "Secret")
        buf = pool.acquire()
        for i, value in enumerate(secrets):
            kind.encode_stored_event_into("ADDED", value, 10 + i, buf)
        kind.encode_event_into("BOOKMARK", {"kind": "Secret", "apiVersion": "v1", "metadata": {"resourceVersion": "12", "annotations": {"k8s.io/initial-events-end": "true"}}}, buf)
        kind.encode_event_into("ERROR", {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old"}, buf)
        events = kube_proto.decode_watch_stream(bytes(buf.data[: buf.length]))
        assert [(t, k) for t, _, k, _ in events] == [("ADDED", "Secret")] * 3 + [("BOOKMARK", "Secret"), ("ERROR", "Status")]
        assert [m.metadata.resourceVersion for _, _, _, m in events[:4]] == ["10", "11", "12", "12"]
        assert events[3][3].metadata.annotations["k8s.io/initial-events-end"] == "true"
        assert events[4][3].code == 410 and events[4][3].reason == "Expired"

        sizes = [kind.list_item_size(v, 20 + i) for i, v in enumerate(secrets)]
        body = pool.acquire()
        kind.encode_list_start_into(body, kind="SecretList", api_version="v1", metadata={"resourceVersion": "22", "continue": "abc"}, items_size=sum(sizes))
        for i, value in enumerate(secrets):
            assert kind.encode_stored_list_item_into(value, 20 + i, body, i) == sizes[i]
        kind.encode_list_end_into(body, 3)
        api_version, list_kind, lst = kube_proto.decode_object(bytes(body.data[: body.length]))
        assert (api_version, list_kind) == ("v1", "SecretList")
        assert lst.metadata.resourceVersion == "22" and lst.metadata.__getattribute__("continue") == "abc"
        assert [s.metadata.name for s in lst.items] == ["s0", "s1", "s2"]
        assert [s.metadata.resourceVersion for s in lst.items] == ["20", "21", "22"]
        with pytest.raises(ValueError, match="items_size"):
            kind.encode_list_start_into(body, kind="SecretList", api_version="v1", metadata={})
        pool.release(buf)
        pool.release(body)


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize(
    "patch, message",
    [
        ({"spec": {"priority": 1.5}}, "priority"),
        ({"spec": {"priority": 2**31}}, "out of range"),
        ({"spec": {"priority": "1"}}, "priority"),
        ({"spec": {"enableServiceLinks": "yes"}}, "enableServiceLinks"),
        ({"metadata": {"name": "x", "creationTimestamp": "yesterday"}}, "creationTimestamp"),
        ({"metadata": {"name": "x", "creationTimestamp": "2026-02-30T00:00:00Z"}}, "creationTimestamp"),
        ({"spec": {"containers": {"name": "a"}}}, "containers"),
        ({"metadata": {"name": "x", "labels": ["a"]}}, "labels"),
    ],
)
def test_values_the_field_cannot_hold_are_encode_errors(impl: str, patch: Dict[str, Any], message: str) -> None:
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}
    obj.update(patch)
    with pytest.raises(EncodeError, match=message):
        IMPLEMENTATIONS[impl].KubeProtoEncoder().encode_stored("v1", "Pod", stored(obj), 1)


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_bad_base64_in_a_secret_is_an_encode_error(impl: str) -> None:
    obj = {"metadata": {"name": "x"}, "data": {"k": "not base64!"}}
    with pytest.raises(EncodeError, match="base64"):
        IMPLEMENTATIONS[impl].KubeProtoEncoder().encode_stored("v1", "Secret", stored(obj), 1)


def test_unknown_keys_are_dropped_and_escapes_nulls_and_times_read_like_go(kube_proto: Any) -> None:
    obj = {
        "metadata": {"name": "we\u00efrd", "resourceVersion": "999", "annotations": {"a\"b": "line\nnext \ud83d\ude00"}, "deletionTimestamp": None,
                     "creationTimestamp": "2026-01-02T03:04:05.250+01:00"},
        "notAField": {"deep": [1, {"x": None}]},
        "data": {"k": "AAEC"},
        "type": None,
    }
    value = json.dumps(obj, separators=(",", ":")).encode()  # ensure_ascii: \u escapes, a surrogate pair
    a = _compiled.KubeProtoEncoder().encode_stored("v1", "Secret", value, 7)
    b = _kubeproto_py.KubeProtoEncoder().encode_stored("v1", "Secret", value, 7)
    assert a == b
    _, _, msg = kube_proto.decode_object(a)
    assert msg.metadata.name == "weïrd" and msg.metadata.resourceVersion == "7"
    assert msg.metadata.annotations['a"b'] == "line\nnext 😀"
    assert msg.metadata.creationTimestamp.seconds == 1767319445 and msg.metadata.creationTimestamp.nanos == 250_000_000
    assert not msg.metadata.HasField("deletionTimestamp") and not msg.HasField("type")
    assert msg.data["k"] == b"\x00\x01\x02"


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_frames_over_max_frame_size_and_full_buffers_leave_the_buffer_as_it_was(impl: str) -> None:
    kind = IMPLEMENTATIONS[impl].KubeProtoEncoder(max_frame_size=4096).for_kind("v1", "Secret")
    value = stored(fixtures.secret(16 * 1024))
    pool = BufferPool(1 << 16, 1 << 15)
    buf = pool.acquire()
    buf.data[:2] = b"ab"
    buf.length = 2
    with pytest.raises(FrameTooLarge):
        kind.encode_stored_event_into("ADDED", value, 1, buf)
    assert buf.length == 2
    small = IMPLEMENTATIONS[impl].KubeProtoEncoder().for_kind("v1", "Secret")
    buf.length = buf.capacity - 100
    from streamcodec import BufferFull

    with pytest.raises(BufferFull):
        small.encode_stored_event_into("ADDED", value, 1, buf)
    assert buf.length == buf.capacity - 100
    pool.release(buf)


def test_schema_registry_checks_its_tables() -> None:
    with pytest.raises(ValueError, match="unknown message"):
        KubeSchema({("v1", "Secret"): "k8s.io.api.core.v1.Secret"}, {})
    with pytest.raises(ValueError, match="unknown message"):
        KubeSchema({("example.com/v1", "Widget"): "example.Widget"}, {"example.Widget": [("spec", 2, "MESSAGE", "example.Missing", "ONE")]})
    schema = KubeSchema(
        {("example.com/v1", "Widget"): "example.Widget"},
        {
            "example.Widget": [("metadata", 1, "MESSAGE", "example.Meta", "ONE"), ("size", 2, "INT64", None, "ONE"), ("blob", 3, "BYTES", None, "ONE")],
            "example.Meta": [("name", 1, "STRING", None, "ONE")],
        },
    )
    assert schema.message_name("example.com/v1", "Widget") == "example.Widget"
    assert schema.byte_paths("example.Widget") == {"blob": True}
    for mod in IMPLEMENTATIONS.values():
        frame = mod.KubeProtoEncoder(schema).encode_stored("example.com/v1", "Widget", b'{"metadata":{"name":"w"},"size":-3,"blob":"/w=="}')
        assert frame == b"k8s\x00" + bytes.fromhex("0a18") + b"\n\x0eexample.com/v1\x12\x06Widget" + bytes.fromhex("1213") + bytes.fromhex("0a03") + b"\n\x01w" + bytes.fromhex("10fdffffffffffffffff01") + bytes.fromhex("1a01ff") + b"\x1a\x00\x22\x00"


def test_default_schema_covers_the_server_kinds() -> None:
    for kind in ("Secret", "ConfigMap", "Namespace", "Pod", "Service", "Status", "SecretList", "PodList"):
        assert DEFAULT_SCHEMA.message_name("v1", kind) is not None
    assert DEFAULT_SCHEMA.byte_paths("k8s.io.api.core.v1.Secret") == {"data": True}
    assert DEFAULT_SCHEMA.byte_paths("k8s.io.api.core.v1.ConfigMap") == {"binaryData": True}


@pytest.mark.parametrize("name", sorted(KIND_OF))
def test_decoding_a_typed_frame_gives_back_the_json_it_came_from(name: str) -> None:
    from streamcodec import KubeProtoDecoder

    obj = objects()[name]
    frame = _compiled.KubeProtoEncoder().encode_stored("v1", KIND_OF[name], stored(obj), 99)
    back = KubeProtoDecoder().decode(frame)
    expected = json.loads(stored(obj))
    expected["metadata"]["resourceVersion"] = "99"

    def drop_nulls(v: Any) -> Any:  # JSON nulls are absent fields on the wire
        if isinstance(v, dict):
            return {k: drop_nulls(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [drop_nulls(x) for x in v]
        return v

    assert back == drop_nulls(expected)


def test_the_decoder_refuses_what_the_message_does_not_declare() -> None:
    from streamcodec import DecodeError, KubeProtoDecoder

    type_meta = b"\x0a\x02v1\x12\x06Secret"
    undeclared = b"k8s\x00" + b"\x0a" + bytes([len(type_meta)]) + type_meta + b"\x12\x02\x78\x01" + b"\x1a\x00\x22\x00"
    with pytest.raises(DecodeError, match="field 15"):
        KubeProtoDecoder().decode(undeclared)  # a Secret with a field 15
    with pytest.raises(DecodeError):
        KubeProtoDecoder().decode(b"k8s\x00\x0a\x05")
    with pytest.raises(DecodeError):
        KubeProtoDecoder().decode(b"{}")
