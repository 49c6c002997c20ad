"""Authentication and authorization, in kube-apiserver's model.

A request is first **authenticated**: an :class:`Authenticator` turns its credentials (a bearer
token, a client certificate ...) into a :class:`UserInfo`; then **authorized**: an
:class:`Authorizer` judges the request's :class:`Attributes` (user, verb, namespace, resource,
name, or a non-resource path) and answers a :class:`Decision`.  Both are plain callables, so a host
server embedding :class:`streamcodec.server.App` passes its own::

    App(etcd_endpoints=[...], authenticator=my_authenticator, authorizer=my_authorizer)

Built in (what ``streamcodec serve``'s flags configure, :mod:`streamcodec.server.secure_serving`):

* :class:`TokenFileAuthenticator`: ``--token-auth-file``, kube's static token CSV
  (``token,user,uid,"group1,group2"``), tokens sent as ``Authorization: Bearer TOKEN``;
* :class:`X509Authenticator`: client certificates verified by the TLS layer against
  ``--client-ca-file`` (CN = user, every O = a group);
* :class:`UnionAuthenticator`: the first authenticator that knows the request's credentials;
* :class:`AbacAuthorizer`: ``--authorization-mode ABAC`` with ``--authorization-policy-file``
  (kube's ABAC policy format, one JSON policy per line), :func:`always_allow`, :func:`always_deny`,
  :class:`UnionAuthorizer` (kube's comma-separated ``--authorization-mode`` list) and
  :class:`PrivilegedGroupAuthorizer` (``system:masters`` may do anything, as in kube).

How the App uses them (:class:`SecurityGate`): a request without credentials an authenticator
accepts gets **401** with a ``Status`` (reason ``Unauthorized``), except the public probes
``/healthz``, ``/livez``, ``/readyz`` and ``/version``, which anyone may read (neither authenticated
nor authorized: invalid credentials are ignored there, where kube-apiserver would answer 401); every
authenticated user is in group ``system:authenticated``.  A request the authorizer does not allow gets **403** (reason
``Forbidden``, kube's message: ``secrets is forbidden: User "alice" cannot list resource "secrets" in
API group "" in the namespace "kube-system"``).  As kube, a cluster-wide list or watch
(``/api/v1/secrets``) is one request for the cluster scope: a user allowed in one namespace only is
refused it, not served a filtered list.  Without an authenticator every request runs as
``system:anonymous`` (group ``system:unauthenticated``), and is judged by the authorizer if one is
given; with neither (nor an audit log) the App serves every request exactly as before.

The gate mirrors the App's router when it parses a path (the same normalisation, the same
un-escaping of path segments), so the authorizer judges the request the router serves.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import hashlib
import inspect
import json
import logging
import time
import urllib.parse
from typing import (
    Any, Awaitable, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Sequence, Tuple, Union,
    runtime_checkable,
)

from .status import APIError, internal_error

__all__ = [
    "ANONYMOUS",
    "AUTHENTICATED_GROUP",
    "PRIVILEGED_GROUP",
    "PUBLIC_PATHS",
    "AbacAuthorizer",
    "AbacPolicy",
    "Attributes",
    "AuthenticationError",
    "Authenticator",
    "Authorizer",
    "Decision",
    "PrivilegedGroupAuthorizer",
    "SecurityGate",
    "TokenFileAuthenticator",
    "UnionAuthenticator",
    "UnionAuthorizer",
    "UserInfo",
    "X509Authenticator",
    "always_allow",
    "always_deny",
    "bearer_token",
    "forbidden",
    "request_attributes",
    "unauthorized",
]

log = logging.getLogger("streamcodec.server.security")

AUTHENTICATED_GROUP = "system:authenticated"
UNAUTHENTICATED_GROUP = "system:unauthenticated"
#: kube-apiserver's privileged group: :class:`PrivilegedGroupAuthorizer` allows it everything.
PRIVILEGED_GROUP = "system:masters"
#: Paths served without authentication or authorization (kube's system:public-info-viewer role).
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})
#: kube's read-only verbs (``readonly: true`` ABAC policies allow these).
READ_ONLY_VERBS = frozenset({"get", "list", "watch"})


# -- users -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UserInfo:
    """Who made a request (kube's ``user.Info``)."""

    name: str
    uid: str = ""
    groups: Tuple[str, ...] = ()
    extra: Mapping[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict, hash=False)

    @property
    def authenticated(self) -> bool:
        return self.name != ANONYMOUS.name

    def with_group(self, group: str) -> "UserInfo":
        return self if group in self.groups else dataclasses.replace(self, groups=self.groups + (group,))


#: The user of a request without credentials.
ANONYMOUS = UserInfo("system:anonymous", groups=(UNAUTHENTICATED_GROUP,))


class AuthenticationError(Exception):
    """Credentials were presented and are not valid (the request gets 401).  The message is logged
    at debug level, never sent to the client."""


MaybeAwaitable = Union[Any, Awaitable[Any]]


@runtime_checkable
class Authenticator(Protocol):
    """Turns a request's credentials into a user.

    Called with the request's ASGI scope (headers in ``scope["headers"]``, a TLS client
    certificate in ``scope["extensions"]["tls"]``, see :mod:`streamcodec.server.tls`).  Returns the
    :class:`UserInfo`, or None when the request carries no credentials this authenticator knows
    (then the request is anonymous, and refused unless its path is public); raises
    :class:`AuthenticationError` for credentials it knows and rejects.  May be a coroutine function
    (e.g. a token review call); the built-in ones are plain functions, a few microseconds each.
    ``system:authenticated`` is added to the user's groups by the App.
    """

    def __call__(self, scope: Mapping[str, Any]) -> "Optional[UserInfo] | Awaitable[Optional[UserInfo]]": ...


def _headers(scope: Mapping[str, Any], name: bytes) -> Optional[bytes]:
    for key, value in scope.get("headers", ()):
        if key == name or key.lower() == name:
            return bytes(value)
    return None


def bearer_token(scope: Mapping[str, Any]) -> Optional[str]:
    """The token of an ``Authorization: Bearer TOKEN`` header (kube's parsing), or None."""
    raw = _headers(scope, b"authorization")
    if raw is None:
        return None
    parts = raw.decode("latin-1").strip().split(" ", 2)
    if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
        return None
    return parts[1]


def _token_key(token: str) -> bytes:
    # tokens are looked up by their digest: the lookup's timing says nothing about a token's prefix
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenFileAuthenticator:
    """kube's ``--token-auth-file``: a CSV of ``token,user,uid[,"group1,group2"...]`` lines.

    As kube's: at least three columns, records with an empty token are skipped (with a warning), a
    later duplicate token wins, the fourth column is a comma-separated group list (further columns are
    ignored).  The file is read once (restart to change it).
    """

    def __init__(self, users: Mapping[str, UserInfo]) -> None:
        self._users: Dict[bytes, UserInfo] = {
            _token_key(token): user.with_group(AUTHENTICATED_GROUP) for token, user in users.items()
        }

    @classmethod
    def from_file(cls, path: str) -> "TokenFileAuthenticator":
        with open(path, newline="", encoding="utf-8") as f:
            return cls.from_lines(f, path)

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "<tokens>") -> "TokenFileAuthenticator":
        users: Dict[str, UserInfo] = {}
        reader = csv.reader(lines, skipinitialspace=True)
        number = 0
        for record in reader:
            if not record or record == [""]:
                continue  # Go's csv reader skips empty lines
            if len(record) < 3:
                raise ValueError(
                    f"token file {source!r} must have at least 3 columns (token, user name, user uid), found {len(record)}"
                )
            number += 1
            token, name, uid = record[0], record[1], record[2]
            if not token:
                log.warning("empty token in token file %r, record %d: skipped", source, number)
                continue
            if token in users:
                log.warning("duplicate token in token file %r, record %d: the later one wins", source, number)
            groups = tuple(record[3].split(",")) if len(record) >= 4 else ()
            users[token] = UserInfo(name, uid, groups)
        return cls(users)

    def __len__(self) -> int:
        return len(self._users)

    def __call__(self, scope: Mapping[str, Any]) -> Optional[UserInfo]:
        token = bearer_token(scope)
        if token is None:
            return None
        user = self._users.get(_token_key(token))
        if user is None:
            raise AuthenticationError("invalid bearer token")
        return user


