"""The HTTP surface under fuzzing (issue #11): hypothesis-made requests against a real ``streamcodec serve``.

The server is the real command (``python -m streamcodec serve``, a subprocess of its own) over a real etcd
3.5 on loopback; requests go out through httpx with the request target given verbatim (its ``target``
extension: no normalisation of dots, escapes or empty segments), or through raw sockets for bytes an HTTP
client refuses to send (non-ASCII and control bytes in the request line and headers).  The fuzzer draws
methods, paths (API, discovery and unknown ones, with percent-escapes, unicode, dots, empty and very long
segments), query strings (every parameter kube's ListOptions has, with huge, negative, non-numeric and
repeated values, and unknown ones), headers (Accept / Content-Type in every format the server knows and
garbage, Authorization garbage, browser headers) and bodies (objects close to valid ones, random JSON,
random bytes, CBOR and MessagePack of random values).

What must hold, and why:

* no 5xx while etcd is up: a 5xx is an exception the server did not map, or a stored object some format it
  serves cannot carry (which breaks its whole collection for that format's clients).  The only 5xx allowed
  is kube-apiserver's own 504 "Too large resource version" for a resourceVersion from the future (client-go
  re-lists on it), and only where a test asks for one;
* an error body in JSON, CBOR or MessagePack is a Kubernetes ``Status`` (kind, apiVersion, ``Failure``,
  ``code`` = the HTTP status, a message): clients decode nothing else;
* no response shows internals: Python tracebacks or reprs, or the server's etcd key root (a random one per
  server, so it can come from nowhere but the server);
* nothing hangs: every request has a deadline, and a watch is read for a moment, then closed;
* the server survives: its process is alive and its log free of ERROR lines and tracebacks after every
  example (so hypothesis shrinks to the request that logged one), ``/healthz`` answers after every test;
* with etcd down: 503 with Retry-After, never a 500, never a hang.

What the fuzzer found has a regression test at the end of the file.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import signal
import socket
import ssl
import string
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import cbor2
import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamcodec.formats import FORMATS
from streamcodec.kube_schema import DEFAULT_SCHEMA
from streamcodec.local_etcd import EtcdProcess, die_with_parent_prefix, stop_process
from streamcodec.server import objects as server_objects
from streamcodec.server.objects import DEFAULT_RESOURCES
from streamcodec.server.status import APIError
from streamcodec.server.security import PUBLIC_PATHS
from tests.apiserver_harness import free_port, wait_until_serving
from tests.fuzz import examples

#: Seconds any request may take before the test fails as a hang.
REQUEST_TIMEOUT = 10.0
#: Seconds a watch's stream is read before the client closes it (a watch never ends by itself).
WATCH_READ_SECONDS = 0.25
#: The seeding leaves etcd at least at this revision, so resourceVersions up to it are never "from the
#: future" (those wait 3 s for etcd to reach them: test_a_resource_version_from_the_future_is_kubes_504).
SEEDED_REVISION = 16
#: namespaces no fuzzed DELETE can remove (NamespaceLifecycle keeps them), so creates in them stay possible
NAMESPACES = ["default", "kube-public"]
NAMES = ["seed-0", "seed-1", "seed-2", "a", "x.y"]
RESOURCES = sorted(DEFAULT_RESOURCES)
MEDIA_TYPES = sorted({m for f in FORMATS.values() for m in f.media_types})
NS_SECRETS = "/api/v1/namespaces/default/secrets"
WATCH_LIST = "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
#: the annotation of the bookmark that ends a watch-list's initial events (its key, in every format)
INITIAL_EVENTS_END = b"k8s.io/initial-events-end"
#: Text that only the server's own internals could put in a response (checked unless the request holds it).
LEAKS = ("Traceback", "object at 0x", "b'/", 'b"/', "site-packages", '.py", line', "<class ", "Errno")
#: What uvicorn answers when h11 refuses a request (before the App sees it): a 400 in plain text.
H11_REFUSAL = b"Invalid HTTP request received."
#: h11's limit on a request's head (its max_incomplete_event_size, which uvicorn keeps)
H11_HEAD_LIMIT = 16 * 1024
#: A TLS context made once: httpx would load the CA bundle for every client otherwise (all requests are http://).
_TLS = ssl.create_default_context()

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the server -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    """A ``streamcodec serve`` subprocess and its log."""

    proc: "subprocess.Popen[bytes]"
    port: int
    key_root: str
    log_path: Path
    log_offset: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def new_log(self) -> str:
        data = self.log_path.read_bytes()[self.log_offset:]
        self.log_offset += len(data)
        return data.decode("utf-8", "replace")

    def check_alive(self, what: object = "") -> None:
        """The process runs and has logged no error since the last check (per example: hypothesis then
        shrinks to the request that made the server log one)."""
        assert self.proc.poll() is None, f"the server exited with {self.proc.returncode} after {what!r}:\n{self.new_log()[-4000:]}"
        log = self.new_log()
        bad = [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line or "CRITICAL" in line]
        assert not bad, f"the server logged an error for {what!r}:\n{log[-6000:]}"

    def check_healthy(self) -> None:
        self.check_alive("the end of the test")
        r = httpx.get(self.url + "/healthz", timeout=REQUEST_TIMEOUT)
        assert r.status_code == 200 and r.text == "ok", (r.status_code, r.text)


def start_server(etcd_endpoint: str, directory: Path, *args: str) -> Server:
    """``streamcodec serve`` on a free loopback port, under a key root of its own, logging to a file."""
    port = free_port()
    key_root = f"/registry/fuzz-{uuid.uuid4().hex}"
    log_path = directory / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            die_with_parent_prefix() + [
                sys.executable, "-m", "streamcodec", "serve", "--etcd", etcd_endpoint, "--listen", f"127.0.0.1:{port}",
                "--log-level", "warning", "--key-root", key_root, "--shutdown-timeout", "1", *args,
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(port, proc)
    except BaseException:
        stop_process(proc)
        raise
    return Server(proc, port, key_root, log_path)


def seed(server: Server) -> Dict[str, str]:
    """Objects for the fuzzer's names to meet, and etcd past SEEDED_REVISION; a real continue token."""
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as c:
        for ns in NAMESPACES:  # the server makes them at start-up too (in the background): either may win
            assert c.post("/api/v1/namespaces", json={"metadata": {"name": ns}}).status_code in (201, 409)
            for i in range(3):
                for resource, extra in (("secrets", {"data": {"k": "dmFsdWU="}}), ("configmaps", {"data": {"k": "v"}})):
                    r = c.post(f"/api/v1/namespaces/{ns}/{resource}", json={"metadata": {"name": f"seed-{i}"}, **extra})
                    assert r.status_code == 201, r.text
            r = c.post(f"/api/v1/namespaces/{ns}/pods", json={"metadata": {"name": "seed-0"}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
            assert r.status_code == 201, r.text
        rv = int(r.json()["metadata"]["resourceVersion"])
        assert rv >= SEEDED_REVISION, rv
        token = c.get("/api/v1/namespaces/default/secrets", params={"limit": "1"}).json()["metadata"]["continue"]
    return {"continue": token}


@pytest.fixture(scope="module")
def server(etcd35: EtcdProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(etcd35.endpoint, tmp_path_factory.mktemp("serve"))
    try:
        TOKENS.update(seed(srv))
        srv.check_alive("seeding")
        yield srv
    finally:
        stop_process(srv.proc)


#: A real continue token of the seeded server (filled in by the fixture; strategies read it when drawing).
TOKENS: Dict[str, str] = {}


# -- requests and replies ---------------------------------------------------------------------------


@dataclasses.dataclass
class Request:
    method: str
    target: bytes  #: sent verbatim as the request target
    headers: List[Tuple[bytes, bytes]]
    body: Optional[bytes] = None

    def __repr__(self) -> str:  # long targets and bodies cut, so a failure stays readable
        def cut(data: Optional[bytes]) -> str:
            if data is None or len(data) <= 300:
                return repr(data)
            return f"{data[:200]!r} ... ({len(data)} bytes) ... {data[-60:]!r}"
        return f"Request({self.method!r}, {cut(self.target)}, headers={self.headers!r}, body={cut(self.body)})"

    @property
    def path(self) -> str:
        """The path as the server's router sees it (uvicorn un-escapes it once, as UTF-8 with replacement)."""
        raw = self.target.partition(b"?")[0]
        return urllib.parse.unquote(raw.decode("ascii", "replace")).rstrip("/") or "/"

    @property
    def query(self) -> List[Tuple[str, str]]:
        return urllib.parse.parse_qsl(self.target.partition(b"?")[2].decode("latin-1"), keep_blank_values=True)

    @property
    def is_watch(self) -> bool:
        """The server would stream a watch (App._bool_param on ``watch``, or kube's deprecated
        ``/api/v1/watch/...`` paths): it never ends by itself."""
        return self.method == "GET" and (any(k == "watch" and v in ("1", "true", "True") for k, v in self.query)
                                         or watch_verb_path(self.path))

    def holds(self, text: str) -> bool:
        """Whether the request itself carries ``text`` (an echo of it in a message is no leak); the router
        un-escapes path segments twice (uvicorn, then the App), so both forms count."""
        blob = self.target + b"".join(k + v for k, v in self.headers) + (self.body or b"")
        once = urllib.parse.unquote(self.target.decode("ascii", "replace"))
        return text.encode() in blob or text in once or text in urllib.parse.unquote(once)


@dataclasses.dataclass
class Reply:
    status: int
    headers: Dict[str, str]
    body: bytes
    cut: bool  #: the client stopped reading before the body ended (a watch)

    @property
    def media_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_until(response: httpx.Response, seconds: float, stop_at: Optional[bytes] = None) -> Tuple[bytes, bool]:
    """The body until it ends, ``stop_at`` arrives, or ``seconds`` pass; and whether it was cut."""
    chunks: List[bytes] = []

    async def pump() -> None:
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
            if stop_at is not None and stop_at in b"".join(chunks[-2:]):
                raise _Enough()

    try:
        await asyncio.wait_for(pump(), seconds)
        return b"".join(chunks), False
    except (asyncio.TimeoutError, _Enough):
        return b"".join(chunks), True


class _Enough(Exception):
    """What a watch was read for has arrived."""


async def _exchange(url: str, request: Request, stop_at: Optional[bytes] = None) -> Reply:
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, verify=_TLS) as client:
        built = client.build_request(
            request.method, "/", headers=request.headers, content=request.body, extensions={"target": request.target},
        )
        response = await asyncio.wait_for(client.send(built, stream=True), REQUEST_TIMEOUT)
        try:
            seconds = REQUEST_TIMEOUT if stop_at is not None or not request.is_watch else WATCH_READ_SECONDS
            body, cut = await _read_until(response, seconds, stop_at)
        finally:
            await response.aclose()
    return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, body, cut)


def send(server: Server, request: Request, stop_at: Optional[bytes] = None) -> Reply:
    """One request on a connection of its own; a hang past REQUEST_TIMEOUT fails the test.  A watch is read
    for WATCH_READ_SECONDS, or until ``stop_at`` arrives."""
    try:
        return asyncio.run(_exchange(server.url, request, stop_at))
    except (httpx.TimeoutException, asyncio.TimeoutError):
        pytest.fail(f"no answer within {REQUEST_TIMEOUT} s to {request!r}")
    except httpx.TransportError as exc:  # a reset or a truncated body: the server gave up on the response
        pytest.fail(f"the connection broke ({type(exc).__name__}: {exc}) for {request!r}")


# -- what every reply must satisfy ------------------------------------------------------------------


def check_status_object(obj: Any, code: int, where: object) -> None:
    """A Kubernetes meta/v1 Status of a failure with this code."""
    assert isinstance(obj, dict), where
    assert obj.get("kind") == "Status" and obj.get("apiVersion") == "v1", where
    assert obj.get("status") == "Failure" and obj.get("code") == code, where
    assert isinstance(obj.get("message"), str) and obj["message"], where
    assert isinstance(obj.get("reason"), str) and obj["reason"], where


def thaw(value: Any) -> Any:
    """cbor2's frozendicts (what it decodes a map under a tag into) as plain dicts."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    if isinstance(value, cbor2.CBORTag):
        return thaw(value.value)
    return value


def decode_body(media_type: str, body: bytes) -> Any:
    """A body in JSON, CBOR or MessagePack, decoded by an independent library (not streamcodec)."""
    if media_type == "application/json":
        return json.loads(body)
    if media_type in ("application/cbor", "application/cbor-seq"):
        return thaw(cbor2.loads(body))
    if media_type in ("application/vnd.msgpack", "application/msgpack"):
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    raise AssertionError(f"not a self-describing format: {media_type}")


SELF_DESCRIBING = {"application/json", "application/cbor", "application/cbor-seq", "application/vnd.msgpack", "application/msgpack"}
PROTOBUF = {"application/vnd.kubernetes.protobuf", "application/vnd.streamcodec.struct+protobuf"}


def check_reply(server: Server, request: Request, reply: Reply, *, allow_too_large: bool = False) -> None:
    where = (request, reply.status, reply.body[:600])
    if reply.status >= 500:
        assert allow_too_large and is_too_large(reply), f"a {reply.status} for {where!r}"
    for marker in LEAKS + (server.key_root,):
        if marker.encode() in reply.body and not request.holds(marker):
            raise AssertionError(f"the response shows {marker!r}: {where!r}")
    if request.method == "HEAD":
        return
    if reply.status >= 300:
        check_error_body(request, reply, where)
    else:
        check_success_body(request, reply, where)


def check_error_body(request: Request, reply: Reply, where: object) -> None:
    media = reply.media_type
    if media in SELF_DESCRIBING:
        check_status_object(decode_body(media, reply.body), reply.status, where)
    elif media in PROTOBUF:
        assert reply.body.startswith(b"k8s\x00"), where  # the envelope of every Kubernetes protobuf Status
    else:  # only h11's own refusal comes without a Status: a request that is not HTTP the App can see
        assert media == "text/plain" and reply.status == 400 and reply.body == H11_REFUSAL, where


def check_success_body(request: Request, reply: Reply, where: object) -> None:
    assert not (reply.cut and not request.is_watch), f"a response that is no watch did not end: {where!r}"
    media = reply.media_type
    streamed = "content-length" not in reply.headers  # a watch is a stream; discovery ignores ?watch
    if request.path in ("/healthz", "/readyz", "/livez"):
        assert reply.body == b"ok", where
    elif request.is_watch and streamed:
        if media == "application/json":  # one event per line; an ERROR event carries a Status
            for line in reply.body.split(b"\n")[:-1] if reply.cut else reply.body.split(b"\n"):
                if line.strip():
                    event = json.loads(line)
                    assert event["type"] in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"), where
                    if event["type"] == "ERROR":
                        check_status_object(event["object"], event["object"].get("code"), where)
                        assert event["object"]["code"] < 500, where
    elif media in SELF_DESCRIBING:
        obj = decode_body(media, reply.body)
        assert isinstance(obj, dict) and obj, where
    else:  # one k8s envelope, or (a Struct-protobuf list) envelopes each after its 4-byte length
        assert media in PROTOBUF and b"k8s\x00" in (reply.body[:4], reply.body[4:8]), where


def is_too_large(reply: Reply) -> bool:
    """kube-apiserver's 504 for a resourceVersion etcd has not reached (client-go re-lists on it)."""
    if reply.status != 504:
        return False
    if reply.media_type in PROTOBUF:  # its strings are on the wire as they are
        return reply.body.startswith(b"k8s\x00") and b"Timeout" in reply.body and b"ResourceVersionTooLarge" in reply.body
    status = decode_body(reply.media_type, reply.body)
    causes = (status.get("details") or {}).get("causes") or []
    return status.get("reason") == "Timeout" and any(c.get("reason") == "ResourceVersionTooLarge" for c in causes)


# -- strategies ---------------------------------------------------------------------------------------


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


#: escapes and bytes that trouble path and query decoders: non-UTF-8, NUL, encoded slashes and dots,
#: a surrogate's UTF-8 form, RTL override, broken escapes
ESCAPES = st.sampled_from([
    "%FF", "%2F", "%2f", "%00", "%25", "%252F", "%E2%80%AE", "%", "%G1", "%C0%AE", "%2E", "%2E%2E", "%ED%A0%80",
    "%0A", "%0D%0A", "%20", "+", "%F0%9F%92%A9", "%C3", ";", "=", "&", "@", ":", ",",
])
#: printable ASCII an HTTP client sends as is in a target (h11: visible characters), bar "/", "?" and "#"
TARGET_CHARS = "".join(c for c in string.printable if c not in string.whitespace + "/?#%")

rfc1123 = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?", fullmatch=True)
segment = st.one_of(
    st.sampled_from(NAMES + NAMESPACES + RESOURCES + ["", ".", "..", "watch", "namespaces", "status", "v1", "api", "apis", "proxy"]),
    rfc1123,
    st.text(max_size=12).map(quote),  # any unicode, escaped as a client escapes it
    st.lists(st.one_of(ESCAPES, st.text(TARGET_CHARS, max_size=4)), min_size=1, max_size=5).map("".join),
    st.sampled_from([254, 1000, 4000]).map(lambda n: "a" * n),  # past a name's 253 characters
)
namespace = st.one_of(st.sampled_from(NAMESPACES), segment)
resource = st.one_of(st.sampled_from(RESOURCES), segment)
name = st.one_of(st.sampled_from(NAMES), segment)


#: the path shapes: literal segments and fuzzed ones (None: any segments at all)
PathShape = Optional[List[Union[str, "st.SearchStrategy[str]"]]]
PATH_SHAPES: List[PathShape] = [
    ["api", "v1", "namespaces", namespace, resource],
    ["api", "v1", "namespaces", namespace, resource, name],
    ["api", "v1", "namespaces", namespace, resource, name, segment],
    ["api", "v1", resource],
    ["api", "v1", resource, name],
    ["api", "v1", "namespaces", namespace],
    ["api", "v1", "watch", "namespaces", namespace, resource],
    ["apis", segment, segment, resource],
    ["apis", segment, segment, "namespaces", namespace, resource, name],
    ["apis", segment], ["apis"], ["api"], ["api", "v1"], ["api", segment],
    ["healthz"], ["readyz"], ["livez"], ["version"], ["openapi", "v2"], ["metrics"],
    None,
]


@st.composite
def paths(draw: st.DrawFn) -> str:
    """A path: mostly the shapes the server routes, with fuzzed segments; sometimes any segments at all."""
    shape = draw(st.sampled_from(PATH_SHAPES))
    if shape is None:
        parts = draw(st.lists(segment, max_size=8))
    else:
        parts = [p if isinstance(p, str) else draw(p) for p in shape]
    path = "/" + "/".join(parts)
    return path + draw(st.sampled_from(["", "", "", "/", "//"]))


BOOLS = st.sampled_from(["1", "0", "true", "false", "True", "False", "", "TRUE", "yes", "2", " 1", "1 "])
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(0, 100).map(str),
    st.sampled_from(["9" * 18, "9" * 19, "9" * 25, "9" * 5000, "²", "٣", "1e3", "0x10", "+5", "1_0", " 1", "1.0", "-0", "0" * 30 + "1", "NaN", ""]),
)
#: resourceVersions that are never from the future: invalid ones, and ones at most SEEDED_REVISION
RESOURCE_VERSIONS = st.one_of(
    st.integers(0, SEEDED_REVISION).map(str),
    st.sampled_from(["-1", "abc", "", "0" * 25 + "1", "9" * 25, str(2**64), str(2**64 + 1), "٣", "²", "1.5", " 1", "0x1", "+1"]),
)
SELECTORS = st.one_of(
    st.sampled_from([
        "", "metadata.name=seed-0", "metadata.namespace=default", "metadata.name==a", "metadata.name!=a", "spec.x=1",
        ",", "=", "metadata.name", "metadata.name=seed-0,metadata.namespace=kube-public", "a=b", "a in (b)", "!a",
    ]),
    st.text(max_size=20),
)
TOKEN_LIKE = st.one_of(
    st.builds(lambda: TOKENS.get("continue", "")),
    st.builds(lambda: TOKENS.get("continue", "")[:-4] + "AAAA"),
    st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
    st.text(max_size=20),
)
KNOWN_PARAMS: Dict[str, st.SearchStrategy[str]] = {
    "watch": BOOLS,
    "resourceVersion": RESOURCE_VERSIONS,
    "resourceVersionMatch": st.one_of(st.sampled_from(["", "Exact", "NotOlderThan", "exact", "Any"]), st.text(max_size=8)),
    "limit": NUMBERS,
    "continue": TOKEN_LIKE,
    "timeoutSeconds": NUMBERS,
    "labelSelector": SELECTORS,
    "fieldSelector": SELECTORS,
    "sendInitialEvents": BOOLS,
    "allowWatchBookmarks": BOOLS,
    "fieldValidation": st.one_of(st.sampled_from(["Strict", "Warn", "Ignore", "strict"]), st.text(max_size=8)),
    "dryRun": st.one_of(st.sampled_from(["All", "", "None"]), st.text(max_size=8)),
    "pretty": BOOLS,
}


