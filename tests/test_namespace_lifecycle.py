"""kube-apiserver's NamespaceLifecycle admission and namespace termination (issue #11), over real etcd: a
create or update in a namespace without a Namespace object is kube's 404 and stores nothing; the system
namespaces exist after start-up, also when another replica made them first; the immortal namespaces
cannot be deleted; deleting a Namespace terminates it (its objects deleted, each a DELETED event, then
the Namespace; creates in it meanwhile 403, a second DELETE 409), also when the server that took the
DELETE stopped before it finished; and ``namespace_lifecycle=False`` keeps the old behaviour.

kube's answers, as k8s.io/apiserver's admission/plugin/namespace/lifecycle, the namespace registry and
apimachinery's errors.NewNotFound / NewForbidden / NewConflict make them, and its system namespaces
controller's list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable, Dict, Iterator, List

import httpx
import pytest

from streamcodec import cli
from streamcodec.server.app import ServerConfig
from tests.apiserver_harness import ServerThread

SYSTEM = ["default", "kube-node-lease", "kube-public", "kube-system"]  # as listed: in key order
IMMORTAL = ["default", "kube-system", "kube-public"]


def started(srv: ServerThread) -> ServerThread:
    """``srv`` once its first try to create the system namespaces has ended."""
    assert srv.app.namespaces is not None
    srv.call(srv.app.store())  # lifespan start-up did this already; harmless again
    srv.call(srv.app.namespaces.first_try.wait(), timeout=30)
    return srv


@pytest.fixture
def server(etcd: Any, prefix: bytes) -> Iterator[ServerThread]:
    with ServerThread(etcd.endpoint, prefix, namespace_lifecycle=True) as srv:
        yield started(srv)


def status_of(r: httpx.Response, code: int, reason: str, message: str, details: Dict[str, Any]) -> None:
    assert r.status_code == code, (r.status_code, r.text)
    status = r.json()
    assert status["kind"] == "Status" and status["apiVersion"] == "v1" and status["status"] == "Failure", status
    assert (status["code"], status["reason"], status["message"]) == (code, reason, message), status
    assert status["details"] == details, status


def stored_keys(etcd: Any, prefix: bytes) -> List[str]:
    """Every key under ``prefix``, read from etcd itself (not through the server)."""
    out = etcd.etcdctl("get", "--prefix", "--keys-only", prefix.decode())
    return sorted(line[len(prefix):] for line in out.splitlines() if line.strip())


def names(r: httpx.Response) -> List[str]:
    assert r.status_code == 200, r.text
    return [item["metadata"]["name"] for item in r.json()["items"]]


def test_a_create_in_a_namespace_without_a_namespace_object_is_404_and_stores_nothing(server: ServerThread, etcd: Any,
                                                                                      prefix: bytes) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    cms = "/api/v1/namespaces/team-a/configmaps"
    for body in ({"metadata": {"name": "cm"}, "data": {"a": "b"}}, {"metadata": {"generateName": "cm-"}}):
        status_of(c.post(cms, json=body), 404, "NotFound", 'namespaces "team-a" not found', {"name": "team-a", "kind": "namespaces"})
    assert not [k for k in stored_keys(etcd, prefix) if not k.startswith("namespaces/")]
    assert c.get(cms).json()["items"] == []  # reads are not admission's: an empty list, as in kube

    # created the way a kube client does it, then the same create succeeds
    assert c.post("/api/v1/namespaces", json={"metadata": {"name": "team-a"}}).status_code == 201
    created = c.post(cms, json={"metadata": {"name": "cm"}, "data": {"a": "b"}})
    assert created.status_code == 201, created.text
    assert c.get(cms + "/cm").json()["data"] == {"a": "b"}
    assert "configmaps/team-a/cm" in stored_keys(etcd, prefix)


def test_an_update_in_a_missing_namespace_is_404_and_a_delete_is_allowed(server: ServerThread, etcd: Any, prefix: bytes) -> None:
    """What another writer left in a namespace without a Namespace object: kube's plugin refuses updates there
    (after the object is read, so a missing object is its own 404) and allows deletes."""
    c = httpx.Client(base_url=server.url, timeout=10)
    etcd.etcdctl("put", prefix.decode() + "configmaps/gone/left", json.dumps({"metadata": {"name": "left", "namespace": "gone"},
                                                                              "data": {"a": "1"}, "kind": "ConfigMap", "apiVersion": "v1"}))
    cm = "/api/v1/namespaces/gone/configmaps/left"
    status_of(c.put(cm, json={"metadata": {"name": "left"}, "data": {"a": "2"}}), 404, "NotFound", 'namespaces "gone" not found',
              {"name": "gone", "kind": "namespaces"})
    assert c.get(cm).json()["data"] == {"a": "1"}  # unchanged
    status_of(c.put("/api/v1/namespaces/gone/configmaps/never", json={"metadata": {"name": "never"}}), 404, "NotFound",
              'configmaps "never" not found', {"name": "never", "kind": "configmaps"})
    assert c.delete(cm).status_code == 200
    assert "configmaps/gone/left" not in stored_keys(etcd, prefix)


def test_admission_comes_before_the_objects_validation_as_in_kube(server: ServerThread) -> None:
    """kube's NamespaceLifecycle is a mutating admission plugin: it runs before the name is validated."""
    c = httpx.Client(base_url=server.url, timeout=10)
    for body in ({"metadata": {"name": "Not_A_Name"}}, {"metadata": {}}):
        status_of(c.post("/api/v1/namespaces/nowhere/secrets", json=body), 404, "NotFound", 'namespaces "nowhere" not found',
                  {"name": "nowhere", "kind": "namespaces"})
    assert c.post("/api/v1/namespaces/default/secrets", json={"metadata": {"name": "Not_A_Name"}}).status_code == 422


