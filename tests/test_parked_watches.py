"""Parked watches (streamcodec/server/parked_watch.py): a live watch's connection is handed over from
uvicorn's request cycle to a callback-driven protocol.  What a client sees must not change: every
event, in order; the end at its timeout; a slow client reset; a client that goes freed; the server's
shutdown ending the body properly.  Real uvicorn (the App's own protocol) and etcd; raw sockets as
clients, so that what goes on the wire is what is checked.  The 10,000-watch memory promise of the
fleet issue is the heavy case at the end (``streamcodec serve`` at its defaults)."""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import ssl
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from streamcodec.local_etcd import EtcdProcess
from tests.apiserver_harness import ServerThread, free_port, open_idle_watches, proc_status_bytes, wait_until_serving

NS = "/api/v1/namespaces/default/secrets"


class RawWatch:
    """A watch over a raw socket: the response head, then its chunks parsed by hand."""

    def __init__(self, port: int, query: str, *, rcvbuf: Optional[int] = None, accept: str = "application/json") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.sendall(f"GET {NS}?{query} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n".encode())
        self.data = b""
        while b"\r\n\r\n" not in self.data:
            self._recv()
        head, self.data = self.data.split(b"\r\n\r\n", 1)
        self.status = int(head.split(b" ")[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])}
        self.ended = False  #: the terminating chunk came
        self.lines: List[bytes] = []
        self._body = b""
        self.body = b""  #: every chunk's data so far

    def _recv(self) -> bool:
        chunk = self.sock.recv(65536)
        self.data += chunk
        return bool(chunk)

    def _parse(self) -> None:
        while not self.ended:
            size_line, sep, rest = self.data.partition(b"\r\n")
            if not sep:
                return
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            assert rest[size : size + 2] == b"\r\n", "a chunk must end with CRLF"
            self.data = rest[size + 2 :]
            if size == 0:
                self.ended = True
                return
            self._body += rest[:size]
            self.body += rest[:size]
            *complete, self._body = self._body.split(b"\n")
            self.lines += [line for line in complete if line]

    def body_until(self, done: Any, timeout: float = 10.0) -> bytes:
        """The whole body read so far, once ``done(body)`` (for formats that are not lines of JSON)."""
        deadline = time.monotonic() + timeout
        self._parse()
        while not done(self.body):
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            assert time.monotonic() < deadline and not self.ended, "the body did not come"
            assert self._recv(), "the server closed the connection"
            self._parse()
        return self.body

    def events(self, count: int, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """The next ``count`` events (fails after ``timeout``)."""
        deadline = time.monotonic() + timeout
        self._parse()
        while len(self.lines) < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            assert not self.ended, "the watch ended"
            assert time.monotonic() < deadline, f"{len(self.lines)} of {count} events in {timeout} s"
            assert self._recv(), "the server closed the connection"
            self._parse()
        taken, self.lines = self.lines[:count], self.lines[count:]
        return [json.loads(line) for line in taken]

    def until_closed(self, timeout: float = 10.0) -> bytes:
        """Read until the server closes; what came after the events already read."""
        self.sock.settimeout(timeout)
        while self._recv():
            pass
        self._parse()
        return self.data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(etcd: Any, prefix: bytes) -> Iterator[ServerThread]:
    with ServerThread(etcd.endpoint, prefix, slow_watcher_timeout=1.0) as srv:
        yield srv


def write(srv: ServerThread, name: str, data: str = "QQ==") -> str:
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        response = c.post(NS, json={"metadata": {"name": name}, "data": {"k": data}})
        assert response.status_code == 201, response.text
        return str(response.json()["metadata"]["resourceVersion"])


def parked_count(srv: ServerThread) -> int:
    return sum(1 for response in list(srv.app._responses) if response.parked is not None)


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_idle_watches_keep_no_task_and_each_gets_every_event_in_order(server: ServerThread) -> None:
    rv = write(server, "first")
    tasks_before = server.server_tasks()
    watches = [RawWatch(server.port, f"watch=1&resourceVersion={rv}") for _ in range(40)]
    try:
        wait_for(lambda: parked_count(server) == 40)
        assert server.server_tasks() <= tasks_before + 2, "an idle watch must not keep a task"
        assert all(w.status == 200 and w.headers[b"connection"] == b"close" for w in watches)
        from streamcodec.server.parked_watch import _last_chunks

        hits = _last_chunks.hits
        names = [f"s{i}" for i in range(5)]
        for name in names:
            write(server, name)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.delete(f"{NS}/s0").status_code == 200
        for w in watches:
            events = w.events(6)
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == (
                [("ADDED", name) for name in names] + [("DELETED", "s0")]
            )
            revisions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
            assert revisions == sorted(revisions) and len(set(revisions)) == 6
        assert _last_chunks.hits - hits == 6 * 39, "each event is encoded once for the 40 alike watchers"
    finally:
        for w in watches:
            w.close()
    wait_for(lambda: server.app.stats()["active_streams"] == 0)
    assert server.app.stats()["outcomes"].get("disconnected", 0) >= 40


def test_watchers_in_other_formats_or_with_selectors_get_their_own_bytes(server: ServerThread) -> None:
    """Alike watchers share one encoding of each event (parked_watch._LastChunks); the others must
    still get theirs: CBOR and MessagePack, and a label selector (which drops and retypes events)."""
    import cbor2
    import msgpack

    plain = [RawWatch(server.port, "watch=1") for _ in range(3)]
    labelled = [RawWatch(server.port, "watch=1&labelSelector=team%3Da") for _ in range(3)]
    as_cbor = [RawWatch(server.port, "watch=1", accept="application/cbor-seq") for _ in range(3)]
    as_msgpack = [RawWatch(server.port, "watch=1", accept="application/vnd.msgpack") for _ in range(3)]
    everyone = plain + labelled + as_cbor + as_msgpack
    try:
        wait_for(lambda: parked_count(server) == len(everyone))
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for i in range(4):
                labels = {"team": "a"} if i % 2 == 0 else {}
                assert c.post(NS, json={"metadata": {"name": f"m{i}", "labels": labels}}).status_code == 201
        for w in plain:
            assert [e["object"]["metadata"]["name"] for e in w.events(4)] == ["m0", "m1", "m2", "m3"]
        for w in labelled:
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in w.events(2)] == [("ADDED", "m0"), ("ADDED", "m2")]
        for w in as_cbor:
            body = w.body_until(lambda b: b.count(b"m3") >= 1)
            decoded = list(_cbor_items(cbor2, body))
            assert [e["object"]["metadata"]["name"] for e in decoded] == ["m0", "m1", "m2", "m3"]
        for w in as_msgpack:
            body = w.body_until(lambda b: b.count(b"m3") >= 1)
            decoded = list(_msgpack_items(msgpack, body))
            assert [e["object"]["metadata"]["name"] for e in decoded] == ["m0", "m1", "m2", "m3"]
    finally:
        for w in everyone:
            w.close()