class X509Authenticator:
    """A client certificate the TLS layer verified against ``--client-ca-file``: ``CN`` is the user,
    each ``O`` a group (kube's ``CommonNameUserConversion``).  Reads
    ``scope["extensions"]["tls"]["client_cert_name"]`` (see :mod:`streamcodec.server.tls`); a certificate without
    a CN gives no user (as kube's)."""

    def __call__(self, scope: Mapping[str, Any]) -> Optional[UserInfo]:
        tls = (scope.get("extensions") or {}).get("tls")
        if not tls:
            return None
        if tls.get("client_cert_error"):
            raise AuthenticationError(f"client certificate: {tls['client_cert_error']}")
        name = tls.get("client_cert_name")
        if not name:
            return None
        return _user_of_subject(name)


def _user_of_subject(name: str) -> Optional[UserInfo]:
    from .tls import parse_rfc4514

    try:
        attributes = parse_rfc4514(name)
    except ValueError as exc:
        raise AuthenticationError(str(exc)) from None
    common = [v for k, v in attributes if k.upper() == "CN"]
    if not common or not common[0]:
        return None
    groups = tuple(v for k, v in attributes if k.upper() == "O")
    return UserInfo(common[0], "", groups).with_group(AUTHENTICATED_GROUP)


class UnionAuthenticator:
    """The first of ``authenticators`` that returns a user wins (kube's union: client certificates,
    then tokens).  If none does and one rejected the credentials, :class:`AuthenticationError`."""

    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self.authenticators = list(authenticators)

    async def __call__(self, scope: Mapping[str, Any]) -> Optional[UserInfo]:
        errors: List[str] = []
        for authenticate in self.authenticators:
            try:
                user = authenticate(scope)
                if inspect.isawaitable(user):
                    user = await user
            except AuthenticationError as exc:
                errors.append(str(exc))
                continue
            if user is not None:
                return user
        if errors:
            raise AuthenticationError("; ".join(errors))
        return None


