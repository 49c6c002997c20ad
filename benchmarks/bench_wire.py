"""storage's wire codec, compiled (``_wire.pyx``) against its pure-Python twin (``_wire_py.py``), same run.

Is the compiled twin worth keeping?  It is kept only if it is measurably faster on what the
storage layer does most: parsing Range responses (list pages) and Watch responses (live events),
and encoding Range requests.  The messages are built here by a few independent lines of protobuf
writing (etcd's field numbers: rpc.proto / kv.proto), so no code is shared with what is measured.

    .venv/bin/python -m pytest benchmarks/bench_wire.py --benchmark-only

Medians and compiled/twin ratios are printed at the end.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import pytest

from streamcodec.storage import _wire, _wire_py  # type: ignore[attr-defined]

IMPLEMENTATIONS = {"compiled": _wire, "twin": _wire_py}
_medians: Dict[Tuple[str, str], float] = {}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: Any) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _header(revision: int) -> bytes:
    return _field(1, 0x1234) + _field(2, 0x5678) + _field(3, revision) + _field(4, 7)


def _kv(i: int, value: bytes) -> bytes:
    key = b"/registry/secrets/default/secret-%06d" % i
    return _field(1, key) + _field(2, 100 + i) + _field(3, 200 + i) + _field(4, 1) + _field(5, value)


def range_response(count: int, value_bytes: int) -> bytes:
    value = b"v" * value_bytes
    return _field(1, _header(10_000)) + b"".join(_field(2, _kv(i, value)) for i in range(count)) + _field(3, 1) + _field(4, count * 2)


def watch_response(events: int, value_bytes: int) -> bytes:
    value = b"v" * value_bytes
    body = b"".join(_field(11, _field(1, 0) + _field(2, _kv(i, value))) for i in range(events))
    return _field(1, _header(10_000)) + _field(2, 1) + body


#: name -> (what is measured, a function of the wire module)
CASES: Dict[str, Callable[[Any], Callable[[], Any]]] = {
    # a list page of small objects (ConfigMaps of 1 KiB): per-key-value overhead dominates
    "range-1000x1KiB": lambda w, data=range_response(1000, 1024): (lambda: w.parse_range_response(data)),
    # a list page of two 1 MiB Secrets: the bytes are views, so this is the fixed cost
    "range-2x1MiB": lambda w, data=range_response(2, 1 << 20): (lambda: w.parse_range_response(data)),
    # a live watch response of one small event
    "watch-1x1KiB": lambda w, data=watch_response(1, 1024): (lambda: w.parse_watch_response(data)),
    # a page request
    "range-request": lambda w: (lambda: w.encode_range_request(b"/registry/secrets/", b"/registry/secrets0", limit=500, revision=10_000)),
}


def _plain(value: Any) -> Any:
    """Results as comparable values (memoryviews as bytes, records as tuples)."""
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, (tuple, list)):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "__slots__") or hasattr(value, "__dict__"):
        names = getattr(value, "_fields", None) or getattr(value, "__slots__", None) or vars(value)
        return tuple((n, _plain(getattr(value, n))) for n in names)
    return value


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_wire(benchmark: Any, case: str, impl: str) -> None:
    benchmark.group = f"wire-{case}"
    run = CASES[case](IMPLEMENTATIONS[impl])
    result = benchmark(run)
    # both twins must agree on what they parse / encode, or the race means nothing
    other = CASES[case](IMPLEMENTATIONS["twin" if impl == "compiled" else "compiled"])()
    assert _plain(result) == _plain(other)
    _medians[case, impl] = benchmark.stats.stats.median


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    """Prints the medians and twin/compiled ratios once the module's benchmarks have run."""
    yield
    lines = []
    for case in CASES:
        c, t = _medians.get((case, "compiled")), _medians.get((case, "twin"))
        if c and t:
            lines.append(f"{case:>18}: compiled {c * 1e6:9.2f} us   twin {t * 1e6:9.2f} us   twin/compiled {t / c:5.1f}x")
    print("\n" + "\n".join(lines))
