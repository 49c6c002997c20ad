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
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import streamcodec
from streamcodec._json_py import key_paths as json_key_paths
from streamcodec.errors import go_quote
from streamcodec.formats import CBOR_MAGIC, FORMATS, PROTOBUF_MAGIC
from streamcodec.kube_cbor import plain_cbor
from streamcodec.kube_schema import DEFAULT_SCHEMA, KubeSchema

from .status import APIError, bad_request

__all__ = [
    "Resource",
    "DEFAULT_RESOURCES",
    "resource_info",
    "detect_format",
    "splice_resource_version",
    "decode_stored",
    "encode_for_storage",
    "check_servable",
    "check_servable_object",
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
    #: fields a fieldSelector may compare besides metadata.name and metadata.namespace (kube's, per kind)
    field_selectors: Tuple[str, ...] = ()
    categories: Tuple[str, ...] = ()  #: discovery's categories ("all": kubectl get all)
    #: kube serves ``{name}/status``: only a write of it changes ``status``, which a write of the object keeps
    status_subresource: bool = False

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def discovery(self) -> List[Dict[str, Any]]:
        """This resource's entries in an APIResourceList: its own, and its status subresource's."""
        entries = [self._discovery()]
        if self.status_subresource:
            entries.append({"name": f"{self.name}/status", "singularName": "", "namespaced": self.namespaced,
                            "kind": self.kind, "verbs": ["get", "patch", "update"]})
        return entries

    def _discovery(self) -> Dict[str, Any]:
        entry: Dict[str, Any] = {
            "name": self.name,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete"] + (["deletecollection"] if self.name != "namespaces" else []) + [
                "get", "list", "patch", "update", "watch"],
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        return entry


#: Core/v1 resources announced in discovery; any other lower-case plural is
#: served too, with a kind derived from its name.
DEFAULT_RESOURCES: Dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("secrets", "Secret", True, field_selectors=("type",)),
        Resource("configmaps", "ConfigMap", True, ("cm",)),
        Resource("pods", "Pod", True, ("po",), (
            "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork",
            "status.phase", "status.podIP", "status.nominatedNodeName"), ("all",), True),
        Resource("services", "Service", True, ("svc",), categories=("all",), status_subresource=True),
        Resource("serviceaccounts", "ServiceAccount", True, ("sa",)),
        Resource("events", "Event", True, ("ev",), (
            "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
            "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
            "reportingComponent", "source", "type")),
        Resource("endpoints", "Endpoints", True, ("ep",)),
        Resource("persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",), status_subresource=True),
        Resource("namespaces", "Namespace", False, ("ns",), ("status.phase",)),
        Resource("nodes", "Node", False, ("no",), ("spec.unschedulable",), status_subresource=True),
        Resource("persistentvolumes", "PersistentVolume", False, ("pv",), status_subresource=True),
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


def kind_byte_paths(schema: Optional[KubeSchema], kind: str) -> Dict[str, Any]:
    """Where objects of ``kind`` hold ``[]byte`` fields (:meth:`KubeSchema.byte_paths`), empty if it has no message."""
    schema = schema if schema is not None else DEFAULT_SCHEMA
    message = schema.message_name("v1", kind)
    return schema.byte_paths(message) if message else {}


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


def stored_object(value: Any) -> Dict[str, Any]:
    """A stored object for a selector to judge: ``{}`` when it is no object that can be read (a list or
    watch fails on that one when it encodes it, not when it selects)."""
    try:
        return decode_stored(value, 0)
    except (streamcodec.DecodeError, ValueError):
        return {}


def field_value(obj: Dict[str, Any], path: str) -> str:
    """A selectable field's value as kube's field set has it: text, ``"true"``/``"false"`` for booleans, ``""``
    (``"false"`` for the boolean ones) when unset; an Event's ``source`` is its ``source.component``."""
    if path == "source":
        path = "source.component"
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or path in BOOLEAN_FIELDS:
        return "true" if value is True else "false"
    return value if isinstance(value, str) else "" if value is None else str(value)


