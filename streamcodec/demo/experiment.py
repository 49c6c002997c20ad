"""``streamcodec demo``: the Kubernetes watch-list experiment, in one command.

Kubernetes showed the problem with 400 Secrets of 1 MB and a growing number of
informers: with plain lists the API server's memory grew until it crashed; with
watch-list it stayed flat.  This demo runs the same experiment against
``streamcodec serve``:

1. starts etcd (3.5, above the watch-progress gate) unless ``--etcd`` is given;
2. loads ``--objects`` Secrets of ``--object-bytes`` into namespace ``default``;
3. for each mode — ``buffered`` (classic list), ``streaming`` (streamed list),
   ``watch-list``, ``watch-list-shared`` (the same informers, the server with
   ``--shared-scans``) — and each informer count, starts a fresh server, runs that
   many informer processes at once (list-then-watch, or one watch-list request,
   as client-go's reflector does), checks every object they receive against its
   checksum, and samples the server's RSS throughout;
4. with ``--kube-apiserver BINARY`` (the peer built by the source tree's
   ``scripts/provision-kube-apiserver``: a minimal API server on the real
   k8s.io/apiserver code, its watch cache on as kube-apiserver runs), the same
   runs against that real Kubernetes server, in the same run, on the same etcd
   and the same data (loaded through the peer's own API into its own key
   prefix), with the same informers: modes ``kube-apiserver-list`` (list then
   watch) and ``kube-apiserver-watch-list``;
5. prints a table, writes ``results.json`` and ``memory.png``.

The server runs under a memory limit enforced by this demo's RSS watchdog
(the role the kernel's OOM killer played in the Kubernetes test): when it
passes the limit it is killed and the demo reports at which informer count.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from streamcodec.limits import DEFAULT_BUFFER_SIZE
from streamcodec.local_etcd import stop_process

MODES = ("buffered", "streaming", "watch-list", "watch-list-shared")
#: the real k8s.io/apiserver's modes (with --kube-apiserver): informers that list then watch, or watch-list
PEER_MODES = ("kube-apiserver-list", "kube-apiserver-watch-list")
#: what the informers of each mode do (run_informer's mode): the peer's informers are ours' informers
INFORMER_MODE = {**{m: m for m in MODES}, "kube-apiserver-list": "streaming", "kube-apiserver-watch-list": "watch-list"}
#: The peer's etcd key prefix: its own storage layout (protobuf), apart from our server's /registry.
PEER_PREFIX = "/streamcodec-demo-kube-apiserver"
#: server --list-mode for each demo mode
SERVER_LIST_MODE = {"buffered": "buffered", "streaming": "streaming", "watch-list": "streaming", "watch-list-shared": "streaming"}
#: the modes whose server runs with --shared-scans (their informers are watch-list ones)
SHARED_SCAN_MODES = ("watch-list-shared",)
#: how the table and the plot name each mode
MODE_LABELS = {"watch-list-shared": "watch-list (shared)", "kube-apiserver-list": "kube-apiserver list",
               "kube-apiserver-watch-list": "kube-apiserver watch-list"}
NAMESPACE = "default"
MiB = 1 << 20
#: How often the watchdog reads the server's RSS.  Fast enough to see the
#: build-up of a buffered list (hundreds of MB per second), cheap enough not
#: to steal a core from the server.
SAMPLE_SECONDS = 0.02


# --------------------------------------------------------------------------- data set
def secret_name(i: int) -> str:
    return f"secret-{i:05d}"


def secret_payload(name: str, size: int) -> str:
    """Deterministic base64 text of ``size`` bytes (rounded to 4) for ``name``."""
    raw = hashlib.shake_256(name.encode()).digest(size // 4 * 3)
    return base64.b64encode(raw).decode()


def payload_digest(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()


# --------------------------------------------------------------------------- HTTP helpers
def _conn(url: str, timeout: float = 600.0) -> http.client.HTTPConnection:
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    return http.client.HTTPConnection(host, int(port or 80), timeout=timeout)


def _request(url: str, method: str, path: str, body: Optional[bytes] = None) -> Tuple[int, bytes]:
    conn = _conn(url)
    try:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def load_secrets(url: str, count: int, size: int, progress: bool = True) -> Dict[str, str]:
    """Create the Secrets through the server; returns name → payload sha256."""
    manifest: Dict[str, str] = {}
    base = f"/api/v1/namespaces/{NAMESPACE}/secrets"
    start = time.monotonic()
    for i in range(count):
        name = secret_name(i)
        payload = secret_payload(name, size)
        manifest[name] = payload_digest(payload)
        body = json.dumps(
            {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": name, "namespace": NAMESPACE}, "data": {"payload": payload}},
            separators=(",", ":"),
        ).encode()
        status, text = _request(url, "POST", base, body)
        if status == 409:  # left over from an earlier run against the same etcd
            _request(url, "DELETE", f"{base}/{name}")
            status, text = _request(url, "POST", base, body)
        if status not in (200, 201):
            raise SystemExit(f"loading {name} failed: HTTP {status}: {text[:200]!r}")
        if progress and ((i + 1) * 20 // count != i * 20 // count or i + 1 == count):
            _progress_bar("loading", i + 1, count, start)
    if progress:
        print(file=sys.stderr)
    return manifest


def _progress_bar(label: str, done: int, total: int, start: float) -> None:
    width = 30
    filled = width * done // total
    rate = done / max(time.monotonic() - start, 1e-9)
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({rate:.0f}/s)")
    sys.stderr.flush()


# --------------------------------------------------------------------------- informer (child process)
class ListBodyReader:
    """Parses a JSON list body ``{...,"items":[item,item,...]}`` one item at a time.

    The client side of the experiment must not hold the whole list either, or
    16 informers of 400 MB would measure the clients instead of the server.
    """

    #: A partial item larger than this is an error, not something to buffer.
    MAX_ITEM_CHARS = 64 * MiB

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._pos = 0
        self.head: Optional[Dict[str, Any]] = None
        self.done = False
        self._json = json.JSONDecoder()

    def feed(self, data: bytes) -> Iterator[Any]:
        self._buf = self._buf[self._pos:] + self._text.decode(data)
        self._pos = 0
        if self.head is None:
            cut = self._buf.find('"items":[')
            if cut < 0:
                return
            self.head = json.loads(self._buf[: cut + len('"items":[')] + "]}")
            self._pos = cut + len('"items":[')
        while not self.done:
            buf, pos = self._buf, self._pos
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            self._pos = pos
            if pos >= len(buf):
                return
            if buf[pos] == "]":
                self.done = True
                return
            try:
                item, end = self._json.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if len(buf) - pos > self.MAX_ITEM_CHARS:
                    raise ValueError("list item larger than the reader's limit")
                return  # incomplete: wait for more bytes
            self._pos = end
            yield item


@dataclass
class InformerResult:
    ok: bool
    objects: int = 0
    bytes: int = 0
    started: float = 0.0
    synced: float = 0.0  #: wall-clock time when the initial state was complete
    error: str = ""


def _check(item: Dict[str, Any], manifest: Dict[str, str], seen: Dict[str, bool]) -> None:
    name = item["metadata"]["name"]
    if name not in manifest:
        raise ValueError(f"unexpected object {name!r}")
    if seen.get(name):
        raise ValueError(f"object {name!r} received twice")
    if payload_digest(item["data"]["payload"]) != manifest[name]:
        raise ValueError(f"object {name!r} corrupted (checksum mismatch)")
    seen[name] = True


def run_informer(url: str, mode: str, manifest: Dict[str, str]) -> InformerResult:
    """One informer (:class:`streamcodec.informer.Reflector`): sync the initial state, verify it, then watch briefly.

    ``watch-list``: the reflector's watch-list (no fallback: a refusal is an error).  ``buffered`` /
    ``streaming``: what those modes measure is ONE unpaginated LIST, then a short watch from its
    resourceVersion, so the reflector lists without ``limit`` and watches with ``timeoutSeconds=1``.
    """
    import asyncio

    from streamcodec.informer import Reflector

    res = InformerResult(ok=False, started=time.time())
    seen: Dict[str, bool] = {}

    def check(item: Dict[str, Any]) -> Dict[str, Any]:
        _check(item, manifest, seen)
        # the demo measures the server: 16 informers keeping 400 MB each would measure the clients
        return {"metadata": item.get("metadata") or {}}

    async def sync() -> None:
        listing = not mode.startswith("watch-list")
        reflector = Reflector(
            url, f"/api/v1/namespaces/{NAMESPACE}/secrets", watch_list="off" if listing else "on", page_size=0,
            transform=check, watch_timeout=(1, 1) if listing else (600, 600), bookmark_timeout=600, connect_timeout=600,
        )
        events = reflector.events()
        rest: Optional["asyncio.Future[None]"] = None
        try:
            async for ev in events:
                if ev.type == "synced":
                    res.synced = time.time()
                    break
            if listing:  # the watch from the list's resourceVersion, to its end (a second one has then begun)
                async def drain() -> None:
                    async for _ in events:
                        pass

                rest = asyncio.ensure_future(drain())
                deadline = time.monotonic() + 5
                while reflector.stats["watch"] < 2 and time.monotonic() < deadline and not rest.done():
                    await asyncio.sleep(0.02)
                if rest.done():
                    rest.result()
        finally:
            reflector.close()
            if rest is not None:
                rest.cancel()
                await asyncio.gather(rest, return_exceptions=True)
            await events.aclose()
            res.bytes = reflector.bytes_received

    try:
        asyncio.run(sync())
        missing = len(manifest) - len(seen)
        if missing:
            raise ValueError(f"{missing} objects missing from the initial state")
        res.objects = len(seen)
        res.ok = True
    except Exception as exc:  # reported to the parent, which decides
        res.error = f"{type(exc).__name__}: {exc}"
    return res


# --------------------------------------------------------------------------- server + watchdog
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WatchedServer:
    """An API server as a child process on a loopback port, with an RSS watchdog (ours, or the peer)."""

    #: the path that answers 200 once the server serves
    ready_path = "/version"
    #: who serves (results.json's ``server``)
    kind = "streamcodec"

    def __init__(self, argv: List[str], port: int, memory_limit: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.memory_limit = memory_limit
        # A file, not a pipe: nobody reads the server's log while it runs,
        # and a full pipe would stall the server.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log, stdin=subprocess.DEVNULL)
        self.killed_at_rss = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.kind} exited at start-up (code {self.proc.returncode}):\n{self.log_tail()}")
            try:
                if _request(self.url, "GET", self.ready_path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.kind} did not become ready in time:\n{self.log_tail()}")

    def settle(self) -> int:
        """Wait until the server holds what it holds before any client (nothing, for ours); returns the RSS before."""
        return self.rss()

    def log_tail(self, chars: int = 2000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    def rss(self) -> int:
        import psutil

        try:
            return psutil.Process(self.proc.pid).memory_info().rss
        except psutil.Error:
            return 0

    def kernel_peak(self) -> int:
        """The process's peak RSS so far as the kernel counts it (VmHWM; 0 where there is no /proc)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def start_sampling(self) -> int:
        """Start the watchdog; returns the baseline RSS."""
        baseline = self.rss()
        self.peak = baseline

        def sample() -> None:
            while not self._stop.wait(SAMPLE_SECONDS):
                rss = self.rss()
                self.peak = max(self.peak, rss)
                if rss > self.memory_limit and self.proc.poll() is None:
                    self.killed_at_rss = rss
                    self.proc.kill()

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return baseline

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def died(self) -> bool:
        return self.proc.poll() is not None

    def close(self) -> None:
        self.stop_sampling()
        stop_process(self.proc)
        self.log.close()


