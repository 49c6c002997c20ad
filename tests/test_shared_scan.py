"""Shared scans (streamcodec.storage.shared_scan) on real etcd 3.5 and 3.4: N watch-lists, one etcd read."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import AsyncIterator, Dict, List, Optional, Tuple

import httpx
import pytest

from streamcodec.local_etcd import EtcdCluster, EtcdProcess
from streamcodec.storage import EtcdStore, Expired
from streamcodec.storage.etcd import WatchListStream
from streamcodec.storage.shared_scan import ScanHub, ScanMember
from tests.apiserver_harness import ServerThread

KiB = 1024


@pytest.fixture
async def store(etcd: EtcdProcess) -> AsyncIterator[EtcdStore]:
    async with EtcdStore([etcd.endpoint]) as s:
        yield s


@pytest.fixture
async def small_pages(etcd: EtcdProcess) -> AsyncIterator[EtcdStore]:
    """A store whose pages hold a few 16 KiB objects, so a modest collection spans many pages.

    (max_object_bytes stays the default: the receive limit must take a whole etcd watch response.)
    """
    async with EtcdStore([etcd.endpoint], page_bytes=128 * KiB) as s:
        yield s


def etcd_sent_bytes(etcd: EtcdProcess) -> float:
    """What etcd says it sent to gRPC clients so far (its own /metrics)."""
    text = httpx.get(f"{etcd.client_url}/metrics", timeout=10).text
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith("etcd_network_client_grpc_sent_bytes_total"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, "etcd's /metrics has no etcd_network_client_grpc_sent_bytes_total"
    return total


async def fill(store: EtcdStore, prefix: bytes, count: int, size: int) -> Dict[bytes, bytes]:
    objects = {prefix + b"obj-%04d" % i: bytes([65 + i % 26]) * size for i in range(count)}
    await asyncio.gather(*(store.put(k, v) for k, v in objects.items()))
    return objects


async def initial(
    stream: WatchListStream, delay: float = 0.0, timeout: float = 60.0, reached: Optional[Dict[int, asyncio.Event]] = None
) -> Tuple[List[Tuple[bytes, bytes]], int]:
    """The initial ADDED events (key, value) and the initial-events-end bookmark's revision; each event of
    ``reached`` is set once that many events have come."""
    got: List[Tuple[bytes, bytes]] = []
    while True:
        event = await asyncio.wait_for(stream.__anext__(), timeout)
        if event.type == "BOOKMARK":
            assert event.initial_events_end
            return got, event.revision
        assert event.type == "ADDED"
        got.append((bytes(event.kv.key), bytes(event.kv.value)))
        if reached and len(got) in reached:
            reached[len(got)].set()
        if delay:
            await asyncio.sleep(delay)


_members: Dict[int, ScanMember] = {}


def remember(*streams: WatchListStream) -> None:
    """Note each stream's scan membership (a watch-list lets it go once its initial events are read)."""
    for stream in streams:
        member = stream._list
        assert isinstance(member, ScanMember)
        _members[id(stream)] = member


def member_of(stream: WatchListStream) -> ScanMember:
    return _members[id(stream)]


async def test_sixteen_watch_lists_cost_etcd_one_read(store: EtcdStore, etcd: EtcdProcess, prefix: bytes) -> None:
    objects = await fill(store, prefix, 64, 256 * KiB)
    collection_bytes = sum(len(k) + len(v) for k, v in objects.items())
    before = await asyncio.to_thread(etcd_sent_bytes, etcd)
    streams = [store.shared_watch_list(prefix) for _ in range(16)]
    remember(*streams)
    results = await asyncio.wait_for(asyncio.gather(*(initial(s) for s in streams)), 60)
    after = await asyncio.to_thread(etcd_sent_bytes, etcd)
    revision = await store.current_revision()
    for got, bookmark in results:
        assert bookmark == revision
        assert len(got) == len(objects) and dict(got) == objects  # every object, exactly once
    assert all(s.revision == revision for s in streams)
    assert store.scan_hub is not None and store.scan_hub.scans_started == 1
    assert not any(member_of(s).detached for s in streams)
    sent = after - before
    assert sent <= 1.25 * collection_bytes, f"etcd sent {sent / collection_bytes:.2f} x the collection"
    # the live phase: one shared watch from R + 1 for all sixteen
    new_revision = await store.put(prefix + b"late", b"x")
    for s in streams:
        event = await asyncio.wait_for(s.__anext__(), 10)
        while event.type == "BOOKMARK":
            event = await asyncio.wait_for(s.__anext__(), 10)
        assert (event.type, event.revision, bytes(event.kv.key)) == ("ADDED", new_revision, prefix + b"late")
    assert store.watch_hub is not None and store.watch_hub.upstreams_started == 1
    for s in streams:
        await s.aclose()