def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def test_deleting_a_namespace_deletes_its_objects_then_itself_each_a_watch_event(server: ServerThread, etcd: Any, prefix: bytes) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    created = c.post("/api/v1/namespaces", json={"metadata": {"name": "doomed"}})
    assert created.status_code == 201, created.text
    assert created.json()["spec"] == {"finalizers": ["kubernetes"]} and created.json()["status"] == {"phase": "Active"}
    for ns in ("doomed", "kept"):
        if ns == "kept":
            assert c.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code == 201
        for i in range(3):
            assert c.post(f"/api/v1/namespaces/{ns}/configmaps", json={"metadata": {"name": f"cm-{i}"}}).status_code == 201
        assert c.post(f"/api/v1/namespaces/{ns}/secrets", json={"metadata": {"name": "s"}}).status_code == 201
    listed = c.get("/api/v1/namespaces/doomed/configmaps").json()
    params = {"watch": "1", "resourceVersion": listed["metadata"]["resourceVersion"], "timeoutSeconds": "20"}
    deleted: List[str] = []
    with httpx.stream("GET", server.url + "/api/v1/namespaces/doomed/configmaps", params=params, timeout=30) as watch:
        r = c.delete("/api/v1/namespaces/doomed")
        assert r.status_code == 200, r.text
        marked = r.json()
        assert marked["status"]["phase"] == "Terminating" and marked["metadata"]["deletionTimestamp"], marked
        for line in watch.iter_lines():
            event = json.loads(line)
            assert event["type"] == "DELETED", event
            deleted.append(event["object"]["metadata"]["name"])
            if len(deleted) == 3:
                break
    assert sorted(deleted) == ["cm-0", "cm-1", "cm-2"]
    until(lambda: c.get("/api/v1/namespaces/doomed").status_code == 404, "the namespace is gone")
    assert not [k for k in stored_keys(etcd, prefix) if "/doomed" in k]
    assert [k for k in stored_keys(etcd, prefix) if "/kept/" in k] == ["configmaps/kept/cm-0", "configmaps/kept/cm-1",
                                                                        "configmaps/kept/cm-2", "secrets/kept/s"]
    status_of(c.post("/api/v1/namespaces/doomed/secrets", json={"metadata": {"name": "s"}}), 404, "NotFound",
              'namespaces "doomed" not found', {"name": "doomed", "kind": "namespaces"})


