"""The schema registry of Kubernetes' typed protobuf: which kinds have a message, and its fields.

Kubernetes serves built-in kinds in ``application/vnd.kubernetes.protobuf`` as their generated
messages (``k8s.io/api/core/v1/generated.proto``), wrapped in the ``k8s\\x00`` + ``runtime.Unknown``
envelope.  A server may offer that media type only for kinds whose message it knows: the
:class:`KubeSchema` holds them.  :data:`DEFAULT_SCHEMA` has core/v1's kinds served by this
project's server (Secret, ConfigMap, Namespace, Pod, Service, ... and their ``*List``) and
``meta/v1`` ``Status``; :meth:`KubeSchema.register` adds more (custom resources have no protobuf
in Kubernetes either: JSON and CBOR only).

A message's fields are given as ``(json_name, number, kind, message, shape)``, or with a sixth
element ``"OMITEMPTY"``:

kind
    ``STRING``, ``BYTES`` (base64 text in JSON), ``BOOL``, ``INT32``, ``INT64``, ``DOUBLE``,
    ``MESSAGE`` (``message`` names it), or a type with a JSON form of its own: ``TIME``
    (``metav1.Time``/``MicroTime``: RFC 3339 text -> ``{1: seconds, 2: nanos}``), ``QUANTITY``
    (text -> ``{1: string}``), ``INTORSTRING`` (number or text -> ``{1: type, 2: intVal,
    3: strVal}``), ``RAWJSON`` (``FieldsV1``/``RawExtension``: any JSON -> ``{1: its bytes}``),
    ``DURATION`` (Go duration text -> ``{1: nanoseconds}``).
shape
    ``ONE``, ``REPEATED`` (a JSON array; proto2, so unpacked), ``MAP`` (a JSON object with
    string keys; entries ``{1: key, 2: value}``) or ``INLINE`` (an embedded message whose
    JSON fields sit in the parent's object, Go's ``json:",inline"``; its ``json_name`` is ``""``).
OMITEMPTY
    (scalar ``ONE`` fields only) Go's JSON leaves the field out when it is zero (``""``, 0, false,
    no bytes) though Go's protobuf writes it whatever its value (a non-pointer field tagged
    ``omitempty``): a decoder leaves a zero of it out too, so an object read in protobuf is the one
    its JSON has (``metadata.selfLink``, ``generation``, ``managedFields[].subresource``, ...).

The field numbers and types are facts from Kubernetes' ``generated.proto`` (version 0.36.4),
joined with the JSON names of its Go struct tags by ``scripts/gen-kube-schema``.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from . import _kube_schema_data

__all__ = ["KubeSchema", "Field", "Message", "DEFAULT_SCHEMA", "KINDS", "SHAPES"]

#: Field kinds (their codes are what the compiled transcoder switches on).
KINDS = ("STRING", "BYTES", "BOOL", "INT32", "INT64", "DOUBLE", "MESSAGE", "TIME", "QUANTITY", "INTORSTRING", "RAWJSON", "DURATION")
SHAPES = ("ONE", "REPEATED", "MAP", "INLINE")
_SCALAR_KINDS = frozenset(KINDS[:6])

#: Deepest chain of inlined messages a JSON key may reach through (core/v1 has 1).
MAX_INLINE_DEPTH = 4

FieldSpec = Tuple[Any, ...]  #: (json_name, number, kind, message, shape[, "OMITEMPTY"])
PatchStrategy = Tuple[str, Optional[str]]  #: (patchStrategy, patchMergeKey): ("merge", "name"), ("merge,retainKeys", "name")


class Field(NamedTuple):
    """One JSON key of a message, resolved: where its value goes on the wire."""

    json_name: str
    number: int
    kind: str
    message: Optional[str]  #: the message's full name, for kind MESSAGE
    shape: str  #: ONE, REPEATED or MAP (INLINE fields are flattened into ``path``)
    path: Tuple[int, ...]  #: field numbers of the inlined messages the value is nested in
    omit_empty: bool = False  #: a zero value is left out of the JSON (see OMITEMPTY above)


class Message(NamedTuple):
    name: str
    fields: Tuple[Field, ...]  #: every JSON key, inlined ones included
    by_json: Mapping[str, Field]
    by_number: Mapping[Tuple[int, ...], Field]  #: ``path + (number,)`` -> field: how a decoder finds it
    inlined: FrozenSet[Tuple[int, ...]]  #: the paths of the inlined messages (every prefix of a field's path)


class KubeSchema:
    """Kinds served in typed protobuf and the tables of their messages.

    ``kinds``: ``(apiVersion, kind) -> message name``; ``messages``: ``name -> field specs``.
    """

    def __init__(self, kinds: Mapping[Tuple[str, str], str], messages: Mapping[str, Sequence[FieldSpec]],
                 patch_strategies: Mapping[str, Mapping[str, PatchStrategy]] = {}) -> None:
        self._kinds: Dict[Tuple[str, str], str] = {}
        self._specs: Dict[str, Tuple[FieldSpec, ...]] = {}
        self._messages: Dict[str, Message] = {}
        self._byte_paths_cache: Dict[str, Dict[str, object]] = {}
        self._strategies: Dict[str, Dict[str, PatchStrategy]] = {}
        self._strategies_cache: Dict[str, Dict[str, PatchStrategy]] = {}
        self.version = 0  #: bumped by every change (compiled encoders rebuild their tables)
        self.register(kinds, messages, patch_strategies)

    def register(self, kinds: Mapping[Tuple[str, str], str], messages: Mapping[str, Sequence[FieldSpec]] = {},
                 patch_strategies: Mapping[str, Mapping[str, PatchStrategy]] = {}) -> None:
        """Add kinds, message tables and their fields' strategic-merge-patch tags (a message already
        known is replaced; ``patch_strategies``: message -> {json name: (patchStrategy, patchMergeKey)}).

        Every message a field refers to must be known once this returns: the check runs here,
        not when the first object of the kind is encoded.
        """
        for name, specs in messages.items():
            checked = []
            for spec in specs:
                json_name, number, kind, message, shape = spec[:5]
                flags = tuple(spec[5:])
                if flags not in ((), ("OMITEMPTY",)) or (flags and (shape != "ONE" or kind not in _SCALAR_KINDS)):
                    raise ValueError(f"{name}.{json_name}: only a scalar ONE field may be OMITEMPTY, not {spec!r}")
                if kind not in KINDS or shape not in SHAPES:
                    raise ValueError(f"{name}.{json_name}: unknown kind {kind!r} or shape {shape!r}")
                if not (type(number) is int and 1 <= number < 1 << 29):
                    raise ValueError(f"{name}.{json_name}: field number {number!r} out of range")
                if (kind == "MESSAGE") != (message is not None):
                    raise ValueError(f"{name}.{json_name}: a MESSAGE field names its message, and only it")
                if shape == "INLINE" and (kind != "MESSAGE" or json_name):
                    raise ValueError(f"{name}: an INLINE field is a MESSAGE with an empty json name")
                checked.append((str(json_name), number, kind, message, shape) + flags)
            self._specs[name] = tuple(checked)
        for key, name in kinds.items():
            self._kinds[(str(key[0]), str(key[1]))] = str(name)
        self._messages.clear()
        self._byte_paths_cache.clear()
        for name in list(self._specs):
            self.message(name)  # resolves every reference now
        for key, name in self._kinds.items():
            if name not in self._specs:
                raise ValueError(f"kind {key} names unknown message {name!r}")
        for name, fields in patch_strategies.items():
            self._strategies[name] = {str(k): (str(v[0]), None if v[1] is None else str(v[1])) for k, v in fields.items()}
        self._strategies_cache.clear()
        self.version += 1

    def patch_strategies(self, name: str) -> Dict[str, PatchStrategy]:
        """A message's JSON keys that have a strategic-merge-patch strategy (inlined ones included):
        ``{json name: (patchStrategy, patchMergeKey or None)}``.  Shared: not to be changed by the caller."""
        cached = self._strategies_cache.get(name)
        if cached is None:
            cached = self._strategies_cache[name] = {}
            self._collect_strategies(name, cached, 0)
        return cached

    def _collect_strategies(self, name: str, out: Dict[str, PatchStrategy], depth: int) -> None:
        own = self._strategies.get(name, {})
        for json_name, _number, _kind, message, shape, *_flags in self._specs.get(name, ()):
            if shape == "INLINE" and depth <= MAX_INLINE_DEPTH:
                self._collect_strategies(message, out, depth + 1)
            elif json_name in own:
                out[json_name] = own[json_name]

    def message_name(self, api_version: str, kind: str) -> Optional[str]:
        """The message of a kind, or None when it has no typed protobuf here."""
        return self._kinds.get((api_version, kind))

    def kinds(self) -> List[Tuple[str, str]]:
        return sorted(self._kinds)

    def message_names(self) -> List[str]:
        return sorted(self._specs)

    def message(self, name: str) -> Message:
        """The resolved message (inlined fields flattened into their parent's keys)."""
        cached = self._messages.get(name)
        if cached is not None:
            return cached
        fields: List[Field] = []
        self._flatten(name, (), fields, 0)
        by_json: Dict[str, Field] = {}
        for f in fields:
            if f.json_name in by_json:
                raise ValueError(f"{name}: json key {f.json_name!r} appears twice")
            by_json[f.json_name] = f
        by_number = {f.path + (f.number,): f for f in fields}
        inlined = frozenset(f.path[:i] for f in fields for i in range(1, len(f.path) + 1))
        message = self._messages[name] = Message(name, tuple(fields), by_json, by_number, inlined)
        return message

    def _flatten(self, name: str, path: Tuple[int, ...], out: List[Field], depth: int) -> None:
        specs = self._specs.get(name)
        if specs is None:
            raise ValueError(f"unknown message {name!r}")
        if depth > MAX_INLINE_DEPTH:
            raise ValueError(f"{name}: inlined deeper than {MAX_INLINE_DEPTH} levels")
        for json_name, number, kind, message, shape, *flags in specs:
            if shape == "INLINE":
                assert message is not None
                self._flatten(message, path + (number,), out, depth + 1)
            else:
                if message is not None and message not in self._specs:
                    raise ValueError(f"{name}.{json_name}: unknown message {message!r}")
                out.append(Field(json_name, number, kind, message, shape, path, bool(flags)))

    def byte_paths(self, name: str) -> Dict[str, object]:
        """For CBOR: the JSON keys under which this message holds ``[]byte`` values.

        A nested dict: ``{key: True}`` for a BYTES field (or a MAP/REPEATED of them), ``{key:
        {...}}`` for a message containing some.  Empty when the message holds none.  Shared: not to be
        changed by the caller.
        """
        cached = self._byte_paths_cache.get(name)
        if cached is None:
            cached = self._byte_paths_cache[name] = self._byte_paths(name, set())
        return cached

    def _byte_paths(self, name: str, seen: "set[str]") -> Dict[str, object]:
        if name in seen:
            return {}
        seen = seen | {name}
        out: Dict[str, object] = {}
        for f in self.message(name).fields:
            if f.kind == "BYTES":
                out[f.json_name] = True
            elif f.kind == "MESSAGE":
                assert f.message is not None
                inner = self._byte_paths(f.message, seen)
                if inner:
                    out[f.json_name] = inner
        return out


def _default() -> KubeSchema:
    return KubeSchema(_kube_schema_data.KINDS, _kube_schema_data.MESSAGES, _kube_schema_data.PATCH_STRATEGIES)  # type: ignore[arg-type]


#: Core/v1 kinds of Kubernetes 0.36.4 served by this project's server, plus meta/v1 Status.
DEFAULT_SCHEMA: KubeSchema = _default()
