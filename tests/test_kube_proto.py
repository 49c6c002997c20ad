"""Kubernetes' typed protobuf (streamcodec.KubeProtoEncoder) checked by Kubernetes' own generated.proto.

Every frame is decoded by the oracle (tests/kube_proto.py: the official .proto files compiled with
grpcio-tools, strict about unknown fields) and compared with the JSON it came from; the compiled
transcoder and its pure-Python twin must write the same bytes, and the compiled KubeProtoDecoder and
its twin must build the same objects (types and key order too) or raise the same errors at the same
offsets, on random objects of every kind, damaged ones and messages made field by field on the wire.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import fixtures
from streamcodec import BufferPool, DecodeError, EncodeError, FrameTooLarge, _kubeproto_py
from streamcodec.kube_schema import DEFAULT_SCHEMA, KubeSchema
from tests.fuzz import examples
from tests.test_max_values import count

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
    for bad in (("spec", 2, "MESSAGE", "example.Meta", "ONE", "OMITEMPTY"), ("tags", 2, "STRING", None, "REPEATED", "OMITEMPTY"),
                ("size", 2, "INT64", None, "ONE", "OMIT")):
        with pytest.raises(ValueError, match="OMITEMPTY"):
            KubeSchema({}, {"example.Meta": [("name", 1, "STRING", None, "ONE")], "example.Bad": [bad]})
    omitting = KubeSchema({}, {"example.Meta": [("name", 1, "STRING", None, "ONE", "OMITEMPTY"), ("n", 2, "INT64", None, "ONE")]})
    assert [(f.json_name, f.omit_empty) for f in omitting.message("example.Meta").fields] == [("name", True), ("n", False)]
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


# ---------------------------------------------------------------------------
# KubeProtoDecoder: the compiled one and its twin build the same objects and raise the same errors

DECODERS = {impl: mod.KubeProtoDecoder for impl, mod in IMPLEMENTATIONS.items()}
MIN_SECONDS, MAX_SECONDS = -62135596800, 253402300799  # 0001-01-01T00:00:00Z, 9999-12-31T23:59:59Z
ZERO_TIME = "zero"  # a time that is Go's zero time.Time
json_values = st.recursive(
    st.one_of(st.booleans(), st.integers(-(2**53), 2**53), st.text(max_size=6)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children, max_size=3)),
    max_leaves=8,
)
times = st.builds(lambda s, n: _kubeproto_py._time_text(s, n, 0), st.integers(MIN_SECONDS, MAX_SECONDS),
                  st.one_of(st.just(0), st.integers(0, 10**9 - 1)))
SCALARS = {
    "STRING": st.text(max_size=8),
    "BYTES": st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
    "BOOL": st.booleans(),
    "INT32": st.integers(-(2**31), 2**31 - 1),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "DOUBLE": st.floats(allow_nan=False, allow_infinity=False),
    "TIME": times,
    "QUANTITY": st.one_of(st.sampled_from(["1", "250m", "10Gi", "1.5e3"]), st.text(max_size=5)),
    "INTORSTRING": st.one_of(st.integers(-(2**31), 2**31 - 1), st.text(max_size=5)),
    "RAWJSON": json_values,
    "DURATION": st.integers(-(10**15), 10**15).map(lambda n: f"{n}ns"),
}
_MESSAGES: Dict[Any, Any] = {}


def message_values(name: str, depth: int) -> Any:
    """JSON objects of message ``name`` (the encoder's input): any subset of its keys, nested ``depth`` deep."""
    key = (name, depth)
    if key not in _MESSAGES:
        _MESSAGES[key] = st.deferred(lambda: st.fixed_dictionaries(
            {}, optional={f.json_name: field_values(f, depth) for f in DEFAULT_SCHEMA.message(name).fields}))
    return _MESSAGES[key]


def field_values(f: Any, depth: int) -> Any:
    one = (message_values(f.message, depth - 1) if depth > 0 else st.just({})) if f.kind == "MESSAGE" else SCALARS[f.kind]
    if f.shape == "REPEATED":
        return st.lists(one, max_size=3)
    if f.shape == "MAP":
        return st.dictionaries(st.text(max_size=5), st.one_of(one, st.none()), max_size=3)
    return one


kube_objects = st.sampled_from(DEFAULT_SCHEMA.kinds()).flatmap(
    lambda k: message_values(DEFAULT_SCHEMA.message_name(*k) or "", 2).map(lambda o: {**o, "apiVersion": k[0], "kind": k[1]}))


def decoded(decoder: Any, frame: Any) -> str:
    """What decoding gives, as its repr (types, key order and all), or the error's type, text and offset."""
    try:
        return repr(("ok", decoder.decode(frame)))
    except Exception as exc:  # noqa: BLE001  (whatever either raises, the other must raise too)
        return repr((type(exc).__name__, str(exc), getattr(exc, "offset", None)))


def agree(frame: Any, max_values: Any = None) -> str:
    """The outcome of both decoders, which must be the same."""
    outcomes = {impl: decoded(cls(max_values=max_values), frame) for impl, cls in DECODERS.items()}
    assert outcomes["compiled"] == outcomes["twin"], frame
    return outcomes["twin"]


def secret_with_time(seconds: int, nanos: int) -> bytes:
    def ld(number: int, payload: bytes) -> bytes:
        return _kubeproto_py._len_field(number, payload)

    time = b"\x08" + _kubeproto_py._varint(seconds) + (b"\x10" + _kubeproto_py._varint(nanos) if nanos else b"")
    return _kubeproto_py.KubeProtoEncoder()._object_frame("v1", "Secret", ld(1, ld(8, time)))


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(obj=kube_objects, data=st.data())
def test_compiled_and_twin_decoders_agree_on_random_objects(obj: Dict[str, Any], data: st.DataObject) -> None:
    frame = _kubeproto_py.KubeProtoEncoder().encode(obj)
    whole = agree(frame)
    assert whole.startswith("('ok'"), whole
    back = DECODERS["compiled"]().decode(frame)
    assert agree(memoryview(frame)) == agree(bytearray(frame)) == whole  # read in place, or copied: the same
    limit = data.draw(st.integers(1, count(back) + 1))
    agree(frame, limit)


@settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(obj=kube_objects, edits=st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert", "repeat"]), st.floats(0, 1),
                                                  st.binary(min_size=1, max_size=6)), min_size=1, max_size=3),
       limit=st.one_of(st.none(), st.integers(1, 60)))
