"""labelSelector and fieldSelector on lists, watches and watch-lists, against etcd: what is selected, and a
watcher's view of objects that change (kube's watch filter: ADDED when an object starts matching, DELETED
when it stops).  Checked in JSON and in typed protobuf (decoded by the protobuf package with Kubernetes' own
generated.proto)."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from tests.apiserver_harness import ServerThread

NS = "/api/v1/namespaces/default/configmaps"
WATCH_LIST = {"watch": "1", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan", "allowWatchBookmarks": "true"}


@pytest.fixture
def server(etcd: Any, prefix: bytes) -> Iterator[ServerThread]:
    with ServerThread(etcd.endpoint, prefix) as srv:
        yield srv


def put(c: httpx.Client, name: str, labels: Optional[Dict[str, str]]) -> str:
    r = c.get(f"{NS}/{name}")
    body: Dict[str, Any] = {"metadata": {"name": name, "labels": labels or {}}, "data": {"v": uuid.uuid4().hex}}
    if r.status_code == 404:
        r = c.post(NS, json=body)
        assert r.status_code == 201, r.text
    else:
        r = c.put(f"{NS}/{name}", json=body)
        assert r.status_code == 200, r.text
    return str(r.json()["metadata"]["resourceVersion"])


def watching(server: ServerThread, path: str, params: Dict[str, str]) -> Tuple[threading.Thread, List[Dict[str, Any]]]:
    """A watch of ``path`` read in a thread (it ends at its timeoutSeconds), open once this returns; its events."""
    events: List[Dict[str, Any]] = []
    opened = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=server.url, timeout=20) as w, w.stream("GET", path, params={"watch": "1", **params}) as resp:
            opened.set()
            for line in resp.iter_lines():
                if line:
                    events.append(json.loads(line))

    thread = threading.Thread(target=watch)
    thread.start()
    assert opened.wait(10)  # from a resourceVersion: what is written after it comes, whenever it is written
    return thread, events


def names(items: List[Dict[str, Any]]) -> List[str]:
    return [i["metadata"]["name"] for i in items]


def test_lists_select_by_labels_in_every_form(server: ServerThread, kube_proto: Any) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    put(c, "a", {"app": "web", "tier": "1"})
    put(c, "b", {"app": "db"})
    put(c, "c", None)
    put(c, "d", {"app": "web"})
    for selector, expected in (("app=web", ["a", "d"]), ("app!=web", ["b", "c"]), ("app in (db, web),tier", ["a"]),
                               ("!app", ["c"]), ("app", ["a", "b", "d"]), ("tier>0", ["a"]), ("", ["a", "b", "c", "d"])):
        r = c.get(NS, params={"labelSelector": selector})
        assert r.status_code == 200 and names(r.json()["items"]) == expected, (selector, r.text)
        proto = c.get(NS, params={"labelSelector": selector}, headers={"Accept": "application/vnd.kubernetes.protobuf"})
        _, kind, lst = kube_proto.decode_object(proto.content)
        assert kind == "ConfigMapList" and [i.metadata.name for i in lst.items] == expected, selector
    # paged: fewer items a page than the limit is allowed (kube's too); every selected one comes once, in order
    seen: List[str] = []
    token = ""
    while True:
        page = c.get(NS, params={"labelSelector": "app", "limit": "1", **({"continue": token} if token else {})}).json()
        seen += names(page["items"])
        token = page["metadata"].get("continue", "")
        if not token:
            break
    assert seen == ["a", "b", "d"]
    r = c.get(NS, params={"labelSelector": "app in (web"})
    assert r.status_code == 400 and r.json()["message"].startswith("unable to parse requirement: ")
    # > and < read integers as Go's strconv.ParseInt does (kube's): not Python's int, which takes "1_0"
    put(c, "e", {"tier": "1_0"})
    put(c, "f", {"tier": "9223372036854775808"})  # past int64: no integer at all
    assert names(c.get(NS, params={"labelSelector": "tier>0"}).json()["items"]) == ["a"]
    for bad in ("tier>1_0", "tier<9223372036854775808"):
        r = c.get(NS, params={"labelSelector": bad})
        assert r.status_code == 400 and "must be an integer" in r.json()["message"], (bad, r.text)


def test_a_watcher_sees_objects_enter_and_leave_its_selection(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    start = put(c, "x", {"app": "db"})
    t, events = watching(server, NS, {"resourceVersion": start, "labelSelector": "app=web", "timeoutSeconds": "4"})
    rv_in = put(c, "x", {"app": "web"})       # starts matching: ADDED
    rv_mod = put(c, "x", {"app": "web"})      # still matching: MODIFIED
    rv_out = put(c, "x", {"app": "db"})       # stops matching: DELETED
    put(c, "x", {"app": "other"})             # still out: nothing
    put(c, "y", {"app": "web"})               # a new one: ADDED
    assert c.delete(f"{NS}/y").status_code == 200  # DELETED
    t.join(15)
    got = [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert got[:3] == [("ADDED", "x", rv_in), ("MODIFIED", "x", rv_mod), ("DELETED", "x", rv_out)], got
    assert [(t, n) for t, n, _ in got[3:]] == [("ADDED", "y"), ("DELETED", "y")], got
    assert events[2]["object"]["metadata"]["labels"] == {"app": "web"}  # the version that matched


def test_a_watch_list_starts_with_the_selected_objects_only(server: ServerThread, kube_proto: Any) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    for i in range(6):
        put(c, f"o{i}", {"parity": "even" if i % 2 == 0 else "odd"})
    for accept in ("application/json", "application/vnd.kubernetes.protobuf;stream=watch"):
        with c.stream("GET", NS, params={**WATCH_LIST, "labelSelector": "parity=odd", "timeoutSeconds": "1"},
                      headers={"Accept": accept}) as resp:
            body = resp.read()
        if accept == "application/json":
            events = [(e["type"], e["object"]["metadata"].get("name")) for e in map(json.loads, body.splitlines()) if e]
        else:
            events = [(t, obj.metadata.name) for t, _, _, obj in kube_proto.decode_watch_stream(body)]
        added = sorted(name for t, name in events if t == "ADDED")
        assert added == ["o1", "o3", "o5"], (accept, added)
        assert any(t == "BOOKMARK" for t, _ in events)


def test_a_kubelet_watches_the_pods_of_its_node(server: ServerThread) -> None:
    """fieldSelector=spec.nodeName=NODE (the kubelet's watch): a pod bound to the node enters the watch as
    ADDED, one moved away leaves it as DELETED; lists select on object fields, Secrets on type, Events on
    involvedObject; a field the kind has no selector for is kube's 400."""
    c = httpx.Client(base_url=server.url, timeout=10)
    pods = "/api/v1/namespaces/default/pods"
    for name, node in (("p1", "n1"), ("p2", "n2"), ("p3", None)):
        spec: Dict[str, Any] = {"containers": [{"name": "c", "image": "i"}], **({"nodeName": node} if node else {})}
        assert c.post(pods, json={"metadata": {"name": name}, "spec": spec}).status_code == 201
    assert names(c.get(pods, params={"fieldSelector": "spec.nodeName=n1"}).json()["items"]) == ["p1"]
    assert names(c.get(pods, params={"fieldSelector": "spec.nodeName="}).json()["items"]) == ["p3"]  # the scheduler's
    assert names(c.get(pods, params={"fieldSelector": "spec.nodeName!=n1,metadata.name!=p3"}).json()["items"]) == ["p2"]
    rv = c.get(pods).json()["metadata"]["resourceVersion"]
    t, events = watching(server, pods, {"resourceVersion": rv, "fieldSelector": "spec.nodeName=n1", "timeoutSeconds": "3"})
    merge = {"Content-Type": "application/merge-patch+json"}
    assert c.patch(f"{pods}/p3", content=json.dumps({"spec": {"nodeName": "n1"}}), headers=merge).status_code == 200
    assert c.patch(f"{pods}/p1", content=json.dumps({"spec": {"nodeName": "n2"}}), headers=merge).status_code == 200
    t.join(15)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "p3"), ("DELETED", "p1")], events
    assert events[1]["object"]["spec"]["nodeName"] == "n1"  # the version that matched

    secrets = "/api/v1/namespaces/default/secrets"
    for name, kind in (("s1", "Opaque"), ("s2", "kubernetes.io/tls")):
        body = {"metadata": {"name": name}, "type": kind, "data": {"tls.crt": "", "tls.key": ""} if "tls" in kind else {}}
        assert c.post(secrets, json=body).status_code == 201
    assert names(c.get(secrets, params={"fieldSelector": "type=kubernetes.io/tls"}).json()["items"]) == ["s2"]
    evs = "/api/v1/namespaces/default/events"
    for name, target in (("e1", "p1"), ("e2", "p2")):
        body = {"metadata": {"name": name}, "involvedObject": {"kind": "Pod", "name": target, "namespace": "default"},
                "reason": "Started", "source": {"component": "kubelet"}}
        assert c.post(evs, json=body).status_code == 201, c.post(evs, json=body).text
    got = c.get(evs, params={"fieldSelector": "involvedObject.name=p2,involvedObject.kind=Pod,source=kubelet"}).json()
    assert names(got["items"]) == ["e2"]
    r = c.get(secrets, params={"fieldSelector": "spec.nodeName=n1"})
    assert r.status_code == 400 and r.json()["message"] == (
        '"spec.nodeName" is not a known field selector: only "metadata.name", "metadata.namespace", "type"')


