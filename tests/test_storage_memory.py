"""The memory promise of ``EtcdStore.list_stream``, measured, on real etcd.

A fresh subprocess streams a prefix of N objects of S bytes and reports its
peak RSS growth and its tracemalloc peak; the parent samples etcd's own
memory meanwhile.  Asserted for N = 400 and for a 5x larger collection
(N = 2000) with the SAME bounds, which is the point: memory does not grow
with the collection.  Run at the library's defaults (``EtcdStore([endpoint])``:
2 MiB pages) and at one other setting (2.5 MiB pages, objects of at most
S_max + 4 KiB), so a default that breaks the promise fails here.

Bounds (S_max = 1 MiB, page budget P):

* client RSS growth (exact: the kernel's VmHWM, reset before streaming)
  <= 2 * S_max + 16 MiB;
* client tracemalloc peak <= max(P, RECEIVE_COPY_FACTOR * S_max) + S_max + 256 KiB.
  P covers a page in flight including grpc.aio's transient copy while
  receiving it (see ``streamcodec.storage.etcd.RECEIVE_COPY_FACTOR``), except
  that a page holds at least one object, whose receipt costs
  RECEIVE_COPY_FACTOR * S_max when that is more; S_max is the copy of a page's last
  value the consumer may still hold.  The 256 KiB constant covers the Python
  objects besides the bytes: a few KeyValue tuples and memoryviews (under
  1 KiB), grpc.aio call objects and asyncio bookkeeping (tens of KiB).  It is
  4x smaller than one object, so holding a second page or a second value
  copy fails the assertion;
* etcd anonymous memory (Go heap, not the mmapped bbolt file, whose pages
  are page cache) grows during the read by at most max(256 MiB, N * S / 2),
  i.e. less than half of what one whole-prefix Range must hold for the
  values alone.  Not a flat bound,
  because etcd keeps the last 5000 raft entries -- here every loaded object --
  in memory, and Go's GC lets garbage grow up to the live heap before
  collecting (GOGC=100): measured on 3.5.16, 50-60 MiB at N = 400 but
  390-670 MiB at N = 2000 (3.4.23: ~155 MiB at both), from one-object pages.  A whole-prefix Range needs at least
  N * S (2 GiB at N = 2000) and took etcd 3.5.16 to ~3 GB RSS at N = 400, so
  the bound still tells paged from unpaged reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest

from streamcodec.local_etcd import EtcdProcess
from streamcodec.storage import EtcdStore
from streamcodec.storage.etcd import DEFAULT_PAGE_BYTES, RECEIVE_COPY_FACTOR

pytestmark = pytest.mark.slow

MiB = 1 << 20
OBJECT_BYTES = 1 * MiB
MAX_OBJECT_BYTES = OBJECT_BYTES + 4096  # the value plus its key and framing
TRACEMALLOC_CONSTANT = 256 * 1024
RSS_BOUND = 2 * OBJECT_BYTES + 16 * MiB
#: (name, page_bytes, max_object_bytes): 0 = the library's default
SETTINGS = [("defaults", 0, 0), ("2.5 MiB pages", 5 * MiB // 2, MAX_OBJECT_BYTES)]


def tracemalloc_bound(page_bytes: int) -> int:
    page = max(page_bytes or DEFAULT_PAGE_BYTES, int(RECEIVE_COPY_FACTOR * MAX_OBJECT_BYTES))
    return page + OBJECT_BYTES + TRACEMALLOC_CONSTANT

CHILD = r"""
import asyncio, gc, json, sys, tracemalloc
from streamcodec.storage import EtcdStore

def status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)

