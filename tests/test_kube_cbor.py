"""streamcodec.kube_cbor.plain_cbor: Kubernetes' CBOR (byte-string field names, ``[]byte`` in tag 22), as
written here by cbor2, made readable by both CBOR decoders (compiled and pure-Python), and the server
reading client-go-style CBOR bodies as kube-apiserver does (real etcd)."""

from __future__ import annotations

import base64
import random
import uuid
from typing import Any, Iterator

import cbor2
import httpx
import pytest

import streamcodec
from streamcodec import _cbor, _cbor_py
from streamcodec.kube_cbor import plain_cbor
from tests.apiserver_harness import ServerThread

DECODERS = [_cbor.CBORDecoder, _cbor_py.CBORDecoder]


def kube_style(obj: Any) -> Any:
    """``obj`` as Kubernetes writes it: every string a byte string, every bytes value in tag 22."""
    if isinstance(obj, str):
        return obj.encode()
    if isinstance(obj, bytes):
        return cbor2.CBORTag(22, obj)
    if isinstance(obj, dict):
        return {kube_style(k): kube_style(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [kube_style(v) for v in obj]
    return obj


def json_form(obj: Any) -> Any:
    """What plain_cbor makes of kube_style(obj) once decoded: keys text, tag-22 bytes as base64 text, other
    strings left as byte strings (the schema's to judge)."""
    if isinstance(obj, str):
        return obj.encode()
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode()
    if isinstance(obj, dict):
        return {k: json_form(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_form(v) for v in obj]
    return obj


def random_object(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(8 if depth < 4 else 4)
    if choice == 0:
        return rng.choice(["", "a", "h\u00e9llo", "x" * 30, "y" * 300])
    if choice == 1:
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 23, 24, 256, 70000])))
    if choice == 2:
        return rng.choice([0, 1, -1, 23, 24, 255, 256, 2**32, -(2**40), True, False, None, 1.5])
    if choice == 3:
        return {}
    if choice in (4, 5):
        return {rng.choice(["k", "key", "data", "\u00e9", "z" * 40]) + str(i): random_object(rng, depth + 1) for i in range(rng.randrange(5))}
    return [random_object(rng, depth + 1) for _ in range(rng.randrange(5))]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("seed", range(40))
def test_kubernetes_cbor_reads_as_its_json_form(decoder: Any, seed: int) -> None:
    rng = random.Random(seed)
    obj = {"metadata": {"name": "s"}, "spec": random_object(rng)}
    body = cbor2.dumps(kube_style(obj))
    if rng.random() < 0.5:
        body = b"\xd9\xd9\xf7" + body  # Kubernetes' self-described tag
    assert decoder().decode(plain_cbor(body, max_values=10**6)) == json_form(obj)


@pytest.mark.parametrize("decoder", DECODERS)
def test_indefinite_length_containers_and_nested_maps(decoder: Any) -> None:
    # {_ b"a": [_ b"x", {b"k": 22(h'00ff')}], b"b": {_ b"c": 1} }
    body = b"\xbf\x41a\x9f\x41x\xa1\x41k\xd6\x42\x00\xff\xff\x41b\xbf\x41c\x01\xff\xff"
    assert decoder().decode(plain_cbor(body, max_values=100)) == {"a": [b"x", {"k": "AP8="}], "b": {"c": 1}}


def test_plain_cbor_leaves_plain_cbor_and_what_it_cannot_read_alone() -> None:
    body = cbor2.dumps({"metadata": {"name": "s"}, "data": {"k": b"\x00"}})
    assert plain_cbor(body, max_values=100) is body
    for broken in (b"", b"\xa1\x41", b"\xa1\x5b" + b"\xff" * 8, b"\xa1\x1c"):
        assert plain_cbor(broken, max_values=100) is broken


def test_plain_cbor_counts_values_as_the_decoder_does() -> None:
    body = cbor2.dumps({b"k": [b"x"] * 1000})
    assert _cbor.CBORDecoder(max_values=1003).decode(plain_cbor(body, max_values=1003)) == {"k": [b"x"] * 1000}
    with pytest.raises(streamcodec.TooManyValues):  # the map, its key, the list and 1,000 items: 1,003
        plain_cbor(body, max_values=1002)
    with pytest.raises(streamcodec.TooManyValues):
        _cbor.CBORDecoder(max_values=1002).decode(plain_cbor(body, max_values=1003))


# ----------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(etcd: Any) -> Iterator[ServerThread]:
    with ServerThread(etcd.endpoint, f"/registry/test-{uuid.uuid4().hex}/".encode()) as srv:
        yield srv


CBOR = {"Content-Type": "application/cbor"}


def test_a_kubernetes_style_cbor_secret_is_stored_as_kube_reads_it(server: ServerThread) -> None:
    """Go strings as byte strings, ``[]byte`` in tag 22 (client-go's ClientsPreferCBOR), or as plain byte
    strings (cbor2's bytes): data holds the bytes, every other string its text."""
    every = bytes(range(256))
    c = httpx.Client(base_url=server.url, timeout=10)
    ns = "/api/v1/namespaces/default/secrets"
    obj = {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "kube-style", "labels": {"a": "\u00e9"}},
           "type": "Opaque", "data": {"all": every}}
    r = c.post(ns, content=b"\xd9\xd9\xf7" + cbor2.dumps(kube_style(obj)), headers=CBOR)
    assert r.status_code == 201, r.text
    got = c.get(f"{ns}/kube-style").json()
    assert got["metadata"]["labels"] == {"a": "\u00e9"} and got["type"] == "Opaque"
    assert base64.b64decode(got["data"]["all"]) == every
    # a plain byte string under data is its bytes too (kube decodes a byte string into []byte as is)
    mixed = {b"metadata": {b"name": b"mixed"}, b"data": {b"all": every}, b"type": b"Opaque"}
    assert c.post(ns, content=cbor2.dumps(mixed), headers=CBOR).status_code == 201
    assert base64.b64decode(c.get(f"{ns}/mixed").json()["data"]["all"]) == every
    # a Go string that is no UTF-8 is refused, not stored as something else
    bad = {b"metadata": {b"name": b"bad", b"labels": {b"a": b"\xff"}}}
    r = c.post(ns, content=cbor2.dumps(bad), headers=CBOR)
    assert r.status_code == 400 and "metadata.labels.a" in r.json()["message"], r.text
    assert c.get(f"{ns}/bad").status_code == 404
