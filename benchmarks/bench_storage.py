"""Reading a big key prefix out of real etcd 3.5: EtcdStore.list_stream against its peers.

400 values x 1 MB are loaded once per session into a fresh etcd 3.5, then each reader drains the
whole prefix per round, all measured in the same run.  The Python readers take each value's length
(they hold the bytes, as a server about to send them does); etcdctl formats and writes all 400 MB,
so part of its time is output work a server-side reader does not do:

* ``list_stream``  -- ``streamcodec.storage.EtcdStore.list_stream`` (the code under test)
* ``bare_paged``   -- the reference: a bare-bones paged Range reader in pure Python over grpc.aio,
                      hand-encoded requests, minimal parsing, same pinned-revision paging idea
* ``etcdctl``      -- ``etcdctl get --prefix`` with its output sent to /dev/null (a new process per round,
                      as people run it)
* ``etcd3``        -- python-etcd3's ``get_prefix`` in its own virtualenv (it needs ``protobuf<4``), created
                      under ``${STREAMCODEC_CACHE:-~/.cache/streamcodec}/etcd3-venv``; it runs as a long-lived
                      subprocess (``scripts/etcd3-baseline/get_prefix.py``) so interpreter start is not timed

etcd's own CPU seconds per full read are recorded too (``etcd_cpu_s_per_read``): serving the
400 MB costs etcd about the same whatever the reader, which bounds how fast any reader can be.
Peak RSS of a fresh process doing one full read is recorded for each in ``benchmark.extra_info``
(``peak_rss_mb``; for list_stream/bare_paged also ``rss_before_read_mb``, after imports and connecting).
The ratios against list_stream are printed at the end of the run.

    /work/venv/bin/pytest benchmarks/bench_storage.py --benchmark-only
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/bench_storage.py --rss ...` runs this file directly
    sys.path.insert(0, str(REPO))

from streamcodec.local_etcd import EtcdProcess  # noqa: E402
from streamcodec.storage.paging import DEFAULT_PAGE_BYTES, RECEIVE_COPY_FACTOR  # noqa: E402

VALUE_COUNT = 400
VALUE_SIZE = 1_000_000
PREFIX = b"/registry/bench/"
#: keys per Range page of the bare reader: the response size EtcdStore aims at with its default page_bytes
#: (the budget over RECEIVE_COPY_FACTOR, at least one key), so both ask etcd for the same pages
BARE_PAGE_KEYS = max(1, int(DEFAULT_PAGE_BYTES / RECEIVE_COPY_FACTOR) // VALUE_SIZE)
#: large enough for one 400 MB response (python-etcd3 asks for the whole prefix in one Range)
ETCD3_MAX_RECEIVE = 1 << 30
CACHE = Path(os.environ.get("STREAMCODEC_CACHE") or Path.home() / ".cache" / "streamcodec")
ETCD3_VENV = CACHE / "etcd3-venv"
ETCD3_SCRIPT = REPO / "scripts" / "etcd3-baseline" / "get_prefix.py"
ETCD3_REQUIREMENTS = REPO / "scripts" / "etcd3-baseline" / "requirements.txt"


# -- hand-written etcd wire encoding for the loader and the reference reader ------------------------------------
# (deliberately independent of streamcodec.storage._wire: the reference must not share code with the thing it measures)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _int_field(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value) if value else b""


def prefix_end(prefix: bytes) -> bytes:
    """The Range end covering every key that starts with ``prefix``."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\x00"
    end[-1] += 1
    return bytes(end)


def encode_range(key: bytes, range_end: bytes, limit: int, revision: int) -> bytes:
    # etcdserverpb.RangeRequest: key=1, range_end=2, limit=3, revision=4
    return _bytes_field(1, key) + _bytes_field(2, range_end) + _int_field(3, limit) + _int_field(4, revision)


