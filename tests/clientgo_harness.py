"""Runs the client-go informer program (tests/go/informer, built by scripts/provision-client-go) against a
server, in the foreground (:func:`run_informer`) or in the background (:class:`BackgroundInformer`, for live
events).  Not a test module.

The program prints one JSON object per line (see the header of tests/go/informer/main.go); both runners
return an :class:`InformerRun` holding them.  Every process started here is bounded in time and killed at
the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import pytest

from streamcodec.local_etcd import stop_process

ROOT = Path(__file__).resolve().parent.parent

#: Media types (before any ';') a server must answer the informer's LIST and WATCH requests with, per
#: --content-type (kube-apiserver's: watch streams of CBOR are CBOR sequences).
RESPONSE_MEDIA_TYPES: Dict[str, Dict[str, str]] = {
    "json": {"list": "application/json", "watch": "application/json"},
    "default": {"list": "application/vnd.kubernetes.protobuf", "watch": "application/vnd.kubernetes.protobuf"},
    "protobuf": {"list": "application/vnd.kubernetes.protobuf", "watch": "application/vnd.kubernetes.protobuf"},
    "cbor": {"list": "application/cbor", "watch": "application/cbor-seq"},
}


def provision_client_go(timeout: float = 1500) -> str:
    """Path of the informer binary (fetches Go + client-go and builds on first use).  Fails, never skips."""
    try:
        proc = subprocess.run(
            [str(ROOT / "scripts" / "provision-client-go")], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/provision-client-go did not finish within {timeout} s: {exc.stderr!r}", pytrace=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not os.access(lines[-1], os.X_OK):
        pytest.fail(f"client-go informer unavailable (scripts/provision-client-go): {proc.stderr.strip()}", pytrace=False)
    return lines[-1]


def informer_env(content_type: str = "json", watch_list: str = "on", extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """A minimal environment for the program: client-go's feature gates for the mode, plus ``extra``."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()}
    env["KUBE_FEATURE_WatchListClient"] = {"on": "true", "off": "false"}[watch_list]
    if content_type == "cbor":
        env["KUBE_FEATURE_ClientsAllowCBOR"] = "true"
        env["KUBE_FEATURE_ClientsPreferCBOR"] = "true"
    env.update(extra or {})
    return env


def informer_args(
    binary: str,
    url: str,
    *,
    informers: int = 1,
    content_type: str = "json",
    watch_list: str = "on",
    sync_timeout: float = 60,
    run_seconds: float = 0,
    expect_objects: Optional[int] = None,
    namespace: Optional[str] = None,
    resource: str = "secrets",
    fail_fast: bool = False,
    writes: bool = False,
    verbosity: int = 4,
) -> List[str]:
    """The program's command line.  ``verbosity`` is klog's (stderr): at 4 client-go says why it falls back
    from watch-list to LIST, which no handler reports."""
    args = [
        binary, f"--server={url}", f"--resource={resource}", f"--informers={informers}",
        f"--content-type={content_type}", f"--watch-list={watch_list}", f"--sync-timeout={sync_timeout}",
        f"--run-seconds={run_seconds}", f"--v={verbosity}",
    ]
    if expect_objects is not None:
        args.append(f"--expect-objects={expect_objects}")
    if namespace:
        args.append(f"--namespace={namespace}")
    if fail_fast:
        args.append("--fail-fast")
    if writes:
        args.append("--writes")
    return args


def _parse(line: str) -> Dict[str, Any]:
    try:
        doc = json.loads(line)
    except ValueError:
        return {"event": "unparsed", "line": line}
    return doc if isinstance(doc, dict) else {"event": "unparsed", "line": line}


class InformerRun:
    """The outcome of one run: ``returncode``, ``events`` (the parsed lines, in order) and ``stderr``."""

    def __init__(self, returncode: Optional[int], events: List[Dict[str, Any]], stderr: str, args: List[str]) -> None:
        self.returncode = returncode
        self.events = events
        self.stderr = stderr
        self.args = args

    def of(self, *kinds: str, informer: Optional[int] = None) -> List[Dict[str, Any]]:
        return [e for e in self.events if e.get("event") in kinds and (informer is None or e.get("informer") == informer)]

    @property
    def start(self) -> Dict[str, Any]:
        starts = self.of("start")
        return starts[0] if starts else {}

    @property
    def exit(self) -> Dict[str, Any]:
        exits = self.of("exit")
        return exits[-1] if exits else {}

    @property
    def synced(self) -> Dict[int, Dict[str, Any]]:
        """The ``synced`` line of each informer that synced, by informer index."""
        return {e["informer"]: e for e in self.of("synced")}

    def requests(self, kind: Optional[str] = None, informer: Optional[int] = None) -> List[Dict[str, Any]]:
        return [e for e in self.of("request", informer=informer) if kind is None or e.get("kind") == kind]

    def errors(self) -> List[str]:
        return [str(e.get("error")) for e in self.of("error")]

    def klog_errors(self, limit: int = 3) -> List[str]:
        """client-go's distinct log lines (stderr) that carry an error, the first ``limit`` of them."""
        found: Dict[str, str] = {}
        for line in self.stderr.splitlines():
            if "err=" in line or line.startswith(("E", "W")) or "panic" in line:
                found.setdefault(line.split("] ", 1)[-1], line)  # one per message, whatever the time stamp
        return list(found.values())[:limit]

    def describe(self, tail: int = 6) -> str:
        """What a failing assertion should show: exit, client-go's errors, the last lines of stderr."""
        errs = sorted(set(self.errors()))
        shown = self.klog_errors()
        messages = {ln.split("] ", 1)[-1] for ln in shown}
        stderr_tail = "\n".join(
            ln for ln in self.stderr.strip().splitlines()[-tail:] if ln.split("] ", 1)[-1] not in messages
        )
        klog_errors = "\n".join(shown)
        return (
            f"informer exit status {self.returncode}; exit line: {json.dumps(self.exit)[:1200]}\n"
            f"distinct watch errors ({len(errs)}): {errs[:3]}\n"
            f"requests: {[(r.get('kind'), r.get('status'), r.get('contentType'), r.get('error')) for r in self.requests()][:8]}\n"
            f"client-go log errors:\n{klog_errors}\n"
            f"stderr (last {tail} lines):\n{stderr_tail}"
        )


