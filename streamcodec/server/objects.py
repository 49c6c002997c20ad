"""Resources, etcd keys, and turning stored values into response objects.

Stored values
-------------
Objects live under ``{root}/{resource}/{namespace}/{name}`` (cluster-scoped:
``{root}/{resource}/{name}``).  The stored format is detected from the value:
CBOR (self-describe tag ``d9 d9 f7``), protobuf (``k8s\\x00``), else JSON.
This server writes JSON only, with ``metadata`` as the first key and without
``metadata.resourceVersion`` (Kubernetes' own convention: the version is
etcd's mod revision and is patched in on every read).

Pass-through
------------
The response must carry ``metadata.resourceVersion`` = mod revision, which
stored bytes do not hold.  For JSON out of JSON stored in this server's
layout (starts with ``{"metadata":{`` and holds no ``"resourceVersion"``
anywhere) the version is spliced in as bytes and the result handed to the
encoder's ``raw`` methods: no decode, no re-encode.  Every other combination
(other stored layouts, other formats, single-object CBOR/protobuf/msgpack
responses) is decoded, patched and re-encoded.  Values written by other
writers in other layouts are therefore always correct, just slower.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
import uuid
from typing import Any, Dict, NamedTuple, Optional, Tuple

import streamcodec
from streamcodec.formats import CBOR_MAGIC, FORMATS, PROTOBUF_MAGIC
from streamcodec.kube_schema import KubeSchema

from .status import APIError, bad_request

__all__ = [
    "Resource",
    "DEFAULT_RESOURCES",
    "resource_info",
    "detect_format",
    "splice_resource_version",
    "decode_stored",
    "encode_for_storage",
]

_JSON_LAYOUT_PREFIX = b'{"metadata":{'
_RV_KEY = b'"resourceVersion"'
_PREFIX_LEN = len(_JSON_LAYOUT_PREFIX)

# fullmatch: "$" would also match before a trailing newline ("evil\n")
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
#: Integers Kubernetes carries (int64; its protobuf and Go JSON decoding refuse others).
INT64_RANGE = (-(1 << 63), (1 << 63) - 1)


class Resource(NamedTuple):
    name: str  #: plural, lower case: "secrets"
    kind: str  #: "Secret"
    namespaced: bool
    short_names: Tuple[str, ...] = ()

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def discovery(self) -> Dict[str, Any]:
        """This resource's entry in an APIResourceList."""
        entry: Dict[str, Any] = {
            "name": self.name,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete", "get", "list", "update", "watch"],
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        return entry


#: Core/v1 resources announced in discovery; any other lower-case plural is
#: served too, with a kind derived from its name.
DEFAULT_RESOURCES: Dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("secrets", "Secret", True),
        Resource("configmaps", "ConfigMap", True, ("cm",)),
        Resource("pods", "Pod", True, ("po",)),
        Resource("services", "Service", True, ("svc",)),
        Resource("serviceaccounts", "ServiceAccount", True, ("sa",)),
        Resource("events", "Event", True, ("ev",)),
        Resource("endpoints", "Endpoints", True, ("ep",)),
        Resource("persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",)),
        Resource("namespaces", "Namespace", False, ("ns",)),
        Resource("nodes", "Node", False, ("no",)),
        Resource("persistentvolumes", "PersistentVolume", False, ("pv",)),
    )
}


def resource_info(name: str, resources: Dict[str, Resource]) -> Resource:
    """The Resource for a path segment, or 404 as kube-apiserver answers for a resource it does not
    serve (register more in ``ServerConfig.resources``)."""
    known = resources.get(name)
    if known is None:
        raise APIError(404, "NotFound", "the server could not find the requested resource")
    return known


def check_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise APIError(
            422,
            "Invalid",
            f"{what} {value!r} is invalid: must be a lowercase RFC 1123 subdomain "
            "(lower case alphanumerics, '-' or '.', at most 253 characters)",
        )
    return value


