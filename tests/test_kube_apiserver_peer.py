"""The Kubernetes API server peer: a minimal API server on the real k8s.io/apiserver 0.36.4 code (Debian's
golang-k8s-apiserver-dev; source tests/go/kubeapiserver, built offline by scripts/provision-kube-apiserver) over a
real etcd -- its generic registry Store, watch cache, etcd3 storage, REST handlers and serializers.

These tests pin down what that peer does (so benchmarks and comparisons can rely on it): Secrets written over
HTTP in JSON come back in JSON and in typed protobuf (decoded by Kubernetes' own .proto files, the kube_proto
oracle), are stored in etcd as protobuf as kube-apiserver stores them, page with limit/continue, stream as a
watch-list ending with the k8s.io/initial-events-end bookmark, and sync real client-go informers by watch-list.

The watch cache's watch-list needs etcd's watch progress requests (RequestWatchProgress: etcd >= 3.4.31 /
3.5.13): kube-apiserver refuses ``sendInitialEvents`` from the cache on the suite's etcd 3.4 (3.4.23), which
test_watch_list_json pins down (without the cache, etcd3's own watch serves it there).  So the client-go
watch-list tests run on an etcd 3.5 of their own (``etcd35``); the others run on both etcd versions.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs

import httpx
import pytest

from streamcodec.local_etcd import EtcdProcess
from tests.clientgo_harness import (
    RESPONSE_MEDIA_TYPES,
    BackgroundInformer,
    InformerRun,
    provision_client_go,
    run_informer,
    secret_checksum,
)
from tests.kube_apiserver_harness import KubeAPIServer, provision_kube_apiserver

pytestmark = pytest.mark.clientgo

PROTO = "application/vnd.kubernetes.protobuf"
CLIENT_GO = "application/vnd.kubernetes.protobuf,application/json"  # what client-go asks for built-in kinds
WATCH_LIST = {"watch": "1", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan", "allowWatchBookmarks": "true"}
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
NAMESPACES = ("default", "other")


@pytest.fixture(scope="session")
def kube_bin() -> str:
    return provision_kube_apiserver()


@pytest.fixture(scope="session")
def informer_bin() -> str:
    return provision_client_go()



def new_prefix() -> str:
    return f"/registry/test-{uuid.uuid4().hex}"


def supports_watch_progress(etcd: EtcdProcess) -> bool:
    """kube-apiserver's gate for RequestWatchProgress (storage/feature): etcd 3.4.31+ or 3.5.13+."""
    v = tuple(int(p) for p in etcd.version.split("-")[0].split(".")[:3])
    return v >= (3, 5, 13) or ((3, 4, 31) <= v < (3, 5, 0))


# ----------------------------------------------------------------------------- writing over HTTP


