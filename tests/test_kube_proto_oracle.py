"""The Kubernetes typed-protobuf oracle (tests/kube_proto.py) works on its own, WITHOUT streamcodec's code.

Messages are built with the classes compiled from Kubernetes' own generated.proto files, wrapped in the
``k8s\\x00`` + runtime.Unknown envelope by hand (at the wire level, with a tiny protobuf writer below), and
decoded back; known-answer bytes pin the field numbers, so a wrong schema or a lax decoder fails here.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Any, List, Tuple

import pytest

from tests import kube_proto as kube_proto_mod

CORE = "k8s.io.api.core.v1"
META = "k8s.io.apimachinery.pkg.apis.meta.v1"


# -- a minimal protobuf writer, independent of google.protobuf ------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def vi(field: int, n: int) -> bytes:
    """A varint field (wire type 0)."""
    return varint(field << 3) + varint(n)


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    """``k8s\\x00`` + runtime.Unknown as Kubernetes' serializer writes it: typeMeta=1{apiVersion=1, kind=2},
    raw=2, and the empty contentEncoding=3 / contentType=4 that gogo's proto2 marshaller always emits."""
    type_meta = ld(1, api_version.encode()) + ld(2, kind.encode())
    return b"k8s\x00" + ld(1, type_meta) + ld(2, raw) + ld(3, b"") + ld(4, b"")


def watch_frame(event_type: str, object_frame: bytes) -> bytes:
    """One frame of a protobuf watch: 4-byte big-endian length + metav1.WatchEvent{type=1, object=2{raw=1}}."""
    event = ld(1, event_type.encode()) + ld(2, ld(1, object_frame))
    return struct.pack(">I", len(event)) + event


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- fixtures ------------------------------------------------------------------------------------------------


def make_secret(kp: Any, name: str = "db-creds", rv: str = "12345") -> Any:
    Secret = kp.message(f"{CORE}.Secret")
    secret = Secret()
    secret.metadata.name = name
    secret.metadata.namespace = "prod"
    secret.metadata.resourceVersion = rv
    secret.metadata.uid = "0b6f6c1e-8f1e-4a57-9d35-7c1c2f9e2a11"
    secret.metadata.creationTimestamp.seconds = 1700000000
    secret.metadata.annotations["team"] = "payments"
    secret.metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"] = '{"a":1}'
    secret.metadata.labels["app"] = "db"
    secret.data["password"] = b"s3cr3t\x00\xff"
    secret.data["user"] = b"admin"
    secret.type = "Opaque"
    return secret


SECRET_DICT = {
    "metadata": {
        "name": "db-creds",
        "namespace": "prod",
        "uid": "0b6f6c1e-8f1e-4a57-9d35-7c1c2f9e2a11",
        "resourceVersion": "12345",
        "creationTimestamp": {"seconds": "1700000000"},
        "labels": {"app": "db"},
        "annotations": {"team": "payments", "kubectl.kubernetes.io/last-applied-configuration": '{"a":1}'},
    },
    "data": {"password": b64(b"s3cr3t\x00\xff"), "user": b64(b"admin")},
    "type": "Opaque",
}


# -- tests ---------------------------------------------------------------------------------------------------


def test_compiled_files(kube_proto: Any) -> None:
    for name in kube_proto_mod.DEFAULT_FILES:
        assert name in kube_proto.files
    assert os.path.isfile(os.path.join(kube_proto.include_root, "k8s.io/api/core/v1/generated.proto"))
    for full_name in (f"{CORE}.Secret", f"{CORE}.Pod", f"{META}.WatchEvent", f"{META}.Status",
                      "k8s.io.apimachinery.pkg.runtime.Unknown", "k8s.io.apimachinery.pkg.api.resource.Quantity",
                      "k8s.io.apimachinery.pkg.util.intstr.IntOrString"):
        assert kube_proto.message(full_name).DESCRIPTOR.full_name == full_name
    with pytest.raises(KeyError):
        kube_proto.message(f"{CORE}.NoSuchKind")