def detect_format(value: Any) -> str:
    """``cbor``, ``protobuf-struct`` or ``json`` from the first bytes of a stored value."""
    head = bytes(value[:4])
    if head[:3] == CBOR_MAGIC:
        return "cbor"
    if head == PROTOBUF_MAGIC:
        return "protobuf-struct"  # this project's own Struct protobuf (it never stores typed messages)
    return "json"


def splice_resource_version(value: Any, mod_revision: int, drop_suffix: bytes = b"") -> Optional[bytes]:
    """JSON with ``"resourceVersion":"N"`` inserted in metadata, or None.

    Only for this server's layout (see the module doc): the prefix proves the
    insertion point is the top-level metadata object, and the absence of the
    key anywhere proves no duplicate key can result.  ``drop_suffix`` (a
    list item's ``,"kind":"X","apiVersion":"v1"}``, which this server's layout
    ends with) is cut from the end, keeping the closing brace; a value that
    does not end with it gives None.

    ``value`` may be a memoryview (a slice of an etcd page): the result is
    built with one copy of it, and the key search runs over that copy.
    """
    head = bytes(value[: _PREFIX_LEN + 1])
    if not head.startswith(_JSON_LAYOUT_PREFIX):
        return None
    view = memoryview(value)
    end = len(view)
    if drop_suffix:
        end -= len(drop_suffix)
        if end <= _PREFIX_LEN or bytes(view[end:]) != drop_suffix:
            return None
    sep = b"" if head[_PREFIX_LEN:] == b"}" else b","
    inserted = b'%s"resourceVersion":"%d"%s' % (_JSON_LAYOUT_PREFIX, mod_revision, sep)
    spliced = b"".join((inserted, view[_PREFIX_LEN:end], b"}" if drop_suffix else b""))
    # The stored part starts right after ``inserted``; a "resourceVersion"
    # there (or straddling, which the prefix's shape rules out) means no splice.
    if spliced.find(_RV_KEY, len(inserted)) != -1:
        return None
    return spliced


def with_byte_strings(obj: Any, paths: Dict[str, Any]) -> Any:
    """``obj`` with the base64 text of its ``[]byte`` fields (``paths``: KubeSchema.byte_paths) as bytes.

    Text that is not valid base64 stays text (the object was never valid for its kind).
    """
    if isinstance(obj, list):
        return [with_byte_strings(item, paths) for item in obj]
    if not isinstance(obj, dict):
        return obj
    out = dict(obj)
    for key, sub in paths.items():
        value = out.get(key)
        if value is None:
            continue
        if sub is True:
            out[key] = _b64_values(value)
        else:
            out[key] = with_byte_strings(value, sub)  # type: ignore[arg-type]
    return out


def _b64_values(value: Any) -> Any:
    try:
        if isinstance(value, str):
            return base64.b64decode(value, validate=True)
        if isinstance(value, dict):
            return {k: base64.b64decode(v, validate=True) if isinstance(v, str) else v for k, v in value.items()}
        if isinstance(value, list):
            return [base64.b64decode(v, validate=True) if isinstance(v, str) else v for v in value]
    except (binascii.Error, ValueError):
        pass
    return value