def test_compiled_and_twin_decoders_agree_on_damaged_messages(obj: Dict[str, Any], edits: List[Any], limit: Any) -> None:
    """Bytes flipped, cut, inserted or repeated inside the message (the envelope intact): the same object, or
    the same error at the same offset, with or without a max_values."""
    enc = _kubeproto_py.KubeProtoEncoder()
    body = bytearray(enc._body(obj["apiVersion"], obj["kind"], obj, None))
    for op, where, extra in edits:
        at = int(where * len(body))
        if op == "flip" and body:
            body[min(at, len(body) - 1)] ^= extra[0]
        elif op == "cut":
            del body[at:]
        elif op == "insert":
            body[at:at] = extra
        else:
            body[at:at] = body[at:at + extra[0] % 16]
    agree(enc._object_frame(obj["apiVersion"], obj["kind"], bytes(body)), limit)


@pytest.mark.parametrize("seconds, nanos, text", [
    (0, 0, "1970-01-01T00:00:00Z"),
    (-1, 0, "1969-12-31T23:59:59Z"),
    (1700000000, 120000000, "2023-11-14T22:13:20.12Z"),
    (MIN_SECONDS, 0, ZERO_TIME),  # Go's zero time: metav1.Time's JSON is null
    (MIN_SECONDS, 1, "0001-01-01T00:00:00.000000001Z"),
    (-59011459200, 0, "0100-01-01T00:00:00Z"),  # padded to 4 digits, as Go writes it
    (951782400, 0, "2000-02-29T00:00:00Z"),
    (MAX_SECONDS, 5, "9999-12-31T23:59:59.000000005Z"),
    (MAX_SECONDS, 10**9, "9999-12-31T23:59:59.1Z"),  # nanos past a second: the twin's text, from the twin
    (MAX_SECONDS + 1, 0, None),
    (MIN_SECONDS - 1, 0, None),
    (-(2**63), 0, None),
])
def test_times_read_the_same_in_both_decoders(seconds: int, nanos: int, text: Any) -> None:
    for cls in DECODERS.values():
        frame = secret_with_time(seconds, nanos)
        if text is None:
            with pytest.raises(DecodeError, match="out of range"):
                cls().decode(frame)
        else:
            assert cls().decode(frame)["metadata"]["creationTimestamp"] == (None if text is ZERO_TIME else text)
    agree(secret_with_time(seconds, nanos))


def test_a_time_go_wrote_as_no_bytes_is_null_as_in_its_json() -> None:
    """metav1.Time marshals its zero as an empty message, and its JSON as null (a Pod condition's lastProbeTime)."""
    ld = _kubeproto_py._len_field
    frame = _kubeproto_py.KubeProtoEncoder()._object_frame("v1", "Secret", ld(1, ld(8, b"")))
    for cls in DECODERS.values():
        assert cls().decode(frame)["metadata"] == {"creationTimestamp": None}
    agree(frame)


