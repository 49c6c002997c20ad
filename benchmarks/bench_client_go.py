"""client-go informers syncing 400 x 1 MiB Secrets: this server against the real k8s.io/apiserver, same run.

Each contender is a fresh server process over its own copy of the collection in one etcd 3.5: `streamcodec
serve` at its defaults, and the Go API server built on k8s.io/apiserver 0.36.4 with its watch cache
(tests/go/kubeapiserver; what kube-apiserver runs).  One Go process runs N client-go 0.36.4 informers
(tests/go/informer) with watch-list on or off, in protobuf (client-go's default), JSON or CBOR; every informer
checks its objects by count, bytes and checksum.  One round per case (a sync is tens of seconds); recorded in
extra_info: seconds until the last informer synced, the server's peak RSS growth over its RSS before the
informers started (kernel VmHWM), and whether any informer fell back to LIST.

    .venv/bin/pytest benchmarks/bench_client_go.py --benchmark-only -s                       # the whole matrix
    .venv/bin/pytest benchmarks/bench_client_go.py --benchmark-only -s -k "default and watch-list"   # client-go's defaults

The matrix: format (protobuf, client-go's default; JSON; CBOR with ClientsAllowCBOR/ClientsPreferCBOR) x
watch-list on (client-go's default) or off (LIST then watch) x 1 and 16 informers, both servers.

The floor (``test_client_go_decode_floor``, first in the run): the same informers against a server that
does no work -- our protobuf watch-list response, read once, sent from a file by ``os.sendfile`` to every
request -- so what is left is client-go's own decoding and the kernel's copies on this machine.

Set BENCH_OBJECTS to use fewer Secrets (e.g. for a quick look).
"""

from __future__ import annotations

import base64
import http.client
import multiprocessing
import os
import socket
import subprocess
import sys
from typing import Any, Dict, Tuple

import httpx
import pytest

from benchmarks.bench_shared_scans import serve_file
from streamcodec.local_etcd import EtcdProcess, stop_process
from tests.apiserver_harness import free_port, proc_status_bytes, wait_until_serving
from tests.clientgo_harness import informer_env, provision_client_go, run_informer
from tests.kube_apiserver_harness import KubeAPIServer, provision_kube_apiserver

OBJECTS = int(os.environ.get("BENCH_OBJECTS", "400"))
SIZE = 1024 * 1024
NS = "/api/v1/namespaces/default/secrets"


@pytest.fixture(scope="module")
def binaries() -> Tuple[str, str]:
    return provision_client_go(), provision_kube_apiserver()