def state_at(etcd: EtcdProcess, prefix: bytes, revision: int) -> Dict[bytes, bytes]:
    out = json.loads(etcd.etcdctl("get", "--prefix", f"--rev={revision}", "-w", "json", prefix.decode()))
    return {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in out.get("kvs", [])}


async def test_staggered_arrivals_with_writes_are_consistent_and_complete(
    small_pages: EtcdStore, etcd: EtcdProcess, prefix: bytes
) -> None:
    store = small_pages
    await fill(store, prefix, 120, 16 * KiB)
    start_revision = await store.current_revision()
    reference = store.watch(prefix, start_revision + 1)  # every change, as etcd orders them
    await reference.start()
    stop = asyncio.Event()
    sentinel = prefix + b"zz-sentinel"

    async def writer() -> None:
        i = 0
        while not stop.is_set():
            key = prefix + b"obj-%04d" % (i * 7 % 130)
            if i % 5 == 4:
                try:
                    await store.delete(key)
                except Exception:  # noqa: BLE001 - the key may already be gone: a NotFound is fine
                    pass
            else:
                await store.put(key, b"w%d" % i * 1000)
            i += 1
            await asyncio.sleep(0.01)
        await store.put(sentinel, b"end")

    # members arrive about every 60 ms; an odd one (NotOlderThan) only once the member before it has
    # 20 of its 120 objects, so that a scan is surely under way for it to join mid-flight
    first_event = [asyncio.Event() for _ in range(10)]
    midway = [asyncio.Event() for _ in range(10)]

    async def member(index: int) -> Tuple[int, int, List[Tuple[bytes, bytes]], List[Tuple[str, bytes, int]], WatchListStream]:
        await asyncio.sleep(0.06 * index)
        if index % 2:
            await asyncio.wait_for(midway[index - 1].wait(), 30)
        arrived = await store.current_revision()
        # half consistent reads, half NotOlderThan an old revision (those may join scans mid-flight)
        stream = store.shared_watch_list(prefix, None if index % 2 == 0 else start_revision)
        remember(stream)
        got, bookmark = await initial(stream, delay=0.002, reached={1: first_event[index], 20: midway[index]})
        later: List[Tuple[str, bytes, int]] = []
        while True:
            event = await asyncio.wait_for(stream.__anext__(), 30)
            if event.type == "BOOKMARK":
                continue
            later.append((event.type, bytes(event.kv.key), event.revision))
            if bytes(event.kv.key) == sentinel:
                break
        await stream.aclose()
        return arrived, bookmark, got, later, stream

    writing = asyncio.ensure_future(writer())
    members = [asyncio.ensure_future(member(i)) for i in range(10)]
    # the writes stop (and the sentinel is written) only once every member's read is under way
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first_event)), 60)
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(writing, 30)
    results = await asyncio.wait_for(asyncio.gather(*members), 60)
    expected: List[Tuple[str, bytes, int]] = []
    while not expected or expected[-1][1] != sentinel:
        event = await asyncio.wait_for(reference.__anext__(), 30)
        if event.type != "BOOKMARK":
            expected.append((event.type, bytes(event.kv.key), event.revision))
    await reference.aclose()
    joined_mid_flight = 0
    for index, (arrived, bookmark, got, later, stream) in enumerate(results):
        if index % 2 == 0:
            assert bookmark >= arrived, "a consistent read was served older than its arrival"
        else:
            assert bookmark >= start_revision
        assert len(got) == len({k for k, _ in got})  # no key twice
        assert dict(got) == await asyncio.to_thread(state_at, etcd, prefix, bookmark)
        assert later == [e for e in expected if e[2] > bookmark]  # every later change, once, in order
        joined_mid_flight += member_of(stream).join_key != prefix
    assert joined_mid_flight >= 1  # the circular path was exercised
    assert store.scan_hub is not None and store.scan_hub.scans_started < len(results)


