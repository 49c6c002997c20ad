"""Real etcd servers on loopback, for tests, benchmarks and the demo.

Every server runs as a child process on free ``127.0.0.1`` ports with its own
temporary data directory.  Servers are context managers, and every one still
running when the interpreter exits is stopped by an ``atexit`` hook, so a
failing test never leaves an etcd behind.  Binaries come from
:mod:`streamcodec.etcd_provision` (see :func:`etcd_bin_dir`).

Example::

    with EtcdProcess("3.5") as etcd:
        etcd.etcdctl("put", "/k", "v")
        store = EtcdStore([etcd.endpoint])
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .etcd_provision import SUPPORTED_VERSIONS, EtcdNotAvailable, etcd_version_of, provision

__all__ = [
    "EtcdNotAvailable",
    "EtcdStartError",
    "EtcdctlError",
    "TLSConfig",
    "make_tls",
    "etcd_bin_dir",
    "installed_version",
    "EtcdProcess",
    "EtcdCluster",
    "die_with_parent_prefix",
    "stop_process",
]


class EtcdStartError(RuntimeError):
    """An etcd server did not come up; the message ends with its log tail."""


class EtcdctlError(RuntimeError):
    """``etcdctl`` exited non-zero; ``stderr`` holds what it said."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"etcdctl {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def _etcd_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["ETCDCTL_API"] = "3"  # the 3.4 default already, but explicit for older etcdctl habits
    if os.uname().machine in ("aarch64", "arm64"):
        env["ETCD_UNSUPPORTED_ARCH"] = "arm64"  # etcd 3.4 refuses arm64 without it
    # Stray ETCD_* / ETCDCTL_* settings from the caller's shell would override our flags.
    for name in list(env):
        if (name.startswith("ETCD_") and name != "ETCD_UNSUPPORTED_ARCH") or (
            name.startswith("ETCDCTL_") and name != "ETCDCTL_API"
        ):
            del env[name]
    return env


def _server_version(bin_dir: Path) -> str:
    version = etcd_version_of(bin_dir)
    if version is None:
        raise EtcdNotAvailable(f"{bin_dir / 'etcd'} --version printed no version")
    return version


_bin_dirs: Dict[str, Path] = {}
_bin_dirs_lock = threading.Lock()


def etcd_bin_dir(version: str) -> Path:
    """The directory holding ``etcd`` and ``etcdctl`` of ``version`` ("3.5" or "3.4").

    Asks :func:`streamcodec.etcd_provision.provision` (``ETCD_BIN``, then PATH,
    then the cache, then Debian packages); the answer is remembered for the process.
    Raises :class:`EtcdNotAvailable` saying why on failure.
    """
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"etcd version must be one of {SUPPORTED_VERSIONS}, not {version!r}")
    with _bin_dirs_lock:
        if version in _bin_dirs:
            return _bin_dirs[version]
        path = provision(version)
        _bin_dirs[version] = path
        return path


def _version_key(version: str) -> Tuple[int, ...]:
    """``"3.4.23"`` -> ``(3, 4, 23)``, for ordering exact versions."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def installed_version(version: str) -> str:
    """The exact version ("3.5.16") of the etcd that :func:`etcd_bin_dir` provides for ``version``."""
    return _server_version(etcd_bin_dir(version))


def _free_ports(count: int) -> List[int]:
    """``count`` distinct ports the kernel considers free now.

    All sockets stay bound until every port is picked: closing one before binding
    the next lets the kernel hand out the same port twice (a cluster then fails
    with "has duplicate url").  A racing process could still take a port before
    etcd binds it, which the start methods handle by retrying on new ports.
    """
    sockets: List[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# -- TLS ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSConfig:
    """PEM files for a TLS-only etcd that demands client certificates.

    ``cert_file``/``key_file`` are the server's; ``client_cert_file``/``client_key_file``
    are a client certificate signed by the same CA (common name ``client_common_name``).
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    client_key_file: Path
    client_common_name: str = "streamcodec-client"