#: selectable fields whose unset value is false
BOOLEAN_FIELDS = frozenset({"spec.hostNetwork", "spec.unschedulable"})


#: kube-apiserver's fieldValidation directives (metav1.FieldValidation*), and the one it applies to a
#: write that names none (kubectl sends Strict).
FIELD_VALIDATIONS = ("Ignore", "Strict", "Warn")
DEFAULT_FIELD_VALIDATION = "Warn"
#: The options type whose validation judges a write's fieldValidation in kube-apiserver, by method.
_WRITE_OPTIONS = {"POST": "CreateOptions", "PUT": "UpdateOptions", "PATCH": "PatchOptions"}
#: Body formats whose maps may never hold a key twice: kube's CBOR decoder refuses that whatever
#: fieldValidation says (a duplicate is invalid CBOR), and MessagePack, which kube lacks, is held to CBOR's rule.
_UNIQUE_KEY_FORMATS = frozenset({"cbor", "msgpack"})


def field_validation(value: Optional[str], method: str) -> str:
    """The ``fieldValidation`` directive of a write (absent or empty: Warn), or the 422 kube-apiserver's
    validation of the request's options (CreateOptions for POST, UpdateOptions for PUT) gives any other value."""
    if not value:
        return DEFAULT_FIELD_VALIDATION
    if value in FIELD_VALIDATIONS:
        return value
    kind = _WRITE_OPTIONS.get(method, "CreateOptions")
    detail = f"Unsupported value: {go_quote(value)}: supported values: " + ", ".join(map(go_quote, ("",) + FIELD_VALIDATIONS))
    raise APIError(422, "Invalid", f'{kind}.meta.k8s.io "" is invalid: fieldValidation: {detail}', details={
        "group": "meta.k8s.io", "kind": kind,
        "causes": [{"reason": "FieldValueNotSupported", "message": detail, "field": "fieldValidation"}],
    })


def decode_body(
    body: bytes, fmt: str, resource: "Resource", *, max_values: int, schema: Optional[KubeSchema] = None,
    field_validation: str = DEFAULT_FIELD_VALIDATION, warnings: Optional[List[str]] = None,
) -> Dict[str, Any]:
    """A request body as a checked object of ``resource``'s kind: 400, 413 (more than ``max_values``
    values) or 422 otherwise.

    ``max_values`` bounds what decoding can build (see :data:`streamcodec.limits.DEFAULT_MAX_BODY_VALUES`);
    ``schema``: the :class:`~streamcodec.kube_schema.KubeSchema` of the kinds (default
    :data:`~streamcodec.kube_schema.DEFAULT_SCHEMA`).  ``field_validation`` (:func:`field_validation`) says, as
    in kube-apiserver, what a JSON object holding a key twice and a field the kind does not have
    (:func:`drop_unknown_fields`: dropped, as kube's typed decoding drops it) are: Strict, one 400 naming
    every one; Warn, kube's text for each appended to ``warnings`` (Warning headers); Ignore, nothing.
    A CBOR or MessagePack map holding a key twice is a 400 whatever it says.  Typed protobuf is left as it
    is: a message field given twice is protobuf's own merge, which kube accepts too.
    Pure CPU work that touches no server state, so a caller may run it in a worker thread.
    """
    if not body:
        raise bad_request("the request body is empty")
    options = _decoder_options(fmt, max_values, schema, unique_keys=fmt == "json" and field_validation != "Ignore")
    duplicates: List[Tuple[int, str]] = []  # (offset, path)
    try:
        obj = _decoded_body(body, fmt, options, kind_byte_paths(schema, resource.kind))
    except streamcodec.DuplicateKey as exc:
        if fmt != "json":
            raise _strict_decoding_error(resource, f'{fmt}: found duplicate map key "{exc.paths[0]}" at map element index {exc.index}')
        obj, duplicates = exc.value, list(zip(exc.offsets, exc.paths))
        if not isinstance(obj, dict):
            raise bad_request("the request body must be an object")
    if not isinstance(obj.get("metadata", {}), dict):
        raise bad_request("metadata must be an object")
    check_type_meta(obj, resource)
    unknown = drop_unknown_fields(obj, resource.kind, schema) if fmt != "protobuf" else []
    problems = _strict_problems(body, duplicates, unknown)[:STRICT_PROBLEMS]
    if problems and field_validation == "Strict":
        raise _strict_decoding_error(resource, "strict decoding error: " + ", ".join(problems))
    if problems and field_validation == "Warn" and warnings is not None:
        warnings.extend(problems)
    check_values(obj)
    return obj


