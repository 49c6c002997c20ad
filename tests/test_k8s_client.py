"""The official ``kubernetes`` Python client against the server: list, watch, watch-list."""

from __future__ import annotations

import threading
from typing import Any, Iterator, List

import httpx
import pytest
from kubernetes import client as k8s
from kubernetes import watch

from tests.apiserver_harness import ServerThread

NS = "/api/v1/namespaces/default/secrets"


@pytest.fixture
def server(etcd: Any, prefix: bytes) -> Iterator[ServerThread]:
    with ServerThread(etcd.endpoint, prefix) as srv:
        for name in ("alpha", "beta", "gamma"):
            r = httpx.post(srv.url + NS, json={"metadata": {"name": name}, "data": {"k": "dg=="}}, timeout=10)
            assert r.status_code == 201
        yield srv


@pytest.fixture
def core(server: ServerThread) -> Iterator[k8s.CoreV1Api]:
    config = k8s.Configuration()
    config.host = server.url
    api_client = k8s.ApiClient(config)
    yield k8s.CoreV1Api(api_client)
    api_client.close()


def test_list_namespaced_secret(core: k8s.CoreV1Api) -> None:
    result = core.list_namespaced_secret("default")
    assert [s.metadata.name for s in result.items] == ["alpha", "beta", "gamma"]
    assert result.metadata.resource_version.isdigit()
    assert all(s.data == {"k": "dg=="} and int(s.metadata.resource_version) > 0 for s in result.items)
    page = core.list_namespaced_secret("default", limit=2)
    assert [s.metadata.name for s in page.items] == ["alpha", "beta"] and page.metadata._continue
    rest = core.list_namespaced_secret("default", limit=2, _continue=page.metadata._continue)
    assert [s.metadata.name for s in rest.items] == ["gamma"] and not rest.metadata._continue


def test_watch_stream_from_list_resource_version(core: k8s.CoreV1Api, server: ServerThread) -> None:
    listed = core.list_namespaced_secret("default")
    w = watch.Watch()
    seen: List[tuple] = []

    def change() -> None:
        httpx.post(server.url + NS, json={"metadata": {"name": "delta"}}, timeout=10)
        httpx.delete(server.url + NS + "/alpha", timeout=10)

    threading.Timer(0.5, change).start()
    for event in w.stream(core.list_namespaced_secret, "default", resource_version=listed.metadata.resource_version, timeout_seconds=10):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:
            w.stop()
    assert seen == [("ADDED", "delta"), ("DELETED", "alpha")]


def test_watch_list_with_send_initial_events(core: k8s.CoreV1Api) -> None:
    w = watch.Watch()
    seen: List[tuple] = []
    for event in w.stream(
        core.list_namespaced_secret,
        "default",
        send_initial_events=True,
        allow_watch_bookmarks=True,
        resource_version_match="NotOlderThan",
        timeout_seconds=10,
    ):
        obj = event["object"]
        if event["type"] == "BOOKMARK":
            # the client leaves BOOKMARK objects as dicts
            annotations = (obj.get("metadata") or {}).get("annotations") if isinstance(obj, dict) else obj.metadata.annotations
            seen.append(("BOOKMARK", annotations))
            w.stop()
        else:
            seen.append((event["type"], obj.metadata.name))
    assert seen == [
        ("ADDED", "alpha"), ("ADDED", "beta"), ("ADDED", "gamma"),
        ("BOOKMARK", {"k8s.io/initial-events-end": "true"}),
    ]
