"""EtcdStore on real 3-member etcd clusters (3.5.16 and 3.4.23): the member in use is killed mid-list and mid-watch.

That member is the cluster's leader (the store is given the leader's endpoint first), the harder case:
besides the refused connection, the survivors have no leader until they elect one (about 1-2 s; etcd 3.4
has no pre-vote), so a linearizable read on them times out or is refused meanwhile.  Writes keep going (from etcdctl, an independent client) while the member dies.  The store must go on
against another member from where it was, and what it delivered is compared with what etcdctl reports
at the end: the list with ``etcdctl get --prefix --rev=R`` (R = the pinned revision), the watch with
``etcdctl watch --rev`` replaying etcd's history.  Nothing may be lost, duplicated or reordered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from streamcodec.storage import EtcdStore
from streamcodec.local_etcd import EtcdCluster, EtcdctlError

#: small pages so a list of a few MB takes many Range calls (the kill lands mid-stream)
PAGE_BYTES = 64 * 1024
MAX_OBJECT = 32 * 1024
STREAM_TIMEOUT = 90.0
#: a write in flight to the killed leader waits this long before the writer tries again elsewhere
WRITE_TIMEOUT = "--command-timeout=2s"


def _leader_first(cluster: EtcdCluster) -> List[str]:
    """The cluster's endpoints, the leader's first (as etcdctl reports it), so the store starts on the leader."""
    statuses = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json"))
    leaders = [
        s["Endpoint"].split("://", 1)[1] for s in statuses if s["Status"]["leader"] == s["Status"]["header"]["member_id"]
    ]
    assert len(leaders) == 1, f"no single leader in {statuses}"
    return leaders + [e for e in cluster.endpoints if e != leaders[0]]


def _member_index(cluster: EtcdCluster, endpoint: Optional[str]) -> int:
    for i, member in enumerate(cluster.members):
        if member.endpoint == endpoint:
            return i
    raise AssertionError(f"{endpoint} is not a member of {cluster}")


class Writer(threading.Thread):
    """Keeps writing under ``prefix`` with etcdctl (puts, overwrites, deletes) until stopped or ``limit`` writes.

    A write that fails while a member is down is simply tried again on the next turn: whatever etcd
    actually applied is read back from etcd at the end, so the writer keeps no ground truth itself.
    """

    def __init__(self, cluster: EtcdCluster, prefix: bytes, limit: int) -> None:
        super().__init__(daemon=True)
        self.cluster, self.prefix, self.limit = cluster, prefix.decode(), limit
        self.stop_event = threading.Event()
        self.done = 0
        self.failures = 0

    def run(self) -> None:
        i = 0
        while not self.stop_event.is_set() and self.done < self.limit:
            if i % 7 == 6:
                args: Tuple[str, ...] = ("del", f"{self.prefix}w{i - 3:04d}")
            elif i % 5 == 4:
                args = ("put", f"{self.prefix}w{i - 2:04d}", f"overwritten-{i}")
            else:
                args = ("put", f"{self.prefix}w{i:04d}", f"value-{i}")
            try:
                self.cluster.etcdctl(*args, WRITE_TIMEOUT, timeout=20)
                self.done += 1
                i += 1
            except (EtcdctlError, subprocess.TimeoutExpired):
                self.failures += 1
                time.sleep(0.2)


async def _wait_for_writes(writer: Writer, count: int) -> None:
    deadline = time.monotonic() + 30
    while writer.done < count:
        assert time.monotonic() < deadline, f"the writer is stuck ({writer.done} writes, {writer.failures} failures)"
        await asyncio.sleep(0.05)


def _decode_kv(kv: Dict[str, Any]) -> Tuple[bytes, bytes, int]:
    return base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")), int(kv.get("mod_revision", 0))


async def test_list_stream_survives_member_crash(etcd_cluster: EtcdCluster, prefix: bytes) -> None:
    # 300 objects of 8-12 KB: about 60 pages of 64 KiB
    async with EtcdStore(etcd_cluster.endpoints, page_bytes=PAGE_BYTES, max_object_bytes=MAX_OBJECT) as loader:
        for i in range(300):
            await loader.put(prefix + b"obj-%04d" % i, (b"%04d:" % i) * (2000 + (i % 5) * 200))

    writer = Writer(etcd_cluster, prefix, limit=400)
    got: List[Tuple[bytes, bytes, int]] = []
    killed: Optional[int] = None
    endpoints = _leader_first(etcd_cluster)
    async with EtcdStore(endpoints, page_bytes=PAGE_BYTES, max_object_bytes=MAX_OBJECT) as store:
        listing = store.list_stream(prefix)

        async def consume() -> None:
            nonlocal killed
            async for kv in listing:
                got.append((kv.key, bytes(kv.value), kv.mod_revision))
                if len(got) == 1:
                    writer.start()  # writes go on from here; the list must not see them
                if len(got) == 100:
                    await _wait_for_writes(writer, 3)  # a slow consumer: writes land mid-stream
                    assert store.current_endpoint == endpoints[0]  # the leader serves the list until now
                    killed = _member_index(etcd_cluster, store.current_endpoint)
                    await asyncio.to_thread(etcd_cluster.kill, killed)
                if len(got) == 150:
                    await _wait_for_writes(writer, writer.done + 3)  # and keep landing after the crash

        try:
            await asyncio.wait_for(consume(), STREAM_TIMEOUT)
        finally:
            writer.stop_event.set()
            await asyncio.to_thread(writer.join, 60)
        assert killed is not None and listing.pages > 20
        assert store.current_endpoint != etcd_cluster.members[killed].endpoint  # it really moved
    assert listing.revision is not None

    await asyncio.to_thread(etcd_cluster.wait_healthy)
    expected = json.loads(
        etcd_cluster.etcdctl("get", "--prefix", prefix.decode(), f"--rev={listing.revision}", "-w", "json")
    )
    want = [_decode_kv(kv) for kv in expected.get("kvs", [])]
    keys = [k for k, _, _ in got]
    assert len(keys) == len(set(keys)), "a key was delivered twice"
    assert keys == sorted(keys)
    assert got == want
    # The writes began after the first page pinned the revision: none is in the list ...
    assert [k for k in keys] == [prefix + b"obj-%04d" % i for i in range(300)]
    # ... yet they happened, during the stream.
    assert writer.done > 0, "no write went on during the list"
    assert etcd_cluster.etcdctl("get", "--prefix", "--keys-only", prefix.decode() + "w").split()


def _etcdctl_history(cluster: EtcdCluster, prefix: bytes, start: int, last: int) -> List[Tuple[str, bytes, bytes, int]]:
    """Every event on ``prefix`` with revision in [start, last], as etcd's own history replay reports it."""
    alive = [m for m in cluster.members if m.running]
    command = alive[0].etcdctl_command(
        "watch", "--prefix", prefix.decode(), f"--rev={start}", "-w", "json", endpoints=[m.client_url for m in alive]
    )
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    events: List[Tuple[str, bytes, bytes, int]] = []
    timer = threading.Timer(60, proc.kill)  # bounded: etcdctl watch never ends by itself
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            for event in json.loads(line).get("Events") or []:
                key, value, revision = _decode_kv(event["kv"])
                events.append(("DELETE" if event.get("type") == 1 else "PUT", key, value, revision))
            if events and events[-1][3] >= last:
                break
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
    return events