def decode_options_body(body: bytes, fmt: str, *, max_values: int, schema: Optional[KubeSchema] = None) -> Dict[str, Any]:
    """A request body holding an options object (a DELETE's DeleteOptions), decoded: 400 or 413.  Its
    kind is the caller's to judge; a JSON key given twice is Go's (the last wins), a CBOR or MessagePack
    one a 400."""
    try:
        return _decoded_body(body, fmt, _decoder_options(fmt, max_values, schema), {})
    except streamcodec.DuplicateKey as exc:
        raise bad_request(f'the request body is not valid {fmt}: found duplicate map key "{exc.paths[0]}"') from None


def _decoder_options(fmt: str, max_values: int, schema: Optional[KubeSchema], unique_keys: bool = False) -> Dict[str, Any]:
    """The options of a request body's decoder: ``max_values``, typed protobuf's ``schema``, and ``unique_keys``
    (asked, or always for the formats whose maps may never repeat a key)."""
    options: Dict[str, Any] = {"max_values": max_values}
    if fmt == "protobuf" and schema is not None:
        options["schema"] = schema
    if unique_keys or fmt in _UNIQUE_KEY_FORMATS:
        options["unique_keys"] = True
    return options


def _decoded_body(body: bytes, fmt: str, options: Dict[str, Any], byte_paths: Dict[str, Any]) -> Dict[str, Any]:
    """``body`` decoded with ``options`` into an object as JSON has it: 400 when it is no valid object of
    ``fmt``, 413 past ``options["max_values"]``; DuplicateKey is the caller's.

    CBOR is read as kube-apiserver reads it (:func:`kube_cbor_text`, with the kind's ``[]byte`` paths
    ``byte_paths``); Kubernetes' own CBOR (byte-string field names, ``[]byte`` in tag 22) is first made
    readable by :func:`streamcodec.kube_cbor.plain_cbor`.  MessagePack's bin values are base64 text.
    """
    decoder = FORMATS[fmt].decoder(**options)
    try:
        try:
            obj = decoder.decode(body)
        except streamcodec.DecodeError as exc:
            if fmt != "cbor" or isinstance(exc, streamcodec.TooManyValues):
                raise
            plain = plain_cbor(body, max_values=options["max_values"])
            if plain is body:
                raise
            obj = decoder.decode(plain)
    except streamcodec.TooManyValues as exc:
        raise _too_many_values(exc) from None
    except streamcodec.DuplicateKey:
        raise
    except streamcodec.DecodeError as exc:
        raise bad_request(f"the request body is not valid {fmt}: {exc}") from None
    if not isinstance(obj, dict):
        raise bad_request("the request body must be an object")
    if fmt == "cbor":
        return dict(kube_cbor_text(obj, byte_paths))
    return obj if fmt == "json" else text_for_bytes(obj)


def _too_many_values(exc: "streamcodec.TooManyValues") -> APIError:
    return APIError(413, "RequestEntityTooLarge",
                    f"the request body holds more than {exc.max_values} values (elements, keys and map values)")


def decode_patch(body: bytes, *, max_values: int, unique_keys: bool) -> Tuple[Any, List[str]]:
    """A PATCH body (JSON whatever the patch type), and kube's texts for the fields it gives twice
    (looked for when ``unique_keys``; the last one counts, as in Go): 400, or 413 past ``max_values``."""
    if not body:
        raise bad_request("the request body is empty")
    try:
        return FORMATS["json"].decoder(max_values=max_values, unique_keys=unique_keys).decode(body), []
    except streamcodec.DuplicateKey as exc:
        return exc.value, [f"duplicate field {go_quote(path)}" for path in exc.paths]
    except streamcodec.TooManyValues as exc:
        raise _too_many_values(exc) from None
    except streamcodec.DecodeError as exc:
        raise bad_request(f"error decoding patch: {exc}") from None