def encode_put(key: bytes, value: bytes) -> bytes:
    # etcdserverpb.PutRequest: key=1, value=2
    return _bytes_field(1, key) + _bytes_field(2, value)


def _read_varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[Tuple[int, Any]]:
    """(field number, int or memoryview) for each field of one protobuf message; groups/fixed64 unused by etcd."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        wire = tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield tag >> 3, value
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            yield tag >> 3, buf[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"unexpected wire type {wire} in an etcd Range response")


def parse_range(data: bytes) -> Tuple[int, List[Tuple[memoryview, memoryview]], bool]:
    """(header revision, [(key, value)], more) of an etcdserverpb.RangeResponse."""
    revision, kvs, more = 0, [], False
    for field, value in _fields(memoryview(data)):
        if field == 1:  # ResponseHeader: revision=3
            for hf, hv in _fields(value):
                if hf == 3:
                    revision = hv
        elif field == 2:  # mvccpb.KeyValue: key=1, value=5
            key = val = memoryview(b"")
            for kf, kv in _fields(value):
                if kf == 1:
                    key = kv
                elif kf == 5:
                    val = kv
            kvs.append((key, val))
        elif field == 3:
            more = bool(value)
    return revision, kvs, more


async def bare_paged_read(channel: grpc.aio.Channel, prefix: bytes, page_keys: int = BARE_PAGE_KEYS) -> Tuple[int, int]:
    """Drain ``prefix`` page by page at the revision of the first page; returns (values, value bytes)."""
    range_call = channel.unary_unary("/etcdserverpb.KV/Range")  # no serializers: bytes in, bytes out
    end = prefix_end(prefix)
    key, revision, count, total = prefix, 0, 0, 0
    while True:
        page_revision, kvs, more = parse_range(await range_call(encode_range(key, end, page_keys, revision)))
        revision = revision or page_revision
        for k, value in kvs:
            count += 1
            total += len(value)
        if not more or not kvs:
            return count, total
        key = bytes(kvs[-1][0]) + b"\x00"


def _channel_options() -> List[Tuple[str, int]]:
    return [("grpc.max_receive_message_length", ETCD3_MAX_RECEIVE), ("grpc.max_send_message_length", 8 << 20)]


def value_for(i: int) -> bytes:
    """Deterministic 1 MB value number ``i`` (JSON-ish text, different per key)."""
    head = json.dumps({"kind": "ConfigMap", "metadata": {"name": f"bench-{i:04d}"}}).encode()
    filler = (b"%06d-abcdefghijklmnopqrstuvwxyz-" % i) * (VALUE_SIZE // 32 + 1)
    return (head + filler)[:VALUE_SIZE]


async def load(endpoint: str) -> None:
    async with grpc.aio.insecure_channel(endpoint, options=_channel_options()) as channel:
        put = channel.unary_unary("/etcdserverpb.KV/Put")
        for start in range(0, VALUE_COUNT, 8):
            await asyncio.gather(
                *(put(encode_put(PREFIX + b"%04d" % i, value_for(i))) for i in range(start, min(start + 8, VALUE_COUNT)))
            )


# -- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded_etcd() -> Iterator[EtcdProcess]:
    with EtcdProcess("3.5") as server:
        started = time.perf_counter()
        asyncio.run(load(server.endpoint))
        keys = server.etcdctl("get", "--prefix", PREFIX.decode(), "--keys-only").split()
        assert keys == [(PREFIX + b"%04d" % i).decode() for i in range(VALUE_COUNT)]
        print(f"\nloaded {VALUE_COUNT} x {VALUE_SIZE} B in {time.perf_counter() - started:.1f}s into etcd {server.version}")
        yield server


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


_medians: Dict[str, float] = {}
_etcd_cpu: Dict[str, float] = {}


def etcd_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the etcd process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed_rounds(benchmark: Any, server: EtcdProcess, name: str, run: Any, rounds: int) -> Any:
    """benchmark.pedantic(run) with etcd's own CPU seconds per read recorded: the floor no reader can beat."""
    before = etcd_cpu_seconds(server.pid)
    result = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
    per_read = (etcd_cpu_seconds(server.pid) - before) / (rounds + 1)
    benchmark.extra_info["etcd_cpu_s_per_read"] = round(per_read, 3)
    _etcd_cpu[name] = per_read
    return result


