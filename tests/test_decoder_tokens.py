"""Token-level fuzzing of the CBOR and MessagePack decoders.

Random bytes rarely form the structures where parsers go wrong (a tag in
front of a break, a break inside a definite container, nested indefinite
containers).  Here frames are built from meaningful tokens instead, and
every outcome is checked against an independent decoder: either ours raises
DecodeError, or it returns what cbor2 / msgpack return for the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cbor2
import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz import examples

from streamcodec import CBORDecoder, DecodeError, MsgpackDecoder

CBOR_TOKENS = [
    b"\xd9\xd9\xf7",  # self-describe tag
    b"\xc2", b"\xc3",  # bignum tags
    b"\xff",  # break
    b"\x9f", b"\xbf",  # indefinite array / map
    b"\x80", b"\x81", b"\x82", b"\xa0", b"\xa1", b"\xa2",  # small definite containers
    b"\x61a", b"\x62bc", b"\x60",  # text
    b"\x41\x00", b"\x40",  # bytes
    b"\x00", b"\x17", b"\x18\x64", b"\x20", b"\x3b\xff\xff\xff\xff\xff\xff\xff\xff",  # ints
    b"\xf4", b"\xf5", b"\xf6", b"\xf9\x3c\x00", b"\xfb\x40\x09\x21\xfb\x54\x44\x2d\x18",  # simple / floats
    b"\x7f", b"\x5f", b"\xf7", b"\x1c",  # things we refuse
]

MSGPACK_TOKENS = [
    b"\x90", b"\x91", b"\x92", b"\x80", b"\x81", b"\x82",
    b"\xdc\x00\x02", b"\xde\x00\x01", b"\xdd\xff\xff\xff\xff",
    b"\xa1a", b"\xa0", b"\xd9\x01b", b"\xc4\x01\x00", b"\xc4\xff",
    b"\x00", b"\x7f", b"\xe0", b"\xcc\xff", b"\xcf" + b"\xff" * 8, b"\xd3" + b"\x80" + b"\x00" * 7,
    b"\xc0", b"\xc2", b"\xc3", b"\xca\x3f\x80\x00\x00", b"\xcb" + b"\x40\x09\x21\xfb\x54\x44\x2d\x18",
    b"\xc1", b"\xd4\x01\x00",  # never used / ext: refused
]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _cbor2_value(data: bytes) -> Any:
    def strip(x: Any) -> Any:
        if isinstance(x, cbor2.CBORTag) and x.tag == 55799:
            return strip(x.value)
        # cbor2 hands back immutable containers (frozendict, tuple) inside tags
        if isinstance(x, (list, tuple)):
            return [strip(v) for v in x]
        if isinstance(x, Mapping):
            return {k: strip(v) for k, v in x.items()}
        return x

    return strip(cbor2.loads(data))


@settings(max_examples=examples(20000), deadline=None)
@given(st.lists(st.sampled_from(CBOR_TOKENS), min_size=1, max_size=12))
def test_cbor_token_sequences(tokens: list) -> None:
    data = b"".join(tokens)
    try:
        ours = CBORDecoder().decode(data)
    except DecodeError:
        return
    assert _same(ours, _cbor2_value(data)), data.hex()


@settings(max_examples=examples(20000), deadline=None)
@given(st.lists(st.sampled_from(MSGPACK_TOKENS), min_size=1, max_size=12))
def test_msgpack_token_sequences(tokens: list) -> None:
    data = b"".join(tokens)
    try:
        ours = MsgpackDecoder().decode(data)
    except DecodeError:
        return
    assert _same(ours, msgpack.unpackb(data, raw=False, strict_map_key=False)), data.hex()


def test_tag_before_break_is_refused() -> None:
    for frame in ("d9d9f79fd9d9f7ff", "9fa0d9d9f7ff", "d9d9f7ff", "9fc2ff"):
        try:
            CBORDecoder().decode(bytes.fromhex(frame))
        except DecodeError:
            continue
        raise AssertionError(f"{frame} decoded")
