"""Real client-go informers (Go, k8s.io/client-go 0.36 from Debian's packages, built offline by
scripts/provision-client-go; source in tests/go/informer) against the server, on etcd 3.5 and 3.4.

Each informer checks what it holds once synced: object count, total bytes of Secret data and a checksum,
which must equal what the test wrote over HTTP.  The informer program records every request it makes, so
the tests can tell a watch-list sync (one ``watch`` with ``sendInitialEvents=true``, no LIST) from a
fallback to LIST + WATCH, and which media type the server answered with.

``--content-type default`` (client-go's own choice for built-in types: protobuf) and ``cbor`` run the
same cases as JSON; they need the server's typed protobuf and CBOR output.
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs

import httpx
import pytest

from tests.apiserver_harness import ServerThread
from tests.clientgo_harness import (
    RESPONSE_MEDIA_TYPES,
    BackgroundInformer,
    InformerRun,
    informer_env,
    provision_client_go,
    run_informer,
    secret_checksum,
)

pytestmark = pytest.mark.clientgo

CONTENT_TYPES = ["json", "default", "cbor"]
WATCH_LIST = ["on", "off"]
SMALL_COUNT, SMALL_SIZE = 50, 1024
LARGE_COUNT, LARGE_SIZE = 40, 1024 * 1024
NAMESPACES = ("default", "other")


@pytest.fixture(scope="session")
def informer_bin() -> str:
    return provision_client_go()


# ----------------------------------------------------------------------------- writing over HTTP


class Objects:
    """The Secrets a test wrote (and changed) through the server: what every informer must end up with."""

    def __init__(self) -> None:
        self.items: Dict[Tuple[str, str], Dict[str, Any]] = {}

    def expected(self, namespace: Optional[str] = None) -> Dict[str, Any]:
        return secret_checksum(o for (ns, _), o in self.items.items() if namespace is None or ns == namespace)

    def create(self, client: httpx.Client, namespace: str, name: str, value: bytes) -> Dict[str, Any]:
        body = {"metadata": {"name": name}, "type": "Opaque", "data": {"k": base64.b64encode(value).decode()}}
        r = client.post(f"/api/v1/namespaces/{namespace}/secrets", json=body)
        assert r.status_code == 201, r.text[:500]
        self.items[(namespace, name)] = {"namespace": namespace, "name": name, "data": {"k": value}}
        return dict(r.json())

    def update(self, client: httpx.Client, namespace: str, name: str, value: bytes) -> Dict[str, Any]:
        url = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        obj = client.get(url).json()
        obj["data"] = {"k": base64.b64encode(value).decode(), "extra": base64.b64encode(b"x").decode()}
        r = client.put(url, json=obj)
        assert r.status_code == 200, r.text[:500]
        self.items[(namespace, name)]["data"] = {"k": value, "extra": b"x"}
        return dict(r.json())

    def delete(self, client: httpx.Client, namespace: str, name: str) -> None:
        r = client.delete(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        assert r.status_code == 200, r.text[:500]
        del self.items[(namespace, name)]


def serve(etcd: Any, prefix: bytes, *, port: Optional[int] = None) -> ServerThread:
    """The server at its default configuration: 16 informers' watches and watch-lists must get through its
    admission as they would in production."""
    return ServerThread(etcd.endpoint, prefix, port=port)


def value(i: int, size: int) -> bytes:
    seed = f"secret-{i}-".encode()
    return (seed * (size // len(seed) + 1))[:size]


def load(etcd: Any, prefix: bytes, count: int, size: int) -> Objects:
    objects = Objects()
    with serve(etcd, prefix) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        for i in range(count):
            objects.create(c, NAMESPACES[i % 2], f"s{i:03d}", value(i, size))
    return objects


def module_prefix() -> bytes:
    return f"/registry/test-{uuid.uuid4().hex}/".encode()


@pytest.fixture(scope="module")
def small(etcd: Any) -> Tuple[bytes, Objects]:
    """50 Secrets of 1 KiB in two namespaces, written once per etcd version (read-only for the tests)."""
    prefix = module_prefix()
    return prefix, load(etcd, prefix, SMALL_COUNT, SMALL_SIZE)


@pytest.fixture(scope="module")
def large(etcd: Any) -> Tuple[bytes, Objects]:
    """40 Secrets of 1 MiB, written once per etcd version (read-only for the tests)."""
    prefix = module_prefix()
    return prefix, load(etcd, prefix, LARGE_COUNT, LARGE_SIZE)


# ----------------------------------------------------------------------------- checks


def media_type(content_type: Optional[str]) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def query(request: Dict[str, Any]) -> Dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(str(request.get("query", ""))).items()}


def check_sync(run: InformerRun, informers: int, expected: Dict[str, Any], content_type: str, watch_list: str) -> None:
    """Every informer synced with exactly ``expected``, by watch-list or by LIST + WATCH as configured, and
    the server answered in the configured format."""
    assert run.returncode == 0 and run.exit.get("synced") is True, run.describe()
    assert run.start["watchList"] is (watch_list == "on"), run.start
    assert sorted(run.synced) == list(range(informers)), run.describe()
    for i, line in sorted(run.synced.items()):
        got = {k: line[k] for k in ("objects", "bytes", "checksum")}
        assert got == expected, f"informer {i} synced {got}, the server holds {expected}"
        assert line["initialAdds"] == expected["objects"], line
    assert run.of("unparsed") == [], run.of("unparsed")[:3]
    assert run.errors() == [], run.describe()
    for i in range(informers):
        lists = run.requests("list", informer=i)
        watches = run.requests("watch", informer=i)
        if watch_list == "on":
            # one watch-list request; a LIST would mean client-go fell back from watch-list
            assert lists == [], f"informer {i} fell back to LIST: {lists[:2]}\n{run.describe()}"
            assert watches and query(watches[0]).get("sendInitialEvents") == "true", watches[:1]
        else:
            assert lists, f"informer {i} made no LIST with watch-list off\n{run.describe()}"
            assert all("sendInitialEvents" not in query(w) for w in watches), watches[:1]
    wanted = RESPONSE_MEDIA_TYPES[content_type]
    for r in run.requests():
        if r["kind"] in ("list", "watch") and r.get("status") == 200:
            assert media_type(r.get("contentType")) == wanted[r["kind"]], (
                f"{r['kind']} answered with {r.get('contentType')!r}, not {wanted[r['kind']]} (--content-type {content_type})"
            )


def store_summaries(run: InformerRun) -> List[Dict[str, Any]]:
    """Each informer's store at the end of the run (from the ``exit`` line)."""
    return [{k: s[k] for k in ("objects", "bytes", "checksum")} for s in run.exit.get("informers", [])]