@st.composite
def query_pairs(draw: st.DrawFn) -> List[Tuple[str, str]]:
    pairs: List[Tuple[str, str]] = []
    for key in draw(st.lists(st.one_of(st.sampled_from(sorted(KNOWN_PARAMS)), st.text(max_size=10)), max_size=7)):
        value = draw(KNOWN_PARAMS[key]) if key in KNOWN_PARAMS else draw(st.text(max_size=10))
        pairs.append((key, value))
    twice = draw(st.booleans())
    if pairs and twice:  # a parameter twice: with the same value, or another one
        key, value = draw(st.sampled_from(pairs))
        pairs.append((key, value if draw(st.booleans()) else draw(KNOWN_PARAMS.get(key, st.text(max_size=5)))))
    return pairs


@st.composite
def queries(draw: st.DrawFn) -> str:
    pairs = draw(query_pairs())
    if not pairs and draw(st.booleans()):
        return ""
    pieces = []
    for key, value in pairs:
        if draw(st.integers(0, 9)) == 0:  # raw escapes, unencoded separators
            pieces.append(f"{quote(key)}={draw(ESCAPES)}{quote(value)}")
        else:
            pieces.append(f"{quote(key)}={quote(value)}")
    return "?" + draw(st.sampled_from(["&", "&", "&&", ";"])).join(pieces)