def _cbor_items(cbor2: Any, body: bytes) -> Iterator[Any]:
    import io

    stream = io.BytesIO(body)
    while stream.tell() < len(body):
        item = cbor2.CBORDecoder(stream).decode()
        yield item.value if isinstance(item, cbor2.CBORTag) and item.tag == 55799 else item


def _msgpack_items(msgpack: Any, body: bytes) -> Iterator[Any]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(body)
    yield from unpacker


def test_a_parked_watch_ends_at_its_timeout_with_the_last_chunk_then_closes(server: ServerThread) -> None:
    watch = RawWatch(server.port, "watch=1&timeoutSeconds=1&allowWatchBookmarks=true")
    try:
        wait_for(lambda: parked_count(server) == 1)
        started = time.monotonic()
        rest = watch.until_closed(timeout=10)
        assert watch.ended and rest == b"", "the body must end with its terminating chunk, and nothing after it"
        assert 0.5 < time.monotonic() - started < 5
    finally:
        watch.close()
    wait_for(lambda: server.app.stats()["active_streams"] == 0)
    assert server.app.stats()["outcomes"].get("complete", 0) >= 1


def test_a_watch_list_parks_after_its_bookmark_and_gets_later_changes(server: ServerThread) -> None:
    write(server, "existing")
    watch = RawWatch(server.port, "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
    try:
        added, bookmark = watch.events(2)
        assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "existing")
        assert bookmark["type"] == "BOOKMARK"
        assert bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
        wait_for(lambda: parked_count(server) == 1)
        write(server, "later")
        event = watch.events(1)[0]
        while event["type"] == "BOOKMARK":  # the progress bookmark the watch-list asked etcd for
            event = watch.events(1)[0]
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "later")
        assert int(event["object"]["metadata"]["resourceVersion"]) > int(bookmark["object"]["metadata"]["resourceVersion"])
    finally:
        watch.close()


