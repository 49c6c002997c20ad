"""The server in Kubernetes' typed protobuf, as client-go asks for it, decoded by Kubernetes' own .proto files."""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, Iterator, List

import httpx
import pytest

from benchmarks import fixtures
from streamcodec.server.objects import DEFAULT_RESOURCES, Resource
from tests.apiserver_harness import ServerThread

NS = "/api/v1/namespaces/default/secrets"
PROTO = "application/vnd.kubernetes.protobuf"
CLIENT_GO = "application/vnd.kubernetes.protobuf,application/json"  # what client-go sends for built-in kinds
WATCH_LIST = "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"


@pytest.fixture
def server(etcd: Any, prefix: bytes) -> Iterator[ServerThread]:
    # 1 MiB buffers: a list of the 3 MB below does not fit the prefetch, so it is sized, then read again
    resources = {**DEFAULT_RESOURCES, "widgets": Resource("widgets", "Widget", True)}  # a kind without a protobuf message
    with ServerThread(etcd.endpoint, prefix, buffer_bytes=1 << 20, pool_bytes=8 << 20, resources=resources) as srv:
        yield srv


def fill(c: httpx.Client, n: int, size: int) -> List[Dict[str, Any]]:
    out = []
    for i in range(n):
        obj = fixtures.secret(size, name=f"s{i:02d}")
        del obj["metadata"]["resourceVersion"]
        r = c.post(NS, json=obj)
        assert r.status_code == 201, r.text
        out.append(r.json())
    return out


@pytest.mark.parametrize("n, size", [(3, 2000), (10, 300_000)])
def test_list_in_typed_protobuf_is_a_kubernetes_secret_list(server: ServerThread, kube_proto: Any, n: int, size: int) -> None:
    c = httpx.Client(base_url=server.url, timeout=30)
    written = fill(c, n, size)
    as_json = c.get(NS).json()
    r = c.get(NS, headers={"Accept": CLIENT_GO})
    assert r.status_code == 200 and r.headers["content-type"] == PROTO
    api_version, kind, lst = kube_proto.decode_object(r.content)
    assert (api_version, kind) == ("v1", "SecretList")
    assert lst.metadata.resourceVersion == as_json["metadata"]["resourceVersion"]
    assert [s.metadata.name for s in lst.items] == [w["metadata"]["name"] for w in written]
    for item, w in zip(lst.items, written):
        assert item.metadata.resourceVersion == w["metadata"]["resourceVersion"]
        assert item.metadata.uid == w["metadata"]["uid"]
        assert item.data["payload"] == base64.b64decode(w["data"]["payload"])
    # paged, as client-go's pager asks
    r = c.get(NS, params={"limit": "2"}, headers={"Accept": PROTO})
    _, page_kind, page = kube_proto.decode_object(r.content)
    assert page_kind == "SecretList", page
    assert len(page.items) == 2 and getattr(page.metadata, "continue")
    assert server.wait_idle()["pool"].in_use == 0


def test_watch_list_in_typed_protobuf_ends_initial_events_with_the_annotated_bookmark(server: ServerThread, kube_proto: Any) -> None:
    c = httpx.Client(base_url=server.url, timeout=30)
    written = fill(c, 3, 1500)
    r = c.get(f"{NS}?{WATCH_LIST}&timeoutSeconds=1", headers={"Accept": CLIENT_GO})
    assert r.headers["content-type"] == PROTO + ";stream=watch"
    events = kube_proto.decode_watch_stream(r.content)
    assert [(t, k) for t, _, k, _ in events[:4]] == [("ADDED", "Secret")] * 3 + [("BOOKMARK", "Secret")]
    assert all(t == "BOOKMARK" for t, _, _, _ in events[4:])  # later ones: progress bookmarks
    assert sorted(m.metadata.name for _, _, _, m in events[:3]) == ["s00", "s01", "s02"]
    bookmark = events[3][3]
    assert bookmark.metadata.annotations["k8s.io/initial-events-end"] == "true"
    assert int(bookmark.metadata.resourceVersion) >= max(int(w["metadata"]["resourceVersion"]) for w in written)


def test_concurrent_protobuf_watch_lists_transcode_each_object_once(server: ServerThread, kube_proto: Any) -> None:
    """Members of one shared scan are handed the same values: the frame cache transcodes each once,
    and every reader still gets every object right (Kubernetes' own .proto files decode them)."""
    import concurrent.futures

    c = httpx.Client(base_url=server.url, timeout=30)
    written = {w["metadata"]["name"]: w for w in fill(c, 12, 20_000)}
    cache = server.app.frame_cache
    assert cache is not None
    before = (cache.hits, cache.misses)

    def watch_list(_: int) -> List[Any]:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            r = client.get(f"{NS}?{WATCH_LIST}&timeoutSeconds=1", headers={"Accept": CLIENT_GO})
            return kube_proto.decode_watch_stream(r.content)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        streams = list(pool.map(watch_list, range(6)))
    for events in streams:
        added = {m.metadata.name: m for t, _, _, m in events if t == "ADDED"}
        assert added.keys() == written.keys()
        for name, m in added.items():
            assert m.metadata.resourceVersion == written[name]["metadata"]["resourceVersion"]
            assert m.data["payload"] == base64.b64decode(written[name]["data"]["payload"])
    hits, misses = cache.hits - before[0], cache.misses - before[1]
    assert hits + misses == 6 * 12
    assert hits >= 4 * 12, (hits, misses)  # each object transcoded about once, not six times


