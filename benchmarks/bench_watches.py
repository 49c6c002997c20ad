"""Idle watches at the servers' defaults: memory per watch and how fast a write reaches them all.

N loopback clients (one asyncio process, this one) each open a watch of one collection and read
nothing until a write.  The servers, measured in the same run on one etcd 3.5: ``streamcodec serve``
and the Kubernetes peer (the real ``k8s.io/apiserver`` 0.36 handlers, watch cache and etcd3
storage, tests/go/kubeapiserver).  Recorded in extra_info: each server's RSS growth per open
watch, and the p50 / p99 / max time from a write's request to its event arriving on every watch
(three writes), and the ratios streamcodec / peer.  The client decodes nothing: it looks for the
object's name in each line, so the figures are the servers' and the loopback's, plus this
process's reading of N sockets on the same two cores.

    .venv/bin/pytest benchmarks/bench_watches.py --benchmark-only -s

BENCH_WATCHES sets N (default 1000; the open-files limit of the shell must allow N + ~100).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import httpx
import pytest

from streamcodec.local_etcd import EtcdProcess
from tests.apiserver_harness import free_port, proc_status_bytes, wait_until_serving
from tests.kube_apiserver_harness import KubeAPIServer, provision_kube_apiserver

WATCHES = int(os.environ.get("BENCH_WATCHES", "1000"))
NS = "/api/v1/namespaces/default/secrets"

#: server -> its figures, for the ratio reported by the last case
RESULTS: Dict[str, Dict[str, float]] = {}


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdProcess]:
    process = EtcdProcess("3.5").start()
    try:
        yield process
    finally:
        process.close()


def _streamcodec(etcd: EtcdProcess) -> Tuple[int, int, Callable[[], None]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcodec", "serve", "--etcd", etcd.endpoint, "--listen", f"127.0.0.1:{port}",
         "--log-level", "warning"],
    )
    wait_until_serving(port, proc)

    def stop() -> None:
        proc.kill()
        proc.wait()

    return port, proc.pid, stop


def _peer(etcd: EtcdProcess) -> Tuple[int, int, Callable[[], None]]:
    server = KubeAPIServer(provision_kube_apiserver(), etcd.endpoint, prefix="/registry/bench-watches").start()
    return server.port, server.pid, server.close


def _measure(port: int, pid: int) -> Dict[str, float]:
    """Open WATCHES idle watches, then three writes; the RSS growth per watch and the arrival times."""
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    c.post("/api/v1/namespaces", json={"metadata": {"name": "default"}})  # the peer needs it; ours ignores a 409
    rv = c.post(NS, json={"metadata": {"name": "x"}}).json()["metadata"]["resourceVersion"]
    time.sleep(1)
    before = proc_status_bytes(pid, "VmRSS")
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
        grown.append(proc_status_bytes(pid, "VmRSS") - before)
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

    asyncio.run(main())
    assert len(latencies) == 3 * WATCHES
    latencies.sort()
    return {
        "rss_growth_per_watch_kib": round(grown[0] / WATCHES / 1024, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
    }


@pytest.mark.parametrize("server", ["streamcodec", "k8s.io/apiserver"])
def test_idle_watches(benchmark: Any, etcd: EtcdProcess, server: str) -> None:
    benchmark.group = "idle-watches"
    port, pid, stop = (_streamcodec if server == "streamcodec" else _peer)(etcd)
    try:
        figures: Dict[str, float] = {}
        benchmark.pedantic(lambda: figures.update(_measure(port, pid)), rounds=1, iterations=1)
    finally:
        stop()
    RESULTS[server] = figures
    benchmark.extra_info.update(watches=WATCHES, **figures)
    print(f"\n{server}: {WATCHES} idle watches, {figures['rss_growth_per_watch_kib']} KiB each; a write reached all: "
          f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms")
    if len(RESULTS) == 2:
        ours, peer = RESULTS["streamcodec"], RESULTS["k8s.io/apiserver"]
        ratios = {f"ratio_{k}": round(ours[k] / peer[k], 2) for k in ours if peer[k]}
        benchmark.extra_info.update(ratios)
        print("streamcodec / k8s.io/apiserver: " + ", ".join(f"{k[6:]} {v} x" for k, v in ratios.items()))
