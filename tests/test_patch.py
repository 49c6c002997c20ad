"""PATCH as kube-apiserver serves it: JSON merge patch (RFC 7386) and JSON Patch (RFC 6902).

The patch functions are checked against the RFCs' own examples (RFC 7386 appendix A, RFC 6902
appendix A); the server against real etcd: what is stored afterwards, the revision a patch is
conditional on, concurrent patches, dry runs, fieldValidation and kube's error codes.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import uuid
from typing import Any, Dict, Iterator, List

import httpx
import pytest

from streamcodec.server import patches
from streamcodec.server.status import APIError
from tests.apiserver_harness import ServerThread

NS = "/api/v1/namespaces/default/secrets"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSONPATCH = {"Content-Type": "application/json-patch+json"}
PREFIX = f"/registry/test-{uuid.uuid4().hex}/"


# ----------------------------------------------------------------------------- the RFCs' examples

# RFC 7386, appendix A: (original, patch, result)
RFC7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize("original, patch, result", RFC7386)
def test_merge_patch_gives_rfc_7386s_results(original: Any, patch: Any, result: Any) -> None:
    before = json.dumps(original)
    assert patches.merge_patch(original, patch) == result
    assert json.dumps(original) == before  # the target is left as it was


# RFC 6902, appendix A: (document, patch, result or the error it must be)
RFC6902 = [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"baz": "qux", "foo": "bar"}),
    ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo", "foo": "bar"}),
    ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ({"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ({"baz": "qux", "foo": ["a", 2, "c"]},
     [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}],
     {"baz": "qux", "foo": ["a", 2, "c"]}),
    ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}], "testing value /baz failed: test failed"),
    ({"foo": "bar"}, [{"op": "add", "path": "/child", "value": {"grandchild": {}}}], {"foo": "bar", "child": {"grandchild": {}}}),
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}], {"foo": "bar", "baz": "qux"}),
    ({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}], 'add operation does not apply: doc is missing path: "/baz/bat"'),
    ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
    ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": "10"}], "testing value /~01 failed: test failed"),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}], {"foo": ["bar", ["abc", "def"]]}),
]


def test_a_merge_patchs_result_shares_nothing_with_the_patch() -> None:
    """The result is pruned in place (unknown fields) and a retried write applies the patch again: a list
    (and the objects in it) taken from the patch must be copies, or the retry sees a pruned patch."""
    patch = {"spec": {"containers": [{"name": "a", "unknownField": 1}]}, "data": {"k": "v"}}
    result = patches.merge_patch({"spec": {}}, patch)
    result["spec"]["containers"][0].pop("unknownField")
    result["data"]["k"] = "changed"
    assert patch == {"spec": {"containers": [{"name": "a", "unknownField": 1}]}, "data": {"k": "v"}}


@pytest.mark.parametrize("document, patch, result", RFC6902)
def test_json_patch_gives_rfc_6902s_results(document: Any, patch: List[Dict[str, Any]], result: Any) -> None:
    before = json.dumps(document)
    patches.check_patch(patches.JSON_PATCH, patch)
    if isinstance(result, str):
        with pytest.raises(APIError) as info:
            patches.apply_patch(patches.JSON_PATCH, document, patch)
        assert info.value.code == 422 and info.value.status()["details"]["causes"][0]["message"] == result
    else:
        assert patches.apply_patch(patches.JSON_PATCH, document, patch) == result
    assert json.dumps(document) == before  # all or nothing, on a copy


@pytest.mark.parametrize("patch, message", [
    ([{"op": "add", "path": "/a/01", "value": 1}], "Unable to access invalid index: 01"),
    ([{"op": "remove", "path": "/a/5"}], 'remove operation does not apply: doc is missing path: "/a/5"'),
    ([{"op": "replace", "path": "/b", "value": 1}], "replace operation does not apply: doc is missing path: /b"),
    ([{"op": "copy", "from": "/b", "path": "/c"}], "copy operation does not apply: doc is missing from path: /b"),
    ([{"op": "move", "from": "/a", "path": "/a/0"}], "move operation does not apply: path /a/0 is inside from /a"),
    ([{"op": "add", "path": "/x"}], "operation, missing value field: missing value"),
    ([{"op": "frob", "path": "/x"}], "Unexpected kind: frob"),
    ([{"op": "add", "value": 1}], "operation missing path field: missing value"),
    ([{"op": "test", "path": "/t", "value": 1}], "testing value /t failed: test failed"),  # true is no number
])
def test_json_patch_operations_that_do_not_apply_are_422s(patch: List[Dict[str, Any]], message: str) -> None:
    with pytest.raises(APIError) as info:
        patches.apply_patch(patches.JSON_PATCH, {"a": [0], "t": True}, patch)
    assert info.value.code == 422 and info.value.status()["details"]["causes"][0]["message"] == message


def test_patch_types_and_bodies_are_refused_as_kube_refuses_them() -> None:
    assert patches.patch_type("application/merge-patch+json; charset=utf-8") == patches.MERGE_PATCH
    for content_type in ("application/strategic-merge-patch+json", "application/apply-patch+yaml", "application/json", None):
        with pytest.raises(APIError) as info:
            patches.patch_type(content_type)
        assert info.value.code == 415 and "application/json-patch+json, application/merge-patch+json" in info.value.message
    for kind, body in ((patches.MERGE_PATCH, [1]), (patches.JSON_PATCH, {"op": "add"}), (patches.JSON_PATCH, [1])):
        with pytest.raises(APIError) as info:
            patches.check_patch(kind, body)
        assert info.value.code == 400
    with pytest.raises(APIError) as info:
        patches.check_patch(patches.JSON_PATCH, [{"op": "test", "path": "", "value": 1}] * (patches.MAX_JSON_PATCH_OPERATIONS + 1))
    assert info.value.code == 413 and info.value.message == "The allowed maximum operations in a JSON patch is 10000, got 10001"


# ----------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(etcd: Any) -> Iterator[ServerThread]:
    with ServerThread(etcd.endpoint, PREFIX.encode()) as srv:
        yield srv


@pytest.fixture
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def created(c: httpx.Client) -> Dict[str, Any]:
    name = f"p-{uuid.uuid4().hex[:8]}"
    r = c.post(NS, json={"metadata": {"name": name, "labels": {"l": "1"}}, "type": "Opaque", "data": {"k": b64("v")}})
    assert r.status_code == 201, r.text
    return dict(r.json())


def stored(etcd: Any, obj: Dict[str, Any]) -> Dict[str, Any]:
    """The object as etcd holds it (read with etcdctl, not through the server)."""
    key = f"{PREFIX}secrets/default/{obj['metadata']['name']}"
    return dict(json.loads(etcd.etcdctl("get", key, "--print-value-only").strip()))


def status_of(r: httpx.Response, code: int, reason: str) -> Dict[str, Any]:
    assert r.status_code == code, r.text
    status = r.json()
    assert status["kind"] == "Status" and status["code"] == code and status["reason"] == reason, status
    return dict(status)


def test_a_merge_patch_changes_only_what_it_names(client: httpx.Client, etcd: Any) -> None:
    obj = created(client)
    url = f"{NS}/{obj['metadata']['name']}"
    r = client.patch(url, content=json.dumps({"metadata": {"labels": {"l": None, "m": "2"}}, "data": {"n": b64("w")}}), headers=MERGE)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["metadata"]["labels"] == {"m": "2"} and out["data"] == {"k": b64("v"), "n": b64("w")}
    assert out["metadata"]["uid"] == obj["metadata"]["uid"]
    assert int(out["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
    assert client.get(url).json() == out
    held = stored(etcd, obj)
    assert held["data"] == out["data"] and held["metadata"]["labels"] == {"m": "2"} and "resourceVersion" not in held["metadata"]


def test_a_json_patch_applies_all_its_operations_or_none(client: httpx.Client, etcd: Any) -> None:
    obj = created(client)
    url = f"{NS}/{obj['metadata']['name']}"
    ops = [{"op": "test", "path": "/data/k", "value": b64("v")}, {"op": "add", "path": "/data/x", "value": b64("x")},
           {"op": "remove", "path": "/metadata/labels/l"}, {"op": "copy", "from": "/data/x", "path": "/data/y"}]
    r = client.patch(url, content=json.dumps(ops), headers=JSONPATCH)
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"k": b64("v"), "x": b64("x"), "y": b64("x")} and not r.json()["metadata"].get("labels")
    revision = r.json()["metadata"]["resourceVersion"]
    failing = [{"op": "add", "path": "/data/z", "value": b64("z")}, {"op": "test", "path": "/data/k", "value": "nope"}]
    status = status_of(client.patch(url, content=json.dumps(failing), headers=JSONPATCH), 422, "Invalid")
    assert status["message"] == "the server rejected our request due to an error in our request"
    assert status["details"]["causes"][0]["message"] == "testing value /data/k failed: test failed"
    after = client.get(url).json()
    assert after["metadata"]["resourceVersion"] == revision and "z" not in after["data"]  # nothing written
    assert stored(etcd, obj)["data"] == {"k": b64("v"), "x": b64("x"), "y": b64("x")}


def test_a_patch_naming_a_stale_resource_version_is_a_409_and_a_current_one_applies(client: httpx.Client) -> None:
    obj = created(client)
    url = f"{NS}/{obj['metadata']['name']}"
    stale = obj["metadata"]["resourceVersion"]
    moved = client.patch(url, content=json.dumps({"data": {"a": b64("1")}}), headers=MERGE).json()
    r = client.patch(url, content=json.dumps({"metadata": {"resourceVersion": stale}, "data": {"b": b64("2")}}), headers=MERGE)
    status_of(r, 409, "Conflict")
    assert "b" not in client.get(url).json()["data"]
    current = moved["metadata"]["resourceVersion"]
    r = client.patch(url, content=json.dumps({"metadata": {"resourceVersion": current}, "data": {"b": b64("2")}}), headers=MERGE)
    assert r.status_code == 200 and r.json()["data"]["b"] == b64("2"), r.text


def test_concurrent_patches_each_land_once(client: httpx.Client, server: ServerThread) -> None:
    """Each patch is applied to the object as it is when written: a concurrent write makes it re-read and patch again."""
    obj = created(client)
    url = f"{NS}/{obj['metadata']['name']}"

    def patch(i: int) -> int:
        with httpx.Client(base_url=server.url, timeout=20) as c:
            return c.patch(url, content=json.dumps({"data": {f"k{i}": b64(str(i))}}), headers=MERGE).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(patch, range(16)))
    assert codes == [200] * 16, codes
    assert set(client.get(url).json()["data"]) == {"k"} | {f"k{i}" for i in range(16)}


def test_a_watch_sees_a_patch_as_one_modified_event(client: httpx.Client) -> None:
    obj = created(client)
    name, rv = obj["metadata"]["name"], obj["metadata"]["resourceVersion"]
    r = client.patch(f"{NS}/{name}", content=json.dumps([{"op": "replace", "path": "/data/k", "value": b64("new")}]), headers=JSONPATCH)
    assert r.status_code == 200, r.text
    with client.stream("GET", NS, params={"watch": "1", "resourceVersion": rv, "fieldSelector": f"metadata.name={name}",
                                          "timeoutSeconds": "1"}) as resp:
        events = [json.loads(line) for line in resp.iter_lines() if line]
    assert [(e["type"], e["object"]["data"]["k"]) for e in events] == [("MODIFIED", b64("new"))]
    assert events[0]["object"]["metadata"]["resourceVersion"] == r.json()["metadata"]["resourceVersion"]


def test_a_write_that_changes_nothing_is_not_written(client: httpx.Client) -> None:
    """kube's GuaranteedUpdate stores nothing when the new object is the old one: same resourceVersion, no event
    (a controller re-applying what is there must not wake every watcher)."""
    obj = created(client)
    name, rv = obj["metadata"]["name"], obj["metadata"]["resourceVersion"]
    same = client.patch(f"{NS}/{name}", content=json.dumps({"data": {"k": b64("v")}}), headers={"Content-Type": "application/merge-patch+json"})
    assert same.status_code == 200 and same.json()["metadata"]["resourceVersion"] == rv, same.text
    put = client.put(f"{NS}/{name}", json=same.json())
    assert put.status_code == 200 and put.json()["metadata"]["resourceVersion"] == rv, put.text
    changed = client.patch(f"{NS}/{name}", content=json.dumps({"data": {"k": b64("w")}}), headers={"Content-Type": "application/merge-patch+json"})
    assert changed.status_code == 200 and int(changed.json()["metadata"]["resourceVersion"]) > int(rv)
    with client.stream("GET", NS, params={"watch": "1", "resourceVersion": rv, "fieldSelector": f"metadata.name={name}",
                                          "timeoutSeconds": "1"}) as resp:
        events = [json.loads(line) for line in resp.iter_lines() if line]
    assert [(e["type"], e["object"]["data"]["k"]) for e in events] == [("MODIFIED", b64("w"))]


def test_a_dry_run_patch_answers_the_patched_object_and_stores_nothing(client: httpx.Client, etcd: Any) -> None:
    obj = created(client)
    url = f"{NS}/{obj['metadata']['name']}"
    r = client.patch(url, params={"dryRun": "All"}, content=json.dumps({"data": {"d": b64("d")}}), headers=MERGE)
    assert r.status_code == 200 and r.json()["data"]["d"] == b64("d"), r.text
    assert r.json()["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    assert "d" not in client.get(url).json()["data"] and "d" not in stored(etcd, obj)["data"]
    status_of(client.patch(url, params={"dryRun": "x"}, content=b"{}", headers=MERGE), 422, "Invalid")


def test_field_validation_judges_the_patch_and_the_patched_object(client: httpx.Client) -> None:
    obj = created(client)
    url = f"{NS}/{obj['metadata']['name']}"
    twice = b'{"data": {"a": "YQ==", "a": "Yg=="}}'
    r = client.patch(url, content=twice, headers=MERGE)  # Warn, the default
    assert r.status_code == 200 and r.json()["data"]["a"] == "Yg==", r.text
    assert r.headers.get_list("warning") == ['299 - "duplicate field \\"data.a\\""']
    status = status_of(client.patch(url, params={"fieldValidation": "Strict"}, content=twice, headers=MERGE), 422, "Invalid")
    assert 'strict decoding error: duplicate field "data.a"' in status["message"]
    unknown = json.dumps({"spec": {"x": 1}, "data": {"c": b64("c")}})
    status = status_of(client.patch(url, params={"fieldValidation": "Strict"}, content=unknown, headers=MERGE), 422, "Invalid")
    assert 'unknown field "spec"' in status["message"] and "c" not in client.get(url).json()["data"]
    r = client.patch(url, params={"fieldValidation": "Ignore"}, content=unknown, headers=MERGE)
    assert r.status_code == 200 and "spec" not in r.json() and "warning" not in r.headers, r.text
    status_of(client.patch(url, params={"fieldValidation": "Loud"}, content=b"{}", headers=MERGE), 422, "Invalid")


def test_patches_that_cannot_be_taken_are_kubes_4xx(client: httpx.Client) -> None:
    obj = created(client)
    url = f"{NS}/{obj['metadata']['name']}"
    status_of(client.patch(f"{NS}/missing-{uuid.uuid4().hex[:6]}", content=b"{}", headers=MERGE), 404, "NotFound")
    status = status_of(client.patch(url, content=b"{}", headers={"Content-Type": "application/apply-patch+yaml"}),
                       415, "UnsupportedMediaType")
    assert status["message"].endswith("accepted media types include: application/json-patch+json, application/merge-patch+json, "
                                      "application/strategic-merge-patch+json")
    status_of(client.patch(url, content=b"[]", headers={"Content-Type": "application/strategic-merge-patch+json"}), 400, "BadRequest")
    status_of(client.patch(url, content=b"{}", headers={"Content-Type": "application/json"}), 415, "UnsupportedMediaType")
    status_of(client.patch(url, content=b"{", headers=MERGE), 400, "BadRequest")
    status_of(client.patch(url, content=b"", headers=MERGE), 400, "BadRequest")
    status_of(client.patch(url, content=b"[]", headers=MERGE), 400, "BadRequest")
    status_of(client.patch(url, content=b"{}", headers=JSONPATCH), 400, "BadRequest")
    status_of(client.patch(url, content=json.dumps([{"op": "test", "path": "", "value": 0}] * 10_001), headers=JSONPATCH),
              413, "RequestEntityTooLarge")
    status_of(client.patch(url, content=json.dumps({"metadata": {"name": "other"}}), headers=MERGE), 400, "BadRequest")
    status_of(client.patch(url, content=json.dumps({"metadata": {"namespace": "kube-system"}}), headers=MERGE), 400, "BadRequest")
    status_of(client.patch(url, content=json.dumps({"kind": "ConfigMap"}), headers=MERGE), 400, "BadRequest")
    status_of(client.patch(url, content=json.dumps([{"op": "replace", "path": "", "value": 1}]), headers=JSONPATCH), 422, "Invalid")
    status = status_of(client.patch(url, content=json.dumps({"data": {"k": "not base64!"}}), headers=MERGE), 422, "Invalid")
    assert status["message"].startswith('"" is invalid: patch: Invalid value: "the patched object": ')  # kube: its typed decoding
    status_of(client.patch(url, content=json.dumps({"metadata": {"resourceVersion": "x"}}), headers=MERGE), 400, "BadRequest")
    status_of(client.patch(NS, content=b"{}", headers=MERGE), 405, "MethodNotAllowed")
    assert client.get(url).json()["data"] == {"k": b64("v")}  # none of them wrote


def test_json_patch_copies_are_bounded_in_size_and_depth() -> None:
    """Each copy of /metadata into itself doubles it: bounded as kube bounds it, a 422, never a blow-up or a
    RecursionError."""
    doc = {"metadata": {"name": "p", "labels": {"a": "1"}}}
    doubling = [{"op": "copy", "from": "/metadata", "path": f"/metadata/m{i}"} for i in range(40)]
    nesting = [{"op": "copy", "from": "/metadata", "path": "/metadata/m"} for _ in range(1200)]
    for ops in (doubling, nesting):
        with pytest.raises(APIError) as info:
            patches.apply_patch(patches.JSON_PATCH, doc, ops)
        assert info.value.code == 422
    assert patches.apply_patch(patches.JSON_PATCH, doc, doubling[:5])["metadata"]["m4"]["m3"]["labels"] == {"a": "1"}
