"""Input the server refuses as kube-apiserver does: a 4xx Status, never a 500, and nothing stored that a
served format could not carry."""

from __future__ import annotations

from typing import Any, Dict, Iterator

import httpx
import pytest

from streamcodec.server.objects import DEFAULT_RESOURCES, Resource
from tests.apiserver_harness import ServerThread

NS = "/api/v1/namespaces/default/secrets"
#: a kind without a schema keeps every field, so what its values may hold is judged on them
WIDGETS = "/api/v1/namespaces/default/widgets"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(etcd: Any) -> Iterator[ServerThread]:
    import uuid

    resources = {**DEFAULT_RESOURCES, "widgets": Resource("widgets", "Widget", True)}  # a kind without a protobuf message
    with ServerThread(etcd.endpoint, f"/registry/test-{uuid.uuid4().hex}/".encode(), resources=resources) as srv:
        yield srv


@pytest.mark.parametrize("path", ["/api/v1/namespaces/default/gadgets", "/api/v1/gadgets", "/api/v1/namespaces/default/gadgets/g"])
def test_a_resource_the_server_does_not_serve_is_404_as_in_kube(server: ServerThread, path: str) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    for method in ("GET", "POST", "DELETE"):
        r = c.request(method, path, json={"metadata": {"name": "g"}} if method == "POST" else None)
        assert r.status_code == 404 and r.json()["reason"] == "NotFound", (method, r.text)
    assert c.get("/api/v1/namespaces/default/widgets").status_code == 200  # a registered one is served


@pytest.mark.parametrize(
    "path, body, code, words",
    [
        (WIDGETS, b'{"metadata":{"name":"a"},"spec":{"n":9223372036854775808}}', 422, "int64"),
        (WIDGETS, b'{"metadata":{"name":"a"},"spec":{"n":-9223372036854775809}}', 422, "int64"),
        (NS, b'{"metadata":{"name":"a"},"stringData":{"k":"\\ud800"}}', 422, "surrogate"),
        (WIDGETS, b'{"metadata":{"name":"a"},"spec":{"f":1e400}}', 422, "finite"),
        (NS, b'{"metadata":{"name":"evil\\n"}}', 422, "RFC 1123"),
        (NS, b'{"metadata":{"name":"UPPER"}}', 422, "RFC 1123"),
        (NS, b'{"kind":"Secret","apiVersion":"v9","metadata":{"name":"a"}}', 400, "API version"),
        (NS, b'{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"a"}}', 400, "kind"),
    ],
)
def test_bodies_kubernetes_refuses_are_refused_with_a_status(server: ServerThread, path: str, body: bytes, code: int,
                                                             words: str) -> None:
    r = httpx.post(server.url + path, content=body, headers=JSON, timeout=10)
    assert r.status_code == code, r.text
    status = r.json()
    assert status["kind"] == "Status" and status["code"] == code and words in status["message"]
    assert "Traceback" not in r.text and "set_int_max_str_digits" not in r.text


def test_a_namespace_with_a_trailing_newline_is_refused(server: ServerThread) -> None:
    r = httpx.post(server.url + "/api/v1/namespaces/default%0A/secrets", json={"metadata": {"name": "z"}}, timeout=10)
    assert r.status_code == 422


@pytest.mark.parametrize(
    "params, code",
    [
        ({"limit": "9" * 5000}, 400),
        ({"watch": "1", "timeoutSeconds": "9" * 5000}, 400),
        ({"resourceVersion": "9" * 25}, 400),
        ({"resourceVersion": str(2**64)}, 400),
        ({"resourceVersion": str(2**63), "resourceVersionMatch": "NotOlderThan"}, 504),
        ({"watch": "1", "resourceVersion": str(2**63 - 1), "timeoutSeconds": "1"}, 504),
    ],
)
def test_numeric_parameters_out_of_range_are_4xx_or_too_large(server: ServerThread, params: Dict[str, str], code: int) -> None:
    r = httpx.get(server.url + NS, params=params, timeout=20)
    assert r.status_code == code, r.text
    assert r.json()["kind"] == "Status" and "set_int_max_str_digits" not in r.text


