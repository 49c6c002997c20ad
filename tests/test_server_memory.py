"""The server's memory promise per concurrent watch-list stream, measured, on real etcd.

``streamcodec serve`` runs as a separate process (uvicorn, the real CLI) at its
defaults (shared scans on) and at one other setting (a pool of exactly 4 buffers
per stream, private scans) over a collection of N Secrets of ~S bytes;
STREAMS clients read a watch-list each concurrently until the
initial-events-end BOOKMARK.  The server process's peak
RSS growth (kernel VmHWM, reset before the streams start) and its tracemalloc
peak over the streams are asserted per stream, for N and for a collection 5x
larger with the SAME bounds: memory does not grow with the collection.

Bounds per stream (S_max = largest stored object, B = --buffer-bytes,
P = --etcd-page-bytes):

* RSS growth <= 2 * S_max + B: the issue's target (one stream's pool
  buffer plus two objects in flight).  Met with room: a buffer's pages
  are resident only where written and the writer flushes every 256 KiB.
* tracemalloc peak growth <= B + P + S_max + 256 KiB: a new pool buffer
  counts whole here (allocated, even where not resident), plus a page in
  flight (P budgets the response and grpc.aio's transient copy of it), plus
  one object's send copies; 256 KiB covers per-stream Python objects (tasks,
  grpc call, HTTP framing), 4x less than one object, so holding a second
  page or a second copy of the values fails the bound.

Measured on a 2-core VM (8 streams, 1 MiB Secrets): RSS 3.4-5.0 MiB per
stream against 6.0, tracemalloc 4.6-5.3 MiB against 7.25, at 40, 200 and
800 objects alike.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from streamcodec.storage.etcd import DEFAULT_PAGE_BYTES
from streamcodec.server.objects import encode_for_storage
from streamcodec.storage import EtcdStore
from streamcodec.local_etcd import EtcdProcess, stop_process
from streamcodec.limits import DEFAULT_BUFFER_SIZE
from tests.apiserver_harness import free_port, proc_status_bytes, wait_until_serving

pytestmark = pytest.mark.slow

KiB, MiB = 1 << 10, 1 << 20
PAYLOAD_BYTES = 768 * KiB  # base64 -> a ~1 MiB stored Secret, the size of the Secrets
BUFFER_BYTES = DEFAULT_BUFFER_SIZE  # what `streamcodec serve` uses unless told otherwise
PAGE_BYTES = DEFAULT_PAGE_BYTES
STREAMS = 8
SMALL, LARGE = 40, 200  # the second collection is 5x the first
#: (name, flags): the defaults, and one other setting with every size given
SETTINGS = [
    ("defaults", []),
    ("private scans", ["--buffer-bytes", str(BUFFER_BYTES), "--pool-bytes", str(4 * STREAMS * BUFFER_BYTES),
                       "--etcd-page-bytes", str(PAGE_BYTES), "--no-shared-scans"]),
]
WATCH_LIST = "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"

#: Runs ``streamcodec serve``; SIGUSR1 starts tracemalloc, SIGUSR2 writes its peak to argv[1] and stops it.
SERVER = r"""
import json, os, signal, sys, tracemalloc
from streamcodec.cli import main

report = sys.argv[1]