# ----------------------------------------------------------------------------- initial sync


@pytest.mark.parametrize("informers", [1, 16])
@pytest.mark.parametrize("watch_list", WATCH_LIST)
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_informers_sync_small_secrets(
    informer_bin: str, etcd: Any, small: Tuple[bytes, Objects], content_type: str, watch_list: str, informers: int
) -> None:
    prefix, objects = small
    with serve(etcd, prefix) as srv:
        run = run_informer(
            informer_bin, srv.url, informers=informers, content_type=content_type, watch_list=watch_list,
            sync_timeout=20, expect_objects=SMALL_COUNT, fail_fast=True,
        )
    check_sync(run, informers, objects.expected(), content_type, watch_list)


@pytest.mark.parametrize("watch_list", WATCH_LIST)
def test_informer_one_namespace(informer_bin: str, etcd: Any, small: Tuple[bytes, Objects], watch_list: str) -> None:
    prefix, objects = small
    with serve(etcd, prefix) as srv:
        run = run_informer(
            informer_bin, srv.url, informers=2, content_type="json", watch_list=watch_list, namespace="other",
            sync_timeout=20, fail_fast=True,
        )
    check_sync(run, 2, objects.expected("other"), "json", watch_list)
    assert {r["path"] for r in run.requests()} == {"/api/v1/namespaces/other/secrets"}


