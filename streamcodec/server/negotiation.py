"""Content negotiation on the ``Accept`` header.

Formats: ``json`` (application/json; also chosen for ``*/*``, ``application/*``
and a missing header), ``cbor`` (application/cbor, application/cbor-seq),
``protobuf`` (application/vnd.kubernetes.protobuf: Kubernetes' typed messages,
offered only for kinds of the schema registry, :mod:`streamcodec.kube_schema`),
``protobuf-struct`` (application/vnd.streamcodec.struct+protobuf: this project's
own ``google.protobuf.Struct`` objects, for any kind) and ``msgpack``
(application/vnd.msgpack).  A format the response's kind cannot be served in is
passed over like any unknown media type, so client-go's
``application/vnd.kubernetes.protobuf,application/json`` gets JSON for a kind
without a message.  Media ranges are tried by descending ``q``, then
in the order given; a range carrying parameters this server cannot honour
(``as=Table``, a ``g``/``v`` conversion) is skipped, as kube-apiserver skips
what it cannot serve, so kubectl's
``application/json;as=Table;...,application/json`` gets plain JSON.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import streamcodec
from streamcodec.formats import FORMATS, by_media_type

from .status import APIError

__all__ = ["negotiate", "parse_accept", "format_for_content_type", "available_formats"]

_WILDCARDS = {"*/*", "application/*"}
# Parameters that do not change the representation we send.
_HARMLESS_PARAMS = {"q", "stream", "charset"}


def available_formats() -> List[str]:
    """Formats whose encoder and decoder this installation of streamcodec provides."""
    return [
        f.name
        for f in FORMATS.values()
        if hasattr(streamcodec, f.encoder_class) and (not f.decoder_class or hasattr(streamcodec, f.decoder_class))
    ]


def parse_accept(header: str) -> List[Tuple[str, Dict[str, str], float]]:
    """``(media_type, params, q)`` per media range, best first (stable for equal q)."""
    ranges = []
    for position, part in enumerate(header.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        media_type = pieces[0].lower()
        if not media_type:
            continue
        params: Dict[str, str] = {}
        for p in pieces[1:]:
            if "=" in p:
                k, v = p.split("=", 1)
                params[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if not 0.0 < q <= 1.0:
            continue
        ranges.append((position, media_type, params, q))
    ranges.sort(key=lambda r: (-r[3], r[0]))
    return [(mt, params, q) for _, mt, params, q in ranges]


def negotiate(accept: Optional[str], available: Optional[List[str]] = None) -> str:
    """The format name for an ``Accept`` header, or :class:`APIError` 406."""
    if available is None:
        available = available_formats()
    if not accept or not accept.strip():
        if "json" in available:
            return "json"
        raise APIError(406, "NotAcceptable", "no JSON encoder is installed")
    for media_type, params, _q in parse_accept(accept):
        if set(params) - _HARMLESS_PARAMS:
            continue
        if media_type in _WILDCARDS:
            name = "json"
        else:
            found = by_media_type(media_type)
            name = found.name if found else ""
        if name in available:
            return name
    supported = ", ".join(FORMATS[n].media_types[0] for n in FORMATS if n in available)
    raise APIError(406, "NotAcceptable", f"only the following media types are accepted: {supported}")


def format_for_content_type(
    content_type: Optional[str], available: Optional[List[str]] = None, *, from_browser: bool = False
) -> str:
    """The format of a request body, or 415.

    A missing Content-Type means JSON, as kube-apiserver reads it (the official Python client sends
    its creates without one), except from a browser (``from_browser``: the request has an ``Origin``
    or ``Sec-Fetch-*`` header): a page can send a cross-site POST without a type (a typeless
    ``Blob`` body, no CORS preflight), which must not be taken for a JSON write to a server on loopback.
    """
    if available is None:
        available = available_formats()
    if (not content_type or not content_type.strip()) and not from_browser:
        content_type = "application/json"
    if not content_type or not content_type.strip():
        accepted = ", ".join(FORMATS[n].media_types[0] for n in FORMATS if n in available and FORMATS[n].decoder_class)
        raise APIError(415, "UnsupportedMediaType",
                       f"the request has no Content-Type header - accepted media types include: {accepted}")
    media_type = content_type.split(";", 1)[0].strip().lower()
    found = by_media_type(media_type)
    name = found.name if found else None
    if name is None or name not in available or not FORMATS[name].decoder_class:
        raise APIError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {media_type}")
    return name
