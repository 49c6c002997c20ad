"""The watch-progress gate on real mixed etcd 3.4.23 / 3.5.16 clusters (a rolling upgrade caught half-way).

RequestProgress is unsafe on etcd below 3.4.31 / 3.5.13 (etcd bugs #15220, #17507), so one 3.4.23
member anywhere in the cluster must keep the store from sending any.  What the store sends on its
watch streams is recorded at the gRPC call and decoded with the official protobuf package (messages
compiled from a small .proto at test time), so "no progress request" is checked independently of the
store's own counter; a control on a 3.5 server shows the recorder does see one when it is sent.

A member that is down when the gate is first asked must not let the others decide it: the answer is
then False, not kept, and asked again later.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from typing import Any, Awaitable, Callable, Iterator, List, Sequence

import pytest

from streamcodec.storage import EtcdStore, WatchEvent, supports_watch_progress
from streamcodec.local_etcd import EtcdCluster, EtcdNotAvailable, EtcdProcess, EtcdStartError, installed_version


#: every wait on the cluster is bounded by this (seconds)
EVENT_TIMEOUT = 10.0

WATCH_REQUEST_PROTO = r"""
syntax = "proto3";
package watchsubset;
message WatchRequest { oneof request_union { WatchCreateRequest create_request = 1;
                                             WatchCancelRequest cancel_request = 2;
                                             WatchProgressRequest progress_request = 3; } }
message WatchCreateRequest { bytes key = 1; bytes range_end = 2; int64 start_revision = 3; bool progress_notify = 4;
                             repeated int32 filters = 5; bool prev_kv = 6; int64 watch_id = 7; bool fragment = 8; }
message WatchCancelRequest { int64 watch_id = 1; }
message WatchProgressRequest {}
"""


@pytest.fixture(scope="module")
def watch_pb(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """etcd's WatchRequest messages (etcd's field numbers, as facts), compiled by grpcio-tools."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("watchsubset")
    (out / "watchsubset.proto").write_text(WATCH_REQUEST_PROTO)
    assert protoc.main(["protoc", f"-I{out}", f"--python_out={out}", str(out / "watchsubset.proto")]) == 0
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("watchsubset_pb2")
    finally:
        sys.path.remove(str(out))


def _start_cluster(versions: Sequence[str]) -> EtcdCluster:
    try:
        cluster = EtcdCluster(versions=versions)
        cluster.start()
    except (EtcdNotAvailable, EtcdStartError) as exc:
        pytest.fail(f"mixed etcd cluster {list(versions)} unavailable: {exc}", pytrace=False)
    return cluster


