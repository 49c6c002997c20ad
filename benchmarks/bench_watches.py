"""Idle watches on `streamcodec serve` at its defaults: memory per watch and how fast a write reaches them all.

N loopback clients (one asyncio process, this one) each open a watch of one collection and read
nothing until a write; the server is a separate process on etcd 3.5.  Recorded in extra_info: the
server's RSS growth per open watch, and the p50 / p99 / max time from a write's response to its event
arriving on every watch (three writes; the round's time is the slowest of them).

    .venv/bin/pytest benchmarks/bench_watches.py --benchmark-only -s

BENCH_WATCHES sets N (default 1000; mind the open-files limit of the shell).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any, Iterator, List, Tuple

import httpx
import pytest

from streamcodec.local_etcd import EtcdProcess
from tests.apiserver_harness import free_port, proc_status_bytes, wait_until_serving

WATCHES = int(os.environ.get("BENCH_WATCHES", "1000"))
NS = "/api/v1/namespaces/default/secrets"


@pytest.fixture(scope="module")
def server() -> Iterator[Tuple[int, "subprocess.Popen[bytes]"]]:
    etcd = EtcdProcess("3.5").start()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcodec", "serve", "--etcd", etcd.endpoint, "--listen", f"127.0.0.1:{port}",
         "--log-level", "warning"],
    )
    try:
        wait_until_serving(port, proc)
        yield port, proc
    finally:
        proc.kill()
        proc.wait()
        etcd.close()


def test_idle_watches(benchmark: Any, server: Tuple[int, "subprocess.Popen[bytes]"]) -> None:
    port, proc = server
    benchmark.group = "idle-watches"
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    rv = c.post(NS, json={"metadata": {"name": "x"}}).json()["metadata"]["resourceVersion"]
    before = proc_status_bytes(proc.pid, "VmRSS")
    latencies: List[float] = []
    grown: List[int] = []

    async def main() -> None:
        request = f"GET {NS}?watch=1&resourceVersion={rv}&timeoutSeconds=900 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        conns = []
        for i in range(WATCHES):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(request)
            conns.append((r, w))
            if i % 500 == 499:
                await asyncio.sleep(0.2)
        for r, _ in conns:
            await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
        await asyncio.sleep(2)
        grown.append(proc_status_bytes(proc.pid, "VmRSS") - before)
        for k in range(3):
            name = f"y{k}"
            t0 = time.monotonic()  # from the write request: its own round trip is in every figure

            async def arrival(r: asyncio.StreamReader) -> float:
                while True:
                    line = await r.readline()
                    if f'"{name}"'.encode() in line:
                        return time.monotonic() - t0

            readers = [asyncio.ensure_future(arrival(r)) for r, _ in conns]
            await asyncio.to_thread(c.post, NS, json={"metadata": {"name": name}})
            latencies.extend(await asyncio.wait_for(asyncio.gather(*readers), 120))

        for _, w in conns:
            w.close()

    benchmark.pedantic(lambda: asyncio.run(main()), rounds=1, iterations=1)
    latencies.sort()
    benchmark.extra_info.update(
        watches=WATCHES, rss_growth_per_watch_kib=round(grown[0] / WATCHES / 1024, 1),
        p50_ms=round(latencies[len(latencies) // 2] * 1000, 1), p99_ms=round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        max_ms=round(latencies[-1] * 1000, 1),
    )
    print(f"\n{WATCHES} idle watches: {benchmark.extra_info['rss_growth_per_watch_kib']} KiB each; a write reached all: "
          f"p50 {benchmark.extra_info['p50_ms']} ms, p99 {benchmark.extra_info['p99_ms']} ms, max {benchmark.extra_info['max_ms']} ms")
    assert len(latencies) == 3 * WATCHES
