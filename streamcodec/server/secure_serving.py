"""``streamcodec serve``'s security flags (kube-apiserver's names) and what they configure.

TLS:            ``--tls-cert-file``, ``--tls-private-key-file``; ``--client-ca-file`` (clients may
                present a certificate, which must verify against it: CN = user, O = groups).
Authentication: ``--token-auth-file`` (kube's CSV: ``token,user,uid,"group1,group2"``) and/or
                client certificates; requests without valid credentials get 401, except
                /healthz, /livez, /readyz and /version.
Authorization:  ``--authorization-mode`` ``AlwaysAllow`` (default), ``AlwaysDeny``, ``ABAC`` or a
                comma-separated list tried in order (kube's); ``ABAC`` needs
                ``--authorization-policy-file``.  Members of ``system:masters`` may do anything
                whenever authorization is not AlwaysAllow alone (as kube's).
Audit:          ``--audit-log-path FILE``: one JSON line per request (:mod:`streamcodec.server.audit`).

Safe by default: unless the server serves TLS *and* authenticates, it refuses a ``--listen`` address
other than loopback; ``--insecure-allow-remote-unauthenticated`` overrides that.

:func:`add_arguments` adds the flags to the ``serve`` parser; :func:`configure` checks them and
returns a :class:`SecureServing`: keyword arguments for :class:`streamcodec.server.App` and for
``uvicorn.run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
from typing import Any, Dict, List, Optional

__all__ = ["add_arguments", "configure", "SecureServing", "is_loopback", "INSECURE_REMOTE_FLAG", "AUTHORIZATION_MODES"]

log = logging.getLogger("streamcodec.server.security")

INSECURE_REMOTE_FLAG = "--insecure-allow-remote-unauthenticated"
AUTHORIZATION_MODES = ("AlwaysAllow", "AlwaysDeny", "ABAC")


def add_arguments(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "security (kube-apiserver's flag names)",
        "Without TLS and authentication the server listens on loopback only (see " + INSECURE_REMOTE_FLAG + ").",
    )
    group.add_argument("--tls-cert-file", default=None, metavar="FILE",
                       help="serve HTTPS with this certificate (PEM, with its intermediates); needs --tls-private-key-file")
    group.add_argument("--tls-private-key-file", default=None, metavar="FILE", help="the private key of --tls-cert-file (PEM)")
    group.add_argument("--client-ca-file", default=None, metavar="FILE",
                       help="authenticate clients presenting a certificate signed by these CAs: the certificate's CN is the "
                            "user, its O attributes the groups (needs TLS; a certificate from another CA fails the handshake)")
    group.add_argument("--token-auth-file", default=None, metavar="FILE",
                       help='authenticate bearer tokens listed in this CSV file: token,user,uid,"group1,group2" per line')
    group.add_argument("--authorization-mode", default="AlwaysAllow", metavar="MODE[,MODE...]",
                       help="how requests are authorized, tried in order: " + ", ".join(AUTHORIZATION_MODES)
                            + " (default AlwaysAllow); ABAC needs --authorization-policy-file")
    group.add_argument("--authorization-policy-file", default=None, metavar="FILE",
                       help="ABAC policies, one JSON object per line: "
                            '{"apiVersion": "abac.authorization.kubernetes.io/v1beta1", "kind": "Policy", "spec": '
                            '{"user"|"group": ..., "namespace": ..., "resource": ..., "apiGroup": ..., "readonly": ..., '
                            '"nonResourcePath": ...}} ("*" matches anything)')
    group.add_argument("--audit-log-path", default=None, metavar="FILE",
                       help="append one JSON line per request (time, user, groups, verb, resource, namespace, name, "
                            "status code, response bytes, seconds) to FILE")
    group.add_argument(INSECURE_REMOTE_FLAG, action="store_true", dest="insecure_allow_remote_unauthenticated",
                       help="DANGEROUS: allow a non-loopback --listen address without TLS and authentication, so that "
                            "anyone who can reach it may read and write every object")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a --listen host) is a loopback address; names other than ``localhost`` are not
    resolved and count as not loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass
class SecureServing:
    """What the security flags configure."""

    app_options: Dict[str, Any]  #: ``authenticator``, ``authorizer``, ``audit`` for :class:`streamcodec.server.App`
    uvicorn_options: Dict[str, Any]  #: ``ssl_*`` for ``uvicorn.run`` / ``uvicorn.Config``
    tls: bool
    authenticates: bool

    def close(self) -> None:
        audit = self.app_options.get("audit")
        if audit is not None:
            audit.close()


def _modes(text: str) -> List[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes:
        raise ValueError("--authorization-mode names no mode")
    for mode in modes:
        if mode not in AUTHORIZATION_MODES:
            raise ValueError(f"--authorization-mode: unknown mode {mode!r} (known: {', '.join(AUTHORIZATION_MODES)})")
    if len(set(modes)) != len(modes):
        raise ValueError("--authorization-mode names a mode twice")
    return modes


def configure(args: argparse.Namespace) -> SecureServing:
    """Check the security flags of ``args`` (the ``serve`` parser's) and build what they ask for.

    ValueError with a message for the user: inconsistent flags, unreadable files, a non-loopback
    ``--listen`` without TLS and authentication (and without :data:`INSECURE_REMOTE_FLAG`).
    """
    from .security import (
        AbacAuthorizer, PrivilegedGroupAuthorizer, TokenFileAuthenticator, UnionAuthenticator, UnionAuthorizer,
        X509Authenticator, always_allow, always_deny,
    )
    from .tls import uvicorn_ssl_options

    cert, key, client_ca = args.tls_cert_file, args.tls_private_key_file, args.client_ca_file
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert-file and --tls-private-key-file go together")
    if client_ca and not cert:
        raise ValueError("--client-ca-file needs TLS (--tls-cert-file and --tls-private-key-file)")
    modes = _modes(args.authorization_mode)
    if "ABAC" in modes and not args.authorization_policy_file:
        raise ValueError("--authorization-mode ABAC needs --authorization-policy-file")
    if args.authorization_policy_file and "ABAC" not in modes:
        raise ValueError("--authorization-policy-file is only used with --authorization-mode ABAC")
    tls = bool(cert)
    authenticates = bool(args.token_auth_file or client_ca)
    host = args.listen[0]
    if not is_loopback(host) and not (tls and authenticates):
        if not args.insecure_allow_remote_unauthenticated:
            missing = " and ".join(w for w, ok in (("TLS", tls), ("authentication", authenticates)) if not ok)
            raise ValueError(
                f"refusing to listen on {host} (not loopback) without {missing}: anyone reaching it could read and write "
                f"every object.  Give --tls-cert-file/--tls-private-key-file and --token-auth-file or --client-ca-file, "
                f"listen on 127.0.0.1, or pass {INSECURE_REMOTE_FLAG} if you really mean it"
            )
        log.warning("%s: serving %s on %s, reachable beyond this machine, without %s",
                    INSECURE_REMOTE_FLAG, "HTTPS" if tls else "plain HTTP", host,
                    "authentication" if tls else ("TLS" if authenticates else "TLS or authentication"))

    authenticators: List[Any] = []
    if client_ca:
        authenticators.append(X509Authenticator())  # kube's order: certificates, then tokens
    if args.token_auth_file:
        try:
            authenticators.append(TokenFileAuthenticator.from_file(args.token_auth_file))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"--token-auth-file: {exc}") from None
    authenticator = authenticators[0] if len(authenticators) == 1 else (UnionAuthenticator(authenticators) if authenticators else None)

    authorizer: Any = None
    if modes != ["AlwaysAllow"]:
        chain: List[Any] = [PrivilegedGroupAuthorizer()]
        for mode in modes:
            if mode == "AlwaysAllow":
                chain.append(always_allow)
            elif mode == "AlwaysDeny":
                chain.append(always_deny)
            else:
                try:
                    chain.append(AbacAuthorizer.from_file(args.authorization_policy_file))
                except (OSError, ValueError, UnicodeDecodeError) as exc:
                    raise ValueError(f"--authorization-policy-file: {exc}") from None
        authorizer = UnionAuthorizer(chain)

    uvicorn_options: Dict[str, Any] = {}
    if tls:
        _check_tls_files(cert, key, client_ca)
        uvicorn_options = uvicorn_ssl_options(cert, key, client_ca)

    audit = None
    if args.audit_log_path:
        from .audit import AuditLog

        try:
            audit = AuditLog(args.audit_log_path)
        except OSError as exc:
            raise ValueError(f"--audit-log-path: {exc}") from None
    app_options: Dict[str, Any] = {"authenticator": authenticator, "authorizer": authorizer, "audit": audit}
    return SecureServing(app_options, uvicorn_options, tls, authenticates)


def _check_tls_files(cert: str, key: str, client_ca: Optional[str]) -> None:
    """Load the certificate, key and client CAs once, so a bad file is a message, not a traceback."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--tls-cert-file/--tls-private-key-file: {exc}") from None
    if client_ca:
        try:
            context.load_verify_locations(client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--client-ca-file: {exc}") from None
