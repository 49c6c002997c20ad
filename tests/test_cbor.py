"""CBOR: our bytes checked by cbor2 (an independent decoder and encoder),
our decoder fuzzed, and the compiled module checked against its twin."""

from __future__ import annotations

import enum
import math
import struct
import tracemalloc
from typing import Any, List

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import examples

import streamcodec
from benchmarks.fixtures import FIXTURES
from streamcodec import (
    BufferFull,
    CBORDecoder,
    CBOREncoder,
    DecodeError,
    EncodeError,
    FrameTooLarge,
    PoolBuffer,
)
from streamcodec import _cbor, _cbor_py
from streamcodec.limits import EVENT_TYPES
from streamcodec.protocol import Event

TAG = b"\xd9\xd9\xf7"
FUZZ = settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def thaw(x: Any) -> Any:
    """cbor2 returns the content of tag 55799 immutable (frozendict, tuple): make it plain."""
    if isinstance(x, (dict, cbor2.frozendict)):
        return {k: thaw(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [thaw(v) for v in x]
    return x


def cbor2_frame(obj: Any) -> bytes:
    """What cbor2 writes for our object frame (default options: doubles for floats)."""
    return cbor2.dumps(cbor2.CBORTag(55799, obj))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(),
    st.binary(max_size=40),
)
json_like = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=25,
)
with_floats = st.recursive(
    st.one_of(scalars, st.floats(allow_nan=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=25,
)


# -- encoding, checked by cbor2 ----------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixtures_decode_with_cbor2(name: str) -> None:
    obj = FIXTURES[name]()
    frame = CBOREncoder().encode(obj)
    assert frame[:3] == TAG
    assert thaw(cbor2.loads(frame)) == thaw(obj)


@pytest.mark.parametrize("name", ["secret_1mb", "configmap_1000"])
def test_float_free_fixtures_are_byte_identical_to_cbor2(name: str) -> None:
    obj = FIXTURES[name]()
    assert CBOREncoder().encode(obj) == cbor2_frame(obj)


@FUZZ
@given(json_like)
def test_float_free_objects_byte_identical_to_cbor2(obj: Any) -> None:
    assert CBOREncoder().encode(obj) == cbor2_frame(obj)


@FUZZ
@given(with_floats)
def test_objects_with_floats_decode_with_cbor2(obj: Any) -> None:
    frame = CBOREncoder().encode(obj)
    assert thaw(cbor2.loads(frame)) == thaw(obj)
    assert CBORDecoder().decode(frame) == thaw(obj)


INT_EDGES = [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1, 2**64, 2**100,
             -1, -24, -25, -256, -257, -(2**32), -(2**63), -(2**64), -(2**64) - 1, -(2**100)]


@pytest.mark.parametrize("value", INT_EDGES)
def test_int_heads_and_bignums_match_cbor2(value: int) -> None:
    frame = CBOREncoder().encode(value)
    assert frame == cbor2_frame(value)
    assert cbor2.loads(frame) == value
    if abs(value) >= 2**64 and value != -(2**64):
        assert frame[3] in (0xC2, 0xC3)  # bignum tag


def float_bits_size(frame: bytes) -> int:
    return {0xF9: 2, 0xFA: 4, 0xFB: 8}[frame[3]]


@pytest.mark.parametrize(
    "value,size",
    [(0.0, 2), (-0.0, 2), (1.5, 2), (65504.0, 2), (5.960464477539063e-08, 2), (65520.0, 4),
     (3.4028234663852886e38, 4), (0.1, 8), (1e300, 8), (1e-40, 8), (float("inf"), 2), (float("-inf"), 2)],
)
def test_floats_take_the_shortest_exact_width(value: float, size: int) -> None:
    frame = CBOREncoder().encode(value)
    assert float_bits_size(frame) == size
    back = cbor2.loads(frame)
    assert back == value and math.copysign(1, back) == math.copysign(1, value)
    # cbor2's canonical mode makes the same RFC 8949 choice; its default
    # (canonical=False) always writes doubles, which is why fixtures with
    # floats are not byte-compared against cbor2's default output.
    assert frame[3:] == cbor2.dumps(value, canonical=True)


@FUZZ
@given(st.floats(allow_nan=False))
def test_every_float_is_exact_and_shortest(value: float) -> None:
    frame = CBOREncoder().encode(value)
    assert cbor2.loads(frame) == value
    assert frame[3:] == cbor2.dumps(value, canonical=True)
    size = float_bits_size(frame)
    if size > 2:  # not exact as half
        with pytest.raises((OverflowError, AssertionError)):
            assert struct.unpack(">e", struct.pack(">e", value))[0] == value
    if size > 4:
        with pytest.raises((OverflowError, AssertionError)):
            assert struct.unpack(">f", struct.pack(">f", value))[0] == value


def test_nan_is_canonical_half() -> None:
    assert CBOREncoder().encode(float("nan")) == TAG + b"\xf9\x7e\x00"
    assert math.isnan(cbor2.loads(CBOREncoder().encode(float("nan"))))


class Color(enum.IntEnum):
    RED = 300


class Name(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:  # type: ignore[override]
        raise AssertionError("the encoder must not call subclass methods")


class Meta(dict):  # type: ignore[type-arg]
    def items(self) -> Any:  # type: ignore[override]
        raise AssertionError("the encoder must not call subclass methods")


class Ratio(float):
    def __float__(self) -> float:
        raise AssertionError("the encoder must not call subclass methods")


def test_subclasses_are_encoded_as_their_base_type() -> None:
    obj = Meta(a=Color.RED, b=Name("xé"), c=Ratio(2.5), d=(1, [2]), e=True)
    plain = {"a": 300, "b": "xé", "c": 2.5, "d": [1, [2]], "e": True}
    assert CBOREncoder().encode(obj) == CBOREncoder().encode(plain)
    assert thaw(cbor2.loads(CBOREncoder().encode(obj))) == plain


def test_bytes_like_values_are_byte_strings() -> None:
    enc = CBOREncoder()
    for value in (b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")):
        frame = enc.encode({"k": value})
        assert frame == cbor2_frame({"k": b"\x00\xff"})
    with pytest.raises(EncodeError):
        enc.encode(memoryview(b"abcdef")[::2])


def test_ints_beyond_64_bits_round_trip_as_bignums() -> None:
    big = 3**500
    frame = CBOREncoder().encode([big, -big])
    assert thaw(cbor2.loads(frame)) == [big, -big]
    assert CBORDecoder().decode(frame) == [big, -big]


# -- events, raw pass-through, list bodies -----------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_event_frame_layout(event_type: str) -> None:
    obj = FIXTURES["pod"]()
    enc = CBOREncoder()
    frame = enc.encode_event(event_type, obj)
    assert frame[:4] == TAG + b"\xa2"
    assert frame.endswith(enc.encode(obj))  # the object frame, with its own tag
    decoded = cbor2.loads(frame)
    assert list(decoded) == ["type", "object"]
    assert decoded["type"] == event_type and thaw(decoded["object"]) == thaw(obj)


def test_a_watch_stream_is_a_cbor_sequence() -> None:
    enc = CBOREncoder()
    stream = b"".join(enc.encode_event(t, {"n": i}) for i, t in enumerate(EVENT_TYPES))
    import io

    fp = io.BytesIO(stream)
    decoder = cbor2.CBORDecoder(fp)
    got = [thaw(decoder.decode()) for _ in EVENT_TYPES]
    assert fp.read() == b""
    assert got == [{"type": t, "object": {"n": i}} for i, t in enumerate(EVENT_TYPES)]
    assert enc.stream_content_type == "application/cbor-seq" and enc.content_type == "application/cbor"


def test_raw_must_carry_the_self_described_tag() -> None:
    enc = CBOREncoder()
    untagged = cbor2.dumps({"a": 1})
    buf = PoolBuffer(256)
    for call in (
        lambda: enc.encode_raw_event("ADDED", untagged),
        lambda: enc.encode_raw_event_into("ADDED", untagged, buf),
        lambda: enc.encode_raw_list_item_into(untagged, buf, 0),
        lambda: enc.encode_raw_event("ADDED", TAG),  # tag without an item
        lambda: enc.encode_raw_event("ADDED", "not bytes"),  # type: ignore[arg-type]
    ):
        with pytest.raises(EncodeError):
            call()
    assert buf.length == 0


def test_raw_frame_too_large_and_buffer_full_leave_buffer_alone() -> None:
    raw = CBOREncoder().encode({"data": "x" * 1000})
    small = CBOREncoder(max_frame_size=len(raw))
    buf = PoolBuffer(len(raw) + 10)
    with pytest.raises(FrameTooLarge):
        small.encode_raw_event_into("ADDED", raw, buf)
    buf.length = 11
    snapshot = bytes(buf.data)
    with pytest.raises(BufferFull):
        small.encode_raw_list_item_into(raw, buf, 0)
    assert buf.length == 11 and bytes(buf.data) == snapshot
    buf.length = 10
    assert small.encode_raw_list_item_into(raw, buf, 0) == len(raw)
    assert bytes(buf.data[10:]) == raw


@pytest.mark.parametrize("count", [None, 3])
def test_list_body_decodes_with_cbor2(count: Any) -> None:
    enc = CBOREncoder()
    items = [{"metadata": {"name": f"p{i}"}, "spec": {"n": i}} for i in range(3)]
    buf = PoolBuffer(1 << 16)
    enc.encode_list_start_into(buf, kind="PodList", api_version="v1", metadata={"resourceVersion": "7"}, count=count)
    start = buf.getvalue()
    assert start[:4] == TAG + b"\xa4" and start.endswith(b"\x65items\x9f")
    enc.encode_list_item_into(items[0], buf, 0)
    enc.encode_raw_list_item_into(enc.encode(items[1]), buf, 1)
    enc.encode_list_item_into(items[2], buf, 2)
    assert enc.encode_list_end_into(buf, 3) == 1
    body = buf.getvalue()
    assert body[-1:] == b"\xff"
    expected = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": items}
    assert thaw(cbor2.loads(body)) == expected
    assert CBORDecoder(max_depth=8).decode(body) == expected


def test_list_start_rejects_bad_count() -> None:
    with pytest.raises(ValueError):
        CBOREncoder().encode_list_start_into(PoolBuffer(64), kind="L", api_version="v1", metadata={}, count=-1)


def test_encode_errors_name_the_problem() -> None:
    enc = CBOREncoder()
    cyc: List[Any] = []
    cyc.append(cyc)
    cases = [({1: 2}, "keys must be str"), ([object()], "cannot encode"), ("\ud800", "surrogate"),
             (cyc, "cycle"), ([[[[1]]]], "max_depth")]
    shallow = CBOREncoder(max_depth=3)
    for obj, words in cases:
        with pytest.raises(EncodeError, match=words):
            (shallow if words == "max_depth" else enc).encode(obj)


def test_scratch_shrinks_after_a_huge_frame_and_encoder_is_reusable() -> None:
    enc = CBOREncoder()
    huge = {"payload": "x" * (2 << 20)}
    assert cbor2.loads(enc.encode(huge))["payload"] == huge["payload"]
    assert enc.encode({"a": 1}) == cbor2_frame({"a": 1})


# -- decoding ----------------------------------------------------------------


def test_decoder_reads_other_valid_cbor() -> None:
    dec = CBORDecoder()
    # Non-shortest heads, no tag, indefinite containers, all float widths.
    assert dec.decode(b"\x18\x05") == 5
    assert dec.decode(b"\x9f\x01\xbf\x61a\x02\xff\xff") == [1, {"a": 2}]
    assert dec.decode(b"\x83\xf9\x3e\x00\xfa\x3f\xc0\x00\x00\xfb\x40\x00\x00\x00\x00\x00\x00\x00") == [1.5, 1.5, 2.0]
    assert dec.decode(cbor2.dumps({"k": [None, True, False, b"x", -5]})) == {"k": [None, True, False, b"x", -5]}
    assert dec.decode(TAG + b"\xc2\x41\x05") == 5  # tag 55799 wrapping a bignum


@pytest.mark.parametrize(
    "frame,words",
    [
        (b"\xa1\x01\x02", "map key"),
        (b"\xd8\x20\x61a", "unsupported tag"),
        (b"\xf7", "simple value"),
        (b"\x7f\x61a\xff", "indefinite-length strings"),
        (b"\xff", "break outside"),
        (b"\x1c", "reserved"),
        (b"\xc2\x01", "bignum"),
        (TAG + TAG + b"\x01", "itself"),
        (b"\x62\xc3\x28", "UTF-8"),
        (b"\x01\x02", "after the end"),
        (b"\x83\x01", "truncated"),
    ],
)
def test_decoder_rejects_with_named_error(frame: bytes, words: str) -> None:
    with pytest.raises(DecodeError, match=words):
        CBORDecoder().decode(frame)


def test_huge_declared_lengths_do_not_allocate() -> None:
    dec = CBORDecoder()
    frames = [
        b"\x5b\x7f\xff\xff\xff\xff\xff\xff\xff",  # byte string of 2**63 bytes
        b"\x9b\x7f\xff\xff\xff\xff\xff\xff\xff",  # array of 2**63 items
        b"\xbb\xff\xff\xff\xff\xff\xff\xff\xff",  # map of 2**64-1 pairs
        b"\x9a\x00\x10\x00\x00\x01",  # array of 1Mi items, one present
    ]
    tracemalloc.start()
    try:
        for frame in frames:
            with pytest.raises(DecodeError):
                dec.decode(frame)
            d = CBORDecoder()
            d.feed(frame)
            with pytest.raises(DecodeError):
                list(d)
                d.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_stream_offsets_count_from_the_first_byte_fed() -> None:
    enc = CBOREncoder()
    ev = enc.encode_event("ADDED", {"a": 1})
    dec = CBORDecoder()
    dec.feed(ev + ev)
    assert len(list(dec)) == 2
    dec.feed(ev[:4])
    dec.feed(b"\x01")  # an int where the event map's first key belongs
    with pytest.raises(DecodeError, match="map key") as info:
        list(dec)
    assert info.value.offset == 2 * len(ev) + 4
    for again in (lambda: list(dec), lambda: dec.feed(ev), dec.close):
        with pytest.raises(DecodeError) as second:
            again()
        assert second.value is info.value


def test_partial_frame_over_max_frame_size_is_an_error_not_a_buffer() -> None:
    dec = CBORDecoder(max_frame_size=1000)
    dec.feed(TAG + b"\x9f")  # an indefinite array that never ends
    tracemalloc.start()
    try:
        for _ in range(2000):
            dec.feed(b"\x01" * 1000)  # 2 MB more: must not be kept
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    with pytest.raises(DecodeError, match="max_frame_size") as info:
        list(dec)
    assert info.value.offset == 1000
    dec2 = CBORDecoder(max_frame_size=1000)
    dec2.feed(TAG + b"\x59\x10\x00")  # a 4096-byte string: cannot fit, known at once
    with pytest.raises(DecodeError, match="max_frame_size") as info2:
        list(dec2)
    assert info2.value.offset == 3


def test_event_shape_is_checked() -> None:
    for frame in (cbor2.dumps({"type": "ADDED"}), cbor2.dumps({"type": "NOPE", "object": 1}), cbor2.dumps([1, 2])):
        dec = CBORDecoder()
        dec.feed(frame)
        with pytest.raises(DecodeError, match="event"):
            list(dec)


def test_decode_depth_limit() -> None:
    nested: Any = 1
    for _ in range(6):
        nested = [nested]
    frame = CBOREncoder().encode(nested)
    assert CBORDecoder(max_depth=6).decode(frame) == nested
    with pytest.raises(DecodeError, match="max_depth"):
        CBORDecoder(max_depth=5).decode(frame)


@FUZZ
@given(json_like, st.lists(st.integers(min_value=1, max_value=40), max_size=8))
def test_stream_split_anywhere_gives_the_same_events(obj: Any, cuts: List[int]) -> None:
    enc = CBOREncoder()
    stream = enc.encode_event("ADDED", obj) + enc.encode_event("DELETED", [obj])
    dec = CBORDecoder()
    events: List[Event] = []
    pos = 0
    for cut in cuts:
        dec.feed(stream[pos : pos + cut])
        pos += cut
        events.extend(dec)
    dec.feed(stream[pos:])
    events.extend(dec)
    dec.close()
    assert events == [Event("ADDED", obj), Event("DELETED", [obj])]


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
    compiled, twin = outcome(_cbor.CBORDecoder, data), outcome(_cbor_py.CBORDecoder, data)
    assert repr(compiled) == repr(twin)
    if compiled[0] == "ok":  # what we accept, cbor2 reads the same way
        assert repr(thaw(cbor2.loads(data))) == repr(compiled[1])


@FUZZ
@given(json_like, st.data())
def test_mutated_and_truncated_frames(obj: Any, data: st.DataObject) -> None:
    frame = bytearray(CBOREncoder().encode_event("MODIFIED", obj))
    mutations = data.draw(st.integers(0, 3))
    for _ in range(mutations):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    sample = bytes(frame[:cut])
    step = data.draw(st.integers(1, 9))
    compiled = stream_outcome(_cbor.CBORDecoder, sample, step)
    assert repr(compiled) == repr(stream_outcome(_cbor_py.CBORDecoder, sample, step))
    for item in compiled:
        assert isinstance(item, Event) or item[0] == "error"
    if mutations == 0:
        if 0 < cut < len(frame):  # a truncated stream never passes close()
            assert compiled and compiled[-1][0] == "error"
        elif cut == len(frame) and len(frame) <= 64:
            assert compiled == [Event("MODIFIED", obj)]
        elif cut == len(frame):  # over the decoder's max_frame_size of 64
            assert compiled[-1][0] == "error" and "max_frame_size" in compiled[-1][1]


@FUZZ
@given(with_floats)
def test_compiled_and_twin_encoders_agree(obj: Any) -> None:
    assert _cbor.CBOREncoder().encode(obj) == _cbor_py.CBOREncoder().encode(obj)
    assert _cbor.CBOREncoder().encode_event("BOOKMARK", obj) == _cbor_py.CBOREncoder().encode_event("BOOKMARK", obj)


def test_public_classes_follow_the_environment() -> None:
    expected = _cbor_py if streamcodec.PURE_PYTHON else _cbor
    assert streamcodec.CBOREncoder is expected.CBOREncoder
    assert streamcodec.CBORDecoder is expected.CBORDecoder


@pytest.mark.parametrize("module", [_cbor, _cbor_py], ids=["compiled", "twin"])
def test_byte_strings_can_be_enclosed_in_a_tag_as_kubernetes_encloses_byte_slices(module: Any) -> None:
    enc = module.CBOREncoder(byte_string_tag=22)  # RFC 8949 3.4.5.2: expected later base64 encoding
    obj = {"data": {"k": b"\x00\xffab", "e": b""}, "text": "x", "list": [bytearray(b"z"), memoryview(b"yy")]}
    frame = enc.encode(obj)
    assert cbor2.loads(frame) == {
        "data": {"k": cbor2.CBORTag(22, b"\x00\xffab"), "e": cbor2.CBORTag(22, b"")},
        "text": "x",
        "list": (cbor2.CBORTag(22, b"z"), cbor2.CBORTag(22, b"yy")),  # cbor2 gives tuples inside frozen maps
    }
    assert frame == _cbor.CBOREncoder(byte_string_tag=22).encode(obj) == _cbor_py.CBOREncoder(byte_string_tag=22).encode(obj)
    assert module.CBOREncoder(byte_string_tag=1000).encode(b"q")[3:] == bytes.fromhex("d903e84171")
    assert module.CBOREncoder().encode(b"q")[3:] == b"\x41q"  # no tag unless asked for
    for bad in (-1, 2**64, "22"):
        with pytest.raises(ValueError):
            module.CBOREncoder(byte_string_tag=bad)


# -- duplicate keys (unique_keys) -------------------------------------------------------

from streamcodec import DuplicateKey  # noqa: E402

CBOR_DECODERS = pytest.mark.parametrize("decoder_cls", [_cbor.CBORDecoder, _cbor_py.CBORDecoder], ids=["compiled", "twin"])


def _cbor_map(pairs: List[Any], definite: bool = True) -> bytes:
    """A CBOR map of these (key, item bytes) pairs, keys free to repeat (cbor2 cannot write that)."""
    body = b"".join(cbor2.dumps(k) + v for k, v in pairs)
    return (bytes([0xA0 + len(pairs)]) if definite else b"\xbf") + body + (b"" if definite else b"\xff")


@CBOR_DECODERS
@pytest.mark.parametrize("definite", [True, False], ids=["definite", "indefinite"])
def test_unique_keys_refuse_a_map_holding_a_key_twice_as_kubernetes_cbor_does(decoder_cls: Any, definite: bool) -> None:
    inner = _cbor_map([("a", b"\x01"), ("b", b"\x02"), ("a", b"\x03")], definite)
    frame = TAG + _cbor_map([("x", inner)])
    assert decoder_cls().decode(frame) == {"x": {"a": 3, "b": 2}}  # off by default: the last value wins
    assert not decoder_cls().unique_keys and decoder_cls(unique_keys=True).unique_keys
    with pytest.raises(DuplicateKey) as info:
        decoder_cls(unique_keys=True).decode(frame)
    exc = info.value
    # fxamacker/cbor's DupMapKeyError gives the key and its entry's index; the offset is its head's
    assert (exc.paths, exc.index, exc.offset, exc.value) == (["a"], 2, 3 + 1 + 2 + 1 + 6, None)
    assert str(exc) == f'duplicate field "a" (at byte {exc.offset})'
    dec = decoder_cls(unique_keys=True)  # in a stream: an error that sticks
    dec.feed(_cbor.CBOREncoder().encode_event("ADDED", {"a": 1}) + TAG + _cbor_map([("type", cbor2.dumps("ADDED")), ("object", inner)]))
    assert next(dec) == Event("ADDED", {"a": 1})
    with pytest.raises(DuplicateKey):
        next(dec)
    with pytest.raises(DuplicateKey):
        dec.close()
    with pytest.raises(ValueError):
        decoder_cls(unique_keys=1)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "é"]), st.integers(0, 23)), max_size=6), st.booleans())
