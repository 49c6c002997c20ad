"""The hand-written etcd wire codec against the official protobuf package.

The reference decoder/encoder is generated at test time by grpcio-tools from a
small .proto written here (etcd's message and field numbers, as facts), so the
check is independent of our codec.  Every test runs against the implementation
``storage`` selected (compiled, or the twin under STREAMCODEC_PURE_PYTHON=1);
``test_twins_agree_*`` also compares the two directly.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import examples

import streamcodec.storage
from streamcodec.storage import MalformedResponse
from streamcodec.storage import _wire_py

wire = streamcodec.storage.wire

ETCD_SUBSET_PROTO = r"""
syntax = "proto3";
package etcdsubset;

message ResponseHeader { uint64 cluster_id = 1; uint64 member_id = 2; int64 revision = 3; uint64 raft_term = 4; }
message KeyValue { bytes key = 1; int64 create_revision = 2; int64 mod_revision = 3; int64 version = 4;
                   bytes value = 5; int64 lease = 6; }
message Event { enum EventType { PUT = 0; DELETE = 1; } EventType type = 1; KeyValue kv = 2; KeyValue prev_kv = 3; }
message RangeRequest { bytes key = 1; bytes range_end = 2; int64 limit = 3; int64 revision = 4; int32 sort_order = 5;
                       int32 sort_target = 6; bool serializable = 7; bool keys_only = 8; bool count_only = 9; }
message RangeResponse { ResponseHeader header = 1; repeated KeyValue kvs = 2; bool more = 3; int64 count = 4; }
message PutRequest { bytes key = 1; bytes value = 2; int64 lease = 3; bool prev_kv = 4; }
message PutResponse { ResponseHeader header = 1; KeyValue prev_kv = 2; }
message DeleteRangeRequest { bytes key = 1; bytes range_end = 2; bool prev_kv = 3; }
message DeleteRangeResponse { ResponseHeader header = 1; int64 deleted = 2; repeated KeyValue prev_kvs = 3; }
message RequestOp { oneof request { RangeRequest request_range = 1; PutRequest request_put = 2;
                                    DeleteRangeRequest request_delete_range = 3; TxnRequest request_txn = 4; } }
message ResponseOp { oneof response { RangeResponse response_range = 1; PutResponse response_put = 2;
                                      DeleteRangeResponse response_delete_range = 3; TxnResponse response_txn = 4; } }
message Compare { int32 result = 1; int32 target = 2; bytes key = 3;
                  oneof target_union { int64 version = 4; int64 create_revision = 5; int64 mod_revision = 6;
                                       bytes value = 7; int64 lease = 8; }
                  bytes range_end = 64; }
message TxnRequest { repeated Compare compare = 1; repeated RequestOp success = 2; repeated RequestOp failure = 3; }
message TxnResponse { ResponseHeader header = 1; bool succeeded = 2; repeated ResponseOp responses = 3; }
message CompactionRequest { int64 revision = 1; bool physical = 2; }
message WatchRequest { oneof request_union { WatchCreateRequest create_request = 1;
                                             WatchCancelRequest cancel_request = 2;
                                             WatchProgressRequest progress_request = 3; } }
message WatchCreateRequest { bytes key = 1; bytes range_end = 2; int64 start_revision = 3; bool progress_notify = 4;
                             repeated int32 filters = 5; bool prev_kv = 6; int64 watch_id = 7; bool fragment = 8; }
message WatchCancelRequest { int64 watch_id = 1; }
message WatchProgressRequest {}
message WatchResponse { ResponseHeader header = 1; int64 watch_id = 2; bool created = 3; bool canceled = 4;
                        int64 compact_revision = 5; string cancel_reason = 6; bool fragment = 7;
                        repeated Event events = 11; }
message StatusResponse { ResponseHeader header = 1; string version = 2; int64 dbSize = 3; uint64 leader = 4;
                         uint64 raftIndex = 5; uint64 raftTerm = 6; uint64 raftAppliedIndex = 7;
                         repeated string errors = 8; int64 dbSizeInUse = 9; bool isLearner = 10;
                         string storageVersion = 11; int64 dbSizeQuota = 12; }
