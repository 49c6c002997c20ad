"""kubectl 1.32 (Debian's package, provisioned by scripts/provision-kubectl) against the server."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import httpx
import pytest

from tests.apiserver_harness import ServerThread

ROOT = Path(__file__).resolve().parent.parent
NS = "/api/v1/namespaces/default/secrets"


@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    proc = subprocess.run([str(ROOT / "scripts" / "provision-kubectl")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"kubectl unavailable: {proc.stderr.strip()}", pytrace=False)
    return proc.stdout.strip()


@pytest.fixture
def server(etcd: Any, prefix: bytes) -> Iterator[ServerThread]:
    with ServerThread(etcd.endpoint, prefix) as srv:
        c = httpx.Client(base_url=srv.url, timeout=10)
        for name in ("alpha", "beta"):
            r = c.post(NS, json={"metadata": {"name": name}, "type": "Opaque", "data": {"k": "dg=="}})
            assert r.status_code == 201
        yield srv


@pytest.fixture
def kubectl(kubectl_bin: str, server: ServerThread, tmp_path: Path) -> Any:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    base = [kubectl_bin, f"--server={server.url}", f"--cache-dir={tmp_path / 'cache'}", "--namespace=default"]

    def run(*args: str, timeout: float = 60) -> str:
        proc = subprocess.run(base + list(args), capture_output=True, text=True, timeout=timeout, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    run.base = base  # type: ignore[attr-defined]
    run.env = env  # type: ignore[attr-defined]
    return run


def test_kubectl_get_secrets_table(kubectl: Any) -> None:
    out = kubectl("get", "secrets")
    lines = out.strip().splitlines()
    assert lines[0].split()[0] == "NAME"
    assert [line.split()[0] for line in lines[1:]] == ["alpha", "beta"]


def test_kubectl_get_secrets_json(kubectl: Any) -> None:
    doc = json.loads(kubectl("get", "secrets", "-o", "json"))
    assert [i["metadata"]["name"] for i in doc["items"]] == ["alpha", "beta"]
    assert all(i["kind"] == "Secret" and i["metadata"]["resourceVersion"].isdigit() for i in doc["items"])
    one = json.loads(kubectl("get", "secret", "beta", "-o", "json"))
    assert one["metadata"]["name"] == "beta" and one["data"] == {"k": "dg=="}


def test_kubectl_get_watch_sees_a_new_secret(kubectl: Any, server: ServerThread) -> None:
    proc = subprocess.Popen(
        kubectl.base + ["get", "secrets", "--watch", "-o", "name"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=kubectl.env,
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.strip()) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    seen: List[str] = []
    try:
        deadline = time.monotonic() + 30
        created = False
        while "secret/gamma" not in seen:
            assert time.monotonic() < deadline, f"kubectl --watch printed only {seen}"
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                pass
            if not created and {"secret/alpha", "secret/beta"} <= set(seen):
                r = httpx.post(server.url + NS, json={"metadata": {"name": "gamma"}}, timeout=10)
                assert r.status_code == 201
                created = True
    finally:
        proc.terminate()
        proc.wait(10)
    assert seen[:2] == ["secret/alpha", "secret/beta"] and seen[-1] == "secret/gamma"
    assert server.wait_idle()["active_streams"] == 0


def test_kubectl_get_raw_watch_list(kubectl: Any) -> None:
    url = f"{NS}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=2"
    out = kubectl("get", "--raw", url)
    events: List[Dict[str, Any]] = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [e["type"] for e in events[:3]] == ["ADDED", "ADDED", "BOOKMARK"]
    assert events[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_kubectl_reads_duplicate_field_warnings_and_the_strict_error_as_kubes(kubectl: Any, tmp_path: Path) -> None:
    """client-go parses the Warning headers (Warn) and the Status (Strict) of a body with a field twice.

    ``--raw``: ``kubectl create -f`` sends fieldValidation=Strict only once the server's OpenAPI
    shows it supports the parameter, and this server serves no OpenAPI (with --validate=false it sends Ignore)."""
    body = tmp_path / "twice.json"
    for validation in ("Warn", "Strict"):
        name = f"twice-{validation.lower()}"
        body.write_text('{"metadata":{"name":"%s"},"data":{"k":"YQ==","k":"Yg=="}}' % name)
        proc = subprocess.run(
            kubectl.base + ["create", "--raw", f"{NS}?fieldValidation={validation}", "-f", str(body)],
            capture_output=True, text=True, timeout=60, env=kubectl.env,
        )
        if validation == "Warn":
            assert proc.returncode == 0 and proc.stderr == 'Warning: duplicate field "data.k"\n', proc.stderr
            assert json.loads(proc.stdout)["data"] == {"k": "Yg=="}
        else:
            assert proc.returncode == 1, proc.stdout
            assert proc.stderr.strip() == ('Error from server (BadRequest): Secret in version "v1" cannot be handled as a Secret: '
                                           'strict decoding error: duplicate field "data.k"')


def test_kubectl_server_side_dry_runs_change_nothing(kubectl: Any, server: ServerThread) -> None:
    """``--dry-run=server``: kubectl's create sends ``dryRun=All``, its delete a DeleteOptions body with it."""
    c = httpx.Client(base_url=server.url, timeout=10)
    before = c.get(NS).json()["items"]
    out = kubectl("create", "secret", "generic", "dry", "--from-literal=k=v", "--dry-run=server", "-o", "json")
    assert json.loads(out)["metadata"]["name"] == "dry" and "resourceVersion" not in json.loads(out)["metadata"]
    assert kubectl("delete", "secret", "alpha", "--dry-run=server").strip() == 'secret "alpha" deleted (server dry run)'
    assert c.get(NS).json()["items"] == before  # neither was written
    assert c.get(f"{NS}/dry").status_code == 404
    assert kubectl("delete", "secret", "alpha").strip() == 'secret "alpha" deleted'
    assert c.get(f"{NS}/alpha").status_code == 404