def make_tls(dir: Path, *, client_common_name: str = "streamcodec-client") -> TLSConfig:
    """Create a fresh CA, a server certificate for 127.0.0.1/localhost and a client certificate in ``dir``.

    Uses the ``cryptography`` package (a test dependency).  Keys are ECDSA P-256.
    Note: with etcd auth enabled, etcd treats the client certificate's common name
    as a user name, so the default name is deliberately not an etcd user.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    def key_pem(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def name(cn: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("streamcodec test CA"))
        .issuer_name(name("streamcodec test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usages: List[Any], san: Optional[List[Any]]) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    # etcd's own gRPC gateway dials the server with the server certificate, so it needs clientAuth too.
    server_cert, server_key = leaf(
        "localhost",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_cert, client_key = leaf(client_common_name, [ExtendedKeyUsageOID.CLIENT_AUTH], None)

    pem = serialization.Encoding.PEM
    files = {
        "ca.pem": ca_cert.public_bytes(pem),
        "server.pem": server_cert.public_bytes(pem),
        "server-key.pem": key_pem(server_key),
        "client.pem": client_cert.public_bytes(pem),
        "client-key.pem": key_pem(client_key),
    }
    for filename, data in files.items():
        path = dir / filename
        path.write_bytes(data)
        path.chmod(0o600)
    return TLSConfig(
        ca_file=dir / "ca.pem",
        cert_file=dir / "server.pem",
        key_file=dir / "server-key.pem",
        client_cert_file=dir / "client.pem",
        client_key_file=dir / "client-key.pem",
        client_common_name=client_common_name,
    )


# -- processes ---------------------------------------------------------------------------------------------------

_live: "set[EtcdProcess]" = set()
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        try:
            proc.close()
        except Exception:  # atexit: best effort, keep stopping the others
            pass


atexit.register(_stop_all_at_exit)


def die_with_parent_prefix() -> List[str]:
    """A command prefix that makes a child (etcd, or any server a test starts) get SIGKILL when the
    spawning thread dies (Linux), or nothing.  Use it from the main thread only: the signal follows
    the thread that spawned, not the process.

    Covers a test process killed without running atexit (SIGKILL, crash).
    PR_SET_PDEATHSIG is set by util-linux's ``setpriv`` and survives its exec
    of etcd.  Not set from a ``preexec_fn``: that forces a fork that runs
    Python (and gRPC's fork handlers) in the child while gRPC threads run in
    the parent, which made etcd's child abort before exec now and then.
    """
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def stop_process(proc: "subprocess.Popen[Any]", timeout: float = 10.0) -> Optional[int]:
    """SIGTERM, then SIGKILL if ``proc`` has not exited after ``timeout`` seconds; its exit status.

    How every child this package or its tests start (etcd, servers, informers) is stopped: a
    graceful end first, and never a hang on one that ignores it.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class EtcdProcess:
    """One etcd member on free loopback ports with its own temporary data directory.

    ``start()`` waits until the member serves (``/health`` true); ``stop()`` sends
    SIGTERM and SIGKILL after ``stop_timeout`` seconds; ``kill()`` sends SIGKILL at
    once (for failover tests).  After ``stop()``/``kill()`` the member can be
    started again on the same ports and data (a restart).  ``close()`` (also the
    context-manager exit and the atexit hook) stops it and deletes the temporary
    directory.  The cluster keyword arguments (``name``, ``peer_port``,
    ``initial_cluster``, ``cluster_token``) are set by :class:`EtcdCluster`.
    """

    def __init__(
        self,
        version: str = "3.5",
        *,
        tls: Optional[TLSConfig] = None,
        extra_args: Sequence[str] = (),
        data_dir: Optional[Path] = None,
        quota_bytes: int = 8 * 2**30,
        name: str = "default",
        client_port: Optional[int] = None,
        peer_port: Optional[int] = None,
        initial_cluster: Optional[str] = None,
        cluster_token: str = "streamcodec-test",
        stop_timeout: float = 10.0,
        log_level: str = "warn",
    ) -> None:
        self.bin_dir = etcd_bin_dir(version)
        self.version: str = _server_version(self.bin_dir)
        self.tls = tls
        self.extra_args = tuple(extra_args)
        self.quota_bytes = quota_bytes
        self.name = name
        self.stop_timeout = stop_timeout
        self.log_level = log_level
        self.cluster_token = cluster_token
        self._fixed_ports = client_port is not None or peer_port is not None or initial_cluster is not None
        spare_client, spare_peer = _free_ports(2)
        self.client_port = client_port if client_port is not None else spare_client
        self.peer_port = peer_port if peer_port is not None else spare_peer
        self.initial_cluster = initial_cluster
        self._tmp = Path(tempfile.mkdtemp(prefix=f"streamcodec-etcd{version}-"))
        self.data_dir = Path(data_dir) if data_dir is not None else self._tmp / "data"
        self.log_file = self._tmp / "etcd.log"
        self._proc: Optional[subprocess.Popen] = None
        self._log_handle: Optional[Any] = None
        self._started_once = False
        self._closed = False

    # -- addresses --
    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``, the address for gRPC clients."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("etcd is not started")
        return self._proc.pid

    @property
    def returncode(self) -> Optional[int]:
        """The exit status of the last run (negative: killed by that signal); None while running or never run."""
        return None if self._proc is None else self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --
    def command(self) -> List[str]:
        """The etcd command line this member runs."""
        cluster = self.initial_cluster or f"{self.name}={self.peer_url}"
        args = [
            str(self.bin_dir / "etcd"),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.cluster_token}",
            f"--quota-backend-bytes={self.quota_bytes}",
            "--logger=zap",
            f"--log-level={self.log_level}",
        ]
        if self.tls is not None:
            args += [
                f"--cert-file={self.tls.cert_file}",
                f"--key-file={self.tls.key_file}",
                f"--trusted-ca-file={self.tls.ca_file}",
                "--client-cert-auth",
            ]
        args += self.extra_args
        return args

    def spawn(self) -> None:
        """Start the etcd process without waiting for it to serve (clusters start all members first)."""
        if self._closed:
            raise RuntimeError("this EtcdProcess is closed")
        if self.running:
            raise RuntimeError(f"etcd {self.name} is already running (pid {self.pid})")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # etcd 3.5 warns about (and 3.6 refuses) looser permissions
        if self._log_handle is not None:
            self._log_handle.close()
        self._log_handle = open(self.log_file, "ab")
        self._log_handle.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
        self._log_handle.flush()
        in_main_thread = threading.current_thread() is threading.main_thread()
        # PDEATHSIG fires when the spawning *thread* exits, so only use it from the main thread.
        prefix = die_with_parent_prefix() if in_main_thread else []
        self._proc = subprocess.Popen(
            prefix + self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=_etcd_env(),
        )
        with _live_lock:
            _live.add(self)

    def start(self, timeout: float = 30.0) -> "EtcdProcess":
        """Start etcd and wait until it serves; raises :class:`EtcdStartError` with its log tail if it does not."""
        attempts = 1 if (self._fixed_ports or self._started_once) else 3
        for attempt in range(attempts):
            self.spawn()
            try:
                self.wait_ready(timeout)
                self._started_once = True
                return self
            except EtcdStartError as exc:
                self.kill()
                # A port picked by bind-to-0 can be taken by someone else before etcd binds it.
                if attempt + 1 < attempts and "address already in use" in str(exc):
                    self.client_port, self.peer_port = _free_ports(2)
                    shutil.rmtree(self.data_dir, ignore_errors=True)
                    continue
                raise
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until ``/health`` reports healthy (a leader exists and this member serves)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise EtcdStartError(f"etcd {self.name} exited with {code} while starting\n{self.log_tail()}")
            healthy, last = self._health()
            if healthy:
                return
            time.sleep(0.05)
        raise EtcdStartError(f"etcd {self.name} not healthy after {timeout}s ({last})\n{self.log_tail()}")

    def _health(self) -> "tuple[bool, str]":
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca_file))
            context.load_cert_chain(str(self.tls.client_cert_file), str(self.tls.client_key_file))
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=2, context=context) as resp:
                body = resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:  # 503 while there is no leader
            body = exc.read().decode("utf-8", "replace")
        except (OSError, ValueError) as exc:
            return False, repr(exc)
        try:
            doc = json.loads(body)
        except ValueError:
            return False, body[:200]
        # With auth enabled, the health probe's own read is denied: the member still serves.
        healthy = doc.get("health") == "true" or "permission denied" in str(doc.get("reason", "")).lower()
        return healthy, body[:200]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout`` seconds.  Data stays for a restart."""
        if self._proc is not None:
            stop_process(self._proc, self.stop_timeout)
        self._forget_if_stopped()

    def kill(self) -> None:
        """SIGKILL at once (a crash, for failover tests).  Data stays for a restart."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._forget_if_stopped()

    def _forget_if_stopped(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def close(self) -> None:
        """Stop etcd and delete its temporary directory (the data too unless a ``data_dir`` was given)."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            with _live_lock:
                _live.discard(self)
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "EtcdProcess":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self.running and self._proc else "stopped"
        return f"<EtcdProcess {self.name} etcd {self.version} {self.endpoint} {state}>"

    # -- inspection --
    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident memory of the etcd process, in bytes (Linux /proc)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def etcdctl_command(self, *args: str, endpoints: Optional[Sequence[str]] = None) -> List[str]:
        """The etcdctl command line for ``args`` against this member (or ``endpoints``)."""
        cmd = [str(self.bin_dir / "etcdctl"), f"--endpoints={','.join(endpoints or [self.client_url])}"]
        if self.tls is not None:
            cmd += [
                f"--cacert={self.tls.ca_file}",
                f"--cert={self.tls.client_cert_file}",
                f"--key={self.tls.client_key_file}",
            ]
        return cmd + list(args)

    def etcdctl(self, *args: str, input: Optional[bytes] = None, timeout: float = 60.0) -> str:
        """Run ``etcdctl ARGS`` against this member and return its stdout; raises :class:`EtcdctlError`."""
        proc = subprocess.run(
            self.etcdctl_command(*args), input=input, capture_output=True, env=_etcd_env(), timeout=timeout
        )
        if proc.returncode != 0:
            raise EtcdctlError(args, proc.returncode, proc.stderr.decode("utf-8", "replace"))
        return proc.stdout.decode("utf-8", "replace")


class EtcdCluster:
    """``size`` etcd members on loopback forming one cluster; a context manager.

    ``kill(i)`` crashes member ``i`` (SIGKILL); ``restart(i)`` starts it again on
    the same ports and data, where it rejoins.  Keyword arguments go to every
    :class:`EtcdProcess` (``tls``, ``extra_args``, ``quota_bytes`` ...).

    ``versions`` gives each member its own etcd version, for the mixed clusters
    of a rolling upgrade: ``EtcdCluster(versions=["3.4", "3.5", "3.5"])`` is a
    3-member cluster whose member 0 runs 3.4 (``version`` is then ignored, and
    ``size``, if given, must equal ``len(versions)``).
    """

    def __init__(
        self,
        version: str = "3.5",
        size: Optional[int] = None,
        *,
        versions: Optional[Sequence[str]] = None,
        **kw: Any,
    ) -> None:
        if versions is not None:
            versions = list(versions)
            if size is not None and size != len(versions):
                raise ValueError(f"size={size} but {len(versions)} versions were given")
        else:
            versions = [version] * (3 if size is None else size)
        if not versions:
            raise ValueError("a cluster needs at least one member")
        names = [f"member{i}" for i in range(len(versions))]
        self.members: List[EtcdProcess] = [EtcdProcess(v, name=n, **kw) for v, n in zip(versions, names)]
        self._assign_ports()

    def _assign_ports(self) -> None:
        """Give every member fresh distinct ports and the initial-cluster list naming them all."""
        ports = _free_ports(2 * len(self.members))
        peer_ports, client_ports = ports[: len(self.members)], ports[len(self.members) :]
        initial = ",".join(f"{m.name}=http://127.0.0.1:{p}" for m, p in zip(self.members, peer_ports))
        token = f"streamcodec-{os.getpid()}-{peer_ports[0]}"
        for member, client_port, peer_port in zip(self.members, client_ports, peer_ports):
            member.client_port, member.peer_port = client_port, peer_port
            member.initial_cluster, member.cluster_token = initial, token
            member._fixed_ports = True  # a member alone must not move: the others know its peer URL

    @property
    def endpoints(self) -> List[str]:
        """``127.0.0.1:PORT`` of every member, in member order."""
        return [m.endpoint for m in self.members]

    @property
    def version(self) -> str:
        """The exact version of a uniform cluster; of a mixed one, the lowest (the version the cluster runs at)."""
        return min(self.versions, key=_version_key)

    @property
    def versions(self) -> List[str]:
        """The exact server version of every member, in member order (e.g. ``["3.4.23", "3.5.16", "3.5.16"]``)."""
        return [m.version for m in self.members]

    def start(self, timeout: float = 60.0, attempts: int = 3) -> "EtcdCluster":
        """Start every member, then wait until each serves (they need each other for a quorum).

        A port taken by another process between picking and binding makes a
        member exit with "address already in use": the whole cluster then starts
        afresh on new ports (up to ``attempts`` times in all).
        """
        for attempt in range(attempts):
            try:
                for member in self.members:
                    member.spawn()
                for member in self.members:
                    member.wait_ready(timeout)
                return self
            except EtcdStartError as exc:
                if attempt + 1 < attempts and "address already in use" in str(exc):
                    for member in self.members:
                        member.kill()
                        if member.data_dir.parent == member._tmp:  # our own temporary data, never a given dir
                            shutil.rmtree(member.data_dir, ignore_errors=True)
                    self._assign_ports()
                    continue
                self.stop()
                raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop and clean up every member."""
        for member in self.members:
            member.close()

    def kill(self, i: int) -> None:
        """SIGKILL member ``i``.  Call :meth:`wait_healthy` before relying on the rest (a new leader takes ~1 s)."""
        self.members[i].kill()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running member reports healthy, i.e. a leader exists and serves reads."""
        deadline = time.monotonic() + timeout
        for member in self.members:
            if member.running:
                member.wait_ready(max(0.1, deadline - time.monotonic()))

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start member ``i`` again (stopping it first if it runs) and wait until it serves."""
        member = self.members[i]
        member.stop()
        member.spawn()
        self.wait_healthy(timeout)

    def etcdctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run etcdctl against all running members (etcdctl picks one that answers)."""
        alive = [m for m in self.members if m.running] or self.members
        proc = subprocess.run(
            alive[0].etcdctl_command(*args, endpoints=[m.client_url for m in alive]),
            capture_output=True,
            env=_etcd_env(),
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise EtcdctlError(args, proc.returncode, proc.stderr.decode("utf-8", "replace"))
        return proc.stdout.decode("utf-8", "replace")

    def __enter__(self) -> "EtcdCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EtcdCluster etcd {'/'.join(self.versions)} {self.endpoints}>"
