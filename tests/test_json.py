"""JSON format: bytes checked against the standard library's json (an
independent encoder and decoder), plus the JSON-specific behaviour of the
encoder, the raw pass-through and the incremental decoder."""

from __future__ import annotations

import base64
import collections
import enum
import json
import sys
from typing import Any, List

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.fuzz import examples

from streamcodec import (
    BufferFull,
    DecodeError,
    EncodeError,
    Event,
    FrameTooLarge,
    JSONDecoder,
    JSONEncoder,
    PoolBuffer,
)
from streamcodec import _json_py
from streamcodec.limits import EVENT_TYPES, MAX_DEPTH

from benchmarks.fixtures import FIXTURES


def stdlib(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# -- strategies -----------------------------------------------------------------

# Every code point except lone surrogates (not encodable as UTF-8), astral ones included.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
ascii_text = st.text(st.characters(max_codepoint=0x7F), max_size=80)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**60), max_value=10**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
    | ascii_text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.lists(children, max_size=4).map(tuple)
    | st.dictionaries(text, children, max_size=6),
    max_leaves=40,
)


def normalise(x: Any) -> Any:
    """What json.loads gives back for x (tuples become lists)."""
    if isinstance(x, dict):
        return {k: normalise(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [normalise(v) for v in x]
    return x


# -- encoding: byte-identical to json.dumps ----------------------------------------


@settings(max_examples=examples(400), suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_encode_is_byte_identical_to_stdlib_json(obj: Any) -> None:
    enc = JSONEncoder()
    out = enc.encode(obj)
    assert out == stdlib(obj)
    assert json.loads(out) == normalise(obj)
    buf = PoolBuffer(len(out) + 7)
    buf.length = 7
    assert enc.encode_into(obj, buf) == len(out)
    assert buf.getvalue()[7:] == out


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixtures_identical_to_stdlib(name: str) -> None:
    obj = FIXTURES[name]()
    assert JSONEncoder().encode(obj) == stdlib(obj)


@pytest.mark.parametrize(
    "value",
    [
        "",
        '"\\/\b\f\n\r\t',
        "".join(chr(c) for c in range(0x20)) + "\x7f",
        "x" * 100 + '"' + "y" * 100 + "\\" + "z" * 3,  # escapes inside long runs (vector scan)
        "é" * 5000 + "\n",  # latin-1 kind, more than one chunk
        "✓" * 5000 + "\x01",  # 2-byte kind
        "𝄞" * 5000 + "\u2028\u2029",  # 4-byte kind; U+2028/9 stay raw as in json.dumps
        0, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**300, -(10**4000),
        0.0, -0.0, 1.0, 1e16, 1e-7, 0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -2.5e-300,
        True, False, None, [], {}, (), [[]], {"": {}},
    ],
    ids=repr,
)
def test_edge_values_identical_to_stdlib(value: Any) -> None:
    assert JSONEncoder().encode(value) == stdlib(value)
    assert JSONEncoder().encode([value, {"k": value}]) == stdlib([value, {"k": value}])


def test_subclasses_encode_as_their_base_type() -> None:
    class S(str):
        def __str__(self) -> str:
            return "wrong"

    class I(int):
        def __repr__(self) -> str:
            return "wrong"

    class F(float):
        def __repr__(self) -> str:
            return "wrong"

    class L(list):
        pass

    class T(tuple):
        pass

    class D(dict):
        pass

    class Color(enum.IntEnum):
        RED = 1

    od = collections.OrderedDict([("a", 1), ("b", 2), ("c", 3)])
    od.move_to_end("a")  # items() order differs from the storage order
    obj = {S("k"): [S("v"), I(7), F(2.5), L([1, T((2, 3))]), D(x=D(y=1)), Color.RED, od, I(2**70)]}
    assert JSONEncoder().encode(obj) == stdlib(obj)
    assert JSONEncoder().encode(obj) == b'{"k":["v",7,2.5,[1,[2,3]],{"x":{"y":1}},1,{"b":2,"c":3,"a":1},1180591620717411303424]}'


def test_bytes_like_become_padded_standard_base64() -> None:
    enc = JSONEncoder()
    for raw in (b"", b"a", b"ab", b"abc", bytes(range(256)) * 3, b"\xfb\xff\xfe"):
        want = json.dumps(base64.b64encode(raw).decode()).encode()
        assert enc.encode(raw) == want
        assert enc.encode(bytearray(raw)) == want
        assert enc.encode(memoryview(raw)) == want
    strided = memoryview(b"abcdef")[::2]  # not contiguous: its bytes are b"ace"
    assert json.loads(enc.encode({"d": strided})) == {"d": base64.b64encode(b"ace").decode()}


def test_bytes_inside_the_target_buffer_are_read_before_being_overwritten() -> None:
    buf = PoolBuffer(64)
    buf.data[0:6] = b"secret"
    buf.length = 6
    source = memoryview(buf.data)[0:6]
    # A frame budget below the room left: the encoder writes in place.
    n = JSONEncoder(max_frame_size=32).encode_into([source], buf)
    source.release()
    assert buf.getvalue()[6:] == b'["c2VjcmV0"]' and n == 12


# -- encoding errors -------------------------------------------------------------


@pytest.mark.parametrize(
    "obj,message",
    [
        ({"a": [1, {"b": {1, 2}}]}, "cannot encode object of type set at $['a'][1]['b']"),
        ({"a": {3: "x"}}, "dict key of type int is not a str at $['a'][3]"),
        ([1.0, float("nan")], "cannot encode float nan (NaN and Infinity are not JSON) at $[1]"),
        ({"x": float("-inf")}, "cannot encode float -inf (NaN and Infinity are not JSON) at $['x']"),
        ({"s": ["ok", "a\ud83db"]}, "lone surrogate U+D83D in a str at $['s'][1]"),
        ({"\udc00": 1}, "lone surrogate U+DC00 in a str at $['\\udc00']"),
        ([b"ok", object()], "cannot encode object of type object at $[1]"),
    ],
)
def test_encode_errors_name_the_problem_and_path(obj: Any, message: str) -> None:
    with pytest.raises(EncodeError) as info:
        JSONEncoder().encode(obj)
    assert str(info.value) == message


def test_cycles_and_depth_are_told_apart() -> None:
    a: List[Any] = [1]
    a.append({"back": a})
    with pytest.raises(EncodeError, match="circular reference"):
        JSONEncoder().encode(a)
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert JSONEncoder().encode(deep) == stdlib(deep)  # exactly max_depth containers
    with pytest.raises(EncodeError, match=f"nesting deeper than max_depth={MAX_DEPTH}"):
        JSONEncoder().encode([deep])


def test_int_beyond_str_digit_limit_is_encode_error() -> None:
    huge = 10 ** (sys.get_int_max_str_digits() + 1)
    with pytest.raises(EncodeError, match="int too large"):
        JSONEncoder().encode([huge])


def test_bad_constructor_arguments() -> None:
    for kwargs in ({"max_frame_size": 0}, {"max_depth": 0}, {"max_depth": 10**6}, {"max_frame_size": "1"}):
        with pytest.raises(ValueError):
            JSONEncoder(**kwargs)
        with pytest.raises(ValueError):
            JSONDecoder(**kwargs)
    with pytest.raises(TypeError):
        JSONEncoder(1024)  # type: ignore[misc]  # keyword-only


@settings(max_examples=examples(150))
@given(json_values, st.sampled_from([{1, 2}, object(), 1j, float("nan"), "\ud800", {5: 1}]))
def test_compiled_and_twin_agree_on_output_and_errors(obj: Any, bad: Any) -> None:
    """The twin is checked against the compiled module (in the pure-Python
    run both names are the twin and this checks it against itself)."""
    twin = _json_py.JSONEncoder()
    enc = JSONEncoder()
    for candidate in (obj, [obj, bad], {"k": [obj, {"z": bad}]}):
        outcomes = []
        for e in (enc, twin):
            try:
                outcomes.append(("ok", e.encode(candidate)))
            except EncodeError as exc:
                outcomes.append((type(exc).__name__, str(exc)))
        assert outcomes[0] == outcomes[1]


# -- one encoder reused: encoded dict keys are remembered between frames ---------------

# One encoder for every example below: what it remembers from earlier objects
# must never leak into later ones.
_shared_encoder = JSONEncoder()


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_a_reused_encoder_stays_byte_identical_to_stdlib(obj: Any) -> None:
    assert _shared_encoder.encode(obj) == stdlib(obj)
    # Again, now with every key seen before (and keys in other str objects).
    copy = json.loads(stdlib(obj))
    assert _shared_encoder.encode(copy) == stdlib(copy)


def _fresh(text: str) -> str:
    """A new str object with this text (not interned, not shared with literals)."""
    return "".join(list(text))


def test_keys_with_equal_text_in_other_str_objects_and_recycled_addresses() -> None:
    enc = JSONEncoder()
    for i in range(3000):
        # Each round frees the previous keys; their memory is reused for new
        # strs of the same size but other text.
        key, other = _fresh(f"k{i % 7}-{i}"), _fresh(f"k{i % 7}")
        obj = {key: i, other: [{key: other}]}
        assert enc.encode(obj) == stdlib(obj)
        del key, other, obj


def test_many_distinct_keys_evict_each_other_without_mixing_up() -> None:
    # Far more keys than any cache holds, then the same texts in new objects.
    keys = [f"key-{i}" for i in range(5000)] + ["é" * 3, "✓a", "𝄞", 'q"uote', "back\\slash", "tab\tnl\n", ""]
    obj = {k: n for n, k in enumerate(keys)}
    enc = JSONEncoder()
    for _ in range(2):
        assert enc.encode(obj) == stdlib(obj)
        obj = json.loads(stdlib(obj))


@pytest.mark.parametrize("size", [63, 64, 65, 300])
def test_small_and_big_dicts_share_keys_correctly(size: int) -> None:
    # Keys of big maps are not remembered, those of small dicts are: the same
    # texts alternate between both kinds of dict.
    enc = JSONEncoder()
    keys = [f"k{i}" if i % 3 else f'"é{i}\\' for i in range(size)]
    for _ in range(2):
        obj = {"big": {k: i for i, k in enumerate(keys)}, "small": [{k: k} for k in keys[:70]]}
        assert enc.encode(obj) == stdlib(obj)
        keys = [_fresh(k) for k in keys]


@pytest.mark.parametrize("length", [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 40, 43, 44, 45, 46, 47, 48, 63, 64, 65, 200])
def test_keys_of_every_size_class_encode_the_same_each_time(length: int) -> None:
    enc = JSONEncoder()
    for key in ("k" * length, "é" * length, "a\"" * (length // 2), "𝄞" * (length // 4)):
        obj = {key: 1, "x": {key: [key]}}
        for _ in range(3):  # first sight, then remembered
            assert enc.encode(obj) == stdlib(obj)
            buf = PoolBuffer(len(stdlib(obj)))
            assert enc.encode_into(obj, buf) == len(buf.data) and buf.getvalue() == stdlib(obj)


def test_a_key_that_failed_is_reported_again() -> None:
    enc = JSONEncoder()
    for _ in range(2):
        with pytest.raises(EncodeError, match="lone surrogate U\\+D800"):
            enc.encode({"ok": 1, "\ud800": 2})
        assert enc.encode({"ok": 1}) == b'{"ok":1}'


@settings(max_examples=examples(100))
@given(json_values, st.integers(min_value=0, max_value=200))
def test_a_warmed_encoder_at_every_room_fits_exactly_or_raises_buffer_full(obj: Any, room: int) -> None:
    enc = JSONEncoder()
    frame = enc.encode(obj)  # every key now remembered
    buf = PoolBuffer(2 + room)
    buf.data[0:2] = b"[]"
    buf.length = 2
    if len(frame) <= room:
        assert enc.encode_into(obj, buf) == len(frame) and buf.getvalue() == b"[]" + frame
    else:
        with pytest.raises(BufferFull):
            enc.encode_into(obj, buf)
        assert buf.length == 2 and buf.getvalue() == b"[]"
    assert frame == stdlib(obj)


def test_short_ascii_strings_with_an_escape_at_every_position() -> None:
    enc = JSONEncoder()
    for n in range(1, 70):
        for ch in ('"', "\\", "\x00", "\x1f", "\n", "\x7f", " ", "~"):
            for pos in range(n):
                s = "a" * pos + ch + "b" * (n - pos - 1)
                obj = [s, {s: s}]
                assert enc.encode(obj) == stdlib(obj), (n, ch, pos)


@pytest.mark.parametrize("wide", ["é", "ÿ", "✓", "\u2028", "\uffff", "𝄞"], ids=["latin1", "latin1-ff", "ucs2", "u2028", "ucs2-ffff", "ucs4"])
def test_ascii_runs_inside_non_ascii_strings(wide: str) -> None:
    # The ASCII runs of a non-ASCII str are copied a word at a time: every
    # run length and alignment, with an escape or another wide char anywhere.
    enc = JSONEncoder()
    for n in range(0, 40):
        for ch in ('"', "\\", "\x00", "\x1f", "\x7f", wide, "z"):
            for pos in range(n + 1):
                s = wide + "a" * pos + ch + "b" * (n - pos) + wide
                obj = [s, {s: s}]
                assert enc.encode(obj) == stdlib(obj), (n, ch, pos)
    for run in range(4080, 4105):  # across the 4096-character chunks of long strs
        for ch in ('"', wide):
            s = wide + "a" * run + ch + "b" * 9 + wide
            assert enc.encode([s]) == stdlib([s]), (run, ch)


def _float_cases() -> List[float]:
    """Floats around every switch of repr's form, and many decimal-looking ones."""
    import math
    import random
    import struct

    rng = random.Random(20261128)
    cases = [0.0, -0.0, 1e-4, 1e15, 1e16, 9.999999999999999e14, 0.1 + 0.2, 1 / 3, 2.0**53, 2.0**53 + 2, 123456789012345.6]
    for edge in (1e-4, 1e-3, 1.0, 1e14, 1e15, 1e16):
        x = edge
        for _ in range(20):  # the neighbouring doubles on both sides
            cases += [x, -x]
            x = math.nextafter(x, 0.0)
        x = edge
        for _ in range(20):
            x = math.nextafter(x, math.inf)
            cases += [x, -x]
    for _ in range(20000):
        digits = rng.randint(1, 17)
        mantissa = rng.randrange(10 ** (digits - 1), 10**digits)
        cases.append(float(f"{mantissa}e{rng.randint(-25, 20)}"))  # decimal-looking
        cases.append(rng.choice([-1, 1]) * rng.randrange(10**16) / 10 ** rng.randint(0, 16))
        bits = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(bits):
            cases.append(bits)
    return cases


def test_floats_are_written_as_float_repr() -> None:
    cases = _float_cases()
    enc = JSONEncoder()
    got = enc.encode(cases)
    assert got == stdlib(cases)  # json.dumps writes float.__repr__
    for x in cases[:200]:
        assert enc.encode(x) == repr(x).encode()


def test_ints_of_every_width_are_written_as_int_repr() -> None:
    values = [0, 1, -1, 9, 10, 99, 100, -100, 2**30 - 1, 2**30, -(2**30) + 1, -(2**30), 2**31, 2**62, 2**63 - 1]
    values += [10**k + d for k in range(20) for d in (-1, 0, 1)] + [-(10**k) for k in range(20)]
    enc = JSONEncoder()
    assert enc.encode(values) == stdlib(values)
    assert enc.encode({"n": values}) == stdlib({"n": values})


# -- frames --------------------------------------------------------------------------


@pytest.mark.parametrize("etype", EVENT_TYPES)
def test_event_frame_is_one_json_line(etype: str) -> None:
    obj = FIXTURES["pod"]()
    frame = JSONEncoder().encode_event(etype, obj)
    assert frame.endswith(b"\n") and frame.count(b"\n") == 1
    assert frame == stdlib({"type": etype, "object": obj}) + b"\n"
    assert json.loads(frame) == {"type": etype, "object": obj}


def test_event_type_must_be_exact() -> None:
    for bad in ("added", "ADDED ", None, 1, b"ADDED"):
        with pytest.raises(EncodeError, match="invalid watch event type"):
            JSONEncoder().encode_event(bad, {})  # type: ignore[arg-type]


def test_raw_event_copies_the_frame_verbatim() -> None:
    # Not how we would encode it (spaces, key order, escapes): proof of no re-encoding.
    raw = b'{ "b" : 1,  "a":"\\u00e9" }'
    enc = JSONEncoder()
    assert enc.encode_raw_event("MODIFIED", raw) == b'{"type":"MODIFIED","object":' + raw + b"}\n"
    buf = PoolBuffer(200)
    enc.encode_raw_list_item_into(bytearray(raw), buf, 0)
    enc.encode_raw_list_item_into(memoryview(raw), buf, 1)
    assert buf.getvalue() == raw + b"," + raw


def test_raw_frame_with_newline_is_re_encoded_on_one_line() -> None:
    raw = json.dumps({"a": [1, 2], "s": "x\ny"}, indent=2).encode()
    assert b"\n" in raw
    enc = JSONEncoder()
    frame = enc.encode_raw_event("ADDED", raw)
    assert frame == b'{"type":"ADDED","object":{"a":[1,2],"s":"x\\ny"}}\n'
    buf = PoolBuffer(100)
    enc.encode_raw_list_item_into(raw, buf, 3)
    assert buf.getvalue() == b',{"a":[1,2],"s":"x\\ny"}'


def test_raw_frame_errors() -> None:
    enc = JSONEncoder()
    buf = PoolBuffer(100)
    buf.length = 1
    for bad in (b"{\n oops", b"[1,\nNaN]", b""):
        with pytest.raises(EncodeError):
            enc.encode_raw_event("ADDED", bad)
        with pytest.raises(EncodeError):
            enc.encode_raw_list_item_into(bad, buf, 0)
        assert buf.length == 1
    with pytest.raises(EncodeError, match="raw frame must be bytes"):
        enc.encode_raw_event("ADDED", '{"a":1}')  # type: ignore[arg-type]


def test_list_body_equals_stdlib_dump_of_the_whole_list() -> None:
    items = [FIXTURES["pod"](), {"kind": "Pod", "x": [1.5, None]}, FIXTURES["configmap_1000"]()]
    metadata = {"resourceVersion": "42", "continue": "tok✓"}
    enc = JSONEncoder()
    raw_second = enc.encode(items[1])
    buf = PoolBuffer(1 << 20)
    enc.encode_list_start_into(buf, kind="PodList", api_version="v1", metadata=metadata, count=None)
    enc.encode_list_item_into(items[0], buf, 0)
    enc.encode_raw_list_item_into(raw_second, buf, 1)
    enc.encode_list_item_into(items[2], buf, 2)
    enc.encode_list_end_into(buf, 3)
    want = stdlib({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items})
    assert buf.getvalue() == want
    empty = PoolBuffer(100)
    enc.encode_list_start_into(empty, kind="L", api_version="v1", metadata={}, count=0)
    enc.encode_list_end_into(empty, 0)
    assert json.loads(empty.getvalue()) == {"kind": "L", "apiVersion": "v1", "metadata": {}, "items": []}


def test_list_arguments_are_checked() -> None:
    enc = JSONEncoder()
    buf = PoolBuffer(100)
    with pytest.raises(ValueError):
        enc.encode_list_item_into({}, buf, -1)
    with pytest.raises(EncodeError):
        enc.encode_list_start_into(buf, kind="L", api_version="v1", metadata=[])  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        enc.encode_list_start_into(buf, kind=1, api_version="v1", metadata={})  # type: ignore[arg-type]
    assert buf.length == 0


# -- into a pool buffer -------------------------------------------------------


def test_into_never_resizes_and_errors_leave_the_buffer_as_it_was() -> None:
    obj = FIXTURES["pod"]()
    frame = stdlib(obj)
    enc = JSONEncoder(max_frame_size=len(frame))
    buf = PoolBuffer(len(frame) * 2 + 9)
    data = buf.data
    buf.data[0:10] = b"0123456789"
    buf.length = 10
    assert enc.encode_into(obj, buf) == len(frame)
    snapshot = bytes(buf.data)
    with pytest.raises(BufferFull):  # fits max_frame_size, not the len(frame) - 1 bytes left
        enc.encode_into(obj, buf)
    # The space past length is free: only what was written must stay.
    assert buf.length == 10 + len(frame) and bytes(buf.data[: buf.length]) == snapshot[: buf.length]
    with pytest.raises(FrameTooLarge) as info:
        enc.encode_event_into("ADDED", obj, buf)
    assert info.value.max_frame_size == len(frame)
    with pytest.raises(FrameTooLarge):
        enc.encode_event("ADDED", obj)
    assert buf.length == 10 + len(frame) and bytes(buf.data[: buf.length]) == snapshot[: buf.length]
    assert buf.data is data and len(data) == len(frame) * 2 + 9


def test_frame_filling_the_buffer_exactly() -> None:
    obj = {"payload": "p" * 1000, "n": [1, 2, 3]}
    frame = stdlib(obj)
    for room in (len(frame), len(frame) + 1):
        buf = PoolBuffer(room)
        assert JSONEncoder().encode_into(obj, buf) == len(frame) and buf.getvalue() == frame
    short = PoolBuffer(len(frame) - 1)
    with pytest.raises(BufferFull):
        JSONEncoder().encode_into(obj, short)
    assert short.length == 0 and len(short.data) == len(frame) - 1  # nothing written, never resized


@settings(max_examples=examples(100))
@given(json_values, st.integers(min_value=0, max_value=200))
def test_into_at_every_room_either_fits_exactly_or_raises_buffer_full(obj: Any, room: int) -> None:
    frame = stdlib(obj)
    buf = PoolBuffer(3 + room)
    buf.data[:] = b"\xaa" * len(buf.data)
    buf.length = 3
    before = bytes(buf.data)
    if len(frame) <= room:
        assert JSONEncoder().encode_into(obj, buf) == len(frame)
        assert buf.getvalue() == before[:3] + frame
    else:
        with pytest.raises(BufferFull):
            JSONEncoder().encode_into(obj, buf)
        assert buf.length == 3 and bytes(buf.data[:3]) == before[:3] and len(buf.data) == len(before)


def test_bad_buffer_length_is_refused() -> None:
    buf = PoolBuffer(8)
    buf.length = 9
    with pytest.raises(ValueError):
        JSONEncoder().encode_into(1, buf)


def test_content_types() -> None:
    assert JSONEncoder.content_type == "application/json"
    assert JSONEncoder.stream_content_type == "application/json;stream=watch"


# -- decoding -----------------------------------------------------------------------


def test_decode_object_frames() -> None:
    dec = JSONDecoder()
    for name, make in FIXTURES.items():
        obj = make()
        assert dec.decode(stdlib(obj)) == obj
    assert dec.decode(b' {"a": [1, 2.5, "\\u00e9"]} \n') == {"a": [1, 2.5, "é"]}


@pytest.mark.parametrize(
    "frame,offset",
    [
        (b'[1, NaN]', 4),
        (b'{"a": -Infinity}', 7),
        (b'{"NaN": "Infinity", "x": Infinity}', 25),
        (b'[1] x', 4),
        (b'[1, 2', 5),
        (b'{"a": "\xc3\x28"}', 7),
        (b'["\xe2\x9c\x93", tru]', 8),  # offset in bytes, after a 3-byte character
        (b"", 0),
    ],
)
def test_decode_errors_carry_byte_offsets(frame: bytes, offset: int) -> None:
    with pytest.raises(DecodeError) as info:
        JSONDecoder().decode(frame)
    assert info.value.offset == offset


def test_decode_limits() -> None:
    dec = JSONDecoder(max_depth=3, max_frame_size=20)
    assert dec.decode(b"[[[1]]]") == [[[1]]]
    with pytest.raises(DecodeError) as info:
        dec.decode(b'[[{"a":[1]}]]')
    assert info.value.offset == 7 and "max_depth=3" in str(info.value)
    with pytest.raises(DecodeError):
        dec.decode(b"[" + b"1," * 20 + b"1]")
    with pytest.raises(DecodeError):  # hostile depth far past any recursion limit
        JSONDecoder().decode(b"[" * 100_000 + b"]" * 100_000)


def _stream(events: List[Event]) -> bytes:
    enc = JSONEncoder()
    return b"".join(enc.encode_event(t, o) for t, o in events)


def test_stream_decodes_events_fed_in_any_pieces() -> None:
    events = [Event(t, FIXTURES["pod"]()) for t in EVENT_TYPES] + [Event("ADDED", {"s": "é\n✓"})]
    stream = _stream(events)
    for chunk in (1, 7, 1000, len(stream)):
        dec = JSONDecoder()
        got: List[Event] = []
        for i in range(0, len(stream), chunk):
            dec.feed(stream[i : i + chunk])
            got.extend(dec)
        dec.close()
        assert got == events


def test_blank_lines_are_ignored_and_partial_line_fails_close() -> None:
    dec = JSONDecoder()
    dec.feed(b'\n  \r\n{"type":"DELETED","object":{"a":1}}\r\n\n{"type":"ADDED"')
    assert list(dec) == [Event("DELETED", {"a": 1})]
    with pytest.raises(DecodeError) as info:
        dec.close()
    assert info.value.offset == len(b'\n  \r\n{"type":"DELETED","object":{"a":1}}\r\n\n{"type":"ADDED"')


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"ADDED"}',
        b'{"type":"UPDATED","object":{}}',
        b'{"type":1,"object":{}}',
        b'{"type":"ADDED","object":{},"extra":1}',
        b'[{"type":"ADDED","object":{}}]',
        b'{"type":"ADDED","object":NaN}',
        b"not json",
    ],
)
def test_bad_event_lines_are_errors_that_stick(line: bytes) -> None:
    dec = JSONDecoder()
    good = b'{"type":"ADDED","object":{"ok":true}}\n'
    dec.feed(good + line + b"\n" + good)
    it = iter(dec)
    assert next(it) == Event("ADDED", {"ok": True})
    with pytest.raises(DecodeError) as info:
        next(it)
    assert info.value.offset >= len(good)
    for again in (lambda: next(it), lambda: dec.feed(good), dec.close):
        with pytest.raises(DecodeError) as info2:
            again()
        assert info2.value is info.value


def test_overlong_line_is_refused_without_buffering_it() -> None:
    dec = JSONDecoder(max_frame_size=100)
    first = b'{"type":"ADDED","object":1}\n'
    dec.feed(first)
    for _ in range(50):  # 5000 bytes of one line, never a newline
        dec.feed(b"x" * 100)
        assert len(dec._buf) <= 200  # bounded (internal, but the point of the test)
    assert next(iter(dec)) == Event("ADDED", 1)
    with pytest.raises(DecodeError) as info:
        next(iter(dec))
    assert info.value.offset == len(first) + 100
    # A too-long complete line fed in one piece is refused too.
    dec2 = JSONDecoder(max_frame_size=30)
    dec2.feed(b'{"type":"ADDED","object":"abcd"}\n')
    with pytest.raises(DecodeError):
        list(dec2)


def test_offsets_count_from_the_first_byte_ever_fed() -> None:
    good = _stream([Event("ADDED", {"i": i}) for i in range(3)])
    dec = JSONDecoder()
    dec.feed(good)
    assert len(list(dec)) == 3
    dec.feed(b'{"type":"ADDED","object":[1,}\n')
    with pytest.raises(DecodeError) as info:
        list(dec)
    assert info.value.offset == len(good) + len(b'{"type":"ADDED","object":[1,')


# -- decoder fuzzing --------------------------------------------------------------


def _drive(dec: Any, stream: bytes, cuts: List[int]) -> List[Event]:
    """Feed stream split at cuts; return the events, or raise DecodeError."""
    got: List[Event] = []
    prev = 0
    for cut in sorted(set(c % (len(stream) + 1) for c in cuts)) + [len(stream)]:
        dec.feed(stream[prev:cut])
        prev = cut
        got.extend(dec)
    dec.close()
    return got


event_lists = st.lists(st.tuples(st.sampled_from(EVENT_TYPES), json_values), min_size=1, max_size=4)
cut_points = st.lists(st.integers(min_value=0, max_value=10**6), max_size=8)


@settings(max_examples=examples(200), deadline=None)
@given(event_lists, cut_points)
def test_fuzz_valid_streams_at_random_split_points(events: List[Any], cuts: List[int]) -> None:
    expected = [Event(t, normalise(o)) for t, o in events]
    assert _drive(JSONDecoder(), _stream(expected), cuts) == expected


def _only_events_or_decode_error(stream: bytes, cuts: List[int]) -> None:
    dec = JSONDecoder(max_frame_size=4096)
    try:
        got = _drive(dec, stream, cuts)
    except DecodeError as exc:
        assert 0 <= exc.offset <= len(stream) + 4096
        return
    # Whatever decoded must be exactly what stdlib json reads from the lines.
    want = []
    for line in stream.split(b"\n"):
        if line.strip(b" \t\r"):
            msg = json.loads(line)
            want.append(Event(msg["type"], msg["object"]))
    assert got == want
    assert all(e.type in EVENT_TYPES and isinstance(e, Event) for e in got)


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=300), cut_points)
def test_fuzz_random_bytes(data: bytes, cuts: List[int]) -> None:
    _only_events_or_decode_error(data, cuts)


