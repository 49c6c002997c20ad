"""labelSelector on lists, watches and watch-lists, against etcd: what is selected, and a watcher's view of
objects whose labels change (kube's watch filter: ADDED when an object starts matching, DELETED when it stops).
Checked in JSON and in typed protobuf (decoded by the protobuf package with Kubernetes' own generated.proto)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional

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


def test_a_watcher_sees_objects_enter_and_leave_its_selection(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    start = put(c, "x", {"app": "db"})
    events: List[Dict[str, Any]] = []
    started = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=server.url, timeout=20) as w, w.stream(
                "GET", NS, params={"watch": "1", "resourceVersion": start, "labelSelector": "app=web", "timeoutSeconds": "4"}) as resp:
            started.set()
            for line in resp.iter_lines():
                if line:
                    events.append(json.loads(line))

    t = threading.Thread(target=watch)
    t.start()
    started.wait(10)
    time.sleep(0.3)
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
