"""Opaque, signed continue tokens for paged lists.

A token carries the pinned revision, a digest of the listed prefix and the
next key to read, relative to the prefix (so the server's key layout is not
shown to clients, as in kube's tokens); it is urlsafe base64 (no padding) of
that payload plus an HMAC-SHA256 tag (first 16 bytes) under a secret, so a
client can neither forge nor alter one, nor reuse it on another prefix.
Layout of the payload::

    version (1 byte, = 2) | revision (int64, big-endian) | sha256(prefix)[:8] | start key without the prefix
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from typing import Tuple

from .errors import InvalidContinue

__all__ = ["encode_continue", "decode_continue"]

_VERSION = 2
_HEAD = struct.Struct(">Bq8s")
_TAG_BYTES = 16  # 128-bit tag: forging one takes ~2**128 tries
_MAX_TOKEN_CHARS = 64 * 1024  # keys are at most a few KB; refuse to even decode anything bigger


def _tag(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()[:_TAG_BYTES]


def encode_continue(secret: bytes, prefix: bytes, revision: int, start_key: bytes) -> str:
    """A token resuming the list of ``prefix`` at ``revision`` from ``start_key`` (inclusive)."""
    if not start_key.startswith(prefix):
        raise ValueError("the start key is not under the prefix")
    payload = _HEAD.pack(_VERSION, revision, _prefix_digest(prefix)) + start_key[len(prefix) :]
    return base64.urlsafe_b64encode(payload + _tag(secret, payload)).rstrip(b"=").decode("ascii")


def decode_continue(secret: bytes, token: str, prefix: bytes) -> Tuple[int, bytes]:
    """Check ``token`` and return (revision, start key); :class:`InvalidContinue` if bad.

    Bad means: not base64, too short or long, a wrong tag (tampered with or
    signed by another secret), another token version, or made for a
    different prefix than ``prefix``.
    """
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
        raise InvalidContinue("continue token is empty, too long or not a string")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidContinue("continue token is not valid base64") from None
    if len(raw) < _HEAD.size + _TAG_BYTES:
        raise InvalidContinue("continue token is too short")
    payload, tag = raw[:-_TAG_BYTES], raw[-_TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(secret, payload)):
        raise InvalidContinue("continue token signature does not match (tampered with or from another server)")
    version, revision, digest = _HEAD.unpack_from(payload)
    if version != _VERSION:
        raise InvalidContinue(f"continue token version {version} is not supported")
    if not hmac.compare_digest(digest, _prefix_digest(prefix)):
        raise InvalidContinue("continue token was issued for another prefix")
    if revision <= 0:
        raise InvalidContinue("continue token is inconsistent")
    return revision, prefix + payload[_HEAD.size :]


def _prefix_digest(prefix: bytes) -> bytes:
    return hashlib.sha256(prefix).digest()[:8]