@pytest.mark.parametrize("watch_list", WATCH_LIST)
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_informers_sync_large_secrets(
    informer_bin: str, etcd: Any, large: Tuple[bytes, Objects], content_type: str, watch_list: str
) -> None:
    prefix, objects = large
    with serve(etcd, prefix) as srv:
        run = run_informer(
            informer_bin, srv.url, informers=4, content_type=content_type, watch_list=watch_list,
            sync_timeout=120, expect_objects=LARGE_COUNT, fail_fast=True,
        )
    expected = objects.expected()
    assert expected["bytes"] == LARGE_COUNT * LARGE_SIZE
    check_sync(run, 4, expected, content_type, watch_list)


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_watch_list_inconsistency_detector(informer_bin: str, etcd: Any, small: Tuple[bytes, Objects], content_type: str) -> None:
    """client-go's own check (KUBE_WATCHLIST_INCONSISTENCY_DETECTOR): after the watch-list sync it LISTs at
    the synced resourceVersion (Exact) and panics unless that list equals what the watch-list delivered
    (list items without kind/apiVersion, as kube-apiserver's, in every format)."""
    prefix, objects = small
    env = informer_env(content_type, "on", {"KUBE_WATCHLIST_INCONSISTENCY_DETECTOR": "true"})
    with serve(etcd, prefix) as srv:
        run = run_informer(
            informer_bin, srv.url, informers=4, content_type=content_type, watch_list="on", env=env, sync_timeout=30,
            expect_objects=SMALL_COUNT, fail_fast=True,
        )
    assert run.start.get("consistencyDetector") is True, run.start
    assert run.returncode == 0 and "data inconsistency detected" not in run.stderr, run.describe()
    expected = objects.expected()
    assert sorted(run.synced) == [0, 1, 2, 3], run.describe()
    for i, line in run.synced.items():
        assert {k: line[k] for k in ("objects", "bytes", "checksum")} == expected
        watches = run.requests("watch", informer=i)
        assert watches and query(watches[0]).get("sendInitialEvents") == "true"
        # the detector's LIST is the only one, at the resourceVersion the watch-list synced to
        lists = run.requests("list", informer=i)
        assert len(lists) == 1 and lists[0]["status"] == 200, lists
        q = query(lists[0])
        assert q.get("resourceVersionMatch") == "Exact" and q.get("resourceVersion", "").isdigit(), q


# ----------------------------------------------------------------------------- live events


def seen(run: InformerRun, event: str, name: str, informers: int, min_rv: int = 0) -> bool:
    """Every informer reported ``event`` for ``name`` at a resourceVersion >= ``min_rv``."""
    who = {
        e["informer"]
        for e in run.of(event)
        if e.get("name") == name and int(e.get("resourceVersion") or 0) >= min_rv
    }
    return who >= set(range(informers))


@pytest.mark.parametrize("watch_list", WATCH_LIST)
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_live_create_update_delete_seen_by_every_informer(
    informer_bin: str, etcd: Any, prefix: bytes, content_type: str, watch_list: str
) -> None:
    informers = 4
    objects = Objects()
    with serve(etcd, prefix) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        for i in range(6):
            objects.create(c, NAMESPACES[i % 2], f"s{i:03d}", value(i, 512))
        with BackgroundInformer(
            informer_bin, srv.url, max_seconds=60, informers=informers, content_type=content_type,
            watch_list=watch_list, sync_timeout=20, fail_fast=True,
        ) as bg:
            synced = bg.wait_synced(informers, timeout=30)
            for line in synced.synced.values():
                assert {k: line[k] for k in ("objects", "bytes", "checksum")} == objects.expected()
            created = objects.create(c, "default", "live", b"new")
            updated = objects.update(c, "default", "s000", b"changed")
            objects.delete(c, "other", "s001")
            bg.wait_for(
                lambda r: seen(r, "added", "live", informers, int(created["metadata"]["resourceVersion"]))
                and seen(r, "updated", "s000", informers, int(updated["metadata"]["resourceVersion"]))
                and seen(r, "deleted", "s001", informers),
                timeout=20, what="the create, update and delete at every informer",
            )
            run = bg.stop()
    assert run.exit.get("synced") is True, run.describe()
    assert store_summaries(run) == [objects.expected()] * informers, run.describe()
    assert run.errors() == [], run.describe()
    # the changes came over the watch each informer already had: no second list or watch
    for i in range(informers):
        assert len(run.requests("watch", informer=i)) == 1, run.requests("watch", informer=i)
        assert len(run.requests("list", informer=i)) == (0 if watch_list == "on" else 1)


# ----------------------------------------------------------------------------- server restart, compaction


def change_while_down(etcd: Any, prefix: bytes, objects: Objects) -> Tuple[int, int]:
    """Create, update and delete through a second, short-lived server; return the resourceVersions of the
    update and of the last change."""
    with serve(etcd, prefix) as other, httpx.Client(base_url=other.url, timeout=30) as c:
        objects.create(c, "default", "late", b"while the server was down")
        updated = objects.update(c, "default", "s000", b"changed while down")
        objects.delete(c, "other", "s001")
        last = objects.create(c, "other", "late2", b"2")
    return int(updated["metadata"]["resourceVersion"]), int(last["metadata"]["resourceVersion"])


