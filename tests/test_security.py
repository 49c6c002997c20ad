"""TLS, authentication (bearer tokens, client certificates), ABAC authorization and the audit log.

The servers are real uvicorn (tests/apiserver_harness.py ServerThread) over real etcd, configured by
``streamcodec serve``'s own flags (parsed by its parser, checked by streamcodec.server.secure_serving); the
clients are httpx, kubectl 1.32 and the official ``kubernetes`` Python client.  Certificates are
made here with ``cryptography``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import ssl
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from streamcodec import cli
from streamcodec.server import secure_serving
from streamcodec.server.security import (
    ANONYMOUS, AbacAuthorizer, Attributes, AuthenticationError, Decision, TokenFileAuthenticator, UnionAuthorizer,
    UserInfo, X509Authenticator, _CountingSend, bearer_token, forbidden, request_attributes,
)
from streamcodec.server.streams import server_copies_body
from streamcodec.server.tls import parse_rfc4514, rfc4514_name
from tests.apiserver_harness import ServerThread

ROOT = Path(__file__).resolve().parent.parent
WATCH_LIST = "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"

TOKENS = """\
alice-token,alice,1001,"dev,team-a-admins"
bob-token,bob,1002,readers
root-token,root,0,system:masters

carol-token, carol, 1003
"""

POLICY_LINES = [
    # every authenticated user may read discovery and other non-resource paths
    {"group": "system:authenticated", "readonly": True, "nonResourcePath": "*"},
    # alice: anything in team-a
    {"user": "alice", "namespace": "team-a", "resource": "*", "apiGroup": "*"},
    # bob (group readers): read-only in team-a
    {"group": "readers", "namespace": "team-a", "resource": "*", "apiGroup": "*", "readonly": True},
    # certificate users of organization team-b: anything in team-b
    {"group": "team-b", "namespace": "team-b", "resource": "*", "apiGroup": "*"},
    # carol: only configmaps, anywhere (namespace "*" includes the cluster scope)
    {"user": "carol", "namespace": "*", "resource": "configmaps", "apiGroup": ""},
]


def policy_file_text() -> str:
    lines = ["# ABAC policies of the tests", ""]
    for spec in POLICY_LINES:
        lines.append(json.dumps({"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": spec}))
    return "\n".join(lines) + "\n"


# -- certificates --------------------------------------------------------------------


class PKI:
    """A CA, a server certificate for 127.0.0.1/localhost and client certificates, as PEM files."""

    def __init__(self, dir: Path, label: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ser, self._ec, self._oid = x509, hashes, serialization, ec, NameOID
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.not_before, self.not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{label} CA")])
        self.ca_cert = (
            x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(self.not_before).not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca = self._write("ca.crt", self.ca_cert.public_bytes(serialization.Encoding.PEM))
        self.server_cert, self.server_key = self.leaf("server", cn="127.0.0.1", server=True)

    def _write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def leaf(self, file: str, *, cn: str, orgs: Tuple[str, ...] = (), server: bool = False) -> Tuple[str, str]:
        x509, NameOID = self._x509, self._oid
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs] + [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(self.ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.not_before).not_valid_after(self.not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False,
            )
        cert = builder.sign(self.ca_key, self._hashes.SHA256())
        ser = self._ser
        cert_path = self._write(f"{file}.crt", cert.public_bytes(ser.Encoding.PEM))
        key_path = self._write(f"{file}.key", key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()))
        return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    p = PKI(tmp_path_factory.mktemp("pki"), "streamcodec test")
    p.dave = p.leaf("dave", cn="dave", orgs=("team-b", "ops"))  # type: ignore[attr-defined]
    return p


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """An unrelated CA (its server certificate and a client certificate it signed)."""
    p = PKI(tmp_path_factory.mktemp("other-pki"), "other")
    p.eve = p.leaf("eve", cn="root", orgs=("system:masters",))  # type: ignore[attr-defined]
    return p


# -- the server ----------------------------------------------------------------------


def serve_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["serve", "--etcd", "http://127.0.0.1:1", *argv])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    d = tmp_path_factory.mktemp("security")
    (d / "tokens.csv").write_text(TOKENS)
    (d / "policy.jsonl").write_text(policy_file_text())
    return {"tokens": str(d / "tokens.csv"), "policy": str(d / "policy.jsonl"), "audit": str(d / "audit.log")}


class Secure:
    def __init__(self, srv: ServerThread, pki: PKI, audit: Any) -> None:
        self.srv, self.pki, self.audit = srv, pki, audit
        self.url = srv.url

    def client(self, token: Optional[str] = None, cert: Optional[Tuple[str, str]] = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, verify=tls_context(self.pki.ca, cert), headers=headers, timeout=20, **kw)

    def audit_lines(self) -> List[Dict[str, Any]]:
        self.srv.call(_noop())  # let the loop finish what it was doing
        self.audit.flush()
        with open(self.audit.path) as f:
            return [json.loads(line) for line in f]


def tls_context(ca: str, cert: Optional[Tuple[str, str]] = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


async def _noop() -> None:
    await asyncio.sleep(0)


@pytest.fixture(scope="module")
def secure(etcd: Any, pki: PKI, files: Dict[str, str]) -> Iterator[Secure]:
    """HTTPS + client CA + token file + ABAC + audit log, configured from ``streamcodec serve`` flags."""
    args = serve_args(
        "--tls-cert-file", pki.server_cert, "--tls-private-key-file", pki.server_key, "--client-ca-file", pki.ca,
        "--token-auth-file", files["tokens"], "--authorization-mode", "ABAC", "--authorization-policy-file", files["policy"],
        "--audit-log-path", files["audit"],
    )
    security = secure_serving.configure(args)
    prefix = f"/registry/test-{uuid.uuid4().hex}/".encode()
    try:
        with ServerThread(etcd.endpoint, prefix, ssl=security.uvicorn_options, app_options=security.app_options) as srv:
            s = Secure(srv, pki, security.app_options["audit"])
            with s.client("root-token") as root:
                for ns in ("team-a", "team-b", "kube-system"):
                    for name in ("s1", "s2"):
                        r = root.post(f"/api/v1/namespaces/{ns}/secrets", json={"metadata": {"name": name}, "data": {"k": "dg=="}})
                        assert r.status_code == 201, r.text
            yield s
    finally:
        security.close()


def assert_status(r: httpx.Response, code: int, reason: str, message: Optional[str] = None) -> Dict[str, Any]:
    assert r.status_code == code, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    status = r.json()
    assert status["kind"] == "Status" and status["apiVersion"] == "v1" and status["status"] == "Failure"
    assert status["code"] == code and status["reason"] == reason, status
    if message is not None:
        assert status["message"] == message, status["message"]
    return status


def names(r: httpx.Response) -> List[str]:
    assert r.status_code == 200, r.text
    return [i["metadata"]["name"] for i in r.json()["items"]]


# -- over HTTPS: authentication ------------------------------------------------------


def test_anonymous_is_refused_except_the_probes(secure: Secure) -> None:
    with secure.client() as anon:
        assert_status(anon.get("/api/v1/namespaces/team-a/secrets"), 401, "Unauthorized", "Unauthorized")
        assert_status(anon.get("/api/v1/secrets?watch=1"), 401, "Unauthorized")
        assert_status(anon.get("/api"), 401, "Unauthorized")
        assert_status(anon.post("/api/v1/namespaces/team-a/secrets", json={"metadata": {"name": "x"}}), 401, "Unauthorized")
        for path in ("/healthz", "/livez", "/readyz", "/version", "/healthz/"):
            assert anon.get(path).status_code == 200, path
    with secure.client("not-a-token") as wrong:
        assert_status(wrong.get("/api/v1/namespaces/team-a/secrets"), 401, "Unauthorized", "Unauthorized")
        assert wrong.get("/healthz").status_code == 200
    with httpx.Client(base_url=secure.url, verify=tls_context(secure.pki.ca), headers={"Authorization": "Basic YWxpY2U6eA=="}) as basic:
        assert_status(basic.get("/api/v1/namespaces/team-a/secrets"), 401, "Unauthorized")


def test_token_users_see_what_the_policy_allows(secure: Secure) -> None:
    with secure.client("alice-token") as alice:
        assert names(alice.get("/api/v1/namespaces/team-a/secrets")) == ["s1", "s2"]
        assert alice.get("/api/v1/namespaces/team-a/secrets/s1").json()["metadata"]["name"] == "s1"
        r = alice.post("/api/v1/namespaces/team-a/secrets", json={"metadata": {"name": "by-alice"}})
        assert r.status_code == 201, r.text
        assert alice.delete("/api/v1/namespaces/team-a/secrets/by-alice").status_code == 200
        assert alice.get("/api/v1").status_code == 200  # discovery: the non-resource policy
        assert_status(
            alice.get("/api/v1/namespaces/kube-system/secrets"), 403, "Forbidden",
            'secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "kube-system"'
            ": No policy matched.",
        )
        status = assert_status(
            alice.get("/api/v1/namespaces/team-b/secrets/s1"), 403, "Forbidden",
            'secrets "s1" is forbidden: User "alice" cannot get resource "secrets" in API group "" in the namespace "team-b"'
            ": No policy matched.",
        )
        assert status["details"] == {"kind": "secrets", "name": "s1"}
        assert_status(alice.delete("/api/v1/namespaces/kube-system/secrets/s1"), 403, "Forbidden")
    with secure.client("carol-token") as carol:  # leading spaces of the CSV's columns are trimmed, as kube's
        r = carol.post("/api/v1/namespaces/team-a/configmaps", json={"metadata": {"name": "cm"}, "data": {"a": "b"}})
        assert r.status_code == 201, r.text
        assert names(carol.get("/api/v1/configmaps")) == ["cm"]  # namespace "*" covers the cluster scope
        assert_status(carol.get("/api/v1/namespaces/team-a/secrets"), 403, "Forbidden")
        assert carol.get("/api").status_code == 200  # the non-resource policy of system:authenticated
        assert_status(carol.post("/api", json={}), 403, "Forbidden", 'forbidden: User "carol" cannot post path "/api": No policy matched.')


def test_read_only_user_cannot_write(secure: Secure) -> None:
    with secure.client("bob-token") as bob:
        assert names(bob.get("/api/v1/namespaces/team-a/secrets")) == ["s1", "s2"]
        r = bob.get(f"/api/v1/namespaces/team-a/secrets?{WATCH_LIST}&timeoutSeconds=1")
        assert r.status_code == 200 and b"k8s.io/initial-events-end" in r.content
        assert_status(
            bob.post("/api/v1/namespaces/team-a/secrets", json={"metadata": {"name": "by-bob"}}), 403, "Forbidden",
            'secrets is forbidden: User "bob" cannot create resource "secrets" in API group "" in the namespace "team-a"'
            ": No policy matched.",
        )
        current = bob.get("/api/v1/namespaces/team-a/secrets/s1").json()
        assert_status(bob.put("/api/v1/namespaces/team-a/secrets/s1", json=current), 403, "Forbidden")
        assert_status(
            bob.delete("/api/v1/namespaces/team-a/secrets/s1"), 403, "Forbidden",
            'secrets "s1" is forbidden: User "bob" cannot delete resource "secrets" in API group "" in the namespace "team-a"'
            ": No policy matched.",
        )
        assert_status(bob.get("/api/v1/namespaces/team-b/secrets"), 403, "Forbidden")
    with secure.client("alice-token") as alice:
        assert names(alice.get("/api/v1/namespaces/team-a/secrets")) == ["s1", "s2"]  # nothing changed


def test_cluster_wide_list_and_watch_of_a_namespaced_user_are_forbidden(secure: Secure) -> None:
    with secure.client("alice-token") as alice:
        assert_status(
            alice.get("/api/v1/secrets"), 403, "Forbidden",
            'secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" at the cluster scope'
            ": No policy matched.",
        )
        assert_status(
            alice.get("/api/v1/secrets?watch=true"), 403, "Forbidden",
            'secrets is forbidden: User "alice" cannot watch resource "secrets" in API group "" at the cluster scope'
            ": No policy matched.",
        )
        assert_status(alice.get(f"/api/v1/secrets?{WATCH_LIST}"), 403, "Forbidden")
        # her own namespace's watch is fine
        with alice.stream("GET", "/api/v1/namespaces/team-a/secrets?watch=1&timeoutSeconds=1") as r:
            assert r.status_code == 200
            r.read()
    with secure.client("root-token") as root:  # system:masters
        listed = names(root.get("/api/v1/secrets"))  # every namespace's
        assert listed.count("s1") == 3 and listed.count("s2") == 3
    assert secure.srv.wait_idle()["active_streams"] == 0


def test_escaped_path_segments_are_judged_as_the_router_serves_them(secure: Secure) -> None:
    # "%252D" is "-" after the server's and the router's un-escaping: the request reads kube-system
    with secure.client("alice-token") as alice:
        assert_status(alice.get("/api/v1/namespaces/kube%252Dsystem/secrets"), 403, "Forbidden")
        assert_status(alice.get("/api/v1/namespaces/team-a/../kube-system/secrets"), 403, "Forbidden")
        assert_status(alice.get("/api/v1/namespaces/team-a/secrets/../../kube-system/secrets"), 403, "Forbidden")


def test_client_certificate_user_and_groups(secure: Secure, pki: PKI) -> None:
    with secure.client(cert=pki.dave) as dave:  # type: ignore[attr-defined]
        assert names(dave.get("/api/v1/namespaces/team-b/secrets")) == ["s1", "s2"]
        r = dave.post("/api/v1/namespaces/team-b/secrets", json={"metadata": {"name": "by-dave"}})
        assert r.status_code == 201, r.text
        assert_status(
            dave.get("/api/v1/namespaces/team-a/secrets"), 403, "Forbidden",
            'secrets is forbidden: User "dave" cannot list resource "secrets" in API group "" in the namespace "team-a"'
            ": No policy matched.",
        )
    # a certificate and an invalid token: the certificate authenticates (kube's order)
    with secure.client("not-a-token", cert=pki.dave) as both:  # type: ignore[attr-defined]
        assert names(both.get("/api/v1/namespaces/team-b/secrets")) == ["by-dave", "s1", "s2"]


def test_tls_with_a_wrong_ca_is_refused(secure: Secure, pki: PKI, other_pki: PKI) -> None:
    # the client does not trust the server's certificate
    with httpx.Client(base_url=secure.url, verify=tls_context(other_pki.ca), timeout=10) as c:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            c.get("/healthz")
    # the server does not take a client certificate from another CA (even one claiming system:masters)
    with httpx.Client(base_url=secure.url, verify=tls_context(pki.ca, other_pki.eve), timeout=10) as c:  # type: ignore[attr-defined]
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            c.get("/api/v1/secrets")
    # plain HTTP to the HTTPS port gets nothing
    with httpx.Client(base_url=secure.url.replace("https:", "http:"), timeout=10) as c:
        with pytest.raises(httpx.TransportError):
            c.get("/api/v1/secrets")


def test_post_without_content_type_from_a_browser_is_415(secure: Secure) -> None:
    with secure.client("alice-token") as alice:
        body = json.dumps({"metadata": {"name": "no-type"}}).encode()
        page = {"Origin": "https://attacker.example"}
        status = assert_status(alice.post("/api/v1/namespaces/team-a/secrets", content=body, headers=page), 415, "UnsupportedMediaType")
        assert "Content-Type" in status["message"] and "application/json" in status["message"]
        assert_status(alice.put("/api/v1/namespaces/team-a/secrets/s1", content=body, headers={"Sec-Fetch-Mode": "cors"}), 415,
                      "UnsupportedMediaType")
        assert alice.get("/api/v1/namespaces/team-a/secrets/no-type").status_code == 404
        r = alice.post("/api/v1/namespaces/team-a/secrets", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 201
        assert alice.delete("/api/v1/namespaces/team-a/secrets/no-type").status_code == 200


def test_audit_log_has_one_line_per_request(secure: Secure) -> None:
    with secure.client("alice-token") as alice, secure.client() as anon, secure.client("bob-token") as bob:
        # a client's address is its connection's peer: a loopback client cannot claim another by header
        alice.get(f"/api/v1/namespaces/team-a/secrets", headers={"X-Forwarded-For": "10.9.9.9", "X-Real-IP": "10.9.9.9"})
        alice.get(f"/api/v1/namespaces/kube-system/secrets")
        anon.get(f"/api/v1/namespaces/team-a/secrets")
        with bob.stream("GET", f"/api/v1/namespaces/team-a/secrets?{WATCH_LIST}&timeoutSeconds=1") as r:
            watched = sum(len(chunk) for chunk in r.iter_raw())
    # these four requests' lines (tests of a module run one at a time); a line is written when its response
    # has ended, which may be after the client has read it and sent its next request: ordered by arrival
    mine = sorted(secure.audit_lines()[-4:], key=lambda line: line["time"])
    assert [(m["user"], m["verb"], m["namespace"], m["code"]) for m in mine] == [
        ("alice", "list", "team-a", 200), ("alice", "list", "kube-system", 403),
        ("system:anonymous", "list", "team-a", 401), ("bob", "watch", "team-a", 200),
    ], mine
    alice_line = mine[0]
    assert alice_line["groups"] == ["dev", "team-a-admins", "system:authenticated"]
    assert alice_line["resource"] == "secrets" and alice_line["apiGroup"] == "" and alice_line["name"] == ""
    assert alice_line["sourceIP"] == "127.0.0.1" and alice_line["responseBytes"] > 0 and alice_line["seconds"] > 0
    assert alice_line["time"].endswith("Z") and datetime.datetime.fromisoformat(alice_line["time"][:-1])
    assert mine[1]["responseBytes"] > 0 and mine[2]["groups"] == ["system:unauthenticated"]
    # the watch-list's line was written at its end, with every byte it sent and its duration (timeoutSeconds=1)
    assert mine[3]["responseBytes"] == watched and mine[3]["seconds"] >= 0.9


def test_kubernetes_python_client_with_a_token(secure: Secure) -> None:
    from kubernetes import client as k8s
    from kubernetes.client.rest import ApiException

    def core(token: str) -> Any:
        config = k8s.Configuration()
        config.host = secure.url
        config.ssl_ca_cert = secure.pki.ca
        config.api_key = {"authorization": f"Bearer {token}"}
        return k8s.ApiClient(config)

    with core("alice-token") as api_client:
        api = k8s.CoreV1Api(api_client)
        assert [s.metadata.name for s in api.list_namespaced_secret("team-a").items] == ["s1", "s2"]
        secret = k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="py"), data={"k": "dg=="})
        # kubernetes 37's generated client sends its create body without a Content-Type: JSON, as kube reads it
        created = api.create_namespaced_secret("team-a", secret)
        assert created.metadata.name == "py" and created.data == {"k": "dg=="}
        api.delete_namespaced_secret("py", "team-a")
        with pytest.raises(ApiException) as err:
            api.list_namespaced_secret("kube-system")
        assert err.value.status == 403
        status = json.loads(err.value.body)
        assert status["reason"] == "Forbidden" and status["message"].startswith(
            'secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "kube-system"')
        with pytest.raises(ApiException) as err:
            api.list_secret_for_all_namespaces()
        assert err.value.status == 403 and "at the cluster scope" in json.loads(err.value.body)["message"]
    with core("bob-token") as api_client:
        api = k8s.CoreV1Api(api_client)
        with pytest.raises(ApiException) as err:
            api.create_namespaced_secret("team-a", k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="py")), _headers={"Content-Type": "application/json"})
        assert err.value.status == 403 and json.loads(err.value.body)["reason"] == "Forbidden"
    with core("wrong") as api_client:
        with pytest.raises(ApiException) as err:
            k8s.CoreV1Api(api_client).list_namespaced_secret("team-a")
        assert err.value.status == 401 and json.loads(err.value.body)["reason"] == "Unauthorized"


# -- kubectl ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubectl_bin() -> str:
    proc = subprocess.run([str(ROOT / "scripts" / "provision-kubectl")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"kubectl unavailable: {proc.stderr.strip()}", pytrace=False)
    return proc.stdout.strip()


def _b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def kubeconfig(path: Path, server: str, ca: str, user: Dict[str, str]) -> str:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": "me", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "me"}}],
    }
    path.write_text(json.dumps(doc))  # JSON is YAML
    return str(path)


def kubectl_runner(kubectl_bin: str, config: str, tmp_path: Path) -> Any:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "KUBECONFIG": config}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([kubectl_bin, f"--cache-dir={tmp_path / 'cache'}", *args], capture_output=True, text=True,
                              timeout=60, env=env)
        if ok:
            assert proc.returncode == 0, proc.stderr
        else:
            assert proc.returncode != 0, proc.stdout
        return proc

    return run


def test_kubectl_with_a_token(secure: Secure, kubectl_bin: str, tmp_path: Path) -> None:
    config = kubeconfig(tmp_path / "alice.kubeconfig", secure.url, secure.pki.ca, {"token": "alice-token"})
    kubectl = kubectl_runner(kubectl_bin, config, tmp_path)
    out = kubectl("get", "secrets", "-n", "team-a", "-o", "name").stdout.split()
    assert out == ["secret/s1", "secret/s2"]
    kubectl("create", "secret", "generic", "kc", "-n", "team-a", "--from-literal=a=b", "--validate=false")
    assert json.loads(kubectl("get", "secret", "kc", "-n", "team-a", "-o", "json").stdout)["data"] == {"a": "Yg=="}
    kubectl("delete", "secret", "kc", "-n", "team-a")
    err = kubectl("get", "secrets", "-n", "kube-system", ok=False).stderr
    assert ('Error from server (Forbidden): secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" '
            'in the namespace "kube-system"') in err
    err = kubectl("get", "secrets", "--all-namespaces", ok=False).stderr
    assert "(Forbidden)" in err and "at the cluster scope" in err
    # a read-only user
    bob = kubectl_runner(kubectl_bin, kubeconfig(tmp_path / "bob.kubeconfig", secure.url, secure.pki.ca, {"token": "bob-token"}), tmp_path)
    assert bob("get", "secrets", "-n", "team-a", "-o", "name").stdout.split() == ["secret/s1", "secret/s2"]
    err = bob("delete", "secret", "s1", "-n", "team-a", ok=False).stderr
    assert 'secrets "s1" is forbidden: User "bob" cannot delete resource "secrets"' in err
    # a wrong token
    wrong = kubectl_runner(kubectl_bin, kubeconfig(tmp_path / "w.kubeconfig", secure.url, secure.pki.ca, {"token": "nope"}), tmp_path)
    err = wrong("get", "secrets", "-n", "team-a", ok=False).stderr
    assert "Unauthorized" in err


def test_kubectl_with_a_client_certificate(secure: Secure, pki: PKI, kubectl_bin: str, tmp_path: Path) -> None:
    cert, key = pki.dave  # type: ignore[attr-defined]
    config = kubeconfig(tmp_path / "dave.kubeconfig", secure.url, pki.ca,
                        {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)})
    kubectl = kubectl_runner(kubectl_bin, config, tmp_path)
    kubectl("create", "secret", "generic", "kc-dave", "-n", "team-b", "--from-literal=a=b", "--validate=false")
    out = kubectl("get", "secrets", "-n", "team-b", "-o", "name").stdout.split()
    assert "secret/kc-dave" in out and "secret/s1" in out
    kubectl("delete", "secret", "kc-dave", "-n", "team-b")
    err = kubectl("get", "secret", "s1", "-n", "team-a", ok=False).stderr
    assert 'secrets "s1" is forbidden: User "dave" cannot get resource "secrets" in API group "" in the namespace "team-a"' in err
    # kubectl does not trust a server whose CA is not the kubeconfig's
    other = tmp_path / "other"
    other.mkdir()
    from_other = kubeconfig(tmp_path / "other.kubeconfig", secure.url, PKI(other, "x").ca, {"token": "alice-token"})
    err = kubectl_runner(kubectl_bin, from_other, tmp_path)("get", "secrets", "-n", "team-a", ok=False).stderr
    assert "certificate signed by unknown authority" in err


# -- embedding: a host server's own authenticator and authorizer -------------------------


def test_app_takes_custom_async_authenticator_and_authorizer(etcd: Any, prefix: bytes) -> None:
    seen: List[Attributes] = []

    async def authenticate(scope: Any) -> Optional[UserInfo]:  # e.g. a token review call
        await asyncio.sleep(0)
        for key, value in scope["headers"]:
            if key == b"x-remote-user":
                if value == b"mallory":
                    raise AuthenticationError("mallory is banned")
                return UserInfo(value.decode(), groups=("host-users",))
        return None

    async def authorize(a: Attributes) -> Tuple[Decision, str]:
        seen.append(a)
        if a.user.name == "admin" or (a.read_only and a.namespace == "open"):
            return Decision.ALLOW, ""
        return Decision.DENY, "the host says no"

    with ServerThread(etcd.endpoint, prefix, app_options={"authenticator": authenticate, "authorizer": authorize}) as srv:
        admin = httpx.Client(base_url=srv.url, headers={"X-Remote-User": "admin"}, timeout=10)
        assert admin.post("/api/v1/namespaces/open/configmaps", json={"metadata": {"name": "c"}}).status_code == 201
        user = httpx.Client(base_url=srv.url, headers={"X-Remote-User": "u"}, timeout=10)
        assert names(user.get("/api/v1/namespaces/open/configmaps")) == ["c"]
        assert_status(
            user.delete("/api/v1/namespaces/open/configmaps/c"), 403, "Forbidden",
            'configmaps "c" is forbidden: User "u" cannot delete resource "configmaps" in API group "" in the namespace '
            '"open": the host says no',
        )
        assert_status(httpx.get(srv.url + "/api/v1/namespaces/open/configmaps", timeout=10), 401, "Unauthorized")
        assert_status(httpx.get(srv.url + "/api/v1/namespaces/open/configmaps", headers={"X-Remote-User": "mallory"},
                                timeout=10), 401, "Unauthorized")
        assert httpx.get(srv.url + "/healthz", timeout=10).status_code == 200
        # a protobuf client gets its Status in protobuf, as from kube
        r = user.get("/api/v1/namespaces/closed/configmaps", headers={"Accept": "application/vnd.kubernetes.protobuf"})
        assert r.status_code == 403 and r.headers["content-type"] == "application/vnd.kubernetes.protobuf"
        assert r.content.startswith(b"k8s\x00") and b"Forbidden" in r.content
    users = {(a.user.name, a.user.groups) for a in seen}
    assert ("u", ("host-users", "system:authenticated")) in users  # the App adds system:authenticated
    assert all(a.path != "/healthz" for a in seen)


def test_no_security_configured_serves_everything_as_before(etcd: Any, prefix: bytes) -> None:
    with ServerThread(etcd.endpoint, prefix) as srv:
        assert srv.app.security is None
        c = httpx.Client(base_url=srv.url, timeout=10)
        assert c.post("/api/v1/namespaces/x/secrets", json={"metadata": {"name": "a"}}).status_code == 201
        assert names(c.get("/api/v1/secrets")) == ["a"]
        status = assert_status(c.post("/api/v1/namespaces/x/secrets", content=b'{"metadata":{"name":"b"}}',
                                      headers={"Origin": "https://attacker.example"}), 415, "UnsupportedMediaType")
        assert "no Content-Type" in status["message"]
        # without a browser's headers a typeless body is JSON, as kube-apiserver takes it
        assert c.post("/api/v1/namespaces/x/secrets", content=b'{"metadata":{"name":"c"}}').status_code == 201


def test_audited_streams_keep_zero_copy_and_abort(etcd: Any, prefix: bytes, tmp_path: Path) -> None:
    """The audit's counting send keeps uvicorn's cycle visible to the stream code (memoryview bodies,
    transport abort of a stalled client)."""
    from streamcodec.server.audit import AuditLog

    class Cycle:
        transport = None

        async def send(self, message: Any) -> None:
            pass

    Cycle.__module__ = "uvicorn.protocols.http.h11_impl"
    cycle = Cycle()
    counted = _CountingSend(cycle.send)
    assert counted.__self__ is cycle and server_copies_body(counted) is True
    with AuditLog(str(tmp_path / "audit.log")) as audit:
        with ServerThread(etcd.endpoint, prefix, app_options={"audit": audit}) as srv:
            c = httpx.Client(base_url=srv.url, timeout=10)
            for i in range(20):
                c.post("/api/v1/namespaces/x/secrets", json={"metadata": {"name": f"s{i:02d}"}, "data": {"k": "dg" * 10000}})
            r = c.get(f"/api/v1/namespaces/x/secrets?{WATCH_LIST}&timeoutSeconds=1")
            assert r.status_code == 200 and r.content.count(b'"type":"ADDED"') == 20
            assert srv.wait_idle()["pool"].in_use == 0
            srv.call(_noop())
        audit.flush()
        lines = [json.loads(line) for line in open(audit.path)]
    assert len(lines) == 21 and lines[-1]["verb"] == "watch" and lines[-1]["responseBytes"] == len(r.content)
    assert all(line["user"] == "system:anonymous" for line in lines)


# -- safe by default: the CLI's argument handling ----------------------------------------


def test_non_loopback_listen_is_refused_without_tls_and_authentication(monkeypatch: pytest.MonkeyPatch, pki: PKI,
                                                                        files: Dict[str, str]) -> None:
    import uvicorn

    def must_not_listen(*args: Any, **kw: Any) -> None:
        raise AssertionError(f"uvicorn.run was reached: {kw.get('host')}")

    monkeypatch.setattr(uvicorn, "run", must_not_listen)
    for listen in ("0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080", "example.com:8080"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["serve", "--etcd", "http://127.0.0.1:1", "--listen", listen])
        assert "not loopback" in str(exc.value) and secure_serving.INSECURE_REMOTE_FLAG in str(exc.value)
    tls = ("--tls-cert-file", pki.server_cert, "--tls-private-key-file", pki.server_key)
    with pytest.raises(SystemExit, match="without authentication"):
        cli.main(["serve", "--etcd", "http://127.0.0.1:1", "--listen", "0.0.0.0:8080", *tls])
    with pytest.raises(SystemExit, match="without TLS"):
        cli.main(["serve", "--etcd", "http://127.0.0.1:1", "--listen", "0.0.0.0:8080", "--token-auth-file", files["tokens"]])
    # allowed: loopback; TLS + authentication; the loud flag (checked without listening)
    for argv in (["--listen", "127.0.0.1:8080"], ["--listen", "[::1]:8080"], ["--listen", "localhost:8080"],
                 ["--listen", "0.0.0.0:8080", *tls, "--token-auth-file", files["tokens"]],
                 ["--listen", "0.0.0.0:8080", *tls, "--client-ca-file", pki.ca],
                 ["--listen", "0.0.0.0:8080", "--insecure-allow-remote-unauthenticated"]):
        secure_serving.configure(serve_args(*argv)).close()


def test_inconsistent_security_flags_are_refused(pki: PKI, files: Dict[str, str], tmp_path: Path) -> None:
    def refused(*argv: str, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            secure_serving.configure(serve_args(*argv))

    refused("--tls-cert-file", pki.server_cert, match="go together")
    refused("--client-ca-file", pki.ca, match="needs TLS")
    refused("--authorization-mode", "ABAC", match="needs --authorization-policy-file")
    refused("--authorization-policy-file", files["policy"], match="only used with")
    refused("--authorization-mode", "RBAC", match="unknown mode")
    refused("--token-auth-file", str(tmp_path / "missing.csv"), match="--token-auth-file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": {"usr": "x"}}\n')
    refused("--authorization-mode", "ABAC", "--authorization-policy-file", str(bad), match="line 1: unknown spec field")
    refused("--tls-cert-file", pki.ca, "--tls-private-key-file", pki.server_key, match="tls-cert-file")
    proc = subprocess.run([sys.executable, "-m", "streamcodec", "serve", "--etcd", "x:1", "--listen", "0.0.0.0:1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "refusing to listen on 0.0.0.0" in proc.stderr and "Traceback" not in proc.stderr


# -- units: ABAC, tokens, request attributes, names ------------------------------------------


def attrs(user: UserInfo, method: str, path: str, query: bytes = b"") -> Attributes:
    return request_attributes({"method": method, "path": path, "query_string": query, "headers": []}, user)


def test_request_attributes_follow_kubes_request_info() -> None:
    u = UserInfo("u")
    cases = [
        ("GET", "/api/v1/namespaces/a/secrets", b"", ("list", True, "a", "secrets", "")),
        ("GET", "/api/v1/namespaces/a/secrets/", b"watch=true", ("watch", True, "a", "secrets", "")),
        ("GET", "/api/v1/namespaces/a/secrets", b"watch=1&fieldSelector=metadata.name%3Dx", ("watch", True, "a", "secrets", "x")),
        ("GET", "/api/v1/namespaces/a/secrets", b"watch=false", ("list", True, "a", "secrets", "")),
        ("GET", "/api/v1/namespaces/a/secrets/s", b"", ("get", True, "a", "secrets", "s")),
        ("HEAD", "/api/v1/namespaces/a/secrets/s", b"", ("get", True, "a", "secrets", "s")),
        ("POST", "/api/v1/namespaces/a/secrets", b"", ("create", True, "a", "secrets", "")),
        ("PUT", "/api/v1/namespaces/a/secrets/s", b"", ("update", True, "a", "secrets", "s")),
        ("PATCH", "/api/v1/namespaces/a/secrets/s", b"", ("patch", True, "a", "secrets", "s")),
        ("DELETE", "/api/v1/namespaces/a/secrets/s", b"", ("delete", True, "a", "secrets", "s")),
        ("DELETE", "/api/v1/namespaces/a/secrets", b"", ("deletecollection", True, "a", "secrets", "")),
        ("GET", "/api/v1/secrets", b"", ("list", True, "", "secrets", "")),
        ("GET", "/api/v1/namespaces", b"", ("list", True, "", "namespaces", "")),
        ("GET", "/api/v1/namespaces/a", b"", ("get", True, "a", "namespaces", "a")),
        ("GET", "/api/v1/watch/namespaces/a/secrets", b"", ("watch", True, "a", "secrets", "")),
        ("GET", "/api/v1/namespaces/kube%2Dsystem/secrets", b"", ("list", True, "kube-system", "secrets", "")),
        ("GET", "/api", b"", ("get", False, "", "", "")),
        ("GET", "/api/v1", b"", ("get", False, "", "", "")),
        ("GET", "/apis", b"", ("get", False, "", "", "")),
        ("POST", "/healthz", b"", ("post", False, "", "", "")),
    ]
    for method, path, query, want in cases:
        a = attrs(u, method, path, query)
        assert (a.verb, a.resource_request, a.namespace, a.resource, a.name) == want, (method, path, query, a)
    a = attrs(u, "GET", "/apis/apps/v1/namespaces/a/deployments/d/scale")
    assert (a.api_group, a.api_version, a.resource, a.name, a.subresource) == ("apps", "v1", "deployments", "d", "scale")
    assert forbidden(a).message == (
        'deployments.apps "d" is forbidden: User "u" cannot get resource "deployments/scale" in API group "apps" '
        'in the namespace "a"')


def test_abac_matching_is_kubes() -> None:
    abac = AbacAuthorizer.from_lines(policy_file_text().splitlines())
    alice = UserInfo("alice", groups=("dev", "system:authenticated"))
    bob = UserInfo("bob", groups=("readers", "system:authenticated"))

    def allowed(user: UserInfo, method: str, path: str, query: bytes = b"") -> bool:
        decision, reason = abac(attrs(user, method, path, query))
        assert decision in (Decision.ALLOW, Decision.NO_OPINION) and (reason == "No policy matched.") == (decision is Decision.NO_OPINION)
        return decision is Decision.ALLOW

    assert allowed(alice, "POST", "/api/v1/namespaces/team-a/secrets")
    assert allowed(alice, "GET", "/apis/apps/v1/namespaces/team-a/deployments")  # apiGroup "*"
    assert not allowed(alice, "GET", "/api/v1/secrets")
    assert not allowed(alice, "GET", "/api/v1/namespaces/team-b/secrets")
    assert allowed(bob, "GET", "/api/v1/namespaces/team-a/secrets", b"watch=1")
    assert not allowed(bob, "DELETE", "/api/v1/namespaces/team-a/secrets/x")
    assert allowed(bob, "GET", "/api")
    assert not allowed(bob, "POST", "/api")  # the non-resource policy is read-only
    assert not allowed(ANONYMOUS, "GET", "/api")
    more = AbacAuthorizer.from_lines([
        '{"apiVersion":"abac.authorization.kubernetes.io/v1beta1","kind":"Policy","spec":{"user":"*","nonResourcePath":"/healthz/*"}}',
        '{"apiVersion":"abac.authorization.kubernetes.io/v1beta1","kind":"Policy","spec":{"user":"x","group":"g","namespace":""}}',
        '{"apiVersion":"abac.authorization.kubernetes.io/v1beta1","kind":"Policy","spec":{"namespace":"*","resource":"*"}}',
    ])
    assert more(attrs(ANONYMOUS, "GET", "/healthz/etcd"))[0] is Decision.ALLOW  # "*" user includes anonymous, as kube's
    assert more(attrs(ANONYMOUS, "GET", "/metrics"))[0] is Decision.NO_OPINION
    # user and group both given: both must match; namespace "" is the cluster scope only; resource "" matches only ""
    assert more(attrs(UserInfo("x", groups=("g",)), "GET", "/api/v1/x"))[0] is Decision.NO_OPINION
    assert more(attrs(UserInfo("x", groups=("h",)), "GET", "/api/v1/x"))[0] is Decision.NO_OPINION
    # a policy with no subject matches nobody
    assert more(attrs(UserInfo("y"), "GET", "/api/v1/namespaces/a/secrets"))[0] is Decision.NO_OPINION
    for bad in ("{not json", '{"apiVersion":"v1","kind":"Policy","spec":{}}',
                '{"apiVersion":"abac.authorization.kubernetes.io/v1beta1","kind":"Policy","spec":{"readonly":"yes"}}'):
        with pytest.raises(ValueError, match="line 1"):
            AbacAuthorizer.from_lines([bad])
    union = UnionAuthorizer([more, abac])
    assert union(attrs(alice, "GET", "/api/v1/secrets")) == (Decision.NO_OPINION, "No policy matched.\nNo policy matched.")


def test_token_file_is_kubes_csv() -> None:
    tokens = TokenFileAuthenticator.from_lines(TOKENS.splitlines(keepends=True) + [",empty,1\n", "alice-token,alice2,9\n"])
    assert len(tokens) == 4

    def who(header: Optional[str]) -> Optional[UserInfo]:
        return tokens({"headers": [(b"authorization", header.encode())] if header else []})

    assert who("Bearer bob-token") == UserInfo("bob", "1002", ("readers", "system:authenticated"))
    assert who("bearer carol-token") == UserInfo("carol", "1003", ("system:authenticated",))
    assert who("Bearer alice-token").name == "alice2"  # a later duplicate wins, as kube's
    assert who(None) is None and who("Basic abc") is None and who("Bearer ") is None
    with pytest.raises(AuthenticationError):
        who("Bearer bob-tokenX")
    assert bearer_token({"headers": [(b"authorization", b"  Bearer  t ")]}) is None  # kube splits on single spaces
    with pytest.raises(ValueError, match="at least 3 columns"):
        TokenFileAuthenticator.from_lines(["tok,user\n"])
    groups = TokenFileAuthenticator.from_lines(['t,u,1,"a,b",ignored\n'])({"headers": [(b"authorization", b"Bearer t")]})
    assert groups is not None and groups.groups == ("a", "b", "system:authenticated")


def test_client_certificate_names_round_trip() -> None:
    subject = ((("organizationName", "team-b"),), (("organizationName", 'a,b+c "q" \\ <x>;'),), (("commonName", " dave#1 "),))
    name = rfc4514_name(subject)
    assert name == 'CN=\\ dave#1\\ ,O=a\\,b\\+c \\"q\\" \\\\ \\<x\\>\\;,O=team-b'
    assert parse_rfc4514(name) == (("CN", " dave#1 "), ("O", 'a,b+c "q" \\ <x>;'), ("O", "team-b"))
    assert parse_rfc4514("CN=caf\\C3\\A9+O=x") == (("CN", "café"), ("O", "x"))
    x509 = X509Authenticator()
    user = x509({"extensions": {"tls": {"client_cert_name": name, "client_cert_error": None}}})
    assert user == UserInfo(" dave#1 ", "", ('a,b+c "q" \\ <x>;', "team-b", "system:authenticated"))
    assert x509({"extensions": {"tls": {"client_cert_name": None}}}) is None
    assert x509({"extensions": {"tls": {"client_cert_name": "O=only-org"}}}) is None  # no CN: no user, as kube's
    assert x509({}) is None
    with pytest.raises(AuthenticationError):
        x509({"extensions": {"tls": {"client_cert_name": "CN=x", "client_cert_error": "not verified"}}})
    assert secure_serving.is_loopback("127.0.0.53") and not secure_serving.is_loopback("::ffff:10.0.0.1")


# -- the Python informer against the secure server ---------------------------------------


def _informer_sync(secure: Secure, path: str, **options: Any) -> Any:
    from streamcodec.informer import Reflector

    reflector = Reflector(secure.url, path, ca_file=secure.pki.ca, watch_list="on", backoff=(0.05, 0.2), **options)
    asyncio.run(reflector.run_until_synced(timeout=30))
    return reflector


def _stored(secure: Secure, namespace: str) -> List[str]:
    """What the namespace holds now, as root sees it (other tests of the module write there too)."""
    with secure.client("root-token") as root:
        return sorted(f"{namespace}/{n}" for n in names(root.get(f"/api/v1/namespaces/{namespace}/secrets")))


def test_python_informer_over_tls_with_a_token_sees_what_the_policy_allows(secure: Secure) -> None:
    alice = _informer_sync(secure, "/api/v1/namespaces/team-a/secrets", token="alice-token")
    assert sorted(alice.store) == _stored(secure, "team-a") and "team-a/s1" in alice.store and alice.used_watch_list
    from streamcodec.informer import InformerError

    with pytest.raises(InformerError, match="403|[Ff]orbidden"):  # alice is not allowed in team-b
        _informer_sync(secure, "/api/v1/namespaces/team-b/secrets", token="alice-token")
    with pytest.raises(InformerError, match="401|[Uu]nauthorized"):
        _informer_sync(secure, "/api/v1/namespaces/team-a/secrets", token="wrong-token")


def test_python_informer_with_a_client_certificate(secure: Secure, pki: PKI) -> None:
    cert, key = pki.dave  # type: ignore[attr-defined]
    dave = _informer_sync(secure, "/api/v1/namespaces/team-b/secrets", cert_file=cert, key_file=key, content_type="protobuf")
    assert sorted(dave.store) == _stored(secure, "team-b") and "team-b/s1" in dave.store
    assert dave.store["team-b/s1"]["data"] == {"k": "dg=="}


def test_python_informer_refuses_a_server_its_ca_did_not_sign(secure: Secure, other_pki: PKI) -> None:
    from streamcodec.informer import Reflector

    reflector = Reflector(secure.url, "/api/v1/namespaces/team-a/secrets", ca_file=other_pki.ca, token="alice-token",
                          watch_list="on", backoff=(0.05, 0.1))
    # a certificate that does not verify is a connection failure: retried (a CA may be rotated), never trusted
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(reflector.run_until_synced(timeout=3))
    assert not reflector.synced and reflector.store == {} and reflector.stats["retries"] >= 2
