"""The Python informer (streamcodec.informer) against real servers on a real etcd 3.5: our API server
(tests/apiserver_harness.py) and the real k8s.io/apiserver peer (tests/kube_apiserver_harness.py), in JSON
and Kubernetes protobuf, by watch-list and by paged LIST, with a refused watch-list (the peer without its
WatchList feature gate answers 422), a watch-list whose bookmark never comes, live changes, server
restarts and an etcd compaction.  Every store and every event is checked against what etcd holds."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamcodec
from streamcodec.informer import InformerError, InformerEvent, Reflector
from streamcodec.local_etcd import EtcdProcess
from tests.apiserver_harness import ServerThread, free_port
from tests.fuzz import examples
from tests.kube_apiserver_harness import KubeAPIServer, provision_kube_apiserver

pytestmark = [pytest.mark.etcd]

SECRETS = "/api/v1/namespaces/default/secrets"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {"backoff": (0.05, 0.5), "connect_timeout": 10.0}  # tests restart servers: retry quickly



@pytest.fixture(scope="session")
def kube_bin() -> str:
    return provision_kube_apiserver()


def new_root() -> str:
    return f"/registry/test-{uuid.uuid4().hex}"


# ----------------------------------------------------------------------------- what etcd holds
def etcd_secrets(etcd: EtcdProcess, root: str) -> Dict[str, Tuple[str, Dict[str, str]]]:
    """``namespace/name`` -> (mod revision, data as base64 text) of every Secret under ``root`` in etcd,
    decoded from our server's JSON or kube-apiserver's protobuf as stored."""
    doc = json.loads(etcd.etcdctl("get", "--prefix", f"{root}/secrets/", "-w", "json"))
    decoder = streamcodec.KubeProtoDecoder()
    out: Dict[str, Tuple[str, Dict[str, str]]] = {}
    for kv in doc.get("kvs") or []:
        key = base64.b64decode(kv["key"]).decode()
        value = base64.b64decode(kv["value"])
        obj = decoder.decode(value) if value.startswith(b"k8s\x00") else json.loads(value)
        out["/".join(key.split("/")[-2:])] = (str(kv["mod_revision"]), dict(obj.get("data") or {}))
    return out


def store_view(store: Dict[str, Dict[str, Any]]) -> Dict[str, Tuple[str, Dict[str, str]]]:
    return {k: (o["metadata"]["resourceVersion"], dict(o.get("data") or {})) for k, o in store.items()}


def etcd_revision(etcd: EtcdProcess) -> int:
    return int(json.loads(etcd.etcdctl("get", "/", "-w", "json"))["header"]["revision"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def create(c: httpx.AsyncClient, name: str, data: bytes, namespace: str = "default") -> Dict[str, Any]:
    r = await c.post(f"/api/v1/namespaces/{namespace}/secrets", json={"metadata": {"name": name}, "data": {"k": b64(data)}})
    assert r.status_code == 201, r.text[:300]
    return dict(r.json())


async def update(c: httpx.AsyncClient, name: str, data: bytes) -> Dict[str, Any]:
    obj = (await c.get(f"{SECRETS}/{name}")).json()
    obj["data"] = {"k": b64(data)}
    r = await c.put(f"{SECRETS}/{name}", json=obj)
    assert r.status_code == 200, r.text[:300]
    return dict(r.json())


async def delete(c: httpx.AsyncClient, name: str) -> None:
    r = await c.delete(f"{SECRETS}/{name}")
    assert r.status_code == 200, r.text[:300]


async def fill(url: str, count: int, size: int = 300) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        for i in range(count):
            await create(c, f"s{i:03d}", f"value-{i}-".encode() * (size // 8), "default" if i % 3 else "other")


class Running:
    """A reflector's events() consumed in a task; ``wait(predicate)`` for what the test expects."""

    def __init__(self, reflector: Reflector) -> None:
        self.reflector = reflector
        self.events: List[InformerEvent] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for ev in self.reflector.events():
            self.events.append(ev)
            self._changed.set()

    async def wait(self, predicate: Callable[[List[InformerEvent]], bool], timeout: float, what: str) -> None:
        async def until() -> None:
            while not predicate(self.events):
                if self.task.done():
                    self.task.result()
                    raise AssertionError(f"events() ended before {what}")
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"not within {timeout} s: {what}; events {[(e.type, e.key) for e in self.events][-8:]}, "
                                 f"stats {self.reflector.stats}") from None

    def since(self, n: int) -> List[Tuple[str, str]]:
        return [(e.type, e.key) for e in self.events[n:]]

    async def stop(self) -> None:
        self.reflector.close()
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


