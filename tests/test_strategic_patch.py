"""Strategic merge patch: the same patches applied by this server and by the real k8s.io/apiserver.

Each case creates one object on both servers (Pods and Secrets; the peer is tests/go/kubeapiserver,
built from Debian's k8s.io/apiserver 0.36.4, whose patch handler runs apimachinery's strategicpatch
with the k8s.io/api Go types), sends both the same ``application/strategic-merge-patch+json`` body
and compares the answers: the patched objects (server-owned metadata and Go's empty zero values left
out), or the status codes.  A few cases of the merge rules run without the peer too.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import httpx
import pytest

from streamcodec.kube_schema import DEFAULT_SCHEMA
from streamcodec.local_etcd import EtcdProcess
from streamcodec.server.status import APIError
from streamcodec.server.strategic_patch import strategic_merge_patch
from tests.apiserver_harness import ServerThread
from tests.kube_apiserver_harness import KubeAPIServer, provision_kube_apiserver

SMP = {"Content-Type": "application/strategic-merge-patch+json"}
ROOT = pathlib.Path(__file__).resolve().parent.parent
POD = "k8s.io.api.core.v1.Pod"


def containers(*names: str) -> Dict[str, Any]:
    return {"metadata": {"name": "p"}, "spec": {"containers": [{"name": n, "image": n} for n in names]}}


def names(obj: Dict[str, Any]) -> List[str]:
    return [c["name"] for c in obj["spec"]["containers"]]


@pytest.mark.parametrize("original, patch, order", [
    # the patch's elements in its order; a server-only one before the next patch element only if that was after it
    ("abcde", "dxa", "bcdxae"),
    ("abc", "xc", "xabc"),
    ("abc", "", "abc"),
    ("", "ab", "ab"),
])
def test_merged_lists_are_in_kubes_order(original: str, patch: str, order: str) -> None:
    out = strategic_merge_patch(containers(*original), {"spec": {"containers": [{"name": n} for n in patch]}}, DEFAULT_SCHEMA, POD)
    assert names(out) == list(order)


def test_directives_of_lists_and_maps() -> None:
    pod = containers("a", "b", "c")
    pod["metadata"]["finalizers"] = ["f1", "f2"]
    out = strategic_merge_patch(pod, {"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}, DEFAULT_SCHEMA, POD)
    assert names(out) == ["a", "c"] and names(pod) == ["a", "b", "c"]  # the original is left as it was
    out = strategic_merge_patch(pod, {"spec": {"containers": [{"$patch": "replace"}, {"name": "z"}]}}, DEFAULT_SCHEMA, POD)
    assert out["spec"]["containers"] == [{"name": "z"}]
    out = strategic_merge_patch(pod, {"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}]}},
                                DEFAULT_SCHEMA, POD)
    assert names(out) == ["c", "a", "b"]
    out = strategic_merge_patch(pod, {"metadata": {"finalizers": ["f3", "f1"]}}, DEFAULT_SCHEMA, POD)
    assert out["metadata"]["finalizers"] == ["f3", "f1", "f2"]
    out = strategic_merge_patch(pod, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}}, DEFAULT_SCHEMA, POD)
    assert out["metadata"]["finalizers"] == ["f2"]
    out = strategic_merge_patch(pod, {"spec": {"$patch": "replace", "containers": [{"name": "q"}]}}, DEFAULT_SCHEMA, POD)
    assert out["spec"] == {"containers": [{"name": "q"}]}
    for bad, code in (({"spec": {"containers": [{"image": "no-name"}]}}, 422), ({"$patch": "bogus"}, 422),
                      ({"metadata": {"$deleteFromPrimitiveListX": []}}, 400), ({"spec": {"$retainKeys": "x"}}, 400),
                      ({"spec": {"nope": {"a": 1}}}, 200)):
        if code == 200:  # an unknown field whose original is absent is copied, for fieldValidation to judge
            assert strategic_merge_patch(pod, bad, DEFAULT_SCHEMA, POD)["spec"]["nope"] == {"a": 1}
            continue
        with pytest.raises(APIError) as info:
            strategic_merge_patch(pod, bad, DEFAULT_SCHEMA, POD)
        assert info.value.code == code, (bad, info.value.message)


# ----------------------------------------------------------------------------- against k8s.io/apiserver

BASE_POD: Dict[str, Any] = {
    "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["f1", "f2"],
                 "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o1", "uid": "u1"},
                                     {"apiVersion": "v1", "kind": "ConfigMap", "name": "o2", "uid": "u2"}]},
    "spec": {
        "containers": [
            {"name": "a", "image": "ia", "args": ["x", "y"],
             "env": [{"name": "E1", "value": "1"}, {"name": "E2", "value": "2"}],
             "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 443, "name": "https"}],
             "volumeMounts": [{"name": "v1", "mountPath": "/m1"}]},
            {"name": "b", "image": "ib"},
            {"name": "c", "image": "ic"},
        ],
        "volumes": [{"name": "v1", "emptyDir": {"medium": "Memory"}}, {"name": "v2", "configMap": {"name": "cm"}}],
        "tolerations": [{"key": "k1", "operator": "Exists"}],
        "nodeSelector": {"zone": "z1"},
    },
}

POD_PATCHES: List[Any] = [
    {"spec": {"containers": [{"name": "a", "image": "ia2"}]}},
    {"spec": {"containers": [{"name": "d", "image": "id"}]}},
    {"spec": {"containers": [{"name": "x", "image": "ix"}, {"name": "b", "image": "ib2"}]}},
    {"spec": {"containers": [{"name": "c", "image": "ic2"}, {"name": "z", "image": "iz"}, {"name": "a", "image": "ia3"}]}},
    {"spec": {"containers": [{"name": "b", "$patch": "delete"}]}},
    {"spec": {"containers": [{"$patch": "replace"}, {"name": "z", "image": "iz"}]}},
    {"spec": {"containers": [{"name": "a", "env": [{"name": "E2", "$patch": "delete"}, {"name": "E3", "value": "3"}]}]}},
    {"spec": {"containers": [{"name": "a", "env": [{"name": "E1", "value": None, "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}]}},
    {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 8080}], "args": ["z"]}]}},
    {"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}],
              "containers": [{"name": "a", "image": "ia4"}]}},
    {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "n"}, {"name": "a"}, {"name": "c"}],
              "containers": [{"name": "n", "image": "in"}]}},
    {"metadata": {"finalizers": ["f3", "f1"]}},
    {"metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}},
    {"metadata": {"$setElementOrder/finalizers": ["f2", "f1"]}},
    {"metadata": {"ownerReferences": [{"uid": "u2", "name": "o2b"}, {"apiVersion": "v1", "kind": "ConfigMap", "name": "o3", "uid": "u3"}]}},
    {"metadata": {"ownerReferences": [{"uid": "u1", "$patch": "delete"}]}},
    {"metadata": {"labels": {"a": None, "c": "3"}}},
    {"spec": {"tolerations": [{"key": "k2", "operator": "Exists"}]}},
    {"spec": {"nodeSelector": {"$patch": "replace", "disk": "ssd"}}},
    {"spec": {"volumes": [{"name": "v2", "$retainKeys": ["name", "secret"], "secret": {"secretName": "s"}}]}},
    {"spec": {"volumes": [{"name": "v3", "secret": {"secretName": "s3"}}, {"name": "v1", "$patch": "delete"}]}},
    {"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "2"}}}]}},
    {"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1"}}}]}},
    {"spec": {"containers": [{"name": "b", "image": None}], "nodeSelector": None}},
    {"spec": {"containers": None}},
    {"spec": {"containers": []}},
    {"spec": {"containers": [{"name": "a", "$patch": "replace", "image": "ir"}]}},
    {"$patch": "replace", "metadata": {"name": "NAME"}, "spec": {"containers": [{"name": "only", "image": "io"}]}},
    {"spec": {"containers": [{"image": "no-merge-key"}]}},
    {"metadata": {"$deleteFromPrimitiveListX": ["f1"]}},
    {"spec": {"$retainKeys": "not-a-list"}},
    {"spec": {"$setElementOrder/containers": [{"name": "a"}], "containers": [{"name": "b", "image": "ib3"}]}},
    {"spec": {"containers": [{"name": "a", "args": [["nested"]]}]}},
    {"$patch": "bogus"},
]

BASE_SECRET: Dict[str, Any] = {"metadata": {"labels": {"a": "1"}}, "type": "Opaque", "data": {"k": "dg==", "j": "ag=="}}
SECRET_PATCHES: List[Any] = [
    {"data": {"x": "eA==", "k": None}},
    {"data": {"$patch": "replace", "x": "eA=="}},
    {"stringData": {"s": "text"}},
    {"$retainKeys": ["metadata", "data", "type"], "data": {"n": "bg=="}},
    {"metadata": {"annotations": {"n": "1"}, "finalizers": ["f"]}},
]


def _normal(value: Any) -> Any:
    """``value`` without Go's empty zero values (``{}``, ``[]``, ``""``, null), which Go's JSON writes for
    non-pointer structs and this server does not invent."""
    if isinstance(value, dict):
        out = {k: _normal(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ({}, [], "", None)}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _comparable(obj: Dict[str, Any]) -> Dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    for owned in ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"):
        obj.get("metadata", {}).pop(owned, None)
    return dict(_normal(obj))


@pytest.fixture(scope="module")
def servers(etcd: EtcdProcess) -> Iterator[Tuple[httpx.Client, httpx.Client]]:
    prefix = f"/registry/test-{uuid.uuid4().hex}"
    with KubeAPIServer(provision_kube_apiserver(), etcd.endpoint, prefix=prefix + "-peer").start() as peer, \
            ServerThread(etcd.endpoint, (prefix + "/").encode()) as ours:
        with httpx.Client(base_url=ours.url, timeout=20) as a, httpx.Client(base_url=peer.url, timeout=20) as b:
            b.post("/api/v1/namespaces", json={"metadata": {"name": "default"}})
            yield a, b


def _both(servers: Tuple[httpx.Client, httpx.Client], resource: str, base: Dict[str, Any], patch: Any) -> None:
    name = f"s-{uuid.uuid4().hex[:8]}"
    obj = json.loads(json.dumps(base))
    obj["metadata"]["name"] = name
    body = json.dumps(patch).replace("NAME", name)
    answers = []
    for c in servers:
        created = c.post(f"/api/v1/namespaces/default/{resource}", json=obj)
        assert created.status_code == 201, created.text
        answers.append(c.patch(f"/api/v1/namespaces/default/{resource}/{name}", content=body, headers=SMP))
    ours, peer = answers
    if peer.status_code >= 500:  # kube passes some merge errors through as 500s; ours are 4xx
        assert 400 <= ours.status_code < 500, (patch, ours.text)
        return
    assert ours.status_code == peer.status_code, (patch, ours.text, peer.text)
    if peer.status_code == 200:
        assert _comparable(ours.json()) == _comparable(peer.json()), patch
        assert _comparable(servers[0].get(f"/api/v1/namespaces/default/{resource}/{name}").json()) == _comparable(ours.json())


@pytest.mark.clientgo
@pytest.mark.parametrize("patch", POD_PATCHES, ids=lambda p: json.dumps(p)[:60])
def test_pod_patches_give_what_kube_apiserver_gives(servers: Tuple[httpx.Client, httpx.Client], patch: Any) -> None:
    _both(servers, "pods", BASE_POD, patch)


@pytest.mark.clientgo
@pytest.mark.parametrize("patch", SECRET_PATCHES, ids=lambda p: json.dumps(p)[:60])
def test_secret_patches_give_what_kube_apiserver_gives(servers: Tuple[httpx.Client, httpx.Client], patch: Any) -> None:
    _both(servers, "secrets", BASE_SECRET, patch)


# ----------------------------------------------------------------------------- kubectl apply on both servers

APPLIED: List[Dict[str, Any]] = [
    {"metadata": {"labels": {"app": "web"}, "annotations": {"a": "1"}},
     "spec": {"containers": [
         {"name": "app", "image": "app:1", "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 9090, "name": "metrics"}],
          "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
         {"name": "side", "image": "side:1"}],
         "volumes": [{"name": "data", "emptyDir": {}}], "tolerations": [{"key": "k", "operator": "Exists"}]}},
    {"metadata": {"labels": {"app": "web", "tier": "front"}},
     "spec": {"containers": [
         {"name": "side", "image": "side:2"},
         {"name": "app", "image": "app:2", "ports": [{"containerPort": 80, "name": "http"}],
          "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}], "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
         "volumes": [{"name": "data", "configMap": {"name": "cm"}}, {"name": "extra", "emptyDir": {}}]}},
    {"metadata": {"labels": {"app": "web"}},
     "spec": {"initContainers": [{"name": "init", "image": "init:1"}],
              "containers": [{"name": "app", "image": "app:3", "ports": [{"containerPort": 8080}],
                              "env": [{"name": "C", "value": "5"}]}],
              "volumes": [{"name": "extra", "emptyDir": {"medium": "Memory"}}]}},
]


@pytest.mark.clientgo
def test_kubectl_apply_gives_what_it_gives_on_kube_apiserver(servers: Tuple[httpx.Client, httpx.Client], tmp_path: Any) -> None:
    """Client-side kubectl apply computes three-way strategic patches (with $setElementOrder, $retainKeys and
    deletions); applied in turn to both servers, each version leaves the same Pod on both."""
    kubectl = subprocess.run([str(ROOT / "scripts" / "provision-kubectl")], capture_output=True, text=True, timeout=600)
    assert kubectl.returncode == 0, kubectl.stderr
    name = f"applied-{uuid.uuid4().hex[:6]}"
    for version, manifest in enumerate(APPLIED):
        obj = json.loads(json.dumps(manifest))
        obj.update(apiVersion="v1", kind="Pod")
        obj["metadata"]["name"] = name
        path = tmp_path / f"v{version}.json"
        path.write_text(json.dumps(obj))
        results = []
        for c in servers:
            proc = subprocess.run([kubectl.stdout.strip(), f"--server={c.base_url}", "--namespace=default", "--validate=false",
                                   f"--cache-dir={tmp_path / 'cache'}", "apply", "-f", str(path)],
                                  capture_output=True, text=True, timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
            assert proc.returncode == 0, proc.stderr
            results.append(_comparable(c.get(f"/api/v1/namespaces/default/pods/{name}").json()))
        ours, peer = results
        assert ours == peer, version