def kube_cbor_text(obj: Any, byte_paths: Any, where: str = "") -> Any:
    """A decoded CBOR body with its byte strings as kube-apiserver reads them into the kind's Go types: under
    one of its ``[]byte`` paths (``byte_paths``, :meth:`KubeSchema.byte_paths`; ``True`` below one) a byte
    string is that ``[]byte``, JSON's base64 text; anywhere else it is a Go string, so UTF-8 text (400 if not)."""
    if isinstance(obj, bytes):
        if byte_paths is True:
            return base64.b64encode(obj).decode("ascii")
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(f"the request body is not valid cbor: {where or 'a string'} is a byte string that is not UTF-8 text") from None
    if isinstance(obj, dict):
        return {k: kube_cbor_text(v, byte_paths if byte_paths is True else byte_paths.get(k, {}), f"{where}.{k}" if where else str(k))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [kube_cbor_text(v, byte_paths, where) for v in obj]
    return obj


#: What kube's strict JSON decoding reports at most (sigs.k8s.io/json keeps the first 100 problems).
STRICT_PROBLEMS = 100


def _strict_problems(body: bytes, duplicates: List[Tuple[int, str]], unknown: List[str]) -> List[str]:
    """kube's texts for the fields given twice (JSON: with their offsets) and the unknown ones, in document
    order, as sigs.k8s.io/json meets them: a field it does not know it skips, and what that holds with it."""
    inside = tuple(p + sep for p in unknown for sep in ".[")
    kept = [(at, path) for at, path in duplicates if path not in unknown and not path.startswith(inside)]
    found = [(at, f"duplicate field {go_quote(path)}") for at, path in kept]
    if kept and unknown:  # where each unknown field first is, to interleave the two (only JSON has duplicates)
        first: Dict[str, int] = {}
        wanted = set(unknown)
        for path, at, _ in json_key_paths(body):
            if path in wanted:
                first.setdefault(path, at)
        found += [(first.get(path, len(body)), f"unknown field {go_quote(path)}") for path in unknown]
        return [text for _, text in sorted(found, key=lambda problem: problem[0])]
    return [text for _, text in found] + [f"unknown field {go_quote(path)}" for path in unknown]


def _strict_decoding_error(resource: "Resource", detail: str) -> APIError:
    """kube-apiserver's 400 for a body its strict decoding refuses."""
    return bad_request(f'{resource.kind} in version "v1" cannot be handled as a {resource.kind}: {detail}')


def drop_unknown_fields(obj: Dict[str, Any], kind: str, schema: Optional[KubeSchema] = None) -> List[str]:
    """Remove from ``obj`` (in place) every field the ``kind``'s message in ``schema`` does not have, down
    its message fields, and say where they were, in document order, as sigs.k8s.io/json writes paths
    (``spec.containers[0].imagePullPolcy``, ``.key`` into a map).

    kube-apiserver decodes a body into the kind's Go type, which keeps no field it does not declare; here
    a field no typed format could carry would otherwise be served in JSON and missing from protobuf.
    Kinds without a message (custom resources) keep everything, as a CRD that preserves unknown fields.
    """
    schema = schema if schema is not None else DEFAULT_SCHEMA
    name = schema.message_name("v1", kind)
    if name is None:
        return []
    found: List[str] = []
    # depth-first in document order without recursion: each entry walks one object's keys
    stack: List[Tuple[Dict[str, Any], Any, str, Iterator[str]]] = [(obj, schema.message(name).by_json, "", iter(list(obj)))]
    while stack:
        value, table, path, keys = stack[-1]
        key = next(keys, None)
        if key is None:
            stack.pop()
            continue
        where = f"{path}.{key}" if path else key
        f = table.get(key)
        if f is None:
            if path or key not in ("apiVersion", "kind"):
                found.append(where)
                del value[key]
            continue
        if f.kind != "MESSAGE" or not f.message:
            continue
        inner, fields = value[key], schema.message(f.message).by_json
        if f.shape == "ONE":
            children = [(inner, where)] if isinstance(inner, dict) else []
        elif f.shape == "REPEATED":
            children = [(e, f"{where}[{i}]") for i, e in enumerate(inner) if isinstance(e, dict)] if isinstance(inner, list) else []
        else:
            children = [(e, f"{where}.{k}") for k, e in inner.items() if isinstance(e, dict)] if isinstance(inner, dict) else []
        stack.extend((child, fields, at, iter(list(child))) for child, at in reversed(children))
    return found


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
    previous: Optional[Dict[str, Any]] = None, schema: Optional[KubeSchema] = None,
) -> Dict[str, Any]:
    """Fill in what the server owns (kind, apiVersion, namespace, uid, creationTimestamp); 400 when the
    result is no object of its kind in Kubernetes' typed protobuf (:func:`check_servable_object`, with
    ``schema``, default :data:`~streamcodec.kube_schema.DEFAULT_SCHEMA`)."""
    metadata = dict(obj.get("metadata") or {})
    metadata.pop("resourceVersion", None)
    metadata["name"] = name
    if namespace is not None:
        metadata["namespace"] = namespace
    else:
        metadata.pop("namespace", None)
    old = (previous.get("metadata") or {}) if previous is not None else {}
    if creating:
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = timestamp_now()
    else:
        for owned in ("uid", "creationTimestamp"):
            if owned in old:
                metadata[owned] = old[owned]
    out: Dict[str, Any] = {"metadata": metadata}
    for key, value in obj.items():
        if key != "metadata":
            out[key] = value
    out["kind"] = resource.kind
    out["apiVersion"] = "v1"
    check_servable_object(out, resource.kind, schema)
    # a client never marks an object deleted: kube decodes these (so a bad one is a 400 above), then wipes
    # them on a create (WipeObjectMetaSystemFields) and keeps them as they were on an update
    for owned in ("deletionTimestamp", "deletionGracePeriodSeconds"):
        metadata.pop(owned, None)
        if owned in old and not creating:
            metadata[owned] = old[owned]
    if resource.kind == "Secret" and isinstance(out.get("stringData"), dict):
        merge_string_data(out)
    return out