def write(data):
    with open(report + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(report + ".tmp", report)

def start(*_):
    tracemalloc.start()
    write({"tracing": True})

def stop(*_):
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    write({"tracing": False, "traced_peak": peak, "traced_end": current})

signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.exit(main(sys.argv[2:]))
"""


async def _load(endpoint: str, prefix: bytes, start: int, stop: int) -> int:
    """Store Secrets ``start..stop-1``; returns the largest stored value's size."""
    payload = base64.b64encode(bytes(range(256)) * (PAYLOAD_BYTES // 256)).decode()
    largest = 0
    async with EtcdStore([endpoint], max_object_bytes=2 * PAYLOAD_BYTES) as store:
        for i in range(start, stop):
            name = f"secret-{i:05d}"
            value = encode_for_storage({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": "default"}, "data": {"blob": payload},
            })  # fmt: skip
            largest = max(largest, len(value))
            await store.put(prefix + name.encode(), value)
    return largest


def _watch_list(port: int, expected: int) -> int:
    """Read one JSON watch-list up to its initial-events-end bookmark; returns the ADDED events seen."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", f"/api/v1/namespaces/default/secrets?{WATCH_LIST}&timeoutSeconds=120")
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        added = 0
        while True:
            line = resp.readline()
            assert line, f"stream ended after {added} of {expected} objects without the bookmark"
            event = json.loads(line)  # stdlib json: independent of streamcodec
            if event["type"] == "BOOKMARK":
                assert event["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
                return added
            assert event["type"] == "ADDED", event["type"]
            added += 1
    finally:
        conn.close()


@contextlib.contextmanager
def serve(etcd: EtcdProcess, prefix: bytes, tmp_path: Path, flags: List[str]) -> Iterator[Dict[str, Any]]:
    """A fresh ``streamcodec serve`` process: each collection size is measured from the same start."""
    port = free_port()
    report = tmp_path / "tracemalloc.json"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(report), "serve", "--etcd", etcd.endpoint, "--listen", f"127.0.0.1:{port}",
         "--key-root", prefix.decode().rstrip("/"), "--log-level", "warning", *flags],
        env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until_serving(port, proc)
        yield {"port": port, "pid": proc.pid, "report": report}
    finally:
        stop_process(proc, 15)


def _signal_and_wait(pid: int, signum: int, report: Path, tracing: bool) -> Dict[str, Any]:
    os.kill(pid, signum)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if report.exists():
            data = json.loads(report.read_text())
            if data["tracing"] is tracing:
                return data
        time.sleep(0.02)
    raise AssertionError(f"the server did not answer signal {signum}")


def measure_streams(server: Dict[str, Any], expected: int) -> Dict[str, int]:
    pid, port = server["pid"], server["port"]
    assert _watch_list(port, expected) == expected  # warm up: imports, gRPC channel, code paths
    time.sleep(0.3)
    baseline = proc_status_bytes(pid, "VmRSS")
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS now: the peak below is the streams' own
    _signal_and_wait(pid, signal.SIGUSR1, server["report"], tracing=True)
    counts: Dict[int, Any] = {}

    def client(i: int) -> None:
        try:
            counts[i] = _watch_list(port, expected)
        except BaseException as exc:  # reported in the main thread
            counts[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    peak = proc_status_bytes(pid, "VmHWM")
    traced = _signal_and_wait(pid, signal.SIGUSR2, server["report"], tracing=False)
    for i in range(STREAMS):
        if isinstance(counts.get(i), BaseException):
            raise counts[i]
        assert counts.get(i) == expected, f"client {i} saw {counts.get(i)} of {expected} objects"
    return {"rss_growth": peak - baseline, "traced_peak": traced["traced_peak"]}


def test_watch_list_memory_per_stream_is_flat_in_collection_size(
    etcd: EtcdProcess, prefix: bytes, tmp_path: Path
) -> None:
    store_prefix = prefix + b"secrets/default/"
    largest = asyncio.run(_load(etcd.endpoint, store_prefix, 0, SMALL))
    for count in (SMALL, LARGE):
        if count > SMALL:
            largest = max(largest, asyncio.run(_load(etcd.endpoint, store_prefix, SMALL, count)))
        for name, flags in SETTINGS:
            with serve(etcd, prefix, tmp_path, flags) as server:
                result = measure_streams(server, count)
            rss_per_stream = result["rss_growth"] / STREAMS
            traced_per_stream = result["traced_peak"] / STREAMS
            rss_bound = 2 * largest + BUFFER_BYTES
            traced_bound = BUFFER_BYTES + PAGE_BYTES + largest + 256 * KiB
            print(f"{name}: N={count} x {largest} B, {STREAMS} streams: RSS {rss_per_stream / MiB:.2f} MiB/stream "
                  f"(bound {rss_bound / MiB:.2f}), tracemalloc {traced_per_stream / MiB:.2f} MiB/stream "
                  f"(bound {traced_bound / MiB:.2f})")  # fmt: skip
            assert rss_per_stream <= rss_bound, f"{name}, N={count}: server RSS grew {rss_per_stream / MiB:.2f} MiB per stream"
            assert traced_per_stream <= traced_bound, (
                f"{name}, N={count}: server tracemalloc peak {traced_per_stream / MiB:.2f} MiB per stream"
            )