# -- request attributes --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Attributes:
    """What a request asks to do (kube's ``authorizer.Attributes``, from its ``RequestInfo``).

    ``resource_request``: an API object path (``/api/v1/...`` below the group version); otherwise
    ``path`` is a non-resource path (``/api``, ``/healthz``) and ``verb`` the lower-case HTTP method.
    Resource verbs: ``get``, ``list``, ``watch``, ``create``, ``update``, ``patch``, ``delete``,
    ``deletecollection``.  ``namespace`` is "" for the cluster scope (``/api/v1/secrets``).
    """

    user: UserInfo
    verb: str
    resource_request: bool
    path: str
    namespace: str = ""
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""

    @property
    def read_only(self) -> bool:
        return self.verb in READ_ONLY_VERBS


_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def normalized_path(scope: Mapping[str, Any]) -> str:
    """The path as the App's router sees it (trailing slashes dropped)."""
    return str(scope.get("path", "/")).rstrip("/") or "/"


def _query(raw: bytes) -> Dict[str, str]:
    if not raw:
        return {}
    return dict(urllib.parse.parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


def request_attributes(scope: Mapping[str, Any], user: UserInfo) -> Attributes:
    """kube's ``RequestInfoFactory`` over an ASGI scope: the :class:`Attributes` of the request."""
    method = str(scope.get("method", "GET")).upper()
    path = normalized_path(scope)
    parts = path.split("/")[1:]
    if parts and parts[0] == "api":
        group, rest = "", parts[1:]
    elif parts and parts[0] == "apis":
        group, rest = (parts[1] if len(parts) > 1 else ""), parts[2:]
    else:
        return Attributes(user, method.lower(), False, path)
    # /api, /api/v1, /apis, /apis/G, /apis/G/V: discovery, not resources
    if len(rest) < 2:
        return Attributes(user, method.lower(), False, path)
    version = rest[0]
    # the App's router un-escapes path segments once more (after the server's own un-escaping):
    # judge the names it will serve
    rest = [urllib.parse.unquote(p) for p in rest[1:]]
    verb = _METHOD_VERBS.get(method, method.lower())
    if rest[0] == "watch":  # kube's deprecated /api/v1/watch/... paths
        verb, rest = "watch", rest[1:]
        if not rest:
            return Attributes(user, method.lower(), False, path)
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2:  # namespaces/NS/RESOURCE...; namespaces/NS is the Namespace object NS itself
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    query: Optional[Dict[str, str]] = None
    if not name and verb in ("get", "delete"):
        query = _query(scope.get("query_string", b""))
        if verb == "get":
            verb = "watch" if query.get("watch", "") in ("1", "true", "True") else "list"
        else:
            verb = "deletecollection"
    if verb in ("list", "watch") and not name:
        # a list or watch of one object by field selector is authorized as that object (kube's rule)
        query = query if query is not None else _query(scope.get("query_string", b""))
        selector = query.get("fieldSelector", "")
        for term in selector.split(","):
            key, sep, value = term.partition("=")
            if sep and key.strip() == "metadata.name":
                name = value.lstrip("=").strip()
    return Attributes(user, verb, True, path, namespace, group, version, resource, subresource, name)


# -- authorization -----------------------------------------------------------------


class Decision(enum.Enum):
    """An authorizer's answer (kube's ``authorizer.Decision``).  ``NO_OPINION`` lets the next
    authorizer of a :class:`UnionAuthorizer` decide; the last one's ``NO_OPINION`` is a refusal."""

    ALLOW = "Allow"
    DENY = "Deny"
    NO_OPINION = "NoOpinion"


@runtime_checkable
class Authorizer(Protocol):
    """Judges one request.

    Called with the request's :class:`Attributes`; returns ``(Decision, reason)`` — the reason of a
    refusal is appended to the 403's message (kube's ``: reason``), "" for none.  May be a coroutine
    function (e.g. a SubjectAccessReview webhook).  Anything but ``Decision.ALLOW`` refuses the
    request with 403.
    """

    def __call__(self, attributes: Attributes) -> "Tuple[Decision, str] | Awaitable[Tuple[Decision, str]]": ...


def always_allow(attributes: Attributes) -> Tuple[Decision, str]:
    """``--authorization-mode AlwaysAllow``."""
    return Decision.ALLOW, ""


def always_deny(attributes: Attributes) -> Tuple[Decision, str]:
    """``--authorization-mode AlwaysDeny``."""
    return Decision.DENY, "Everything is forbidden."


class PrivilegedGroupAuthorizer:
    """Allows members of ``groups`` (kube: ``system:masters``) everything; no opinion otherwise."""

    def __init__(self, groups: Iterable[str] = (PRIVILEGED_GROUP,)) -> None:
        self.groups = frozenset(groups)

    def __call__(self, attributes: Attributes) -> Tuple[Decision, str]:
        if self.groups.intersection(attributes.user.groups):
            return Decision.ALLOW, ""
        return Decision.NO_OPINION, ""


class UnionAuthorizer:
    """kube's union: the first ``ALLOW`` or ``DENY`` decides; all ``NO_OPINION``: refused, with their
    reasons joined."""

    def __init__(self, authorizers: Sequence[Authorizer]) -> None:
        self.authorizers = list(authorizers)

    def __call__(self, attributes: Attributes) -> "Tuple[Decision, str] | Awaitable[Tuple[Decision, str]]":
        reasons: List[str] = []
        for index, authorize in enumerate(self.authorizers):
            result = authorize(attributes)
            if inspect.isawaitable(result):  # an async authorizer: the rest of the chain is awaited
                return self._rest(attributes, index, result, reasons)
            decision, reason = result
            if decision is not Decision.NO_OPINION:
                return decision, reason
            if reason:
                reasons.append(reason)
        return Decision.NO_OPINION, "\n".join(reasons)

    async def _rest(self, attributes: Attributes, index: int, pending: Awaitable[Any], reasons: List[str]) -> Tuple[Decision, str]:
        result = await pending
        while True:
            decision, reason = result
            if decision is not Decision.NO_OPINION:
                return decision, reason
            if reason:
                reasons.append(reason)
            index += 1
            if index == len(self.authorizers):
                return Decision.NO_OPINION, "\n".join(reasons)
            result = self.authorizers[index](attributes)
            if inspect.isawaitable(result):
                result = await result


ABAC_API_VERSION = "abac.authorization.kubernetes.io/v1beta1"
_POLICY_FIELDS = {"user", "group", "readonly", "apiGroup", "resource", "namespace", "nonResourcePath"}


@dataclasses.dataclass(frozen=True)
class AbacPolicy:
    """One ABAC policy's ``spec``.  Matching is kube's (``pkg/auth/authorizer/abac``):

    * subject: ``user`` (``*`` = any user) and/or ``group`` (``*`` = any); both given, both must
      match; a policy with neither matches nobody;
    * verb: a read-only request (get/list/watch) matches any policy, others only ``readonly: false``;
    * a resource request matches ``namespace``, ``resource`` and ``apiGroup``, each exactly or ``*``
      (an omitted one is "", which matches only "": ``namespace: ""`` is the cluster scope, core
      resources are ``apiGroup: ""``); a non-resource request matches ``nonResourcePath`` exactly,
      ``*``, or a ``/prefix/*`` prefix.
    """

    user: str = ""
    group: str = ""
    readonly: bool = False
    api_group: str = ""
    resource: str = ""
    namespace: str = ""
    non_resource_path: str = ""

    def matches(self, a: Attributes) -> bool:
        return self._subject(a.user) and (a.read_only or not self.readonly) and (
            self._resource(a) if a.resource_request else self._non_resource(a)
        )

    def _subject(self, user: UserInfo) -> bool:
        matched = False
        if self.user:
            if self.user != "*" and self.user != user.name:
                return False
            matched = True
        if self.group:
            if self.group != "*" and self.group not in user.groups:
                return False
            matched = True
        return matched

    def _resource(self, a: Attributes) -> bool:
        return (
            (self.namespace == "*" or self.namespace == a.namespace)
            and (self.resource == "*" or self.resource == a.resource)
            and (self.api_group == "*" or self.api_group == a.api_group)
        )

    def _non_resource(self, a: Attributes) -> bool:
        p = self.non_resource_path
        if p == "*" or p == a.path:
            return True
        return p.endswith("*") and a.path.startswith(p.rstrip("*"))


class AbacAuthorizer:
    """``--authorization-mode ABAC``: allowed iff some policy matches (:class:`AbacPolicy`); else no
    opinion, reason ``No policy matched.`` (kube's)."""

    def __init__(self, policies: Sequence[AbacPolicy]) -> None:
        self.policies = list(policies)

    @classmethod
    def from_file(cls, path: str) -> "AbacAuthorizer":
        with open(path, encoding="utf-8") as f:
            return cls.from_lines(f, path)

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "<policy>") -> "AbacAuthorizer":
        """One JSON policy per line (kube's format); blank lines and ``#`` comments are skipped.
        ValueError names the line of a policy that is not valid JSON, has another ``apiVersion``/``kind``
        or an unknown ``spec`` field (kube would silently ignore a misspelt field: refused here)."""
        policies: List[AbacPolicy] = []
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            where = f"{source}, line {number}"
            try:
                doc = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"{where}: not a JSON policy: {exc}") from None
            if not isinstance(doc, dict) or doc.get("apiVersion") != ABAC_API_VERSION or doc.get("kind") != "Policy":
                raise ValueError(f'{where}: want {{"apiVersion": "{ABAC_API_VERSION}", "kind": "Policy", "spec": {{...}}}}')
            spec = doc.get("spec")
            if not isinstance(spec, dict):
                raise ValueError(f"{where}: spec must be an object")
            unknown = set(spec) - _POLICY_FIELDS
            if unknown:
                raise ValueError(f"{where}: unknown spec field(s) {sorted(unknown)} (known: {sorted(_POLICY_FIELDS)})")
            for key, value in spec.items():
                if key == "readonly":
                    if not isinstance(value, bool):
                        raise ValueError(f"{where}: spec.readonly must be true or false")
                elif not isinstance(value, str):
                    raise ValueError(f"{where}: spec.{key} must be a string")
            policies.append(AbacPolicy(
                user=spec.get("user", ""), group=spec.get("group", ""), readonly=spec.get("readonly", False),
                api_group=spec.get("apiGroup", ""), resource=spec.get("resource", ""),
                namespace=spec.get("namespace", ""), non_resource_path=spec.get("nonResourcePath", ""),
            ))
        return cls(policies)

    def __call__(self, attributes: Attributes) -> Tuple[Decision, str]:
        for policy in self.policies:
            if policy.matches(attributes):
                return Decision.ALLOW, ""
        return Decision.NO_OPINION, "No policy matched."