def test_kubectl_label_annotate_and_patch_change_the_stored_object(kubectl: Any, server: ServerThread) -> None:
    """kubectl's label and annotate (JSON merge patches), ``patch`` (strategic merge patch by default),
    ``--type=merge`` and ``--type=json``; ``get -l`` (labelSelector)."""
    c = httpx.Client(base_url=server.url, timeout=10)
    assert kubectl("label", "secret", "alpha", "tier=db").strip() == "secret/alpha labeled"
    assert kubectl("annotate", "secret", "alpha", "note=hi").strip() == "secret/alpha annotated"
    assert kubectl("patch", "secret", "alpha", "--type=merge", "-p", '{"data":{"m":"bQ=="}}').strip() == "secret/alpha patched"
    assert kubectl("patch", "secret", "alpha", "--type=json", "-p", '[{"op":"remove","path":"/data/k"}]').strip() == "secret/alpha patched"
    assert kubectl("patch", "secret", "alpha", "-p", '{"metadata":{"finalizers":["a/b"]},"data":{"s":"cw=="}}').strip() == "secret/alpha patched"
    assert kubectl("label", "secret", "alpha", "tier-").strip() == "secret/alpha unlabeled"
    obj = c.get(f"{NS}/alpha").json()
    assert obj["data"] == {"m": "bQ==", "s": "cw=="} and obj["metadata"]["annotations"] == {"note": "hi"}
    assert obj["metadata"]["finalizers"] == ["a/b"] and not obj["metadata"].get("labels")
    assert kubectl("label", "secret", "beta", "tier=web").strip() == "secret/beta labeled"
    assert kubectl("get", "secrets", "-l", "tier=web", "-o", "name").split() == ["secret/beta"]
    assert kubectl("get", "secrets", "-l", "tier!=web", "-o", "name").split() == ["secret/alpha"]


