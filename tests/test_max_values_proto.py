"""``max_values`` of the protobuf decoders: ProtoDecoder (compiled and twin) and KubeProtoDecoder.

A frame's values are counted as the JSON data model has them: the top value 1, every list element
1, every map entry 2 (key and value), recursively.  A decoder with ``max_values=count(obj)`` decodes
the frame, one with ``count(obj) - 1`` raises TooManyValues at the value that goes over.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamcodec
from benchmarks import fixtures
from streamcodec import DecodeError, TooManyValues, _kubeproto_py, _proto_py
from tests.fuzz import examples
from tests.test_max_values import count

IMPLEMENTATIONS: Dict[str, Any] = {"twin": _proto_py}
try:
    from streamcodec import _proto

    IMPLEMENTATIONS["compiled"] = _proto
except ImportError:  # a pure-Python installation: only the twin
    pass

# JSON-shaped objects rich in containers, empty ones included: where counts and offsets can differ.
scalars = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(st.text(max_size=6), children, max_size=5)),
    max_leaves=40,
)
objects = st.dictionaries(st.text(max_size=6), values, max_size=6)
event_types = st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"])


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def proto(request: pytest.FixtureRequest) -> Any:
    """The module of one ProtoDecoder implementation."""
    return IMPLEMENTATIONS[request.param]



def outcome(decoder: Any, frame: bytes) -> Tuple[Any, ...]:
    """What decoding gives: the object, or the error's text and offset."""
    try:
        return ("ok", decoder.decode(frame))
    except DecodeError as exc:
        return (type(exc).__name__, str(exc), exc.offset)


def stream_outcome(decoder: Any, stream: bytes) -> List[Any]:
    """The events a stream decodes into, up to the error (its text and offset) if one is raised."""
    got: List[Any] = []
    decoder.feed(stream)
    try:
        got.extend(decoder)
    except DecodeError as exc:
        got.append((type(exc).__name__, str(exc), exc.offset))
    return got


# ---------------------------------------------------------------------------
# ProtoDecoder


@pytest.mark.parametrize(
    "obj, values",
    [
        ({}, 1),
        ({"a": None}, 3),
        ({"a": "text", "b": True, "c": 1.5}, 7),
        ({"a": []}, 3),
        ({"a": {}}, 3),
        ({"a": [[], {}, [[]]]}, 7),
        ({"a": [1, {"b": [None, True]}], "c": "x"}, 11),
        ({"deep": {"x": {"y": {"z": [[[]]]}}}}, 11),
    ],
)
def test_the_count_of_an_object_is_its_boundary(proto: Any, obj: Dict[str, Any], values: int) -> None:
    assert count(obj) == values
    frame = _proto_py.ProtoEncoder().encode(obj)
    assert proto.ProtoDecoder(max_values=values).decode(frame) == obj
    if values > 1:
        with pytest.raises(TooManyValues) as raised:
            proto.ProtoDecoder(max_values=values - 1).decode(frame)
        assert raised.value.max_values == values - 1


@settings(max_examples=examples(150), suppress_health_check=[HealthCheck.too_slow])
@given(obj=objects)
def test_random_objects_decode_at_their_count_and_not_below(obj: Dict[str, Any]) -> None:
    frame = _proto_py.ProtoEncoder().encode(obj)
    for module in IMPLEMENTATIONS.values():
        decoded = module.ProtoDecoder().decode(frame)
        values = count(decoded)
        assert module.ProtoDecoder(max_values=values).decode(frame) == decoded
        if values > 1:
            with pytest.raises(TooManyValues):
                module.ProtoDecoder(max_values=values - 1).decode(frame)


def test_the_error_is_at_the_value_that_goes_over(proto: Any) -> None:
    frame = _proto_py.ProtoEncoder().encode({"a": [1, 2, 3]})
    # The object, key "a", its list and element 1 fit in 4; element 2 goes over.
    with pytest.raises(TooManyValues) as raised:
        proto.ProtoDecoder(max_values=4).decode(frame)
    assert raised.value.offset == frame.index(b"\x11" + struct.pack("<d", 2.0))  # the Value holding 2
    frame = _proto_py.ProtoEncoder().encode({"a": 1, "b": 2})
    # The object, "a" and 1 fit in 3; key "b" goes over: the offset of its map entry.
    with pytest.raises(TooManyValues) as raised:
        proto.ProtoDecoder(max_values=3).decode(frame)
    assert raised.value.offset == frame.index(b"\x0a\x01b")


@settings(max_examples=examples(200), suppress_health_check=[HealthCheck.too_slow])
@given(obj=objects, type_=event_types, data=st.data())
def test_twins_raise_the_same_error_at_the_same_offset(obj: Dict[str, Any], type_: str, data: st.DataObject) -> None:
    compiled = pytest.importorskip("streamcodec._proto", reason="compiled module not built")
    encoder = _proto_py.ProtoEncoder()
    frame = encoder.encode(obj)
    limit = data.draw(st.integers(1, count(_proto_py.ProtoDecoder().decode(frame))))
    outcomes = [outcome(module.ProtoDecoder(max_values=limit), frame) for module in (compiled, _proto_py)]
    assert outcomes[0] == outcomes[1]
    stream = encoder.encode_event("ADDED", {}) + encoder.encode_event(type_, obj)  # {} fits every limit
    streams = [stream_outcome(module.ProtoDecoder(max_values=limit), stream) for module in (compiled, _proto_py)]
    assert streams[0] == streams[1]


