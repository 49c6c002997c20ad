"""Request bodies decode within a memory bound and without stalling the event loop.

A body of many tiny containers (3 MB of CBOR empty arrays decoded into ~200 MiB of Python lists in
about a second before ``max_body_values``) is refused with a 413 Status from the decoder's checking
scan, before anything is built; a legitimate body near the limit is decoded in a worker thread while
the loop keeps serving.  ``streamcodec serve`` at its defaults, real etcd; a thread probes ``/healthz``
throughout and the server's peak RSS (kernel VmHWM, reset before each request) bounds its memory.

That the loop kept serving is judged by the CPU time of the server's main thread (the event loop's)
during the request, which the machine's load changes far less than wall-clock time: decoding the
inflating bodies on the loop cost it 0.35-1.3 s of CPU.  The slowest ``/healthz`` answer is checked too, with a bound loose enough for a loaded 2-core
machine (it also counts the probe's own scheduling) yet under a second of blocked loop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, List, Tuple

import cbor2
import httpx
import msgpack
import pytest

from streamcodec.limits import DEFAULT_MAX_BODY_VALUES
from streamcodec.local_etcd import stop_process
from tests.apiserver_harness import free_port, proc_status_bytes, wait_until_serving

NS = "/api/v1/namespaces/default/configmaps"
LOOP_CPU = 0.2  # s of the loop thread's CPU one request may cost (measured 0-50 ms, 80 ms on a loaded machine)
SLOWEST_HEALTHZ = 0.5  # s; a blocked loop made it 0.35-1.3 s, a loaded CI machine ~0.36 s at worst seen
BODY_BYTES = 3 * 1024 * 1024  # kube-apiserver's and our default max_body_bytes


class Served:
    def __init__(self, proc: "subprocess.Popen[bytes]", url: str) -> None:
        self.proc, self.url = proc, url

    def loop_cpu(self) -> float:
        """CPU seconds used so far by the server's main thread, where its event loop runs."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def post_measured(self, content_type: str, body: bytes, path: str = NS) -> Tuple[httpx.Response, float, float, float]:
        """POST ``body``: the response, the server's peak RSS growth meanwhile (MiB), the CPU its loop
        thread used for the request (s) and the slowest ``/healthz`` answer (s) of a client polling it
        every 5 ms from before until after."""
        baseline = proc_status_bytes(self.proc.pid, "VmRSS")
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM := the current RSS
        latencies: List[float] = []
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=self.url, timeout=30) as c:
                while not done.is_set():
                    start = time.perf_counter()
                    assert c.get("/healthz").status_code == 200
                    latencies.append(time.perf_counter() - start)
                    time.sleep(0.005)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        time.sleep(0.2)
        cpu_before = self.loop_cpu()
        r = httpx.post(self.url + path, content=body, headers={"Content-Type": content_type}, timeout=60)
        loop_cpu = self.loop_cpu() - cpu_before
        time.sleep(0.2)
        done.set()
        prober.join(30)
        growth = (proc_status_bytes(self.proc.pid, "VmHWM") - baseline) / 2**20
        assert len(latencies) >= 20, latencies  # the probe ran all along
        return r, growth, loop_cpu, max(latencies)


@pytest.fixture(scope="module")
def served(etcd35: Any) -> Iterator[Served]:
    import uuid

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcodec", "serve", "--etcd", etcd35.endpoint, "--listen", f"127.0.0.1:{port}",
         "--key-root", f"/registry/test-{uuid.uuid4().hex}", "--log-level", "warning"],
    )
    try:
        wait_until_serving(port, proc)
        yield Served(proc, f"http://127.0.0.1:{port}")
    finally:
        stop_process(proc, 10)


def _many_empty_arrays(dump: Any, n: int) -> bytes:
    return dump({"metadata": {"name": "inflate"}, "data": {"x": [[]] * n}})


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _pod_of_empty_containers(n: int) -> bytes:
    """Kubernetes protobuf of a Pod whose spec.containers (PodSpec field 2) holds n empty messages."""
    pod = _field(2, _field(2, b"") * n)  # Pod.spec = 2
    type_meta = _field(1, b"v1") + _field(2, b"Pod")
    return b"k8s\x00" + _field(1, type_meta) + _field(2, pod)  # runtime.Unknown: typeMeta 1, raw 2


