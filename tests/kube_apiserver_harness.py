"""Runs the Kubernetes API server peer (tests/go/kubeapiserver: a minimal API server on the real k8s.io/apiserver
0.36 code, built by scripts/provision-kube-apiserver) against an etcd, on a free loopback port.  Not a test module.

    binary = provision_kube_apiserver()
    with KubeAPIServer(binary, etcd.endpoint, prefix="/registry/test-x") as kube:
        httpx.get(kube.url + "/api/v1/namespaces/default/secrets")
        kube.peak_rss_bytes()

Every server started here is bounded in time (``--max-seconds``, and SIGKILL when the spawning main thread
dies, as storage/etcd_process.py does for etcd) and stopped on leaving the block (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pytest

from streamcodec.local_etcd import die_with_parent_prefix, stop_process
from tests.apiserver_harness import free_port, proc_status_bytes

ROOT = Path(__file__).resolve().parent.parent


def provision_kube_apiserver(timeout: float = 1800) -> str:
    """Path of the server binary (fetches Go + k8s.io/apiserver and builds on first use).  Fails, never skips."""
    try:
        proc = subprocess.run(
            [str(ROOT / "scripts" / "provision-kube-apiserver")], capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/provision-kube-apiserver did not finish within {timeout} s: {exc.stderr!r}", pytrace=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) != 1 or not os.access(lines[0], os.X_OK):
        pytest.fail(f"kube-apiserver peer unavailable (scripts/provision-kube-apiserver): {proc.stderr.strip()}", pytrace=False)
    return lines[0]


class KubeAPIServerError(RuntimeError):
    """The server did not come up; the message ends with its log tail."""


class KubeAPIServer:
    """One server process: ``url``, ``port``, ``pid``, ``listening`` (the JSON line it prints once listening:
    feature gates, storage media type ...), ``rss_bytes()``, ``peak_rss_bytes()`` (VmHWM), ``log_tail()``.

    ``watch_cache``: the watch cache in front of etcd (kube-apiserver's default: on).  ``max_seconds``: the
    server exits by itself after that long, whatever happens to the test.  ``extra_args``: more flags
    (``--feature-gates=...``, ``--v=4`` ...).
    """

    def __init__(
        self,
        binary: str,
        etcd_endpoint: str,
        *,
        prefix: str = "/registry",
        watch_cache: bool = True,
        port: Optional[int] = None,
        max_seconds: float = 900,
        start_timeout: float = 60,
        stop_timeout: float = 10,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.etcd_endpoint = etcd_endpoint
        self.prefix = prefix.rstrip("/") or "/"
        self.watch_cache = watch_cache
        self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.max_seconds = max_seconds
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = list(extra_args)
        self.listening: Dict[str, Any] = {}
        self._proc: Optional["subprocess.Popen[bytes]"] = None
        self._tmp = Path(tempfile.mkdtemp(prefix="streamcodec-kube-apiserver-"))
        self.log_file = self._tmp / "server.log"
        self._out_file = self._tmp / "stdout"

    def command(self) -> List[str]:
        endpoint = self.etcd_endpoint if "://" in self.etcd_endpoint else f"http://{self.etcd_endpoint}"
        return [
            self.binary, f"--etcd-servers={endpoint}", f"--etcd-prefix={self.prefix}",
            f"--listen=127.0.0.1:{self.port}", f"--watch-cache={'on' if self.watch_cache else 'off'}",
            f"--max-seconds={self.max_seconds:g}", *self.extra_args,
        ]

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the server is not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return None if self._proc is None else self._proc.poll()

    def start(self) -> "KubeAPIServer":
        if self.running:
            raise RuntimeError(f"already running (pid {self.pid})")
        with open(self.log_file, "ab") as log, open(self._out_file, "wb") as out:
            self._proc = subprocess.Popen(
                (die_with_parent_prefix() if threading.current_thread() is threading.main_thread() else [])
                + self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()},
            )
        try:
            self.wait_healthy(self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.listening = self._listening_line()
        return self

    def _listening_line(self) -> Dict[str, Any]:
        try:
            for line in self._out_file.read_text("utf-8", "replace").splitlines():
                doc = json.loads(line)
                if isinstance(doc, dict) and doc.get("event") == "listening":
                    return doc
        except (OSError, ValueError):
            pass
        return {}

    def wait_healthy(self, timeout: float) -> None:
        """Wait until ``GET /healthz`` answers 200 (etcd reachable, post-start hooks done, watch caches initialized)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise KubeAPIServerError(f"the server exited with status {code} before serving\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                try:
                    conn.request("GET", "/healthz")
                    resp = conn.getresponse()
                    body = resp.read()
                finally:
                    conn.close()
                if resp.status == 200:
                    return
                last = f"{resp.status} {body[:300]!r}"
            except OSError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise KubeAPIServerError(f"/healthz not 200 within {timeout} s ({last})\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``stop_timeout`` seconds; returns the exit status."""
        proc = self._proc
        if proc is None:
            return None
        return stop_process(proc, self.stop_timeout)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "KubeAPIServer":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self.running and self._proc else "stopped"
        return f"<KubeAPIServer {self.url} etcd {self.etcd_endpoint}{self.prefix} {state}>"

    # -- inspection --
    def rss_bytes(self) -> int:
        """Resident memory now (``VmRSS``)."""
        return proc_status_bytes(self.pid, "VmRSS")

    def peak_rss_bytes(self) -> int:
        """Peak resident memory since the start (``VmHWM`` of /proc/PID/status)."""
        return proc_status_bytes(self.pid, "VmHWM")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
