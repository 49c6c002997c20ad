"""The official ``kubernetes`` Python client against the server: list, watch, watch-list, patches, status, deletecollection."""

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


def test_patches_status_and_collection_deletes_of_the_python_client(core: k8s.CoreV1Api) -> None:
    """The client's patch_* calls (a dict body goes as a strategic merge patch, a list as a JSON Patch), its
    *_status calls (the status subresource) and delete_collection_* (label-selected)."""
    out = core.patch_namespaced_secret("alpha", "default", {"metadata": {"labels": {"a": "1"}}, "data": {"n": "bg=="}})
    assert out.metadata.labels == {"a": "1"} and out.data == {"k": "dg==", "n": "bg=="}
    out = core.patch_namespaced_secret("alpha", "default", [{"op": "remove", "path": "/data/k"}])
    assert out.data == {"n": "bg=="}
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="p"),
                    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="a", image="a:1"), k8s.V1Container(name="b", image="b:1")]))
    core.create_namespaced_pod("default", pod)
    out = core.patch_namespaced_pod("p", "default", {"spec": {"containers": [{"name": "b", "image": "b:2"}]}})
    assert [(c.name, c.image) for c in out.spec.containers] == [("a", "a:1"), ("b", "b:2")]  # merged by name
    assert core.read_namespaced_pod("p", "default").spec.containers[1].image == "b:2"
    status = core.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Running"}})
    assert status.status.phase == "Running" and [c.image for c in status.spec.containers] == ["a:1", "b:2"]
    pod = core.read_namespaced_pod("p", "default")
    pod.status.phase = "Succeeded"
    assert core.replace_namespaced_pod_status("p", "default", pod).status.phase == "Succeeded"
    deleted = core.delete_collection_namespaced_secret("default", label_selector="a=1")
    assert deleted.status == "Success" and [s.metadata.name for s in core.list_namespaced_secret("default").items] == ["beta", "gamma"]
