"""Shared watches (streamcodec.storage.watch_hub) on real etcd 3.5 and 3.4: N watchers, one etcd watch."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, List

import httpx
import pytest

from streamcodec.storage import EtcdStore, Expired, WatchEvent
from streamcodec.local_etcd import EtcdProcess
from streamcodec.storage.watch_hub import WatchHub
from tests.apiserver_harness import ServerThread


@pytest.fixture
async def store(etcd: EtcdProcess) -> AsyncIterator[EtcdStore]:
    async with EtcdStore([etcd.endpoint]) as s:
        yield s


async def take(watch: object, n: int, timeout: float = 10.0) -> List[WatchEvent]:
    out: List[WatchEvent] = []
    while len(out) < n:
        event = await asyncio.wait_for(watch.__anext__(), timeout)  # type: ignore[attr-defined]
        if event.type != "BOOKMARK":
            out.append(event)
    return out


async def test_watchers_of_a_prefix_share_one_etcd_watch_and_each_sees_every_change(store: EtcdStore, prefix: bytes) -> None:
    start = await store.current_revision() + 1
    watches = [store.shared_watch(prefix, start) for _ in range(50)]
    for w in watches:
        await w.start()
    hub = store.watch_hub
    assert hub is not None and hub.upstreams_started == 1 and hub.watcher_count(prefix) == 50
    assert all(w.shared for w in watches)
    revisions = [await store.put(prefix + b"k%d" % i, b"v%d" % i) for i in range(3)]
    await store.delete(prefix + b"k1")
    for w in watches:
        got = await take(w, 4)
        assert [(e.type, e.revision) for e in got] == [("ADDED", r) for r in revisions] + [("DELETED", revisions[-1] + 1)]
        assert bytes(got[3].kv.key) == prefix + b"k1"
    for w in watches:
        await w.aclose()
    await asyncio.sleep(0.05)
    assert hub.upstream_count() == 0  # the last watcher closed it


async def test_a_late_watcher_replays_from_history_and_an_older_one_gets_a_private_watch(store: EtcdStore, prefix: bytes) -> None:
    hub = WatchHub(store, history_events=4)
    before = await store.put(prefix + b"old", b"0")
    first = hub.watch(prefix, before + 1)
    await first.start()
    revs = [await store.put(prefix + b"k%d" % i, b"v") for i in range(6)]
    assert [e.revision for e in await take(first, 6)] == revs
    late = hub.watch(prefix, revs[3])  # still in the 4-event history
    await late.start()
    assert late.shared and [e.revision for e in await take(late, 3)] == revs[3:]
    older = hub.watch(prefix, revs[0])  # evicted from the history: its own etcd watch, still exact
    await older.start()
    assert not older.shared and [e.revision for e in await take(older, 6)] == revs
    assert hub.upstreams_started == 1
    for w in (first, late, older):
        await w.aclose()
    await hub.close()


async def test_a_watcher_that_falls_behind_is_ended_and_the_others_go_on(store: EtcdStore, prefix: bytes) -> None:
    hub = WatchHub(store, backlog_events=5)
    start = await store.current_revision() + 1
    slow, fast = hub.watch(prefix, start), hub.watch(prefix, start)
    await slow.start()
    await fast.start()
    revs = []
    for i in range(10):
        revs.append(await store.put(prefix + b"k%d" % i, b"v"))
        assert (await take(fast, 1))[0].revision == revs[-1]  # the fast one keeps up
    with pytest.raises(StopAsyncIteration):
        while True:  # what the slow one had queued is dropped with it: it ends, the client re-watches
            await asyncio.wait_for(slow.__anext__(), 5)
    assert slow.ended_because == "behind"
    revs.append(await store.put(prefix + b"after", b"v"))
    assert (await take(fast, 1))[0].revision == revs[-1]
    await fast.aclose()
    await hub.close()


async def test_a_compacted_start_ends_every_watcher_with_expired(store: EtcdStore, prefix: bytes) -> None:
    old = await store.put(prefix + b"a", b"1")
    await store.put(prefix + b"a", b"2")
    await store.compact(await store.current_revision())
    watch = store.shared_watch(prefix, old)
    with pytest.raises(Expired):
        await watch.start()
        await take(watch, 1)
    await watch.aclose()


def test_a_hundred_http_watchers_are_one_etcd_watch_and_a_write_reaches_all(etcd: EtcdProcess, prefix: bytes) -> None:
    with ServerThread(etcd.endpoint, prefix) as srv:
        c = httpx.Client(base_url=srv.url, timeout=30)
        ns = "/api/v1/namespaces/default/secrets"
        rv = c.post(ns, json={"metadata": {"name": "x"}}).json()["metadata"]["resourceVersion"]

        async def main() -> List[bytes]:
            request = f"GET {ns}?watch=1&resourceVersion={rv}&timeoutSeconds=60 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            conns = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(100)]
            for _, w in conns:
                w.write(request)
            for r, _ in conns:
                await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            store = srv.app._store  # created by the POST above, in the server's loop; only read here
            assert store is not None
            hub = store.watch_hub
            deadline = asyncio.get_running_loop().time() + 10
            while hub is None or hub.watcher_count(prefix + b"secrets/default/") < 100:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
                hub = store.watch_hub
            assert hub.upstreams_started == 1 and hub.upstream_count() == 1
            await asyncio.to_thread(c.post, ns, json={"metadata": {"name": "hello"}})
            lines = []
            for r, w in conns:
                while True:
                    line = await asyncio.wait_for(r.readline(), 10)
                    if b'"hello"' in line:
                        lines.append(line)
                        break
                w.close()
            return lines

        assert len(asyncio.run(main())) == 100


@pytest.mark.parametrize("embedder_gc", ["enabled", "disabled"])
async def test_the_cyclic_gc_pauses_while_an_event_reaches_many_watchers_and_resumes_after(
    store: EtcdStore, prefix: bytes, embedder_gc: str
) -> None:
    # a collection while 10,000 watchers wait to run promoted their wake-ups: a full collection of
    # ~1 M objects every few events (0.4-0.65 s each); it must be back on once they have run, and
    # a program that runs without the GC keeps it off
    import gc

    from streamcodec.storage.watch_hub import FANOUT_GC_PAUSE_WATCHERS

    start = await store.current_revision() + 1
    watches = [store.shared_watch(prefix, start) for _ in range(FANOUT_GC_PAUSE_WATCHERS)]
    for w in watches:
        await w.start()
    seen: List[bool] = []

    async def one(w: object) -> None:
        while (await w.__anext__()).type == "BOOKMARK":  # type: ignore[attr-defined]  # directly, as a server's watch does
            pass
        seen.append(gc.isenabled())

    readers = [asyncio.ensure_future(one(w)) for w in watches]
    if embedder_gc == "disabled":
        gc.disable()
    try:
        await asyncio.sleep(0.05)  # every reader waits for its event
        await store.put(prefix + b"k", b"v")
        await asyncio.wait_for(asyncio.gather(*readers), 10)
        assert seen == [False] * len(watches)  # off while they ran
        for _ in range(3):
            await asyncio.sleep(0)
        assert gc.isenabled() == (embedder_gc == "enabled")
    finally:
        gc.enable()
        for w in watches:
            await w.aclose()