def test_unique_keys_find_exactly_the_maps_with_a_repeated_key_in_both_implementations(pairs: List[Any], definite: bool) -> None:
    frame = TAG + _cbor_map([("k", _cbor_map([(k, bytes([v])) for k, v in pairs], definite))])
    unique_keys_judged_alike((_cbor.CBORDecoder, _cbor_py.CBORDecoder), frame, pairs, lambda inner: {"k": inner})


def unique_keys_judged_alike(decoders: Any, frame: bytes, pairs: List[Any], whole: Any) -> None:
    """Both ``decoders`` (with unique_keys) judge ``frame``, which holds the map of ``pairs``, alike: a
    DuplicateKey at the first key given again, else ``whole(dict(pairs))``."""
    outcomes: List[Any] = []
    for cls in decoders:
        try:
            outcomes.append(("ok", cls(unique_keys=True).decode(frame)))
        except DuplicateKey as exc:
            outcomes.append(("dup", str(exc), exc.paths, exc.index, exc.offset))
    assert outcomes[0] == outcomes[1]
    keys = [k for k, _ in pairs]
    first_repeat = next((i for i, k in enumerate(keys) if k in keys[:i]), None)
    if first_repeat is None:
        assert outcomes[0] == ("ok", whole(dict(pairs)))
    else:
        assert outcomes[0][2:4] == ([keys[first_repeat]], first_repeat)