def test_a_terminating_namespace_refuses_creates_and_a_second_delete_as_kube(server: ServerThread, etcd: Any, prefix: bytes) -> None:
    """A finalizer nobody here removes keeps the namespace terminating once its content is gone (kube: until its
    owner calls /finalize), so what kube answers meanwhile can be seen."""
    c = httpx.Client(base_url=server.url, timeout=10)
    r = c.post("/api/v1/namespaces", json={"metadata": {"name": "held"}, "spec": {"finalizers": ["example.com/hold"]}})
    assert r.status_code == 201 and r.json()["spec"]["finalizers"] == ["example.com/hold", "kubernetes"], r.text
    assert r.json()["metadata"]["labels"] == {"kubernetes.io/metadata.name": "held"}
    assert c.post("/api/v1/namespaces/held/configmaps", json={"metadata": {"name": "cm"}}).status_code == 201
    assert c.delete("/api/v1/namespaces/held").status_code == 200

    def finalized() -> bool:
        return c.get("/api/v1/namespaces/held").json()["spec"]["finalizers"] == ["example.com/hold"]

    until(finalized, "the kubernetes finalizer removed")
    assert not [k for k in stored_keys(etcd, prefix) if k.startswith("configmaps/held/")]
    held = c.get("/api/v1/namespaces/held").json()
    assert held["status"]["phase"] == "Terminating" and held["metadata"]["deletionTimestamp"]
    status_of(c.post("/api/v1/namespaces/held/configmaps", json={"metadata": {"name": "late"}}), 403, "Forbidden",
              'configmaps "late" is forbidden: unable to create new content in namespace held because it is being terminated',
              {"name": "late", "kind": "configmaps", "causes": [
                  {"reason": "NamespaceTerminating", "message": "namespace held is being terminated", "field": "metadata.namespace"}]})
    status_of(c.post("/api/v1/namespaces/held/configmaps", json={"metadata": {"generateName": "late-"}}), 403, "Forbidden",
              'configmaps "late-" is forbidden: unable to create new content in namespace held because it is being terminated',
              {"name": "late-", "kind": "configmaps", "causes": [
                  {"reason": "NamespaceTerminating", "message": "namespace held is being terminated", "field": "metadata.namespace"}]})
    status_of(c.delete("/api/v1/namespaces/held"), 409, "Conflict",
              'Operation cannot be fulfilled on namespaces "held": The system is ensuring all content is removed from this '
              "namespace.  Upon completion, this namespace will automatically be purged by the system.",
              {"name": "held", "kind": "namespaces"})
    # an update keeps the status and finalizers (they are the /status and /finalize subresources' to change)
    r = c.put("/api/v1/namespaces/held", json={"metadata": {"name": "held", "labels": {"a": "b"}}, "spec": {}, "status": {"phase": "Active"}})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["spec"]) == (held["status"], held["spec"])
    assert r.json()["metadata"]["labels"] == {"a": "b", "kubernetes.io/metadata.name": "held"}
    assert r.json()["metadata"]["deletionTimestamp"] == held["metadata"]["deletionTimestamp"]
    # the finalizer's owner is done: the finalize subresource empties the list, and the namespace goes
    r = c.put("/api/v1/namespaces/held/finalize", json={"metadata": {"name": "held"}, "spec": {"finalizers": []}})
    assert r.status_code == 200 and r.json()["spec"]["finalizers"] == [], r.text
    status_of(c.get("/api/v1/namespaces/held"), 404, "NotFound", 'namespaces "held" not found', {"name": "held", "kind": "namespaces"})