def test_watching_one_object_by_its_path_and_the_watch_paths(server: ServerThread) -> None:
    """kube's watch of a named object (GET .../NAME?watch=1) is the collection's watch of that name only; the
    deprecated /api/v1/watch/... paths are watches whatever the query says."""
    c = httpx.Client(base_url=server.url, timeout=10)
    start = put(c, "one", {"app": "a"})
    put(c, "two", {"app": "a"})
    t1, by_name = watching(server, f"{NS}/one", {"resourceVersion": start, "timeoutSeconds": "2"})
    t2, by_path = watching(server, "/api/v1/watch/namespaces/default/configmaps",
                           {"resourceVersion": start, "timeoutSeconds": "2", "watch": "0"})
    t3, named_path = watching(server, "/api/v1/watch/namespaces/default/configmaps/two", {"resourceVersion": start, "timeoutSeconds": "2"})
    changed = put(c, "one", {"app": "b"})
    put(c, "two", {"app": "b"})
    for t in (t1, t2, t3):
        t.join(10)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in by_name] == [("MODIFIED", "one")]
    assert by_name[0]["object"]["metadata"]["resourceVersion"] == changed
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in by_path] == [("ADDED", "two"), ("MODIFIED", "one"), ("MODIFIED", "two")]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in named_path] == [("ADDED", "two"), ("MODIFIED", "two")]
    assert c.post("/api/v1/watch/namespaces/default/configmaps", json={}).status_code == 405
    assert c.get("/api/v1/watch").status_code == 404