def restart_scenario(
    informer_bin: str, etcd: Any, prefix: bytes, watch_list: str, compact: bool
) -> Tuple[InformerRun, Objects, int]:
    """Informers synced against a server; the server stops under their open watches; the data changes
    meanwhile (through another server), etcd is compacted past everything the informers saw if ``compact``;
    a new server comes up on the same port.  Returns once every informer has seen the changes."""
    informers = 4
    objects = Objects()
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(serve(etcd, prefix))
        c = stack.enter_context(httpx.Client(base_url=first.url, timeout=30))
        for i in range(10):
            objects.create(c, NAMESPACES[i % 2], f"s{i:03d}", value(i, 256))
        bg = stack.enter_context(BackgroundInformer(
            informer_bin, first.url, max_seconds=90, informers=informers, content_type="json",
            watch_list=watch_list, sync_timeout=20, fail_fast=True,
        ))
        synced = bg.wait_synced(informers, timeout=30)
        assert all(line["objects"] == 10 for line in synced.synced.values()), synced.describe()
        first.__exit__(None, None, None)  # cuts the open watches (uvicorn's graceful shutdown: 2 s)
        update_rv, last_rv = change_while_down(etcd, prefix, objects)
        if compact:
            etcd.etcdctl("compact", str(last_rv))
        stack.enter_context(serve(etcd, prefix, port=first.port))
        bg.wait_for(
            lambda r: seen(r, "added", "late", informers) and seen(r, "added", "late2", informers)
            and seen(r, "updated", "s000", informers, update_rv) and seen(r, "deleted", "s001", informers),
            timeout=45, what="the changes made while the server was down, at every informer",
        )
        run = bg.stop()
    assert run.exit.get("synced") is True, run.describe()
    assert store_summaries(run) == [objects.expected()] * informers, run.describe()
    return run, objects, informers


def test_server_restart_mid_watch(informer_bin: str, etcd: Any, prefix: bytes) -> None:
    """Every informer re-watches from its resourceVersion on the new server and ends with the right set."""
    run, objects, informers = restart_scenario(informer_bin, etcd, prefix, "on", compact=False)
    for i in range(informers):
        assert len(run.requests("watch", informer=i)) >= 2, run.requests("watch", informer=i)
        assert run.requests("list", informer=i) == [], run.requests("list", informer=i)


@pytest.mark.parametrize("watch_list", WATCH_LIST)
def test_compaction_mid_watch(informer_bin: str, etcd: Any, prefix: bytes, watch_list: str) -> None:
    """The informers' resourceVersion is compacted away while their watch is down: the re-watch from it gets
    410 Expired (client-go's reflector handles that itself, without the watch error handler), and each
    informer re-lists (by watch-list, or by LIST with watch-list off) and ends with the right set."""
    run, objects, informers = restart_scenario(informer_bin, etcd, prefix, watch_list, compact=True)
    for i in range(informers):
        lists = run.requests("list", informer=i)
        watches = run.requests("watch", informer=i)
        initial = [w for w in watches if query(w).get("sendInitialEvents") == "true"]
        resumed = [w for w in watches if w.get("status") == 200 and w not in initial and w is not watches[0]]
        assert resumed, f"informer {i} never re-watched from its resourceVersion: {watches}"
        if watch_list == "on":
            assert lists == [] and len(initial) >= 2, f"informer {i} did not re-list by watch-list: {watches}, {lists}"
        else:
            assert len(lists) >= 2 and initial == [], f"informer {i} did not re-list: {lists}"
        # the re-list came after the re-watch at the compacted resourceVersion
        relist = (initial if watch_list == "on" else lists)[-1]
        assert run.events.index(relist) > run.events.index(resumed[0]), (resumed[0], relist)