def synced_count(n: int) -> Callable[[List[InformerEvent]], bool]:
    return lambda evs: sum(e.type == "synced" for e in evs) >= n


def has(type_: str, key: str) -> Callable[[List[InformerEvent]], bool]:
    return lambda evs: any(e.type == type_ and e.key == key for e in evs)


# ----------------------------------------------------------------------------- our server
@pytest.mark.parametrize("content_type", ["json", "protobuf"])
@pytest.mark.parametrize("watch_list", ["auto", "on", "off"])
async def test_syncs_from_our_server(etcd35: EtcdProcess, content_type: str, watch_list: str) -> None:
    root = new_root()
    with ServerThread(etcd35.endpoint, f"{root}/".encode()) as srv:
        await fill(srv.url, 25)
        for path, keys in ((SECRETS, lambda k: k.startswith("default/")), ("/api/v1/secrets", lambda k: True)):
            ref = Reflector(srv.url, path, content_type=content_type, watch_list=watch_list, page_size=7, **FAST)
            events = await ref.run_until_synced(30)
            expected = {k: v for k, v in etcd_secrets(etcd35, root).items() if keys(k)}
            assert len(expected) in (16, 25)
            assert store_view(ref.store) == expected
            assert sorted((e.type, e.key) for e in events) == sorted(("added", k) for k in expected)
            assert ref.used_watch_list is (watch_list != "off")
            assert ref.stats["list"] == (0 if watch_list != "off" else -(-len(expected) // 7)), ref.stats
            wire = "application/vnd.kubernetes.protobuf" if content_type == "protobuf" else "application/json"
            assert set(ref.media_types.values()) == {wire}, ref.media_types
            assert int(ref.resource_version) >= max(int(v[0]) for v in expected.values())
            if content_type == "protobuf":
                assert all(o["kind"] == "Secret" and o["apiVersion"] == "v1" for o in ref.store.values())


@pytest.mark.parametrize("content_type", ["json", "protobuf"])
async def test_live_changes_restart_and_compaction_on_our_server(etcd35: EtcdProcess, content_type: str) -> None:
    """After the sync, a create/update/delete each come exactly once, in order, as etcd holds them; a server
    restart is a re-watch from the last resourceVersion (no re-list); changes made while the watch was down
    with etcd compacted past it are a 410 and a re-list from "" that delivers exactly the differences."""
    root = new_root()
    port = free_port()
    srv = ServerThread(etcd35.endpoint, f"{root}/".encode(), port=port).__enter__()
    helper: Optional[ServerThread] = None
    try:
        await fill(srv.url, 6)
        ref = Reflector(srv.url, SECRETS, content_type=content_type, watch_timeout=(2, 3), transform=_strip_managed, **FAST)
        run = Running(ref)
        await run.wait(synced_count(1), 30, "the sync")
        assert store_view(ref.store) == {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
            n = len(run.events)
            created = await create(c, "live", b"new")
            await run.wait(has("added", "default/live"), 20, "the create")
            updated = await update(c, "live", b"changed")
            await run.wait(has("updated", "default/live"), 20, "the update")
            await delete(c, "s001")
            await run.wait(has("deleted", "default/s001"), 20, "the delete")
            await asyncio.sleep(3.5)  # past a watch's end (timeoutSeconds 2-3): a re-watch repeats nothing
            assert run.since(n) == [("added", "default/live"), ("updated", "default/live"), ("deleted", "default/s001")]
            added, upd = run.events[n].object, run.events[n + 1].object
            assert added is not None and upd is not None
            assert added["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
            assert upd["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
            assert upd["data"] == {"k": b64(b"changed")} and "managedFields" not in upd["metadata"]
            assert store_view(ref.store) == {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
        assert ref.stats["watch"] >= 1 and ref.stats["list"] == 0

        # restart: changes while it is down come through the re-watch from the last resourceVersion
        srv.__exit__(None, None, None)
        helper = ServerThread(etcd35.endpoint, f"{root}/".encode()).__enter__()
        async with httpx.AsyncClient(base_url=helper.url, timeout=30) as c:
            n = len(run.events)
            await create(c, "while-down", b"x")
            await delete(c, "live")
        srv = ServerThread(etcd35.endpoint, f"{root}/".encode(), port=port).__enter__()
        await run.wait(has("deleted", "default/live"), 30, "the changes made while the server was down")
        assert run.since(n) == [("added", "default/while-down"), ("deleted", "default/live")]
        assert ref.stats["gone"] == 0 and ref.stats["syncs"] == 1, ref.stats
        assert store_view(ref.store) == {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}

        # compaction: the re-watch's resourceVersion is gone: 410, re-list, exactly the differences
        srv.__exit__(None, None, None)
        async with httpx.AsyncClient(base_url=helper.url, timeout=30) as c:
            n = len(run.events)
            await create(c, "after-compaction", b"y")
            await update(c, "s002", b"z")
            await delete(c, "while-down")
        etcd35.etcdctl("compact", str(etcd_revision(etcd35)))
        srv = ServerThread(etcd35.endpoint, f"{root}/".encode(), port=port).__enter__()
        await run.wait(synced_count(2), 30, "the re-list after 410 Gone")
        assert ref.stats["gone"] == 1 and ref.stats["syncs"] == 2, ref.stats
        assert sorted(run.since(n)) == sorted([("added", "default/after-compaction"), ("updated", "default/s002"),
                                               ("deleted", "default/while-down"), ("synced", "")])
        assert store_view(ref.store) == {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
        await run.stop()
    finally:
        srv.__exit__(None, None, None)
        if helper is not None:
            helper.__exit__(None, None, None)


def _strip_managed(obj: Dict[str, Any]) -> Dict[str, Any]:
    (obj.get("metadata") or {}).pop("managedFields", None)
    return obj


async def _hanging_watch_list_proxy(target_port: int) -> Tuple[asyncio.AbstractServer, int, List[str]]:
    """A loopback proxy to our server that answers every watch-list (sendInitialEvents) with a stream that
    never sends its bookmark, and passes every other request through: the bookmark-timeout fallback."""
    seen: List[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head.split(b" ")[1].decode())
            if b"sendInitialEvents=true" in head.split(b"\r\n")[0]:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(30)
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
            up_writer.write(head)
            await up_writer.drain()
            while True:
                piece = await up_reader.read(65536)
                if not piece:
                    break
                writer.write(piece)
                await writer.drain()
            up_writer.close()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def test_falls_back_to_list_when_the_bookmark_does_not_come(etcd35: EtcdProcess) -> None:
    root = new_root()
    with ServerThread(etcd35.endpoint, f"{root}/".encode()) as srv:
        await fill(srv.url, 9)
        proxy, port, seen = await _hanging_watch_list_proxy(srv.port)
        try:
            ref = Reflector(f"http://127.0.0.1:{port}", SECRETS, bookmark_timeout=1.0, page_size=4, **FAST)
            await ref.run_until_synced(20)
        finally:
            proxy.close()
        assert ref.used_watch_list is False and ref.stats["watch_list_fallbacks"] == 1, ref.stats
        assert ref.stats["list"] == 2, ref.stats  # 6 Secrets in "default", 4 a page
        assert "sendInitialEvents=true" in seen[0] and all("limit=4" in s for s in seen[1:]), seen
        assert store_view(ref.store) == {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}


def test_cli_until_synced_prints_one_line(etcd35: EtcdProcess) -> None:
    root = new_root()
    with ServerThread(etcd35.endpoint, f"{root}/".encode()) as srv:
        asyncio.run(fill(srv.url, 5))
        expected = {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
        for mode, watch_list in (("auto", True), ("off", False)):
            proc = subprocess.run(
                [sys.executable, "-m", "streamcodec", "informer", srv.url, SECRETS, "--until-synced", f"--watch-list={mode}",
                 "--content-type=protobuf", "--timeout=30"],
                capture_output=True, text=True, timeout=60, cwd=ROOT,
            )
            assert proc.returncode == 0, proc.stderr
            lines = proc.stdout.splitlines()
            assert len(lines) == 1, proc.stdout
            line = json.loads(lines[0])
            assert set(line) == {"synced", "objects", "watch_list", "resource_version", "seconds"}, line
            assert line["synced"] is True and line["objects"] == len(expected) == 3 and line["watch_list"] is watch_list
            assert int(line["resource_version"]) >= max(int(v[0]) for v in expected.values())
            assert 0 < line["seconds"] < 30
        # events as lines, then the summary; a bad server URL is an error, not a traceback
        proc = subprocess.run([sys.executable, "-m", "streamcodec", "informer", "ftp://x", SECRETS],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 1 and "http://" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- the real k8s.io/apiserver
@pytest.mark.clientgo
@pytest.mark.parametrize("content_type", ["json", "protobuf"])
@pytest.mark.parametrize("watch_list", ["on", "off"])
async def test_syncs_from_kube_apiserver_and_follows_it(kube_bin: str, etcd35: EtcdProcess, content_type: str, watch_list: str) -> None:
    root = new_root()
    port = free_port()
    kube = KubeAPIServer(kube_bin, etcd35.endpoint, prefix=root, port=port, max_seconds=300).start()
    try:
        await fill(kube.url, 12)
        ref = Reflector(kube.url, SECRETS, content_type=content_type, watch_list=watch_list, page_size=3,
                        watch_timeout=(5, 5), **FAST)
        run = Running(ref)
        await run.wait(synced_count(1), 30, "the sync")
        expected = {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
        assert len(expected) == 8 and store_view(ref.store) == expected
        assert ref.used_watch_list is (watch_list == "on")
        assert ref.stats["list"] == (0 if watch_list == "on" else 3), ref.stats
        wire = "application/vnd.kubernetes.protobuf" if content_type == "protobuf" else "application/json"
        assert set(ref.media_types.values()) == {wire}, ref.media_types
        async with httpx.AsyncClient(base_url=kube.url, timeout=30) as c:
            n = len(run.events)
            created = await create(c, "live", b"new")
            await run.wait(has("added", "default/live"), 20, "the create")
            updated = await update(c, "s001", b"changed")
            await run.wait(has("updated", "default/s001"), 20, "the update")
            await delete(c, "s002")
            await run.wait(has("deleted", "default/s002"), 20, "the delete")
            assert run.since(n) == [("added", "default/live"), ("updated", "default/s001"), ("deleted", "default/s002")]
            live, upd = run.events[n].object, run.events[n + 1].object
            assert live is not None and upd is not None
            assert live["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
            assert upd["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
            assert store_view(ref.store) == {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
        # a restart of the server, with a change while it is down (written by a second server)
        kube.stop()
        with KubeAPIServer(kube_bin, etcd35.endpoint, prefix=root, max_seconds=120) as other:
            async with httpx.AsyncClient(base_url=other.url, timeout=30) as c:
                n = len(run.events)
                await create(c, "while-down", b"x")
        kube.start()
        await run.wait(has("added", "default/while-down"), 40, "the change made while the server was down")
        assert [t for t in run.since(n) if t != ("synced", "")] == [("added", "default/while-down")]
        assert store_view(ref.store) == {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
        await run.stop()
    finally:
        kube.close()


@pytest.mark.clientgo
@pytest.mark.parametrize("content_type", ["json", "protobuf"])
async def test_kube_apiserver_refusing_watch_list(kube_bin: str, etcd35: EtcdProcess, content_type: str) -> None:
    """Without its WatchList feature gate kube-apiserver answers sendInitialEvents with 422: ``auto`` falls
    back to a paged LIST (and does not ask again), ``on`` fails."""
    root = new_root()
    with KubeAPIServer(kube_bin, etcd35.endpoint, prefix=root, extra_args=["--feature-gates=WatchList=false"],
                       max_seconds=120) as kube:
        assert kube.listening.get("featureGates", {}).get("WatchList") is False, kube.listening
        await fill(kube.url, 10)
        ref = Reflector(kube.url, "/api/v1/secrets", content_type=content_type, page_size=4, **FAST)
        await ref.run_until_synced(30)
        assert ref.used_watch_list is False and ref.stats["watch_list_fallbacks"] == 1 and ref.stats["list"] == 3, ref.stats
        assert store_view(ref.store) == etcd_secrets(etcd35, root)
        on = Reflector(kube.url, "/api/v1/secrets", content_type=content_type, watch_list="on", **FAST)
        with pytest.raises(InformerError, match="422"):
            await on.run_until_synced(30)


# ----------------------------------------------------------------------------- the readers, on real bodies
def _pieces(body: bytes, sizes: List[int]) -> Iterator[bytes]:
    i = k = 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        yield body[i:i + n]
        i, k = i + n, k + 1


@pytest.mark.parametrize("content_type", ["json", "protobuf"])
def test_readers_cut_real_bodies_anywhere(etcd35: EtcdProcess, content_type: str) -> None:
    """A LIST body and a watch stream of our server, fed in pieces of every size from 1 byte up, decode to
    exactly what the whole body decodes to; a truncated body and an oversized object are errors."""
    from streamcodec.informer import DecodeFailed, JSONListReader, JSONWatchReader, ProtoListReader, ProtoWatchReader

    root = new_root()
    accept = "application/vnd.kubernetes.protobuf" if content_type == "protobuf" else "application/json"
    with ServerThread(etcd35.endpoint, f"{root}/".encode()) as srv:
        asyncio.run(fill(srv.url, 6, size=3000))
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            listed = c.get(SECRETS, headers={"Accept": accept})
            watched = c.get(SECRETS, params={"watch": "1", "sendInitialEvents": "true", "allowWatchBookmarks": "true",
                                             "resourceVersionMatch": "NotOlderThan", "timeoutSeconds": "1"},
                            headers={"Accept": accept + (";stream=watch" if content_type == "protobuf" else "")})
        assert listed.headers["content-type"].split(";")[0] == accept and watched.status_code == 200
    list_reader: Any = ProtoListReader if content_type == "protobuf" else JSONListReader
    watch_reader: Any = ProtoWatchReader if content_type == "protobuf" else JSONWatchReader
    expected_names = {f"s{i:03d}" for i in range(6) if i % 3}

    def read_all(cls: Any, body: bytes, sizes: List[int]) -> Tuple[List[Any], Any]:
        reader = cls()
        out: List[Any] = []
        for piece in _pieces(body, sizes):
            out.extend(reader.feed(piece))
        out.extend(reader.close() or [])
        return out, reader

    whole_items, whole = read_all(list_reader, listed.content, [len(listed.content)])
    assert {i["metadata"]["name"] for i in whole_items} == expected_names
    assert int(whole.metadata["resourceVersion"]) >= max(int(i["metadata"]["resourceVersion"]) for i in whole_items)
    whole_events, _ = read_all(watch_reader, watched.content, [len(watched.content)])
    assert [t for t, _ in whole_events][-1] == "BOOKMARK" and sum(t == "ADDED" for t, _ in whole_events) == 4
    for sizes in ([1], [3, 7, 1], [4096], [17, 65536]):
        assert read_all(list_reader, listed.content, sizes)[0] == whole_items, sizes
        assert read_all(watch_reader, watched.content, sizes)[0] == whole_events, sizes
    with pytest.raises(DecodeFailed):
        read_all(list_reader, listed.content[:-40], [1000])
    with pytest.raises(DecodeFailed):
        read_all(watch_reader, watched.content[:-3], [1000])
    small = list_reader(max_object_bytes=1000)
    with pytest.raises(DecodeFailed):
        for piece in _pieces(listed.content, [512]):
            small.feed(piece)
        small.close()



@settings(max_examples=examples(200), deadline=None)
@given(sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=6), enveloped=st.lists(st.booleans(), min_size=6, max_size=6),
       pieces=st.lists(st.integers(1, 7000), min_size=1, max_size=5), cut=st.integers(1, 3))
def test_protobuf_watch_frames_cut_anywhere_decode_as_whole(sizes: List[int], enveloped: List[bool], pieces: List[int],
                                                            cut: int) -> None:
    """A protobuf watch stream of frames large and small, bare WatchEvents or in the ``k8s\\x00`` envelope
    kube-apiserver writes, fed in pieces of any size: the events of the whole stream, each object decoded
    where it lies or from the reader's reused buffer; a stream cut inside a frame is an error at close."""
    from streamcodec import _kubeproto_py as kp
    from streamcodec.informer import DecodeFailed, ProtoWatchReader

    encoder = kp.KubeProtoEncoder()
    stream, expected = b"", []
    for i, size in enumerate(sizes):
        obj = {"metadata": {"name": f"s{i}", "resourceVersion": str(i + 1)},  # in the order decoding builds it
               "data": {"k": b64(bytes(range(256)) * (size // 256) + bytes(size % 256))}, "kind": "Secret", "apiVersion": "v1"}
        frame = encoder.encode_event("ADDED", obj)
        if enveloped[i]:
            event = frame[4:]
            unknown = kp.MAGIC + kp._len_field(1, kp._len_field(1, b"v1") + kp._len_field(2, b"WatchEvent")) \
                + kp._len_field(2, event) + kp.UNKNOWN_TAIL
            frame = len(unknown).to_bytes(4, "big") + unknown
        stream += frame
        expected.append(("ADDED", obj))
    reader = ProtoWatchReader()
    got = [e for piece in _pieces(stream, pieces) for e in reader.feed(piece)]
    reader.close()
    assert repr(got) == repr(expected)
    truncated = ProtoWatchReader()
    for piece in _pieces(stream[:-cut], pieces):
        truncated.feed(piece)
    with pytest.raises(DecodeFailed):
        truncated.close()

async def test_backs_off_on_429_as_retry_after_says(etcd35: EtcdProcess) -> None:
    """With its one bulk-stream slot held by a client that reads nothing, our server answers 429 with
    Retry-After: 1; the reflector waits that long (not its 0.05 s backoff) and syncs once the slot frees."""
    root = new_root()
    with ServerThread(etcd35.endpoint, f"{root}/".encode(), max_streams=1, queue_wait=0.1, stall_timeout=20) as srv:
        await fill(srv.url, 60, size=200_000)
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(f"GET {SECRETS} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n".encode())
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the holder's LIST has started; it reads no further
        ref = Reflector(srv.url, SECRETS, watch_list="off", page_size=0, **FAST)
        task = asyncio.create_task(ref.run_until_synced(30))
        await asyncio.sleep(2.5)
        retries_while_held = ref.stats["retries"]
        writer.close()
        await task
        assert 1 <= retries_while_held <= 4, ref.stats  # Retry-After: 1 s; the backoff alone would be ~8 tries
        assert store_view(ref.store) == {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