def test_the_finalize_subresource_of_an_active_namespace_only_sets_its_finalizers(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    assert c.post("/api/v1/namespaces", json={"metadata": {"name": "fin"}}).status_code == 201
    r = c.put("/api/v1/namespaces/fin/finalize", json={"spec": {"finalizers": ["a", "a", "b"]}})
    assert r.status_code == 200 and r.json()["spec"]["finalizers"] == ["a", "b"] and r.json()["status"] == {"phase": "Active"}, r.text
    assert c.put("/api/v1/namespaces/fin/finalize", json={"spec": {"finalizers": [1]}}).status_code == 422
    assert c.get("/api/v1/namespaces/fin/finalize").status_code == 405
    status_of(c.put("/api/v1/namespaces/none/finalize", json={"spec": {}}), 404, "NotFound", 'namespaces "none" not found',
              {"name": "none", "kind": "namespaces"})


def test_a_client_cannot_mark_an_object_deleted(server: ServerThread) -> None:
    """deletionTimestamp is the server's: dropped on a create, kept as it was on an update (a marked namespace
    would otherwise be wiped at the next start, and refuse its creates)."""
    c = httpx.Client(base_url=server.url, timeout=10)
    marked = {"deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 0}
    r = c.post("/api/v1/namespaces", json={"metadata": {"name": "unmarked", **marked}})
    assert r.status_code == 201 and "deletionTimestamp" not in r.json()["metadata"], r.text
    r = c.put("/api/v1/namespaces/unmarked", json={"metadata": {"name": "unmarked", **marked}})
    assert r.status_code == 200 and "deletionTimestamp" not in r.json()["metadata"], r.text
    r = c.post("/api/v1/namespaces/unmarked/configmaps", json={"metadata": {"name": "cm", **marked}})
    assert r.status_code == 201 and "deletionGracePeriodSeconds" not in r.json()["metadata"], r.text


def test_a_termination_leaves_a_namespace_recreated_under_its_name_alone(server: ServerThread, etcd: Any, prefix: bytes) -> None:
    """A finalizer of an earlier namespace of the same name (another uid) must not touch the new one or its objects."""
    c = httpx.Client(base_url=server.url, timeout=10)
    assert c.post("/api/v1/namespaces", json={"metadata": {"name": "again"}}).status_code == 201
    assert c.post("/api/v1/namespaces/again/configmaps", json={"metadata": {"name": "cm"}}).status_code == 201
    assert c.delete("/api/v1/namespaces/again").status_code == 200
    until(lambda: c.get("/api/v1/namespaces/again").status_code == 404, "the first namespace is gone")
    assert c.post("/api/v1/namespaces", json={"metadata": {"name": "again"}}).status_code == 201
    assert c.post("/api/v1/namespaces/again/configmaps", json={"metadata": {"name": "cm2"}}).status_code == 201
    lifecycle = server.app.namespaces
    assert lifecycle is not None

    async def stale_termination() -> None:  # as if the first one's finalizer were still running
        lifecycle._finish("again", "the-first-namespace-uid")
        await asyncio.gather(*lifecycle._finalizers.values())

    server.call(stale_termination(), timeout=30)
    again = c.get("/api/v1/namespaces/again").json()
    assert again["status"] == {"phase": "Active"} and again["spec"]["finalizers"] == ["kubernetes"], again
    assert "configmaps/again/cm2" in stored_keys(etcd, prefix)


def test_a_namespace_and_the_body_naming_another_is_400_before_admission(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    r = c.post("/api/v1/namespaces/nowhere/secrets", json={"metadata": {"name": "s", "namespace": "other"}})
    assert r.status_code == 400 and "does not match the namespace" in r.json()["message"], r.text


def test_a_server_that_starts_finishes_a_termination_left_unfinished(etcd: Any, prefix: bytes) -> None:
    """As if the server that took the DELETE had stopped before deleting anything: etcd holds the marked namespace."""
    def put(key: str, obj: Dict[str, Any]) -> None:
        etcd.etcdctl("put", prefix.decode() + key, json.dumps({"metadata": obj.pop("metadata"), **obj}))

    put("namespaces/left", {"metadata": {"name": "left", "uid": "u", "deletionTimestamp": "2026-12-02T00:00:00Z"},
                            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Terminating"}, "kind": "Namespace", "apiVersion": "v1"})
    for i in range(5):
        put(f"secrets/left/s-{i}", {"metadata": {"name": f"s-{i}", "namespace": "left"}, "kind": "Secret", "apiVersion": "v1"})
    with ServerThread(etcd.endpoint, prefix, namespace_lifecycle=True) as srv:
        started(srv)
        until(lambda: not [k for k in stored_keys(etcd, prefix) if "left" in k], "the namespace and its secrets are gone")
        assert httpx.get(srv.url + "/api/v1/namespaces/left", timeout=10).status_code == 404


def test_the_system_namespaces_exist_after_start_up_and_a_second_replica_starts_fine(etcd: Any, prefix: bytes,
                                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streamcodec.server")
    with ServerThread(etcd.endpoint, prefix, namespace_lifecycle=True) as first:
        # the first request, as soon as the server listens: it meets default whether or not it is made yet
        r = httpx.post(first.url + "/api/v1/namespaces/default/secrets", json={"metadata": {"name": "s"}}, timeout=30)
        assert r.status_code == 201, r.text
        started(first)
        listed = httpx.get(first.url + "/api/v1/namespaces", timeout=10).json()["items"]
        assert [ns["metadata"]["name"] for ns in listed] == SYSTEM
        assert stored_keys(etcd, prefix) == ["namespaces/" + ns for ns in SYSTEM] + ["secrets/default/s"]
        with ServerThread(etcd.endpoint, prefix, namespace_lifecycle=True) as second:  # a replica on the same etcd prefix
            started(second)
            again = httpx.get(second.url + "/api/v1/namespaces", timeout=10).json()["items"]
            assert again == listed  # create-if-absent: the first replica's objects, untouched (uids, revisions)
            r = httpx.post(second.url + "/api/v1/namespaces/kube-system/configmaps", json={"metadata": {"name": "cm"}}, timeout=10)
            assert r.status_code == 201, r.text
    assert not [r.getMessage() for r in caplog.records if r.name == "streamcodec.server"]


@pytest.mark.parametrize("namespace", IMMORTAL)
def test_deleting_an_immortal_namespace_is_403_and_it_stays(server: ServerThread, namespace: str) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    status_of(c.delete(f"/api/v1/namespaces/{namespace}"), 403, "Forbidden",
              f'namespaces "{namespace}" is forbidden: this namespace may not be deleted', {"name": namespace, "kind": "namespaces"})
    assert c.get(f"/api/v1/namespaces/{namespace}").status_code == 200
    assert c.post(f"/api/v1/namespaces/{namespace}/secrets", json={"metadata": {"name": "still"}}).status_code == 201


def test_other_namespaces_may_be_deleted_kube_node_lease_too(server: ServerThread) -> None:
    """kube's plugin guards three namespaces; kube-node-lease is a system namespace but not immortal."""
    c = httpx.Client(base_url=server.url, timeout=10)
    assert c.post("/api/v1/namespaces", json={"metadata": {"name": "mine"}}).status_code == 201
    for namespace in ("mine", "kube-node-lease"):
        assert c.delete(f"/api/v1/namespaces/{namespace}").status_code == 200, namespace
        until(lambda: c.get(f"/api/v1/namespaces/{namespace}").status_code == 404, f"{namespace} is gone")
        assert c.post(f"/api/v1/namespaces/{namespace}/secrets", json={"metadata": {"name": "s"}}).status_code == 404


def test_with_namespace_lifecycle_off_objects_go_in_any_namespace(etcd: Any, prefix: bytes) -> None:
    """The old behaviour (ServerThread's default): no check, no system namespaces, nothing immortal."""
    with ServerThread(etcd.endpoint, prefix, namespace_lifecycle=False) as srv:
        assert srv.app.namespaces is None
        c = httpx.Client(base_url=srv.url, timeout=10)
        assert c.post("/api/v1/namespaces/team-a/configmaps", json={"metadata": {"name": "cm"}}).status_code == 201
        assert c.put("/api/v1/namespaces/team-a/configmaps/cm", json={"metadata": {"name": "cm"}, "data": {"a": "b"}}).status_code == 200
        assert names(c.get("/api/v1/namespaces")) == []
        assert c.post("/api/v1/namespaces", json={"metadata": {"name": "default"}}).status_code == 201
        assert c.delete("/api/v1/namespaces/default").status_code == 200
        assert stored_keys(etcd, prefix) == ["configmaps/team-a/cm"]


def test_namespace_lifecycle_is_on_by_default_and_serve_can_turn_it_off() -> None:
    assert ServerConfig().namespace_lifecycle is True
    parse = cli.build_parser().parse_args
    assert parse(["serve", "--etcd", "x:1"]).namespace_lifecycle is True
    assert parse(["serve", "--etcd", "x:1", "--no-namespace-lifecycle"]).namespace_lifecycle is False


def test_deleting_a_terminating_namespace_without_finalizers_deletes_it(server: ServerThread, etcd: Any, prefix: bytes) -> None:
    """What kube's namespace registry does with a DELETE once nothing is left to wait for (as another writer left it)."""
    etcd.etcdctl("put", prefix.decode() + "namespaces/bare", json.dumps({
        "metadata": {"name": "bare", "uid": "u", "deletionTimestamp": "2026-12-02T00:00:00Z"}, "spec": {},
        "status": {"phase": "Terminating"}, "kind": "Namespace", "apiVersion": "v1"}))
    c = httpx.Client(base_url=server.url, timeout=10)
    r = c.delete("/api/v1/namespaces/bare")
    assert r.status_code == 200 and r.json()["metadata"]["name"] == "bare", r.text
    assert "namespaces/bare" not in stored_keys(etcd, prefix)
