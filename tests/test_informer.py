"""The Python informer (streamcodec.informer) against real servers on a real etcd 3.5: our API server
(tests/apiserver_harness.py) and the real k8s.io/apiserver peer (tests/kube_apiserver_harness.py), in JSON,
Kubernetes protobuf and CBOR, by watch-list and by paged LIST, with a refused watch-list (the peer without its
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


#: The media types each --content-type is answered with, by our server and kube-apiserver: (list, watch)
WIRE = {"json": ("application/json", "application/json"),
        "protobuf": ("application/vnd.kubernetes.protobuf", "application/vnd.kubernetes.protobuf"),
        "cbor": ("application/cbor", "application/cbor-seq")}


def wire_types(content_type: str, watch_list: bool, *, watched: bool) -> Dict[str, str]:
    """``Reflector.media_types`` after a sync (by watch-list, or by LIST then, when ``watched``, a watch)."""
    listed, watch = WIRE[content_type]
    if watch_list:
        return {"watch": watch}
    return {"list": listed, "watch": watch} if watched else {"list": listed}


def synced_count(n: int) -> Callable[[List[InformerEvent]], bool]:
    return lambda evs: sum(e.type == "synced" for e in evs) >= n


def has(type_: str, key: str) -> Callable[[List[InformerEvent]], bool]:
    return lambda evs: any(e.type == type_ and e.key == key for e in evs)


# ----------------------------------------------------------------------------- our server
@pytest.mark.parametrize("content_type", ["json", "protobuf", "cbor"])
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
            assert ref.media_types == wire_types(content_type, watch_list != "off", watched=False), ref.media_types
            assert int(ref.resource_version) >= max(int(v[0]) for v in expected.values())
            # watch events' objects carry kind and apiVersion, a List's items none, in every format (as kube's)
            assert all(((o.get("kind"), o.get("apiVersion")) == ("Secret", "v1")) is (watch_list != "off")
                       and ("kind" in o) is (watch_list != "off") for o in ref.store.values())


@pytest.mark.parametrize("watch_list", ["on", "off"])
async def test_a_label_selector_keeps_the_store_to_the_selected_objects(etcd35: EtcdProcess, watch_list: str) -> None:
    """label_selector: only the selected objects are synced; one whose labels stop matching leaves the store
    (a DELETED from the server's watch filter), one whose labels start matching enters it."""
    root = new_root()
    with ServerThread(etcd35.endpoint, f"{root}/".encode()) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
            for i in range(6):
                r = await c.post(SECRETS, json={"metadata": {"name": f"l{i}", "labels": {"app": "web" if i < 3 else "db"}}})
                assert r.status_code == 201, r.text
            ref = Reflector(srv.url, SECRETS, label_selector="app=web", watch_list=watch_list, **FAST)
            run = Running(ref)
            await run.wait(synced_count(1), 30, "the sync")
            assert sorted(ref.store) == ["default/l0", "default/l1", "default/l2"]
            for name, app in (("l0", "db"), ("l4", "web")):
                obj = (await c.get(f"{SECRETS}/{name}")).json()
                obj["metadata"]["labels"] = {"app": app}
                assert (await c.put(f"{SECRETS}/{name}", json=obj)).status_code == 200
            await run.wait(has("added", "default/l4"), 20, "l4 entering the selection")
            await run.wait(has("deleted", "default/l0"), 20, "l0 leaving it")
            assert sorted(ref.store) == ["default/l1", "default/l2", "default/l4"]
            await run.stop()


@pytest.mark.parametrize("content_type", ["json", "protobuf", "cbor"])
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
        assert ref.media_types == wire_types(content_type, True, watched=True), ref.media_types

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


async def test_a_timeout_never_loses_a_cancellation() -> None:
    """A cancellation that arrives in the instant the awaited operation fails still cancels.

    ``asyncio.wait_for`` (Python < 3.12) raised the operation's error instead; a reflector took it for a
    failed connection and retried for ever, so ``run_until_synced(timeout)`` against a server whose TLS
    handshake fails at once hung in CI (in a local loop: 41 of 300 runs).
    """
    from streamcodec.informer.http import within

    for completes in (lambda fut: fut.set_exception(ConnectionResetError("reset by peer")), lambda fut: fut.set_result(b"x")):
        fut: "asyncio.Future[bytes]" = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(within(fut, 10))
        await asyncio.sleep(0)  # the task now waits on fut
        completes(fut)
        task.cancel()  # before the task has seen fut complete
        with pytest.raises(asyncio.CancelledError):
            await task
    slow: "asyncio.Future[bytes]" = asyncio.get_running_loop().create_future()
    with pytest.raises(asyncio.TimeoutError):
        await within(slow, 0.01)
    assert slow.cancelled()


async def test_run_until_synced_stops_at_its_timeout_when_every_connection_fails_at_once() -> None:
    """Connections refused in a tight loop (every TLS handshake reset): the timeout ends it, every time."""
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for i in range(40):
            ref = Reflector(f"https://127.0.0.1:{port}", SECRETS, watch_list="on", backoff=(0.0005, 0.001))
            async with asyncio.timeout(10):  # the test's own bound: a lost cancellation fails, never hangs
                with pytest.raises(asyncio.TimeoutError):
                    await ref.run_until_synced(0.01 + 0.001 * i)
            assert not ref.synced and ref.stats["retries"] >= 1, ref.stats
    finally:
        server.close()


@pytest.mark.parametrize("content_type", ["protobuf", "cbor"])
def test_cli_until_synced_prints_one_line(etcd35: EtcdProcess, content_type: str) -> None:
    root = new_root()
    with ServerThread(etcd35.endpoint, f"{root}/".encode()) as srv:
        asyncio.run(fill(srv.url, 5))
        expected = {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
        for mode, watch_list in (("auto", True), ("off", False)):
            proc = subprocess.run(
                [sys.executable, "-m", "streamcodec", "informer", srv.url, SECRETS, "--until-synced", f"--watch-list={mode}",
                 f"--content-type={content_type}", "--timeout=30"],
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
@pytest.mark.parametrize("content_type", ["json", "protobuf", "cbor"])
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
        assert ref.media_types == wire_types(content_type, watch_list == "on", watched=True), ref.media_types
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
        # compaction: changes while it is down and etcd compacted past the informer's resourceVersion; whatever
        # the restarted server's fresh watch cache answers (a re-sync NotOlderThan it, or 410 and a re-list from ""),
        # exactly the differences come
        kube.stop()
        with KubeAPIServer(kube_bin, etcd35.endpoint, prefix=root, max_seconds=120) as other:
            async with httpx.AsyncClient(base_url=other.url, timeout=30) as c:
                n, syncs = len(run.events), ref.stats["syncs"]
                await create(c, "after-compaction", b"y")
                await update(c, "s001", b"z")
                await delete(c, "while-down")
        etcd35.etcdctl("compact", str(etcd_revision(etcd35)))
        kube.start()
        await run.wait(synced_count(syncs + 1), 60, "the re-sync after the compaction")
        assert sorted(t for t in run.since(n) if t != ("synced", "")) == sorted(
            [("added", "default/after-compaction"), ("updated", "default/s001"), ("deleted", "default/while-down")])
        assert store_view(ref.store) == {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
        await run.stop()
    finally:
        kube.close()


@pytest.mark.clientgo
@pytest.mark.parametrize("content_type", ["json", "protobuf", "cbor"])
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


#: Accept headers of the readers' test: what the reflector sends (list, watch)
ACCEPT = {"json": ("application/json", "application/json"),
          "protobuf": ("application/vnd.kubernetes.protobuf", "application/vnd.kubernetes.protobuf;stream=watch"),
          "cbor": ("application/cbor", "application/cbor")}


def _real_bodies(url: str, content_type: str) -> Tuple[bytes, bytes]:
    """A LIST body and a watch-list stream (ending in its bookmark) of ``SECRETS`` from the server at ``url``."""
    accept_list, accept_watch = ACCEPT[content_type]
    list_type, watch_type = WIRE[content_type]
    with httpx.Client(base_url=url, timeout=30) as c:
        listed = c.get(SECRETS, headers={"Accept": accept_list})
        watched = c.get(SECRETS, params={"watch": "1", "sendInitialEvents": "true", "allowWatchBookmarks": "true",
                                         "resourceVersionMatch": "NotOlderThan", "timeoutSeconds": "1"},
                        headers={"Accept": accept_watch})
    assert listed.status_code == 200 and listed.headers["content-type"].split(";")[0] == list_type, listed.headers
    assert watched.status_code == 200 and watched.headers["content-type"].split(";")[0] == watch_type, watched.headers
    return listed.content, watched.content


def _readers(content_type: str) -> Tuple[Any, Any]:
    from streamcodec.informer import (
        CBORListReader, CBORWatchReader, JSONListReader, JSONWatchReader, ProtoListReader, ProtoWatchReader,
    )

    return {"json": (JSONListReader, JSONWatchReader), "protobuf": (ProtoListReader, ProtoWatchReader),
            "cbor": (CBORListReader, CBORWatchReader)}[content_type]


def _read_all(cls: Any, body: bytes, sizes: List[int]) -> Tuple[List[Any], Any]:
    reader = cls()
    out: List[Any] = []
    for piece in _pieces(body, sizes):
        out.extend(reader.feed(piece))
    out.extend(reader.close() or [])
    return out, reader


def _check_cut_anywhere(content_type: str, listed: bytes, watched: bytes, expected_names: set) -> Tuple[List[Any], List[Any]]:
    """The checks of the readers' tests (see :func:`test_readers_cut_real_bodies_anywhere`); returns the
    items and the events of the whole bodies."""
    from streamcodec.informer import DecodeFailed

    list_reader, watch_reader = _readers(content_type)
    whole_items, whole = _read_all(list_reader, listed, [len(listed)])
    assert {i["metadata"]["name"] for i in whole_items} == expected_names
    assert int(whole.metadata["resourceVersion"]) >= max(int(i["metadata"]["resourceVersion"]) for i in whole_items)
    whole_events, _ = _read_all(watch_reader, watched, [len(watched)])
    assert [t for t, _ in whole_events][-1] == "BOOKMARK"
    assert sum(t == "ADDED" for t, _ in whole_events) == len(expected_names)
    for sizes in ([1], [3, 7, 1], [4096], [17, 65536]):
        assert _read_all(list_reader, listed, sizes)[0] == whole_items, sizes
        assert _read_all(watch_reader, watched, sizes)[0] == whole_events, sizes
    with pytest.raises(DecodeFailed):
        _read_all(list_reader, listed[:-40], [1000])
    with pytest.raises(DecodeFailed):
        _read_all(watch_reader, watched[:-3], [1000])
    small = list_reader(max_object_bytes=1000)
    with pytest.raises(DecodeFailed):
        for piece in _pieces(listed, [512]):
            small.feed(piece)
        small.close()
    return whole_items, whole_events


@pytest.mark.parametrize("content_type", ["json", "protobuf", "cbor"])
def test_readers_cut_real_bodies_anywhere(etcd35: EtcdProcess, content_type: str) -> None:
    """A LIST body and a watch stream of our server, fed in pieces of every size from 1 byte up, decode to
    exactly what the whole body decodes to; a truncated body and an oversized object are errors.  The
    objects are those of the JSON body, whatever the format."""
    root = new_root()
    with ServerThread(etcd35.endpoint, f"{root}/".encode()) as srv:
        asyncio.run(fill(srv.url, 6, size=3000))
        listed, watched = _real_bodies(srv.url, content_type)
        json_listed, json_watched = _real_bodies(srv.url, "json")
    expected_names = {f"s{i:03d}" for i in range(6) if i % 3}
    items, events = _check_cut_anywhere(content_type, listed, watched, expected_names)
    json_items, json_events = _check_cut_anywhere("json", json_listed, json_watched, expected_names)
    if content_type == "cbor":  # the same objects (protobuf adds kind/apiVersion to list items)
        assert items == json_items and events == json_events


@pytest.mark.clientgo
def test_cbor_readers_cut_kube_apiserver_bodies_anywhere(kube_bin: str, etcd35: EtcdProcess) -> None:
    """The same on kube-apiserver's own CBOR (its CBORServingAndStorage gate on): field names and strings as
    byte strings, a definite-length items array, the List's entries in any order; the objects equal what
    its JSON gives."""
    root = new_root()
    with KubeAPIServer(kube_bin, etcd35.endpoint, prefix=root, max_seconds=120) as kube:
        assert kube.listening.get("featureGates", {}).get("CBORServingAndStorage") is True, kube.listening
        asyncio.run(fill(kube.url, 6, size=3000))
        listed, watched = _real_bodies(kube.url, "cbor")
        json_listed, json_watched = _real_bodies(kube.url, "json")
    assert b"\x4fresourceVersion" in listed  # a byte string: Kubernetes' FieldNameToByteString
    expected_names = {f"s{i:03d}" for i in range(6) if i % 3}
    items, events = _check_cut_anywhere("cbor", listed, watched, expected_names)
    json_items, json_events = _check_cut_anywhere("json", json_listed, json_watched, expected_names)
    assert items == json_items
    assert events == json_events


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


# ----------------------------------------------------------------------------- CBOR's objects are JSON's
def _canonical(store: Dict[str, Dict[str, Any]]) -> Dict[str, str]:
    """Each object as sorted-key JSON text: equal only when every value is, with its type (1 is not 1.0)."""
    return {k: json.dumps(o, sort_keys=True, ensure_ascii=False) for k, o in store.items()}


MIXED_SECRETS = [
    {"metadata": {"name": "binary", "labels": {"app": "x", "tier": "b-1"}, "annotations": {"note": "ünïcode ✓ \u2028 \"quoted\""}},
     "type": "Opaque", "data": {"all": b64(bytes(range(256)) * 3), "empty": "", "large": b64(os.urandom(70_000)),
                                "one": b64(b"\x00")}},
    {"metadata": {"name": "tls", "namespace": "default"}, "type": "kubernetes.io/tls",
     "data": {"tls.crt": b64(b"-----BEGIN CERTIFICATE-----\n" + os.urandom(900)), "tls.key": b64(os.urandom(32))}},
    {"metadata": {"name": "nodata"}, "type": "Opaque"},
]


async def _write_mixed(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        for obj in MIXED_SECRETS:
            r = await c.post(SECRETS, json=obj)
            assert r.status_code == 201, r.text[:300]
        for i in range(5):
            await create(c, f"plain{i}", os.urandom(i * 37))
        r = await c.put(f"{SECRETS}/plain1", json={**(await c.get(f"{SECRETS}/plain1")).json(), "data": {"k": b64(b"v2")}})
        assert r.status_code == 200, r.text[:300]


async def _stores_by_format(url: str, formats: List[str], watch_list: str) -> Dict[str, Dict[str, Dict[str, Any]]]:
    out: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for content_type in formats:
        ref = Reflector(url, SECRETS, content_type=content_type, watch_list=watch_list, page_size=3, **FAST)
        await ref.run_until_synced(30)
        assert ref.media_types == wire_types(content_type, watch_list == "on", watched=False), ref.media_types
        out[content_type] = ref.store
    return out


@pytest.mark.parametrize("watch_list", ["on", "off"])
async def test_cbor_store_equals_json_store_on_our_server(etcd35: EtcdProcess, watch_list: str) -> None:
    """Secrets with binary, empty and large ``data``, labels and annotations in Unicode, synced in CBOR
    (``[]byte`` as byte strings in tag 22) and in JSON (base64 text): the same store, object by object,
    with the same value types; and then the same live events."""
    root = new_root()
    with ServerThread(etcd35.endpoint, f"{root}/".encode()) as srv:
        await _write_mixed(srv.url)
        stores = await _stores_by_format(srv.url, ["json", "cbor"], watch_list)
        assert len(stores["json"]) == 8 and _canonical(stores["cbor"]) == _canonical(stores["json"])
        assert stores["cbor"]["default/binary"]["data"]["all"] == b64(bytes(range(256)) * 3)
        # live: each event's object is the one the JSON stream carries
        runs = {ct: Running(Reflector(srv.url, SECRETS, content_type=ct, watch_list=watch_list, **FAST)) for ct in ("json", "cbor")}
        try:
            for run in runs.values():
                await run.wait(synced_count(1), 30, "the sync")
            n = {ct: len(run.events) for ct, run in runs.items()}
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                await create(c, "live", bytes(range(200)))
                await update(c, "live", b"\xff\xfe changed")
                await delete(c, "binary")
            for run in runs.values():
                await run.wait(has("deleted", "default/binary"), 20, "the live changes")
            live = {ct: [(e.type, e.key, json.dumps(e.object, sort_keys=True)) for e in run.events[n[ct]:]] for ct, run in runs.items()}
            assert [t[:2] for t in live["cbor"]] == [("added", "default/live"), ("updated", "default/live"),
                                                      ("deleted", "default/binary")]
            assert live["cbor"] == live["json"]
            assert _canonical(runs["cbor"].reflector.store) == _canonical(runs["json"].reflector.store)
        finally:
            for run in runs.values():
                await run.stop()


@pytest.mark.clientgo
async def test_cbor_and_protobuf_stores_equal_the_json_store_on_kube_apiserver(kube_bin: str, etcd35: EtcdProcess) -> None:
    """The same on kube-apiserver, whose CBOR writes field names and strings as byte strings (and []byte in
    tag 22), and whose protobuf writes every non-pointer field whatever its value (``selfLink: ""``, a zero
    ``generation``, its managedFields' ``subresource: ""``, which its JSON leaves out): its CBOR, its
    protobuf and its JSON give one store, object by object, by watch-list and by LIST."""
    root = new_root()
    with KubeAPIServer(kube_bin, etcd35.endpoint, prefix=root, max_seconds=120) as kube:
        await _write_mixed(kube.url)
        for watch_list in ("on", "off"):
            stores = await _stores_by_format(kube.url, ["json", "cbor", "protobuf"], watch_list)
            assert len(stores["json"]) == 8 and _canonical(stores["cbor"]) == _canonical(stores["json"]), watch_list
            assert _canonical(stores["protobuf"]) == _canonical(stores["json"]), watch_list
            assert stores["cbor"]["default/binary"]["data"]["all"] == b64(bytes(range(256)) * 3)


@pytest.mark.clientgo
async def test_kube_apiserver_without_cbor_answers_json(kube_bin: str, etcd35: EtcdProcess) -> None:
    """Without its CBORServingAndStorage gate kube-apiserver answers the CBOR-first Accept with JSON: the
    informer reads the JSON it was answered with, by watch-list and by LIST then watch."""
    root = new_root()
    with KubeAPIServer(kube_bin, etcd35.endpoint, prefix=root, extra_args=["--cbor=off"], max_seconds=120) as kube:
        assert kube.listening.get("featureGates", {}).get("CBORServingAndStorage") is False, kube.listening
        await fill(kube.url, 9)
        expected = {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
        for watch_list in ("on", "off"):
            ref = Reflector(kube.url, SECRETS, content_type="cbor", watch_list=watch_list, page_size=4,
                            watch_timeout=(5, 5), **FAST)
            run = Running(ref)
            await run.wait(synced_count(1), 30, "the sync")
            assert store_view(ref.store) == expected
            async with httpx.AsyncClient(base_url=kube.url, timeout=30) as c:
                await create(c, f"live-{watch_list}", b"x")
            await run.wait(has("added", f"default/live-{watch_list}"), 20, "the create")
            expected = {k: v for k, v in etcd_secrets(etcd35, root).items() if k.startswith("default/")}
            assert store_view(ref.store) == expected
            assert ref.media_types == wire_types("json", watch_list == "on", watched=True), ref.media_types
            await run.stop()


def _kube_cbor(value: Any) -> bytes:
    """``value`` in CBOR as Kubernetes writes it: strings and map keys as byte strings, ``bytes`` as byte
    strings in tag 22, definite lengths, floats as doubles (a test's encoder, independent of the codec)."""
    import struct

    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes((major << 5 | n,))
        for ai, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
            if n < 1 << (8 * width):
                return bytes((major << 5 | ai,)) + n.to_bytes(width, "big")
        raise ValueError(n)

    if value is None:
        return b"\xf6"
    if value is True or value is False:
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, float):
        return b"\xfb" + struct.pack(">d", value)
    if isinstance(value, str):
        return head(2, len(value.encode())) + value.encode()
    if isinstance(value, bytes):
        return b"\xd6" + head(2, len(value)) + value
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(_kube_cbor(v) for v in value)
    return head(5, len(value)) + b"".join(_kube_cbor(k) + _kube_cbor(v) for k, v in value.items())


def _as_json(value: Any) -> Any:
    """What JSON carries for ``value``: ``bytes`` as base64 text."""
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    return value


_text_st = st.text(st.characters(codec="utf-8"), max_size=30)  # no lone surrogates
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | _text_st
    | st.binary(max_size=300),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text_st, inner, max_size=4), max_leaves=25)


@settings(max_examples=examples(200), deadline=None)
@given(objects=st.lists(st.dictionaries(_text_st, _values, max_size=5), min_size=0, max_size=5),
       kube_style=st.booleans(), items_first=st.booleans(), pieces=st.lists(st.integers(1, 700), min_size=1, max_size=5),
       cut=st.integers(1, 3))
def test_cbor_readers_cut_anywhere_give_json_objects(objects: List[Dict[str, Any]], kube_style: bool, items_first: bool,
                                                     pieces: List[int], cut: int) -> None:
    """CBOR list bodies and watch streams as Kubernetes writes them (byte strings, definite lengths, the
    List's entries in any order) or as our server does (the codec's encoder: text strings, ``[]byte`` in tag
    22, an indefinite items array), fed in pieces of any size, give the JSON objects; a body cut short is an
    error."""
    from streamcodec.informer import CBORListReader, CBORWatchReader, DecodeFailed

    objs = [{**o, "metadata": {"name": f"o{i}", "resourceVersion": str(i + 1)}} for i, o in enumerate(objects)]
    meta = {"resourceVersion": "99", "continue": "tok"}
    if kube_style:
        entries = [("kind", "SecretList"), ("apiVersion", "v1"), ("metadata", meta), ("items", objs)]
        if items_first:
            entries.reverse()
        body = b"\xd9\xd9\xf7" + _kube_cbor(dict(entries))
        # as kube-apiserver's: the object (a RawExtension's raw CBOR) carries its own self-described tag
        stream = b"".join(b"\xd9\xd9\xf7\xa2" + _kube_cbor("type") + _kube_cbor("ADDED") + _kube_cbor("object")
                          + b"\xd9\xd9\xf7" + _kube_cbor(o) for o in objs)
    else:
        enc = streamcodec.CBOREncoder(byte_string_tag=22)
        body = (b"\xd9\xd9\xf7\xa4" + enc.encode("kind")[3:] + enc.encode("SecretList")[3:] + enc.encode("apiVersion")[3:]
                + enc.encode("v1")[3:] + enc.encode("metadata")[3:] + enc.encode(meta)[3:] + enc.encode("items")[3:]
                + b"\x9f" + b"".join(enc.encode(o) for o in objs) + b"\xff")
        stream = b"".join(enc.encode_event("ADDED", o) for o in objs)
    expected = [_as_json(o) for o in objs]

    reader = CBORListReader()
    got = [i for piece in _pieces(body, pieces) for i in reader.feed(piece)] + reader.close()
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert reader.metadata == meta and reader.head["kind"] == "SecretList"
    watch = CBORWatchReader()
    events = [e for piece in _pieces(stream, pieces) for e in watch.feed(piece)]
    watch.close()
    assert json.dumps(events, sort_keys=True) == json.dumps([["ADDED", o] for o in expected], sort_keys=True)
    truncated = CBORListReader()
    with pytest.raises(DecodeFailed):
        for piece in _pieces(body[:-cut], pieces):
            truncated.feed(piece)
        truncated.close()
    if stream:
        cut_watch = CBORWatchReader()
        with pytest.raises(DecodeFailed):
            for piece in _pieces(stream[:-cut], pieces):
                cut_watch.feed(piece)
            cut_watch.close()


async def test_cbor_error_status_is_read(etcd35: EtcdProcess) -> None:
    """An error asked for in CBOR first comes as a CBOR Status: its reason and message reach the error."""
    root = new_root()
    with ServerThread(etcd35.endpoint, f"{root}/".encode()) as srv:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
            r = await c.get("/api/v2/secrets", headers={"Accept": "application/cbor, application/json"})
        assert r.status_code == 404 and r.headers["content-type"] == "application/cbor", r.headers
        for watch_list in ("on", "off"):
            ref = Reflector(srv.url, "/api/v2/secrets", content_type="cbor", watch_list=watch_list, **FAST)
            with pytest.raises(InformerError, match="HTTP 404 NotFound: 'the server could not find the requested resource'"):
                await ref.run_until_synced(30)