class Server(WatchedServer):
    """``streamcodec serve`` as a child process, with an RSS watchdog."""

    def __init__(self, etcd_url: str, list_mode: str, buffer_bytes: Optional[int], memory_limit: int,
                 shared_scans: bool = False, key_root: Optional[str] = None) -> None:
        port = free_port()
        super().__init__(
            [sys.executable, "-m", "streamcodec", "serve", "--etcd", etcd_url,
             "--listen", f"127.0.0.1:{port}", "--list-mode", list_mode]
            # the server's own defaults: its admission queue serves every informer
            + (["--buffer-bytes", str(buffer_bytes)] if buffer_bytes else [])
            + ["--shared-scans" if shared_scans else "--no-shared-scans"]  # the server shares by default
            + (["--key-root", key_root] if key_root else []),
            port, memory_limit,
        )


class KubeAPIServerPeer(WatchedServer):
    """The real k8s.io/apiserver peer binary as a child process, its watch cache on, with the same RSS watchdog.

    Its ``/healthz`` answers 200 before its watch cache has filled (measured: 50 MiB at /healthz, the cache
    of 100 × 1 MiB in place a second or two later), so a baseline taken then would race the fill;
    :meth:`settle` waits for the cache, so a run's baseline holds it and its growth does not.
    ``max_seconds``: the peer exits by itself after that long, whatever happens to this process.
    """

    ready_path = "/healthz"
    kind = "k8s.io/apiserver"

    def __init__(self, binary: str, etcd_url: str, prefix: str, memory_limit: int, max_seconds: float = 7200) -> None:
        port = free_port()
        # the peer wants URLs; our --etcd also takes bare host:port
        servers = ",".join(u if "://" in u else f"http://{u}" for u in etcd_url.split(",") if u.strip())
        super().__init__(
            [binary, f"--etcd-servers={servers}", f"--etcd-prefix={prefix}", f"--listen=127.0.0.1:{port}",
             "--watch-cache=on", f"--max-seconds={max_seconds:g}"],
            port, memory_limit,
        )

    #: A watch the cache alone serves (resourceVersion 0), selecting nothing: cheap, and answered (200, not
    #: 429 "storage is (re)initializing") only once the watch cache is ready.
    PRIME_PATH = (f"/api/v1/namespaces/{NAMESPACE}/secrets?watch=1&resourceVersion=0&timeoutSeconds=1"
                  "&labelSelector=streamcodec-demo%3Dnothing")

    def settle(self, timeout: float = 300.0) -> int:
        """Wait until the watch cache is ready and the RSS has stopped moving; returns the RSS before the wait."""
        idle = self.rss()
        deadline = time.monotonic() + timeout
        while _request(self.url, "GET", self.PRIME_PATH)[0] != 200:
            if time.monotonic() > deadline or self.died():
                raise SystemExit(f"{self.kind}: the watch cache did not become ready:\n{self.log_tail()}")
            time.sleep(0.2)
        # ready is flagged once the cache is filled; let the Go heap settle (two samples 0.5 s apart within 1 MiB)
        last = self.rss()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.rss()
            if abs(now - last) < MiB:
                break
            last = now
        return idle


