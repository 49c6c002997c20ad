"""PATCH bodies: JSON merge patch (RFC 7386) and JSON Patch (RFC 6902), as kube-apiserver applies them.

Facts from k8s.io/apiserver's patch handler (``endpoints/handlers/patch.go``): the request's
Content-Type (up to a ``;``) names the patch type, and one it does not serve is a 415 listing the
ones it does; a JSON Patch of more than 10,000 operations is a 413; a body that is not a patch
(not JSON, a merge patch that is not an object, a JSON Patch that is not an array) is a 400; an
operation that cannot be applied (a missing path, a failed ``test``) is a 422 with the message
"the server rejected our request due to an error in our request" (the detail goes in
``details.causes`` here; kube sends none).  The patched object is then checked and stored like a
PUT's body, conditional on the revision it was patched from (re-read and patched again on a
concurrent write), or on the ``metadata.resourceVersion`` the patch itself sets.

Strategic merge patch (:mod:`.strategic_patch`) is served for the kinds of the schema registry,
whose fields' merge strategies it has from the Go types; for other kinds it is a 415, as kube's for
custom resources.  Server-side apply (``application/apply-patch+yaml``) is a 415.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

from streamcodec.limits import DEFAULT_MAX_BODY_VALUES, MAX_DEPTH

from .status import APIError, bad_request
from .strategic_patch import STRATEGIC_MERGE_PATCH

__all__ = [
    "JSON_PATCH", "MERGE_PATCH", "STRATEGIC_MERGE_PATCH", "PATCH_TYPES", "MAX_JSON_PATCH_OPERATIONS",
    "patch_type", "check_patch", "apply_patch", "merge_patch", "json_patch",
]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
#: what this server applies to every kind, in kube's order (strategic merge patch: to the schema's kinds)
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH)
#: kube-apiserver's maxJSONPatchOperations
MAX_JSON_PATCH_OPERATIONS = 10_000

_REJECTED = "the server rejected our request due to an error in our request"


def patch_type(content_type: Optional[str], strategic: bool = False) -> str:
    """The patch type a PATCH request's Content-Type names (``strategic``: the kind takes strategic merge
    patches), or kube's 415."""
    accepted = PATCH_TYPES + ((STRATEGIC_MERGE_PATCH,) if strategic else ())
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in accepted:
        return media
    raise APIError(415, "UnsupportedMediaType",
                   "the body of the request was in an unknown format - accepted media types include: " + ", ".join(accepted))