def test_secret_in_hand_made_envelope(kube_proto: Any) -> None:
    secret = make_secret(kube_proto)
    frame = envelope("v1", "Secret", secret.SerializeToString())
    api_version, kind, decoded = kube_proto.decode_object(frame)
    assert (api_version, kind) == ("v1", "Secret")
    assert decoded.DESCRIPTOR.full_name == f"{CORE}.Secret"
    assert decoded == secret
    assert kube_proto.to_dict(decoded) == SECRET_DICT
    assert decoded.data["password"] == b"s3cr3t\x00\xff"
    assert decoded.metadata.creationTimestamp.seconds == 1700000000
    # The oracle's own encoder writes the envelope the same way, up to the empty strings gogo emits.
    assert kube_proto.decode_object(kube_proto.encode_object(secret, "v1", "Secret"))[2] == secret


def test_secret_known_answer_bytes(kube_proto: Any) -> None:
    """Bytes written by hand field by field (Secret: metadata=1, data=2, type=3; ObjectMeta: name=1,
    namespace=3, resourceVersion=6, creationTimestamp=8{seconds=1}, annotations=12) decode to the expected
    message: the compiled schema has Kubernetes' field numbers."""
    meta = (
        ld(1, b"s1") + ld(3, b"ns") + ld(6, b"42") + ld(8, vi(1, 1700000000))
        + ld(12, ld(1, b"k") + ld(2, b"v"))
    )
    raw = ld(1, meta) + ld(2, ld(1, b"key") + ld(2, b"\x00\x01\x02")) + ld(3, b"Opaque")
    api_version, kind, secret = kube_proto.decode_object(envelope("v1", "Secret", raw))
    assert (api_version, kind) == ("v1", "Secret")
    assert kube_proto.to_dict(secret) == {
        "metadata": {"name": "s1", "namespace": "ns", "resourceVersion": "42",
                     "creationTimestamp": {"seconds": "1700000000"}, "annotations": {"k": "v"}},
        "data": {"key": b64(b"\x00\x01\x02")},
        "type": "Opaque",
    }


def test_status_maps_to_meta_v1(kube_proto: Any) -> None:
    Status = kube_proto.message(f"{META}.Status")
    status = Status(status="Failure", message='secrets "x" not found', reason="NotFound", code=404)
    status.details.name = "x"
    status.details.kind = "secrets"
    api_version, kind, decoded = kube_proto.decode_object(envelope("v1", "Status", status.SerializeToString()))
    assert (api_version, kind) == ("v1", "Status")
    assert decoded.DESCRIPTOR.full_name == f"{META}.Status"
    assert kube_proto.to_dict(decoded) == {
        "status": "Failure", "message": 'secrets "x" not found', "reason": "NotFound", "code": 404,
        "details": {"name": "x", "kind": "secrets"},
    }


def test_watch_stream_of_two_frames(kube_proto: Any) -> None:
    added = make_secret(kube_proto, name="a", rv="100")
    deleted = make_secret(kube_proto, name="b", rv="101")
    body = (watch_frame("ADDED", envelope("v1", "Secret", added.SerializeToString()))
            + watch_frame("DELETED", envelope("v1", "Secret", deleted.SerializeToString())))
    events = kube_proto.decode_watch_stream(body)
    assert [(t, v, k, kube_proto.to_dict(m)["metadata"]["name"]) for t, v, k, m in events] == [
        ("ADDED", "v1", "Secret", "a"),
        ("DELETED", "v1", "Secret", "b"),
    ]
    assert events[0][3] == added and events[1][3] == deleted
    assert events[1][3].metadata.resourceVersion == "101"
    # Frames built with the official WatchEvent class are the same bytes as the hand-made ones.
    WatchEvent, RawExtension = kube_proto.WatchEvent, kube_proto.RawExtension
    official = WatchEvent(type="ADDED", object=RawExtension(raw=envelope("v1", "Secret", added.SerializeToString())))
    payload = official.SerializeToString()
    assert body.startswith(struct.pack(">I", len(payload)) + payload)
    assert kube_proto.decode_watch_stream(b"") == []