#: header value bytes h11 sends: visible bytes and obs-text (0x80-0xff), single spaces inside
header_text = st.lists(
    st.binary(min_size=1, max_size=12).map(lambda b: bytes(c for c in b if c not in b" \t\r\n\x0b\x0c\x00") or b"x"),
    min_size=1, max_size=3,
).map(b" ".join)
MEDIA_PARAMS = st.sampled_from([
    "", "", ";q=0.5", ";q=0", ";q=1.5", ";q=nan", ";q=-1", ";q=abc", ";q=1e-400", ";charset=utf-8", ";stream=watch",
    ";as=Table;v=v1;g=meta.k8s.io", ";as=PartialObjectMetadataList", ";;", ";=", ';q="0.9"', ";profile=x",
])
media_range = st.tuples(
    st.one_of(st.sampled_from(MEDIA_TYPES + ["*/*", "application/*", "text/html", "application/yaml", "APPLICATION/JSON", "*"]),
              st.text(string.ascii_letters + "/+.-*", max_size=20)),
    MEDIA_PARAMS,
).map("".join)
accept = st.one_of(
    st.lists(media_range, min_size=1, max_size=4).map(",".join).map(str.encode),
    header_text,
)
content_type = st.one_of(media_range.map(str.encode), header_text)
authorization = st.one_of(
    st.sampled_from([b"Bearer", b"Bearer  x", b"Basic Zm9vOmJhcg==", b"bearer x y z", b"Negotiate"]),
    header_text.map(lambda t: b"Bearer " + t),
    header_text,
)
#: framing and connection headers are the HTTP client's: fuzzing them tests httpx, not the server
_CLIENT_OWNED = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect", "te", "keep-alive"}
header_name = st.text(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1, max_size=16).filter(
    lambda n: n.lower() not in _CLIENT_OWNED and n.lower() not in ("accept", "content-type", "authorization")
)
extra_headers = st.lists(
    st.one_of(
        st.tuples(st.sampled_from([b"Origin", b"Sec-Fetch-Mode", b"X-Forwarded-For", b"User-Agent", b"Accept-Encoding",
                                   b"Content-Encoding", b"Impersonate-User", b"X-Remote-User"]), header_text),
        st.tuples(header_name.map(str.encode), header_text),
    ),
    max_size=3,
)


