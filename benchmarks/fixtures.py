"""The objects every benchmark and memory test uses.

Made deterministically (no randomness across runs) so figures compare.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict


def pod() -> Dict[str, Any]:
    """A typical Pod, about 3 KB of JSON."""
    containers = []
    for i in range(2):
        containers.append(
            {
                "name": f"app-{i}",
                "image": f"registry.example/team/app-{i}:v1.{i}.3",
                "command": ["/bin/server", "--port=8080", "--log-level=info"],
                "ports": [{"containerPort": 8080 + i, "name": "http", "protocol": "TCP"}],
                "env": [{"name": f"ENV_{j}", "value": f"value-{j}-é"} for j in range(2)],
                "resources": {
                    "limits": {"cpu": "500m", "memory": "256Mi"},
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                },
                "volumeMounts": [
                    {"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": "kube-api-access", "readOnly": True}
                ],
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                    "initialDelaySeconds": 5,
                    "periodSeconds": 10,
                    "successThreshold": 1,
                    "failureThreshold": 3,
                    "timeoutSeconds": 1,
                },
                "imagePullPolicy": "IfNotPresent",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-7d4b9c8f6-x2lkq",
            "namespace": "default",
            "uid": "5f0c9a52-8a3e-4b8e-9d0f-1c2b3a4d5e6f",
            "resourceVersion": "123456",
            "creationTimestamp": "2026-11-28T10:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6", "tier": "frontend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-27T09:00:00Z", "note": "naïve ✓"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6", "uid": "0a1b2c3d", "controller": True, "blockOwnerDeletion": True}
            ],
        },
        "spec": {
            "containers": containers,
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": "node-1",
            "priority": 0,
            "enableServiceLinks": True,
            "tolerations": [
                {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
            ],
        },
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.4",
            "podIP": "10.244.1.17",
            "startTime": "2026-11-28T10:00:01Z",
            "qosClass": "Burstable",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-11-28T10:00:0%dZ" % k, "lastProbeTime": None}
                for k, t in enumerate(["Initialized", "Ready", "ContainersReady", "PodScheduled"])
            ],
            "containerStatuses": [
                {"name": f"app-{i}", "ready": True, "restartCount": 0, "started": True, "image": f"registry.example/team/app-{i}:v1.{i}.3",
                 "imageID": "sha256:" + "ab" * 16, "containerID": "containerd://" + "cd" * 16,
                 "state": {"running": {"startedAt": "2026-11-28T10:00:03Z"}}}
                for i in range(2)
            ],
        },
    }


def secret(size: int = 1024 * 1024, name: str = "big-secret") -> Dict[str, Any]:
    """A Secret whose data (base64 text, as Kubernetes stores it) is ``size`` bytes of JSON."""
    raw = bytes((i * 131 + 7) % 256 for i in range(256)) * (size * 3 // 4 // 256 + 1)
    payload = base64.b64encode(raw).decode()[:size]
    payload = payload[: len(payload) // 4 * 4]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
        "data": {"payload": payload},
    }


def configmap(keys: int = 1000) -> Dict[str, Any]:
    """A ConfigMap with ``keys`` small entries."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "many-keys", "namespace": "default"},
        "data": {f"key-{i:04d}": f"value {i} ✓" for i in range(keys)},
    }


def deep_custom_resource(depth: int = 64) -> Dict[str, Any]:
    """A custom resource nesting ``depth`` levels of maps and lists."""
    node: Any = {"leaf": True, "value": 3.25, "count": 7, "tags": ["a", "b"]}
    for i in range(depth):
        node = {"level": i, "child": node} if i % 2 else [node, {"i": i}]
    return {"apiVersion": "example.com/v1", "kind": "Deep", "metadata": {"name": "deep"}, "spec": {"tree": node}}


FIXTURES = {
    "pod": pod,
    "secret_1mb": secret,
    "configmap_1000": configmap,
    "deep_cr": deep_custom_resource,
}

if __name__ == "__main__":
    for name, make in FIXTURES.items():
        print(name, len(json.dumps(make(), separators=(",", ":"), ensure_ascii=False).encode()))


def store_secrets(endpoint: str, objects: int, object_bytes: int) -> Dict[str, Any]:
    """Store ``objects`` Secrets of ``object_bytes`` (their data's decoded size) in etcd at
    ``endpoint``, as the server stores them, under a fresh key root.

    Returns ``root`` (the server's ``--key-root``), ``prefix`` (of the Secrets of namespace
    default), ``largest`` (the largest stored value), ``total`` (bytes of base64 data in all) and
    ``collection_bytes`` (keys and values, what one full read makes etcd send).
    """
    import asyncio
    import uuid

    from streamcodec.server.objects import encode_for_storage
    from streamcodec.storage import EtcdStore

    root = f"/registry/bench-{uuid.uuid4().hex}"
    prefix = f"{root}/secrets/default/".encode()
    payload = base64.b64encode(bytes(range(256)) * (object_bytes * 3 // 4 // 256)).decode()
    largest = collection = 0

    async def fill() -> None:
        nonlocal largest, collection
        async with EtcdStore([endpoint], max_object_bytes=2 * object_bytes) as store:
            for i in range(objects):
                name = f"secret-{i:04d}"
                key = prefix + name.encode()
                value = encode_for_storage({
                    "metadata": {"name": name, "namespace": "default", "uid": str(uuid.UUID(int=i))},
                    "kind": "Secret", "apiVersion": "v1", "type": "Opaque", "data": {"blob": payload},
                })  # fmt: skip
                largest = max(largest, len(value))
                collection += len(key) + len(value)
                await store.put(key, value)

    asyncio.run(fill())
    return {"root": root, "prefix": prefix, "largest": largest, "total": objects * len(payload),
            "collection_bytes": collection}
