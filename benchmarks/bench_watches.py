"""Idle watches at the servers' defaults: memory per watch and how fast a write reaches them all.

N loopback clients (one process, this one, reading them all in one epoll loop) each open a watch of one collection and read
nothing until a write.  The servers, measured in the same run on one etcd 3.5: ``streamcodec serve``
and the Kubernetes peer (the real ``k8s.io/apiserver`` 0.36 handlers, watch cache and etcd3
storage, tests/go/kubeapiserver).  Recorded in extra_info: each server's RSS growth per open
watch, and the p50 / p99 / max time from a write's request to its event arriving on every watch
(three writes), and the ratios streamcodec / peer.  The client decodes nothing: it looks for the
object's name in each line, so the figures are the servers' and the loopback's, plus this
process's reading of N sockets on the same two cores.  Two floors are measured beside them
(benchmarks/connection_floor.py): the RSS per idle streaming connection of uvicorn with the least
ASGI streaming app, and of a bare asyncio Protocol, which also fans each write out as one prepared
chunk written to every connection (the least a write's reaching N watches costs in one Python process).

    .venv/bin/pytest benchmarks/bench_watches.py --benchmark-only -s

BENCH_WATCHES sets N (default 1000; the open-files limit of the shell must allow N + ~100).
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import httpx
import pytest

from streamcodec.local_etcd import EtcdProcess
from tests.apiserver_harness import free_port, open_idle_watches, proc_status_bytes, wait_until_serving
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


def _open_watches(port: int, request: bytes) -> List[socket.socket]:
    """WATCHES watch connections whose response headers have come, non-blocking."""
    conns = open_idle_watches(port, request, WATCHES)
    for sock in conns:
        sock.setblocking(False)
    return conns


def _arrivals(conns: List[socket.socket], marker: bytes, t0: float, deadline: float) -> List[float]:
    """Seconds from ``t0`` until ``marker`` came on each connection: one epoll loop, a recv per
    readiness (asyncio streams, used before, made this client most of what was measured: the peer's
    p99 at 10,000 watches was 740 ms with them, 305 ms with this)."""
    found: List[float] = []
    tails = {sock.fileno(): b"" for sock in conns}
    with selectors.DefaultSelector() as sel:
        for sock in conns:
            sel.register(sock, selectors.EVENT_READ)
        while len(found) < len(conns):
            ready = sel.select(max(0.0, deadline - time.monotonic()))
            assert ready or time.monotonic() < deadline, f"{len(conns) - len(found)} watches saw no {marker!r}"
            now = time.monotonic()
            for key, _ in ready:
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                data = tails[key.fd] + conn.recv(65536)
                if marker in data:
                    found.append(now - t0)
                    sel.unregister(conn)
                else:
                    tails[key.fd] = data[-len(marker):]
    return found


def _measure(port: int, pid: int) -> Dict[str, float]:
    """Open WATCHES idle watches, then three writes; the RSS growth per watch and the arrival times."""
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    c.post("/api/v1/namespaces", json={"metadata": {"name": "default"}})  # the peer needs it; ours ignores a 409
    rv = c.post(NS, json={"metadata": {"name": "x"}}).json()["metadata"]["resourceVersion"]
    time.sleep(1)
    before = proc_status_bytes(pid, "VmRSS")
    request = f"GET {NS}?watch=1&resourceVersion={rv}&timeoutSeconds=900 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    conns = _open_watches(port, request)
    latencies: List[float] = []
    try:
        time.sleep(2)
        grown = proc_status_bytes(pid, "VmRSS") - before
        for k in range(3):
            name = f"y{k}"
            t0 = time.monotonic()  # from the write request: its own round trip is in every figure
            writer = threading.Thread(target=c.post, args=(NS,), kwargs={"json": {"metadata": {"name": name}}})
            writer.start()
            latencies.extend(_arrivals(conns, f'"{name}"'.encode(), t0, t0 + 120))
            writer.join(30)
    finally:
        for sock in conns:
            sock.close()
    assert len(latencies) == 3 * WATCHES
    latencies.sort()
    return {
        "rss_growth_per_watch_kib": round(grown / WATCHES / 1024, 1),
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


@pytest.mark.parametrize("floor", ["asgi", "asyncio"])
def test_idle_connection_floor(benchmark: Any, floor: str) -> None:
    """What a process holds per idle streaming connection at the least (benchmarks/connection_floor.py):
    uvicorn (h11) with the least ASGI streaming app, and a bare asyncio Protocol; beside the servers' figures.
    The bare protocol also fans each write out (one prepared chunk written to every connection): the
    least a write's reaching every watch costs in one Python process, measured as the servers are."""
    benchmark.group = "idle-watches"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.connection_floor", floor, str(port)])
    try:
        wait_until_serving(port, proc)
        time.sleep(1)
        figures: Dict[str, float] = {}
        if floor == "asyncio":
            benchmark.pedantic(lambda: figures.update(_measure(port, proc.pid)), rounds=1, iterations=1)
        else:
            before = proc_status_bytes(proc.pid, "VmRSS")

            def measure() -> None:
                conns = _open_watches(port, f"GET {NS}?watch=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                try:
                    time.sleep(2)
                    figures["rss_growth_per_watch_kib"] = round((proc_status_bytes(proc.pid, "VmRSS") - before) / WATCHES / 1024, 2)
                finally:
                    for sock in conns:
                        sock.close()

            benchmark.pedantic(measure, rounds=1, iterations=1)
    finally:
        proc.kill()
        proc.wait()
    benchmark.extra_info.update(watches=WATCHES, **figures)
    kib = figures["rss_growth_per_watch_kib"]
    fanout = f"; a write reached all: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms" if "p99_ms" in figures else ""
    print(f"\nfloor ({'uvicorn h11 + the least ASGI streaming app' if floor == 'asgi' else 'bare asyncio Protocol'}): "
          f"{WATCHES} idle streams, {kib} KiB each{fanout}"
          + (f"; streamcodec / this floor: {round(RESULTS['streamcodec']['rss_growth_per_watch_kib'] / kib, 2)} x"
             + (f" memory, {round(RESULTS['streamcodec']['p99_ms'] / figures['p99_ms'], 2)} x p99" if fanout else "")
             if "streamcodec" in RESULTS else ""))
