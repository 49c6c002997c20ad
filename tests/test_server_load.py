"""A minute of mixed load on ``streamcodec serve`` at its defaults: writes, watches, watch-lists,
lists (paged and whole) and clients that stop reading, all at once.

Every write's revision is logged from its response; etcd serves nothing else, so the revisions after
the seed are exactly the log.  Then every event every watcher saw (across its re-watches) must be the
log from its start, in order, none lost or repeated; every watch-list's initial set must be the state
at its bookmark's revision, its live events the log after it; every list the state at its revision.  The server's RSS is sampled throughout and bounded.  Loopback only; the run stops itself
after ``LOAD_SECONDS`` (60) and every client has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from streamcodec.local_etcd import EtcdProcess, stop_process
from streamcodec.server.defaults import POOL_BYTES
from tests.apiserver_harness import free_port, proc_status_bytes, wait_until_serving

pytestmark = pytest.mark.heavy

LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "60"))
NS = "/api/v1/namespaces/load/secrets"
WATCH_LIST = "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
BIG_OBJECTS, BIG_BYTES = 40, 256 * 1024  # seeded, never written again: every watch-list spans pages
WRITERS, NAMES_PER_WRITER = 2, 60
WATCHERS, SLOW_CLIENTS = 10, 4
MiB = 1024 * 1024
#: the pool (what bulk streams write through) plus what is not in it: gRPC's receive buffer and the
#: parsed page of each etcd scan (2 MiB pages), send pieces, per-connection state (~30 KiB each),
#: the allocator's arenas
RSS_BOUND = POOL_BYTES + 48 * MiB

Log = Dict[int, Tuple[str, str, str]]  # revision -> (event type, name, digest of data; "" for DELETED)


def digest(obj: Dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(obj.get("data", {}), sort_keys=True).encode()).hexdigest()


def state_at(seed: Dict[str, str], seed_rv: int, log: Log, revision: int) -> Dict[str, str]:
    """name -> digest of the collection at ``revision``."""
    state = dict(seed)
    for rv in range(seed_rv + 1, revision + 1):
        kind, name, d = log[rv]
        if kind == "DELETED":
            del state[name]
        else:
            state[name] = d
    return state


def expected_events(log: Log, after: int, until: int) -> List[Tuple[str, str, str, int]]:
    return [(*log[rv], rv) for rv in range(after + 1, until + 1)]


def event_tuple(event: Dict[str, Any]) -> Tuple[str, str, str, int]:
    obj = event["object"]
    d = "" if event["type"] == "DELETED" else digest(obj)
    return event["type"], obj["metadata"]["name"], d, int(obj["metadata"]["resourceVersion"])


@pytest.fixture(scope="module")
def served(etcd35: EtcdProcess) -> Iterator[Tuple[str, "subprocess.Popen[bytes]"]]:
    port = free_port()
    proc = subprocess.Popen(  # the defaults: no tuning flag
        [sys.executable, "-m", "streamcodec", "serve", "--etcd", etcd35.endpoint, "--listen", f"127.0.0.1:{port}",
         "--log-level", "warning"],
    )  # fmt: skip
    try:
        wait_until_serving(port, proc)
        # the writers' namespace, made as a kube client must (NamespaceLifecycle is on), before the seed
        created = httpx.post(f"http://127.0.0.1:{port}/api/v1/namespaces", json={"metadata": {"name": "load"}}, timeout=30)
        assert created.status_code == 201, created.text
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop_process(proc)


class Run:
    def __init__(self, url: str, seed: Dict[str, str], seed_rv: int) -> None:
        self.url = url
        self.seed, self.seed_rv = seed, seed_rv
        self.log: Log = {}
        self.written_at: Dict[int, float] = {}
        self.deadline = time.monotonic() + LOAD_SECONDS
        self.final: Optional[int] = None  # the last revision, once the writers have stopped
        self.arrivals: List[Tuple[int, float]] = []  # (revision, when a watcher got it)
        self.seen: List[List[Tuple[str, str, str, int]]] = []  # each watcher's events, in order

    def running(self) -> bool:
        return time.monotonic() < self.deadline


async def writer(run: Run, index: int, rng: random.Random) -> None:
    present: Dict[str, bool] = {}
    async with httpx.AsyncClient(base_url=run.url, timeout=30) as c:
        while run.running():
            name = f"w{index}-{rng.randrange(NAMES_PER_WRITER):02d}"
            data = {"k": base64.b64encode(rng.randbytes(rng.randrange(256, 8192))).decode()}
            if not present.get(name):
                r = await c.post(NS, json={"metadata": {"name": name}, "data": data})
                kind, expect = "ADDED", 201
            elif rng.random() < 0.3:
                r = await c.delete(f"{NS}/{name}")
                kind, expect = "DELETED", 200
            else:
                r = await c.put(f"{NS}/{name}", json={"metadata": {"name": name}, "data": data})
                kind, expect = "MODIFIED", 200
            assert r.status_code == expect, r.text[:300]
            obj = r.json()
            rv = int(obj["metadata"]["resourceVersion"])
            run.log[rv] = (kind, name, "" if kind == "DELETED" else digest(obj))
            run.written_at[rv] = time.monotonic()
            present[name] = kind != "DELETED"
            await asyncio.sleep(rng.uniform(0.005, 0.03))


async def read_events(c: httpx.AsyncClient, path: str, on_event: Any) -> None:
    """Stream a watch, calling ``on_event(event)`` for each; returns when the server ends it."""
    async with c.stream("GET", path) as resp:
        assert resp.status_code == 200, (path, resp.status_code)
        async for line in resp.aiter_lines():
            if line:
                if on_event(json.loads(line)) is False:
                    return


async def watcher(run: Run, rng: random.Random, seen: List[Tuple[str, str, str, int]]) -> int:
    """Watch from the seed's revision until it has seen the writers' last write, re-watching as client-go does."""
    rv = run.seed_rv
    async with httpx.AsyncClient(base_url=run.url, timeout=httpx.Timeout(30, read=None)) as c:
        while run.final is None or rv < run.final:
            def on_event(event: Dict[str, Any]) -> None:
                nonlocal rv
                if event["type"] == "ERROR":
                    raise AssertionError(f"watch from {rv}: {event['object']}")
                if event["type"] == "BOOKMARK":
                    bookmark = int(event["object"]["metadata"]["resourceVersion"])
                    assert bookmark >= rv, (bookmark, rv)
                    rv = bookmark
                    return
                got = event_tuple(event)
                seen.append(got)
                run.arrivals.append((got[3], time.monotonic()))
                rv = got[3]

            timeout = rng.randint(3, 12)  # ends now and then: every re-watch must join without a gap
            await read_events(c, f"{NS}?watch=1&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds={timeout}",
                              on_event)
    return rv


async def watch_lister(run: Run, live_seconds: float) -> Tuple[int, Dict[str, str], List[Tuple[str, str, str, int]], float]:
    """A watch-list: its initial set at the bookmark, then ``live_seconds`` of its live events."""
    initial: Dict[str, str] = {}
    live: List[Tuple[str, str, str, int]] = []
    bookmark: List[int] = []
    started = time.monotonic()
    synced = [0.0]
    async with httpx.AsyncClient(base_url=run.url, timeout=httpx.Timeout(30, read=None)) as c:
        def on_event(event: Dict[str, Any]) -> Optional[bool]:
            kind = event["type"]
            if kind == "ERROR":
                raise AssertionError(f"watch-list: {event['object']}")
            if kind == "BOOKMARK":
                annotations = event["object"]["metadata"].get("annotations") or {}
                if not bookmark and annotations.get("k8s.io/initial-events-end") == "true":
                    bookmark.append(int(event["object"]["metadata"]["resourceVersion"]))
                    synced[0] = time.monotonic()
                return None
            if not bookmark:
                assert kind == "ADDED", kind
                name = event["object"]["metadata"]["name"]
                assert name not in initial, f"{name} twice in the initial events"
                initial[name] = digest(event["object"])
            else:
                live.append(event_tuple(event))
                if time.monotonic() - synced[0] > live_seconds:
                    return False
            return None

        await asyncio.wait_for(read_events(c, f"{NS}?{WATCH_LIST}&timeoutSeconds=60", on_event), 90)
    assert bookmark, "the watch-list ended before its initial-events-end bookmark"
    return bookmark[0], initial, live, synced[0] - started


async def lister(run: Run, limit: Optional[int]) -> Tuple[int, Dict[str, str]]:
    """A LIST, paged (``limit`` + continue, as client-go's pager) or whole (None: one that may share
    a scan with others): the items and the list's revision."""
    items: Dict[str, str] = {}
    token, revision = "", None
    async with httpx.AsyncClient(base_url=run.url, timeout=60) as c:
        while True:
            params = {"limit": str(limit)} if limit else {}
            r = await c.get(NS, params={**params, **({"continue": token} if token else {})})
            assert r.status_code == 200, r.text[:300]
            body = r.json()
            rv = int(body["metadata"]["resourceVersion"])
            assert revision in (None, rv), "every page of a list is read at one revision"
            revision = rv
            for item in body["items"]:
                items[item["metadata"]["name"]] = digest(item)
            token = body["metadata"].get("continue", "")
            if not token:
                assert revision is not None
                return revision, items


