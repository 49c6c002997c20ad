"""Request parsing: the query of a list or a watch, as kube-apiserver reads it.

Pure functions of the query (no storage, no I/O), each rule a 400/422 :class:`~.status.APIError`
with kube's message (and the 504 "Too large resource version" of an exact read past any etcd
revision); :mod:`.bodies` turns a parsed request into a response body.
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from streamcodec.storage import errors as storage_errors

from .objects import field_value, stored_object
from .selectors import LabelSelector
from .status import APIError, bad_request, from_storage_error

__all__ = ["Selectors", "ListRequest", "WatchRequest", "count_param", "resource_version", "MAX_REVISION"]

#: The newest revision etcd can have (its revisions are int64); a resourceVersion is parsed as uint64, as kube does.
MAX_REVISION = (1 << 63) - 1


def _rv(value: str) -> int:
    return resource_version(value, "resourceVersion")


def resource_version(value: str, what: str) -> int:
    """A resourceVersion as kube parses it (an unsigned 64-bit integer), or 400."""
    if not (value.isascii() and value.isdigit()) or len(value) > 20 or int(value) >= 1 << 64:
        raise bad_request(f"{what}: invalid value {value[:40]!r}: must be a non-negative 64-bit integer")
    return int(value)


def count_param(query: Dict[str, str], name: str) -> Optional[int]:
    """A non-negative integer query parameter (limit, timeoutSeconds), None when absent, or 400."""
    text = query.get(name, "")
    if text == "":
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise bad_request(f"{name}: invalid value {text[:40]!r}: must be a non-negative integer below 10**18")
    return int(text)


def _bool(query: Dict[str, str], name: str) -> Optional[bool]:
    if name not in query:
        return None
    value = query[name]
    if value in ("1", "true", "True"):
        return True
    if value in ("", "0", "false", "False"):
        return False
    raise bad_request(f"{name}: invalid value {value!r}: must be true or false")


#: What a fieldSelector term may compare (kube's): equality and inequality.
_FIELD_OPERATORS = ("!=", "==", "=")


def _field_terms(text: str) -> List[str]:
    """A fieldSelector's terms: split on unescaped commas (kube escapes ``\\``, ``,`` and ``=`` with a backslash)."""
    terms, term, escaped = [], [], False
    for ch in text:
        if escaped:
            term.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            terms.append("".join(term))
            term = []
        else:
            term.append(ch)
    if escaped:
        raise bad_request(f"invalid field selector: {text!r}: a trailing backslash")
    terms.append("".join(term))
    return [t for t in terms if t]


def _split_term(term: str) -> Tuple[str, str, str]:
    """A term's field, operator and value (unescaped), split at its first unescaped operator."""
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        op = next((o for o in _FIELD_OPERATORS if term.startswith(o, i)), None)
        if op is not None:
            return _unescape(term[:i].strip()), op, _unescape(term[i + len(op):].strip())
        i += 1
    raise bad_request(f"invalid field selector: {term!r}: an operator (=, ==, !=) is required")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


@dataclasses.dataclass
class Selectors:
    """A list's or watch's ``fieldSelector`` and ``labelSelector`` (:class:`LabelSelector`).

    ``metadata.name`` and ``metadata.namespace`` equality (what kubectl and client-go send most) are judged
    on the key; the kind's other selectable fields (``Resource.field_selectors``: ``spec.nodeName`` of a
    Pod, ``involvedObject.name`` of an Event, ...) and the labels on the object, which is decoded only when
    one of those is given.
    """

    name: Optional[str] = None
    namespace: Optional[str] = None
    labels: Optional[LabelSelector] = None
    fields: Tuple[Tuple[str, bool, str], ...] = ()  #: (field path, equal, value) judged on the object

    @classmethod
    def parse(cls, query: Dict[str, str], selectable: Sequence[str] = ()) -> "Selectors":
        """``selectable``: the kind's fields a fieldSelector may name besides metadata.name/namespace."""
        result = cls(labels=LabelSelector.parse(query.get("labelSelector", "")))
        fields = []
        for term in _field_terms(query.get("fieldSelector", "")):
            field, op, value = _split_term(term)
            if field not in ("metadata.name", "metadata.namespace") and field not in selectable:
                raise bad_request(f'"{field}" is not a known field selector: only "metadata.name", "metadata.namespace"'
                                  + "".join(f', "{f}"' for f in selectable))
            if op != "!=" and field == "metadata.name" and result.name in (None, value):
                result.name = value
            elif op != "!=" and field == "metadata.namespace" and result.namespace in (None, value):
                result.namespace = value
            else:
                fields.append((field, op != "!=", value))
        result.fields = tuple(fields)
        return result

    @property
    def active(self) -> bool:
        return self.name is not None or self.namespace is not None or self.labels is not None or bool(self.fields)

    def matches(self, kv: Any, prefix: bytes) -> bool:
        """Whether the stored object ``kv`` (a KeyValue under ``prefix``) is selected."""
        if self.name is not None or self.namespace is not None:
            rest = kv.key[len(prefix):].decode("utf-8", "replace").split("/")
            if self.name is not None and rest[-1] != self.name:
                return False
            if self.namespace is not None and (len(rest) < 2 or rest[0] != self.namespace):
                return False
        if self.labels is None and not self.fields:
            return True
        obj = stored_object(kv.value)  # one that cannot be read has no labels and empty fields
        if self.labels is not None and not self.labels.matches(_labels(obj)):
            return False
        return all((field_value(obj, path) == value) is equal for path, equal, value in self.fields)