@pytest.fixture(scope="module", autouse=True)
def ratio_report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or "list_stream" not in _medians:
        return
    reporter.write_line("")
    reporter.write_line("bench_storage: median seconds per full read, peer / list_stream, and etcd's CPU seconds per read:")
    for name, median in _medians.items():
        cpu = _etcd_cpu.get(name, float("nan"))
        reporter.write_line(f"  {name:12s} {median:8.3f}s   {median / _medians['list_stream']:6.2f}x   etcd {cpu:6.3f}s")


def _record(benchmark: Any, name: str) -> None:
    if benchmark.stats is not None:
        _medians[name] = benchmark.stats.stats.median


def _rss_in_fresh_process(which: str, endpoint: str) -> Dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--rss", which, endpoint],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _expect_all(result: Tuple[int, int]) -> None:
    assert result == (VALUE_COUNT, VALUE_COUNT * VALUE_SIZE)


# -- the readers ---------------------------------------------------------------------------------------------------


async def list_stream_read(store: Any, prefix: bytes) -> Tuple[int, int]:
    count = total = 0
    async for kv in store.list_stream(prefix):
        count += 1
        total += len(kv.value)
    return count, total


def test_list_stream(benchmark: Any, loaded_etcd: EtcdProcess, loop: asyncio.AbstractEventLoop) -> None:
    from streamcodec.storage import EtcdStore

    async def open_store() -> Any:
        return EtcdStore([loaded_etcd.endpoint])

    store = loop.run_until_complete(open_store())
    try:
        result = _timed_rounds(
            benchmark, loaded_etcd, "list_stream", lambda: loop.run_until_complete(list_stream_read(store, PREFIX)), 7
        )
        _expect_all(result)
    finally:
        loop.run_until_complete(store.close())
    benchmark.extra_info.update(_rss_in_fresh_process("list_stream", loaded_etcd.endpoint))
    _record(benchmark, "list_stream")


def test_bare_paged_grpc(benchmark: Any, loaded_etcd: EtcdProcess, loop: asyncio.AbstractEventLoop) -> None:
    async def open_channel() -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(loaded_etcd.endpoint, options=_channel_options())

    channel = loop.run_until_complete(open_channel())
    try:
        result = _timed_rounds(
            benchmark, loaded_etcd, "bare_paged", lambda: loop.run_until_complete(bare_paged_read(channel, PREFIX)), 7
        )
        _expect_all(result)
    finally:
        loop.run_until_complete(channel.close())
    benchmark.extra_info["page_keys"] = BARE_PAGE_KEYS
    benchmark.extra_info.update(_rss_in_fresh_process("bare_paged", loaded_etcd.endpoint))
    _record(benchmark, "bare_paged")


def test_etcdctl_get_prefix(benchmark: Any, loaded_etcd: EtcdProcess) -> None:
    command = loaded_etcd.etcdctl_command("get", "--prefix", PREFIX.decode())
    env = dict(os.environ, ETCDCTL_API="3")

    def run() -> None:
        with open(os.devnull, "wb") as devnull:
            subprocess.run(command, stdout=devnull, stderr=subprocess.PIPE, env=env, check=True)

    _timed_rounds(benchmark, loaded_etcd, "etcdctl", run, 5)
    # Same output, checked once outside the timing: every key arrives.
    listed = subprocess.run(command + ["--keys-only"], capture_output=True, env=env, check=True).stdout.split()
    assert listed == [(PREFIX + b"%04d" % i) for i in range(VALUE_COUNT)]
    peak = subprocess.run(
        [sys.executable, "-S", "-I", "-c", _PEAK_OF_COMMAND, *command], capture_output=True, env=env, check=True
    ).stdout
    benchmark.extra_info["peak_rss_mb"] = int(peak) / 2**20
    _record(benchmark, "etcdctl")


