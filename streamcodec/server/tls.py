"""TLS serving: the verified client certificate in the ASGI scope, and uvicorn's TLS options.

The ASGI TLS extension (``scope["extensions"]["tls"]``) is how an application learns about the
connection's TLS session; uvicorn does not fill it in, so :mod:`streamcodec.server.connections`' protocol
class calls :func:`tls_extension` once per connection (after the handshake) and
:func:`with_tls_extension` wraps that connection's application so every request's scope carries:

``client_cert_chain``
    PEM strings, the peer's certificate first (only a certificate that the TLS layer verified
    against the client CA; Python's ``ssl`` gives the leaf only, not the chain).
``client_cert_name``
    The verified certificate's subject as an RFC 4514 string (``CN=alice,O=dev,O=ops``), or None.
``client_cert_error``
    None, or why a presented certificate is not given (it was not verified).
``tls_version``
    0x0303 for TLS 1.2, 0x0304 for TLS 1.3, as the extension specifies.
``server_cert`` / ``cipher_suite``
    None (Python's ``ssl`` does not expose them in the extension's form).

:func:`parse_rfc4514` turns ``client_cert_name`` back into attributes; the x509 authenticator
(:class:`streamcodec.server.security.X509Authenticator`) takes ``CN`` as the user and every ``O`` as a group,
as kube-apiserver does.  Any ASGI server that fills in the extension works the same way.

Client certificates are *verified by the TLS layer*: :func:`uvicorn_ssl_options` asks for one
(``CERT_OPTIONAL``: token clients need none) and loads ``--client-ca-file`` as the only trust
anchor, so a certificate from another CA fails the handshake.  A host server embedding the App must
configure its TLS the same way.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

__all__ = [
    "tls_extension",
    "with_tls_extension",
    "rfc4514_name",
    "parse_rfc4514",
    "uvicorn_ssl_options",
]

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304, "TLSv1.1": 0x0302, "TLSv1": 0x0301}

#: RFC 4514 attribute type names of the keys Python's ``ssl.getpeercert()`` uses.
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}

#: RFC 4514 section 2.4: characters escaped anywhere in a value.
_SPECIAL = set(',+"\\<>;')


def tls_extension(transport: Any) -> Optional[Dict[str, Any]]:
    """The ASGI TLS extension dict of a connection, or None when it is not TLS."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    peer = ssl_object.getpeercert()  # a dict only for a certificate the handshake verified
    der = ssl_object.getpeercert(binary_form=True)
    verified = bool(peer)
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if verified and der else [],
        "client_cert_name": rfc4514_name(peer.get("subject", ())) if verified else None,
        "client_cert_error": "the client certificate was not verified" if der and not verified else None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


def with_tls_extension(app: Callable[..., Awaitable[None]], tls: Dict[str, Any]) -> Callable[..., Awaitable[None]]:
    """``app`` with ``scope["extensions"]["tls"] = tls`` set on every HTTP request's scope."""

    async def tls_app(scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            extensions = scope.get("extensions")
            if extensions is None:
                extensions = scope["extensions"] = {}
            extensions["tls"] = tls
        await app(scope, receive, send)

    return tls_app


def _escape(value: str) -> str:
    out: List[str] = []
    for i, ch in enumerate(value):
        if ch in _SPECIAL or (i == 0 and ch in "# ") or (i == len(value) - 1 and ch == " "):
            out.append("\\" + ch)
        elif ch == "\0":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def rfc4514_name(subject: Any) -> str:
    """An RFC 4514 string of ``ssl.getpeercert()["subject"]`` (a sequence of RDNs, most significant first)."""
    rdns = []
    for rdn in subject:
        rdns.append("+".join(f"{_SHORT_NAMES.get(key, key)}={_escape(value)}" for key, value in rdn))
    return ",".join(reversed(rdns))  # RFC 4514 writes the last RDN first


@functools.lru_cache(maxsize=1024)
def parse_rfc4514(name: str) -> Tuple[Tuple[str, str], ...]:
    """``(type, value)`` per attribute of an RFC 4514 name, in the string's order (``CN`` first for
    :func:`rfc4514_name`'s output).  Escapes (``\\,`` and ``\\XX`` hex of UTF-8 bytes) are undone;
    ``#``-hex (BER) values are left as written.  ValueError for a malformed name."""
    attributes: List[Tuple[str, str]] = []
    i, n = 0, len(name)
    while i < n:
        eq = name.find("=", i)
        if eq < 0:
            raise ValueError(f"malformed RFC 4514 name: {name!r}")
        key = name[i:eq].strip()
        i = eq + 1
        raw = bytearray()
        while i < n and name[i] not in ",+":
            ch = name[i]
            if ch == "\\":
                if i + 1 >= n:
                    raise ValueError(f"malformed RFC 4514 name (trailing backslash): {name!r}")
                pair = name[i + 1 : i + 3]
                if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                    raw.append(int(pair, 16))
                    i += 3
                    continue
                raw += name[i + 1].encode("utf-8")
                i += 2
                continue
            raw += ch.encode("utf-8")
            i += 1
        attributes.append((key, raw.decode("utf-8", errors="replace")))
        i += 1  # the separator
    return tuple(attributes)


def uvicorn_ssl_options(cert_file: str, key_file: str, client_ca_file: Optional[str] = None) -> Dict[str, Any]:
    """``uvicorn.Config``/``uvicorn.run`` keyword arguments serving TLS with this certificate and key;
    with ``client_ca_file`` clients may present a certificate, which must verify against it."""
    options: Dict[str, Any] = {"ssl_certfile": cert_file, "ssl_keyfile": key_file}
    if client_ca_file:
        options.update(ssl_ca_certs=client_ca_file, ssl_cert_reqs=ssl.CERT_OPTIONAL)
    return options
