"""Label selectors (``labelSelector``), parsed and matched as Kubernetes' ``labels.Parse`` does.

Requirements are joined by ``,`` (all must hold): ``key`` (has it), ``!key`` (has it not),
``key=value`` / ``key==value``, ``key!=value``, ``key in (a,b)``, ``key notin (a,b)``, ``key>1``,
``key<1`` (integers).  ``!=`` and ``notin`` hold for an object without the label, as in kube.  Keys
are qualified names (an optional DNS-subdomain prefix and ``/``), values label values (at most 63
characters); anything else is a 400, never a silent match-all.
"""

from __future__ import annotations

import re
from typing import Dict, FrozenSet, List, NamedTuple, Optional

from .status import APIError, bad_request

__all__ = ["LabelSelector"]

_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|>|<|[^\s!=(),<>]+)")
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SPECIAL = frozenset({"!=", "==", "=", "!", "(", ")", ",", ">", "<"})


class _Requirement(NamedTuple):
    key: str
    operator: str  #: in, notin, exists, !, gt, lt
    values: FrozenSet[str]
    number: int = 0

    def matches(self, labels: Dict[str, str]) -> bool:
        has = self.key in labels
        if self.operator == "in":
            return has and labels[self.key] in self.values
        if self.operator == "notin":
            return not has or labels[self.key] not in self.values
        if self.operator == "exists":
            return has
        if self.operator == "!":
            return not has
        if not has:
            return False
        value = go_int64(labels[self.key])
        if value is None:
            return False
        return value > self.number if self.operator == "gt" else value < self.number


_GO_INT = re.compile(r"[+-]?[0-9]+\Z")


def go_int64(text: str) -> Optional[int]:
    """``text`` as Go's ``strconv.ParseInt(text, 10, 64)`` reads it (what kube compares ``>``/``<`` labels as), or None.

    Python's ``int`` would also take ``1_0``, spaces and other scripts' digits, and any size.
    """
    if not _GO_INT.match(text):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def _invalid(detail: str) -> APIError:
    return bad_request(f"unable to parse requirement: {detail}")


def _key(text: str) -> str:
    prefix, slash, name = text.rpartition("/")
    if (slash and (not prefix or len(prefix) > 253 or not _SUBDOMAIN.fullmatch(prefix))) or not (
            0 < len(name) <= 63 and _NAME.fullmatch(name)):
        raise _invalid(f"key: Invalid value: {text!r}: a qualified name must consist of alphanumeric characters, '-', '_' "
                       "or '.', and must start and end with an alphanumeric character, with an optional DNS subdomain "
                       "prefix and '/' (e.g. 'example.com/MyName')")
    return text


def _value(text: str) -> str:
    if text and not (len(text) <= 63 and _NAME.fullmatch(text)):
        raise _invalid(f"values[0]: Invalid value: {text!r}: a valid label must be an empty string or consist of "
                       "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")
    return text


class LabelSelector:
    """A parsed ``labelSelector``: :meth:`matches` an object's ``metadata.labels``."""

    __slots__ = ("requirements",)

    def __init__(self, requirements: List[_Requirement]) -> None:
        self.requirements = requirements

    @classmethod
    def parse(cls, text: str) -> Optional["LabelSelector"]:
        """The selector, None when it selects everything (empty), or a 400."""
        tokens = _TOKEN.findall(text)
        requirements: List[_Requirement] = []
        i = 0

        def take() -> str:
            nonlocal i
            token = tokens[i] if i < len(tokens) else ""
            i += 1
            return token

        def identifier(what: str) -> str:
            token = take()
            if not token or token in _SPECIAL:
                raise _invalid(f"found '{token}', expected: {what}")
            return token

        while i < len(tokens):
            if tokens[i] == "!":
                take()
                requirements.append(_Requirement(_key(identifier("identifier after '!'")), "!", frozenset()))
            else:
                key = _key(identifier("identifier"))
                op = tokens[i] if i < len(tokens) else ","
                if op == ",":
                    requirements.append(_Requirement(key, "exists", frozenset()))
                elif op in ("=", "==", "!="):
                    take()
                    value = "" if i >= len(tokens) or tokens[i] == "," else _value(identifier("value"))
                    requirements.append(_Requirement(key, "notin" if op == "!=" else "in", frozenset({value})))
                elif op in ("in", "notin"):
                    take()
                    if take() != "(":
                        raise _invalid(f"found '{tokens[i - 1] if i <= len(tokens) else ''}', expected: '('")
                    values = set()
                    token = take()
                    while token != ")":
                        if not token or token in _SPECIAL:
                            raise _invalid(f"found '{token}', expected: ',', ')' or identifier")
                        values.add(_value(token))
                        token = take()
                        if token == ",":
                            token = take()
                        elif token != ")":
                            raise _invalid(f"found '{token}', expected: ',' or ')'")
                    if not values:
                        raise _invalid("for 'in', 'notin' operators, values set can't be empty")
                    requirements.append(_Requirement(key, op, frozenset(values)))
                elif op in (">", "<"):
                    take()
                    token = identifier("value")
                    number = go_int64(token)
                    if number is None:
                        raise _invalid(f"for 'Gt', 'Lt' operators, the value must be an integer: {token!r}")
                    requirements.append(_Requirement(key, "gt" if op == ">" else "lt", frozenset(), number))
                else:
                    raise _invalid(f"found '{op}', expected: in, notin, =, ==, !=, gt, lt")
            if i < len(tokens):
                if take() != ",":
                    raise _invalid(f"found '{tokens[i - 1]}', expected: ','")
                if i >= len(tokens):
                    raise _invalid("found '', expected: identifier after ','")
        return cls(requirements) if requirements else None

    def matches(self, labels: Dict[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)