@st.composite
def headers(draw: st.DrawFn, body_type: Optional[str] = None, auth: Optional[st.SearchStrategy[bytes]] = authorization) -> List[Tuple[bytes, bytes]]:
    out: List[Tuple[bytes, bytes]] = []
    if draw(st.integers(0, 3)):
        out.append((b"Accept", draw(accept)))
    if body_type is not None and draw(st.integers(0, 3)):  # mostly the body's own type, sometimes another
        out.append((b"Content-Type", body_type.encode()))
    elif draw(st.booleans()):
        out.append((b"Content-Type", draw(content_type)))
    if auth is not None and draw(st.integers(0, 4)) == 0:
        out.append((b"Authorization", draw(auth)))
    out += draw(extra_headers)
    return out


# bodies
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from([2**63, -(2**63) - 1, 2**53 + 1, 1e308, -0.0, "dmFsdWU=", "not base64!", "2024-01-01T00:00:00Z", "1Gi", "10m"]),
)
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12)
metadata = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.sampled_from(NAMES), rfc1123, json_values),
    "generateName": st.one_of(st.sampled_from(["gen-", "", "UP-", "a" * 260]), json_values),
    "namespace": st.one_of(st.sampled_from(NAMESPACES), json_values),
    "resourceVersion": st.one_of(RESOURCE_VERSIONS, NUMBERS, json_values),
    "uid": json_values,
    "labels": st.one_of(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2), json_values),
    "annotations": st.one_of(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2), json_values),
    "creationTimestamp": st.one_of(st.sampled_from(["2024-01-01T00:00:00Z", "yesterday", ""]), json_values),
    "finalizers": json_values,
})
objects = st.fixed_dictionaries({}, optional={
    "apiVersion": st.one_of(st.sampled_from(["v1", "", "v2", "apps/v1"]), json_values),
    "kind": st.one_of(st.sampled_from(sorted({r.kind for r in DEFAULT_RESOURCES.values()}) + ["Status", ""]), json_values),
    "metadata": st.one_of(metadata, json_values),
    "data": st.one_of(st.dictionaries(st.text(max_size=6), st.one_of(st.sampled_from(["dmFsdWU=", "not base64!"]), json_values), max_size=3), json_values),
    "stringData": json_values,
    "spec": st.one_of(st.fixed_dictionaries({}, optional={"containers": json_values, "replicas": json_values, "ports": json_values}), json_values),
    "status": json_values,
})
#: values only CBOR and MessagePack have: byte strings, tags, undefined, simple values, extension types
cbor_values = st.recursive(
    st.one_of(json_leaves, st.binary(max_size=8), st.builds(cbor2.CBORTag, st.integers(0, 2**16), st.text(max_size=4)),
              st.just(cbor2.undefined), st.builds(cbor2.CBORSimpleValue, st.integers(0, 19))),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.one_of(st.text(max_size=6), st.integers(), st.binary(max_size=4)), inner, max_size=3),
    max_leaves=10,
)
msgpack_values = st.recursive(
    st.one_of(json_leaves, st.binary(max_size=8),
              st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 9), st.binary(max_size=4)), inner, max_size=3),
    max_leaves=10,
)
#: JSON texts with what JSON decoders trip over: depth, huge numbers, lone surrogates, NaN, BOMs, trailing bytes
EDGE_JSON = st.sampled_from([
    b"[" * 100000, b'{"a":' * 20000 + b"1" + b"}" * 20000, b'{"metadata":{"name":"a"},"n":' + b"9" * 5000 + b"}",
    b'{"metadata":{"name":"a"},"s":"\\ud800"}', b'{"metadata":{"name":"a"},"s":"\\udc00\\ud800"}', b'{"metadata":{"name":"a"},"f":1e999999}',
    b'{"metadata":{"name":"a"},"f":NaN}', b"\xef\xbb\xbf{}", b'{"metadata":{"name":"a"}} trailing', b'{"metadata":{"name":"a"}}{}',
    b"\xff\xfe{\x00}\x00", b'{"metadata":{"name":"a\xff"}}', b'{"metadata":{"name":"a"},"k":"\x00"}', b"null", b"[]", b'"x"', b"{}",
    b'{"metadata":null}', b'{"metadata":[]}', b'{"metadata":{"name":"a"}' + b',"k":1' * 5000 + b"}",
    b'{"metadata":{"name":"big"},"data":{"k":"' + b"QUFB" * 2000 + b'"}}',
    b'{"metadata":{"name":"huge"},"data":{"k":"' + b"A" * (3 * 1024 * 1024 + 10) + b'"}}',
    b'{"metadata":{"name":"a"},"spec":{"containers":[{"name":"c","ports":[{"containerPort":99999999999}]}]}}',
])