# -- errors ----------------------------------------------------------------------


def unauthorized() -> APIError:
    """kube's 401 (the same for missing and for rejected credentials)."""
    return APIError(401, "Unauthorized", "Unauthorized")


def forbidden(a: Attributes, reason: str = "") -> APIError:
    """kube's 403 (``responsewriters.Forbidden``): message, and details ``{name, group, kind}``."""
    if not a.resource_request:
        message = f'User "{a.user.name}" cannot {a.verb} path "{a.path}"'
    else:
        resource = a.resource + ("/" + a.subresource if a.subresource else "")
        where = f'in the namespace "{a.namespace}"' if a.namespace else "at the cluster scope"
        message = f'User "{a.user.name}" cannot {a.verb} resource "{resource}" in API group "{a.api_group}" {where}'
    if reason:
        message = f"{message}: {reason}"
    qualified = (a.resource + "." + a.api_group if a.api_group else a.resource) if a.resource_request else ""
    details: Dict[str, Any] = {}
    if not qualified:
        message = f"forbidden: {message}"
    else:
        message = f'{qualified} "{a.name}" is forbidden: {message}' if a.name else f"{qualified} is forbidden: {message}"
        details = {"kind": a.resource}
        if a.name:
            details["name"] = a.name
        if a.api_group:
            details["group"] = a.api_group
    return APIError(403, "Forbidden", message, details=details)