@pytest.fixture(params=[["3.4", "3.5", "3.5"], ["3.4", "3.4", "3.5"]], ids=["3.4+3.5+3.5", "3.4+3.4+3.5"])
def mixed_cluster(request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    """A fresh 3-member cluster mixing 3.4.23 and 3.5.16 members (per test: tests kill members)."""
    cluster = _start_cluster(request.param)
    try:
        yield cluster
    finally:
        cluster.stop()


def _below_gate(cluster: EtcdCluster) -> List[int]:
    return [i for i, m in enumerate(cluster.members) if not supports_watch_progress(m.version)]


class _RecordingCall:
    """A grpc.aio stream call that keeps a copy of every message written to it."""

    def __init__(self, call: Any, sent: List[bytes]) -> None:
        self._call, self._sent = call, sent

    async def write(self, message: bytes) -> None:
        self._sent.append(bytes(message))
        await self._call.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _RecordingChannel:
    """A grpc.aio channel whose stream-stream calls (etcd's Watch) record what they send."""

    def __init__(self, channel: Any, sent: List[bytes]) -> None:
        self._channel, self._sent = channel, sent

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        method = self._channel.stream_stream(*args, **kwargs)
        return lambda *a, **kw: _RecordingCall(method(*a, **kw), self._sent)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


def record_watch_requests(store: EtcdStore, monkeypatch: pytest.MonkeyPatch) -> List[bytes]:
    """Every WatchRequest the store sends from now on, as the bytes on the wire."""
    sent: List[bytes] = []
    open_channel = store._channel
    monkeypatch.setattr(store, "_channel", lambda member: _RecordingChannel(open_channel(member), sent))
    return sent


def request_kinds(watch_pb: Any, sent: List[bytes]) -> List[str]:
    return [watch_pb.WatchRequest.FromString(raw).WhichOneof("request_union") for raw in sent]


async def next_event(stream: Any) -> WatchEvent:
    return await asyncio.wait_for(stream.__anext__(), EVENT_TIMEOUT)


async def reachable(store: EtcdStore, endpoint: str) -> None:
    """Wait (bounded) until ``endpoint`` answers the store, past gRPC's reconnect backoff."""
    deadline = asyncio.get_running_loop().time() + EVENT_TIMEOUT
    while (await store.member_versions())[endpoint] is None:
        assert asyncio.get_running_loop().time() < deadline, f"{endpoint} never answered after its restart"
        await asyncio.sleep(0.1)


async def answers_until_decided(store: EtcdStore, ask: Callable[[], Awaitable[bool]]) -> List[bool]:
    """Every answer of ``ask()`` until the store has decided the gate (bounded by EVENT_TIMEOUT).

    Just after a restart the store's channel to that member may still be in gRPC's reconnect
    backoff (up to 1 s here): Status fails fast, and the gate stays undecided until a later ask.
    """
    answers: List[bool] = []
    deadline = asyncio.get_running_loop().time() + EVENT_TIMEOUT
    while store.watch_progress_gate is None:
        assert asyncio.get_running_loop().time() < deadline, f"the gate is still undecided after {answers}"
        answers.append(await ask())
        if store.watch_progress_gate is None:
            await asyncio.sleep(0.1)
    return answers


# ------------------------------------------------------------------ the recorder itself


async def test_recorder_sees_progress_requests_above_the_gate(
    watch_pb: Any, prefix: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: on 3.5.16 alone a watch list does send a progress request, and the recorder decodes it."""
    with EtcdProcess("3.5") as server:
        async with EtcdStore([server.endpoint]) as store:
            sent = record_watch_requests(store, monkeypatch)
            stream = store.watch_list(prefix)
            try:
                end = await next_event(stream)
                assert end.initial_events_end
                bookmark = await next_event(stream)
                assert bookmark.type == "BOOKMARK" and stream.caught_up
            finally:
                await stream.aclose()
    assert request_kinds(watch_pb, sent) == ["create_request", "progress_request"]


# ------------------------------------------------------------------ all members up


async def test_mixed_cluster_runs_at_the_lowest_version(mixed_cluster: EtcdCluster) -> None:
    old, new = installed_version("3.4"), installed_version("3.5")
    assert not supports_watch_progress(old) and supports_watch_progress(new)  # the two sides of the gate
    # etcd's own view (etcdctl, an independent client): really both versions in one cluster
    statuses = json.loads(mixed_cluster.etcdctl("endpoint", "status", "-w", "json"))
    reported = {s["Endpoint"].split("://", 1)[1]: s["Status"]["version"] for s in statuses}
    assert reported == dict(zip(mixed_cluster.endpoints, mixed_cluster.versions))
    assert set(reported.values()) == {old, new}

    async with EtcdStore(mixed_cluster.endpoints) as store:
        assert await store.member_versions() == reported
        assert await store.server_version() == old
        assert await store.supports_watch_progress() is False
        assert store.watch_progress_gate is False  # every member answered: decided


async def test_watch_list_on_mixed_cluster_sends_no_progress_request(
    mixed_cluster: EtcdCluster, prefix: bytes, watch_pb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    low = _below_gate(mixed_cluster)
    # the store starts on a 3.4 member, so that is the one serving the watch
    endpoints = [mixed_cluster.endpoints[i] for i in low] + [
        e for i, e in enumerate(mixed_cluster.endpoints) if i not in low
    ]
    async with EtcdStore(endpoints) as store:
        sent = record_watch_requests(store, monkeypatch)
        keys = [prefix + b"obj-%d" % i for i in range(5)]
        for key in keys:
            revision = await store.put(key, b"v-" + key)
        stream = store.watch_list(prefix)
        try:
            initial = [await next_event(stream) for _ in keys]
            assert [(e.type, e.kv.key, bytes(e.kv.value)) for e in initial] == [("ADDED", k, b"v-" + k) for k in keys]
            end = await next_event(stream)
            assert end.type == "BOOKMARK" and end.initial_events_end and end.revision == revision
            assert stream.watch is not None and stream.watch.endpoint == mixed_cluster.endpoints[low[0]]
            assert await stream.request_progress() is False

            # later changes: from the store, and from etcdctl talking to a 3.5 member
            added = await store.put(prefix + b"obj-new", b"fresh")
            modified = await store.update(keys[1], b"changed")
            high = next(m for m in mixed_cluster.members if supports_watch_progress(m.version))
            high.etcdctl("del", keys[0].decode())
            changes = [await next_event(stream) for _ in range(3)]
            assert [(e.type, e.kv.key, e.revision) for e in changes[:2]] == [
                ("ADDED", prefix + b"obj-new", added),
                ("MODIFIED", keys[1], modified),
            ]
            assert (changes[2].type, changes[2].kv.key, changes[2].revision) == ("DELETED", keys[0], modified + 1)
            assert bytes(changes[1].kv.value) == b"changed" and bytes(changes[1].prev_kv.value) == b"v-" + keys[1]
            assert stream.progress_requests_sent == 0 and not stream.caught_up
        finally:
            await stream.aclose()
    # what actually went out on the watch stream: the create, from just after the list's revision, and nothing else
    assert request_kinds(watch_pb, sent) == ["create_request"]
    assert watch_pb.WatchRequest.FromString(sent[0]).create_request.start_revision == end.revision + 1


# ------------------------------------------------------------------ below-gate members down at the first check


async def test_gate_stays_undecided_while_below_gate_members_are_down(mixed_cluster: EtcdCluster) -> None:
    low = _below_gate(mixed_cluster)
    new = installed_version("3.5")
    for i in low:
        mixed_cluster.kill(i)
    async with EtcdStore(mixed_cluster.endpoints, gate_recheck_interval=0) as store:
        versions = await store.member_versions()
        assert [versions[e] for e in mixed_cluster.endpoints] == [
            None if i in low else new for i in range(len(mixed_cluster.members))
        ]
        # the members that answer are all above the gate: deciding from them alone would say True
        assert await store.server_version() == new
        assert await store.supports_watch_progress() is False
        assert store.watch_progress_gate is None  # not kept: asked again next time

        for i in low:
            await asyncio.to_thread(mixed_cluster.restart, i)
        answers = await answers_until_decided(store, store.supports_watch_progress)
        assert answers and not any(answers)  # False all along, then decided with every member answering
        assert store.watch_progress_gate is False
        assert await store.server_version() == installed_version("3.4")


async def test_watch_made_during_the_outage_never_asks_for_progress(
    prefix: bytes, watch_pb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 3.4 member is down while a watch is created on the 3.5 quorum, then comes back and serves it."""
    cluster = _start_cluster(["3.4", "3.5", "3.5"])
    try:
        cluster.kill(0)
        cluster.wait_healthy()  # if 0 led, the others have elected a leader: the watch is made on member 1
        # member 1 first, then the old member 0: when 1 dies the store moves to 0
        endpoints = [cluster.endpoints[1], cluster.endpoints[0], cluster.endpoints[2]]
        async with EtcdStore(endpoints, gate_recheck_interval=0) as store:
            sent = record_watch_requests(store, monkeypatch)
            start = await store.current_revision() + 1
            async with store.watch(prefix, start) as watch:
                assert watch.endpoint == cluster.endpoints[1]
                assert await watch.request_progress() is False  # a silent member: undecided
                first = await store.put(prefix + b"a", b"1")
                assert (await next_event(watch)).revision == first

                # the old member is back, and the watch moves onto it when its member dies
                await asyncio.to_thread(cluster.restart, 0)
                await reachable(store, cluster.endpoints[0])
                cluster.kill(1)
                await asyncio.to_thread(cluster.wait_healthy)  # a leader again, so the put is not refused
                second = await store.put(prefix + b"b", b"2")
                event = await next_event(watch)
                assert (event.type, event.kv.key, event.revision) == ("ADDED", prefix + b"b", second)
                assert watch.endpoint == cluster.endpoints[0] and watch.reconnects >= 1
                assert await watch.request_progress() is False
                assert watch.progress_requests_sent == 0
        assert set(request_kinds(watch_pb, sent)) == {"create_request"} and len(sent) >= 2
    finally:
        cluster.stop()


async def test_gate_is_decided_again_once_the_silent_member_is_back(
    prefix: bytes, watch_pb: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an all-3.5.16 cluster the undecided False turns True after the restart, in the store and in a live watch."""
    cluster = _start_cluster(["3.5", "3.5", "3.5"])
    try:
        cluster.kill(2)
        cluster.wait_healthy()
        async with EtcdStore(cluster.endpoints, gate_recheck_interval=0) as store:
            sent = record_watch_requests(store, monkeypatch)
            start = await store.current_revision() + 1
            async with store.watch(prefix, start) as watch:
                assert await watch.request_progress() is False
                assert store.watch_progress_gate is None
                await asyncio.to_thread(cluster.restart, 2)
                # the same watch asks the store again instead of keeping its first answer
                answers = await answers_until_decided(store, watch.request_progress)
                assert answers[-1] is True and not any(answers[:-1])
                assert store.watch_progress_gate is True
                bookmark = await next_event(watch)
                assert bookmark.type == "BOOKMARK" and bookmark.revision >= start - 1
        assert request_kinds(watch_pb, sent) == ["create_request", "progress_request"]
    finally:
        cluster.stop()
