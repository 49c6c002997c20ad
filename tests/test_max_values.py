"""``max_values``: the JSON, CBOR and MessagePack decoders (compiled and twins) count a frame's values
while checking it, before building anything, and refuse one value past the limit.

Frames are written by other encoders (stdlib json, cbor2, msgpack).  A frame holds
``count(obj)`` values: its own, every list element, every map key and map value.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Tuple

import cbor2
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcodec import _cbor, _cbor_py, _json, _json_py, _msgpack, _msgpack_py
from streamcodec.errors import DecodeError, TooManyValues
from tests.fuzz import examples


def count(obj: Any) -> int:
    """The values of a decoded object: itself, and each key, value and element below it."""
    if isinstance(obj, dict):
        return 1 + sum(1 + count(v) for v in obj.values())
    if isinstance(obj, list):
        return 1 + sum(count(v) for v in obj)
    return 1


scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
    | st.sampled_from(["", ",", ":", "[]", "{}", '"', "\\"])  # text that looks like structure
)
objects = st.recursive(
    scalars, lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=5),
    max_leaves=30,
)

Encode = Callable[[Any], bytes]
#: format -> (compiled decoder, twin, encoders written by others: JSON with and without whitespace)
FORMATS: Dict[str, Tuple[Any, Any, List[Encode]]] = {
    "json": (_json.JSONDecoder, _json_py.JSONDecoder, [
        lambda o: json.dumps(o, separators=(",", ":")).encode(),
        lambda o: json.dumps(o, indent=1).encode(),  # "[\n]" is still empty
    ]),
    "cbor": (_cbor.CBORDecoder, _cbor_py.CBORDecoder, [cbor2.dumps]),
    "msgpack": (_msgpack.MsgpackDecoder, _msgpack_py.MsgpackDecoder, [msgpack.packb]),
}


def outcome(decoder: Any, frame: bytes) -> Any:
    try:
        return ("ok", decoder.decode(frame))
    except DecodeError as exc:
        return (type(exc).__name__, str(exc), exc.offset)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@settings(max_examples=examples(300), deadline=None)
@given(obj=objects)
def test_a_frame_decodes_at_its_value_count_and_not_one_below(fmt: str, obj: Any) -> None:
    compiled, twin, encoders = FORMATS[fmt]
    n = count(obj)
    for encode in encoders:
        frame = encode(obj)
        for cls in (compiled, twin):
            assert cls(max_values=n).decode(frame) == obj
        if n > 1:
            refused = outcome(compiled(max_values=n - 1), frame)
            assert refused[0] == "TooManyValues", refused
            assert refused == outcome(twin(max_values=n - 1), frame)  # same message, same offset


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_limit_is_checked_before_anything_is_built(fmt: str) -> None:
    import tracemalloc

    compiled, twin, encoders = FORMATS[fmt]
    frame = encoders[0]({"x": [[]] * 1_000_000})
    for cls in (compiled, twin):
        tracemalloc.start()
        with pytest.raises(TooManyValues) as raised:
            cls(max_values=1000).decode(frame)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert raised.value.max_values == 1000
        assert peak < 4 * len(frame), peak  # the frame's copy, not a million lists (~56 MiB)


def test_cbor_tags_are_not_values() -> None:
    obj = {"big": 2**70, "small": -(2**70)}  # bignums: a tag and a byte string each, one int
    frame = b"\xd9\xd9\xf7" + cbor2.dumps(obj)  # the self-described tag is no value either
    for cls in (_cbor.CBORDecoder, _cbor_py.CBORDecoder):
        assert cls(max_values=5).decode(frame) == obj
        with pytest.raises(TooManyValues):
            cls(max_values=4).decode(frame)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_stream_counts_each_frame_on_its_own(fmt: str) -> None:
    compiled, twin, encoders = FORMATS[fmt]
    encode = encoders[0]
    small = {"metadata": {"name": "a"}, "data": list(range(10))}
    per_frame = count({"type": "ADDED", "object": small})  # the event map's values and the object's: 21
    sep = b"\n" if fmt == "json" else b""
    stream = b"".join(encode({"type": "ADDED", "object": small}) + sep for _ in range(50))
    big = encode({"type": "MODIFIED", "object": {"data": list(range(30))}}) + sep
    for cls in (compiled, twin):
        decoder = cls(max_values=per_frame)
        decoder.feed(stream)
        assert [e.object for e in decoder] == [small] * 50  # 50 x 21 values in all, 21 per frame
        decoder.feed(big)
        with pytest.raises(TooManyValues) as raised:
            list(decoder)
        assert raised.value.offset >= len(stream)  # counted in the stream's coordinates


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_max_values_is_a_positive_int_or_none(fmt: str) -> None:
    compiled, twin, encoders = FORMATS[fmt]
    for cls in (compiled, twin):
        assert cls().max_values is None and cls(max_values=7).max_values == 7
        assert cls().decode(encoders[0]([[]] * 100_000)) == [[]] * 100_000  # None: no limit
        for bad in (0, -1, True, 1.5, "3"):
            with pytest.raises(ValueError, match="max_values"):
                cls(max_values=bad)