# -- the gate --------------------------------------------------------------------


class _CountingSend:
    """``send`` that notes the status code and the body bytes for the audit line.

    Keeps ``__self__`` (uvicorn's request cycle), which :mod:`streamcodec.server.streams` reads to know whether
    the server copies bodies and to abort a stalled client's transport: wrapped, a stream behaves as
    unwrapped.
    """

    __slots__ = ("_send", "__self__", "status", "bytes")

    def __init__(self, send: Any) -> None:
        self._send = send
        self.__self__ = getattr(send, "__self__", None)
        self.status: Optional[int] = None
        self.bytes = 0

    def __call__(self, message: Dict[str, Any]) -> Awaitable[None]:
        kind = message["type"]
        if kind == "http.response.body":
            self.bytes += len(message.get("body", b""))
        elif kind == "http.response.start":
            self.status = message["status"]
        return self._send(message)


ASGIApp = Callable[[Dict[str, Any], Any, Any], Awaitable[None]]


class SecurityGate:
    """Authentication, authorization and audit in front of the App's request handling.

    ``error_encoder(scope)``: the encoder of a ``Status`` response in the format the request accepts
    (the App's negotiation).  ``audit``: an :class:`streamcodec.server.audit.AuditSink` (``record(dict)``), or
    None.
    """

    def __init__(
        self,
        authenticator: Optional[Authenticator],
        authorizer: Optional[Authorizer],
        audit: Any,
        error_encoder: Callable[[Mapping[str, Any]], Any],
    ) -> None:
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.audit = audit
        self.error_encoder = error_encoder
        self.refused = {401: 0, 403: 0}

    async def serve(self, scope: Dict[str, Any], receive: Any, send: Any, app: ASGIApp) -> None:
        started = time.time()
        clock = time.perf_counter()
        counted = _CountingSend(send) if self.audit is not None else None
        user = ANONYMOUS
        attributes: Optional[Attributes] = None
        try:
            try:
                public = normalized_path(scope) in PUBLIC_PATHS
                if self.authenticator is not None:
                    user = await self._authenticate(scope, public)
                scope["user"] = user
                if not public and self.authorizer is not None:
                    attributes = request_attributes(scope, user)
                    result = self.authorizer(attributes)
                    if inspect.isawaitable(result):
                        result = await result
                    decision, reason = result
                    if decision is not Decision.ALLOW:
                        self.refused[403] += 1
                        raise forbidden(attributes, reason)
            except APIError as exc:
                await _send_status(counted or send, exc, self.error_encoder(scope))
                return
            except Exception:
                log.exception("authentication/authorization failed for %s %s", scope.get("method"), scope.get("path"))
                await _send_status(counted or send, internal_error(), self.error_encoder(scope))
                return
            await app(scope, receive, counted or send)
        finally:
            if counted is not None:
                self._audit(scope, user, attributes, counted, started, time.perf_counter() - clock)

    async def _authenticate(self, scope: Dict[str, Any], public: bool) -> UserInfo:
        assert self.authenticator is not None
        try:
            result = self.authenticator(scope)
            if inspect.isawaitable(result):
                result = await result
        except AuthenticationError as exc:
            log.debug("authentication failed for %s %s: %s", scope.get("method"), scope.get("path"), exc)
            result = None
        if result is None:
            if public:
                return ANONYMOUS
            self.refused[401] += 1
            raise unauthorized()
        user: UserInfo = result
        return user.with_group(AUTHENTICATED_GROUP) if user.authenticated else user

    def _audit(self, scope: Mapping[str, Any], user: UserInfo, a: Optional[Attributes], counted: _CountingSend,
               started: float, seconds: float) -> None:
        try:
            if a is None:
                a = request_attributes(scope, user)
            client = scope.get("client")
            self.audit.record({
                "time": started,
                "user": user.name,
                "groups": list(user.groups),
                "verb": a.verb,
                "apiGroup": a.api_group,
                "resource": a.resource,
                "namespace": a.namespace,
                "name": a.name,
                "path": a.path,
                "sourceIP": client[0] if client else "",
                "code": counted.status,
                "responseBytes": counted.bytes,
                "seconds": seconds,
            })
        except Exception:  # an audit failure must not turn into a failed response
            log.exception("writing the audit record failed")

    def flush(self) -> None:
        flush = getattr(self.audit, "flush", None)
        if flush is not None:
            flush()