def slow_client(port: int) -> socket.socket:
    """A watch-list whose client reads nothing (a 4 KiB receive window)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET {NS}?{WATCH_LIST} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def closed_by_server(sock: socket.socket, wait: float) -> bool:
    """Whether the server ends this connection within ``wait`` s; reads nothing (reading would revive it)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)  # FIN or RST from the server
    return bool(poller.poll(wait * 1000))


def test_a_minute_of_mixed_load_loses_duplicates_and_reorders_nothing_in_bounded_memory(
    served: Tuple[str, "subprocess.Popen[bytes]"],
) -> None:
    url, proc = served
    port = int(url.rsplit(":", 1)[1])
    rng = random.Random(20261202)
    c = httpx.Client(base_url=url, timeout=30)
    seed: Dict[str, str] = {}
    for i in range(BIG_OBJECTS):
        data = {"k": base64.b64encode(rng.randbytes(BIG_BYTES)).decode()}
        r = c.post(NS, json={"metadata": {"name": f"big{i:02d}"}, "data": data})
        assert r.status_code == 201, r.text[:300]
        seed[f"big{i:02d}"] = digest(r.json())
    seed_rv = int(c.get(NS, params={"limit": "1"}).json()["metadata"]["resourceVersion"])

    baseline = proc_status_bytes(proc.pid, "VmRSS")
    peak = [baseline]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], proc_status_bytes(proc.pid, "VmRSS"))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run = Run(url, seed, seed_rv)
    slow = [slow_client(port) for _ in range(SLOW_CLIENTS // 2)]

    async def main() -> Tuple[List[int], List[Any], List[Any]]:
        writers = [asyncio.ensure_future(writer(run, i, random.Random(rng.random()))) for i in range(WRITERS)]
        run.seen = [[] for _ in range(WATCHERS)]
        watchers = [asyncio.ensure_future(watcher(run, random.Random(rng.random()), seen)) for seen in run.seen]
        watch_lists, lists = [], []
        launched_slow = False
        while run.running():
            watch_lists.append(asyncio.ensure_future(watch_lister(run, live_seconds=3)))
            lists.append(asyncio.ensure_future(lister(run, 25)))
            lists.extend(asyncio.ensure_future(lister(run, None)) for _ in range(2))  # together: one shared scan
            if not launched_slow and time.monotonic() > run.deadline - LOAD_SECONDS / 2:
                slow.extend(slow_client(port) for _ in range(SLOW_CLIENTS - len(slow)))  # halfway: more stop reading
                launched_slow = True
            await asyncio.sleep(min(3.0, LOAD_SECONDS / 10))
        await asyncio.gather(*writers)
        run.final = max(run.log)
        ends = await asyncio.wait_for(asyncio.gather(*watchers), 60)
        results = await asyncio.wait_for(asyncio.gather(*watch_lists), 120)
        paged = await asyncio.wait_for(asyncio.gather(*lists), 120)
        return ends, results, paged

    try:
        ends, watch_lists, lists = asyncio.run(main())
        cut = [closed_by_server(s, 40) for s in slow]
    finally:
        sampling.set()
        sampler.join()
        for s in slow:
            s.close()

    last = max(run.log)
    assert sorted(run.log) == list(range(seed_rv + 1, last + 1)), "a revision the writers did not make"
    assert len(run.log) >= 20 * LOAD_SECONDS, f"only {len(run.log)} writes"
    for i, seen in enumerate(run.seen):
        until = seen[-1][3] if seen else seed_rv
        assert seen == expected_events(run.log, seed_rv, until), f"watcher {i}: events differ from the log"
        assert until == last, f"watcher {i} stopped at {until}, the writers at {last}"
    for bookmark, initial, live, _ in watch_lists:
        assert initial == state_at(seed, seed_rv, run.log, bookmark), f"initial events at {bookmark}"
        until = live[-1][3] if live else bookmark
        assert live == expected_events(run.log, bookmark, until), f"live events after {bookmark}"
    for revision, items in lists:
        assert items == state_at(seed, seed_rv, run.log, revision), f"list at {revision}"
    assert all(cut), f"clients that read nothing not cut off: {cut}"
    # from the write's response (an event may arrive before it: 0)
    lags = sorted(max(0.0, at - run.written_at[rv]) for rv, at in run.arrivals)
    p99 = lags[int(len(lags) * 0.99)]
    growth = peak[0] - baseline
    syncs = sorted(t for *_, t in watch_lists)
    print(f"\n{len(run.log)} writes in {LOAD_SECONDS:.0f} s; {WATCHERS} watchers saw {sum(len(seen) for seen in run.seen)} events "
          f"(p50 {lags[len(lags) // 2] * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms after the write's response); "
          f"{len(watch_lists)} watch-lists (sync p50 {syncs[len(syncs) // 2]:.2f} s, max {syncs[-1]:.2f} s); "
          f"{len(lists)} lists (a third paged); {len(slow)} silent clients cut; server RSS growth {growth / MiB:.1f} MiB")
    assert growth <= RSS_BOUND, f"server RSS grew {growth / MiB:.1f} MiB"
    assert p99 <= 1.0, f"p99 event latency {p99 * 1000:.0f} ms"