message AuthenticateRequest { string name = 1; string password = 2; }
message AuthenticateResponse { ResponseHeader header = 1; string token = 2; }
// A KeyValue as a future etcd might send it: fields we do not know must be skipped.
message FutureKeyValue { bytes key = 1; int64 create_revision = 2; int64 mod_revision = 3; int64 version = 4;
                         bytes value = 5; int64 lease = 6; fixed64 f64 = 90; fixed32 f32 = 91;
                         string note = 92; uint64 big = 93; }
"""


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The reference messages, compiled from ETCD_SUBSET_PROTO by grpcio-tools."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("etcdsubset")
    (out / "etcdsubset.proto").write_text(ETCD_SUBSET_PROTO)
    rc = protoc.main(["protoc", f"-I{out}", f"--python_out={out}", str(out / "etcdsubset.proto")])
    assert rc == 0, "protoc failed on the reference .proto"
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("etcdsubset_pb2")
    finally:
        sys.path.remove(str(out))


int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
uint64s = st.integers(min_value=0, max_value=2**64 - 1)
small_bytes = st.binary(max_size=64)
texts = st.text(max_size=20)
SETTINGS = settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def make_kv(pb: Any, draw: Any) -> Any:
    return pb.KeyValue(
        key=draw(st.binary(min_size=1, max_size=40)),
        create_revision=draw(int64s),
        mod_revision=draw(int64s),
        version=draw(int64s),
        value=draw(st.binary(max_size=300)),
        lease=draw(int64s),
    )


def make_header(pb: Any, draw: Any) -> Any:
    return pb.ResponseHeader(
        cluster_id=draw(uint64s), member_id=draw(uint64s), revision=draw(int64s), raft_term=draw(uint64s)
    )


def assert_header(ours: Any, ref: Any) -> None:
    assert (ours.cluster_id, ours.member_id, ours.revision, ours.raft_term) == (
        ref.cluster_id,
        ref.member_id,
        ref.revision,
        ref.raft_term,
    )


def assert_kv(ours: Any, ref: Any, data: bytes) -> None:
    assert ours.key == ref.key and type(ours.key) is bytes
    assert bytes(ours.value) == ref.value
    assert isinstance(ours.value, memoryview) and ours.value.obj is data, "value must be a view of the response"
    assert (ours.create_revision, ours.mod_revision, ours.version, ours.lease) == (
        ref.create_revision,
        ref.mod_revision,
        ref.version,
        ref.lease,
    )


# ------------------------------------------------------------------ parsing


@SETTINGS
@given(data=st.data())
def test_range_response_matches_protobuf(pb: Any, data: Any) -> None:
    draw = data.draw
    ref = pb.RangeResponse(
        header=make_header(pb, draw),
        kvs=[make_kv(pb, draw) for _ in range(draw(st.integers(0, 5)))],
        more=draw(st.booleans()),
        count=draw(int64s),
    )
    raw = ref.SerializeToString()
    ours = wire.parse_range_response(raw)
    assert_header(ours.header, ref.header)
    assert len(ours.kvs) == len(ref.kvs)
    for mine, theirs in zip(ours.kvs, ref.kvs):
        assert_kv(mine, theirs, raw)
    assert (ours.more, ours.count) == (ref.more, ref.count)


@SETTINGS
@given(data=st.data())
def test_watch_response_matches_protobuf(pb: Any, data: Any) -> None:
    draw = data.draw
    events = []
    for _ in range(draw(st.integers(0, 4))):
        event = pb.Event(type=draw(st.sampled_from([0, 1])), kv=make_kv(pb, draw))
        if draw(st.booleans()):
            event.prev_kv.CopyFrom(make_kv(pb, draw))
        events.append(event)
    ref = pb.WatchResponse(
        header=make_header(pb, draw),
        watch_id=draw(int64s),
        created=draw(st.booleans()),
        canceled=draw(st.booleans()),
        compact_revision=draw(int64s),
        cancel_reason=draw(texts),
        fragment=draw(st.booleans()),
        events=events,
    )
    raw = ref.SerializeToString()
    ours = wire.parse_watch_response(raw)
    assert_header(ours.header, ref.header)
    assert (ours.watch_id, ours.created, ours.canceled, ours.compact_revision, ours.cancel_reason, ours.fragment) == (
        ref.watch_id,
        ref.created,
        ref.canceled,
        ref.compact_revision,
        ref.cancel_reason,
        ref.fragment,
    )
    assert len(ours.events) == len(ref.events)
    for mine, theirs in zip(ours.events, ref.events):
        assert mine.type == theirs.type
        assert_kv(mine.kv, theirs.kv, raw)
        if theirs.HasField("prev_kv"):
            assert_kv(mine.prev_kv, theirs.prev_kv, raw)
        else:
            assert mine.prev_kv is None


@SETTINGS
@given(data=st.data())
def test_txn_response_matches_protobuf(pb: Any, data: Any) -> None:
    draw = data.draw
    ops = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["range", "put", "delete_range"]))
        if kind == "range":
            op = pb.ResponseOp(response_range=pb.RangeResponse(header=make_header(pb, draw), kvs=[make_kv(pb, draw)]))
        elif kind == "put":
            op = pb.ResponseOp(response_put=pb.PutResponse(header=make_header(pb, draw), prev_kv=make_kv(pb, draw)))
        else:
            op = pb.ResponseOp(
                response_delete_range=pb.DeleteRangeResponse(
                    header=make_header(pb, draw), deleted=draw(int64s), prev_kvs=[make_kv(pb, draw)]
                )
            )
        ops.append((kind, op))
    ref = pb.TxnResponse(header=make_header(pb, draw), succeeded=draw(st.booleans()), responses=[o for _, o in ops])
    raw = ref.SerializeToString()
    ours = wire.parse_txn_response(raw)
    assert_header(ours.header, ref.header)
    assert ours.succeeded == ref.succeeded
    assert [kind for kind, _ in ours.responses] == [kind for kind, _ in ops]
    for (kind, result), theirs in zip(ours.responses, ref.responses):
        if kind == "range":
            assert_header(result.header, theirs.response_range.header)
            assert_kv(result.kvs[0], theirs.response_range.kvs[0], raw)
        elif kind == "put":
            assert_kv(result.prev_kv, theirs.response_put.prev_kv, raw)
        else:
            assert result.deleted == theirs.response_delete_range.deleted
            assert_kv(result.prev_kvs[0], theirs.response_delete_range.prev_kvs[0], raw)


def test_nested_txn_response(pb: Any) -> None:
    inner = pb.TxnResponse(succeeded=True, responses=[pb.ResponseOp(response_put=pb.PutResponse())])
    ref = pb.TxnResponse(succeeded=False, responses=[pb.ResponseOp(response_txn=inner)])
    ours = wire.parse_txn_response(ref.SerializeToString())
    assert ours.succeeded is False
    kind, nested = ours.responses[0]
    assert kind == "txn" and nested.succeeded is True and nested.responses[0][0] == "put"


@SETTINGS
@given(data=st.data())
def test_status_and_auth_responses_match_protobuf(pb: Any, data: Any) -> None:
    draw = data.draw
    ref = pb.StatusResponse(
        header=make_header(pb, draw),
        version=draw(texts),
        dbSize=draw(int64s),
        leader=draw(uint64s),
        raftIndex=draw(uint64s),
        raftTerm=draw(uint64s),
        raftAppliedIndex=draw(uint64s),
        errors=draw(st.lists(texts, max_size=3)),
        dbSizeInUse=draw(int64s),
        isLearner=draw(st.booleans()),
        storageVersion=draw(texts),  # a 3.6 field we do not parse: skipped
        dbSizeQuota=draw(int64s),
    )
    ours = wire.parse_status_response(ref.SerializeToString())
    assert_header(ours.header, ref.header)
    assert (ours.version, ours.db_size, ours.leader, ours.raft_index, ours.raft_term) == (
        ref.version,
        ref.dbSize,
        ref.leader,
        ref.raftIndex,
        ref.raftTerm,
    )
    assert (ours.raft_applied_index, ours.errors, ours.db_size_in_use, ours.is_learner) == (
        ref.raftAppliedIndex,
        list(ref.errors),
        ref.dbSizeInUse,
        ref.isLearner,
    )
    auth = pb.AuthenticateResponse(header=make_header(pb, draw), token=draw(texts))
    header, token = wire.parse_authenticate_response(auth.SerializeToString())
    assert token == auth.token
    assert_header(header, auth.header)


def test_unknown_fields_are_skipped(pb: Any) -> None:
    future = pb.FutureKeyValue(
        key=b"/k", create_revision=3, mod_revision=7, version=2, value=b"v" * 10, lease=5,
        f64=2**64 - 1, f32=7, note="from etcd 9", big=2**64 - 1,
    )  # fmt: skip
    raw = future.SerializeToString()
    kv = wire.parse_key_value(raw)
    assert (kv.key, bytes(kv.value), kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        b"/k", b"v" * 10, 3, 7, 2, 5,
    )  # fmt: skip


def test_empty_messages_give_defaults() -> None:
    result = wire.parse_range_response(b"")
    assert result.kvs == [] and result.more is False and result.count == 0 and result.header.revision == 0
    kv = wire.parse_key_value(b"")
    assert kv.key == b"" and bytes(kv.value) == b""


# ------------------------------------------------------------------ encoding


@SETTINGS
@given(key=st.binary(min_size=1, max_size=50), end=small_bytes, limit=int64s, revision=int64s, flags=st.booleans())
def test_range_request_matches_protobuf(pb: Any, key: bytes, end: bytes, limit: int, revision: int, flags: bool) -> None:
    raw = wire.encode_range_request(key, end, limit=limit, revision=revision, serializable=flags, keys_only=not flags)
    ref = pb.RangeRequest.FromString(raw)
    assert (ref.key, ref.range_end, ref.limit, ref.revision) == (key, end, limit, revision)
    assert (ref.serializable, ref.keys_only, ref.count_only) == (flags, not flags, False)
    # canonical proto3 serialization: same bytes as the official encoder
    assert raw == ref.SerializeToString(deterministic=True)


@SETTINGS
@given(key=st.binary(min_size=1, max_size=50), value=st.binary(max_size=200), lease=int64s, prev=st.booleans())
def test_put_and_delete_requests_match_protobuf(pb: Any, key: bytes, value: bytes, lease: int, prev: bool) -> None:
    raw = wire.encode_put_request(key, value, lease=lease, prev_kv=prev)
    ref = pb.PutRequest.FromString(raw)
    assert (ref.key, ref.value, ref.lease, ref.prev_kv) == (key, value, lease, prev)
    assert raw == ref.SerializeToString(deterministic=True)
    raw = wire.encode_delete_range_request(key, value, prev_kv=prev)
    ref_delete = pb.DeleteRangeRequest.FromString(raw)
    assert (ref_delete.key, ref_delete.range_end, ref_delete.prev_kv) == (key, value, prev)


@SETTINGS
@given(key=st.binary(min_size=1, max_size=30), operand=int64s, value=small_bytes)
def test_txn_request_matches_protobuf(pb: Any, key: bytes, operand: int, value: bytes) -> None:
    compares = [
        wire.encode_compare(key, wire.TARGET_CREATE, wire.COMPARE_EQUAL, 0),
        wire.encode_compare(key, wire.TARGET_MOD, wire.COMPARE_NOT_EQUAL, operand),
        wire.encode_compare(key, wire.TARGET_VERSION, wire.COMPARE_GREATER, operand),
        wire.encode_compare(key, wire.TARGET_VALUE, wire.COMPARE_LESS, value),
    ]
    success = [wire.encode_request_op_put(wire.encode_put_request(key, value))]
    failure = [
        wire.encode_request_op_range(wire.encode_range_request(key)),
        wire.encode_request_op_delete_range(wire.encode_delete_range_request(key, prev_kv=True)),
    ]
    ref = pb.TxnRequest.FromString(wire.encode_txn_request(compares, success, failure))
    c0, c1, c2, c3 = ref.compare
    # a zero operand must still be present: the oneof member selects the compare target
    assert c0.WhichOneof("target_union") == "create_revision" and c0.create_revision == 0
    assert (c0.key, c0.target, c0.result) == (key, 1, 0)
    assert c1.WhichOneof("target_union") == "mod_revision" and c1.mod_revision == operand and c1.result == 3
    assert c2.WhichOneof("target_union") == "version" and c2.version == operand and c2.result == 1
    assert c3.WhichOneof("target_union") == "value" and c3.value == value and (c3.target, c3.result) == (3, 2)
    assert ref.success[0].request_put.key == key and ref.success[0].request_put.value == value
    assert ref.failure[0].WhichOneof("request") == "request_range" and ref.failure[0].request_range.key == key
    assert ref.failure[1].request_delete_range.prev_kv is True


@SETTINGS
@given(key=st.binary(min_size=1, max_size=30), end=small_bytes, start=int64s, watch_id=int64s, flags=st.booleans())
def test_watch_requests_match_protobuf(pb: Any, key: bytes, end: bytes, start: int, watch_id: int, flags: bool) -> None:
    raw = wire.encode_watch_create_request(
        key, end, start_revision=start, progress_notify=flags, prev_kv=not flags, watch_id=watch_id, fragment=True
    )
    ref = pb.WatchRequest.FromString(raw)
    assert ref.WhichOneof("request_union") == "create_request"
    create = ref.create_request
    assert (create.key, create.range_end, create.start_revision, create.watch_id) == (key, end, start, watch_id)
    assert (create.progress_notify, create.prev_kv, create.fragment) == (flags, not flags, True)
    cancel = pb.WatchRequest.FromString(wire.encode_watch_cancel_request(watch_id))
    assert cancel.WhichOneof("request_union") == "cancel_request" and cancel.cancel_request.watch_id == watch_id
    progress = pb.WatchRequest.FromString(wire.encode_watch_progress_request())
    assert progress.WhichOneof("request_union") == "progress_request"


def test_compaction_and_authenticate_requests(pb: Any) -> None:
    ref = pb.CompactionRequest.FromString(wire.encode_compaction_request(12345, physical=True))
    assert (ref.revision, ref.physical) == (12345, True)
    auth = pb.AuthenticateRequest.FromString(wire.encode_authenticate_request("root", "pässword"))
    assert (auth.name, auth.password) == ("root", "pässword")


def test_encoders_reject_out_of_range_ints() -> None:
    with pytest.raises(OverflowError):
        wire.encode_range_request(b"/k", limit=2**63)
    with pytest.raises(OverflowError):
        wire.encode_compare(b"/k", wire.TARGET_MOD, wire.COMPARE_EQUAL, -(2**63) - 1)
    with pytest.raises(TypeError):
        wire.encode_compare(b"/k", wire.TARGET_VALUE, wire.COMPARE_EQUAL, 5)
    with pytest.raises(ValueError):
        wire.encode_compare(b"/k", 9, wire.COMPARE_EQUAL, 5)


@pytest.mark.parametrize(
    "prefix,end",
    [(b"/default/", b"/default0"), (b"a", b"b"), (b"a\xff", b"b"), (b"a\xff\xff", b"b"), (b"\xff\xff", b"\x00")],
)
def test_prefix_range_end(prefix: bytes, end: bytes) -> None:
    assert wire.prefix_range_end(prefix) == end


# ------------------------------------------------------------------ malformed input

PARSERS = [
    "parse_range_response",
    "parse_watch_response",
    "parse_txn_response",
    "parse_status_response",
    "parse_key_value",
    "parse_put_response",
    "parse_delete_range_response",
    "parse_authenticate_response",
    "parse_response_header",
]


@pytest.mark.parametrize(
    "raw,message",
    [
        (b"\x12\x05ab", "runs past the message end"),  # kvs field: length 5, only 2 bytes left
        (b"\x18", "truncated varint"),  # more: tag then nothing
        (b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "runs past 10 bytes"),
        (b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02", "overflows 64 bits"),
        (b"\x1b", "unsupported wire type 3"),  # start group
        (b"\x00\x01", "invalid field number 0"),
        (b"\x19\x01\x02", "truncated fixed64"),
        (b"\x1d\x01", "truncated fixed32"),
        (b"\x10\x01", "field 2 has wire type 0, expected 2"),  # kvs as a varint
        (b"\x12\x02\x0a\x09", "runs past the message end"),  # a kv whose key overruns the kv (not the response)
    ],
)
def test_malformed_range_response(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedResponse, match=message) as info:
        wire.parse_range_response(raw)
    assert info.value.code == "MalformedResponse"


def test_invalid_utf8_and_event_type() -> None:
    with pytest.raises(MalformedResponse, match="UTF-8"):
        wire.parse_watch_response(b"\x32\x02\xff\xfe")  # cancel_reason
    with pytest.raises(MalformedResponse, match="unknown event type 7"):
        wire.parse_watch_response(b"\x5a\x02\x08\x07")


def test_hostile_txn_nesting_is_refused() -> None:
    raw = b""
    for _ in range(40):  # TxnResponse{responses: [ResponseOp{response_txn: raw}]}
        op = b"\x22" + _varint(len(raw)) + raw
        raw = b"\x1a" + _varint(len(op)) + op
    with pytest.raises(MalformedResponse, match="nested too deep"):
        wire.parse_txn_response(raw)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_every_truncation_of_a_real_message_is_handled(pb: Any) -> None:
    ref = pb.WatchResponse(
        header=pb.ResponseHeader(cluster_id=2**63, member_id=1, revision=900, raft_term=3),
        watch_id=1, cancel_reason="x", fragment=True,
        events=[pb.Event(type=1, kv=pb.KeyValue(key=b"/k", value=b"v" * 200, mod_revision=-5),
                         prev_kv=pb.KeyValue(key=b"/k", value=b"w" * 130))],
    )  # fmt: skip
    raw = ref.SerializeToString()
    outcomes = set()
    for cut in range(len(raw)):
        try:
            wire.parse_watch_response(raw[:cut])
            outcomes.add("parsed")  # a cut on a field boundary is a valid shorter message
        except MalformedResponse:
            outcomes.add("malformed")
    assert outcomes == {"parsed", "malformed"}
    assert len(wire.parse_watch_response(raw).events[0].prev_kv.value) == 130


@settings(max_examples=examples(400), deadline=None)
@given(raw=st.binary(max_size=80), parser=st.sampled_from(PARSERS))
def test_random_bytes_parse_or_raise_malformed(raw: bytes, parser: str) -> None:
    try:
        getattr(wire, parser)(raw)
    except MalformedResponse:
        pass


# ------------------------------------------------------------------ the twins agree


def _outcome(module: Any, parser: str, raw: bytes) -> Any:
    try:
        result = getattr(module, parser)(raw)
    except MalformedResponse as exc:
        return ("error", str(exc))
    return ("ok", _plain(result))


def _plain(obj: Any) -> Any:
    if isinstance(obj, memoryview):
        return ("view", bytes(obj))
    if isinstance(obj, tuple):
        return (type(obj).__name__, tuple(_plain(x) for x in obj))
    if isinstance(obj, list):
        return [_plain(x) for x in obj]
    return (type(obj).__name__, obj)


@settings(max_examples=examples(300), deadline=None)
@given(raw=st.binary(max_size=120), parser=st.sampled_from(PARSERS))
def test_twins_agree_on_arbitrary_bytes(raw: bytes, parser: str) -> None:
    from streamcodec.storage import _wire  # the compiled twin; the test command builds it

    assert _outcome(_wire, parser, raw) == _outcome(_wire_py, parser, raw)


@SETTINGS
@given(data=st.data())
def test_twins_agree_on_valid_messages(pb: Any, data: Any) -> None:
    from streamcodec.storage import _wire

    draw = data.draw
    ref = pb.RangeResponse(header=make_header(pb, draw), kvs=[make_kv(pb, draw) for _ in range(3)], count=draw(int64s))
    raw = ref.SerializeToString()
    assert _outcome(_wire, "parse_range_response", raw) == _outcome(_wire_py, "parse_range_response", raw)
    args = (draw(st.binary(min_size=1, max_size=20)), draw(small_bytes))
    kwargs = {"limit": draw(int64s), "revision": draw(int64s)}
    assert _wire.encode_range_request(*args, **kwargs) == _wire_py.encode_range_request(*args, **kwargs)
    assert _wire.encode_compare(args[0], 2, 0, kwargs["limit"]) == _wire_py.encode_compare(args[0], 2, 0, kwargs["limit"])