def _msgpack(value: Any) -> bytes:
    """MessagePack of ``value``, with the integers it has no encoding for (past 64 bits) as text."""
    def fit(v: Any) -> Any:
        if isinstance(v, dict):
            return {fit(k): fit(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fit(x) for x in v]
        if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
            return str(v)
        return v
    return msgpack.packb(fit(value), use_bin_type=True)


def _cbor(value: Any, tagged: bool) -> bytes:
    data = cbor2.dumps(value)
    return b"\xd9\xd9\xf7" + data if tagged else data


bodies = st.one_of(
    objects.map(lambda o: (json.dumps(o).encode(), "application/json")),
    objects.map(lambda o: (json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass"), "application/json")),
    json_values.map(lambda v: (json.dumps(v).encode(), "application/json")),
    EDGE_JSON.map(lambda b: (b, "application/json")),
    st.tuples(st.one_of(objects, cbor_values), st.booleans()).map(lambda t: (_cbor(*t), "application/cbor")),
    st.one_of(objects, msgpack_values).map(lambda v: (_msgpack(v), "application/vnd.msgpack")),
    st.binary(max_size=64).map(lambda b: (b"k8s\x00" + b, "application/vnd.kubernetes.protobuf")),
    st.binary(max_size=64).map(lambda b: (b"k8s\x00" + b, "application/vnd.streamcodec.struct+protobuf")),
    st.binary(max_size=64).map(lambda b: (b, "application/json")),
)
METHODS = st.sampled_from(["GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "get", "PROPFIND"])


@st.composite
def requests(draw: st.DrawFn, auth: Optional[st.SearchStrategy[bytes]] = authorization) -> Request:
    """Any request: every part fuzzed."""
    method = draw(METHODS)
    body: Optional[bytes] = None
    body_type: Optional[str] = None
    if method in ("POST", "PUT", "PATCH") or draw(st.integers(0, 9)) == 0:
        body, body_type = draw(bodies)
    target = (draw(paths()) + draw(queries())).encode()
    # a head past h11's 16 KiB is refused before the App sees it, with a 400 that a reset can overtake
    # (the unread request bytes): test_raw_bytes_... sends those
    assume(len(target) < H11_HEAD_LIMIT - 2048)
    return Request(method, target, draw(headers(body_type, auth)), body)


NAMESPACED = sorted(r.name for r in DEFAULT_RESOURCES.values() if r.namespaced)
#: values every format can carry (int64 integers, finite floats): the objects made of them get stored
storable_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=12), st.sampled_from(["dmFsdWU=", "not base64!", "2024-01-01T00:00:00Z", "1Gi", "10m", "", "80"])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=12,
)
#: fields of an object beside its metadata, every one with any JSON value (the kind's schema may want another type)
FIELDS = st.dictionaries(
    st.sampled_from(["data", "stringData", "binaryData", "spec", "status", "type", "immutable", "subsets", "reason", "x"]),
    st.one_of(storable_values, st.dictionaries(st.text(max_size=6), st.one_of(st.sampled_from(["dmFsdWU=", "not base64!"]), storable_values), max_size=3),
              st.fixed_dictionaries({}, optional={"containers": storable_values, "ports": storable_values, "replicas": storable_values,
                                                  "capacity": storable_values, "selector": storable_values})),
    max_size=3,
)


@st.composite
def near_valid_objects(draw: st.DrawFn, kind: str, name: str) -> Dict[str, Any]:
    """An object the router and the body checks let through: the right kind (or none), a valid name; the
    rest fuzzed (labels, annotations, fields of any type)."""
    meta: Dict[str, Any] = {"name": name}
    meta.update(draw(st.fixed_dictionaries({}, optional={
        "labels": st.one_of(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2), storable_values),
        "annotations": st.one_of(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2), storable_values),
        "creationTimestamp": st.one_of(st.sampled_from(["2024-01-01T00:00:00Z", "yesterday"]), storable_values),
        "finalizers": storable_values, "ownerReferences": storable_values, "generation": storable_values, "managedFields": storable_values,
    })))
    obj: Dict[str, Any] = {"metadata": meta, **draw(FIELDS)}
    if draw(st.booleans()):
        obj.update(kind=kind, apiVersion="v1")
    return obj


@st.composite
def writes(draw: st.DrawFn) -> Request:
    """A create or replace the router accepts, so the body reaches the decoders and the store; mostly
    near-valid objects (which get stored), sometimes any body at all."""
    ns, res = draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from(NAMESPACED))
    post = draw(st.booleans())
    obj_name = draw(st.sampled_from(NAMES[:3])) if not post else draw(st.one_of(st.sampled_from(NAMES), rfc1123))
    if draw(st.integers(0, 3)):
        obj = draw(near_valid_objects(DEFAULT_RESOURCES[res].kind, obj_name))
        encoding = draw(st.sampled_from(["json", "json", "cbor", "msgpack"]))
        body, body_type = {
            "json": lambda: (json.dumps(obj).encode(), "application/json"),
            "cbor": lambda: (_cbor(obj, True), "application/cbor"),
            "msgpack": lambda: (_msgpack(obj), "application/vnd.msgpack"),
        }[encoding]()
    else:
        body, body_type = draw(bodies)
    target = f"/api/v1/namespaces/{ns}/{res}" + ("" if post else f"/{obj_name}")
    hdrs = [(b"Content-Type", body_type.encode())] if draw(st.integers(0, 5)) else [(b"Content-Type", draw(content_type))]
    if draw(st.integers(0, 9)) == 0:
        hdrs.append((b"Accept", draw(accept)))
    elif draw(st.booleans()):
        hdrs.append((b"Accept", draw(st.sampled_from(MEDIA_TYPES)).encode()))
    query = draw(st.sampled_from(["", "", "?fieldValidation=Strict", "?dryRun=All", "?pretty=1"]))
    return Request("POST" if post else "PUT", (target + query).encode(), hdrs, body)


@st.composite
def reads(draw: st.DrawFn) -> Request:
    """A list, watch or get of a served collection, with fuzzed query parameters and Accept."""
    ns = draw(st.sampled_from(NAMESPACES + [None]))
    res = draw(st.sampled_from(["secrets", "configmaps", "pods", "namespaces"] if ns is None else ["secrets", "configmaps", "pods"]))
    path = f"/api/v1/{res}" if ns is None else f"/api/v1/namespaces/{ns}/{res}"
    if draw(st.integers(0, 4)) == 0:
        path += "/" + draw(st.sampled_from(NAMES))
    hdrs: List[Tuple[bytes, bytes]] = []
    if draw(st.integers(0, 3)):
        hdrs.append((b"Accept", draw(accept)))
    return Request("GET", (path + draw(queries())).encode(), hdrs)


