"""MessagePack: our bytes checked by msgpack (byte-identical to packb) and
msgspec, our decoder fuzzed, and the compiled module checked against its twin."""

from __future__ import annotations

import enum
import tracemalloc
from typing import Any, List

import msgpack  # type: ignore[import-untyped]
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import examples
from tests.test_cbor import unique_keys_judged_alike

import streamcodec
from benchmarks.fixtures import FIXTURES
from streamcodec import (
    BufferFull,
    DecodeError,
    EncodeError,
    FrameTooLarge,
    MsgpackDecoder,
    MsgpackEncoder,
    PoolBuffer,
)
from streamcodec import _msgpack, _msgpack_py
from streamcodec.limits import EVENT_TYPES
from streamcodec.protocol import Event

FUZZ = settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpackb(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(),
    st.binary(max_size=40),
)
objects = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
    ),
    max_leaves=25,
)


def plain(x: Any) -> Any:
    """Tuples read back as lists."""
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (compare encodings)."""
    return packb(plain(a)) == packb(plain(b))


# -- encoding, checked by msgpack and msgspec ----------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixtures_byte_identical_to_packb_and_msgspec(name: str) -> None:
    obj = FIXTURES[name]()
    frame = MsgpackEncoder().encode(obj)
    assert frame == packb(obj)
    assert frame == msgspec.msgpack.encode(obj)
    assert unpackb(frame) == obj


@FUZZ
@given(objects)
def test_objects_byte_identical_to_packb(obj: Any) -> None:
    frame = MsgpackEncoder().encode(obj)
    assert frame == packb(obj)
    assert same(unpackb(frame), obj)
    assert same(MsgpackDecoder().decode(frame), obj)


INT_EDGES = [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1,
             -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)]


@pytest.mark.parametrize("value", INT_EDGES)
def test_ints_in_shortest_form(value: int) -> None:
    frame = MsgpackEncoder().encode(value)
    assert frame == packb(value) and unpackb(frame) == value


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_ints_msgpack_cannot_carry_are_encode_errors(value: int) -> None:
    with pytest.raises(EncodeError, match="range"):
        MsgpackEncoder().encode({"n": value})


def test_floats_are_float64() -> None:
    for value in (0.0, 1.5, 0.1, float("inf")):
        frame = MsgpackEncoder().encode(value)
        assert frame[0] == 0xCB and frame == packb(value)


class Color(enum.IntEnum):
    RED = 300


class Name(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        raise AssertionError("the encoder must not call subclass methods")


class Meta(dict):  # type: ignore[type-arg]
    def items(self) -> Any:  # type: ignore[override]
        raise AssertionError("the encoder must not call subclass methods")


def test_subclasses_are_encoded_as_their_base_type() -> None:
    obj = Meta(a=Color.RED, b=Name("xé"), d=(1, [2]))
    plain_obj = {"a": 300, "b": "xé", "d": [1, [2]]}
    assert MsgpackEncoder().encode(obj) == packb(plain_obj)


def test_bytes_like_values_are_bin() -> None:
    for value in (b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")):
        assert MsgpackEncoder().encode([value]) == packb([b"\x00\xff"])
    with pytest.raises(EncodeError):
        MsgpackEncoder().encode(memoryview(b"abcdef")[::2])


def test_encode_errors_name_the_problem() -> None:
    enc = MsgpackEncoder()
    cyc: List[Any] = []
    cyc.append(cyc)
    for obj, words in [({1: 2}, "keys must be str"), ([{1, 2}], "cannot encode"), ({"\udc80": 1}, "surrogate"), (cyc, "cycle")]:
        with pytest.raises(EncodeError, match=words):
            enc.encode(obj)
    with pytest.raises(EncodeError, match="max_depth"):
        MsgpackEncoder(max_depth=2).encode([[[]]])


# -- events, raw pass-through, list bodies -----------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_event_frame_is_a_map_read_by_msgpack(event_type: str) -> None:
    obj = FIXTURES["pod"]()
    enc = MsgpackEncoder()
    frame = enc.encode_event(event_type, obj)
    assert frame == packb({"type": event_type, "object": obj})
    assert enc.encode_raw_event(event_type, enc.encode(obj)) == frame


def test_watch_stream_reads_with_msgpack_unpacker() -> None:
    enc = MsgpackEncoder()
    unpacker = msgpack.Unpacker(raw=False)
    for i, t in enumerate(EVENT_TYPES):
        unpacker.feed(enc.encode_event(t, {"n": i}))
    assert list(unpacker) == [{"type": t, "object": {"n": i}} for i, t in enumerate(EVENT_TYPES)]
    assert enc.content_type == enc.stream_content_type == "application/vnd.msgpack"


def test_raw_checks_and_buffer_errors() -> None:
    raw = MsgpackEncoder().encode({"data": "x" * 1000})
    small = MsgpackEncoder(max_frame_size=len(raw))
    buf = PoolBuffer(len(raw) + 10)
    with pytest.raises(EncodeError):
        small.encode_raw_event("ADDED", b"")
    with pytest.raises(FrameTooLarge):
        small.encode_raw_event_into("ADDED", raw, buf)
    buf.length = 11
    snapshot = bytes(buf.data)
    with pytest.raises(BufferFull):
        small.encode_raw_list_item_into(raw, buf, 0)
    assert buf.length == 11 and bytes(buf.data) == snapshot
    buf.length = 10
    assert small.encode_raw_list_item_into(memoryview(raw), buf, 0) == len(raw)
    assert bytes(buf.data[10:]) == raw


def test_list_body_reads_with_msgpack() -> None:
    enc = MsgpackEncoder()
    items = [{"metadata": {"name": f"p{i}"}, "n": i} for i in range(20)]
    buf = PoolBuffer(1 << 16)
    enc.encode_list_start_into(buf, kind="PodList", api_version="v1", metadata={"resourceVersion": "7"}, count=len(items))
    for i, item in enumerate(items):
        if i % 2:
            enc.encode_raw_list_item_into(enc.encode(item), buf, i)
        else:
            enc.encode_list_item_into(item, buf, i)
    assert enc.encode_list_end_into(buf, len(items)) == 0
    expected = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": items}
    assert buf.getvalue() == packb(expected)
    assert MsgpackDecoder().decode(buf.getvalue()) == expected


def test_list_body_needs_a_count() -> None:
    buf = PoolBuffer(64)
    with pytest.raises(ValueError, match="count"):
        MsgpackEncoder().encode_list_start_into(buf, kind="L", api_version="v1", metadata={})
    assert buf.length == 0


# -- decoding ----------------------------------------------------------------


def test_decoder_reads_other_valid_msgpack() -> None:
    dec = MsgpackDecoder()
    assert dec.decode(b"\xcd\x00\x05") == 5  # non-shortest int
    assert dec.decode(b"\xca\x3f\xc0\x00\x00") == 1.5  # float 32
    assert dec.decode(b"\xdc\x00\x02\xd0\xff\xd3\x80\x00\x00\x00\x00\x00\x00\x00") == [-1, -(2**63)]
    assert dec.decode(b"\xde\x00\x01\xd9\x01k\xc4\x01x") == {"k": b"x"}


@pytest.mark.parametrize(
    "frame,words",
    [
        (b"\x81\x01\x02", "map key"),
        (b"\xc1", "unsupported"),
        (b"\xd4\x01\x00", "unsupported"),
        (b"\xa2\xc3\x28", "UTF-8"),
        (b"\x01\x02", "after the end"),
        (b"\x93\x01", "truncated"),
        (b"\xdb\xff\xff\xff\xff", "max_frame_size"),
    ],
)
def test_decoder_rejects_with_named_error(frame: bytes, words: str) -> None:
    with pytest.raises(DecodeError, match=words):
        MsgpackDecoder().decode(frame)


def test_huge_declared_lengths_do_not_allocate() -> None:
    frames = [b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdf\x7f\xff\xff\xff", b"\xdd\x00\x10\x00\x00\x01"]
    tracemalloc.start()
    try:
        for frame in frames:
            with pytest.raises(DecodeError):
                MsgpackDecoder().decode(frame)
            dec = MsgpackDecoder(max_frame_size=1 << 16)
            dec.feed(frame)
            with pytest.raises(DecodeError):
                list(dec)
                dec.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_errors_are_sticky_and_offsets_count_from_the_first_byte() -> None:
    ev = MsgpackEncoder().encode_event("ADDED", {"a": 1})
    dec = MsgpackDecoder()
    dec.feed(ev)
    assert list(dec) == [Event("ADDED", {"a": 1})]
    dec.feed(b"\x82\x01")
    with pytest.raises(DecodeError, match="map key") as info:
        list(dec)
    assert info.value.offset == len(ev) + 1
    for again in (lambda: list(dec), lambda: dec.feed(ev), dec.close):
        with pytest.raises(DecodeError) as second:
            again()
        assert second.value is info.value


def test_partial_frame_over_max_frame_size_is_an_error_not_a_buffer() -> None:
    dec = MsgpackDecoder(max_frame_size=1000)
    dec.feed(b"\xdc\x01\xf4")  # an array of 500 items: fits if they are small
    tracemalloc.start()
    try:
        for _ in range(2000):
            dec.feed((b"\xcb" + bytes(8)) * 111)  # float 64s: 9 bytes each
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    with pytest.raises(DecodeError, match="max_frame_size") as info:
        list(dec)
    assert info.value.offset == 1000
    dec2 = MsgpackDecoder(max_frame_size=1000)
    dec2.feed(b"\xdd\x00\x00\x10\x00")  # 4096 items cannot fit 1000 bytes: known at once
    with pytest.raises(DecodeError, match="max_frame_size") as info2:
        list(dec2)
    assert info2.value.offset == 0


def test_event_shape_is_checked() -> None:
    for frame in (packb({"type": "ADDED"}), packb({"type": "NOPE", "object": 1}), packb([1, 2])):
        dec = MsgpackDecoder()
        dec.feed(frame)
        with pytest.raises(DecodeError, match="event"):
            list(dec)


def test_decode_depth_limit() -> None:
    frame = packb([[[[{}]]]])
    assert MsgpackDecoder(max_depth=5).decode(frame) == [[[[{}]]]]
    with pytest.raises(DecodeError, match="max_depth"):
        MsgpackDecoder(max_depth=4).decode(frame)


def outcome(decoder_cls: Any, data: bytes) -> Any:
    try:
        return ("ok", decoder_cls().decode(data))
    except DecodeError as exc:
        return ("error", str(exc), exc.offset)


def stream_outcome(decoder_cls: Any, data: bytes, step: int) -> Any:
    dec = decoder_cls(max_frame_size=64)
    out: List[Any] = []
    try:
        for i in range(0, len(data), step):
            dec.feed(data[i : i + step])
            out.extend(dec)
        dec.close()
    except DecodeError as exc:
        out.append(("error", str(exc), exc.offset))
    return out


@FUZZ
@given(st.binary(max_size=64))
def test_random_bytes_decode_or_fail_cleanly_identically_in_both_implementations(data: bytes) -> None:
    compiled = outcome(_msgpack.MsgpackDecoder, data)
    assert repr(compiled) == repr(outcome(_msgpack_py.MsgpackDecoder, data))
    if compiled[0] == "ok":  # what we accept, msgpack reads the same way
        assert same(unpackb(data), compiled[1])


@FUZZ
@given(objects, st.data())
def test_mutated_truncated_and_split_streams(obj: Any, data: st.DataObject) -> None:
    frame = bytearray(MsgpackEncoder().encode_event("MODIFIED", obj) + MsgpackEncoder().encode_event("ERROR", [1]))
    mutations = data.draw(st.integers(0, 3))
    for _ in range(mutations):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    sample = bytes(frame[:cut])
    step = data.draw(st.integers(1, 9))
    compiled = stream_outcome(_msgpack.MsgpackDecoder, sample, step)
    assert repr(compiled) == repr(stream_outcome(_msgpack_py.MsgpackDecoder, sample, step))
    for item in compiled:
        assert isinstance(item, Event) or item[0] == "error"
    if mutations == 0 and cut == len(frame) and len(frame) <= 64:
        assert len(compiled) == 2 and same(compiled[0].object, obj)


@FUZZ
@given(objects)
def test_compiled_and_twin_encoders_agree(obj: Any) -> None:
    assert _msgpack.MsgpackEncoder().encode(obj) == _msgpack_py.MsgpackEncoder().encode(obj)


def test_public_classes_follow_the_environment() -> None:
    expected = _msgpack_py if streamcodec.PURE_PYTHON else _msgpack
    assert streamcodec.MsgpackEncoder is expected.MsgpackEncoder
    assert streamcodec.MsgpackDecoder is expected.MsgpackDecoder


# -- duplicate keys (unique_keys) -------------------------------------------------------

from streamcodec import DuplicateKey  # noqa: E402


def _msgpack_map(pairs: List[Any]) -> bytes:
    """A MessagePack map of these (key, value) pairs, keys free to repeat (packb cannot write that)."""
    return bytes([0x80 + len(pairs)]) + b"".join(packb(k) + packb(v) for k, v in pairs)


@pytest.mark.parametrize("decoder_cls", [_msgpack.MsgpackDecoder, _msgpack_py.MsgpackDecoder], ids=["compiled", "twin"])
def test_unique_keys_refuse_a_map_holding_a_key_twice_as_cbor_is_refused(decoder_cls: Any) -> None:
    frame = b"\x92" + packb(1) + _msgpack_map([("a", 1), ("a", 2)])
    assert decoder_cls().decode(frame) == [1, {"a": 2}]  # off by default: the last value wins
    assert not decoder_cls().unique_keys
    with pytest.raises(DuplicateKey) as info:
        decoder_cls(unique_keys=True).decode(frame)
    assert (info.value.paths, info.value.index, info.value.offset, info.value.value) == (["a"], 1, 1 + 1 + 1 + 2 + 1, None)
    with pytest.raises(ValueError):
        decoder_cls(unique_keys=None)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "é"]), st.integers(-5, 300)), max_size=6))
def test_unique_keys_find_exactly_the_maps_with_a_repeated_key_in_both_implementations(pairs: List[Any]) -> None:
    frame = _msgpack_map([("k", None), ("m", None)])[:1] + packb("k") + _msgpack_map(pairs) + packb("m") + packb(0)
    unique_keys_judged_alike((_msgpack.MsgpackDecoder, _msgpack_py.MsgpackDecoder), frame, pairs, lambda inner: {"k": inner, "m": 0})