async def test_a_slow_member_is_detached_and_does_not_delay_the_others(
    small_pages: EtcdStore, prefix: bytes
) -> None:
    store = small_pages
    objects = await fill(store, prefix, 80, 16 * KiB)
    hub = ScanHub(store, ring_pages=3)
    slow = WatchListStream(store, prefix, None, listing=hub.member(prefix))
    fast = [WatchListStream(store, prefix, None, listing=hub.member(prefix)) for _ in range(4)]
    remember(slow, *fast)
    first = await asyncio.wait_for(slow.__anext__(), 10)  # then it reads nothing for a while
    started = time.monotonic()
    # all fast members in the scan (each has its first object) before any runs ahead
    firsts = await asyncio.wait_for(asyncio.gather(*(s.__anext__() for s in fast)), 10)
    rests = await asyncio.wait_for(asyncio.gather(*(initial(s) for s in fast)), 30)
    fast_took = time.monotonic() - started
    results = [([(bytes(f.kv.key), bytes(f.kv.value))] + rest, bookmark) for f, (rest, bookmark) in zip(firsts, rests)]
    assert member_of(slow).detached  # cut loose instead of holding the ring
    assert not any(member_of(s).detached for s in fast)
    rest, bookmark = await initial(slow)
    got = [(bytes(first.kv.key), bytes(first.kv.value))] + rest
    assert len(got) == len(objects) and dict(got) == objects
    for fast_got, fast_bookmark in results:
        assert fast_bookmark == bookmark and dict(fast_got) == objects and len(fast_got) == len(objects)
    assert fast_took < 20  # the group never waited for the slow member (which resumed only now)
    assert member_of(slow).shared_pages < member_of(fast[0]).shared_pages
    for s in [slow, *fast]:
        await s.aclose()
    await hub.close()


async def test_compaction_mid_scan_ends_every_member_with_expired(small_pages: EtcdStore, prefix: bytes) -> None:
    store = small_pages
    await fill(store, prefix, 60, 16 * KiB)
    hub = ScanHub(store, ring_pages=3)
    streams = [WatchListStream(store, prefix, None, listing=hub.member(prefix)) for _ in range(16)]
    for s in streams:
        event = await asyncio.wait_for(s.__anext__(), 10)
        assert event.type == "ADDED"
    revision = await store.put(prefix + b"after", b"x")
    await store.compact(revision)

    async def drain(s: WatchListStream) -> Optional[BaseException]:
        try:
            while True:
                event = await asyncio.wait_for(s.__anext__(), 20)
                assert event.type == "ADDED", "the scan must not complete over a compacted revision"
        except Expired as exc:
            return exc

    errors = await asyncio.wait_for(asyncio.gather(*(drain(s) for s in streams)), 30)
    assert all(isinstance(e, Expired) for e in errors)
    await hub.close()


async def test_members_leaving_early_end_the_scan_and_a_new_reader_starts_afresh(store: EtcdStore, prefix: bytes) -> None:
    await fill(store, prefix, 5, 1 * KiB)
    hub = ScanHub(store)
    a = hub.member(prefix)
    await asyncio.wait_for(a.__anext__(), 10)
    await a.aclose()
    await asyncio.sleep(0.05)
    assert hub.scan_count(prefix) == 0  # nobody left to read it: the scan task ended
    b = hub.member(prefix)
    keys = [bytes(kv.key) async for kv in b]
    assert len(keys) == 5 and hub.scans_started == 2
    empty = hub.member(prefix + b"nothing-here/")
    assert [kv async for kv in empty] == [] and empty.revision is not None
    await hub.close()