def test_kubectl_apply_creates_then_patches_a_pod_by_its_containers(kubectl: Any, server: ServerThread, tmp_path: Path) -> None:
    """Client-side ``kubectl apply`` as it ships (validation on): a create, then a strategic merge patch from its
    last-applied configuration (containers merged by name, a removed one deleted, a field set by another writer kept)."""
    c = httpx.Client(base_url=server.url, timeout=10)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "app", "image": "app:1"}, {"name": "side", "image": "side:1"}]}}
    manifest = tmp_path / "pod.json"
    manifest.write_text(json.dumps(pod))
    assert kubectl("apply", "-f", str(manifest)).strip() == "pod/web created"
    # another writer's change, which apply must keep (it was never in the applied configuration)
    r = c.patch("/api/v1/namespaces/default/pods/web", content=json.dumps({"spec": {"nodeName": "n1"}}),
                headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200, r.text
    pod["spec"]["containers"] = [{"name": "init", "image": "init:1"}, {"name": "app", "image": "app:2"}]
    manifest.write_text(json.dumps(pod))
    assert kubectl("apply", "-f", str(manifest)).strip() == "pod/web configured"
    spec = c.get("/api/v1/namespaces/default/pods/web").json()["spec"]
    assert [(x["name"], x["image"]) for x in spec["containers"]] == [("init", "init:1"), ("app", "app:2")]
    assert spec["nodeName"] == "n1"
    assert kubectl("apply", "-f", str(manifest)).strip() == "pod/web unchanged"
    assert kubectl("get", "all", "-o", "name").split() == ["pod/web"]  # discovery's "all" category
    assert kubectl("get", "pods", "--field-selector", "spec.nodeName=n1", "-o", "name").split() == ["pod/web"]
    # kubectl validates before it writes (--validate=strict): from /openapi/v3 it learns that the server
    # takes fieldValidation, and sends Strict; an unknown field is then the server's error
    pod["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    manifest.write_text(json.dumps(pod))
    proc = subprocess.run(kubectl.base + ["apply", "-f", str(manifest)], capture_output=True, text=True, timeout=60, env=kubectl.env)
    assert proc.returncode == 1 and 'unknown field "spec.containers[0].imagePullPolicyy"' in proc.stderr, proc.stderr
    assert "ports\t<[]ContainerPort>" in kubectl("explain", "pods.spec.containers")  # the schemas of /openapi/v3


def test_kubectl_delete_namespace_waits_until_its_content_and_it_are_gone(kubectl_bin: str, etcd: Any, prefix: bytes,
                                                                       tmp_path: Path) -> None:
    """``kubectl delete namespace`` waits (its default ``--wait``) until the Namespace is gone: here, as in kube, only
    once every object in it has been deleted; meanwhile a create in it is kube's 403."""
    with ServerThread(etcd.endpoint, prefix, namespace_lifecycle=True) as srv:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
        base = [kubectl_bin, f"--server={srv.url}", f"--cache-dir={tmp_path / 'cache'}"]

        def run(*args: str) -> "subprocess.CompletedProcess[str]":
            return subprocess.run(base + list(args), capture_output=True, text=True, timeout=60, env=env)

        assert run("create", "namespace", "doomed").returncode == 0
        for i in range(20):
            created = run("create", "configmap", f"cm-{i}", "--namespace=doomed", "--from-literal=k=v")
            assert created.returncode == 0, created.stderr
        deleted = run("delete", "namespace", "doomed", "--timeout=30s")
        assert deleted.returncode == 0 and deleted.stdout.strip() == 'namespace "doomed" deleted', (deleted.stdout, deleted.stderr)
        gone = run("get", "namespace", "doomed")
        assert gone.returncode == 1 and 'namespaces "doomed" not found' in gone.stderr, gone.stderr
        assert run("get", "configmaps", "--namespace=doomed", "-o", "name").stdout == ""
        keys = etcd.etcdctl("get", "--prefix", "--keys-only", prefix.decode() + "configmaps/doomed/")
        assert keys.strip() == ""