def run_informer(
    binary: str,
    url: str,
    *,
    env: Optional[Mapping[str, str]] = None,
    timeout: Optional[float] = None,
    **options: Any,
) -> InformerRun:
    """Run the program to its end (``options``: see :func:`informer_args`); killed past ``timeout``."""
    args = informer_args(binary, url, **options)
    if env is None:
        env = informer_env(options.get("content_type", "json"), options.get("watch_list", "on"))
    if timeout is None:
        timeout = float(options.get("sync_timeout", 60)) + float(options.get("run_seconds", 0)) + 30
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=dict(env), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        run = InformerRun(None, [_parse(line) for line in out.splitlines() if line.strip()], err, args)
        pytest.fail(f"the informer did not exit within {timeout} s\n{run.describe()}", pytrace=False)
    return InformerRun(proc.returncode, [_parse(line) for line in proc.stdout.splitlines() if line.strip()], proc.stderr, args)


class BackgroundInformer:
    """``with BackgroundInformer(binary, url, max_seconds=60, **options) as bg: bg.wait_for(...); run = bg.stop()``

    The program runs for at most ``max_seconds`` after its sync (``--run-seconds``) and is killed past
    ``max_seconds + sync_timeout + 30`` in any case; :meth:`stop` (also on leaving the block) sends SIGTERM,
    waits for the final ``exit`` line, then kills.
    """

    def __init__(self, binary: str, url: str, *, max_seconds: float = 60, env: Optional[Mapping[str, str]] = None, **options: Any) -> None:
        options.setdefault("sync_timeout", 60)
        self.args = informer_args(binary, url, run_seconds=max_seconds, **options)
        self.env = dict(env) if env is not None else informer_env(options.get("content_type", "json"), options.get("watch_list", "on"))
        self.hard_limit = float(max_seconds) + float(options["sync_timeout"]) + 30
        self.events: List[Dict[str, Any]] = []
        self._cond = threading.Condition()
        self._proc: Optional["subprocess.Popen[str]"] = None
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self._reader: Optional[threading.Thread] = None
        self._killer: Optional[threading.Timer] = None
        self.result: Optional[InformerRun] = None

    def __enter__(self) -> "BackgroundInformer":
        self._proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL, text=True, env=self.env
        )
        self._reader = threading.Thread(target=self._read, name="informer-stdout", daemon=True)
        self._reader.start()
        self._killer = threading.Timer(self.hard_limit, self._kill)
        self._killer.daemon = True
        self._killer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                with self._cond:
                    self.events.append(_parse(line))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    def snapshot(self) -> InformerRun:
        with self._cond:
            events = list(self.events)
        return InformerRun(self._proc.poll() if self._proc else None, events, self._read_stderr(), self.args)

    def _read_stderr(self) -> str:
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            return self._stderr.read()
        except ValueError:  # closed
            return ""

    def wait_for(self, predicate: Callable[[InformerRun], bool], timeout: float, what: str) -> InformerRun:
        """Wait until ``predicate(snapshot)`` holds; fail the test (with what the program printed) if it does not."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.snapshot()
            if predicate(run):
                return run
            if run.returncode is not None:
                pytest.fail(f"the informer exited before {what}\n{run.describe()}", pytrace=False)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {what} within {timeout} s\n{run.describe()}", pytrace=False)
            with self._cond:
                self._cond.wait(min(remaining, 0.5))

    def wait_synced(self, informers: int, timeout: float = 60) -> InformerRun:
        return self.wait_for(lambda r: len(r.synced) >= informers, timeout, f"sync of {informers} informer(s)")

    def stop(self, timeout: float = 10) -> InformerRun:
        """End the program (SIGTERM, then SIGKILL) and return everything it printed."""
        if self.result is not None:
            return self.result
        proc = self._proc
        if proc is not None:
            stop_process(proc, timeout)
        if self._killer is not None:
            self._killer.cancel()
        if self._reader is not None:
            self._reader.join(5)
        run = self.snapshot()
        self._stderr.close()
        self.result = run
        return run


# ----------------------------------------------------------------------------- what the server holds


def secret_checksum(objects: Iterable[Mapping[str, Any]]) -> Dict[str, Any]:
    """``objects``, ``bytes`` and ``checksum`` as the program computes them (tests/go/informer/main.go
    ``checksum``), from Secrets given as ``{"namespace", "name", "data": {key: bytes}}``."""
    items = sorted(objects, key=lambda o: f"{o['namespace']}/{o['name']}")
    h = hashlib.sha256()
    total = 0
    for o in items:
        h.update(f"{o['namespace']}/{o['name']}\n".encode())
        for k in sorted(o["data"]):
            v = o["data"][k]
            total += len(v)
            h.update(f"{k}={len(v)}\n".encode() + v + b"\n")
    return {"objects": len(items), "bytes": total, "checksum": h.hexdigest()}