def test_zero_scalars_go_leaves_out_of_its_json_are_left_out() -> None:
    """Go's protobuf writes a non-pointer field whatever its value; its JSON leaves an omitempty one out when zero."""
    ld, text = _kubeproto_py._len_field, lambda n, t: _kubeproto_py._len_field(n, t.encode())
    meta = text(1, "a") + text(2, "") + text(4, "") + b"\x38\x00" + text(2, "x") + text(2, "")  # generation 0; generateName x then ""
    status = ld(8, text(1, "app") + b"\x20\x00" + b"\x28\x00")  # containerStatuses[0]: ready false, restartCount 0
    frame = _kubeproto_py.KubeProtoEncoder()._object_frame("v1", "Pod", ld(1, meta) + ld(3, status))
    for cls in DECODERS.values():
        obj = cls().decode(frame)
        assert obj["metadata"] == {"name": "a"}  # generateName, selfLink and generation are omitempty: the last one given wins
        # name, ready and restartCount have no omitempty: Go's JSON writes their zeros
        assert obj["status"] == {"containerStatuses": [{"name": "app", "ready": False, "restartCount": 0}]}
    agree(frame)


@settings(max_examples=examples(300), deadline=None)
@given(seconds=st.one_of(st.integers(MIN_SECONDS - 10, MAX_SECONDS + 10), st.integers(-(2**63), 2**63 - 1)),
       nanos=st.one_of(st.integers(0, 10**9 + 10), st.integers(0, 2**64 - 1)))
def test_random_times_read_the_same_in_both_decoders(seconds: int, nanos: int) -> None:
    agree(secret_with_time(seconds, nanos))


def test_the_compiled_decoder_follows_its_schema_as_it_changes() -> None:
    schema = KubeSchema({("example.com/v1", "Widget"): "example.Widget"},
                        {"example.Widget": [("size", 2, "INT64", None, "ONE")]})
    frame = _kubeproto_py.KubeProtoEncoder(schema)._object_frame("example.com/v1", "Widget", b"\x10\x03\x1a\x01\xff")
    for cls in DECODERS.values():
        with pytest.raises(DecodeError, match="field 3 is not in the message"):
            cls(schema).decode(frame)
    schema.register({}, {"example.Widget": [("size", 2, "INT64", None, "ONE"), ("blob", 3, "BYTES", None, "ONE")]})
    for cls in DECODERS.values():
        assert cls(schema).decode(frame) == {"size": 3, "blob": "/w==", "kind": "Widget", "apiVersion": "example.com/v1"}


#: Go's own durationTests (time/time_test.go): nanoseconds and what time.Duration.String writes
GO_DURATIONS = [(0, "0s"), (1, "1ns"), (1100, "1.1µs"), (2200 * 10**3, "2.2ms"), (3300 * 10**6, "3.3s"),
                (245 * 10**9, "4m5s"), (245001 * 10**6, "4m5.001s"), (18367001 * 10**6, "5h6m7.001s"),
                (8 * 60 * 10**9 + 1, "8m0.000000001s"), (2**63 - 1, "2562047h47m16.854775807s"),
                (-(2**63), "-2562047h47m16.854775808s"), (-300 * 10**6, "-300ms"), (3600 * 10**9, "1h0m0s")]


@pytest.mark.parametrize("nanoseconds, text", GO_DURATIONS)
def test_durations_read_as_go_writes_them_and_back(nanoseconds: int, text: str) -> None:
    schema = KubeSchema({("example.com/v1", "Timer"): "example.Timer"},
                        {"example.Timer": [("every", 1, "DURATION", None, "ONE")]})
    duration = b"\x08" + _kubeproto_py._varint(nanoseconds & (2**64 - 1))
    frame = _kubeproto_py.KubeProtoEncoder(schema)._object_frame(
        "example.com/v1", "Timer", _kubeproto_py._len_field(1, duration))
    for cls in DECODERS.values():
        assert cls(schema).decode(frame)["every"] == text
    assert _kubeproto_py.parse_duration(text, "every") == nanoseconds


def _wire_field(number: int, wire: int, payload: Any) -> bytes:
    tag = _kubeproto_py._varint(number << 3 | wire)
    if wire == 0:
        return tag + _kubeproto_py._varint(payload)
    if wire == 2:
        return tag + _kubeproto_py._varint(len(payload)) + payload
    return tag + payload


def wire_values(payload: Any, wire: int = 2) -> Any:
    """One field's value: ``payload`` as wire type ``wire`` mostly, else as any other wire type."""
    right = payload.map(lambda v: (wire, v))
    wrong = [st.integers(0, 2**64 - 1).map(lambda v: (0, v)), st.binary(min_size=8, max_size=8).map(lambda b: (1, b)),
             st.binary(min_size=4, max_size=4).map(lambda b: (5, b)), st.binary(max_size=6).map(lambda b: (2, b))]
    return st.one_of(*[right] * 12, *wrong)