def test_deleting_a_collection_deletes_what_its_selectors_select(server: ServerThread, etcd: Any, prefix: bytes) -> None:
    """DELETE on a collection (kube's deletecollection, client-go's DeleteCollection): the selected objects go, a
    page of keys at a time; a dry run deletes nothing; Namespaces are not served (405), as kube."""
    c = httpx.Client(base_url=server.url, timeout=20)
    for i in range(1203):  # more than two pages of keys
        body = {"metadata": {"name": f"d{i:04}", "labels": {"batch": "x" if i % 3 else "keep"}}, "data": {"v": str(i)}}
        assert c.post(NS, json=body).status_code == 201
    r = c.request("DELETE", NS, params={"labelSelector": "batch=x", "dryRun": "All"})
    assert r.status_code == 200 and r.json()["status"] == "Success", r.text
    assert len(c.get(NS).json()["items"]) == 1203
    r = c.request("DELETE", NS, params={"labelSelector": "batch=x"})
    assert r.status_code == 200 and r.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                                 "details": {"kind": "configmaps"}}, r.text
    left = names(c.get(NS).json()["items"])
    assert left == [f"d{i:04}" for i in range(0, 1203, 3)]
    stored = etcd.etcdctl("get", prefix.decode() + "configmaps/default/", "--prefix", "--keys-only").split()
    assert len(stored) == len(left)
    assert c.request("DELETE", "/api/v1/namespaces").status_code == 405
    assert c.request("DELETE", "/api/v1/configmaps").status_code == 405  # a namespaced kind: under its namespace only
    resources = {r["name"]: r["verbs"] for r in c.get("/api/v1").json()["resources"]}
    assert "deletecollection" in resources["configmaps"] and "deletecollection" not in resources["namespaces"]