@settings(max_examples=examples(300), deadline=None)
@given(event_lists, st.data(), cut_points)
def test_fuzz_truncated_and_mutated_streams(events: List[Any], data: st.DataObject, cuts: List[int]) -> None:
    stream = _stream([Event(t, o) for t, o in events])
    assume(len(stream) <= 4000)
    truncated = stream[: data.draw(st.integers(0, len(stream)))]
    _only_events_or_decode_error(truncated, cuts)
    pos = data.draw(st.integers(0, len(stream) - 1))
    mutated = bytearray(stream)
    mutated[pos] = data.draw(st.integers(0, 255))
    _only_events_or_decode_error(bytes(mutated), cuts)


@settings(max_examples=examples(100), deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decode_of_arbitrary_frames(data: bytes) -> None:
    try:
        obj = JSONDecoder().decode(data)
    except DecodeError:
        return
    assert obj == json.loads(data)


# -- duplicate keys (unique_keys) -------------------------------------------------------

from streamcodec import DuplicateKey, _json  # noqa: E402  (the compiled module, beside its twin)

JSON_DECODERS = pytest.mark.parametrize("decoder_cls", [_json.JSONDecoder, _json_py.JSONDecoder], ids=["compiled", "twin"])


@JSON_DECODERS
@pytest.mark.parametrize(
    "text, paths, offset",
    [
        (b'{"metadata":{"name":"a","name":"b"}}', ["metadata.name"], 24),
        # sigs.k8s.io/json's own case (kubernetes_patch_test.go, "duplicate untyped map"): its paths, its order
        (b'{"a":"","b":"","a":"","b":"","c":{"c":"","c":""},"d":{"e":{"f":1,"f":1}},"e":[{"g":1,"g":1}]}',
         ["a", "b", "c.c", "d.e.f", "e[0].g"], 15),
        (b'{"a":1,"a":2,"a":3}', ["a"], 7),  # each path once
        (b'{"a":1,"\\u0061":2}', ["a"], 7),  # the same key, escaped
        (b'{"a":{"x":1,"x":2},"a":{}}', ["a.x", "a"], 12),  # inside a value a later one replaces, first
        (b'[{"k":[1,{"v":1,"v":2}]}]', ["[0].k[1].v"], 16),
        (b' {"\xc3\xa9":1, "\xc3\xa9":2}', ["\u00e9"], 10),  # offsets in bytes
        (b'[{}, "k", {"a":1,"a":2}]', ["[2].a"], 17),  # a string after an empty object is no key
    ],
)
def test_unique_keys_name_every_duplicate_by_its_kubernetes_path(decoder_cls: Any, text: bytes, paths: List[str], offset: int) -> None:
    assert decoder_cls().decode(text) == json.loads(text)  # off by default: the last value wins
    dec = decoder_cls(unique_keys=True)
    assert dec.unique_keys and not decoder_cls().unique_keys
    with pytest.raises(DuplicateKey) as info:
        dec.decode(text)
    exc = info.value
    assert isinstance(exc, DecodeError)
    assert (exc.paths, exc.offset, exc.index) == (paths, offset, None)
    assert exc.problems == [f'duplicate field "{p}"' for p in paths]
    assert str(exc) == ", ".join(exc.problems) + f" (at byte {offset})"
    assert exc.value == json.loads(text)  # what a caller that only warns keeps


@JSON_DECODERS
def test_unique_keys_keep_every_other_behaviour(decoder_cls: Any) -> None:
    dec = decoder_cls(unique_keys=True)
    for make in FIXTURES.values():
        obj = make()
        assert dec.decode(stdlib(obj)) == obj
    # a syntax error after a duplicate is that error, as without the check
    with pytest.raises(DecodeError) as info:
        dec.decode(b'{"a":1,"a":2,tru}')
    assert not isinstance(info.value, DuplicateKey) and info.value.offset == 13
    with pytest.raises(DuplicateKey) as dup:  # at most Kubernetes' 100, in order
        dec.decode(b"{" + b",".join(b'"k%d":1,"k%d":2' % (i, i) for i in range(150)) + b"}")
    assert dup.value.paths == [f"k{i}" for i in range(100)]
    with pytest.raises(ValueError):
        decoder_cls(unique_keys="yes")


@JSON_DECODERS
def test_a_watch_event_with_a_duplicate_key_is_an_error_that_sticks(decoder_cls: Any) -> None:
    dec = decoder_cls(unique_keys=True)
    first = b'{"type":"ADDED","object":{"a":1}}\n'
    dec.feed(first + b'{"type":"ADDED","object":{"a":1,"a":2}}\n')
    assert next(dec) == Event("ADDED", {"a": 1})
    with pytest.raises(DuplicateKey) as info:
        next(dec)
    assert info.value.paths == ["object.a"] and info.value.offset == len(first) + 32
    with pytest.raises(DuplicateKey):
        dec.close()


class _Pairs(list):
    """A JSON object as the pairs it is written with (its keys may repeat)."""


_keys = st.sampled_from(["a", "b", "é", "k.x", 'q"'])  # few keys: repeats are common
_pair_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.lists(st.tuples(_keys, children), max_size=4).map(_Pairs),
    max_leaves=20,
)