# -- the fuzz tests -------------------------------------------------------------------------------


def exercise(server: Server, request: Request, stop_at: Optional[bytes] = None, **checks: Any) -> Reply:
    reply = send(server, request, stop_at)
    server.check_alive(request)  # first: a traceback in the log says more than the status it led to
    check_reply(server, request, reply, **checks)
    return reply


def test_any_request_is_answered_without_a_5xx_or_internals(server: Server) -> None:
    @settings(FUZZ, max_examples=examples(300))
    @given(requests())
    def fuzz(request: Request) -> None:
        exercise(server, request)

    fuzz()
    server.check_healthy()


def test_query_parameters_of_lists_and_watches_are_4xx_when_wrong(server: Server) -> None:
    @settings(FUZZ, max_examples=examples(250))
    @given(reads())
    def fuzz(request: Request) -> None:
        exercise(server, request)

    fuzz()
    server.check_healthy()


def test_fuzzed_writes_store_only_what_every_format_serves(server: Server) -> None:
    """Creates and replaces with fuzzed bodies; then every collection and object must still be served in every
    format: a body the server stored but cannot send in some format breaks that format's clients."""
    @settings(FUZZ, max_examples=examples(300))
    @given(writes())
    def fuzz(request: Request) -> None:
        exercise(server, request)

    fuzz()
    check_everything_is_served(server)
    server.check_healthy()


def check_everything_is_served(server: Server) -> None:
    accepts = [FORMATS[f].media_types[0] for f in FORMATS]
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as c:
        for ns in NAMESPACES:
            for res in NAMESPACED:
                collection = f"/api/v1/namespaces/{ns}/{res}"
                listed = c.get(collection)
                assert listed.status_code == 200, (collection, listed.text)
                names = [item["metadata"]["name"] for item in listed.json()["items"]]
                for media in accepts:
                    for target in [collection] + [f"{collection}/{n}" for n in names]:
                        request = Request("GET", target.encode(), [(b"Accept", media.encode())])
                        exercise(server, request)
                    # a watch-list (an informer's start): its initial events up to the bookmark that ends them
                    watch_list = Request("GET", f"{collection}?{WATCH_LIST}".encode(), [(b"Accept", media.encode())])
                    reply = exercise(server, watch_list, stop_at=INITIAL_EVENTS_END)
                    if reply.status == 200 and media == "application/json":  # every object came, and no ERROR
                        events = [json.loads(line) for line in reply.body.split(b"\n") if line.strip().endswith(b"}")]
                        assert [e["type"] for e in events] == ["ADDED"] * len(names) + ["BOOKMARK"], (collection, reply.body[-500:])


