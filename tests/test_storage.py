"""EtcdStore against real etcd 3.5 and 3.4 (never a mock).

Independent checks: what etcd holds is read back with ``etcdctl`` (JSON
output, base64 keys/values), not with our own client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from typing import Any, AsyncIterator, Dict, List, Tuple

import pytest

from streamcodec.storage import (
    AlreadyExists,
    Conflict,
    EtcdStore,
    Expired,
    FutureRevision,
    InvalidContinue,
    KeyValue,
    NotFound,
    TooLarge,
    WatchEvent,
    supports_watch_progress,
    wire,
)
from streamcodec.local_etcd import EtcdProcess


KiB = 1024


@pytest.fixture
async def store(etcd: EtcdProcess) -> AsyncIterator[EtcdStore]:
    # small pages so every list in these tests spans many pages
    async with EtcdStore([etcd.endpoint], page_bytes=4 * KiB, max_object_bytes=2 * KiB) as s:
        yield s


def etcdctl_snapshot(etcd: EtcdProcess, prefix: bytes, revision: int = 0) -> Dict[bytes, Tuple[bytes, int]]:
    """{key: (value, mod_revision)} under ``prefix`` at ``revision`` (0 = now), read by etcdctl."""
    args = ["get", "--prefix", "-w", "json"]
    if revision:
        args.append(f"--rev={revision}")
    out = json.loads(etcd.etcdctl(*args, prefix.decode()))
    return {
        base64.b64decode(kv["key"]): (base64.b64decode(kv.get("value", "")), int(kv["mod_revision"]))
        for kv in out.get("kvs", [])
    }


async def load(store: EtcdStore, items: Dict[bytes, bytes], concurrency: int = 32) -> int:
    """Put ``items`` concurrently; returns the highest revision written."""
    queue = list(items.items())
    highest = 0

    async def worker() -> None:
        nonlocal highest
        while queue:
            key, value = queue.pop()
            highest = max(highest, await store.put(key, value))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return highest


# ------------------------------------------------------------------ version gate


@pytest.mark.parametrize(
    "version,expected",
    [
        ("3.3.27", False), ("3.4.0", False), ("3.4.30", False), ("3.4.31", True), ("3.4.35", True),
        ("3.5.0", False), ("3.5.12", False), ("3.5.13", True), ("3.5.16", True), ("3.6.0", True),
        ("4.0.0", True), ("v3.5.13", True), ("garbage", False),
    ],
)  # fmt: skip
def test_watch_progress_gate_table(version: str, expected: bool) -> None:
    assert supports_watch_progress(version) is expected


async def test_server_version_and_gate(store: EtcdStore, etcd: EtcdProcess, etcd_version: str) -> None:
    version = await store.server_version()
    assert version == etcd.version and version.startswith(etcd_version + ".")
    # the provisioned servers sit on both sides of the gate: 3.5.16 above, 3.4.23 below
    assert await store.supports_watch_progress() is (etcd_version == "3.5")


# ------------------------------------------------------------------ CRUD


async def test_crud(store: EtcdStore, etcd: EtcdProcess, prefix: bytes) -> None:
    key = prefix + b"pod-a"
    revision = await store.create(key, b"v1")
    assert etcdctl_snapshot(etcd, prefix) == {key: (b"v1", revision)}
    with pytest.raises(AlreadyExists) as exists:
        await store.create(key, b"other")
    assert exists.value.code == "AlreadyExists" and exists.value.key == key

    kv = await store.get(key)
    assert (kv.key, bytes(kv.value), kv.create_revision, kv.mod_revision, kv.version) == (key, b"v1", revision, revision, 1)

    updated = await store.update(key, b"v2", expected_mod_revision=revision)
    assert updated > revision
    with pytest.raises(Conflict) as conflict:
        await store.update(key, b"v3", expected_mod_revision=revision)
    assert conflict.value.actual_revision == updated
    assert etcdctl_snapshot(etcd, prefix) == {key: (b"v2", updated)}
    unconditional = await store.update(key, b"v3")
    assert etcdctl_snapshot(etcd, prefix) == {key: (b"v3", unconditional)}

    with pytest.raises(Conflict):
        await store.delete(key, expected_mod_revision=updated)
    deleted = await store.delete(key, expected_mod_revision=unconditional)
    previous = deleted.previous
    assert (previous.key, bytes(previous.value), previous.mod_revision) == (key, b"v3", unconditional)
    assert deleted.revision == await store.current_revision() > unconditional
    assert etcdctl_snapshot(etcd, prefix) == {}

    for call in (store.get(key), store.update(key, b"x"), store.delete(key), store.update(key, b"x", 5)):
        with pytest.raises(NotFound):
            await call
    with pytest.raises(TooLarge):
        await store.create(prefix + b"big", b"x" * (3 * KiB))


# ------------------------------------------------------------------ lists


async def collect(stream: Any) -> List[KeyValue]:
    out = []
    async for kv in stream:
        out.append(kv._replace(value=bytes(kv.value)))
    return out


async def test_prefix_isolation(store: EtcdStore, prefix: bytes) -> None:
    await load(store, {prefix + b"default/a": b"1", prefix + b"default/b": b"2", prefix + b"default2/c": b"3",
                       prefix + b"default0": b"4", prefix + b"defaulu": b"5"})  # fmt: skip
    keys = [kv.key for kv in await collect(store.list_stream(prefix + b"default/"))]
    assert keys == [prefix + b"default/a", prefix + b"default/b"]
    keys = [kv.key for kv in await collect(store.list_stream(prefix + b"default2/"))]
    assert keys == [prefix + b"default2/c"]


async def test_paged_list_is_one_pinned_snapshot_despite_writes(
    store: EtcdStore, etcd: EtcdProcess, prefix: bytes
) -> None:
    rng = random.Random(7)
    items = {prefix + b"obj-%04d" % i: bytes([65 + i % 26]) * rng.randrange(10, 1500) for i in range(120)}
    await load(store, items)
    stream = store.list_stream(prefix)
    got: List[KeyValue] = []
    async for kv in stream:
        got.append(kv._replace(value=bytes(kv.value)))
        if len(got) % 10 == 1:  # writes between pages: none may show up in the listing
            await store.put(prefix + b"obj-%04d" % rng.randrange(0, 120), b"changed")
            await store.put(prefix + b"new-%04d" % len(got), b"new")
            await store.delete(prefix + b"obj-%04d" % rng.randrange(0, 120))
    assert stream.pages > 10, "the small page budget must have produced many pages"
    assert stream.revision is not None
    expected = etcdctl_snapshot(etcd, prefix, stream.revision)
    assert {kv.key: (kv.value, kv.mod_revision) for kv in got} == expected
    assert [kv.key for kv in got] == sorted(expected), "each key once, in key order"
    assert etcdctl_snapshot(etcd, prefix) != expected, "the writes did change the prefix meanwhile"


async def test_page_sizes_adapt_to_value_sizes(store: EtcdStore, prefix: bytes) -> None:
    await load(store, {prefix + b"small-%04d" % i: b"s" * 20 for i in range(300)})
    await load(store, {prefix + b"z-large-%03d" % i: b"L" * 1900 for i in range(20)})
    stream = store.list_stream(prefix)
    assert len(await collect(stream)) == 320
    # 300 small ones fit in far fewer than 300 pages; the large ones need about 2 a page (4 KiB budget)
    assert stream.pages < 60


async def test_list_at_compacted_revision_is_expired_not_partial(store: EtcdStore, prefix: bytes) -> None:
    await load(store, {prefix + b"k%03d" % i: b"v" * 500 for i in range(60)})
    stream = store.list_stream(prefix)
    seen = 0
    with pytest.raises(Expired) as info:
        async for _ in stream:
            seen += 1
            if seen == 1:
                await store.put(prefix + b"k000", b"moved on")
                await store.compact(await store.current_revision())
    assert info.value.code == "Expired"
    assert 1 <= seen < 60
    with pytest.raises(Expired):
        await collect(store.list_stream(prefix, revision=stream.revision))


async def test_future_revision(store: EtcdStore, prefix: bytes) -> None:
    with pytest.raises(FutureRevision):
        await collect(store.list_stream(prefix, revision=await store.current_revision() + 1000))


async def test_continue_token(store: EtcdStore, etcd: EtcdProcess, prefix: bytes) -> None:
    await load(store, {prefix + b"k%03d" % i: b"v%d" % i for i in range(25)})
    first = store.list_stream(prefix, limit=10)
    page1 = await collect(first)
    assert [kv.key for kv in page1] == [prefix + b"k%03d" % i for i in range(10)]
    token = first.continue_token
    assert token is not None and first.revision is not None
    await store.put(prefix + b"k005", b"changed")  # later writes do not show on later pages
    await store.put(prefix + b"k0150", b"new")
    second = store.list_stream(prefix, continue_token=token, limit=10)
    page2 = await collect(second)
    assert second.revision == first.revision
    assert [kv.key for kv in page2] == [prefix + b"k%03d" % i for i in range(10, 20)]
    third = store.list_stream(prefix, continue_token=second.continue_token, limit=10)
    page3 = await collect(third)
    assert [kv.key for kv in page3] == [prefix + b"k%03d" % i for i in range(20, 25)]
    assert third.continue_token is None
    snapshot = etcdctl_snapshot(etcd, prefix, first.revision)
    assert {kv.key: (kv.value, kv.mod_revision) for kv in page1 + page2 + page3} == snapshot

    # exactly `limit` left: no token
    exact = store.list_stream(prefix, continue_token=second.continue_token, limit=5)
    assert len(await collect(exact)) == 5 and exact.continue_token is None

    tampered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    for bad in (tampered, token + "x", "!!", "", base64.urlsafe_b64encode(b"\x01" * 40).decode()):
        with pytest.raises(InvalidContinue):
            store.list_stream(prefix, continue_token=bad)
    with pytest.raises(InvalidContinue):
        store.list_stream(prefix + b"k0", continue_token=token)  # another prefix
    with pytest.raises(InvalidContinue):
        store.list_stream(prefix, continue_token=token, revision=first.revision + 1)
    async with EtcdStore([etcd.endpoint]) as other:  # another secret
        with pytest.raises(InvalidContinue):
            other.list_stream(prefix, continue_token=token)

    await store.compact(await store.current_revision())
    with pytest.raises(Expired):
        await collect(store.list_stream(prefix, continue_token=second.continue_token))


async def test_shared_secret_tokens_work_across_stores(etcd: EtcdProcess, prefix: bytes) -> None:
    async with EtcdStore([etcd.endpoint], continue_secret=b"s" * 32) as a, EtcdStore(
        [etcd.endpoint], continue_secret=b"s" * 32
    ) as b:
        await load(a, {prefix + b"%d" % i: b"v" for i in range(5)})
        first = a.list_stream(prefix, limit=2)
        await collect(first)
        rest = await collect(b.list_stream(prefix, continue_token=first.continue_token))
        assert [kv.key for kv in rest] == [prefix + b"%d" % i for i in range(2, 5)]


# ------------------------------------------------------------------ watch


async def next_event(stream: Any, timeout: float = 10.0) -> WatchEvent:
    return await asyncio.wait_for(stream.__anext__(), timeout)


async def test_watch_event_types(store: EtcdStore, prefix: bytes) -> None:
    start = await store.current_revision() + 1
    async with store.watch(prefix + b"ns/", start) as watch:
        r1 = await store.create(prefix + b"ns/a", b"one")
        await store.put(prefix + b"ns2/x", b"other prefix")  # must not show up
        r2 = await store.update(prefix + b"ns/a", b"two")
        gone = await store.delete(prefix + b"ns/a")
        added, modified, deleted = [await next_event(watch) for _ in range(3)]
    assert (added.type, added.revision, added.kv.key, bytes(added.kv.value)) == ("ADDED", r1, prefix + b"ns/a", b"one")
    assert (modified.type, modified.revision, bytes(modified.kv.value)) == ("MODIFIED", r2, b"two")
    assert bytes(modified.prev_kv.value) == b"one"
    assert deleted.type == "DELETED" and deleted.revision == gone.revision > r2 and gone.previous.mod_revision == r2
    assert bytes(deleted.kv.value) == b"two" and deleted.kv.mod_revision == r2, "DELETED carries the object as it was"


async def test_watch_replays_history_and_bookmarks(store: EtcdStore, prefix: bytes, etcd_version: str) -> None:
    first = await store.put(prefix + b"a", b"1")
    second = await store.put(prefix + b"a", b"2")
    async with store.watch(prefix, first) as watch:
        a, b = await next_event(watch), await next_event(watch)
        assert (a.type, a.revision, b.type, b.revision) == ("ADDED", first, "MODIFIED", second)
        sent = await watch.request_progress()
        assert sent is (etcd_version == "3.5")
        if sent:
            bookmark = await next_event(watch)
            assert bookmark.type == "BOOKMARK" and bookmark.revision >= second and bookmark.kv is None
        else:
            assert watch.progress_requests_sent == 0


async def test_watch_compacted_start_is_expired(store: EtcdStore, prefix: bytes) -> None:
    old = await store.put(prefix + b"a", b"1")
    await store.put(prefix + b"a", b"2")
    await store.compact(await store.current_revision())
    with pytest.raises(Expired) as info:
        await next_event(store.watch(prefix, old))
    assert info.value.compact_revision > old


async def test_watch_fragments_are_reassembled(store: EtcdStore, etcd: EtcdProcess, prefix: bytes) -> None:
    # 12 keys of 100 KB updated in one txn: one revision, and with prev_kv its watch
    # response (~2.4 MB) exceeds etcd's 1.5 MiB max-request-bytes, so etcd fragments it
    async with EtcdStore([etcd.endpoint]) as big:
        keys = [prefix + b"frag-%02d" % i for i in range(12)]
        await load(big, {k: b"a" * 100_000 for k in keys})
        start = await big.current_revision() + 1
        puts = [wire.encode_request_op_put(wire.encode_put_request(k, b"b" * 100_000)) for k in keys]
        async with big.watch(prefix, start) as watch:
            txn = await big._txn([], puts, [], keys[0])
            events = [await next_event(watch) for _ in keys]
            assert watch.fragments_received >= 1, "etcd did not fragment; the test proves nothing"
        assert [e.kv.key for e in events] == keys
        assert {e.revision for e in events} == {txn.header.revision}
        assert all(e.type == "MODIFIED" and bytes(e.kv.value) == b"b" * 100_000 for e in events)
        assert all(bytes(e.prev_kv.value) == b"a" * 100_000 for e in events)

        # the same revision over a small reassembly bound is refused, not buffered
        async with big.watch(prefix, txn.header.revision, max_fragment_bytes=500_000) as bounded:
            with pytest.raises(TooLarge):
                await next_event(bounded)


# ------------------------------------------------------------------ watch list


async def run_watch_list(store: EtcdStore, etcd: EtcdProcess, prefix: bytes, **kw: Any) -> None:
    rng = random.Random(11)
    initial = {prefix + b"obj-%03d" % i: b"x" * rng.randrange(100, 1500) for i in range(80)}
    await load(store, initial)
    stream = store.watch_list(prefix, **kw)
    events: List[WatchEvent] = []
    writes: List[Tuple[str, bytes]] = []  # (expected event type, key), in write order
    write_count = 40

    async def writer() -> None:
        for i in range(write_count):  # creates, updates and deletes while the initial events stream
            choice = i % 3
            if choice == 0:
                await store.create(prefix + b"new-%03d" % i, b"n%d" % i)
                writes.append(("ADDED", prefix + b"new-%03d" % i))
            elif choice == 1:
                await store.update(prefix + b"obj-%03d" % i, b"u%d" % i)
                writes.append(("MODIFIED", prefix + b"obj-%03d" % i))
            else:
                await store.delete(prefix + b"obj-%03d" % i)
                writes.append(("DELETED", prefix + b"obj-%03d" % i))
            await asyncio.sleep(0.002)

    # the writer starts once the listing has pinned R (at the first page), so every write is after R
    writing = None
    changes_seen = 0
    ended = False
    async for event in stream:
        events.append(event._replace(kv=event.kv._replace(value=bytes(event.kv.value)) if event.kv else None))
        if len(events) == 2:
            writing = asyncio.create_task(writer())
        ended = ended or event.initial_events_end
        if ended and event.type != "BOOKMARK":
            changes_seen += 1
            if changes_seen == write_count:
                break
        if len(events) > 1000:
            pytest.fail("watch list did not deliver the writes")
    assert writing is not None
    await writing
    await stream.aclose()

    revision = stream.revision
    assert revision is not None
    ends = [i for i, e in enumerate(events) if e.initial_events_end]
    assert len(ends) == 1, "exactly one end-of-initial-events bookmark"
    end = ends[0]
    assert events[end].type == "BOOKMARK" and events[end].revision == revision
    initial_events = events[:end]
    assert all(e.type == "ADDED" for e in initial_events)
    snapshot = etcdctl_snapshot(etcd, prefix, revision)
    assert [e.kv.key for e in initial_events] == sorted(snapshot), "every object at R exactly once"
    assert {e.kv.key: (e.kv.value, e.kv.mod_revision) for e in initial_events} == snapshot

    later = events[end + 1 :]
    changes = [e for e in later if e.type != "BOOKMARK"]
    assert all(e.revision > revision for e in later)
    revisions = [e.revision for e in changes]
    assert revisions == sorted(set(revisions)), "in order, none duplicated"
    assert [(e.type, e.kv.key) for e in changes] == writes, "every write once, in order, none lost"
    assert all(e.kv.mod_revision == e.revision for e in changes if e.type != "DELETED")
    state = {k: v for k, (v, _) in snapshot.items()}
    for e in changes:
        if e.type == "DELETED":
            del state[e.kv.key]
        else:
            state[e.kv.key] = e.kv.value
    assert state == {k: v for k, (v, _) in etcdctl_snapshot(etcd, prefix).items()}
    return None


async def test_watch_list_with_concurrent_writes(store: EtcdStore, etcd: EtcdProcess, prefix: bytes, etcd_version: str) -> None:
    await run_watch_list(store, etcd, prefix)


async def test_watch_list_progress_only_above_gate(store: EtcdStore, prefix: bytes, etcd_version: str) -> None:
    await store.put(prefix + b"a", b"1")
    stream = store.watch_list(prefix)
    first, end = await next_event(stream), await next_event(stream)
    assert first.type == "ADDED" and end.initial_events_end
    if etcd_version == "3.5":  # above the gate: the catch-up progress request was sent and answered
        bookmark = await next_event(stream)
        assert bookmark.type == "BOOKMARK" and bookmark.revision >= end.revision
        assert stream.caught_up and stream.progress_requests_sent == 1
        assert await stream.request_progress() is True
        assert (await next_event(stream)).type == "BOOKMARK"
    else:  # below: never sent, not even on request
        assert await stream.request_progress() is False
        await store.put(prefix + b"b", b"2")
        change = await next_event(stream)
        assert change.type == "ADDED" and change.kv.key == prefix + b"b"
        assert stream.progress_requests_sent == 0 and not stream.caught_up
    await stream.aclose()


async def test_watch_list_resource_version(store: EtcdStore, prefix: bytes) -> None:
    revision = await store.put(prefix + b"a", b"1")
    stream = store.watch_list(prefix, resource_version=revision)
    assert (await next_event(stream)).kv.key == prefix + b"a"
    await stream.aclose()
    with pytest.raises(FutureRevision):
        await next_event(store.watch_list(prefix, resource_version=revision + 10_000))


async def test_interval_bookmarks_below_and_above_gate(etcd_version: str, prefix: bytes) -> None:
    """Interval progress notifications become BOOKMARKs on both sides of the gate."""
    with EtcdProcess(etcd_version, extra_args=["--experimental-watch-progress-notify-interval=300ms"]) as server:
        async with EtcdStore([server.endpoint]) as s:
            revision = await s.put(prefix + b"a", b"1")
            stream = s.watch_list(prefix)
            events = [await next_event(stream) for _ in range(2)]
            assert events[1].initial_events_end
            bookmark = await next_event(stream, timeout=10)
            assert bookmark.type == "BOOKMARK" and bookmark.revision >= revision
            if etcd_version == "3.4":
                assert stream.progress_requests_sent == 0
            await stream.aclose()


async def test_watch_survives_a_consumer_timeout(store: EtcdStore, prefix: bytes) -> None:
    """A timed-out __anext__ cancels grpc's call; the next one resumes with nothing lost or repeated."""
    start = await store.current_revision() + 1
    async with store.watch(prefix, start) as watch:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(watch.__anext__(), 0.3)
        revisions = [await store.put(prefix + b"k%d" % i, b"v") for i in range(5)]
        got = [(await next_event(watch)).revision for _ in revisions]
        assert got == revisions and watch.reconnects == 1