def test_watch_lists_through_the_server_share_a_scan(etcd: EtcdProcess, prefix: bytes) -> None:
    with ServerThread(etcd.endpoint, prefix, shared_scans=True) as srv:
        ns = "/api/v1/namespaces/default/secrets"
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            names = {f"s-{i:03d}" for i in range(40)}
            for name in names:
                data = base64.b64encode(name.encode() * 2000).decode()
                assert c.post(ns, json={"metadata": {"name": name}, "data": {"v": data}}).status_code == 201
            rv = int(c.get(ns + "?limit=1").json()["metadata"]["resourceVersion"])

        async def watch_list(client: httpx.AsyncClient) -> Tuple[List[str], int]:
            seen: List[str] = []
            url = ns + "?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=30"
            async with client.stream("GET", url) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    event = json.loads(line)
                    meta = event["object"]["metadata"]
                    if event["type"] == "BOOKMARK" and meta.get("annotations", {}).get("k8s.io/initial-events-end") == "true":
                        return seen, int(meta["resourceVersion"])
                    assert event["type"] == "ADDED"
                    assert event["object"]["data"]["v"] == base64.b64encode(meta["name"].encode() * 2000).decode()
                    seen.append(meta["name"])
            raise AssertionError("the watch-list ended before its initial-events-end bookmark")

        async def main() -> List[Tuple[List[str], int]]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                return await asyncio.wait_for(asyncio.gather(*(watch_list(client) for _ in range(8))), 60)

        for seen, bookmark in asyncio.run(main()):
            assert sorted(seen) == sorted(names) and bookmark == rv
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            future = c.get(ns + f"?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
                                f"&resourceVersion={rv + 1000}&timeoutSeconds=5")
            assert future.status_code == 504 and future.json()["kind"] == "Status"  # kube's "Too large resource version"
            assert future.json()["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
        store = srv.app._store
        assert store is not None and store.scan_hub is not None and store.scan_hub.scans_started >= 1
        assert store.watch_hub is not None  # the live phase went through the shared watch


async def test_a_scan_survives_the_crash_of_the_member_it_reads(etcd_cluster: EtcdCluster, prefix: bytes) -> None:
    async with EtcdStore(etcd_cluster.endpoints, page_bytes=128 * KiB) as store:
        objects = await fill(store, prefix, 60, 16 * KiB)
        hub = ScanHub(store)
        streams = [WatchListStream(store, prefix, None, listing=hub.member(prefix)) for _ in range(4)]
        firsts = await asyncio.wait_for(asyncio.gather(*(s.__anext__() for s in streams)), 10)
        serving = store.current_endpoint
        await asyncio.to_thread(etcd_cluster.kill, etcd_cluster.endpoints.index(serving))
        rests = await asyncio.wait_for(asyncio.gather(*(initial(s) for s in streams)), 60)
        assert store.current_endpoint != serving  # the page reads really moved to another member
        bookmarks = set()
        for first, (rest, bookmark) in zip(firsts, rests):
            got = [(bytes(first.kv.key), bytes(first.kv.value))] + rest
            assert len(got) == len(objects) and dict(got) == objects
            bookmarks.add(bookmark)
        assert len(bookmarks) == 1 and hub.scans_started == 1
        for s in streams:
            await s.aclose()
        await hub.close()


async def test_members_that_drift_apart_but_keep_reading_stay_in_the_scan(small_pages: EtcdStore, prefix: bytes) -> None:
    """Readers of one scan drift apart by more than a ring (client-go's informers did: 15 of 16 were
    detached within 1.3 s when the ring waited for nobody); a member that is still reading is waited
    for, so the collection is read once."""
    store = small_pages
    objects = await fill(store, prefix, 60, 16 * KiB)
    hub = ScanHub(store, ring_pages=3)
    streams = [WatchListStream(store, prefix, None, listing=hub.member(prefix)) for _ in range(8)]
    # from as fast as the loop allows to 2 ms per object: the fastest would be ~100 ms ahead
    results = await asyncio.wait_for(asyncio.gather(*(initial(s, delay=0.0003 * i) for i, s in enumerate(streams))), 60)
    for got, _ in results:
        assert len(got) == len(objects) and dict(got) == objects
    assert hub.members_detached == 0 and hub.scans_started == 1
    pages_of_one_read = hub.pages_fetched_total
    alone = ScanHub(store, ring_pages=3)
    single = WatchListStream(store, prefix, None, listing=alone.member(prefix))
    await initial(single)
    assert pages_of_one_read == alone.pages_fetched_total  # every page fetched once for all eight
    for s in [*streams, single]:
        await s.aclose()
    await hub.close()
    await alone.close()


async def test_the_ring_stays_bounded_whatever_the_members_speeds(small_pages: EtcdStore, prefix: bytes) -> None:
    store = small_pages
    objects = await fill(store, prefix, 90, 16 * KiB)
    hub = ScanHub(store, ring_pages=3, detach_after=0.005)  # the slow end is cut, not waited for
    streams = [WatchListStream(store, prefix, None, listing=hub.member(prefix)) for _ in range(24)]
    held_pages: List[int] = []
    held_bytes: List[int] = []
    done = asyncio.Event()

    async def watch_the_ring() -> None:
        while not done.is_set():
            for scans in hub._scans.values():
                for scan in scans:
                    held_pages.append(len(scan.pages))
                    held_bytes.append(sum(len(kv.key) + len(kv.value) for page in scan.pages for kv in page.kvs))
            await asyncio.sleep(0)

    sampler = asyncio.ensure_future(watch_the_ring())
    # speeds from "as fast as the loop allows" to 3 ms per object: the slower ones fall behind
    results = await asyncio.wait_for(asyncio.gather(*(initial(s, delay=0.00012 * i) for i, s in enumerate(streams))), 60)
    done.set()
    await sampler
    for got, _ in results:
        assert len(got) == len(objects) and dict(got) == objects
    assert held_pages and max(held_pages) <= 3  # never more than the ring, with 24 members
    assert max(held_bytes) <= 3 * store.page_bytes
    assert hub.members_detached >= 1  # the slow end of the group really was cut loose
    assert hub.scans_started == 1
    for s in streams:
        await s.aclose()
    await hub.close()


# ---------------------------------------------------------------- shared LISTs (ordered members)


async def keys_and_values(member: ScanMember) -> List[Tuple[bytes, bytes]]:
    return [(bytes(kv.key), bytes(kv.value)) async for kv in member]


async def test_sixteen_lists_cost_etcd_one_read_each_in_key_order(store: EtcdStore, etcd: EtcdProcess, prefix: bytes) -> None:
    objects = await fill(store, prefix, 64, 256 * KiB)
    collection_bytes = sum(len(k) + len(v) for k, v in objects.items())
    before = await asyncio.to_thread(etcd_sent_bytes, etcd)
    members = [store.shared_list_stream(prefix) for _ in range(16)]
    results = await asyncio.wait_for(asyncio.gather(*(keys_and_values(m) for m in members)), 60)
    sent = await asyncio.to_thread(etcd_sent_bytes, etcd) - before
    revision = await store.current_revision()
    for got in results:
        assert got == sorted(objects.items())  # every object once, in key order, as a LIST's items are
    assert all(m.revision == revision and m.continue_token is None for m in members)
    assert store.scan_hub is not None and store.scan_hub.scans_started == 1
    assert sent <= 1.25 * collection_bytes, f"etcd sent {sent / collection_bytes:.2f} x the collection"


async def test_a_list_joins_only_at_the_first_page_and_never_wraps(small_pages: EtcdStore, etcd: EtcdProcess, prefix: bytes) -> None:
    store = small_pages
    objects = await fill(store, prefix, 80, 16 * KiB)  # ~20 pages of 4 objects
    hub = ScanHub(store, ring_pages=3)
    watch_list = WatchListStream(store, prefix, None, listing=hub.member(prefix))
    early = hub.member(prefix, ordered=True)
    got_early = [await asyncio.wait_for(early.__anext__(), 10)]
    for _ in range(40):  # the watch-list member runs ten pages ahead: page 0 left the ring long ago
        event = await asyncio.wait_for(watch_list.__anext__(), 10)
        assert event.type == "ADDED"
    late_watch_list = hub.member(prefix)
    late_list = hub.member(prefix, ordered=True)
    first_late = await asyncio.wait_for(late_watch_list.__anext__(), 10)
    assert bytes(first_late.key) > prefix + b"obj-0000"  # the watch-list member joined mid-flight
    listed = await asyncio.wait_for(keys_and_values(late_list), 30)
    assert listed == sorted(objects.items())  # the list did not: it started the next scan, from the start
    assert hub.scans_started == 2 and late_list._scan is None
    rest = await asyncio.wait_for(keys_and_values(early), 30)
    assert [(bytes(kv.key), bytes(kv.value)) for kv in got_early] + rest == sorted(objects.items())
    wrapped = [(bytes(first_late.key), bytes(first_late.value))] + await asyncio.wait_for(keys_and_values(late_watch_list), 30)
    assert sorted(wrapped) == sorted(objects.items()) and wrapped != sorted(objects.items())  # it wrapped round
    await watch_list.aclose()
    await hub.close()


def test_lists_through_the_server_share_a_scan_and_paged_lists_do_not(etcd: EtcdProcess, prefix: bytes) -> None:
    with ServerThread(etcd.endpoint, prefix, shared_scans=True) as srv:
        ns = "/api/v1/namespaces/default/secrets"
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            names = sorted(f"s-{i:03d}" for i in range(40))
            for name in names:
                data = base64.b64encode(name.encode() * 2000).decode()
                assert c.post(ns, json={"metadata": {"name": name}, "data": {"v": data}}).status_code == 201
            rv = int(c.get(ns + "?limit=1").json()["metadata"]["resourceVersion"])
        store = srv.app._store
        assert store is not None

        async def whole_list(client: httpx.AsyncClient) -> Tuple[List[str], int]:
            r = await client.get(ns)
            assert r.status_code == 200
            body = r.json()
            return [i["metadata"]["name"] for i in body["items"]], int(body["metadata"]["resourceVersion"])

        async def main() -> List[Tuple[List[str], int]]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                return await asyncio.wait_for(asyncio.gather(*(whole_list(client) for _ in range(8))), 60)

        started = store.scan_hub.scans_started if store.scan_hub is not None else 0
        for listed, revision in asyncio.run(main()):
            assert listed == names and revision == rv  # key order, and the newest revision (consistent)
        assert store.scan_hub is not None and store.scan_hub.scans_started > started
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            before = store.scan_hub.scans_started
            page = c.get(ns, params={"limit": "10"}).json()  # a paged list reads on its own
            assert [i["metadata"]["name"] for i in page["items"]] == names[:10] and page["metadata"]["continue"]
            exact = c.get(ns, params={"resourceVersion": str(rv), "resourceVersionMatch": "Exact"}).json()
            assert [i["metadata"]["name"] for i in exact["items"]] == names
            assert store.scan_hub.scans_started == before
            # a write, then a list: the consistent read never comes from an older scan
            created = c.post(ns, json={"metadata": {"name": "t-new"}, "data": {"v": "eA=="}}).json()
            fresh = c.get(ns).json()
            assert fresh["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
            assert [i["metadata"]["name"] for i in fresh["items"]] == names + ["t-new"]