def test_a_parked_watch_that_reads_nothing_is_reset_and_delays_no_other(server: ServerThread) -> None:
    slow = RawWatch(server.port, "watch=1", rcvbuf=4096)
    probe = RawWatch(server.port, "watch=1")
    try:
        wait_for(lambda: parked_count(server) == 2)
        payload = "QUFB" * (600 * 1024 // 4)
        late: List[float] = []
        for i in range(30):  # ~24 MB of events (base64 twice): far past what the kernel's socket buffers and the transport hold
            t0 = time.monotonic()
            write(server, f"big{i}", payload)
            assert probe.events(1)[0]["object"]["metadata"]["name"] == f"big{i}"
            late.append(time.monotonic() - t0)
        assert max(late) < 2.0, f"the probe waited {max(late):.2f} s for an event"
        wait_for(lambda: server.app.stats()["outcomes"].get("stalled", 0) == 1, timeout=15)
        slow.sock.settimeout(10)
        with pytest.raises(ConnectionResetError):  # SO_LINGER 0: reset, not a slow close
            while slow._recv():
                pass
    finally:
        slow.close()
        probe.close()
    wait_for(lambda: server.app.stats()["active_streams"] == 0)


def test_clients_that_go_free_their_parked_watches_and_the_shared_etcd_watch(server: ServerThread) -> None:
    watches = [RawWatch(server.port, "watch=1") for _ in range(20)]
    wait_for(lambda: parked_count(server) == 20)
    hub = server.app._store._hub  # type: ignore[union-attr]
    assert hub is not None and hub.upstream_count() == 1
    for w in watches:
        w.close()
    wait_for(lambda: server.app.stats()["active_streams"] == 0 and parked_count(server) == 0)
    wait_for(lambda: hub.upstream_count() == 0)


def test_a_server_shutting_down_ends_its_parked_watches_cleanly(etcd: Any, prefix: bytes) -> None:
    srv = ServerThread(etcd.endpoint, prefix).__enter__()
    try:
        watch = RawWatch(srv.port, "watch=1")
        wait_for(lambda: parked_count(srv) == 1)
    finally:
        srv.__exit__(None, None, None)
    try:
        watch.until_closed(timeout=10)
        assert watch.ended, "the body must end with its terminating chunk"
    finally:
        watch.close()


def test_a_watch_audited_stays_a_request_task(etcd: Any, prefix: bytes, tmp_path: Any) -> None:
    """An audit record is written when the request's task ends: an audited watch is not parked."""
    from streamcodec.server.audit import AuditLog

    with AuditLog(str(tmp_path / "audit.log")) as audit, ServerThread(etcd.endpoint, prefix, app_options={"audit": audit}) as srv:
        watch = RawWatch(srv.port, "watch=1")
        try:
            wait_for(lambda: srv.app.stats()["active_streams"] == 1)
            time.sleep(0.3)
            assert parked_count(srv) == 0
            write(srv, "audited")
            assert watch.events(1)[0]["object"]["metadata"]["name"] == "audited"
            assert b"connection" not in watch.headers
        finally:
            watch.close()


# -- 10,000 idle watches at the defaults ------------------------------------------------------

WATCHES = 10_000


@pytest.mark.heavy
def test_ten_thousand_idle_watches_cost_at_most_64_mib_and_a_write_reaches_all() -> None:
    """The fleet issue's promise, at ``streamcodec serve``'s defaults: 10,000 idle watches (from one
    resourceVersion, as clients re-watching after a list) grow the server's RSS by at most 64 MiB, and
    one write reaches every one of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WATCHES + 512
    if soft < wanted:
        assert hard == resource.RLIM_INFINITY or hard >= wanted, f"this test needs {wanted} open files (hard limit {hard})"
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    etcd = EtcdProcess("3.5").start()  # once: what is measured is the server's
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcodec", "serve", "--etcd", etcd.endpoint, "--listen", f"127.0.0.1:{port}",
         "--log-level", "warning"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    conns: List[socket.socket] = []
    try:
        wait_until_serving(port, proc)
        ns = f"/api/v1/namespaces/idle{port}/secrets"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            c.post("/api/v1/namespaces", json={"metadata": {"name": f"idle{port}"}})
            rv = c.post(ns, json={"metadata": {"name": "x"}}).json()["metadata"]["resourceVersion"]
            time.sleep(1)
            before = proc_status_bytes(proc.pid, "VmRSS")
            conns = open_idle_watches(port, f"GET {ns}?watch=1&resourceVersion={rv} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), WATCHES)
            time.sleep(2)
            grown = proc_status_bytes(proc.pid, "VmRSS") - before
            print(f"{WATCHES} idle watches grew the server's RSS by {grown / 2**20:.1f} MiB")
            assert grown <= 64 * 1024 * 1024, f"{WATCHES} idle watches grew the server by {grown / 2**20:.1f} MiB"
            assert c.post(ns, json={"metadata": {"name": "reaches-all"}}).status_code == 201
        marker = b'"reaches-all"'
        missing = {sock.fileno(): sock for sock in conns}
        tails: Dict[int, bytes] = {fd: b"" for fd in missing}
        deadline = time.monotonic() + 60
        with selectors.DefaultSelector() as sel:
            for sock in conns:
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ)
            while missing and time.monotonic() < deadline:
                for key, _ in sel.select(1.0):
                    data = tails[key.fd] + key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if marker in data:
                        sel.unregister(key.fileobj)
                        del missing[key.fd]
                    else:
                        assert data, "the server closed a watch"
                        tails[key.fd] = data[-len(marker):]
        assert not missing, f"{len(missing)} of {WATCHES} watches never saw the write"
    finally:
        for sock in conns:
            sock.close()
        proc.kill()
        proc.wait()
        etcd.close()


def test_a_watch_over_tls_parks_and_gets_every_event(etcd: Any, prefix: bytes, tmp_path: Any) -> None:
    """The hand-over works on a TLS connection too (the transport's protocol under asyncio's SSL layer)."""
    from tests.test_security import PKI

    pki = PKI(tmp_path / "pki", "parked")
    ssl_options = {"ssl_certfile": pki.server_cert, "ssl_keyfile": pki.server_key}
    with ServerThread(etcd.endpoint, prefix, ssl=ssl_options) as srv:
        with httpx.Client(base_url=srv.url, verify=ssl.create_default_context(cafile=pki.ca), timeout=20) as c:
            with c.stream("GET", NS, params={"watch": "1", "timeoutSeconds": "3"}) as r:
                assert r.status_code == 200 and r.headers["connection"] == "close"
                wait_for(lambda: parked_count(srv) == 1)
                lines = r.iter_lines()
                for name in ("t0", "t1"):
                    assert c.post(NS, json={"metadata": {"name": name}}).status_code == 201
                    event = json.loads(next(line for line in lines if line))
                    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", name)
                assert [line for line in lines if line] == []  # then the end at its timeout, cleanly
        wait_for(lambda: srv.app.stats()["active_streams"] == 0)
        assert srv.app.stats()["outcomes"].get("complete", 0) == 1