def make_pod(kp: Any) -> Any:
    Pod = kp.message(f"{CORE}.Pod")
    pod = Pod()
    pod.metadata.name = "web-0"
    pod.metadata.namespace = "default"
    pod.metadata.resourceVersion = "777"
    pod.metadata.labels["app"] = "web"
    pod.spec.nodeName = "node-1"
    pod.spec.restartPolicy = "Always"
    web = pod.spec.containers.add(name="web", image="nginx:1.27")
    web.args.extend(["-g", "daemon off;"])
    web.ports.add(name="http", containerPort=8080, protocol="TCP")
    web.resources.requests["cpu"].string = "250m"
    web.resources.requests["memory"].string = "64Mi"
    web.resources.limits["memory"].string = "128Mi"
    web.livenessProbe.handler.httpGet.path = "/healthz"
    web.livenessProbe.handler.httpGet.port.type = 0  # IntOrString: Int
    web.livenessProbe.handler.httpGet.port.intVal = 8080
    web.readinessProbe.handler.tcpSocket.port.type = 1  # IntOrString: String
    web.readinessProbe.handler.tcpSocket.port.strVal = "http"
    web.volumeMounts.add(name="config", mountPath="/etc/nginx", readOnly=True)
    web.volumeMounts.add(name="cache", mountPath="/var/cache/nginx")
    web.env.add(name="MODE", value="prod")
    pod.spec.containers.add(name="sidecar", image="busybox").command.extend(["sleep", "3600"])
    config = pod.spec.volumes.add(name="config")
    config.volumeSource.configMap.localObjectReference.name = "nginx-conf"
    config.volumeSource.configMap.defaultMode = 0o644
    cache = pod.spec.volumes.add(name="cache")
    cache.volumeSource.emptyDir.sizeLimit.string = "1Gi"
    pod.spec.volumes.add(name="creds").volumeSource.secret.secretName = "db-creds"
    pod.status.phase = "Running"
    pod.status.podIP = "10.1.2.3"
    return pod


POD_DICT = {
    "metadata": {"name": "web-0", "namespace": "default", "resourceVersion": "777", "labels": {"app": "web"}},
    "spec": {
        "volumes": [
            {"name": "config", "volumeSource": {"configMap": {"localObjectReference": {"name": "nginx-conf"},
                                                              "defaultMode": 0o644}}},
            {"name": "cache", "volumeSource": {"emptyDir": {"sizeLimit": {"string": "1Gi"}}}},
            {"name": "creds", "volumeSource": {"secret": {"secretName": "db-creds"}}},
        ],
        "containers": [
            {
                "name": "web",
                "image": "nginx:1.27",
                "args": ["-g", "daemon off;"],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "MODE", "value": "prod"}],
                "resources": {
                    "limits": {"memory": {"string": "128Mi"}},
                    "requests": {"cpu": {"string": "250m"}, "memory": {"string": "64Mi"}},
                },
                "volumeMounts": [{"name": "config", "readOnly": True, "mountPath": "/etc/nginx"},
                                 {"name": "cache", "mountPath": "/var/cache/nginx"}],
                "livenessProbe": {"handler": {"httpGet": {"path": "/healthz", "port": {"type": "0", "intVal": 8080}}}},
                "readinessProbe": {"handler": {"tcpSocket": {"port": {"type": "1", "strVal": "http"}}}},
            },
            {"name": "sidecar", "image": "busybox", "command": ["sleep", "3600"]},
        ],
        "restartPolicy": "Always",
        "nodeName": "node-1",
    },
    "status": {"phase": "Running", "podIP": "10.1.2.3"},
}


