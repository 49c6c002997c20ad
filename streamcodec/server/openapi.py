"""OpenAPI v3 for ``/api/v1``: what kubectl reads before it writes.

kubectl's ``apply``, ``create`` and ``replace`` validate an object before sending it (``--validate``,
strict by default): they download ``/openapi/v3`` (the group-versions and where their documents are)
and the ``api/v1`` document, and when its PATCH operation for the object's kind takes the
``fieldValidation`` query parameter, they leave the checking to the server (``fieldValidation=Strict``
is sent) instead of failing for want of a schema.  So the document has each resource's paths with
kube's operations, each marked with ``x-kubernetes-group-version-kind`` and ``x-kubernetes-action``
and the write options as query parameters, and the kinds' schemas from the schema registry (types
and fields, no descriptions).  Its shape (root ``paths`` -> ``serverRelativeURL`` with a content hash,
``components.schemas`` named ``io.k8s.api.core.v1.Pod``) is kube-openapi's.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Iterable, List, Tuple

from streamcodec.kube_schema import KubeSchema

from .objects import Resource

__all__ = ["OpenAPI"]

_TYPES: Dict[str, Dict[str, Any]] = {
    "STRING": {"type": "string"},
    "BYTES": {"type": "string", "format": "byte"},
    "BOOL": {"type": "boolean"},
    "INT32": {"type": "integer", "format": "int32"},
    "INT64": {"type": "integer", "format": "int64"},
    "DOUBLE": {"type": "number", "format": "double"},
    "TIME": {"type": "string", "format": "date-time"},
    "DURATION": {"type": "string"},
    "QUANTITY": {"x-kubernetes-int-or-string": True},
    "INTORSTRING": {"x-kubernetes-int-or-string": True},
    "RAWJSON": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
}

_WRITE_PARAMETERS = ("dryRun", "fieldManager", "fieldValidation")
_READ_PARAMETERS = ("allowWatchBookmarks", "continue", "fieldSelector", "labelSelector", "limit", "resourceVersion",
                    "resourceVersionMatch", "sendInitialEvents", "timeoutSeconds", "watch")


def _schema_name(message: str) -> str:
    """kube-openapi's name of a message: ``k8s.io.api.core.v1.Pod`` -> ``io.k8s.api.core.v1.Pod``."""
    return "io.k8s." + message[len("k8s.io."):] if message.startswith("k8s.io.") else message


def _query(names: Iterable[str]) -> List[Dict[str, Any]]:
    return [{"name": n, "in": "query", "schema": {"type": "string"}, "uniqueItems": True} for n in names]


class OpenAPI:
    """The ``/openapi/v3`` root and ``api/v1`` document of a server's resources, encoded once (JSON)."""

    def __init__(self, resources: Iterable[Resource], schema: KubeSchema) -> None:
        resources = list(resources)
        document = {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1"},
            "paths": dict(self._paths(resources)),
            "components": {"schemas": self._schemas(resources, schema)},
        }
        self.document = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
        digest = hashlib.sha512(self.document).hexdigest().upper()
        self.root = json.dumps({"paths": {"api/v1": {"serverRelativeURL": f"/openapi/v3/api/v1?hash={digest}"}}}).encode()

    @staticmethod
    def _paths(resources: List[Resource]) -> Iterable[Tuple[str, Dict[str, Any]]]:
        for r in resources:
            gvk = {"group": "", "version": "v1", "kind": r.kind}

            def op(action: str, params: Iterable[str], r: Resource = r, gvk: Dict[str, Any] = gvk) -> Dict[str, Any]:
                return {"operationId": f"{action}CoreV1{r.kind}", "parameters": _query(params),
                        "responses": {"200": {"description": "OK"}},
                        "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk}

            base = "/api/v1/namespaces/{namespace}/" + r.name if r.namespaced else "/api/v1/" + r.name
            yield base, {"get": op("list", _READ_PARAMETERS), "post": op("post", _WRITE_PARAMETERS)}
            yield base + "/{name}", {
                "get": op("get", ()), "put": op("put", _WRITE_PARAMETERS),
                "patch": op("patch", _WRITE_PARAMETERS + ("force",)), "delete": op("delete", ("dryRun", "gracePeriodSeconds")),
            }

    @staticmethod
    def _schemas(resources: List[Resource], schema: KubeSchema) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        todo: List[str] = []
        kinds: Dict[str, str] = {}
        for r in resources:
            message = schema.message_name("v1", r.kind)
            if message is not None:
                todo.append(message)
                kinds[message] = r.kind
        while todo:
            message = todo.pop()
            name = _schema_name(message)
            if name in out:
                continue
            properties: Dict[str, Any] = {}
            for field in schema.message(message).fields:
                if field.kind == "MESSAGE":
                    assert field.message is not None
                    value: Dict[str, Any] = {"$ref": "#/components/schemas/" + _schema_name(field.message)}
                    todo.append(field.message)
                else:
                    value = dict(_TYPES[field.kind])
                if field.shape == "REPEATED":
                    value = {"type": "array", "items": value}
                elif field.shape == "MAP":
                    value = {"type": "object", "additionalProperties": value}
                properties[field.json_name] = value
            entry: Dict[str, Any] = {"type": "object", "properties": properties}
            if message in kinds:
                entry["x-kubernetes-group-version-kind"] = [{"group": "", "version": "v1", "kind": kinds[message]}]
            out[name] = entry
        return out