def _labels(obj: Dict[str, Any]) -> Dict[str, str]:
    """The object's labels that are text (a kind without a schema may store anything there)."""
    labels = (obj.get("metadata") or {}).get("labels") if isinstance(obj.get("metadata"), dict) else None
    return {k: v for k, v in labels.items() if isinstance(v, str)} if isinstance(labels, dict) else {}


@dataclasses.dataclass
class ListRequest:
    limit: Optional[int]
    continue_token: Optional[str]
    revision: Optional[int]  #: exact revision to read (None: newest)
    min_revision: int  #: NotOlderThan bound checked against the pinned revision
    selectors: Selectors

    @classmethod
    def parse(cls, query: Dict[str, str], selectable: Sequence[str] = ()) -> "ListRequest":
        limit = count_param(query, "limit") or None
        token = query.get("continue") or None
        if "sendInitialEvents" in query:
            raise APIError(422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list")
        rv_text = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        if match not in ("", "Exact", "NotOlderThan"):
            raise bad_request(f"resourceVersionMatch: unsupported value {match!r}: Exact or NotOlderThan")
        if match and rv_text == "":
            raise bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
        if token is not None and rv_text not in ("", "0"):
            raise bad_request("specifying resource version is not allowed when using continue")
        if token is not None and match:
            raise bad_request("resourceVersionMatch is forbidden when continue is provided")
        rv = _rv(rv_text) if rv_text else 0
        if match == "Exact" and rv == 0:
            raise bad_request("resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"")
        exact = match == "Exact" or (match == "" and limit is not None and rv > 0)
        if exact and rv > MAX_REVISION:
            # past any etcd revision: etcd's own answer to a revision from the future (kube's "Too large
            # resource version"), not a read at a revision its int64 field cannot carry
            raise from_storage_error(storage_errors.FutureRevision(f"resourceVersion {rv} is past etcd's int64 revisions"))
        return cls(limit, token, rv if exact else None, 0 if exact else rv, Selectors.parse(query, selectable))


# ---------------------------------------------------------------------------
# watch


@dataclasses.dataclass
class WatchRequest:
    resource_version: int
    initial_events: bool  #: synthetic ADDED events for the current state first
    initial_events_bookmark: bool  #: send the initial-events-end bookmark (sendInitialEvents=true)
    allow_bookmarks: bool
    timeout: float
    selectors: Selectors

    @classmethod
    def parse(cls, query: Dict[str, str], min_request_timeout: int, selectable: Sequence[str] = ()) -> "WatchRequest":
        rv_text = query.get("resourceVersion", "")
        rv = _rv(rv_text) if rv_text else 0
        match = query.get("resourceVersionMatch", "")
        send_initial = _bool(query, "sendInitialEvents")
        allow_bookmarks = bool(_bool(query, "allowWatchBookmarks"))
        if query.get("continue"):
            raise bad_request("continue is not supported for watch")
        if send_initial is not None:
            if match != "NotOlderThan":
                raise bad_request("sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")
            if send_initial and not allow_bookmarks:
                raise bad_request("sendInitialEvents requires allowWatchBookmarks=true")
        elif match:
            raise bad_request("resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided")
        # kube-apiserver: no (or a zero) timeoutSeconds means a random time in [T, 2T], T the
        # --min-request-timeout, so that watches opened together do not all end together
        cap = min_request_timeout * (1.0 + random.random())
        timeout = cap
        seconds = count_param(query, "timeoutSeconds")
        if seconds:
            timeout = min(float(seconds), cap)
        # Legacy semantics: no sendInitialEvents and resourceVersion unset or "0" = current state first.
        initial = bool(send_initial) or (send_initial is None and rv == 0)
        return cls(rv, initial, bool(send_initial), allow_bookmarks, timeout, Selectors.parse(query, selectable))