def _dump(x: Any, ascii_keys: bool) -> str:
    if isinstance(x, _Pairs):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=ascii_keys)}:{_dump(v, ascii_keys)}" for k, v in x) + "}"
    if isinstance(x, list):
        return "[" + ", ".join(_dump(v, ascii_keys) for v in x) + "]"
    return json.dumps(x)


def _expected_paths(x: Any, path: str = "") -> List[str]:
    """sigs.k8s.io/json's duplicate paths, walked over the pairs (not the text) as an independent reference."""
    out: List[str] = []
    if isinstance(x, _Pairs):
        seen = set()
        for k, v in x:
            p = f"{path}.{k}" if path else k
            if k in seen and p not in out:
                out.append(p)
            seen.add(k)
            out += [q for q in _expected_paths(v, p) if q not in out]
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out += [q for q in _expected_paths(v, f"{path}[{i}]") if q not in out]
    return out


@settings(max_examples=examples(300), deadline=None)
@given(_pair_values, st.booleans())
def test_a_duplicated_key_is_always_found_and_a_text_without_one_never(value: Any, ascii_keys: bool) -> None:
    text = _dump(value, ascii_keys).encode()
    repeats: List[bool] = []

    def hook(pairs: List[Any]) -> dict:  # the standard library's view of each object
        repeats.append(len({k for k, _ in pairs}) != len(pairs))
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    outcomes: List[Any] = []
    for cls in (_json.JSONDecoder, _json_py.JSONDecoder):
        try:
            outcomes.append(("ok", cls(unique_keys=True).decode(text)))
        except DuplicateKey as exc:
            outcomes.append(("dup", str(exc), exc.offset, exc.paths, exc.value))
    assert outcomes[0] == outcomes[1]
    if any(repeats):
        assert outcomes[0][0] == "dup" and outcomes[0][3] == _expected_paths(value) and outcomes[0][4] == json.loads(text)
        assert text[outcomes[0][2]:].startswith(b'"')  # the offset of a key's opening quote
    else:
        assert outcomes[0] == ("ok", json.loads(text))