def test_the_limit_applies_to_each_event_of_a_stream(proto: Any) -> None:
    encoder = _proto_py.ProtoEncoder()
    small = {"items": [{"n": 1.0}, {"n": 2.0}]}  # 9 values
    big = {"items": [{"n": 1.0}, {"n": 2.0}, 3.0]}  # 10 values
    assert (count(small), count(big)) == (9, 10)
    decoder = proto.ProtoDecoder(max_values=9)
    decoder.feed(b"".join(encoder.encode_event(t, small) for t in ("ADDED", "MODIFIED", "DELETED")))
    assert list(decoder) == [streamcodec.Event(t, small) for t in ("ADDED", "MODIFIED", "DELETED")]

    ahead = encoder.encode_event("ADDED", small) + encoder.encode_event("MODIFIED", small)
    over = encoder.encode_event("MODIFIED", big)
    decoder = proto.ProtoDecoder(max_values=9)
    decoder.feed(ahead + over)
    assert [next(decoder), next(decoder)] == [streamcodec.Event("ADDED", small), streamcodec.Event("MODIFIED", small)]
    with pytest.raises(TooManyValues) as raised:
        next(decoder)
    alone = proto.ProtoDecoder(max_values=9)
    alone.feed(over)
    with pytest.raises(TooManyValues) as raised_alone:
        next(alone)
    assert raised.value.offset == len(ahead) + raised_alone.value.offset  # counted from the first byte fed
    with pytest.raises(TooManyValues):
        next(decoder)  # the error stays


def test_none_is_no_limit(proto: Any) -> None:
    assert proto.ProtoDecoder().max_values is None
    assert proto.ProtoDecoder(max_values=None).max_values is None
    assert proto.ProtoDecoder(max_values=7).max_values == 7
    many = {"nulls": [None] * 200_000}
    frame = _proto_py.ProtoEncoder().encode(many)
    assert proto.ProtoDecoder(max_values=None).decode(frame) == many


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3"])
def test_invalid_limits_are_refused(proto: Any, bad: Any) -> None:
    with pytest.raises(ValueError, match="max_values"):
        proto.ProtoDecoder(max_values=bad)


# ---------------------------------------------------------------------------
# KubeProtoDecoder


def kube_frame(obj: Dict[str, Any]) -> bytes:
    return streamcodec.KubeProtoEncoder().encode(obj)


def pod_of_empty_containers(n: int) -> Dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{} for _ in range(n)]}}


def pod_with_managed_fields() -> Dict[str, Any]:
    pod = fixtures.pod()
    # fieldsV1 is raw JSON: its values count too, punctuation inside its strings does not.
    fields_v1 = {"f:metadata": {"f:labels": {".": {}, 'f:a,b:[c]{"d"}': {}}}, "f:spec": {"f:x": [1, [], {}]}}
    pod["metadata"]["managedFields"] = [
        {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": fields_v1}
    ]
    return pod


@pytest.mark.parametrize(
    "obj",
    [
        {"apiVersion": "v1", "kind": "Secret"},
        fixtures.secret(1024),
        fixtures.configmap(20),
        fixtures.pod(),
        pod_with_managed_fields(),
    ],
    ids=["empty-secret", "secret", "configmap", "pod", "pod-with-managed-fields"],
)
def test_kube_kinds_decode_at_their_count_and_not_below(obj: Dict[str, Any]) -> None:
    frame = kube_frame(obj)
    decoded = streamcodec.KubeProtoDecoder().decode(frame)
    values = count(decoded)
    assert streamcodec.KubeProtoDecoder(max_values=values).decode(frame) == decoded
    with pytest.raises(TooManyValues) as raised:
        streamcodec.KubeProtoDecoder(max_values=values - 1).decode(frame)
    assert raised.value.max_values == values - 1


def test_kube_count_includes_the_raw_json_of_fields_v1() -> None:
    decoded = streamcodec.KubeProtoDecoder().decode(kube_frame(pod_with_managed_fields()))
    fields_v1 = decoded["metadata"]["managedFields"][0]["fieldsV1"]
    assert count(fields_v1) == 16
    # spaced out, with escapes: the count is of the values, not of the text's layout
    assert _kubeproto_py._json_value_count(json.dumps(fields_v1, indent=1).encode()) == 16


def test_a_pod_of_100000_empty_containers_is_bounded() -> None:
    frame = kube_frame(pod_of_empty_containers(100_000))
    values = 5 + 2 + 2 + 100_000  # the Pod with its kind and apiVersion, spec, containers, each container
    assert len(streamcodec.KubeProtoDecoder(max_values=values).decode(frame)["spec"]["containers"]) == 100_000
    with pytest.raises(TooManyValues):
        streamcodec.KubeProtoDecoder(max_values=values - 1).decode(frame)


def test_a_pod_over_131072_values_fails_at_the_container_that_goes_over() -> None:
    frame = kube_frame(pod_of_empty_containers(200_000))
    with pytest.raises(TooManyValues) as raised:
        streamcodec.KubeProtoDecoder(max_values=131072).decode(frame)
    # Each empty container is the 2 bytes 12 00.  7 values are counted before the PodSpec's fields
    # are indexed (the object, kind, apiVersion, spec), and each field is at least one value, so
    # indexing stops at the container of index 131072 - 7, before any container is built.
    first = frame.index(b"\x12\x00" * 16)
    assert raised.value.offset == first + 2 * (131072 - 7)
    assert len(streamcodec.KubeProtoDecoder().decode(frame)["spec"]["containers"]) == 200_000  # None: no limit


def test_kube_max_values_property_and_invalid_limits() -> None:
    assert streamcodec.KubeProtoDecoder().max_values is None
    assert streamcodec.KubeProtoDecoder(max_values=131072).max_values == 131072
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(ValueError, match="max_values"):
            streamcodec.KubeProtoDecoder(max_values=bad)