async def main(endpoint, prefix, page_bytes, max_object_bytes):
    options = {}
    if page_bytes:  # else the library's defaults
        options = {"page_bytes": page_bytes, "max_object_bytes": max_object_bytes}
    async with EtcdStore([endpoint], **options) as store:
        # warm up: channel, first RPC, code paths -- one full small page
        async for kv in store.list_stream(prefix, limit=2):
            pass
        del kv
        gc.collect()
        # reset the kernel's exact RSS high-water mark (VmHWM) to now, so the peak below
        # is the streaming's own, not the import's (no sampling that could miss a spike).
        # The baseline is the mark the kernel set at the reset; gRPC's threads allocate and
        # free around it, so it is checked against the RSS on both sides, not one reading.
        rss_before = status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        baseline_rss = status_bytes("VmHWM")
        assert baseline_rss <= max(rss_before, status_bytes("VmRSS")) + 1024 * 1024, "VmHWM was not reset"
        tracemalloc.start()
        count = total = 0
        stream = store.list_stream(prefix)
        async for kv in stream:
            count += 1
            total += len(kv.value)
        del kv
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak_rss = status_bytes("VmHWM")
        print(json.dumps({
            "count": count, "bytes": total, "pages": stream.pages,
            "rss_growth": peak_rss - baseline_rss, "baseline_rss": baseline_rss,
            "tracemalloc_peak": peak,
        }))

asyncio.run(main(sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])))
"""


def etcd_anon_bytes(pid: int) -> int:
    """etcd's anonymous resident memory (heap), excluding the file-backed bbolt mmap."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")


async def load(endpoint: str, prefix: bytes, start: int, stop: int) -> None:
    value = b"\xab" * OBJECT_BYTES
    async with EtcdStore([endpoint], max_object_bytes=MAX_OBJECT_BYTES) as store:
        next_index = start

        async def worker() -> None:
            nonlocal next_index
            while next_index < stop:
                i = next_index
                next_index += 1
                await store.put(prefix + b"obj-%06d" % i, value)

        await asyncio.gather(*(worker() for _ in range(16)))


def stream_in_child(server: EtcdProcess, prefix: bytes, page_bytes: int, max_object_bytes: int) -> Dict[str, int]:
    """Run CHILD against ``server`` while sampling etcd's memory; return both."""
    samples: List[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(etcd_anon_bytes(server.pid))
            time.sleep(0.02)

    before = etcd_anon_bytes(server.pid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, server.endpoint, prefix.decode(), str(page_bytes), str(max_object_bytes)],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
    finally:
        done.set()
        sampler.join()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["etcd_anon_growth"] = max(samples + [before]) - before
    result["etcd_samples"] = len(samples)
    return result


def test_list_stream_memory_is_flat_in_collection_size(etcd: EtcdProcess, prefix: bytes, etcd_version: str) -> None:
    results = {}
    loaded = 0
    for count in (400, 2000):  # the second collection is 5x the first; same prefix, grown in place
        asyncio.run(load(etcd.endpoint, prefix, loaded, count))
        loaded = count
        for name, page_bytes, max_object_bytes in SETTINGS:
            result = stream_in_child(etcd, prefix, page_bytes, max_object_bytes)
            results[count, name] = result
            print(f"etcd {etcd.version} N={count} {name}: {json.dumps(result)}")
            assert result["count"] == count and result["bytes"] == count * OBJECT_BYTES
            assert result["pages"] >= count // 4, "pages must hold about page_bytes, not the whole prefix"
            assert result["rss_growth"] <= RSS_BOUND, f"{name}: client RSS grew {result['rss_growth'] / MiB:.1f} MiB"
            assert result["tracemalloc_peak"] <= tracemalloc_bound(page_bytes), (
                f"{name}: client tracemalloc peak {result['tracemalloc_peak'] / MiB:.2f} MiB"
            )
            assert result["etcd_samples"] >= 5, "etcd memory was not sampled during the read"
            etcd_bound = max(256 * MiB, count * OBJECT_BYTES // 2)
            assert result["etcd_anon_growth"] <= etcd_bound, (
                f"etcd heap grew {result['etcd_anon_growth'] / MiB:.0f} MiB"
            )