def test_pod_with_containers_quantities_intorstring_volumes(kube_proto: Any) -> None:
    pod = make_pod(kube_proto)
    api_version, kind, decoded = kube_proto.decode_object(envelope("v1", "Pod", pod.SerializeToString()))
    assert (api_version, kind) == ("v1", "Pod")
    assert decoded == pod
    assert kube_proto.to_dict(decoded) == POD_DICT
    web = decoded.spec.containers[0]
    assert web.resources.requests["cpu"].string == "250m"
    assert web.livenessProbe.handler.httpGet.port.intVal == 8080
    assert web.readinessProbe.handler.tcpSocket.port.strVal == "http"
    assert decoded.spec.volumes[1].volumeSource.emptyDir.sizeLimit.string == "1Gi"


def test_intorstring_and_quantity_known_answer(kube_proto: Any) -> None:
    """IntOrString{type=1 (int64), intVal=2 (int32), strVal=3} and Quantity{string=1}, by hand."""
    IntOrString = kube_proto.message("k8s.io.apimachinery.pkg.util.intstr.IntOrString")
    Quantity = kube_proto.message("k8s.io.apimachinery.pkg.api.resource.Quantity")
    assert kube_proto.to_dict(kube_proto.parse(IntOrString, vi(1, 0) + vi(2, 443))) == {"type": "0", "intVal": 443}
    assert kube_proto.to_dict(kube_proto.parse(IntOrString, vi(1, 1) + ld(3, b"https"))) == {"type": "1", "strVal": "https"}
    assert kube_proto.parse(Quantity, ld(1, b"500m")).string == "500m"


# -- the oracle rejects what is not Kubernetes protobuf ------------------------------------------------------


def test_rejects_missing_magic(kube_proto: Any) -> None:
    frame = envelope("v1", "Secret", make_secret(kube_proto).SerializeToString())
    with pytest.raises(kube_proto_mod.DecodeError, match="magic"):
        kube_proto.decode_object(frame[4:])
    with pytest.raises(kube_proto_mod.DecodeError, match="magic"):
        kube_proto.decode_object(b"k8s\x01" + frame[4:])


def test_rejects_unknown_fields_even_nested(kube_proto: Any) -> None:
    raw = make_secret(kube_proto).SerializeToString()
    with pytest.raises(kube_proto_mod.UnknownFieldsError, match="Secret#9"):
        kube_proto.decode_object(envelope("v1", "Secret", raw + ld(9, b"x")))
    nested = ld(1, ld(1, b"n") + vi(99, 5))  # ObjectMeta has no field 99
    with pytest.raises(kube_proto_mod.UnknownFieldsError, match=r"metadata#99"):
        kube_proto.decode_object(envelope("v1", "Secret", nested))
    # ... unless asked to be lax.
    _, _, lax = kube_proto.decode_object(envelope("v1", "Secret", nested), strict=False)
    assert lax.metadata.name == "n"


def test_rejects_unknown_kind_and_garbage(kube_proto: Any) -> None:
    with pytest.raises(kube_proto_mod.DecodeError, match="NoSuchKind"):
        kube_proto.decode_object(envelope("v1", "NoSuchKind", b""))
    with pytest.raises(kube_proto_mod.DecodeError):
        kube_proto.decode_object(envelope("v1", "Secret", b"\x0a\xff\xff\xff\x0f"))  # length past the end


def test_rejects_truncated_watch_frames(kube_proto: Any) -> None:
    frame = watch_frame("ADDED", envelope("v1", "Secret", make_secret(kube_proto).SerializeToString()))
    with pytest.raises(kube_proto_mod.DecodeError, match="truncated"):
        kube_proto.decode_watch_stream(frame + frame[:-1])
    with pytest.raises(kube_proto_mod.DecodeError, match="truncated frame header"):
        kube_proto.decode_watch_stream(frame + b"\x00\x00")
    events: List[Tuple[str, str, str, Any]] = kube_proto.decode_watch_stream(frame + frame)
    assert len(events) == 2