def _load(url: str) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(OBJECTS):
            seed = f"secret-{i}-".encode()
            value = (seed * (SIZE // len(seed) + 1))[:SIZE]
            body = {"metadata": {"name": f"s{i:03d}"}, "type": "Opaque", "data": {"payload": base64.b64encode(value).decode()}}
            r = c.post(NS, json=body)
            assert r.status_code == 201, r.text[:300]


class _Ours:
    def __init__(self, etcd: EtcdProcess, prefix: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamcodec", "serve", "--etcd", etcd.endpoint, "--listen", f"127.0.0.1:{self.port}",
             "--key-root", prefix, "--log-level", "warning"],
        )
        wait_until_serving(self.port, self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        stop_process(self.proc)


def _server(kind: str, etcd: EtcdProcess, binaries: Tuple[str, str], prefix: str) -> Any:
    if kind == "streamcodec":
        return _Ours(etcd, prefix)
    server = KubeAPIServer(binaries[1], etcd.endpoint, prefix=prefix, watch_cache=True, max_seconds=1800)
    server.start()
    return server


@pytest.fixture(scope="module")
def loaded(etcd: EtcdProcess, binaries: Tuple[str, str]) -> Dict[str, str]:
    """One copy of the collection per server, written through that server (its own storage format)."""
    prefixes = {}
    for kind in ("streamcodec", "k8s.io/apiserver"):
        prefix = f"/bench-{kind.replace('/', '-').replace('.', '-')}"
        server = _server(kind, etcd, binaries, prefix)
        try:
            _load(server.url)
        finally:
            server.close()
        prefixes[kind] = prefix
    return prefixes


@pytest.mark.parametrize("informers", [1, 16])
def test_client_go_decode_floor(benchmark: Any, etcd: EtcdProcess, binaries: Tuple[str, str], loaded: Dict[str, str],
                                tmp_path: Any, informers: int) -> None:
    benchmark.group = f"client-go-default-on-{informers}"
    server = _server("streamcodec", etcd, binaries, loaded["streamcodec"])
    try:
        body = _protobuf_watch_list(server.url)
    finally:
        server.close()
    path = tmp_path / "watch-list.http"
    path.write_bytes(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.kubernetes.protobuf;stream=watch\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    floor = multiprocessing.get_context("fork").Process(target=serve_file, args=(listener, str(path)), daemon=True)
    floor.start()
    runs = []
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        benchmark.pedantic(lambda: runs.append(run_informer(
            binaries[0], url, informers=informers, content_type="default", watch_list="on",
            env=informer_env("default", "on"), sync_timeout=600, expect_objects=OBJECTS, timeout=700,
        )), rounds=1, iterations=1)
    finally:
        floor.kill()
        floor.join(10)
        listener.close()
    run = runs[0]
    assert sorted(run.synced) == list(range(informers)), run.describe()
    seconds = max(line["seconds"] for line in run.synced.values())
    benchmark.extra_info.update(server="pre-encoded bytes (the floor)", content_type="default", watch_list="on",
                                informers=informers, objects=OBJECTS, synced_seconds=seconds)
    print(f"\n  the floor (sendfile) default watch-list  on x{informers:>2}: synced in {seconds:.2f} s")


def _protobuf_watch_list(url: str) -> bytes:
    """Our watch-list response in protobuf (4-byte length + WatchEvent frames), up to its bookmark."""
    conn = http.client.HTTPConnection(url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1]), timeout=300)
    conn.request("GET", f"{NS}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
                 "&timeoutSeconds=600", headers={"Accept": "application/vnd.kubernetes.protobuf;stream=watch"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read(300)
    body = bytearray()
    frames = 0
    while frames < OBJECTS + 1:  # every ADDED, then the BOOKMARK
        head = resp.read(4)
        assert len(head) == 4, "the watch-list ended before its bookmark"
        frame = resp.read(int.from_bytes(head, "big"))
        body += head + frame
        frames += 1
    conn.close()
    return bytes(body)


@pytest.mark.parametrize("informers", [1, 16])
@pytest.mark.parametrize("watch_list", ["on", "off"], ids=["watch-list", "list-then-watch"])
@pytest.mark.parametrize("content_type", ["default", "json", "cbor"])
@pytest.mark.parametrize("kind", ["streamcodec", "k8s.io/apiserver"])
def test_client_go_sync(benchmark: Any, etcd: EtcdProcess, binaries: Tuple[str, str], loaded: Dict[str, str],
                        kind: str, content_type: str, watch_list: str, informers: int) -> None:
    """One case of the matrix: format x watch-list on (client-go's default) or off (LIST then watch) x informers."""
    benchmark.group = f"client-go-{content_type}-{watch_list}-{informers}"
    server = _server(kind, etcd, binaries, loaded[kind])
    try:
        before = proc_status_bytes(server.pid, "VmRSS")
        with open(f"/proc/{server.pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM from here
        runs = []

        def sync() -> None:
            runs.append(run_informer(
                binaries[0], server.url, informers=informers, content_type=content_type, watch_list=watch_list,
                env=informer_env(content_type, watch_list), sync_timeout=600, expect_objects=OBJECTS, timeout=700,
            ))

        benchmark.pedantic(sync, rounds=1, iterations=1)
        run = runs[0]
        peak = proc_status_bytes(server.pid, "VmHWM")
    finally:
        server.close()
    assert sorted(run.synced) == list(range(informers)), run.describe()
    lists = sum(len(run.requests("list", informer=i)) for i in range(informers))
    benchmark.extra_info.update(
        server=kind, content_type=content_type, watch_list=watch_list, informers=informers, objects=OBJECTS,
        synced_seconds=max(line["seconds"] for line in run.synced.values()),
        peak_rss_growth_mib=round((peak - before) / 2**20, 1), server_rss_before_mib=round(before / 2**20, 1),
        fell_back_to_list=lists > 0,
    )
    print(f"\n{kind:>17} {content_type:>7} watch-list {watch_list:>3} x{informers:>2}: synced in "
          f"{benchmark.extra_info['synced_seconds']:.2f} s, peak RSS growth {benchmark.extra_info['peak_rss_growth_mib']} MiB "
          f"(RSS before {benchmark.extra_info['server_rss_before_mib']} MiB){', FELL BACK TO LIST' if lists and watch_list == 'on' else ''}")
    if watch_list == "on":
        assert lists == 0, "an informer fell back from watch-list to LIST"
    else:
        assert lists >= informers, "an informer with watch-list off did not LIST"
