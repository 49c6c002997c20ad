"""Kubernetes' CBOR made readable by the codec's strict :class:`streamcodec.CBORDecoder`.

Kubernetes (client-go with ``ClientsPreferCBOR``, kube-apiserver) writes every Go string and every
field name as a CBOR *byte* string (its ``StringToByteString`` and ``FieldNameToByteString``
options) and every ``[]byte`` as a byte string in tag 22 ("expected later base64", RFC 8949
§3.4.5.2), which JSON carries as base64 text.  The codec's decoder takes map keys only as text
strings and refuses tag 22.  :func:`plain_cbor` rewrites a whole data item so that it reads:
byte-string map keys become text strings (same bytes, same length: the head's major type flips),
a byte string in tag 22 becomes the text string of its base64.  Byte strings elsewhere stay byte
strings: whether one is a Go string or a ``[]byte`` is the schema's to say (a server decides with
its kinds' ``[]byte`` paths).

What the rewrite does not understand (malformed or truncated CBOR) it leaves alone: the decoder
that reads the result reports it.  The informer's stream reader (:mod:`streamcodec.informer.decode`)
reads Kubernetes' responses by the same conventions, item by item as they arrive.
"""

from __future__ import annotations

import base64
from typing import List, Tuple

from .errors import TooManyValues

__all__ = ["TAG_LATER_BASE64", "plain_cbor", "text_head"]

#: RFC 8949's "expected later encoding: base64" tag: Kubernetes' ``[]byte``.
TAG_LATER_BASE64 = 22
_BREAK = 0xFF


def text_head(n: int) -> bytes:
    """The head of a CBOR text string of ``n`` bytes."""
    if n < 24:
        return bytes((0x60 | n,))
    for ai, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes((0x60 | ai,)) + n.to_bytes(width, "big")
    raise ValueError("a string too long for CBOR")


def plain_cbor(body: bytes, *, max_values: int) -> bytes:
    """``body`` (one CBOR data item, optionally tagged 55799) with its byte-string map keys as text strings
    and its tag-22 byte strings as base64 text; ``body`` itself when there is nothing to change.

    Counts values as the decoder does (each item but tags and breaks) and raises
    :class:`~streamcodec.TooManyValues` past ``max_values``, so a hostile body costs at most that many steps.
    """
    edits: List[Tuple[int, int, bytes]] = []  # (start, end, replacement), in order
    # open containers: [items left (-1: indefinite), is a map, the next item is a key]
    stack: List[List[int]] = []
    values = 0
    tag_at = -1  # the head of a tag 22 waiting for its byte string
    pos, n = 0, len(body)
    while pos < n:
        ib = body[pos]
        major, ai = ib >> 5, ib & 31
        if ai < 24:
            arg, head_end = ai, pos + 1
        elif ai < 28:
            head_end = pos + 1 + (1 << (ai - 24))
            if head_end > n:
                break
            arg = int.from_bytes(body[pos + 1:head_end], "big")
        elif ai == 31:
            arg, head_end = -1, pos + 1
        else:
            break
        if major == 6:
            tag_at = pos if arg == TAG_LATER_BASE64 else -1
            pos = head_end
            continue
        if ib == _BREAK:
            if not stack or stack[-1][0] != -1:
                break
            stack.pop()
            pos = head_end
        else:
            values += 1
            if values > max_values:
                raise TooManyValues(max_values, pos)
            at_key = bool(stack) and stack[-1][1] == 1 and stack[-1][2] == 1
            if major in (2, 3):
                end = head_end + arg
                if arg < 0 or end > n:
                    break
                if major == 2 and tag_at >= 0:
                    text = base64.b64encode(body[head_end:end])
                    edits.append((tag_at, end, text_head(len(text)) + text))
                elif major == 2 and at_key:
                    edits.append((pos, pos + 1, bytes((ib | 0x20,))))  # major type 2 -> 3, same argument
                pos = end
            elif major in (4, 5) and arg != 0:
                stack.append([arg << (major - 4) if arg > 0 else -1, major - 4, 1])
                tag_at = -1
                pos = head_end
                continue
            else:
                pos = head_end
            tag_at = -1
        # an item ended: it counts in its container, which may end with it
        while stack:
            top = stack[-1]
            top[2] ^= top[1]
            if top[0] > 1:
                top[0] -= 1
            elif top[0] == 1:
                stack.pop()
                continue
            break
        if not stack:
            break
    if not edits:
        return body
    pieces: List[bytes] = []
    last = 0
    for start, end, replacement in edits:
        pieces += (body[last:start], replacement)
        last = end
    pieces.append(body[last:])
    return b"".join(pieces)