def merge_string_data(secret: Dict[str, Any]) -> None:
    """A Secret's write-only ``stringData`` merged into ``data`` (base64), over the keys it shares with it,
    and removed: kube's v1 Secret conversion, so no reader ever sees ``stringData``."""
    text = secret.pop("stringData")
    data = dict(secret.get("data") or {})
    for key, value in text.items():
        data[key] = base64.b64encode((value or "").encode("utf-8")).decode("ascii")
    secret["data"] = data


def timestamp_now() -> str:
    """Now as a metav1.Time is written: RFC 3339 in UTC, whole seconds."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_servable_object(obj: Dict[str, Any], kind: str, schema: Optional[KubeSchema] = None) -> None:
    """:func:`check_servable` of ``obj`` as it is stored, without its text fields the schema wants text in.

    The transcoder takes each field on its own, and a STRING one whatever text it holds, so the object
    without them fails exactly when the object does; what is left is small whatever a ConfigMap's
    ``data`` or an object's labels hold (50,000 keys: 2 ms, not 240 in the pure-Python transcoder, which
    runs on the event loop here).
    """
    schema = schema if schema is not None else DEFAULT_SCHEMA
    name = schema.message_name("v1", kind)
    if name is not None:
        check_servable(encode_for_storage(_without_text(obj, name, schema, 0)), kind, schema)


def _without_text(obj: Dict[str, Any], name: str, schema: KubeSchema, depth: int) -> Dict[str, Any]:
    """``obj`` (of message ``name``) without the STRING fields that hold text, down its single message fields."""
    table = schema.message(name).by_json
    out: Optional[Dict[str, Any]] = None
    for key, value in obj.items():
        f = table.get(key)
        if f is None:
            continue
        if f.kind == "STRING" and _all_text(value, f.shape):
            out = dict(obj) if out is None else out
            del out[key]
        elif f.kind == "MESSAGE" and f.shape == "ONE" and isinstance(value, dict) and depth < 4 and f.message:
            inner = _without_text(value, f.message, schema, depth + 1)
            if inner is not value:
                out = dict(obj) if out is None else out
                out[key] = inner
    return obj if out is None else out


def _all_text(value: Any, shape: str) -> bool:
    """Whether a STRING field's value is what the transcoder takes as it is: text, UTF-8 (no lone surrogate)."""
    if shape == "ONE":
        texts = [value]
    elif shape == "REPEATED" and type(value) is list:
        texts = value
    elif shape == "MAP" and type(value) is dict:
        texts = list(value.values())
    else:
        return False
    if not all(type(t) is str for t in texts):
        return False
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: max_frame_size of the transcoding check: the object's size is not what it judges
_CHECK_FRAME_BYTES = 1 << 30
_check_encoders: Dict[int, Tuple[KubeSchema, Any]] = {}