def _etcd3_python() -> Path:
    python = ETCD3_VENV / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import etcd3"], capture_output=True).returncode:
        venv.EnvBuilder(with_pip=True, clear=True).create(ETCD3_VENV)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(ETCD3_REQUIREMENTS)],
            check=True, stdout=subprocess.DEVNULL,
        )
    return python


def test_etcd3_get_prefix(benchmark: Any, loaded_etcd: EtcdProcess) -> None:
    python = _etcd3_python()
    proc = subprocess.Popen(
        [str(python), str(ETCD3_SCRIPT), "--endpoint", loaded_etcd.endpoint, "--prefix", PREFIX.decode(),
         "--max-receive", str(ETCD3_MAX_RECEIVE)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    requests, answers = proc.stdin, proc.stdout
    assert requests is not None and answers is not None
    replies: List[Dict[str, Any]] = []

    def run() -> None:
        requests.write("run\n")
        requests.flush()
        replies.append(json.loads(answers.readline()))

    try:
        _timed_rounds(benchmark, loaded_etcd, "etcd3", run, 5)
    finally:
        requests.close()
        proc.wait(60)
    errors = [r for r in replies if "error" in r]
    assert not errors, f"python-etcd3 get_prefix failed: {errors[0]}"
    assert all((r["count"], r["bytes"]) == (VALUE_COUNT, VALUE_COUNT * VALUE_SIZE) for r in replies)
    benchmark.extra_info["peak_rss_mb"] = max(r["maxrss_bytes"] for r in replies) / 2**20
    benchmark.extra_info["max_receive_message_length"] = ETCD3_MAX_RECEIVE
    _record(benchmark, "etcd3")


# -- peak RSS of one read in a fresh process ----------------------------------------------------------------------


def _proc_status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from /proc (Linux).

    VmHWM is the peak of this process's own address space.  ``ru_maxrss`` is not used for it: after a
    vfork + exec (how subprocess starts children) it starts at the PARENT's peak, here the whole pytest run's.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_main(which: str, endpoint: str) -> None:
    async def run() -> Tuple[int, int, int]:
        if which == "list_stream":
            from streamcodec.storage import EtcdStore

            store = EtcdStore([endpoint])
            before = _proc_status_bytes("VmRSS")
            try:
                result = await list_stream_read(store, PREFIX)
            finally:
                await store.close()
        else:
            async with grpc.aio.insecure_channel(endpoint, options=_channel_options()) as channel:
                before = _proc_status_bytes("VmRSS")
                result = await bare_paged_read(channel, PREFIX)
        return before, result[0], result[1]

    before, count, total = asyncio.run(run())
    assert (count, total) == (VALUE_COUNT, VALUE_COUNT * VALUE_SIZE), (count, total)
    print(json.dumps({"rss_before_read_mb": before / 2**20, "peak_rss_mb": _proc_status_bytes("VmHWM") / 2**20}))


#: Runs a command and prints its peak RSS (ru_maxrss from wait4).  A fresh, tiny interpreter (-S -I)
#: starts it, so the child's ru_maxrss does not begin at the big pytest process's peak.
_PEAK_OF_COMMAND = """
import os, subprocess, sys
with open(os.devnull, "wb") as devnull:
    proc = subprocess.Popen(sys.argv[1:], stdout=devnull, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(proc.stderr.read().decode(errors="replace"))
print(usage.ru_maxrss * 1024)
"""


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss":
        _rss_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: bench_storage.py --rss {list_stream|bare_paged} HOST:PORT  (run the benchmarks with pytest)")
