"""Runs the API server under real uvicorn on a free loopback port, in a thread
with its own event loop, so blocking clients (kubectl, the kubernetes Python
client) and async ones can both talk to it.  Not a test module."""

from __future__ import annotations

import asyncio
import http.client
import socket
import subprocess
import threading
import time
from typing import Any, Coroutine, List, Optional

import uvicorn

from streamcodec.server import App, ServerConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status_bytes(pid: int, field: str) -> int:
    """A memory field of ``/proc/PID/status`` in bytes (``VmRSS``, ``VmHWM`` ...; Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def wait_until_serving(port: int, process: "subprocess.Popen[Any]", timeout: float = 30.0) -> None:
    """Wait until a server process answers ``GET /version`` on ``port``; raise if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/version")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before serving")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not serve within {timeout} s")
        time.sleep(0.1)


class ServerThread:
    """``with ServerThread(endpoint, prefix, **config) as srv: srv.url``

    ``port``: listen there instead of on a free port (e.g. a restarted server on its predecessor's port).
    ``ssl``: uvicorn's ``ssl_*`` keyword arguments (serve HTTPS; ``url`` is then https://);
    ``app_options``: more App keyword arguments (``authenticator``, ``authorizer``, ``audit``).
    ``namespace_lifecycle`` is off unless a test turns it on (ServerConfig's default is on): the tests of
    other things write into throwaway namespaces ("team-a", "a", "x", ...) they never create, and should
    keep testing those things, not kube's NamespaceLifecycle (tests/test_namespace_lifecycle.py does).
    """

    def __init__(self, etcd_endpoint: str, prefix: bytes, *, port: Optional[int] = None, ssl: Optional[dict] = None,
                 app_options: Optional[dict] = None, namespace_lifecycle: bool = False, **config: Any) -> None:
        key_root = prefix.decode().rstrip("/")
        server_config = ServerConfig(key_root=key_root, namespace_lifecycle=namespace_lifecycle, **config)
        self.app = App(etcd_endpoints=[etcd_endpoint], config=server_config, **(app_options or {}))
        self.port = port if port is not None else free_port()
        self.url = f"{'https' if ssl else 'http'}://127.0.0.1:{self.port}"
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2,
                **self.app.uvicorn_options(), **(ssl or {}),
            )
        )
        self._thread = threading.Thread(target=self._run, name="uvicorn-test-server", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self._server.serve()

        asyncio.run(main())

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(15)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        """Run ``coro`` in the server's loop (to use the server's own store)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def server_tasks(self) -> int:
        """Tasks alive in the server loop besides uvicorn's own serve task."""
        async def count() -> int:
            current = asyncio.current_task()
            return sum(1 for t in asyncio.all_tasks() if t is not current and not t.done())
        return int(self.call(count()))

    def wait_idle(self, timeout: float = 10.0) -> dict:
        """Wait until no stream is active and the pool holds no buffer; return the stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.app.stats()
            if stats["active_streams"] == 0 and stats["pool"].in_use == 0:
                return stats
            if time.monotonic() > deadline:
                return stats
            time.sleep(0.02)


def open_idle_watches(port: int, request: bytes, count: int) -> List[socket.socket]:
    """``count`` connections that sent ``request`` (a watch) and got their 200 response's head, in bursts
    of 500 (the server's accept backlog is finite)."""
    conns: List[socket.socket] = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(request)
        conns.append(sock)
        if i % 500 == 499:
            time.sleep(0.2)
    for sock in conns:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, "the server closed a watch"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
    return conns