async def _send_status(send: Any, error: APIError, encoder: Any) -> None:
    from .streams import send_error_response

    await send_error_response(send, error, encoder)


def status_encoder_of(app: Any) -> Callable[[Mapping[str, Any]], Any]:
    """``error_encoder`` for :class:`SecurityGate` from an :class:`streamcodec.server.App`: its negotiation of a
    ``Status`` for the request's ``Accept`` (JSON when nothing acceptable is offered)."""
    from .negotiation import negotiate

    def encoder(scope: Mapping[str, Any]) -> Any:
        try:
            accept = _headers(scope, b"accept")
            return app.encoder(negotiate(accept.decode("latin-1") if accept else None, app._formats_for("Status")), "Status")
        except Exception:
            return app.encoders.get("json")

    return encoder


def security_gate(
    app: Any, authenticator: Optional[Authenticator], authorizer: Optional[Authorizer], audit: Any,
) -> Optional[SecurityGate]:
    """The gate of ``app`` (an :class:`streamcodec.server.App`), or None when nothing is configured (its requests
    are then served exactly as before)."""
    if authenticator is None and authorizer is None and audit is None:
        return None
    for what, value in (("authenticator", authenticator), ("authorizer", authorizer)):
        if value is not None and not callable(value):
            raise TypeError(f"{what} must be callable, not {type(value).__name__}")
    if audit is not None and not callable(getattr(audit, "record", None)):
        raise TypeError("audit must have a record(entry) method (streamcodec.server.audit.AuditLog)")
    return SecurityGate(authenticator, authorizer, audit, status_encoder_of(app))