@pytest.mark.parametrize("content_type", ["default", "json"])
def test_demo_runs_client_go_informers(informer_bin: str, tmp_path: Any, content_type: str, etcd_bin35: str) -> None:
    """``streamcodec demo --informer client-go``: Kubernetes' own informers, checked object by object."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    env = dict(os.environ, STREAMCODEC_CLIENT_GO_INFORMER=informer_bin, ETCD_BIN=etcd_bin35)
    proc = subprocess.run(
        [sys.executable, "-m", "streamcodec.demo", "--quick", "--informer", "client-go", "--content-type", content_type,
         "--modes", "watch-list,streaming", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert {(r["mode"], r["informers"]) for r in runs} == {(m, n) for m in ("watch-list", "streaming") for n in (1, 2, 4)}
    for r in runs:
        assert not r["server_died"] and r["failures"] == [] and r["sync_seconds"] > 0, r


# ----------------------------------------------------------------------------- writes


#: The media type of client-go's request bodies, per --content-type (client-go's default for built-in types:
#: protobuf; with ClientsPreferCBOR: CBOR).
REQUEST_MEDIA_TYPES = {"json": "application/json", "default": "application/vnd.kubernetes.protobuf", "cbor": "application/cbor"}


def written(resource: str, data: Dict[str, bytes]) -> Dict[str, Any]:
    """The checksum the program reports for its object "client-go-write" holding ``data``."""
    return secret_checksum([{"namespace": "default", "name": "client-go-write", "data": data}])["checksum"]


@pytest.mark.parametrize("resource", ["secrets", "configmaps"])
@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_client_go_writes_in_its_content_type(informer_bin: str, etcd: Any, prefix: bytes, content_type: str, resource: str) -> None:
    """client-go's own create, get, update, delete with preconditions -- request bodies (the objects and the
    DeleteOptions) in protobuf by default and in CBOR with ClientsPreferCBOR -- give back exactly the bytes it
    wrote, refuse a stale update and a wrong UID as kube does (409), and reach its informer as events."""
    every = bytes(range(256))
    first = {"all": every, "empty": b""}
    second = {"all": every[::-1], "added": b"x"}
    if resource == "configmaps":  # data and binaryData, as the program counts them
        first, second = {**first, "text": "h\u00e9llo".encode()}, {**second, "text": b"changed"}
    with serve(etcd, prefix) as srv, BackgroundInformer(
        informer_bin, srv.url, max_seconds=60, informers=1, content_type=content_type, watch_list="on",
        resource=resource, sync_timeout=20, fail_fast=True, writes=True,
    ) as bg:
        run = bg.wait_for(lambda r: seen(r, "deleted", "client-go-write", 1) and any(
            w["step"] == "delete-again" for w in r.of("write")), timeout=30, what="the writes and their events")
        run = bg.stop()
    steps = {w["step"]: w for w in run.of("write")}
    assert list(steps) == ["create", "get", "update", "stale-update", "delete-wrong-uid", "delete", "get-deleted",
                           "delete-again"], run.describe()
    create, get, update = steps["create"], steps["get"], steps["update"]
    assert create["ok"] and create["labels"] == {"step": "create"} and create["checksum"] == written(resource, first), create
    assert get["ok"] and {k: get[k] for k in ("uid", "resourceVersion", "checksum")} == {
        k: create[k] for k in ("uid", "resourceVersion", "checksum")}, get
    assert update["ok"] and update["labels"] == {"step": "update"} and update["checksum"] == written(resource, second), update
    assert update["uid"] == create["uid"] and int(update["resourceVersion"]) > int(create["resourceVersion"])
    if resource == "secrets":
        assert create["type"] == update["type"] == "Opaque"
    assert (steps["stale-update"]["code"], steps["stale-update"]["reason"]) == (409, "Conflict"), steps["stale-update"]
    wrong = steps["delete-wrong-uid"]
    assert (wrong["code"], wrong["reason"]) == (409, "Conflict") and "Precondition failed: UID in precondition" in wrong["error"], wrong
    assert steps["delete"]["ok"], steps["delete"]
    for step in ("get-deleted", "delete-again"):
        assert (steps[step]["code"], steps[step]["reason"]) == (404, "NotFound"), steps[step]
    # the informer saw them, at the revisions the writes answered with
    assert seen(run, "added", "client-go-write", 1, int(create["resourceVersion"]))
    assert seen(run, "updated", "client-go-write", 1, int(update["resourceVersion"]))
    # the bodies went in the configured format, and the answers came back in it
    writes = [r for r in run.requests() if r["method"] in ("POST", "PUT", "DELETE")]
    assert [r["method"] for r in writes] == ["POST", "PUT", "PUT", "DELETE", "DELETE", "DELETE"], writes
    assert {media_type(r.get("requestContentType")) for r in writes} == {REQUEST_MEDIA_TYPES[content_type]}, writes
    answered = {media_type(r.get("contentType")) for r in writes}
    assert answered == {RESPONSE_MEDIA_TYPES[content_type]["list"]}, writes
    assert run.errors() == [], run.describe()