SCALAR_WIRES = {"BOOL": (0, st.integers(0, 2**64 - 1)), "INT32": (0, st.integers(0, 2**64 - 1)),
                "INT64": (0, st.integers(0, 2**64 - 1)), "DOUBLE": (1, st.binary(min_size=8, max_size=8))}


#: the small messages of Time, Quantity, IntOrString, FieldsV1 and Duration, and map entries: fields 1-3
small_messages = st.lists(st.one_of(
    st.tuples(st.integers(1, 4), wire_values(st.integers(0, 2**64 - 1), 0)),
    st.tuples(st.integers(1, 4), wire_values(st.one_of(
        st.binary(max_size=6), st.text(max_size=4).map(str.encode), json_values.map(lambda v: json.dumps(v).encode())))),
), max_size=4).map(lambda fs: b"".join(_wire_field(n, *wp) for n, wp in fs))
_RAW: Dict[Any, Any] = {}


def raw_messages(name: str, depth: int) -> Any:
    """Messages of ``name`` built field by field on the wire: the schema's field numbers (and a few others)
    with a value of the field's type or of any other wire type, a field repeated or out of order."""
    from streamcodec import _kube_schema_data

    key = (name, depth)
    if key not in _RAW:
        specs = _kube_schema_data.MESSAGES[name]

        def payload(spec: Any) -> Any:
            _, _, kind, message, shape = spec[:5]
            if kind in SCALAR_WIRES and shape != "MAP":
                return wire_values(SCALAR_WIRES[kind][1], SCALAR_WIRES[kind][0])
            if kind in SCALAR_WIRES:
                inner = SCALAR_WIRES[kind][1].map(lambda v: _wire_field(2, SCALAR_WIRES[kind][0], v))
                return wire_values(st.text(max_size=3).map(lambda k: _wire_field(1, 2, k.encode())).flatmap(
                    lambda k: inner.map(lambda v: k + v)))
            if kind == "MESSAGE":
                inner = raw_messages(message, depth - 1) if depth > 0 else st.just(b"")
            elif kind in ("STRING", "BYTES"):
                inner = st.one_of(st.text(max_size=6).map(str.encode), st.binary(max_size=6))
            else:
                inner = small_messages
            if shape == "MAP":
                inner = st.tuples(st.text(max_size=3).map(str.encode), inner).map(
                    lambda kv: _wire_field(1, 2, kv[0]) + _wire_field(2, 2, kv[1]))
            return wire_values(inner)

        known = st.sampled_from(specs).flatmap(lambda spec: payload(spec).map(lambda wp: _wire_field(spec[1], *wp)))
        unknown = st.tuples(st.integers(1, 40), wire_values(st.binary(max_size=4))).map(lambda t: _wire_field(t[0], *t[1]))
        field = st.one_of(*[known] * 15, unknown) if specs else st.just(b"")
        _RAW[key] = st.deferred(lambda: st.lists(field, max_size=5).map(b"".join))
    return _RAW[key]


@settings(max_examples=examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), limit=st.one_of(st.none(), st.integers(1, 40)))
def test_compiled_and_twin_decoders_agree_on_random_wire_messages(data: st.DataObject, limit: Any) -> None:
    """Wrong wire types, invalid UTF-8, unknown and inlined fields, broken times and raw JSON: the same
    outcome from both decoders."""
    api_version, kind = data.draw(st.sampled_from(DEFAULT_SCHEMA.kinds()))
    body = data.draw(raw_messages(DEFAULT_SCHEMA.message_name(api_version, kind) or "", 3))
    agree(_kubeproto_py.KubeProtoEncoder()._object_frame(api_version, kind, body), limit)


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("damaged", [b'{"f:x":{]}', b'{"f:\xff":{}}'])  # not JSON; not UTF-8
def test_a_fields_v1_that_is_not_json_is_a_decode_error(impl: str, damaged: bytes) -> None:
    module = IMPLEMENTATIONS[impl]
    good = b'{"f:x":{}}'
    frame = module.KubeProtoEncoder().for_kind("v1", "ConfigMap").encode(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "managedFields": [{"manager": "m", "fieldsV1": {"f:x": {}}}]}}
    )
    assert frame.count(good) == 1 and len(damaged) == len(good)
    with pytest.raises(DecodeError, match="FieldsV1 or RawExtension is not valid") as caught:
        module.KubeProtoDecoder().decode(frame.replace(good, damaged))
    assert caught.value.offset == frame.index(good)