def check_patch(kind: str, patch: Any) -> None:
    """Refuse, before any object is read, a body that is not a patch of ``kind`` (400) or a too long JSON Patch (413)."""
    if kind == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise bad_request("Invalid JSON Patch")
        return
    if kind == STRATEGIC_MERGE_PATCH:
        if not isinstance(patch, dict):
            raise bad_request("error decoding patch: json: cannot unmarshal array into Go value of type map[string]interface {}")
        return
    if not isinstance(patch, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    if len(patch) > MAX_JSON_PATCH_OPERATIONS:
        raise APIError(413, "RequestEntityTooLarge",
                       f"The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {len(patch)}")
    for operation in patch:
        if not isinstance(operation, dict):
            raise bad_request("json: cannot unmarshal array into Go value of type jsonpatch.Operation")


def apply_patch(kind: str, target: Dict[str, Any], patch: Any) -> Any:
    """``target`` (left as it is) with the checked ``patch`` of ``kind`` applied; an operation that
    does not apply is kube's 422."""
    try:
        if kind == MERGE_PATCH:
            return merge_patch(target, patch)
        return json_patch(target, patch)
    except _PatchFailed as exc:
        raise APIError(422, "Invalid", _REJECTED, details={"causes": [{"message": str(exc)}]}) from None


class _PatchFailed(Exception):
    """An operation of a patch that does not apply to the object."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: ``patch``'s members replace ``target``'s, recursively where both are objects; a null removes
    one.  (Recursion is bounded by the decoder's nesting limit, :data:`streamcodec.limits.DEFAULT_MAX_DEPTH`.)"""
    if not isinstance(patch, dict):
        # a copy: the result is checked and pruned in place (unknown fields), and a write that must be
        # retried applies the same patch again
        return copy.deepcopy(patch) if isinstance(patch, list) else patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _Budget:
    """What the values a JSON Patch copies may add up to: kube bounds it too (jsonpatch's
    AccumulatedCopySizeLimit), else ``copy`` doubles a document with every operation."""

    __slots__ = ("values",)

    def __init__(self, values: int) -> None:
        self.values = values

    def copy(self, value: Any, at_depth: int) -> Any:
        """A copy of ``value`` to be put ``at_depth`` deep (iterative: no RecursionError however deep)."""
        if not isinstance(value, (dict, list)):
            self._spend(1)
            return value
        root: Any = {} if isinstance(value, dict) else []
        stack = [(value, root, at_depth + 1)]
        while stack:
            source, target, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise _PatchFailed(f"the patched object would be nested more than {MAX_DEPTH} deep")
            items = source.items() if isinstance(source, dict) else enumerate(source)
            self._spend(len(source) + 1)
            for key, item in items:
                if isinstance(item, (dict, list)):
                    child: Any = {} if isinstance(item, dict) else []
                    stack.append((item, child, depth + 1))
                    item = child
                if isinstance(target, dict):
                    target[key] = item
                else:
                    target.append(item)
        return root

    def _spend(self, n: int) -> None:
        self.values -= n
        if self.values < 0:
            raise _PatchFailed(f"Unable to copy: the patch's copies and additions exceed {MAX_COPIED_VALUES} values")


#: what the values a JSON Patch adds and copies may total (the request body's own bound)
MAX_COPIED_VALUES = DEFAULT_MAX_BODY_VALUES


def json_patch(target: Dict[str, Any], operations: List[Dict[str, Any]]) -> Any:
    """RFC 6902: the operations applied in order to a copy of ``target``, all or none."""
    document: Any = copy.deepcopy(target)
    budget = _Budget(MAX_COPIED_VALUES)
    for operation in operations:
        op = operation.get("op")
        path = _pointer(operation, "path")
        if op == "add":
            document = _add(document, path, budget.copy(_value(operation), len(path)), "add")
        elif op == "remove":
            document, _ = _remove(document, path, "remove")
        elif op == "replace":
            value = budget.copy(_value(operation), len(path))
            _resolve(document, path, f"replace operation does not apply: doc is missing path: {_text(path)}")
            document, _ = _remove(document, path, "replace")
            document = _add(document, path, value, "replace")
        elif op == "move":
            source = _pointer(operation, "from")
            if path[:len(source)] == source and len(path) > len(source):
                raise _PatchFailed(f"move operation does not apply: path {_text(path)} is inside from {_text(source)}")
            document, value = _remove(document, source, "move", missing="from path")
            document = _add(document, path, budget.copy(value, len(path)), "move")
        elif op == "copy":
            source = _pointer(operation, "from")
            value = _resolve(document, source, f"copy operation does not apply: doc is missing from path: {_text(source)}")
            document = _add(document, path, budget.copy(value, len(path)), "copy")
        elif op == "test":
            value = _resolve(document, path, f"test operation does not apply: is missing path: {_text(path)}")
            if not _json_equal(value, _value(operation)):
                raise _PatchFailed(f"testing value {_text(path)} failed: test failed")
        else:
            raise _PatchFailed(f"Unexpected kind: {op if isinstance(op, str) else 'unknown'}")
    return document


def _value(operation: Dict[str, Any]) -> Any:
    if "value" not in operation:
        raise _PatchFailed("operation, missing value field: missing value")
    return operation["value"]


def _pointer(operation: Dict[str, Any], field: str) -> Tuple[str, ...]:
    """A JSON Pointer (RFC 6901) as its reference tokens."""
    text = operation.get(field)
    if not isinstance(text, str):
        raise _PatchFailed(f"operation missing {field} field: missing value")
    if text == "":
        return ()
    if not text.startswith("/"):
        raise _PatchFailed(f"JSON pointer must be empty or start with a \"/\": {text!r}")
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in text[1:].split("/"))


def _text(path: Tuple[str, ...]) -> str:
    return "".join("/" + token.replace("~", "~0").replace("/", "~1") for token in path)


def _index(token: str, size: int, allow_end: bool) -> int:
    """An array index token: decimal without leading zeros; ``-`` (past the end) where ``allow_end``."""
    if allow_end and token == "-":
        return size
    if not token.isdigit() or not token.isascii() or (len(token) > 1 and token[0] == "0"):
        raise _PatchFailed(f"Unable to access invalid index: {token}")
    index = int(token)
    if index > size or (index == size and not allow_end):
        raise _PatchFailed(f"Unable to access invalid index: {index}")
    return index


def _resolve(document: Any, path: Tuple[str, ...], missing: str) -> Any:
    node = document
    for token in path:
        if isinstance(node, dict):
            if token not in node:
                raise _PatchFailed(missing)
            node = node[token]
        elif isinstance(node, list):
            try:
                node = node[_index(token, len(node), allow_end=False)]
            except _PatchFailed:
                raise _PatchFailed(missing) from None
        else:
            raise _PatchFailed(missing)
    return node


def _add(document: Any, path: Tuple[str, ...], value: Any, op: str) -> Any:
    if not path:
        return value
    parent = _resolve(document, path[:-1], f"{op} operation does not apply: doc is missing path: \"{_text(path)}\"")
    token = path[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(token, len(parent), allow_end=True), value)
    else:
        raise _PatchFailed(f"{op} operation does not apply: doc is missing path: \"{_text(path)}\"")
    return document


def _remove(document: Any, path: Tuple[str, ...], op: str, missing: str = "path") -> Tuple[Any, Any]:
    """``document`` without the value at ``path``, and that value."""
    if not path:
        return None, document
    message = f"{op} operation does not apply: doc is missing {missing}: \"{_text(path)}\""
    parent = _resolve(document, path[:-1], message)
    token = path[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise _PatchFailed(message)
        return document, parent.pop(token)
    if isinstance(parent, list):
        try:
            return document, parent.pop(_index(token, len(parent), allow_end=False))
        except _PatchFailed:
            raise _PatchFailed(message) from None
    raise _PatchFailed(message)


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: booleans are not numbers, 1 equals 1.0, objects ignore member order."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b
