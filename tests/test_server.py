"""The API server end to end: real etcd (both versions), real uvicorn, real HTTP (httpx).

Every response body is checked with the stdlib json module (independent of
streamcodec's decoder)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import threading
import time
from typing import Any, Dict, Iterator, List

import httpx
import pytest

from streamcodec.storage import EtcdStore
from tests.apiserver_harness import ServerThread

NS = "/api/v1/namespaces/default/secrets"
WATCH_LIST = "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"


@pytest.fixture
def make_server(etcd: Any, prefix: bytes) -> Iterator[Any]:
    servers: List[ServerThread] = []

    def make(**config: Any) -> ServerThread:
        srv = ServerThread(etcd.endpoint, prefix, **config).__enter__()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.__exit__(None, None, None)


@pytest.fixture
def server(make_server: Any) -> ServerThread:
    return make_server()


def secret(name: str, payload: str = "dmFsdWU=") -> Dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {"k": payload}}


def create(client: httpx.Client, name: str, payload: str = "dmFsdWU=") -> Dict[str, Any]:
    r = client.post(NS, json=secret(name, payload))
    assert r.status_code == 201, r.text
    return json.loads(r.content)


def events(client: httpx.Client, url: str, until: Any = None) -> List[Dict[str, Any]]:
    """Read a JSON watch stream line by line (stdlib json) until ``until(events)`` or the server ends it."""
    out: List[Dict[str, Any]] = []
    with client.stream("GET", url) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"] == "application/json"
        for line in resp.iter_lines():
            if line:
                out.append(json.loads(line))
                if until is not None and until(out):
                    break
    return out


# ---------------------------------------------------------------- CRUD + Status


def test_crud_sets_resource_version_and_maps_errors_to_status(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    created = create(c, "one")
    rv = created["metadata"]["resourceVersion"]
    assert rv.isdigit() and created["metadata"]["namespace"] == "default" and created["metadata"]["uid"]

    got = json.loads(c.get(f"{NS}/one").content)
    assert got == created

    again = c.post(NS, json=secret("one"))
    assert again.status_code == 409 and json.loads(again.content)["reason"] == "AlreadyExists"

    got["data"]["k"] = "bmV3"
    updated = c.put(f"{NS}/one", json=got)
    assert updated.status_code == 200
    new_rv = json.loads(updated.content)["metadata"]["resourceVersion"]
    assert int(new_rv) > int(rv)

    stale = c.put(f"{NS}/one", json=got)  # still carries the old resourceVersion
    status = json.loads(stale.content)
    assert stale.status_code == 409 and status["kind"] == "Status" and status["reason"] == "Conflict"

    deleted = c.delete(f"{NS}/one")
    assert deleted.status_code == 200 and json.loads(deleted.content)["data"]["k"] == "bmV3"
    missing = c.get(f"{NS}/one")
    assert missing.status_code == 404
    assert json.loads(missing.content) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'secrets "one" not found', "reason": "NotFound", "code": 404,
        "details": {"name": "one", "kind": "secrets"},
    }
    assert c.delete(f"{NS}/one").status_code == 404


@pytest.mark.parametrize(
    "url, fragment",
    [
        (f"{NS}?limit=x", "limit"),
        (f"{NS}?resourceVersion=abc", "resourceVersion"),
        (f"{NS}?resourceVersionMatch=Exact", "resourceVersionMatch"),
        (f"{NS}?resourceVersion=0&resourceVersionMatch=Exact", "Exact"),
        (f"{NS}?continue=bm9wZQ", "continue"),
        (f"{NS}?watch=maybe", "watch"),
        (f"{NS}?watch=1&sendInitialEvents=true", "NotOlderThan"),
        (f"{NS}?watch=1&resourceVersionMatch=NotOlderThan&resourceVersion=1", "resourceVersionMatch"),
        (f"{NS}?labelSelector=a%20in%20%28b", "unable to parse requirement"),
        # "²" and "٣" pass str.isdigit() but int() refuses them: still a 400
        (f"{NS}?limit=%C2%B2", "limit"),
        (f"{NS}?resourceVersion=%C2%B3", "resourceVersion"),
        (f"{NS}?watch=1&timeoutSeconds=%D9%A3", "timeoutSeconds"),
    ],
)
def test_bad_parameters_are_400_status(server: ServerThread, url: str, fragment: str) -> None:
    r = httpx.get(server.url + url, timeout=10)
    status = json.loads(r.content)
    assert r.status_code == 400 and status["code"] == 400 and status["kind"] == "Status"
    assert fragment in status["message"]


def test_openapi_v3_describes_every_resource_as_kubectl_reads_it(server: ServerThread) -> None:
    """/openapi/v3 points to the api/v1 document (by a hash of it); each resource's PATCH takes fieldValidation
    and names its kind (what kubectl looks for before leaving validation to the server); every $ref resolves."""
    c = httpx.Client(base_url=server.url, timeout=10)
    root = c.get("/openapi/v3").json()
    url = root["paths"]["api/v1"]["serverRelativeURL"]
    r = c.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert url.endswith("?hash=" + hashlib.sha512(r.content).hexdigest().upper())
    doc = r.json()
    kinds = set()
    for path, item in doc["paths"].items():
        for verb, op in item.items():
            gvk = op["x-kubernetes-group-version-kind"]
            assert gvk["group"] == "" and gvk["version"] == "v1"
            kinds.add(gvk["kind"])
            if verb == "patch":
                assert path.endswith("/{name}") and "fieldValidation" in {p["name"] for p in op["parameters"] if p["in"] == "query"}
    served = {r["kind"] for r in c.get("/api/v1").json()["resources"]}
    assert kinds == served
    schemas = doc["components"]["schemas"]
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(doc))
    assert refs and all(ref in schemas for ref in refs)
    pod = schemas["io.k8s.api.core.v1.Pod"]
    assert pod["x-kubernetes-group-version-kind"] == [{"group": "", "kind": "Pod", "version": "v1"}]
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers == {"type": "array", "items": {"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"}}


def test_an_error_is_never_hidden_behind_negotiation(server: ServerThread) -> None:
    """kube writes an error in JSON when the client accepts no format of it: a path it does not serve is a
    404 whatever the Accept header (kubectl asks for /openapi/v2 in protobuf only, and reads the 404)."""
    for path, accept in (("/openapi/v2", "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"),
                         ("/nothing-here", "text/html"), ("/api/v2", "image/png")):
        r = httpx.get(server.url + path, headers={"Accept": accept}, timeout=10)
        assert r.status_code == 404 and r.headers["content-type"] == "application/json", (path, r.text)
        assert json.loads(r.content)["reason"] == "NotFound"
    r = httpx.get(server.url + f"{NS}/missing", headers={"Accept": "text/html"}, timeout=10)
    assert r.status_code == 406 and json.loads(r.content)["reason"] == "NotAcceptable"  # a resource negotiates first, as kube's


def test_not_acceptable_and_internal_errors_reveal_nothing(server: ServerThread, etcd: Any, prefix: bytes) -> None:
    r = httpx.get(server.url + NS, headers={"Accept": "text/html"}, timeout=10)
    assert r.status_code == 406 and json.loads(r.content)["reason"] == "NotAcceptable"
    # A value that claims to be CBOR but is garbage: the single GET fails with a bare 500.
    key = prefix.decode() + "secrets/default/broken"
    etcd.etcdctl("put", key, "\xd9\xd9\xf7\xff\xff")
    r = httpx.get(server.url + f"{NS}/broken", timeout=10)
    status = json.loads(r.content)
    assert r.status_code == 500 and status["reason"] == "InternalError"
    assert "cbor" not in status["message"].lower() and "Traceback" not in r.text


# ---------------------------------------------------------------- lists


@pytest.mark.parametrize("list_mode", ["streaming", "buffered"])
def test_list_modes_page_with_limit_and_continue(make_server: Any, list_mode: str) -> None:
    # 8 KiB buffers and ~3 KiB objects: a page of 5 does not fit the prefetch budget,
    # which takes the streaming mode's read-twice path.
    server = make_server(list_mode=list_mode, buffer_bytes=8192, pool_bytes=65536)
    c = httpx.Client(base_url=server.url, timeout=10)
    names = [f"s{i:02d}" for i in range(12)]
    for n in names:
        create(c, n, "QUFB" * 700)
    full = json.loads(c.get(NS).content)
    assert full["kind"] == "SecretList" and [i["metadata"]["name"] for i in full["items"]] == names
    list_rv = int(full["metadata"]["resourceVersion"])
    assert all(int(i["metadata"]["resourceVersion"]) <= list_rv for i in full["items"])
    assert "continue" not in full["metadata"]

    seen: List[str] = []
    token = None
    pages = 0
    while True:
        params: Dict[str, Any] = {"limit": 5}
        if token:
            params["continue"] = token
        r = c.get(NS, params=params)
        assert r.status_code == 200, r.text
        page = json.loads(r.content)
        pages += 1
        seen += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
        if pages == 1:
            first_rv = page["metadata"]["resourceVersion"]
            create(c, "zz-after-first-page")  # later pages stay at the first page's revision
        else:
            assert page["metadata"]["resourceVersion"] == first_rv
        if not token:
            break
    assert seen == names
    assert pages == 3
    assert server.wait_idle()["pool"].in_use == 0


def test_list_resource_version_semantics(server: ServerThread, etcd: Any) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    a = create(c, "a")
    create(c, "b")
    rv_a = a["metadata"]["resourceVersion"]
    exact = json.loads(c.get(NS, params={"resourceVersion": rv_a, "resourceVersionMatch": "Exact"}).content)
    assert [i["metadata"]["name"] for i in exact["items"]] == ["a"] and exact["metadata"]["resourceVersion"] == rv_a
    newer = json.loads(c.get(NS, params={"resourceVersion": rv_a, "resourceVersionMatch": "NotOlderThan"}).content)
    assert [i["metadata"]["name"] for i in newer["items"]] == ["a", "b"]
    future = c.get(NS, params={"resourceVersion": "999999999", "resourceVersionMatch": "NotOlderThan"})
    assert future.status_code == 504 and json.loads(future.content)["kind"] == "Status"

    # compact past rv_a: an exact read there is 410 Expired
    current = int(create(c, "c")["metadata"]["resourceVersion"])
    etcd.etcdctl("compact", str(current))  # revisions before ``current`` are gone, rv_a + 1 among them
    gone = c.get(NS, params={"resourceVersion": rv_a, "resourceVersionMatch": "Exact"})
    assert gone.status_code == 410 and json.loads(gone.content)["reason"] == "Expired"
    watch_gone = c.get(NS, params={"watch": "1", "resourceVersion": rv_a, "timeoutSeconds": "5"})
    # etcd confirms the watch before it cancels it for compaction, so (as with kube-apiserver) the
    # stream has started: one ERROR event carrying the 410 Status, then the end.
    assert watch_gone.status_code == 200
    lines = [json.loads(line) for line in watch_gone.text.splitlines() if line]
    assert [e["type"] for e in lines] == ["ERROR"]
    assert lines[0]["object"]["code"] == 410 and lines[0]["object"]["reason"] == "Expired"


# ---------------------------------------------------------------- watch / watch-list


def test_watch_from_resource_version_sees_changes_in_order(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=20)
    base = create(c, "w0")
    rv = base["metadata"]["resourceVersion"]
    create(c, "w1")
    obj = json.loads(c.get(f"{NS}/w1").content)
    obj["data"]["k"] = "Y2hhbmdlZA=="
    c.put(f"{NS}/w1", json=obj)
    deleted = json.loads(c.delete(f"{NS}/w0").content)
    got = events(c, f"{NS}?watch=1&resourceVersion={rv}&timeoutSeconds=10", until=lambda e: len(e) == 3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
        ("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w0")
    ]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in got]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    # as kube-apiserver: the DELETE answers with the object at the deletion's revision, as its event has it
    assert deleted["metadata"]["resourceVersion"] == got[2]["object"]["metadata"]["resourceVersion"]
    assert got[1]["object"]["data"]["k"] == "Y2hhbmdlZA=="
    assert server.wait_idle()["active_streams"] == 0


def test_watch_timeout_seconds_ends_the_stream(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=20)
    start = time.monotonic()
    rv = json.loads(c.get(NS).content)["metadata"]["resourceVersion"]
    got = events(c, f"{NS}?watch=1&resourceVersion={rv}&timeoutSeconds=1")
    assert got == [] and 0.9 < time.monotonic() - start < 8


@pytest.mark.parametrize("count", [0, 3])
def test_watch_list_bookmark_follows_initial_events(server: ServerThread, count: int) -> None:
    c = httpx.Client(base_url=server.url, timeout=20)
    for i in range(count):
        create(c, f"i{i}")
    got = events(c, f"{NS}?{WATCH_LIST}&timeoutSeconds=10", until=lambda e: e[-1]["type"] == "BOOKMARK")
    assert [e["type"] for e in got] == ["ADDED"] * count + ["BOOKMARK"]
    bookmark = got[-1]["object"]
    assert bookmark["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert bookmark["kind"] == "Secret" and bookmark["apiVersion"] == "v1"
    list_rv = int(bookmark["metadata"]["resourceVersion"])
    assert all(int(e["object"]["metadata"]["resourceVersion"]) <= list_rv for e in got[:-1])
    assert [e["object"]["metadata"]["name"] for e in got[:-1]] == [f"i{i}" for i in range(count)]


def test_watch_list_then_changes(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=20)
    create(c, "before")
    got: List[Dict[str, Any]] = []
    with c.stream("GET", f"{NS}?{WATCH_LIST}&timeoutSeconds=15") as resp:
        lines = resp.iter_lines()
        for line in lines:
            got.append(json.loads(line))
            if got[-1]["type"] == "BOOKMARK":
                break
        create(c, "after")
        for line in lines:
            event = json.loads(line)
            if event["type"] != "BOOKMARK":
                got.append(event)
                break
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in got] == [
        ("ADDED", "before"), ("BOOKMARK", None), ("ADDED", "after")
    ]


def test_error_after_watch_started_is_an_error_event(server: ServerThread, etcd: Any, prefix: bytes) -> None:
    c = httpx.Client(base_url=server.url, timeout=20)
    create(c, "fine")
    got: List[Dict[str, Any]] = []
    with c.stream("GET", f"{NS}?{WATCH_LIST}&timeoutSeconds=15") as resp:
        lines = resp.iter_lines()
        for line in lines:
            got.append(json.loads(line))
            if got[-1]["type"] == "BOOKMARK":
                break
        etcd.etcdctl("put", prefix.decode() + "secrets/default/garbage", "\xd9\xd9\xf7\xff")
        rest = [json.loads(line) for line in lines if line]  # the server ends the stream after the ERROR
    errors = [e for e in rest if e["type"] == "ERROR"]
    assert len(errors) == 1 and rest[-1] is errors[0]
    assert errors[0]["object"]["kind"] == "Status" and errors[0]["object"]["code"] == 500
    stats = server.wait_idle()
    assert stats["outcomes"].get("error-event") == 1 and stats["pool"].in_use == 0


# ---------------------------------------------------------------- protection


def test_disconnect_mid_watch_cancels_storage_and_returns_buffers(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=20)
    create(c, "x")
    baseline_tasks = server.server_tasks()
    with c.stream("GET", f"{NS}?{WATCH_LIST}") as resp:
        lines = resp.iter_lines()  # kept referenced: dropping the iterator closes the response
        for line in lines:
            if json.loads(line)["type"] == "BOOKMARK":
                break
        assert server.app.stats()["active_streams"] == 1
        assert server.server_tasks() > baseline_tasks  # the stream's producer and disconnect watcher
    # the client closed the connection while the watch was idle
    stats = server.wait_idle()
    assert stats["active_streams"] == 0 and stats["pool"].in_use == 0
    assert stats["outcomes"].get("disconnected") == 1
    deadline = time.monotonic() + 5
    while server.server_tasks() > baseline_tasks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.server_tasks() <= baseline_tasks


def test_stalled_client_is_disconnected_and_memory_stays_bounded(make_server: Any) -> None:
    server = make_server(buffer_bytes=256 * 1024, pool_bytes=1024 * 1024, stall_timeout=1.0)
    c = httpx.Client(base_url=server.url, timeout=20)
    payload = "QUFB" * (150 * 1024 // 4)
    for i in range(40):  # ~6 MB of objects, far beyond socket buffers + one pool buffer
        create(c, f"big{i:02d}", payload)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET {NS}?{WATCH_LIST} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        deadline = time.monotonic() + 15
        while server.app.stats()["outcomes"].get("stalled") != 1 and time.monotonic() < deadline:
            stats = server.app.stats()
            assert stats["pool"].in_use <= 256 * 1024  # never more than this stream's one buffer
            time.sleep(0.05)
        stats = server.wait_idle()
        assert stats["outcomes"].get("stalled") == 1 and stats["pool"].in_use == 0
        assert stats["pool"].high_water == 256 * 1024
    finally:
        sock.close()


def stall_a_bulk_stream(server: ServerThread, c: httpx.Client) -> socket.socket:
    """A watch-list whose client reads nothing: it keeps its admission slot (its initial events never end)."""
    payload = "QUFB" * (150 * 1024 // 4)
    for i in range(40):  # ~6 MB, far beyond the socket buffers
        create(c, f"big{i:02d}", payload)
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET {NS}?{WATCH_LIST} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    deadline = time.monotonic() + 10
    while server.app.stats()["admission"]["active"] != 1:
        assert time.monotonic() < deadline, server.app.stats()
        time.sleep(0.02)
    return sock


def test_bulk_streams_past_the_cap_wait_their_turn_then_429_with_retry_after(make_server: Any) -> None:
    server = make_server(max_streams=1, queue_wait=0.5, stall_timeout=3.0)
    c = httpx.Client(base_url=server.url, timeout=20)
    sock = stall_a_bulk_stream(server, c)
    try:
        t0 = time.monotonic()
        refused = httpx.get(server.url + NS, timeout=10)
        waited = time.monotonic() - t0
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert waited >= 0.45  # it queued for queue_wait first, instead of an instant refusal
        status = json.loads(refused.content)
        assert status["reason"] == "TooManyRequests" and status["details"]["retryAfterSeconds"] == 1
        # a live watch needs no slot: admitted at once while the bulk stream holds it
        with c.stream("GET", f"{NS}?watch=1&resourceVersion=1&timeoutSeconds=1") as resp:
            assert resp.status_code == 200
    finally:
        sock.close()
    server.wait_idle()
    assert httpx.get(server.url + NS, timeout=10).status_code == 200


def test_a_queued_list_is_served_when_the_slot_frees(make_server: Any) -> None:
    server = make_server(max_streams=1, queue_wait=30, stall_timeout=1.0)
    c = httpx.Client(base_url=server.url, timeout=30)
    sock = stall_a_bulk_stream(server, c)
    result: Dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: result.setdefault("r", httpx.get(server.url + NS, timeout=30)), daemon=True)
    waiter.start()
    deadline = time.monotonic() + 10
    while server.app.stats()["admission"]["waiting"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    waiter.join(20)  # the stalled stream is cut after stall_timeout: its slot passes to the waiter
    sock.close()
    assert result["r"].status_code == 200 and len(result["r"].json()["items"]) == 40
    assert server.app.stats()["admission"]["rejected"] == 0


def test_live_watch_lists_give_their_slot_back_at_the_bookmark(make_server: Any) -> None:
    server = make_server(max_streams=1, queue_wait=5)
    create(httpx.Client(base_url=server.url, timeout=10), "x")
    clients = [httpx.Client(base_url=server.url, timeout=20) for _ in range(5)]
    streams = []
    try:
        for client in clients:  # five watch-lists on one slot: each gives it back once live
            cm = client.stream("GET", f"{NS}?{WATCH_LIST}&timeoutSeconds=20")
            resp = cm.__enter__()
            lines = resp.iter_lines()
            while json.loads(next(lines))["type"] != "BOOKMARK":
                pass
            streams.append((cm, lines))
        deadline = time.monotonic() + 5  # the slot goes back right after the bookmark's send returns
        while server.app.stats()["admission"]["active"] and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = server.app.stats()
        assert stats["active_streams"] == 5 and stats["admission"]["active"] == 0 and stats["admission"]["rejected"] == 0
        assert httpx.get(server.url + NS, timeout=5).status_code == 200
    finally:
        for cm, _ in streams:
            cm.__exit__(None, None, None)


def test_idle_watches_hold_no_pool_buffer_and_share_a_small_pool(make_server: Any) -> None:
    """Five live watches on a pool of two buffers: idle, they hold none; each event borrows one."""
    server = make_server(buffer_bytes=64 * 1024, pool_bytes=2 * 64 * 1024, max_streams=6)
    c = httpx.Client(base_url=server.url, timeout=20)
    create(c, "before")
    seen: Dict[int, List[str]] = {}
    errors: List[BaseException] = []

    def watch(i: int, url: str) -> None:
        try:
            names: List[str] = seen.setdefault(i, [])
            with httpx.Client(base_url=server.url, timeout=20) as client, client.stream("GET", url) as resp:
                assert resp.status_code == 200
                for line in resp.iter_lines():
                    event = json.loads(line)
                    if event["type"] != "BOOKMARK":
                        names.append(event["object"]["metadata"]["name"])
                    if names[-1:] == ["after-2"]:
                        return
        except BaseException as exc:
            errors.append(exc)

    urls = [f"{NS}?{WATCH_LIST}&timeoutSeconds=30"] * 3 + [f"{NS}?watch=1&timeoutSeconds=30"] * 2
    threads = [threading.Thread(target=watch, args=(i, url), daemon=True) for i, url in enumerate(urls)]
    for i, t in enumerate(threads):
        # One at a time: a stream sending its initial events holds a buffer, and admission refuses
        # a new stream (429) while the pool is used up; idle ones must hold none.
        t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = server.app.stats()
            if stats["active_streams"] == i + 1 and stats["pool"].in_use == 0 and seen.get(i) == ["before"]:
                break
            time.sleep(0.02)
        assert not errors, errors[0]
        stats = server.app.stats()
        assert stats["active_streams"] == i + 1 and stats["pool"].in_use == 0, stats  # open, holding no buffer
    for i in range(3):
        create(c, f"after-{i}")
    for t in threads:
        t.join(20)
    assert not errors, errors[0]
    after = ["after-0", "after-1", "after-2"]
    # watch-lists, and watches without a resourceVersion (Kubernetes: "start at most recent"): the
    # existing object first, then the changes
    assert [seen[i] for i in range(5)] == [["before"] + after] * 5
    stats = server.wait_idle()
    assert stats["pool"].in_use == 0 and stats["pool"].high_water <= 2 * 64 * 1024


# ---------------------------------------------------------------- discovery


def test_discovery_documents(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    api = json.loads(c.get("/api").content)
    assert api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    resources = json.loads(c.get("/api/v1").content)
    secrets = [r for r in resources["resources"] if r["name"] == "secrets"]
    assert resources["kind"] == "APIResourceList" and secrets[0]["kind"] == "Secret" and secrets[0]["namespaced"]
    assert "watch" in secrets[0]["verbs"]
    assert json.loads(c.get("/apis").content)["kind"] == "APIGroupList"
    version = json.loads(c.get("/version").content)
    assert version["major"] == "1" and version["gitVersion"].startswith("v1.")


# ---------------------------------------------------------------- kube's watch timing


def test_watch_timeout_zero_or_absent_is_the_randomised_server_default(make_server: Any) -> None:
    server = make_server(min_request_timeout=1)  # watches end after 1-2 s
    c = httpx.Client(base_url=server.url, timeout=20)
    rv = create(c, "x")["metadata"]["resourceVersion"]
    for params in ({"timeoutSeconds": "0"}, {}, {"timeoutSeconds": "100"}):
        t0 = time.monotonic()
        r = c.get(NS, params={"watch": "1", "resourceVersion": rv, **params})
        took = time.monotonic() - t0
        assert r.status_code == 200 and 0.9 <= took <= 3.0, (params, took)  # never at once, never past 2 T


def test_watch_from_a_future_resource_version_is_too_large_after_a_short_wait(make_server: Any) -> None:
    server = make_server()
    c = httpx.Client(base_url=server.url, timeout=20)
    rv = int(create(c, "x")["metadata"]["resourceVersion"])
    t0 = time.monotonic()
    r = c.get(NS, params={"watch": "1", "resourceVersion": str(rv + 1000), "timeoutSeconds": "30"})
    took = time.monotonic() - t0
    assert r.status_code == 504 and 2.5 <= took <= 10, took
    status = r.json()
    assert status["message"].startswith("Too large resource version") and status["reason"] == "Timeout"
    assert status["details"]["causes"] == [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]
    # one that etcd reaches within the wait is served
    result: Dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.setdefault("r", c.get(NS, params={"watch": "1", "resourceVersion": str(rv + 1), "timeoutSeconds": "2"})))
    t.start()
    time.sleep(0.5)
    create(c, "y")
    t.join(15)
    assert result["r"].status_code == 200


def test_continue_tokens_signed_with_the_operators_key_survive_a_restart(etcd: Any, prefix: bytes) -> None:
    key = b"k" * 32
    with ServerThread(etcd.endpoint, prefix, continue_secret=key) as first:
        c = httpx.Client(base_url=first.url, timeout=10)
        for i in range(3):
            create(c, f"p{i}")
        token = c.get(NS, params={"limit": "1"}).json()["metadata"]["continue"]
    with ServerThread(etcd.endpoint, prefix, continue_secret=key) as second:
        page = httpx.get(second.url + NS, params={"limit": "5", "continue": token}, timeout=10)
        assert page.status_code == 200 and [i["metadata"]["name"] for i in page.json()["items"]] == ["p1", "p2"]
    with ServerThread(etcd.endpoint, prefix) as other_key:
        assert httpx.get(other_key.url + NS, params={"continue": token}, timeout=10).status_code == 400