async def test_watch_survives_member_crash(etcd_cluster: EtcdCluster, prefix: bytes) -> None:
    writer = Writer(etcd_cluster, prefix, limit=80)
    sentinel = prefix + b"zz-end"
    received: List[Tuple[str, bytes, bytes, int]] = []
    killed_endpoint: Optional[str] = None
    endpoints = _leader_first(etcd_cluster)
    async with EtcdStore(endpoints) as store:
        start = await store.current_revision() + 1
        watch = store.watch(prefix, start)
        await watch.start()
        writer.start()

        async def consume() -> None:
            nonlocal killed_endpoint
            async for event in watch:
                if event.type == "BOOKMARK":
                    continue
                kv = event.kv
                assert kv is not None
                kind = "DELETE" if event.type == "DELETED" else "PUT"
                value = b"" if kind == "DELETE" else bytes(kv.value)
                received.append((kind, kv.key, value, event.revision))
                if len(received) == 15:
                    killed_endpoint = watch.endpoint
                    assert killed_endpoint == endpoints[0]  # the leader serves the watch until now
                    await asyncio.to_thread(etcd_cluster.kill, _member_index(etcd_cluster, killed_endpoint))
                if kv.key == sentinel:
                    return

        async def finish_writes() -> None:
            # After the writer, one last write marks the end of the history we compare.
            await asyncio.to_thread(writer.join, STREAM_TIMEOUT)
            for _ in range(20):
                try:
                    await asyncio.to_thread(etcd_cluster.etcdctl, "put", sentinel.decode(), "end", "--command-timeout=3s")
                    return
                except EtcdctlError:
                    await asyncio.sleep(0.5)
            raise AssertionError("the sentinel write never succeeded")

        try:
            await asyncio.wait_for(asyncio.gather(consume(), finish_writes()), STREAM_TIMEOUT)
        finally:
            writer.stop_event.set()
            await asyncio.to_thread(writer.join, 60)
            await watch.aclose()
        assert killed_endpoint is not None
        assert watch.endpoint != killed_endpoint and watch.reconnects >= 1

    history = _etcdctl_history(etcd_cluster, prefix, start, received[-1][3])
    revisions = [r for _, _, _, r in received]
    assert len(revisions) == len(set(revisions)), "an event was delivered twice"
    assert revisions == sorted(revisions)
    assert received == history
    assert writer.done == 80 and len(received) > 60  # most writes make an event (a delete of a gone key does not)