def test_a_put_with_an_impossible_resource_version_is_a_4xx(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    assert c.post(NS, json={"metadata": {"name": "p"}}).status_code in (201, 409)
    r = c.put(f"{NS}/p", content=b'{"metadata":{"name":"p","resourceVersion":"1234567890123456789012345"}}', headers=JSON)
    assert r.status_code == 400
    r = c.put(f"{NS}/p", content=b'{"metadata":{"name":"p","resourceVersion":"9223372036854775808"}}', headers=JSON)
    assert r.status_code == 409


def test_an_int64_no_format_can_break_the_collection_for_the_formats_that_carry_it(server: ServerThread, kube_proto: Any) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    widgets = "/api/v1/namespaces/default/widgets"
    assert c.post(widgets, json={"metadata": {"name": "big"}, "spec": {"n": 9007199254740993}}).status_code == 201
    assert c.get(widgets).json()["items"][0]["spec"]["n"] == 9007199254740993
    for accept in ("application/cbor", "application/vnd.msgpack"):
        assert c.get(widgets, headers={"Accept": accept}).status_code == 200
    # the Struct protobuf (doubles) cannot carry it: a clear 406, not a 500
    r = c.get(widgets, headers={"Accept": "application/vnd.streamcodec.struct+protobuf,application/json;q=0.5"})
    assert r.status_code == 406 and "2**53" in r.text
    # a Secret holding it in an unknown field: typed protobuf drops unknown fields, as kube does
    assert c.post(NS, json={"metadata": {"name": "int64"}, "spec": {"n": 9007199254740993}}).status_code in (201, 409)
    r = c.get(NS, headers={"Accept": "application/vnd.kubernetes.protobuf"})
    assert r.status_code == 200 and kube_proto.decode_object(r.content)[1] == "SecretList"


def test_unconditional_puts_under_contention_all_succeed_as_kube_retries_them(server: ServerThread) -> None:
    import threading

    c = httpx.Client(base_url=server.url, timeout=10)
    assert c.post(NS, json={"metadata": {"name": "contended"}, "data": {"n": "MA=="}}).status_code in (201, 409)
    codes = []

    def put(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as own:
            for j in range(5):
                codes.append(own.put(f"{NS}/contended", json={"metadata": {"name": "contended"}, "data": {"n": "MQ=="}}).status_code)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [200] * 20
    # with a precondition, a stale one is still a 409
    r = c.put(f"{NS}/contended", json={"metadata": {"name": "contended", "resourceVersion": "1"}})
    assert r.status_code == 409


def test_errors_and_continue_tokens_show_no_internals(server: ServerThread, etcd: Any) -> None:
    import base64

    c = httpx.Client(base_url=server.url, timeout=10)
    for i in range(3):
        c.post(NS, json={"metadata": {"name": f"page{i}"}})
    token = c.get(NS, params={"limit": "1"}).json()["metadata"]["continue"]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"/registry" not in raw and b"secrets/default" not in raw  # the key layout stays the server's
    bad = c.get(NS, params={"continue": token[:-4] + "AAAA"})
    assert bad.status_code == 400 and "signature" not in bad.text and "prefix" not in bad.text
    rv = c.get(NS).json()["metadata"]["resourceVersion"]
    for value in ("MA==", "MQ=="):  # two changes (an update that changes nothing is not written)
        c.put(f"{NS}/page0", json={"metadata": {"name": "page0"}, "data": {"i": value}})
    import asyncio

    from streamcodec.storage import EtcdStore

    async def compact() -> None:
        async with EtcdStore([etcd.endpoint]) as store:
            await store.compact(await store.current_revision())

    asyncio.run(compact())
    gone = c.get(NS, params={"watch": "1", "resourceVersion": rv, "timeoutSeconds": "2"})
    text = gone.text
    assert ("410" in text or gone.status_code == 410) and "b'" not in text and "/registry" not in text, text


# -- fieldValidation: a field given twice, as kube-apiserver treats it --------------------------------

CANNOT = 'Secret in version "v1" cannot be handled as a Secret: '


def _twice(name: str) -> bytes:
    """A Secret body with metadata.name and data.k each given twice (data.k: "a", then "b")."""
    return b'{"metadata":{"name":"%s","name":"%s"},"data":{"k":"YQ==","k":"Yg=="}}' % (name.encode(), name.encode())


def test_strict_field_validation_refuses_duplicate_fields_with_kubes_message_and_stores_nothing(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    strict = {"fieldValidation": "Strict"}  # what kubectl sends
    r = c.post(NS, params=strict, content=_twice("fv-strict"), headers=JSON)
    assert r.status_code == 400, r.text
    assert (r.json()["reason"], r.json()["code"]) == ("BadRequest", 400)
    assert r.json()["message"] == CANNOT + 'strict decoding error: duplicate field "metadata.name", duplicate field "data.k"'
    assert "warning" not in r.headers
    assert c.get(NS + "/fv-strict").status_code == 404
    assert c.post(NS, json={"metadata": {"name": "fv-strict"}, "data": {"k": "YQ=="}}).status_code == 201
    r = c.put(NS + "/fv-strict", params=strict, content=_twice("fv-strict"), headers=JSON)
    assert r.status_code == 400 and r.json()["message"].endswith('duplicate field "data.k"'), r.text
    assert c.get(NS + "/fv-strict").json()["data"] == {"k": "YQ=="}


@pytest.mark.parametrize("params", [{"fieldValidation": "Warn"}, {}], ids=["Warn", "absent"])
def test_warn_and_absent_field_validation_keep_the_last_value_with_a_warning_per_duplicate(server: ServerThread, params: Dict[str, str]) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    name = f"fv-warn-{len(params)}"
    warnings = ['299 - "duplicate field \\"metadata.name\\""', '299 - "duplicate field \\"data.k\\""']
    r = c.post(NS, params=params, content=_twice(name), headers=JSON)
    assert r.status_code == 201, r.text
    assert r.headers.get_list("warning") == warnings
    assert r.json()["data"] == {"k": "Yg=="} == c.get(NS + "/" + name).json()["data"]
    r = c.put(NS + "/" + name, params=params, content=_twice(name).replace(b"Yg==", b"Yw=="), headers=JSON)
    assert r.status_code == 200 and r.headers.get_list("warning") == warnings, r.text
    assert c.get(NS + "/" + name).json()["data"] == {"k": "Yw=="}
    r = c.put(NS + "/" + name, params=params, json={"metadata": {"name": name}, "data": {"k": "YQ=="}})
    assert r.status_code == 200 and "warning" not in r.headers  # a body without duplicates: no warning


def test_ignore_field_validation_keeps_the_last_value_without_the_default_warning(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    r = c.post(NS, content=_twice("fv-ignore"), headers=JSON)  # no fieldValidation: Warn
    assert r.status_code == 201 and len(r.headers.get_list("warning")) == 2, r.text
    r = c.put(NS + "/fv-ignore", params={"fieldValidation": "Ignore"}, content=_twice("fv-ignore").replace(b"Yg==", b"Yw=="), headers=JSON)
    assert r.status_code == 200 and "warning" not in r.headers, r.text
    assert c.get(NS + "/fv-ignore").json()["data"] == {"k": "Yw=="}
    r = c.post(NS, params={"fieldValidation": "Ignore"}, content=_twice("fv-ignore-2"), headers=JSON)
    assert r.status_code == 201 and "warning" not in r.headers and r.json()["data"] == {"k": "Yg=="}, r.text


@pytest.mark.parametrize("method, options", [("POST", "CreateOptions"), ("PUT", "UpdateOptions")])
@pytest.mark.parametrize("value", ["strict", "Bogus"])
def test_a_field_validation_kube_does_not_know_is_its_422(server: ServerThread, method: str, options: str, value: str) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    path = NS if method == "POST" else NS + "/fv-bad"
    r = c.request(method, path, params={"fieldValidation": value}, json={"metadata": {"name": "fv-bad"}})
    assert r.status_code == 422, r.text
    status = r.json()
    detail = f'Unsupported value: "{value}": supported values: "", "Ignore", "Strict", "Warn"'
    assert status["reason"] == "Invalid" and status["message"] == f'{options}.meta.k8s.io "" is invalid: fieldValidation: {detail}'
    assert status["details"] == {"group": "meta.k8s.io", "kind": options,
                                 "causes": [{"reason": "FieldValueNotSupported", "message": detail, "field": "fieldValidation"}]}
    assert c.get(NS + "/fv-bad").status_code == 404


@pytest.mark.parametrize("validation", ["Strict", "Warn", "Ignore"])
def test_a_cbor_or_msgpack_map_holding_a_key_twice_is_400_whatever_field_validation_says(server: ServerThread, validation: str) -> None:
    import cbor2
    import msgpack  # type: ignore[import-untyped]

    c = httpx.Client(base_url=server.url, timeout=10)
    name = f"fv-binary-{validation.lower()}"
    cbor = b"\xd9\xd9\xf7\xa2" + cbor2.dumps("metadata") + cbor2.dumps({"name": name}) + cbor2.dumps("data") + (
        b"\xa2" + cbor2.dumps("k") + cbor2.dumps(b"a") + cbor2.dumps("k") + cbor2.dumps(b"b"))
    pack = b"\x82" + msgpack.packb("metadata") + msgpack.packb({"name": name}) + msgpack.packb("data") + (
        b"\x82" + msgpack.packb("k") + msgpack.packb(b"a", use_bin_type=True) + msgpack.packb("k") + msgpack.packb(b"b", use_bin_type=True))
    for fmt, body, media in (("cbor", cbor, "application/cbor"), ("msgpack", pack, "application/vnd.msgpack")):
        r = c.post(NS, params={"fieldValidation": validation}, content=body, headers={"Content-Type": media})
        assert r.status_code == 400, (fmt, r.text)
        # fxamacker/cbor's DupMapKeyError, as kube-apiserver reports it
        assert r.json()["message"] == CANNOT + f'{fmt}: found duplicate map key "k" at map element index 1'
        assert c.get(NS + "/" + name).status_code == 404


# -- fieldValidation: fields the kind does not have --------------------------------------------------

PODS = "/api/v1/namespaces/default/pods"
UNKNOWN_POD = {"metadata": {"name": "", "bogus": 1}, "spec": {"containers": [
    {"name": "a", "image": "x", "imagePullPolcy": "Always", "ports": [{"containerPort": 80, "hostPorts": 1}]}], "nodeNmae": "n"},
    "extra": {"k": "v"}}
UNKNOWN_PATHS = ["metadata.bogus", "spec.containers[0].imagePullPolcy", "spec.containers[0].ports[0].hostPorts", "spec.nodeNmae", "extra"]


def _unknown_pod(name: str) -> Dict[str, Any]:
    return {**UNKNOWN_POD, "metadata": {**UNKNOWN_POD["metadata"], "name": name}}


def test_strict_field_validation_refuses_unknown_fields_by_their_paths_and_stores_nothing(server: ServerThread) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    r = c.post(PODS, params={"fieldValidation": "Strict"}, json=_unknown_pod("u-strict"))
    assert r.status_code == 400, r.text
    assert r.json()["message"] == ('Pod in version "v1" cannot be handled as a Pod: strict decoding error: '
                                   + ", ".join(f'unknown field "{p}"' for p in UNKNOWN_PATHS))
    assert c.get(PODS + "/u-strict").status_code == 404
    # given twice and unknown: both named, duplicates first
    body = b'{"metadata":{"name":"u-both","name":"u-both"},"spec":{"nodeNmae":"n"}}'
    r = c.post(PODS, params={"fieldValidation": "Strict"}, content=body, headers=JSON)
    assert r.status_code == 400 and r.json()["message"].endswith(
        'strict decoding error: duplicate field "metadata.name", unknown field "spec.nodeNmae"'), r.text


@pytest.mark.parametrize("validation", ["Warn", "Ignore"])
def test_unknown_fields_are_dropped_as_kubes_typed_decoding_drops_them(server: ServerThread, validation: str) -> None:
    c = httpx.Client(base_url=server.url, timeout=10)
    name = f"u-{validation.lower()}"
    r = c.post(PODS, params={"fieldValidation": validation}, json=_unknown_pod(name))
    assert r.status_code == 201, r.text
    warnings = [f'299 - "unknown field \\"{p}\\""' for p in UNKNOWN_PATHS] if validation == "Warn" else []
    assert r.headers.get_list("warning") == warnings
    for got in (r.json(), c.get(PODS + "/" + name).json()):
        assert "extra" not in got and "bogus" not in got["metadata"] and "nodeNmae" not in got["spec"], got
        assert got["spec"]["containers"] == [{"name": "a", "image": "x", "ports": [{"containerPort": 80}]}]
    # a kind without a schema (a custom resource preserving unknown fields) keeps everything
    r = c.post(WIDGETS, params={"fieldValidation": "Strict"}, json={"metadata": {"name": name}, "spec": {"anything": 1}})
    assert r.status_code == 201 and r.json()["spec"] == {"anything": 1} and "warning" not in r.headers, r.text


def test_a_cbor_body_with_an_unknown_field_is_judged_as_json(server: ServerThread) -> None:
    import cbor2

    c = httpx.Client(base_url=server.url, timeout=10)
    body = b"\xd9\xd9\xf7" + cbor2.dumps({"metadata": {"name": "u-cbor"}, "data": {"k": b"v"}, "dat": 1})
    r = c.post(NS, params={"fieldValidation": "Strict"}, content=body, headers={"Content-Type": "application/cbor"})
    assert r.status_code == 400 and r.json()["message"] == CANNOT + 'strict decoding error: unknown field "dat"', r.text
    r = c.post(NS, content=body, headers={"Content-Type": "application/cbor"})
    assert r.status_code == 201 and r.headers.get_list("warning") == ['299 - "unknown field \\"dat\\""'], r.text
    assert c.get(NS + "/u-cbor").json()["data"] == {"k": "dg=="}


def test_a_writes_warnings_go_on_its_error_response_too(server: ServerThread) -> None:
    """kube's warning recorder adds its headers to whatever the response is."""
    c = httpx.Client(base_url=server.url, timeout=10)
    r = c.post(NS, content=b'{"metadata":{"name":"Bad_Name","name":"Bad_Name"},"dat":1}', headers=JSON)
    assert r.status_code == 422, r.text
    assert r.headers.get_list("warning") == ['299 - "duplicate field \\"metadata.name\\""', '299 - "unknown field \\"dat\\""']
    r = c.put(NS + "/never-made", content=b'{"metadata":{"name":"never-made"},"dat":1}', headers=JSON)
    assert r.status_code == 404 and r.headers.get_list("warning") == ['299 - "unknown field \\"dat\\""'], r.text


def test_warning_headers_follow_kubes_warning_recorder() -> None:
    from streamcodec.server.status import WARNING_ITEM_CHARS, WARNING_TOTAL_CHARS, warning_headers

    assert warning_headers(['a "b" \\ c', "", 'a "b" \\ c', "é"]) == ['299 - "a \\"b\\" \\\\ c"', '299 - "é"']
    long = [f"{i:03d}" + "x" * 400 for i in range(30)]  # past the total: each cut, then the rest dropped
    kept = warning_headers(long)
    assert len(kept) == WARNING_TOTAL_CHARS // WARNING_ITEM_CHARS
    assert kept == [f'299 - "{t[:WARNING_ITEM_CHARS]}"' for t in long[: len(kept)]]