def test_single_objects_and_errors_in_typed_protobuf(server: ServerThread, kube_proto: Any) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    written = fill(c, 1, 100)[0]
    _, kind, obj = kube_proto.decode_object(c.get(f"{NS}/s00", headers={"Accept": CLIENT_GO}).content)
    assert kind == "Secret" and obj.metadata.resourceVersion == written["metadata"]["resourceVersion"]
    missing = c.get(f"{NS}/nope", headers={"Accept": CLIENT_GO})
    assert missing.status_code == 404 and missing.headers["content-type"] == PROTO
    _, kind, status = kube_proto.decode_object(missing.content)
    assert kind == "Status" and status.code == 404 and status.reason == "NotFound"


def test_kinds_without_a_message_get_the_next_acceptable_type_never_a_lying_protobuf(server: ServerThread, kube_proto: Any) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    widgets = "/api/v1/namespaces/default/widgets"
    assert c.post(widgets, json={"metadata": {"name": "w"}, "spec": {"size": 3}}).status_code == 201
    r = c.get(widgets, headers={"Accept": CLIENT_GO})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert [i["metadata"]["name"] for i in r.json()["items"]] == ["w"]
    only = c.get(widgets, headers={"Accept": PROTO})
    assert only.status_code == 406
    _, kind, status = kube_proto.decode_object(only.content)  # the Status itself has a message
    assert kind == "Status" and "application/json" in status.message
    # discovery has no typed protobuf here either
    assert c.get("/api/v1", headers={"Accept": CLIENT_GO}).headers["content-type"] == "application/json"
    # this project's Struct protobuf, under its own name, serves any kind
    struct = c.get(widgets, headers={"Accept": "application/vnd.streamcodec.struct+protobuf"})
    assert struct.status_code == 200 and struct.headers["content-type"] == "application/vnd.streamcodec.struct+protobuf"


def test_json_list_items_carry_no_type_meta_but_watch_objects_do(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    fill(c, 2, 100)
    items = c.get(NS).json()["items"]
    assert all("kind" not in i and "apiVersion" not in i for i in items)
    lines = [json.loads(x) for x in c.get(f"{NS}?{WATCH_LIST}&timeoutSeconds=1").content.splitlines()]
    assert [(e["object"]["kind"], e["object"]["apiVersion"]) for e in lines[:2]] == [("Secret", "v1")] * 2


def test_watch_list_request_rules_as_kube_apiserver(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    assert c.get(NS, params={"sendInitialEvents": "true"}).status_code == 422  # only on watches
    r = c.get(NS, params={"watch": "1", "sendInitialEvents": "true", "allowWatchBookmarks": "true"})
    assert r.status_code == 400 and "NotOlderThan" in r.json()["message"]
    r = c.get(NS, params={"watch": "1", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"})
    assert r.status_code == 400 and "allowWatchBookmarks" in r.json()["message"]  # never a watch-list without its bookmark


def test_writes_in_typed_protobuf_as_client_go_sends_them_by_default(server: ServerThread, kube_proto: Any) -> None:
    """client-go writes built-in kinds in protobuf: a body built with Kubernetes' own classes is stored as JSON."""
    c = httpx.Client(base_url=server.url, timeout=10)
    Secret = kube_proto.message("k8s.io.api.core.v1.Secret")
    secret = Secret()
    secret.metadata.name = "from-proto"
    secret.metadata.labels["app"] = "x"
    secret.metadata.creationTimestamp.seconds = 1795860000
    secret.data["k"] = b"\x00\x01binary"
    secret.type = "Opaque"
    body = kube_proto.encode_object(secret, "v1", "Secret")
    r = c.post(NS, content=body, headers={"Content-Type": PROTO, "Accept": CLIENT_GO})
    assert r.status_code == 201, r.content[:300]
    _, kind, created = kube_proto.decode_object(r.content)
    assert kind == "Secret" and created.data["k"] == b"\x00\x01binary" and created.metadata.labels["app"] == "x"
    as_json = c.get(f"{NS}/from-proto").json()
    assert as_json["data"] == {"k": base64.b64encode(b"\x00\x01binary").decode()} and as_json["type"] == "Opaque"
    # an update in protobuf, with its resourceVersion precondition
    created.data["k"] = b"changed"
    r = c.put(f"{NS}/from-proto", content=kube_proto.encode_object(created, "v1", "Secret"), headers={"Content-Type": PROTO})
    assert r.status_code == 200 and c.get(f"{NS}/from-proto").json()["data"]["k"] == base64.b64encode(b"changed").decode()
    # a frame of another kind, or garbage, is a 400 Status, never a 500
    cm = kube_proto.message("k8s.io.api.core.v1.ConfigMap")()
    cm.metadata.name = "x"
    assert c.post(NS, content=kube_proto.encode_object(cm, "v1", "ConfigMap"), headers={"Content-Type": PROTO}).status_code == 400
    assert c.post(NS, content=b"k8s\x00\x0a\xff", headers={"Content-Type": PROTO}).status_code == 400