def _struct_protobuf(obj: Any) -> bytes:
    import streamcodec

    return bytes(streamcodec.ProtoEncoder().encode(obj))


INFLATING = {
    # one byte per empty array: 3 M lists, ~200 MiB and ~1 s of CPU when decoded
    "cbor": ("application/cbor", _many_empty_arrays(cbor2.dumps, BODY_BYTES - 64)),
    "msgpack": ("application/vnd.msgpack", _many_empty_arrays(msgpack.packb, BODY_BYTES - 64)),
    # "[]," is three bytes: 1 M lists
    "json": ("application/json", _many_empty_arrays(lambda o: json.dumps(o, separators=(",", ":")).encode(), BODY_BYTES // 3 - 64)),
    # two bytes per empty Container message: 1.5 M dicts
    "protobuf": ("application/vnd.kubernetes.protobuf", _pod_of_empty_containers(BODY_BYTES // 2 - 64)),
    # an empty Struct Value is four bytes
    "protobuf-struct": ("application/vnd.streamcodec.struct+protobuf", _many_empty_arrays(_struct_protobuf, BODY_BYTES // 4 - 64)),
}


@pytest.mark.parametrize("fmt", sorted(INFLATING))
def test_a_body_of_many_tiny_containers_is_refused_before_it_is_built(served: Served, fmt: str) -> None:
    content_type, body = INFLATING[fmt]
    assert len(body) <= BODY_BYTES
    path = "/api/v1/namespaces/default/pods" if fmt == "protobuf" else NS
    r, growth, loop_cpu, slowest = served.post_measured(content_type, body, path)
    assert r.status_code == 413, r.text[:300]
    status = r.json()
    assert status["kind"] == "Status" and status["reason"] == "RequestEntityTooLarge"
    assert f"more than {DEFAULT_MAX_BODY_VALUES} values" in status["message"]
    # what is left: the body's bytes (received, joined, copied for the decoder), and for Kubernetes
    # protobuf its decoder's index of the fields it may build (~100 bytes each, 131,072 at most);
    # measured 6-9 MiB, 16 for protobuf (before the limit: 56-213 MiB, and the loop blocked 0.35-1.3 s)
    print(f"{fmt}: peak RSS growth {growth:.1f} MiB, loop CPU {loop_cpu * 1e3:.0f} ms, slowest /healthz {slowest * 1e3:.1f} ms")
    assert loop_cpu <= LOOP_CPU, loop_cpu
    assert slowest <= SLOWEST_HEALTHZ, slowest
    assert growth <= (32 if fmt == "protobuf" else 16), growth
    assert httpx.get(served.url + path + "/inflate", timeout=10).status_code == 404


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_a_large_legitimate_body_is_stored_while_the_loop_keeps_serving(served: Served, fmt: str) -> None:
    # a ConfigMap of 50,000 keys: 100,005 values, under the limit; ~1 MB
    data = {f"key-{i:05d}": f"value-{i}" for i in range(50_000)}
    obj = {"metadata": {"name": f"wide-{fmt}"}, "data": data}
    content_type, body = ("application/json", json.dumps(obj).encode()) if fmt == "json" else ("application/cbor", cbor2.dumps(obj))
    r, growth, loop_cpu, slowest = served.post_measured(content_type, body)
    assert r.status_code == 201, r.text[:300]
    assert httpx.get(served.url + NS + f"/wide-{fmt}", timeout=10).json()["data"] == data
    # decoded and checked in a worker thread: the loop waited at most for the compiled decode and
    # encode (measured 35 ms; ~300 ms on the loop before); its objects ~20 MiB (measured 17.5)
    print(f"{fmt}: peak RSS growth {growth:.1f} MiB, loop CPU {loop_cpu * 1e3:.0f} ms, slowest /healthz {slowest * 1e3:.1f} ms")
    assert loop_cpu <= LOOP_CPU, loop_cpu
    assert slowest <= SLOWEST_HEALTHZ, slowest
    assert growth <= 48, growth