# -- bytes no HTTP client sends ------------------------------------------------------------------


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` (a whole request with ``Connection: close``), read until the server closes; failing the
    test past REQUEST_TIMEOUT."""
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as s:
        s.sendall(data)  # no half-close: uvicorn takes one for a client gone, and drops the response
        chunks = []
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                pytest.fail(f"the server neither answered nor closed within {REQUEST_TIMEOUT} s: {data[:300]!r}")
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


raw_bytes = st.binary(min_size=1, max_size=6)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """A request whose target, query or a header holds bytes outside visible ASCII (non-UTF-8 too)."""
    path = draw(st.sampled_from([b"/api/v1/namespaces/default/secrets", b"/api/v1/namespaces/default/secrets/seed-0", b"/api/v1", b"/healthz", b"/"]))
    query = b""
    where = draw(st.sampled_from(["path", "query", "header", "method", "version", "long"]))
    junk = draw(raw_bytes)
    method, version = b"GET", b"HTTP/1.1"
    if where == "path":
        path += b"/" + junk
    elif where == "query":
        # timeoutSeconds=1: junk that makes it a watch ("1") still ends within the read deadline
        query = b"?" + draw(st.sampled_from([b"timeoutSeconds=1&watch=", b"limit=", b"", b"fieldSelector=metadata.name="])) + junk
    elif where == "method":
        method = junk
    elif where == "version":
        version = draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1" + junk, b"HTTP/" + junk]))
    extra: List[bytes] = []
    if where == "long":  # a head past h11's limit, in the path or in a header
        size = draw(st.integers(H11_HEAD_LIMIT, 4 * H11_HEAD_LIMIT))
        if draw(st.booleans()):
            path += b"/" + b"a" * size
        else:
            extra.append(b"X-Long: " + b"x" * size)
    elif where == "header":
        extra.append(draw(st.sampled_from([b"Accept: ", b"Authorization: Bearer ", b"Content-Type: ", b"X-Junk: ", b""])) + junk)
    lines = [method + b" " + path + query + b" " + version, b"Host: 127.0.0.1", b"Connection: close"] + extra
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_raw_reply(data: bytes) -> Tuple[int, Dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    fields = dict(line.decode("latin-1").split(":", 1) for line in lines[1:] if b":" in line)
    hdrs = {k.strip().lower(): v.strip() for k, v in fields.items()}
    if hdrs.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if not size:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return status, hdrs, body


def test_raw_bytes_in_the_request_line_and_headers_are_never_a_5xx(server: Server) -> None:
    @settings(FUZZ, max_examples=examples(100))
    @given(raw_requests())
    def fuzz(data: bytes) -> None:
        answer = raw_exchange(server.port, data)
        if not answer and len(data) > H11_HEAD_LIMIT:  # h11's refusal, overtaken by the reset of the unread bytes
            server.check_alive(data)
            return
        assert answer, f"the server closed without an answer: {data!r}"
        status, hdrs, body = parse_raw_reply(answer)
        reply = Reply(status, hdrs, body, False)
        request = Request("GET", data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b"/", [], None)
        request.headers = [(b"raw", data)]  # every byte sent counts as the request's own (for the leak check)
        assert status < 500, (data, answer[:500])
        for marker in LEAKS + (server.key_root,):
            assert marker.encode() not in body or request.holds(marker), (marker, data, answer[:500])
        if status >= 300:
            check_error_body(request, reply, (data, answer[:500]))
        server.check_alive(data)

    fuzz()
    server.check_healthy()


# -- the one 5xx kube answers with etcd up ------------------------------------------------------------


@st.composite
def future_reads(draw: st.DrawFn) -> Tuple[Request, int]:
    rv = draw(st.one_of(st.integers(10**9, 2**63 - 1), st.integers(2**63, 2**64 - 1)))
    query = draw(st.sampled_from([
        "?resourceVersion={rv}&resourceVersionMatch=NotOlderThan", "?resourceVersion={rv}&resourceVersionMatch=Exact",
        "?resourceVersion={rv}&limit=2", "?resourceVersion={rv}",
        "?watch=1&resourceVersion={rv}&timeoutSeconds=1",
        "?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion={rv}",
    ])).format(rv=rv)
    accept_header = draw(st.sampled_from(MEDIA_TYPES))
    return Request("GET", f"/api/v1/namespaces/default/secrets{query}".encode(), [(b"Accept", accept_header.encode())]), rv


def test_a_resource_version_from_the_future_is_kubes_504(server: Server) -> None:
    """kube-apiserver waits up to 3 s for etcd to reach a resourceVersion (a watch), then answers 504 "Too large
    resource version" (client-go re-lists on it): for every way of asking, in every format, and in time."""
    @settings(FUZZ, max_examples=examples(6))
    @given(future_reads())
    def fuzz(drawn: Tuple[Request, int]) -> None:
        request, _ = drawn
        started = time.monotonic()
        reply = exercise(server, request, allow_too_large=True)
        assert time.monotonic() - started < 3.0 + 5.0, request
        assert is_too_large(reply), (request, reply.status, reply.body[:300])  # etcd is at a few dozen revisions

    fuzz()
    server.check_healthy()


# -- authentication, authorization and audit in front of the same routes ----------------------------------

ADMIN, READER = b"admin-token-0123456789", b"reader-token-0123456789"


@pytest.fixture(scope="module")
def secured_server(etcd35: EtcdProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Server, Path]]:
    directory = tmp_path_factory.mktemp("secured")
    (directory / "tokens.csv").write_text(f'{ADMIN.decode()},admin,1,"system:masters"\n{READER.decode()},reader,2,readers\n')
    (directory / "policy.jsonl").write_text(json.dumps({
        "apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy",
        "spec": {"group": "readers", "namespace": "default", "resource": "*", "apiGroup": "*", "readonly": True},
    }) + "\n")
    audit = directory / "audit.log"
    srv = start_server(
        etcd35.endpoint, directory, "--token-auth-file", str(directory / "tokens.csv"), "--authorization-mode", "ABAC",
        "--authorization-policy-file", str(directory / "policy.jsonl"), "--audit-log-path", str(audit),
    )
    try:
        yield srv, audit
    finally:
        stop_process(srv.proc)


CREDENTIALS = st.one_of(st.none(), st.just(b"Bearer " + ADMIN), st.just(b"Bearer " + READER), authorization)


@st.composite
def secured_requests(draw: st.DrawFn) -> Request:
    request = draw(requests(auth=None))
    credential = draw(CREDENTIALS)
    if credential is not None:
        request.headers = [h for h in request.headers if h[0].lower() != b"authorization"] + [(b"Authorization", credential)]
    return request


def watch_verb_path(path: str) -> bool:
    """kube's deprecated ``/api/v1/watch/...`` form: its verb is ``watch`` (read-only) whatever the method
    (RequestInfoFactory's special verbs), so authorization lets a reader's DELETE there through to the
    router, which serves only GET there (405)."""
    parts = path.split("/")[1:]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:] if parts[:1] == ["apis"] else []
    return len(rest) >= 2 and urllib.parse.unquote(rest[0]) == "watch"


def test_credentials_are_checked_before_anything_else_and_never_5xx(secured_server: Tuple[Server, Path]) -> None:
    """Without a known token every path but the public probes is 401; with the reader's token no write is
    allowed; with the admin's every request is served as by the open server (no 5xx)."""
    server, audit = secured_server
    sent = [0]

    @settings(FUZZ, max_examples=examples(150))
    @given(secured_requests())
    def fuzz(request: Request) -> None:
        reply = exercise(server, request)
        sent[0] += reply.body != H11_REFUSAL  # what h11 refuses never reaches the gate (nor its audit)
        token = dict((k.lower(), v) for k, v in request.headers).get(b"authorization")
        known = token in (b"Bearer " + ADMIN, b"Bearer " + READER)
        where = (request, reply.status, reply.body[:300])
        if reply.body == H11_REFUSAL:  # refused by h11 before the App (and its gate) saw it
            return
        if request.path in PUBLIC_PATHS:
            assert reply.status not in (401, 403), where
        elif not known:
            assert reply.status == 401, where
        elif token == b"Bearer " + READER:
            assert reply.status != 401, where
            if request.method.upper() not in ("GET", "HEAD"):  # no write of a read-only user gets through
                assert not 200 <= reply.status < 300, where
                assert reply.status == 403 or watch_verb_path(request.path), where
        else:
            assert reply.status not in (401, 403), where

    fuzz()
    server.check_healthy()
    # a graceful stop flushes the audit log (uvicorn shuts down, then re-raises the SIGTERM it caught)
    assert stop_process(server.proc) in (0, -signal.SIGTERM)
    # JSON lines end at "\n" only (str.splitlines would also split at U+0085 and U+2028, which JSON holds as is)
    lines = [json.loads(line) for line in audit.read_text(encoding="utf-8").split("\n") if line.strip()]
    assert len(lines) >= sent[0], (len(lines), sent[0])  # a request h11 refused never reaches the gate: none here
    assert all(isinstance(line["path"], str) and isinstance(line["verb"], str) for line in lines)


# -- etcd down ----------------------------------------------------------------------------------------

STORAGE_REQUESTS = [
    ("GET", NS_SECRETS, None), ("GET", NS_SECRETS + "?limit=1", None), ("GET", NS_SECRETS + "?resourceVersion=0", None),
    ("GET", NS_SECRETS + "?resourceVersion=1&resourceVersionMatch=NotOlderThan", None), ("GET", NS_SECRETS + "/seed", None),
    ("POST", NS_SECRETS, b'{"metadata":{"name":"new"}}'), ("PUT", NS_SECRETS + "/seed", b'{"metadata":{"name":"seed"}}'),
    ("DELETE", NS_SECRETS + "/seed", None), ("GET", NS_SECRETS + "?watch=1&timeoutSeconds=5", None),
    ("GET", NS_SECRETS + "?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true", None),
    ("GET", "/api/v1/namespaces", None),
]


@pytest.mark.parametrize("outage", ["killed", "never-reachable"])
def test_with_etcd_down_storage_requests_are_503_not_500_and_never_hang(outage: str, tmp_path: Path) -> None:
    """A server whose etcd was killed under it, or was never there (a dead loopback port): every request that
    needs storage is a 503 Status with Retry-After, in the time a client waits; the rest is served."""
    etcd = EtcdProcess("3.5")
    if outage == "killed":
        etcd.start()
        endpoint = etcd.endpoint
    else:
        endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    server = start_server(endpoint, tmp_path)
    try:
        if outage == "killed":  # the store has talked to etcd before it goes: its connections are open
            namespace = httpx.post(server.url + "/api/v1/namespaces", json={"metadata": {"name": "default"}}, timeout=REQUEST_TIMEOUT)
            assert namespace.status_code in (201, 409), namespace.text  # 409: the server's start-up made it first
            created = httpx.post(server.url + NS_SECRETS, json={"metadata": {"name": "seed"}}, timeout=REQUEST_TIMEOUT)
            assert created.status_code == 201, created.text
            etcd.kill()

        async def all_at_once() -> List[Reply]:  # in parallel: each waits out the store's retries
            return list(await asyncio.gather(*(
                _exchange(server.url, Request(m, t.encode(), [(b"Content-Type", b"application/json")], b)) for m, t, b in STORAGE_REQUESTS
            )))

        started = time.monotonic()
        replies = asyncio.run(asyncio.wait_for(all_at_once(), REQUEST_TIMEOUT + 5))
        assert time.monotonic() - started < REQUEST_TIMEOUT
        for (method, target, _), reply in zip(STORAGE_REQUESTS, replies):
            where = (method, target, reply.status, reply.body[:300])
            assert reply.status == 503 and reply.headers.get("retry-after") == "1", where
            status = json.loads(reply.body)
            check_status_object(status, 503, where)
            assert status["reason"] == "ServiceUnavailable" and server.key_root.encode() not in reply.body, where
        for path in ("/healthz", "/version", "/api", "/api/v1"):  # what needs no storage is still served
            assert httpx.get(server.url + path, timeout=REQUEST_TIMEOUT).status_code == 200, path
        server.check_alive("etcd down")
    finally:
        stop_process(server.proc)
        etcd.close()


# -- regressions: what the fuzzer found ----------------------------------------------------------------


@pytest.mark.parametrize("rv", [2**63, 2**64 - 1])
@pytest.mark.parametrize("query", ["resourceVersion={rv}&resourceVersionMatch=Exact", "resourceVersion={rv}&limit=2"])
def test_an_exact_list_past_any_etcd_revision_is_504_too_large_not_500(server: Server, query: str, rv: int) -> None:
    """Found by the fuzzer: a resourceVersion of 2**63 .. 2**64-1 (a valid uint64, kube's type) read exactly went
    to etcd's int64 revision field and overflowed (OverflowError, a 500).  It is past any revision etcd can
    have: the answer is etcd's to a revision from the future, kube's "Too large resource version"."""
    request = Request("GET", f"{NS_SECRETS}?{query.format(rv=rv)}".encode(), [(b"Accept", b"application/json")])
    reply = exercise(server, request, allow_too_large=True)
    assert is_too_large(reply), (reply.status, reply.body)


@pytest.mark.parametrize("resource, body, field", [
    ("configmaps", {"binaryData": []}, "binaryData"),
    ("configmaps", {"binaryData": {"k": "not base64!"}}, "binaryData"),
    ("pods", {"spec": {"containers": 5}}, "containers"),
    ("pods", {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": "http"}]}]}}, "containerPort"),
    ("secrets", {"metadata": {"labels": {"a": 5}}}, "labels"),
    ("secrets", {"metadata": {"deletionTimestamp": "yesterday"}}, "deletionTimestamp"),
])
def test_a_field_of_another_type_than_its_kind_has_is_400_and_not_stored(server: Server, resource: str, body: Dict[str, Any], field: str) -> None:
    """Found by the fuzzer: such an object was stored (201), and from then on every typed-protobuf GET, list and
    watch of its collection was a 500 (client-go reads built-in kinds in protobuf).  kube-apiserver refuses the
    body when it decodes it into the kind's Go type: a 400, and nothing stored."""
    name, existing = f"typed-{uuid.uuid4().hex[:8]}", f"typed-{uuid.uuid4().hex[:8]}"
    collection = f"/api/v1/namespaces/kube-public/{resource}"
    base = Request("POST", collection.encode(), [(b"Content-Type", b"application/json")], json.dumps({"metadata": {"name": existing}}).encode())
    assert exercise(server, base).status == 201
    for method, target, obj_name in (("POST", collection, name), ("PUT", f"{collection}/{existing}", existing)):
        obj = {**body, "metadata": {**body.get("metadata", {}), "name": obj_name}}
        request = Request(method, target.encode(), [(b"Content-Type", b"application/json")], json.dumps(obj).encode())
        reply = exercise(server, request)
        status = json.loads(reply.body)
        assert reply.status == 400 and status["reason"] == "BadRequest", (method, reply.status, reply.body)
        assert field in status["message"] and "b'" not in status["message"], status["message"]
    assert exercise(server, Request("GET", f"{collection}/{name}".encode(), [])).status == 404
    listed = exercise(server, Request("GET", collection.encode(), [(b"Accept", b"application/vnd.kubernetes.protobuf")]))
    assert listed.status == 200


TYPED_KINDS = sorted(r.kind for r in DEFAULT_RESOURCES.values() if DEFAULT_SCHEMA.message_name("v1", r.kind))


def _verdict(check: Any) -> Optional[int]:
    try:
        check()
    except APIError as exc:
        return exc.code
    return None


@settings(FUZZ, max_examples=examples(300))
@given(data=st.data())
def test_the_write_check_without_text_fields_judges_as_the_whole_object(data: st.DataObject) -> None:
    """The fix's check (objects.check_servable_object) transcodes an object without its text fields, to spare
    the event loop; it must refuse exactly what transcoding the whole stored object refuses."""
    kind = data.draw(st.sampled_from(TYPED_KINDS))
    obj = data.draw(near_valid_objects(kind, "x"))
    obj.update(kind=kind, apiVersion="v1")
    whole = _verdict(lambda: server_objects.check_servable(server_objects.encode_for_storage(obj), kind))
    assert _verdict(lambda: server_objects.check_servable_object(obj, kind)) == whole, obj


def test_a_single_object_the_struct_protobuf_cannot_carry_is_406_as_its_list(server: Server) -> None:
    """Found by the fuzzer: an int past 2**53 is stored by design (JSON, CBOR, MessagePack and typed protobuf
    carry it); its list in the Struct protobuf is a 406, and so is a GET of it (and the answer to its POST, PUT
    or DELETE), which App._http's catch-all made a 500."""
    c = httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT)
    path = "/api/v1/namespaces/kube-public/pods"
    body = {"metadata": {"name": "past-2-53"}, "spec": {"activeDeadlineSeconds": 2**53 + 1}}  # an int64 field
    assert c.post(path, json=body).status_code in (201, 409)
    struct = {"Accept": "application/vnd.streamcodec.struct+protobuf"}
    assert c.get(path, headers=struct).status_code == 406
    reply = c.get(path + "/past-2-53", headers=struct)
    server.new_log()  # its traceback is this bug's
    assert reply.status_code == 406, reply.status_code


def test_an_object_another_writer_stored_that_typed_protobuf_cannot_carry_is_406(server: Server, etcd35: EtcdProcess) -> None:
    """The read side of the typed-protobuf bug: the server refuses such a write, but a value written by another
    writer is served too (objects.py: "always correct, just slower"); a GET of it in typed protobuf was a 500,
    where the formats' EncodeError is a 406, with a message that quotes none of the stored bytes."""
    name = f"foreign-{uuid.uuid4().hex[:8]}"
    value = json.dumps({"metadata": {"name": name, "namespace": "kube-public"}, "binaryData": [], "kind": "ConfigMap", "apiVersion": "v1"})
    etcd35.etcdctl("put", f"{server.key_root}/configmaps/kube-public/{name}", value)
    reply = httpx.get(f"{server.url}/api/v1/namespaces/kube-public/configmaps/{name}", headers={"Accept": "application/vnd.kubernetes.protobuf"},
                      timeout=REQUEST_TIMEOUT)
    etcd35.etcdctl("del", f"{server.key_root}/configmaps/kube-public/{name}")  # the fuzz tests' collections stay servable
    server.new_log()
    assert reply.status_code == 406, reply.status_code
    assert b"binaryData" in reply.content and b"b'" not in reply.content and b'"kind"' not in reply.content, reply.content
