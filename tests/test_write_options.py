"""A write's options as kube-apiserver reads them: ``dryRun`` on creates, updates and deletes, and a
DELETE's ``DeleteOptions`` (preconditions, dry run, propagation) from its body in every request format
(bodies written by stdlib json, cbor2 and the protobuf package with Kubernetes' own ``generated.proto``)
or from its query.  Checked against what is in etcd afterwards (real etcd)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any, Dict, Iterator

import cbor2
import httpx
import pytest

from tests.apiserver_harness import ServerThread

NS = "/api/v1/namespaces/default/secrets"
JSON = {"Content-Type": "application/json"}
PREFIX = f"/registry/test-{uuid.uuid4().hex}/"


@pytest.fixture(scope="module")
def server(etcd: Any) -> Iterator[ServerThread]:
    with ServerThread(etcd.endpoint, PREFIX.encode()) as srv:
        yield srv


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def secret(name: str, value: bytes = b"v") -> Dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"l": "1"}}, "type": "Opaque", "data": {"k": base64.b64encode(value).decode()}}


def created(c: httpx.Client, name: str) -> Dict[str, Any]:
    r = c.post(NS, json=secret(name))
    assert r.status_code == 201, r.text
    return dict(r.json())


def status_of(r: httpx.Response, code: int, reason: str) -> Dict[str, Any]:
    assert r.status_code == code, r.text
    status = r.json()
    assert status["kind"] == "Status" and status["code"] == code and status["reason"] == reason, status
    return dict(status)


# ----------------------------------------------------------------------------- dryRun


def test_a_dry_run_create_answers_the_object_and_stores_nothing(client: httpx.Client, etcd: Any) -> None:
    name = f"dry-{uuid.uuid4().hex[:8]}"
    r = client.post(NS, params={"dryRun": "All"}, json=secret(name, b"\x00\xff"))
    assert r.status_code == 201, r.text
    obj = r.json()
    assert obj["metadata"]["name"] == name and obj["metadata"]["uid"] and obj["metadata"]["creationTimestamp"]
    assert "resourceVersion" not in obj["metadata"]  # as kube: nothing was written at any revision
    assert base64.b64decode(obj["data"]["k"]) == b"\x00\xff"
    status_of(client.get(f"{NS}/{name}"), 404, "NotFound")
    assert etcd.etcdctl("get", "--prefix", PREFIX, "--keys-only").count(name) == 0
    # an object already there is still a conflict
    created(client, name)
    status_of(client.post(NS, params={"dryRun": "All"}, json=secret(name)), 409, "AlreadyExists")


def test_a_dry_run_update_answers_the_change_and_keeps_the_object(client: httpx.Client) -> None:
    name = f"dry-{uuid.uuid4().hex[:8]}"
    obj = created(client, name)
    changed = dict(obj, data={"k": base64.b64encode(b"changed").decode()})
    r = client.put(f"{NS}/{name}", params={"dryRun": "All"}, json=changed)
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["data"]["k"]) == b"changed"
    assert r.json()["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    assert client.get(f"{NS}/{name}").json() == obj  # unchanged, at its revision
    # a stale resourceVersion is a conflict in a dry run too
    client.put(f"{NS}/{name}", json=changed).raise_for_status()
    status_of(client.put(f"{NS}/{name}", params={"dryRun": "All"}, json=changed), 409, "Conflict")


@pytest.mark.parametrize("method, kind", [("POST", "CreateOptions"), ("PUT", "UpdateOptions"), ("DELETE", "DeleteOptions")])
def test_a_dry_run_value_kube_does_not_know_is_a_422_and_writes_nothing(client: httpx.Client, method: str, kind: str) -> None:
    name = f"dry-{uuid.uuid4().hex[:8]}"
    obj = created(client, name)
    url = NS if method == "POST" else f"{NS}/{name}"
    body = secret(f"{name}-new") if method == "POST" else (obj if method == "PUT" else None)
    r = client.request(method, url, params={"dryRun": "Yes"}, json=body)
    status = status_of(r, 422, "Invalid")
    assert status["message"] == f'{kind}.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{{"Yes"}}: supported values: "All"'
    assert status["details"]["causes"][0]["field"] == "dryRun"
    assert client.get(f"{NS}/{name}").json() == obj
    status_of(client.get(f"{NS}/{name}-new"), 404, "NotFound")


# ----------------------------------------------------------------------------- DeleteOptions


def delete_body(fmt: str, options: Dict[str, Any], kube_proto: Any) -> Dict[str, Any]:
    """httpx keyword arguments of a DELETE whose body is ``options`` as a DeleteOptions in ``fmt``."""
    if fmt == "json":
        content = json.dumps({"kind": "DeleteOptions", "apiVersion": "v1", **options}).encode()
        return {"content": content, "headers": JSON}
    if fmt == "cbor":
        return {"content": cbor2.dumps({"kind": "DeleteOptions", "apiVersion": "v1", **options}),
                "headers": {"Content-Type": "application/cbor"}}
    msg = kube_proto.message("k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions")()
    for key, value in options.items():
        if key == "preconditions":
            for field, text in value.items():
                setattr(msg.preconditions, field, text)
        elif key == "dryRun":
            msg.dryRun.extend(value)
        else:
            setattr(msg, key, value)
    return {"content": kube_proto.encode_object(msg, "v1", "DeleteOptions"),
            "headers": {"Content-Type": "application/vnd.kubernetes.protobuf"}}


@pytest.mark.parametrize("fmt", ["json", "cbor", "protobuf"])
def test_delete_preconditions_in_every_body_format(client: httpx.Client, kube_proto: Any, fmt: str) -> None:
    name = f"pre-{uuid.uuid4().hex[:8]}"
    obj = created(client, name)
    uid, rv = obj["metadata"]["uid"], obj["metadata"]["resourceVersion"]
    other = str(uuid.uuid4())
    r = client.request("DELETE", f"{NS}/{name}", **delete_body(fmt, {"preconditions": {"uid": other}}, kube_proto))
    status = status_of(r, 409, "Conflict")
    assert status["message"] == (f'Operation cannot be fulfilled on secrets "{name}": Precondition failed: '
                                 f"UID in precondition: {other}, UID in object meta: {uid}")
    r = client.request("DELETE", f"{NS}/{name}", **delete_body(fmt, {"preconditions": {"resourceVersion": "1"}}, kube_proto))
    assert "ResourceVersion in precondition: 1, ResourceVersion in object meta: " + rv in status_of(r, 409, "Conflict")["message"]
    assert client.get(f"{NS}/{name}").json() == obj  # both left it alone
    r = client.request("DELETE", f"{NS}/{name}", **delete_body(fmt, {"dryRun": ["All"], "preconditions": {"uid": uid}}, kube_proto))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
    assert r.json() == obj
    assert client.get(f"{NS}/{name}").json() == obj  # a dry run
    options = {"preconditions": {"uid": uid, "resourceVersion": rv}, "propagationPolicy": "Background", "gracePeriodSeconds": 0}
    r = client.request("DELETE", f"{NS}/{name}", **delete_body(fmt, options, kube_proto))
    assert r.status_code == 200, r.text
    assert r.json()["metadata"]["uid"] == uid
    status_of(client.get(f"{NS}/{name}"), 404, "NotFound")


def test_a_uid_precondition_protects_a_recreated_object(client: httpx.Client) -> None:
    """What UID preconditions are for: a controller that deletes what it saw does not delete its successor."""
    name = f"pre-{uuid.uuid4().hex[:8]}"
    first = created(client, name)
    client.delete(f"{NS}/{name}").raise_for_status()
    second = created(client, name)
    body = {"preconditions": {"uid": first["metadata"]["uid"]}}
    status_of(client.request("DELETE", f"{NS}/{name}", json=body), 409, "Conflict")
    assert client.get(f"{NS}/{name}").json() == second


def test_delete_options_from_the_query_without_a_body(client: httpx.Client) -> None:
    name = f"q-{uuid.uuid4().hex[:8]}"
    obj = created(client, name)
    r = client.delete(f"{NS}/{name}", params={"dryRun": "All", "propagationPolicy": "Foreground", "gracePeriodSeconds": "5"})
    assert r.status_code == 200 and r.json() == obj
    assert client.get(f"{NS}/{name}").json() == obj
    status_of(client.delete(f"{NS}/{name}", params={"gracePeriodSeconds": "soon"}), 400, "BadRequest")
    status_of(client.delete(f"{NS}/{name}", params={"orphanDependents": "maybe"}), 400, "BadRequest")
    assert client.delete(f"{NS}/{name}", params={"orphanDependents": "false"}).status_code == 200
    status_of(client.get(f"{NS}/{name}"), 404, "NotFound")


@pytest.mark.parametrize(
    "body, code, words",
    [
        ({"propagationPolicy": "Sometimes"}, 422, 'propagationPolicy: Unsupported value: "Sometimes": supported values: "Background", "Foreground", "Orphan"'),
        ({"propagationPolicy": "Orphan", "orphanDependents": True}, 422, "orphanDependents and deletionPropagation cannot be both set"),
        ({"dryRun": ["All", "Some"]}, 422, 'Unsupported value: []string{"All", "Some"}'),
        ({"kind": "Secret", "apiVersion": "v1"}, 400, "must be a DeleteOptions"),
        ({"preconditions": "uid"}, 400, "preconditions must be an object"),
        ({"preconditions": {"uid": 7}}, 400, "preconditions.uid must be a string"),
        ({"gracePeriodSeconds": "30"}, 400, "gracePeriodSeconds must be an integer"),
        ({"dryRun": "All"}, 400, "dryRun must be a list"),
        ([1, 2], 400, "must be an object"),
    ],
)
def test_delete_options_kube_refuses_are_refused_and_delete_nothing(client: httpx.Client, body: Any, code: int, words: str) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    obj = created(client, name)
    r = client.request("DELETE", f"{NS}/{name}", json=body)
    status = status_of(r, code, "Invalid" if code == 422 else "BadRequest")
    assert words in status["message"], status
    assert client.get(f"{NS}/{name}").json() == obj


@pytest.mark.parametrize("content, content_type", [
    (b"{not json", "application/json"),
    (b"\xbf", "application/cbor"),
    (b"k8s\x00\x0a", "application/vnd.kubernetes.protobuf"),
])
def test_a_delete_body_that_does_not_decode_is_a_400_and_deletes_nothing(client: httpx.Client, content: bytes, content_type: str) -> None:
    name = f"bad-{uuid.uuid4().hex[:8]}"
    obj = created(client, name)
    r = client.request("DELETE", f"{NS}/{name}", content=content, headers={"Content-Type": content_type})
    status_of(r, 400, "BadRequest")
    assert client.get(f"{NS}/{name}").json() == obj