def check_servable(value: bytes, kind: str, schema: Optional[KubeSchema] = None) -> None:
    """400 when ``value`` (an object as stored: JSON) is not a ``kind`` in Kubernetes' typed protobuf: a field
    of another type than the kind's schema gives it (``"containers": 5``, a list for a map, text that is no
    base64 in a ``[]byte`` field, a time that is no RFC 3339 time).

    kube-apiserver refuses such a body when it decodes it into the kind's Go type.  Stored, it would break
    every typed-protobuf read of its collection: each GET, list and watch event of it transcodes it with this
    same transcoder (client-go asks built-in kinds in protobuf).  Kinds without a message in ``schema``
    (custom resources) are served in no typed format, and not checked.
    """
    schema = schema if schema is not None else DEFAULT_SCHEMA
    cached = _check_encoders.get(id(schema))
    if cached is None or cached[0] is not schema:
        cached = _check_encoders[id(schema)] = (schema, streamcodec.KubeProtoEncoder(schema, max_frame_size=_CHECK_FRAME_BYTES))
    encoder = cached[1].for_kind("v1", kind)
    if encoder is None:
        return
    try:
        encoder.encode_stored(value, 1)
    except streamcodec.EncodeError as exc:
        raise NotOfItsKind(f'{kind} in version "v1" cannot be handled as a {kind}: {codec_message(str(exc))}') from None


class NotOfItsKind(APIError):
    """:func:`check_servable`'s 400: an object its kind's Go type cannot hold (a PATCH makes it kube's 422)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "BadRequest", message)


#: a Python bytes repr in a transcoder message (the compiled one quotes the stored JSON it met)
_BYTES_REPR = re.compile(r"""b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*\"""")
#: "..., not b'...'" to the end of a message: the bytes met where a value of another type was expected
_NOT_BYTES = re.compile(r""",? not b['"].*$""", re.DOTALL)


def codec_message(detail: str) -> str:
    """The transcoder's complaint in the client's terms: the field and what it wants.  The compiled
    transcoder quotes the bytes of the stored JSON it met as a Python bytes repr, which runs on past the
    value into the fields after it: the server's copy of the object, not the client's input."""
    if detail.startswith("stored JSON: "):
        detail = detail[len("stored JSON: "):]
    detail = _NOT_BYTES.sub("", detail)  # "labels: expected a string, not b'5},...'"
    return _BYTES_REPR.sub("the value", detail)[:300]


def encode_for_storage(obj: Dict[str, Any]) -> bytes:
    """Compact JSON with ``metadata`` first (the layout the splice relies on)."""
    if next(iter(obj), None) != "metadata":
        obj = {"metadata": obj.get("metadata", {}), **{k: v for k, v in obj.items() if k != "metadata"}}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
