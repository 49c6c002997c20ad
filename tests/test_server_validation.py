"""Input the server refuses as kube-apiserver does: a 4xx Status, never a 500, and nothing stored that a
served format could not carry."""

from __future__ import annotations

from typing import Any, Dict, Iterator

import httpx
import pytest

from streamcodec.server.objects import DEFAULT_RESOURCES, Resource
from tests.apiserver_harness import ServerThread

NS = "/api/v1/namespaces/default/secrets"
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
    "body, code, words",
    [
        (b'{"metadata":{"name":"a"},"spec":{"n":9223372036854775808}}', 422, "int64"),
        (b'{"metadata":{"name":"a"},"spec":{"n":-9223372036854775809}}', 422, "int64"),
        (b'{"metadata":{"name":"a"},"data":{"k":"\\ud800"}}', 422, "surrogate"),
        (b'{"metadata":{"name":"a"},"spec":{"f":1e400}}', 422, "finite"),
        (b'{"metadata":{"name":"evil\\n"}}', 422, "RFC 1123"),
        (b'{"metadata":{"name":"UPPER"}}', 422, "RFC 1123"),
        (b'{"kind":"Secret","apiVersion":"v9","metadata":{"name":"a"}}', 400, "API version"),
        (b'{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"a"}}', 400, "kind"),
    ],
)
def test_bodies_kubernetes_refuses_are_refused_with_a_status(server: ServerThread, body: bytes, code: int, words: str) -> None:
    r = httpx.post(server.url + NS, content=body, headers=JSON, timeout=10)
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
    for i in range(2):
        c.put(f"{NS}/page0", json={"metadata": {"name": "page0"}, "data": {"i": "MA=="}})
    import asyncio

    from streamcodec.storage import EtcdStore

    async def compact() -> None:
        async with EtcdStore([etcd.endpoint]) as store:
            await store.compact(await store.current_revision())

    asyncio.run(compact())
    gone = c.get(NS, params={"watch": "1", "resourceVersion": rv, "timeoutSeconds": "2"})
    text = gone.text
    assert ("410" in text or gone.status_code == 410) and "b'" not in text and "/registry" not in text, text