# --------------------------------------------------------------------------- one run
@dataclass
class RunResult:
    mode: str
    informers: int
    baseline_rss: int
    peak_rss: int
    sync_seconds: float
    mb_per_s: float
    server_died: bool
    killed_at_rss: int
    failures: List[str] = field(default_factory=list)
    #: who served the run: "streamcodec" or "k8s.io/apiserver"
    server: str = "streamcodec"
    #: the server's kernel peak RSS (VmHWM) when the baseline was taken: for the peer, its watch cache's fill
    startup_peak_rss: int = 0
    #: the RSS once the server answered, before :meth:`WatchedServer.settle` (the peer: before its watch cache)
    idle_rss: int = 0

    @property
    def growth(self) -> int:
        return max(0, self.peak_rss - self.baseline_rss)


def expected_client_go_checksum(count: int, size: int) -> Dict[str, Any]:
    """What a client-go informer of tests/go/informer reports once synced: objects, data bytes, checksum.

    Its checksum: sha256 over the Secrets sorted by "namespace/name", each as "namespace/name\n" and,
    per data key in order, "key=<length>\n" + value + "\n".
    """
    h = hashlib.sha256()
    total = 0
    for i in range(count):
        name = secret_name(i)
        value = base64.b64decode(secret_payload(name, size))
        total += len(value)
        h.update(f"{NAMESPACE}/{name}\npayload={len(value)}\n".encode() + value + b"\n")
    return {"objects": count, "bytes": total, "checksum": h.hexdigest()}