def value(i: int, size: int) -> bytes:
    seed = f"secret-{i}-".encode()
    return (seed * (size // len(seed) + 1))[:size]


class Secrets:
    """The Secrets a test wrote through the server, as clientgo_harness.secret_checksum takes them."""

    def __init__(self) -> None:
        self.items: Dict[Tuple[str, str], Dict[str, Any]] = {}
        self.last_rv = 0

    def expected(self, namespace: Optional[str] = None) -> Dict[str, Any]:
        return secret_checksum(o for (ns, _), o in self.items.items() if namespace is None or ns == namespace)

    def create(self, c: httpx.Client, namespace: str, name: str, data: bytes) -> Dict[str, Any]:
        body = {"metadata": {"name": name}, "data": {"k": base64.b64encode(data).decode()}}
        r = c.post(f"/api/v1/namespaces/{namespace}/secrets", json=body)
        assert r.status_code == 201, r.text[:500]
        self.items[(namespace, name)] = {"namespace": namespace, "name": name, "data": {"k": data}}
        return self._written(r)

    def update(self, c: httpx.Client, namespace: str, name: str, data: bytes) -> Dict[str, Any]:
        url = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        obj = c.get(url).json()
        obj["data"] = {"k": base64.b64encode(data).decode(), "extra": base64.b64encode(b"x").decode()}
        r = c.put(url, json=obj)
        assert r.status_code == 200, r.text[:500]
        self.items[(namespace, name)]["data"] = {"k": data, "extra": b"x"}
        return self._written(r)

    def delete(self, c: httpx.Client, namespace: str, name: str) -> Dict[str, Any]:
        r = c.delete(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        assert r.status_code == 200, r.text[:500]
        # a Status (kube-apiserver returns the deleted object only for kinds whose store asks for it)
        assert r.json()["kind"] == "Status" and r.json()["status"] == "Success", r.text[:500]
        del self.items[(namespace, name)]
        return dict(r.json())

    def _written(self, r: httpx.Response) -> Dict[str, Any]:
        obj = dict(r.json())
        self.last_rv = max(self.last_rv, int(obj["metadata"]["resourceVersion"]))
        return obj


def fill(c: httpx.Client, count: int, size: int) -> Secrets:
    secrets = Secrets()
    for i in range(count):
        secrets.create(c, NAMESPACES[i % 2], f"s{i:03d}", value(i, size))
    return secrets


def etcd_value(etcd: EtcdProcess, key: str) -> bytes:
    doc = json.loads(etcd.etcdctl("get", key, "-w", "json"))
    kvs = doc.get("kvs") or []
    assert len(kvs) == 1, f"{key}: {doc}"
    return base64.b64decode(kvs[0]["value"])


def watch_lines(c: httpx.Client, path: str, params: Dict[str, str], until: Any, limit: int = 10_000) -> List[Dict[str, Any]]:
    """The JSON watch events of ``path`` up to the first for which ``until(event)`` holds (or the stream's end)."""
    events: List[Dict[str, Any]] = []
    with c.stream("GET", path, params=params) as r:
        assert r.status_code == 200, r.read()[:500]
        assert r.headers["content-type"].split(";")[0] == "application/json"
        for line in r.iter_lines():
            if not line.strip():
                continue
            events.append(json.loads(line))
            if until(events[-1]) or len(events) >= limit:
                break
    return events


def is_initial_events_end(event: Dict[str, Any]) -> bool:
    annotations = event.get("object", {}).get("metadata", {}).get("annotations") or {}
    return event.get("type") == "BOOKMARK" and annotations.get(INITIAL_EVENTS_END) == "true"


# ----------------------------------------------------------------------------- the server itself


def test_serves_discovery_version_and_health(kube_bin: str, etcd: EtcdProcess) -> None:
    with KubeAPIServer(kube_bin, etcd.endpoint, prefix=new_prefix()) as kube, httpx.Client(base_url=kube.url, timeout=30) as c:
        assert kube.listening.get("featureGates", {}).get("WatchList") is True, kube.listening
        assert kube.listening.get("storageMediaType") == PROTO, kube.listening
        assert c.get("/healthz").text == "ok"
        deadline = time.monotonic() + 30  # /readyz has checks of its own (etcd-readiness ...) that may come after /healthz's
        while (readyz := c.get("/readyz", params={"verbose": "1"})).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert readyz.status_code == 200 and "[+]etcd ok" in readyz.text, readyz.text
        version = c.get("/version").json()
        assert (version["major"], version["minor"], version["gitVersion"]) == ("1", "36", "v1.36.4"), version
        api = c.get("/api").json()
        assert api["kind"] == "APIVersions" and api["versions"] == ["v1"], api
        resources = {r["name"]: r for r in c.get("/api/v1").json()["resources"]}
        assert set(resources) == {"secrets", "configmaps", "namespaces", "pods"}, sorted(resources)
        for name, namespaced in (("secrets", True), ("configmaps", True), ("namespaces", False), ("pods", True)):
            assert resources[name]["namespaced"] is namespaced
            assert {"create", "get", "list", "watch", "update", "patch", "delete"} <= set(resources[name]["verbs"])
        assert resources["configmaps"]["shortNames"] == ["cm"] and resources["pods"]["shortNames"] == ["po"]
        # aggregated discovery, as kubectl asks for it
        agg = c.get("/api", headers={"Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"})
        assert agg.json()["kind"] == "APIGroupDiscoveryList", agg.text[:300]
        assert c.get("/api/v1/namespaces/default/secrets/missing").status_code == 404
        # peak RSS (VmHWM) is readable and at least the current RSS
        rss = kube.rss_bytes()  # read first: the peak, read after, is at least it even if the process grew between
        assert rss > 0 and kube.peak_rss_bytes() >= rss


def test_configmaps_and_namespaces(kube_bin: str, etcd: EtcdProcess) -> None:
    with KubeAPIServer(kube_bin, etcd.endpoint, prefix=new_prefix()) as kube, httpx.Client(base_url=kube.url, timeout=30) as c:
        r = c.post("/api/v1/namespaces", json={"metadata": {"name": "team-a"}})
        assert r.status_code == 201, r.text
        assert r.json()["status"] == {"phase": "Active"}
        assert c.post("/api/v1/namespaces", json={"metadata": {"name": "Not_A_Label"}}).status_code == 422
        cms = "/api/v1/namespaces/team-a/configmaps"
        assert c.post(cms, json={"metadata": {"name": "cm1"}, "data": {"a": "1"}}).status_code == 201
        cm = c.get(f"{cms}/cm1").json()
        cm["data"]["b"] = "2"
        updated = c.put(f"{cms}/cm1", json=cm)
        assert updated.status_code == 200 and updated.json()["data"] == {"a": "1", "b": "2"}
        assert c.put(f"{cms}/cm1", json=cm).status_code == 409  # its resourceVersion is the old one: Conflict
        assert c.post(cms, json={"metadata": {"name": "cm1"}}).status_code == 409  # AlreadyExists
        assert [i["metadata"]["name"] for i in c.get("/api/v1/configmaps").json()["items"]] == ["cm1"]
        assert [i["metadata"]["name"] for i in c.get("/api/v1/namespaces").json()["items"]] == ["team-a"]
        assert c.delete(f"{cms}/cm1").status_code == 200
        assert c.get(f"{cms}/cm1").status_code == 404
        assert c.delete("/api/v1/namespaces/team-a").status_code == 200
        assert c.get("/api/v1/namespaces").json()["items"] == []


def test_writes_are_judged_by_field_validation_as_by_kube(kube_bin: str, etcd: EtcdProcess) -> None:
    """The same writes to the real k8s.io/apiserver and to ours: fields given twice and fields Secret lacks, under
    each fieldValidation; stringData merged into data.  Status, message, Warning headers and the stored data agree."""
    from tests.apiserver_harness import ServerThread

    bodies = [
        b'{"metadata":{"name":"fv","bogus":1},"data":{"k":"YQ==","k":"Yg=="},"dat":1,"type":"Opaque"}',
        b'{"metadata":{"name":"fv2"},"stringData":{"k":"new","p":"pw"},"data":{"k":"b2xk","d":"ZA=="}}',
    ]

    def answers(url: str) -> List[Any]:
        out: List[Any] = []
        with httpx.Client(base_url=url, timeout=30) as c:
            for validation in ("Strict", "Warn", "Ignore", None):
                for i, body in enumerate(bodies):
                    ns = f"fv-{(validation or 'absent').lower()}"
                    params = {"fieldValidation": validation} if validation else {}
                    r = c.post(f"/api/v1/namespaces/{ns}/secrets", params=params, content=body,
                               headers={"Content-Type": "application/json"})
                    got = r.json()
                    kept = got.get("message") if got.get("kind") == "Status" else {k: got.get(k) for k in ("data", "stringData", "dat")}
                    out.append((validation, i, r.status_code, kept, r.headers.get_list("warning")))
        return out

    with KubeAPIServer(kube_bin, etcd.endpoint, prefix=new_prefix()) as kube, \
            ServerThread(etcd.endpoint, f"/registry-ours-{uuid.uuid4().hex[:8]}/".encode()) as ours:
        theirs = answers(kube.url)
        assert answers(ours.url) == theirs
    assert theirs[0][2] == 400 and "unknown field" in theirs[0][3] and "duplicate field" in theirs[0][3], theirs[0]


@pytest.mark.parametrize("watch_cache", [True, False], ids=["watch-cache", "no-watch-cache"])
def test_secrets_in_json_and_protobuf_and_as_stored_in_etcd(
    kube_bin: str, etcd: EtcdProcess, kube_proto: Any, watch_cache: bool
) -> None:
    prefix = new_prefix()
    with KubeAPIServer(kube_bin, etcd.endpoint, prefix=prefix, watch_cache=watch_cache) as kube, \
            httpx.Client(base_url=kube.url, timeout=30) as c:
        secrets = fill(c, 20, 700)
        secrets.update(c, "default", "s000", b"changed")
        secrets.delete(c, "other", "s001")
        created = c.get("/api/v1/namespaces/default/secrets/s002").json()
        assert created["type"] == "Opaque" and created["kind"] == "Secret", created

        # JSON: every namespace, and one; items carry no kind/apiVersion, as kube-apiserver's never do
        listed = c.get("/api/v1/secrets").json()
        assert listed["kind"] == "SecretList" and int(listed["metadata"]["resourceVersion"]) >= secrets.last_rv
        got = [{"namespace": i["metadata"]["namespace"], "name": i["metadata"]["name"],
                 "data": {k: base64.b64decode(v) for k, v in i["data"].items()}} for i in listed["items"]]
        assert secret_checksum(got) == secrets.expected()
        assert all("kind" not in i and "apiVersion" not in i for i in listed["items"]), listed["items"][0]
        one = c.get("/api/v1/namespaces/other/secrets").json()
        assert {i["metadata"]["name"] for i in one["items"]} == {n for (ns, n) in secrets.items if ns == "other"}
        # kube's field selectors for Secrets; stringData is merged into data, as kube's conversion does
        assert len(c.get("/api/v1/secrets", params={"fieldSelector": "type=Opaque"}).json()["items"]) == 19
        assert c.get("/api/v1/secrets", params={"fieldSelector": "data.k=x"}).status_code == 400
        r = c.post("/api/v1/namespaces/third/secrets", json={"metadata": {"name": "sd"}, "type": "kubernetes.io/basic-auth",
                                                             "data": {"username": "YQ=="}, "stringData": {"password": "p"}})
        assert r.status_code == 201 and "stringData" not in r.json(), r.text
        assert r.json()["data"] == {"username": "YQ==", "password": "cA=="}
        assert c.get("/api/v1/secrets", params={"fieldSelector": "type!=Opaque"}).json()["items"][0]["metadata"]["name"] == "sd"
        assert c.delete("/api/v1/namespaces/third/secrets/sd").status_code == 200

        # typed protobuf, as client-go asks for it, decoded by Kubernetes' own schema
        r = c.get("/api/v1/secrets", headers={"Accept": CLIENT_GO})
        assert r.status_code == 200 and r.headers["content-type"] == PROTO
        api_version, kind, lst = kube_proto.decode_object(r.content)
        assert (api_version, kind) == ("v1", "SecretList")
        assert [(s.metadata.namespace, s.metadata.name) for s in lst.items] == \
            [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed["items"]]
        for item, j in zip(lst.items, listed["items"]):
            assert item.metadata.resourceVersion == j["metadata"]["resourceVersion"]
            assert item.metadata.uid == j["metadata"]["uid"]
            assert dict(item.data) == {k: base64.b64decode(v) for k, v in j["data"].items()}
            assert item.type == "Opaque"

        # etcd holds kube's protobuf: b"k8s\x00" + runtime.Unknown{v1, Secret}, at <prefix>/secrets/<ns>/<name>,
        # without the resourceVersion (etcd's mod revision is the resourceVersion)
        raw = etcd_value(etcd, f"{prefix}/secrets/default/s000")
        assert raw.startswith(b"k8s\x00"), raw[:40]
        api_version, kind, stored = kube_proto.decode_object(raw)
        assert (api_version, kind) == ("v1", "Secret")
        assert stored.metadata.name == "s000" and stored.metadata.namespace == "default"
        assert stored.metadata.resourceVersion == ""
        assert stored.metadata.uid == c.get("/api/v1/namespaces/default/secrets/s000").json()["metadata"]["uid"]
        assert dict(stored.data) == {"k": b"changed", "extra": b"x"} and stored.type == "Opaque"
        keys = etcd.etcdctl("get", "--prefix", f"{prefix}/", "--keys-only").split()
        assert len(keys) == 19 and all(k.startswith(f"{prefix}/secrets/") for k in keys), keys[:3]


@pytest.mark.parametrize("watch_cache", [True, False], ids=["watch-cache", "no-watch-cache"])
def test_list_pages_with_limit_and_continue(kube_bin: str, etcd: EtcdProcess, watch_cache: bool) -> None:
    with KubeAPIServer(kube_bin, etcd.endpoint, prefix=new_prefix(), watch_cache=watch_cache) as kube, \
            httpx.Client(base_url=kube.url, timeout=30) as c:
        secrets = fill(c, 23, 100)
        names: List[str] = []
        params: Dict[str, str] = {"limit": "5"}
        rvs = set()
        pages = 0
        while True:
            page = c.get("/api/v1/secrets", params=params).json()
            assert page["kind"] == "SecretList", page
            assert len(page["items"]) <= 5
            names += [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in page["items"]]
            rvs.add(page["metadata"]["resourceVersion"])
            pages += 1
            token = page["metadata"].get("continue")
            if not token:
                break
            assert page["metadata"]["remainingItemCount"] == 23 - len(names)
            params = {"limit": "5", "continue": token}
        assert pages == 5 and len(rvs) == 1, (pages, rvs)  # one snapshot for every page
        assert names == sorted(f"{ns}/{n}" for ns, n in secrets.items)
        # resourceVersion semantics: "0" (any, from the cache if there is one), Exact at a past revision
        any_rv = c.get("/api/v1/secrets", params={"resourceVersion": "0"}).json()
        assert len(any_rv["items"]) == 23
        first_rv = int(c.get("/api/v1/namespaces/default/secrets/s000").json()["metadata"]["resourceVersion"])
        exact = c.get("/api/v1/secrets", params={"resourceVersion": str(first_rv), "resourceVersionMatch": "Exact"})
        assert exact.status_code == 200, exact.text
        assert [i["metadata"]["name"] for i in exact.json()["items"]] == ["s000"]
        assert exact.json()["metadata"]["resourceVersion"] == str(first_rv)
        bad = c.get("/api/v1/secrets", params={"limit": "5", "continue": "not-a-token"})
        assert bad.status_code == 400, bad.text


@pytest.mark.parametrize("watch_cache", [True, False], ids=["watch-cache", "no-watch-cache"])
def test_watch_list_json(kube_bin: str, etcd: EtcdProcess, watch_cache: bool) -> None:
    """The initial events, then the bookmark annotated k8s.io/initial-events-end at a resourceVersion no older
    than the last write, then live events on the same stream -- or, from the watch cache on an etcd without watch
    progress requests (3.4.23), kube-apiserver's refusal (without the cache, etcd3's own watch serves it)."""
    with KubeAPIServer(kube_bin, etcd.endpoint, prefix=new_prefix(), watch_cache=watch_cache) as kube, \
            httpx.Client(base_url=kube.url, timeout=httpx.Timeout(30, read=20)) as c:
        secrets = fill(c, 12, 300)
        params = dict(WATCH_LIST, timeoutSeconds="20")
        if watch_cache and not supports_watch_progress(etcd):
            events = watch_lines(c, "/api/v1/secrets", params, until=lambda e: True)
            assert events[0]["type"] == "ERROR", events
            assert "RequestWatchProgress" in events[0]["object"]["message"], events[0]
            return
        events = watch_lines(c, "/api/v1/secrets", params, until=is_initial_events_end)
        assert is_initial_events_end(events[-1]), events[-3:]
        initial = events[:-1]
        assert {e["type"] for e in initial} == {"ADDED"}, [e["type"] for e in initial]
        assert sorted((e["object"]["metadata"]["namespace"], e["object"]["metadata"]["name"]) for e in initial) == \
            sorted(secrets.items)
        assert all(e["object"]["kind"] == "Secret" and e["object"]["apiVersion"] == "v1" for e in initial)
        bookmark = events[-1]["object"]
        assert bookmark["kind"] == "Secret" and int(bookmark["metadata"]["resourceVersion"]) >= secrets.last_rv

        # one namespace, then a live create on the open stream after the bookmark
        with c.stream("GET", "/api/v1/namespaces/other/secrets", params=params) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            seen: List[Dict[str, Any]] = []
            for line in lines:
                if line.strip():
                    seen.append(json.loads(line))
                    if is_initial_events_end(seen[-1]):
                        break
            assert len(seen) - 1 == len([1 for ns, _ in secrets.items if ns == "other"])
            created = secrets.create(c, "other", "live", b"new")
            for line in lines:
                if line.strip():
                    seen.append(json.loads(line))
                    if seen[-1]["type"] != "BOOKMARK":
                        break
            assert seen[-1]["type"] == "ADDED" and seen[-1]["object"]["metadata"]["name"] == "live", seen[-1]
            assert seen[-1]["object"]["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_watch_list_in_typed_protobuf(kube_bin: str, etcd35: EtcdProcess, kube_proto: Any) -> None:
    with KubeAPIServer(kube_bin, etcd35.endpoint, prefix=new_prefix()) as kube, \
            httpx.Client(base_url=kube.url, timeout=httpx.Timeout(30, read=20)) as c:
        secrets = fill(c, 5, 200)
        body = b""
        with c.stream("GET", "/api/v1/secrets", params=dict(WATCH_LIST, timeoutSeconds="3"), headers={"Accept": CLIENT_GO}) as r:
            assert r.status_code == 200 and r.headers["content-type"].split(";")[0] == PROTO, r.headers
            for chunk in r.iter_bytes():
                body += chunk
        events = kube_proto.decode_watch_stream(body)
        assert [e[0] for e in events[:5]] == ["ADDED"] * 5, [e[:3] for e in events]
        assert events[5][0] == "BOOKMARK" and dict(events[5][3].metadata.annotations) == {INITIAL_EVENTS_END: "true"}
        assert int(events[5][3].metadata.resourceVersion) >= secrets.last_rv
        assert sorted((e[3].metadata.namespace, e[3].metadata.name) for e in events[:5]) == sorted(secrets.items)


# ----------------------------------------------------------------------------- client-go informers


def query(request: Dict[str, Any]) -> Dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(str(request.get("query", ""))).items()}


def check_watch_list_sync(run: InformerRun, informers: int, expected: Dict[str, Any], content_type: str) -> None:
    """Every informer synced with exactly ``expected`` by one watch-list request (no LIST), answered in the
    media type client-go asked for."""
    assert run.returncode == 0 and run.exit.get("synced") is True, run.describe()
    assert run.start["watchList"] is True, run.start
    assert sorted(run.synced) == list(range(informers)), run.describe()
    for i, line in sorted(run.synced.items()):
        got = {k: line[k] for k in ("objects", "bytes", "checksum")}
        assert got == expected, f"informer {i} synced {got}, the server holds {expected}"
        assert line["initialAdds"] == expected["objects"], line
    assert run.errors() == [], run.describe()
    for i in range(informers):
        assert run.requests("list", informer=i) == [], f"informer {i} fell back to LIST\n{run.describe()}"
        watches = run.requests("watch", informer=i)
        assert watches and query(watches[0]).get("sendInitialEvents") == "true", watches[:1]
    wanted = RESPONSE_MEDIA_TYPES[content_type]
    for r in run.requests():
        if r["kind"] in ("list", "watch") and r.get("status") == 200:
            assert (r.get("contentType") or "").split(";")[0] == wanted[r["kind"]], r


@pytest.fixture(scope="module")
def loaded(kube_bin: str, etcd35: EtcdProcess) -> Tuple[str, Secrets]:
    """60 Secrets of 2 KiB in two namespaces under a prefix of their own, written once (read-only after)."""
    prefix = new_prefix()
    with KubeAPIServer(kube_bin, etcd35.endpoint, prefix=prefix) as kube, httpx.Client(base_url=kube.url, timeout=30) as c:
        secrets = fill(c, 60, 2048)
    return prefix, secrets


@pytest.mark.parametrize(
    "content_type, watch_cache",
    [("default", True), ("default", False), ("json", True), ("cbor", True)],
    ids=["protobuf-watch-cache", "protobuf-no-watch-cache", "json-watch-cache", "cbor-watch-cache"],
)
def test_client_go_informers_sync_by_watch_list(
    kube_bin: str, informer_bin: str, etcd35: EtcdProcess, loaded: Tuple[str, Secrets], content_type: str, watch_cache: bool
) -> None:
    """4 client-go informers (watch-list on; ``default``: client-go's own choice for built-in types, protobuf)."""
    prefix, secrets = loaded
    with KubeAPIServer(kube_bin, etcd35.endpoint, prefix=prefix, watch_cache=watch_cache) as kube:
        run = run_informer(
            informer_bin, kube.url, informers=4, content_type=content_type, watch_list="on", sync_timeout=30,
            expect_objects=60, fail_fast=True,
        )
        peak = kube.peak_rss_bytes()
    check_watch_list_sync(run, 4, secrets.expected(), content_type)
    assert peak > 0


def test_client_go_informers_see_live_changes(kube_bin: str, informer_bin: str, etcd35: EtcdProcess) -> None:
    informers = 4
    with KubeAPIServer(kube_bin, etcd35.endpoint, prefix=new_prefix()) as kube, httpx.Client(base_url=kube.url, timeout=30) as c:
        secrets = fill(c, 6, 512)
        with BackgroundInformer(
            informer_bin, kube.url, max_seconds=60, informers=informers, content_type="default", watch_list="on",
            sync_timeout=30, fail_fast=True,
        ) as bg:
            synced = bg.wait_synced(informers, timeout=40)
            for line in synced.synced.values():
                assert {k: line[k] for k in ("objects", "bytes", "checksum")} == secrets.expected()
            created = secrets.create(c, "default", "live", b"new")
            updated = secrets.update(c, "default", "s000", b"changed")
            secrets.delete(c, "other", "s001")

            def seen(r: InformerRun, event: str, name: str, min_rv: int = 0) -> bool:
                who = {e["informer"] for e in r.of(event)
                       if e.get("name") == name and int(e.get("resourceVersion") or 0) >= min_rv}
                return who >= set(range(informers))

            bg.wait_for(
                lambda r: seen(r, "added", "live", int(created["metadata"]["resourceVersion"]))
                and seen(r, "updated", "s000", int(updated["metadata"]["resourceVersion"]))
                and seen(r, "deleted", "s001"),
                timeout=20, what="the create, update and delete at every informer",
            )
            run = bg.stop()
    assert run.exit.get("synced") is True, run.describe()
    summaries = [{k: s[k] for k in ("objects", "bytes", "checksum")} for s in run.exit.get("informers", [])]
    assert summaries == [secrets.expected()] * informers, run.describe()
    assert run.errors() == [], run.describe()
    for i in range(informers):
        assert len(run.requests("watch", informer=i)) == 1 and run.requests("list", informer=i) == []
