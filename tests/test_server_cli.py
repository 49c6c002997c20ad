"""``streamcodec serve`` as a real process (python -m streamcodec.cli) against real etcd."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx

from tests.apiserver_harness import free_port


def test_help_explains_every_option() -> None:
    out = subprocess.run([sys.executable, "-m", "streamcodec", "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--etcd", "--listen", "--list-mode", "--pool-bytes", "--buffer-bytes", "--max-streams",
                   "--stall-timeout", "--key-root", "--etcd-cafile", "--etcd-username"):
        assert option in out
    assert "streaming" in out and "buffered" in out and "429" in out


def test_bad_arguments_exit_non_zero_with_a_message() -> None:
    proc = subprocess.run([sys.executable, "-m", "streamcodec", "serve", "--etcd", "x:1", "--listen", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "HOST:PORT" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "streamcodec", "serve", "--etcd", "x:1", "--pool-bytes", "lots"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "byte size" in proc.stderr


def test_serve_runs_and_serves_lists(etcd: Any, prefix: bytes) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcodec", "serve", "--etcd", f"http://{etcd.endpoint}", "--listen", f"127.0.0.1:{port}",
         "--list-mode", "buffered", "--pool-bytes", "8M", "--key-root", prefix.decode().rstrip("/"), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(url + "/version", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        cm = {"metadata": {"name": "cm"}, "data": {"a": "b"}}
        # kube's NamespaceLifecycle, on by default: ns1 must be created first, as with kube-apiserver
        r = httpx.post(url + "/api/v1/namespaces/ns1/configmaps", json=cm, timeout=10)
        assert r.status_code == 404 and r.json()["message"] == 'namespaces "ns1" not found', r.text
        assert httpx.post(url + "/api/v1/namespaces", json={"metadata": {"name": "ns1"}}, timeout=10).status_code == 201
        r = httpx.post(url + "/api/v1/namespaces/ns1/configmaps", json=cm, timeout=10)
        assert r.status_code == 201
        listed = json.loads(httpx.get(url + "/api/v1/configmaps", timeout=10).content)
        assert listed["kind"] == "ConfigMapList" and [i["metadata"]["name"] for i in listed["items"]] == ["cm"]
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why it stopped
        assert proc.wait(15) in (0, -15)
    assert b"Traceback" not in proc.stderr.read()