def client_go_informer() -> str:
    """The Go informer binary: $STREAMCODEC_CLIENT_GO_INFORMER, else built by scripts/provision-client-go."""
    given = os.environ.get("STREAMCODEC_CLIENT_GO_INFORMER")
    if given:
        return given
    # this file is <tree>/streamcodec/demo/experiment.py
    tree = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = os.path.join(tree, "scripts", "provision-client-go")
    if not os.path.exists(script):
        raise SystemExit("--informer client-go needs the source tree's scripts/provision-client-go, "
                         "or STREAMCODEC_CLIENT_GO_INFORMER naming a built informer")
    print("building the client-go informer (first time: a few minutes)...", file=sys.stderr)
    proc = subprocess.run([script], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"scripts/provision-client-go failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def run_client_go(server: WatchedServer, mode: str, informers: int, args: argparse.Namespace) -> Tuple[List["InformerResult"], float]:
    """``informers`` client-go informers in one Go process (default content type: protobuf); (results, t0)."""
    expected = expected_client_go_checksum(args.objects, args.object_bytes)
    watch_list = INFORMER_MODE[mode].startswith("watch-list")
    cmd = [args.client_go_bin, "--server", server.url, "--namespace", NAMESPACE, "--informers", str(informers),
           "--content-type", args.content_type,
           "--watch-list", "on" if watch_list else "off", "--sync-timeout", str(args.run_timeout),
           "--expect-objects", str(args.objects)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.run_timeout + 60)
    results: List[InformerResult] = []
    for line in proc.stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") != "synced":
            continue
        got = {k: event.get(k) for k in ("objects", "bytes", "checksum")}
        watch_list_ok = (event.get("lists", 0) == 0) == watch_list
        ok = got == expected and watch_list_ok
        error = "" if ok else (f"informer {event.get('informer')}: got {got}, lists {event.get('lists')}, "
                               f"expected {expected} ({'no LIST' if watch_list else 'a LIST'})")
        results.append(InformerResult(ok=ok, synced=t0 + float(event.get("seconds", 0.0)), bytes=int(got["bytes"] or 0),
                                      error=error))
    while len(results) < informers:
        results.append(InformerResult(ok=False, error=f"client-go informer not synced (exit {proc.returncode}): "
                                                      f"{proc.stderr.strip()[-500:]}"))
    return results, t0


def start_server(etcd_url: str, mode: str, args: argparse.Namespace) -> WatchedServer:
    """A fresh server for one run of ``mode``: ours, or the peer (``args.kube_apiserver``) for its modes."""
    if mode in PEER_MODES:
        return KubeAPIServerPeer(args.kube_apiserver, etcd_url, getattr(args, "peer_prefix", PEER_PREFIX),
                                 args.memory_limit, max_seconds=args.run_timeout + 900)
    return Server(etcd_url, SERVER_LIST_MODE[mode], args.buffer_bytes, args.memory_limit,
                  shared_scans=mode in SHARED_SCAN_MODES, key_root=getattr(args, "key_root", None))


def run_once(etcd_url: str, mode: str, informers: int, manifest_path: str, args: argparse.Namespace) -> RunResult:
    """One run: a fresh server for ``mode``, ``informers`` informers at once, the server's RSS sampled throughout."""
    server = start_server(etcd_url, mode, args)
    try:
        server.wait_ready()
        idle = server.settle()
        startup_peak = server.kernel_peak()
        baseline = server.start_sampling()
        if args.informer == "client-go":
            client_go_results, t0 = run_client_go(server, mode, informers, args)
            return _result(server, mode, informers, baseline, client_go_results, t0, startup_peak, idle)
        t0 = time.time()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "streamcodec.demo", "informer", "--url", server.url, "--mode", INFORMER_MODE[mode],
                 "--manifest", manifest_path],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            for _ in range(informers)
        ]
        results: List[InformerResult] = []
        deadline = time.monotonic() + args.run_timeout
        try:
            for p in procs:
                try:
                    out, err = p.communicate(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    results.append(InformerResult(ok=False, error=f"informer not synced within {args.run_timeout} s"))
                    continue
                try:
                    results.append(InformerResult(**json.loads(out)))
                except (ValueError, TypeError):
                    results.append(InformerResult(ok=False, error=f"informer crashed: {err.decode()[-500:]}"))
        finally:
            for p in procs:  # a run never leaves informers behind
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return _result(server, mode, informers, baseline, results, t0, startup_peak, idle)
    finally:
        server.close()


def _result(server: WatchedServer, mode: str, informers: int, baseline: int, results: List["InformerResult"], t0: float,
            startup_peak: int = 0, idle: int = 0) -> RunResult:
    """The run's figures once its informers are done (the server is still up: its peak is read here)."""
    server.stop_sampling()
    died = server.died()
    synced = [r.synced for r in results if r.ok]
    sync_seconds = (max(synced) - t0) if len(synced) == informers else float("nan")
    total = sum(r.bytes for r in results)
    return RunResult(
        mode=mode, informers=informers, baseline_rss=baseline, peak_rss=server.peak,
        sync_seconds=sync_seconds, mb_per_s=total / MiB / sync_seconds if sync_seconds == sync_seconds else 0.0,
        server_died=died, killed_at_rss=server.killed_at_rss,
        failures=[r.error for r in results if not r.ok], server=server.kind, startup_peak_rss=startup_peak,
        idle_rss=idle,
    )


# --------------------------------------------------------------------------- report
#: The table's footnote when the peer ran: what its baseline holds, and so what "growth" leaves out.
PEER_BASELINE_NOTE = ("kube-apiserver rows: baseline = the peer's RSS once its watch cache has filled with the whole "
                      "collection (it fills at start-up, just after /healthz, before any informer; the demo waits "
                      "for it); growth is over that baseline, so it EXCLUDES the watch cache (peak RSS = baseline "
                      "+ growth; the note gives the cache's share of the baseline)")


def print_table(runs: List[RunResult]) -> None:
    print(f"{'mode':<26} {'informers':>9} {'baseline RSS':>13} {'peak RSS growth':>16} {'synced after':>13} {'MB/s':>8}  note")
    for r in runs:
        note = "server killed by the memory limit" if r.server_died else ("FAILED: " + r.failures[0] if r.failures else "ok")
        if r.mode in PEER_MODES and r.idle_rss:
            note += f" (watch cache: +{(r.baseline_rss - r.idle_rss) / MiB:.0f} MiB of the baseline)"
        sync = f"{r.sync_seconds:.2f} s" if r.sync_seconds == r.sync_seconds else "-"
        print(f"{MODE_LABELS.get(r.mode, r.mode):<26} {r.informers:>9} {r.baseline_rss / MiB:>9.1f} MiB "
              f"{r.growth / MiB:>12.1f} MiB {sync:>13} {r.mb_per_s:>8.0f}  {note}")
    if any(r.mode in PEER_MODES for r in runs):
        print(PEER_BASELINE_NOTE)


def write_plot(runs: List[RunResult], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in MODES + PEER_MODES:
        pts = [r for r in runs if r.mode == mode]
        if not pts:
            continue
        ok = [r for r in pts if not r.server_died]
        label = MODE_LABELS.get(mode, mode)
        # the peer dashed: the same axes, told apart at a glance
        line = ax.plot([r.informers for r in ok], [r.peak_rss / MiB for r in ok], marker="o", label=label,
                       linestyle="--" if mode in PEER_MODES else "-")[0]
        dead = [r for r in pts if r.server_died]
        if dead:
            ax.scatter([r.informers for r in dead], [r.killed_at_rss / MiB for r in dead], marker="x", s=80,
                       color=line.get_color(), label=f"{label}: server killed")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent informers")
    ax.set_ylabel("peak server RSS (MiB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def check_targets(runs: List[RunResult]) -> List[str]:
    """The issue's targets, as lines saying met / missed (never fails the run)."""
    lines = []
    wl = [r for r in runs if r.mode == "watch-list" and not r.server_died and not r.failures]
    buf = [r for r in runs if r.mode == "buffered" and not r.server_died and not r.failures]
    if wl and buf:
        top_wl = max(wl, key=lambda r: r.informers)
        top_buf = max(buf, key=lambda r: r.informers)
        ratio = top_wl.growth / max(top_buf.growth, 1)
        lines.append(f"watch-list growth at {top_wl.informers} informers is {ratio:.3f} × buffered at "
                     f"{top_buf.informers} ({'met' if ratio <= 1 / 20 else 'missed'}: target ≤ 0.05)")
        cap = top_wl.informers * 2 * MiB + 64 * MiB
        lines.append(f"watch-list growth {top_wl.growth / MiB:.1f} MiB vs cap {cap / MiB:.0f} MiB "
                     f"({'met' if top_wl.growth <= cap else 'missed'})")
        same = [b for b in buf if b.informers == top_wl.informers] or [top_buf]
        lines.append(f"watch-list synced in {top_wl.sync_seconds:.2f} s vs buffered {same[0].sync_seconds:.2f} s "
                     f"at {same[0].informers} informers ({'met' if top_wl.sync_seconds <= same[0].sync_seconds * 1.05 else 'missed'})")
    shared = [r for r in runs if r.mode == "watch-list-shared" and not r.server_died and not r.failures]
    if shared:
        top = max(shared, key=lambda r: r.informers)
        one = [r for r in shared if r.informers == 1]
        if one and top.informers > 1:
            ratio = top.sync_seconds / max(one[0].sync_seconds, 1e-9)
            lines.append(f"watch-list (shared): {top.informers} informers synced in {top.sync_seconds:.2f} s, "
                         f"{ratio:.2f} × one informer ({'met' if ratio <= 2 else 'missed'}: target ≤ 2)")
        private = [r for r in wl if r.informers == top.informers]
        if private:
            lines.append(f"watch-list (shared) at {top.informers} informers: {top.sync_seconds:.2f} s vs "
                         f"{private[0].sync_seconds:.2f} s unshared, growth {top.growth / MiB:.1f} MiB vs "
                         f"{private[0].growth / MiB:.1f} MiB")
    return lines


#: our mode compared with each of the peer's: the same informers (watch-list; one unpaginated LIST then watch)
PEER_COUNTERPART = {"kube-apiserver-watch-list": "watch-list", "kube-apiserver-list": "streaming"}


def compare_with_peer(runs: List[RunResult]) -> List[str]:
    """Ours over the real k8s.io/apiserver, per informer count both ran: peak RSS, growth, sync time (no verdict)."""
    lines = []
    good = {(r.mode, r.informers): r for r in runs if not r.server_died and not r.failures}
    for peer_mode, ours_mode in PEER_COUNTERPART.items():
        for (mode, n), peer in sorted(good.items(), key=lambda kv: kv[0][1]):
            ours = good.get((ours_mode, n))
            if mode != peer_mode or ours is None:
                continue
            lines.append(
                f"{MODE_LABELS.get(ours_mode, ours_mode)} / {MODE_LABELS[peer_mode]} at {n} informer(s): peak RSS "
                f"{ours.peak_rss / MiB:.0f} / {peer.peak_rss / MiB:.0f} MiB = {ours.peak_rss / max(peer.peak_rss, 1):.2f}, "
                f"growth {ours.growth / MiB:.1f} / {peer.growth / MiB:.1f} MiB, sync {ours.sync_seconds:.2f} / "
                f"{peer.sync_seconds:.2f} s = {ours.sync_seconds / max(peer.sync_seconds, 1e-9):.2f}")
    return lines


# --------------------------------------------------------------------------- main
def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamcodec demo",
        description="Reproduce the Kubernetes watch-list experiment: informers against 1 MB Secrets, "
                    "buffered list vs streaming list vs watch-list, with the server's peak memory per run.",
    )
    p.add_argument("--etcd", help="use this etcd (URL[,URL...]) instead of starting a temporary etcd 3.5")
    p.add_argument("--objects", type=int, default=400, help="number of Secrets to load (default 400)")
    p.add_argument("--object-bytes", type=parse_size, default=MiB, help="size of each Secret's data (default 1MiB)")
    p.add_argument("--informers", default="1,2,4,8,16", help="comma-separated informer counts (default 1,2,4,8,16)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated modes among {', '.join(MODES + PEER_MODES)} (the last two need "
                        "--kube-apiserver, which adds both unless --modes names one)")
    p.add_argument("--kube-apiserver", metavar="BINARY",
                   help="also run the experiment against the real k8s.io/apiserver: the peer binary built by the "
                        "source tree's scripts/provision-kube-apiserver (its watch cache on, as kube-apiserver runs), "
                        "over the same etcd, the Secrets loaded through its own API into its own key prefix")
    p.add_argument("--memory-limit", type=parse_size, default=8 << 30,
                   help="the server is killed when its RSS passes this (default 8GiB)")
    p.add_argument("--buffer-bytes", type=parse_size, default=None,
                   help="server's per-stream buffer (default: the server's own, or twice --object-bytes when "
                        "that is larger); the server runs with its default pool and admission")
    p.add_argument("--informer", choices=("python", "client-go"), default="python",
                   help="python: this package's informer processes; client-go: Kubernetes' own informers (Go, "
                        "client-go 0.36, protobuf as client-go prefers; built from Debian's packages by "
                        "scripts/provision-client-go), all in one process")
    p.add_argument("--content-type", choices=("default", "json", "protobuf", "cbor"), default="default",
                   help="with --informer client-go: the format the informers ask for (default: client-go's own choice, "
                        "protobuf for built-in kinds)")
    p.add_argument("--out", default="demo-results", help="directory for results.json and memory.png")
    p.add_argument("--run-timeout", type=float, default=600, help="seconds one run may take")
    p.add_argument("--quick", action="store_true",
                   help="a small data set (40 × 64KiB) and informer counts 1,2,4: a smoke test that finishes in a minute")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["informer"]:
        return _informer_main(argv[1:])
    args = build_parser().parse_args(argv)
    args.client_go_bin = client_go_informer() if args.informer == "client-go" else None
    if args.quick:
        args.objects, args.object_bytes, args.informers = 40, 64 << 10, "1,2,4"
    if args.buffer_bytes is None and 2 * args.object_bytes > DEFAULT_BUFFER_SIZE:
        args.buffer_bytes = 2 * args.object_bytes  # a buffer must hold the largest object
    counts = [int(x) for x in args.informers.split(",") if x.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES + PEER_MODES:
            raise SystemExit(f"unknown mode {m!r}; expected one of {', '.join(MODES + PEER_MODES)}")
    if args.kube_apiserver:
        if not os.access(args.kube_apiserver, os.X_OK):
            raise SystemExit(f"--kube-apiserver {args.kube_apiserver!r} is not an executable")
        if not any(m in PEER_MODES for m in modes):
            modes += list(PEER_MODES)
    elif any(m in PEER_MODES for m in modes):
        raise SystemExit("the kube-apiserver modes need --kube-apiserver BINARY")
    os.makedirs(args.out, exist_ok=True)

    etcd = None
    if args.etcd:
        etcd_url = args.etcd
    else:
        from streamcodec.local_etcd import EtcdProcess

        etcd = EtcdProcess("3.5").start()
        etcd_url = "http://" + etcd.endpoint
        print(f"started etcd {etcd.version} at {etcd_url}", file=sys.stderr)
    workdir = tempfile.mkdtemp(prefix="streamcodec-demo-")
    try:
        loader = Server(etcd_url, "streaming", args.buffer_bytes, 1 << 62)
        try:
            loader.wait_ready()
            manifest = load_secrets(loader.url, args.objects, args.object_bytes)
        finally:
            loader.close()
        if any(m in PEER_MODES for m in modes):
            # the same Secrets, written by the peer in its own layout (protobuf) under its own prefix
            peer = KubeAPIServerPeer(args.kube_apiserver, etcd_url, PEER_PREFIX, 1 << 62)
            try:
                peer.wait_ready()
                print(f"loading the same Secrets through k8s.io/apiserver ({PEER_PREFIX})", file=sys.stderr)
                if load_secrets(peer.url, args.objects, args.object_bytes) != manifest:
                    raise SystemExit("the peer's data set differs from ours")
            finally:
                peer.close()
        manifest_path = os.path.join(workdir, "manifest.json")
        with open(manifest_path, "w") as f:
            json.dump(manifest, f)

        runs: List[RunResult] = []
        for mode in modes:
            for n in counts:
                print(f"{mode}: {n} informer(s)...", file=sys.stderr)
                r = run_once(etcd_url, mode, n, manifest_path, args)
                runs.append(r)
                if r.server_died:
                    print(f"  server killed at {r.killed_at_rss / MiB:.0f} MiB RSS with {n} informers", file=sys.stderr)
                    break  # more informers would only die sooner
        print_table(runs)
        targets = check_targets(runs)
        for line in targets:
            print(line)
        comparison = compare_with_peer(runs)
        for line in comparison:
            print(line)
        title = f"{args.objects} Secrets × {args.object_bytes / MiB:g} MiB: peak server RSS"
        write_plot(runs, os.path.join(args.out, "memory.png"), title)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            peer_info = None if not args.kube_apiserver else {
                "binary": args.kube_apiserver, "etcd_prefix": PEER_PREFIX, "watch_cache": True,
                "modes": [m for m in modes if m in PEER_MODES], "baseline": PEER_BASELINE_NOTE,
                "comparison": comparison,
            }
            json.dump({"objects": args.objects, "object_bytes": args.object_bytes, "informer": args.informer,
                       "targets": targets, "kube_apiserver": peer_info,
                       "runs": [dict(asdict(r), growth=r.growth) for r in runs]}, f, indent=2)
        print(f"wrote {args.out}/results.json and {args.out}/memory.png")
        bad = [r for r in runs if r.failures and not r.server_died]
        for r in bad:
            print(f"FAILED {r.mode} × {r.informers}: {r.failures[0]}", file=sys.stderr)
        return 1 if bad else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if etcd is not None:
            etcd.close()


def _informer_main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(prog="streamcodec demo informer")
    p.add_argument("--url", required=True)
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--manifest", required=True)
    a = p.parse_args(argv)
    with open(a.manifest) as f:
        manifest = json.load(f)
    print(json.dumps(asdict(run_informer(a.url, a.mode, manifest))))
    return 0