def text_for_bytes(obj: Any) -> Any:
    """A decoded CBOR/MessagePack body with byte strings as base64 text (JSON's form of ``[]byte``)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, dict):
        return {k: text_for_bytes(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [text_for_bytes(v) for v in obj]
    return obj


_decoders: Dict[str, Any] = {}


def _decoder(fmt: str) -> Any:
    decoder = _decoders.get(fmt)
    if decoder is None:
        cls = getattr(streamcodec, FORMATS[fmt].decoder_class, None)
        if cls is None:
            raise RuntimeError(f"stored value is {fmt} but streamcodec has no {fmt} decoder installed")
        # decode() of a whole frame keeps no state, so one decoder is shared.
        decoder = _decoders[fmt] = cls()
    return decoder


def decode_stored(value: Any, mod_revision: int) -> Dict[str, Any]:
    """The stored object as a dict with metadata.resourceVersion patched in."""
    obj = _decoder(detect_format(value)).decode(value)
    if not isinstance(obj, dict):
        raise ValueError(f"stored value is a {type(obj).__name__}, not an object")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        metadata = obj["metadata"] = {}
    metadata["resourceVersion"] = str(mod_revision)
    return obj


def decode_body(
    body: bytes, fmt: str, resource: "Resource", *, max_values: int, schema: Optional[KubeSchema] = None
) -> Dict[str, Any]:
    """A request body as a checked object of ``resource``'s kind: 400, 413 (more than ``max_values``
    values) or 422 otherwise.

    ``max_values`` bounds what decoding can build (see :data:`streamcodec.limits.DEFAULT_MAX_BODY_VALUES`);
    ``schema``: the :class:`~streamcodec.kube_schema.KubeSchema` typed protobuf bodies are read with.
    Pure CPU work that touches no server state, so a caller may run it in a worker thread.
    """
    if not body:
        raise bad_request("the request body is empty")
    options: Dict[str, Any] = {"max_values": max_values}
    if fmt == "protobuf" and schema is not None:
        options["schema"] = schema
    try:
        obj = FORMATS[fmt].decoder(**options).decode(body)
    except streamcodec.TooManyValues as exc:
        raise APIError(413, "RequestEntityTooLarge",
                       f"the request body holds more than {exc.max_values} values (elements, keys and map values)") from None
    except streamcodec.DecodeError as exc:
        raise bad_request(f"the request body is not valid {fmt}: {exc}") from None
    if not isinstance(obj, dict):
        raise bad_request("the request body must be an object")
    if fmt != "json":
        obj = text_for_bytes(obj)
    if not isinstance(obj.get("metadata", {}), dict):
        raise bad_request("metadata must be an object")
    check_type_meta(obj, resource)
    check_values(obj)
    return obj


def check_values(obj: Any, where: str = "") -> None:
    """422 for values Kubernetes objects cannot hold: ints outside int64, non-finite floats, lone surrogates.

    Every served format must be able to carry a stored object: an int past int64 would break every
    protobuf list and watch of its collection, a lone surrogate every UTF-8 format.
    """
    stack = [(obj, where)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str):
                    _check_text(k, f"{path}.{k}" if path else k)
                stack.append((v, f"{path}.{k}" if path else str(k)))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
                raise APIError(422, "Invalid", f"{path or 'object'}: Invalid value: the number is out of the int64 range")
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise APIError(422, "Invalid", f"{path or 'object'}: Invalid value: not a finite number")
        elif isinstance(value, str):
            _check_text(value, path)


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(422, "Invalid", f"{path or 'object'}: Invalid value: a string holds a lone surrogate (not UTF-8)") from None


def check_type_meta(obj: Dict[str, Any], resource: "Resource") -> None:
    """400 when a body's kind or apiVersion names another type than the resource written to (as kube)."""
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if api_version not in (None, "", "v1"):
        raise bad_request(f"the API version in the data ({api_version}) does not match the expected API version (v1)")
    if kind not in (None, "", resource.kind):
        raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({resource.kind})")


def prepare_for_storage(
    obj: Dict[str, Any], resource: Resource, namespace: Optional[str], name: str, *, creating: bool,
    previous: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Fill in what the server owns (kind, apiVersion, namespace, uid, creationTimestamp)."""
    metadata = dict(obj.get("metadata") or {})
    metadata.pop("resourceVersion", None)
    metadata["name"] = name
    if namespace is not None:
        metadata["namespace"] = namespace
    else:
        metadata.pop("namespace", None)
    if creating:
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    elif previous is not None:
        old = previous.get("metadata") or {}
        for owned in ("uid", "creationTimestamp"):
            if owned in old:
                metadata[owned] = old[owned]
    out: Dict[str, Any] = {"metadata": metadata}
    for key, value in obj.items():
        if key != "metadata":
            out[key] = value
    out["kind"] = resource.kind
    out["apiVersion"] = "v1"
    return out


def encode_for_storage(obj: Dict[str, Any]) -> bytes:
    """Compact JSON with ``metadata`` first (the layout the splice relies on)."""
    if next(iter(obj), None) != "metadata":
        obj = {"metadata": obj.get("metadata", {}), **{k: v for k, v in obj.items() if k != "metadata"}}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