def test_the_status_subresource_is_the_only_way_to_write_status(server: ServerThread) -> None:
    """kube's status subresource (client-go's UpdateStatus/Patch(..., "status")): a write of .../status changes
    the status only; a write of the object keeps the stored status; kinds without it 404; discovery lists it."""
    c = httpx.Client(base_url=server.url, timeout=10)
    pods = "/api/v1/namespaces/default/pods"
    pod = {"metadata": {"name": "s", "labels": {"a": "1"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}
    assert c.post(pods, json=pod).status_code == 201
    current = c.get(f"{pods}/s").json()
    # PUT status: only the status counts (the spec and labels sent with it do not)
    sent = json.loads(json.dumps(current))
    sent["status"] = {"phase": "Running", "podIP": "10.0.0.1"}
    sent["spec"]["containers"][0]["image"] = "ignored"
    sent["metadata"]["labels"] = {"ignored": "1"}
    r = c.put(f"{pods}/s/status", json=sent)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == {"phase": "Running", "podIP": "10.0.0.1"}
    assert out["spec"]["containers"][0]["image"] == "i:1" and out["metadata"]["labels"] == {"a": "1"}
    assert c.put(f"{pods}/s/status", json=sent).status_code == 409  # its resourceVersion is stale now
    # PUT and PATCH of the object keep the status
    obj = c.get(f"{pods}/s").json()
    obj["status"] = {"phase": "Failed"}
    obj["spec"]["containers"][0]["image"] = "i:2"
    r = c.put(f"{pods}/s", json=obj)
    assert r.status_code == 200 and r.json()["status"]["phase"] == "Running" and r.json()["spec"]["containers"][0]["image"] == "i:2"
    merge = {"Content-Type": "application/merge-patch+json"}
    r = c.patch(f"{pods}/s", content=json.dumps({"status": {"phase": "Failed"}, "metadata": {"labels": {"b": "2"}}}), headers=merge)
    assert r.status_code == 200 and r.json()["status"]["phase"] == "Running" and r.json()["metadata"]["labels"] == {"a": "1", "b": "2"}
    # PATCH status: the patch's status only
    r = c.patch(f"{pods}/s/status", content=json.dumps({"status": {"phase": "Succeeded"}, "metadata": {"labels": {"c": "3"}}}),
                headers=merge)
    assert r.status_code == 200 and r.json()["status"] == {"phase": "Succeeded", "podIP": "10.0.0.1"}
    assert r.json()["metadata"]["labels"] == {"a": "1", "b": "2"}
    assert c.get(f"{pods}/s/status").json() == c.get(f"{pods}/s").json()
    assert c.get(f"{pods}/s").json()["status"]["phase"] == "Succeeded"
    assert c.delete(f"{pods}/s/status").status_code == 405
    assert c.get("/api/v1/namespaces/default/secrets/x/status").status_code == 404  # Secrets have none
    assert c.get(f"{pods}/s/log").status_code == 404
    entries = {r["name"]: r for r in c.get("/api/v1").json()["resources"]}
    assert entries["pods/status"]["verbs"] == ["get", "patch", "update"] and "secrets/status" not in entries
