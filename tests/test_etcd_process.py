"""The test etcd servers themselves: right versions, serving, always cleaned up, clusters survive a crash;
and where their binaries come from (streamcodec.etcd_provision, `streamcodec etcd provision`, scripts/provision-etcd)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streamcodec import etcd_provision
from streamcodec.local_etcd import EtcdCluster, EtcdProcess, EtcdStartError, EtcdctlError, etcd_bin_dir

REPO = Path(__file__).resolve().parent.parent
#: A PATH with the system's tools (apt-get, dpkg-deb, ldd, python3) and no etcd.
SYSTEM_PATH = "/usr/bin:/bin"


def _version_tuple(text: str) -> tuple:
    return tuple(int(part) for part in text.split("."))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_server_is_the_asked_version(etcd: EtcdProcess, etcd_version: str) -> None:
    assert etcd.version.startswith(etcd_version + ".")
    # Kubernetes gates watch-progress requests on 3.5.13 / 3.4.31: we need one server on each side of the gate.
    if etcd_version == "3.5":
        assert _version_tuple(etcd.version) >= (3, 5, 13)
    else:
        assert _version_tuple(etcd.version) < (3, 4, 31)
    # What the running server reports over gRPC, not just the binary's --version.
    status = json.loads(etcd.etcdctl("endpoint", "status", "-w", "json"))
    assert status[0]["Status"]["version"] == etcd.version
    assert etcd.endpoint == f"127.0.0.1:{etcd.client_port}"


def test_put_get_with_etcdctl(etcd: EtcdProcess, prefix: bytes) -> None:
    key = prefix.decode() + "pod-1"
    assert etcd.etcdctl("put", key, "v1 é").strip() == "OK"
    assert etcd.etcdctl("get", key, "--print-value-only") == "v1 é\n"
    etcd.etcdctl("put", prefix.decode() + "pod-2", "v2")
    listed = json.loads(etcd.etcdctl("get", "--prefix", prefix.decode(), "-w", "json"))
    assert listed["count"] == 2
    keys = [base64.b64decode(kv["key"]) for kv in listed["kvs"]]
    assert keys == [prefix + b"pod-1", prefix + b"pod-2"]
    assert base64.b64decode(listed["kvs"][0]["value"]) == "v1 é".encode()


def test_etcdctl_error_is_raised(etcd: EtcdProcess) -> None:
    with pytest.raises(EtcdctlError) as info:
        etcd.etcdctl("get", "--no-such-flag")
    assert info.value.returncode != 0
    assert "no-such-flag" in info.value.stderr


def test_rss_bytes(etcd: EtcdProcess) -> None:
    rss = etcd.rss_bytes()
    assert 1 << 20 < rss < 2 << 30


def test_stop_removes_process_data_and_port(etcd_version: str) -> None:
    server = EtcdProcess(etcd_version).start()
    pid, port, tmp = server.pid, server.client_port, server.data_dir.parent
    assert _pid_alive(pid) and tmp.is_dir()
    server.close()
    assert not _pid_alive(pid)
    assert not tmp.exists()
    assert _port_free(port)


def test_stop_escalates_to_sigkill() -> None:
    server = EtcdProcess("3.5", stop_timeout=0.5).start()
    os.kill(server.pid, signal.SIGSTOP)  # a hung server: SIGTERM stays pending
    started = time.monotonic()
    server.close()
    assert server.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_start_failure_reports_the_log() -> None:
    server = EtcdProcess("3.5", extra_args=["--no-such-etcd-flag"])
    try:
        with pytest.raises(EtcdStartError, match="no-such-etcd-flag"):
            server.start(timeout=15)
    finally:
        server.close()


def test_restart_keeps_data(etcd_version: str, prefix: bytes) -> None:
    with EtcdProcess(etcd_version) as server:
        server.etcdctl("put", prefix.decode() + "k", "kept")
        server.kill()
        assert not server.running
        server.start()
        assert server.etcdctl("get", prefix.decode() + "k", "--print-value-only") == "kept\n"


_ORPHAN_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from streamcodec.local_etcd import EtcdProcess
    server = EtcdProcess("3.5").start()
    print(server.pid, server.data_dir.parent, flush=True)
    if sys.argv[1] == "hang":
        time.sleep(600)
    # else: exit without closing; the atexit hook must stop it
    """
)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_no_etcd_outlives_its_test_process(how: str) -> None:
    script = _ORPHAN_SCRIPT.format(repo=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-c", script, "hang" if how == "sigkill" else "exit"], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    pid_text, tmp = child.stdout.readline().split()
    pid = int(pid_text)
    if how == "sigkill":
        assert _pid_alive(pid)
        child.kill()  # no atexit: the parent-death signal must take etcd down
    child.wait(30)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(pid)
    if how == "exit":
        assert not Path(tmp).exists()
    else:
        shutil.rmtree(tmp, ignore_errors=True)  # SIGKILL leaves the temp dir; only the process matters


def _leader_index(cluster: EtcdCluster) -> int:
    statuses = json.loads(cluster.etcdctl("endpoint", "status", "-w", "json"))
    by_url = {s["Endpoint"]: s["Status"] for s in statuses}
    for i, member in enumerate(cluster.members):
        status = by_url.get(member.client_url)
        if status and status["leader"] == status["header"]["member_id"]:
            return i
    raise AssertionError(f"no leader among {statuses}")


def test_cluster_survives_leader_crash_and_restart(etcd_cluster: EtcdCluster, prefix: bytes) -> None:
    p = prefix.decode()
    members = json.loads(etcd_cluster.etcdctl("member", "list", "-w", "json"))["members"]
    assert len(members) == 3
    assert sorted(m["name"] for m in members) == ["member0", "member1", "member2"]

    etcd_cluster.etcdctl("put", p + "before", "1")
    leader = _leader_index(etcd_cluster)
    pid = etcd_cluster.members[leader].pid
    etcd_cluster.kill(leader)
    assert not _pid_alive(pid)
    etcd_cluster.wait_healthy()
    new_leader = _leader_index(etcd_cluster)
    assert new_leader != leader

    etcd_cluster.etcdctl("put", p + "during", "2")  # the two survivors still form a quorum
    etcd_cluster.restart(leader)
    rejoined = etcd_cluster.members[leader]
    assert rejoined.running and rejoined.pid != pid
    # A linearizable read served by the restarted member sees the write it missed while down.
    got = rejoined.etcdctl("get", "--prefix", p, "--print-value-only", "--consistency=l")
    assert got.split() == ["1", "2"]


# --------------------------------------------------------------------------- provisioning


def _provision_env(tmp_path: Path, **overrides: str) -> dict:
    """The environment of a provisioning run: a fresh cache in tmp_path, no ETCD_BIN, PATH without etcd."""
    env = {k: v for k, v in os.environ.items() if k not in ("ETCD_BIN", "STREAMCODEC_CACHE")}
    env.update(STREAMCODEC_CACHE=str(tmp_path / "cache"), PATH=SYSTEM_PATH)
    env.update(overrides)
    assert shutil.which("etcd", path=env["PATH"]) is None, "the test needs a PATH without etcd"
    return env


def _provision_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamcodec", "etcd", "provision", *args],
        capture_output=True, text=True, env=env, cwd=env.get("HOME", "/"), timeout=600,
    )


def _link_binaries(source: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("etcd", "etcdctl"):
        (dest / name).symlink_to(source / name)
    return dest


def test_provision_takes_etcd_bin_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = etcd_bin_dir("3.5")
    alias = tmp_path / "alias"
    alias.symlink_to(real, target_is_directory=True)
    for name, value in _provision_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ETCD_BIN", str(alias))
    assert etcd_provision.provision("3.5") == real.resolve()  # the real directory, as `pwd -P` printed it
    assert not (tmp_path / "cache").exists()  # found before the cache was even looked at


def test_provision_skips_etcd_bin_of_another_version_then_uses_path(tmp_path: Path) -> None:
    env = _provision_env(tmp_path, ETCD_BIN=str(etcd_bin_dir("3.4")))
    # etcd on PATH through a symlink: the answer is the directory of the binary it points at.
    on_path = tmp_path / "on-path"
    on_path.mkdir()
    (on_path / "etcd").symlink_to(etcd_bin_dir("3.5") / "etcd")
    env["PATH"] = f"{on_path}:{SYSTEM_PATH}"
    proc = _provision_cli(env, "3.5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(etcd_bin_dir("3.5").resolve())]
    # ... but only with etcdctl beside it: an etcd alone on PATH does not count.
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(etcd_bin_dir("3.5") / "etcd", lonely / "etcd")
    proc = _provision_cli(dict(_provision_env(tmp_path), PATH=str(lonely)), "3.5")
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    assert "no etcd 3.5 found" in proc.stderr


def test_provision_finds_the_cache_of_the_right_version(tmp_path: Path) -> None:
    env = _provision_env(tmp_path)
    cache = tmp_path / "cache" / "etcd"
    _link_binaries(etcd_bin_dir("3.4"), cache / "3.5.0")  # named 3.5 but holds 3.4: not taken
    _link_binaries(etcd_bin_dir("3.5"), cache / "3.5.16-incomplete")  # no etcdctl: not taken
    (cache / "3.5.16-incomplete" / "etcdctl").unlink()
    wanted = _link_binaries(etcd_bin_dir("3.5"), cache / "3.5.16")
    for version, expected in (("3.5", wanted), ("3.4", None)):
        proc = _provision_cli(dict(env, PATH="/nonexistent"), version)
        if expected is None:  # no 3.4.* entry and no apt-get on this PATH: the clear error
            assert proc.returncode == 1 and proc.stdout == ""
            assert "no etcd 3.4 found and this is not a Debian system: set ETCD_BIN" in proc.stderr
            assert "GitHub releases" in proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.splitlines() == [str(expected)]


def _apt_state() -> dict:
    """What the system's apt knows: its package lists and caches, by name, size and modification time."""
    state = {}
    for top in ("/var/lib/apt/lists", "/var/cache/apt", "/var/lib/dpkg/status"):
        paths = [Path(top)] if Path(top).is_file() else sorted(Path(top).rglob("*")) if Path(top).exists() else []
        for path in paths:
            if path.is_file():
                st = path.stat()
                state[str(path)] = (st.st_size, st.st_mtime_ns)
    return state


_SERVE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from streamcodec.local_etcd import EtcdProcess
    with EtcdProcess({version!r}) as server:
        server.etcdctl("put", "/provisioned", "fetched")
        print(server.bin_dir, server.version, server.etcdctl("get", "/provisioned", "--print-value-only"))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("version, suite, exact", [("3.5", "trixie", "3.5.16"), ("3.4", "bookworm", "3.4.23")])
def test_provision_fetches_debian_packages_once_for_concurrent_callers(
    tmp_path: Path, version: str, suite: str, exact: str
) -> None:
    env = _provision_env(tmp_path)
    apt_before = _apt_state()
    callers = [
        subprocess.Popen([sys.executable, "-m", "streamcodec", "etcd", "provision", version],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    results = [caller.communicate(timeout=600) for caller in callers]
    assert [caller.returncode for caller in callers] == [0, 0, 0], results
    dest = tmp_path / "cache" / "etcd" / exact
    assert [out.splitlines() for out, _ in results] == [[str(dest)]] * 3
    # The lock made two of them wait for the first one's download instead of fetching again.
    fetches = [err for _, err in results if f"fetching etcd {version} (Debian {suite})" in err]
    assert len(fetches) == 1, results
    assert f"etcd {exact} ready in {dest}" in fetches[0]
    assert etcd_provision.etcd_version_of(dest) == exact
    packages = (dest / "SOURCE-PACKAGES").read_text().split()
    assert sorted(p.split("_")[0] for p in packages) == ["etcd-client", "etcd-server"]
    assert all(p.endswith(".deb") and f"_{exact}-" in p for p in packages), packages
    assert sorted(p.name for p in (tmp_path / "cache" / "etcd").iterdir() if not p.name.startswith(".lock")) == [exact]
    # The fetched binaries serve: an EtcdProcess of a fresh interpreter, pointed at them through ETCD_BIN.
    serve = subprocess.run([sys.executable, "-c", _SERVE_SCRIPT.format(repo=str(REPO), version=version)],
                           capture_output=True, text=True, env=dict(env, ETCD_BIN=str(dest)), timeout=120)
    assert serve.returncode == 0, serve.stderr
    assert serve.stdout.split() == [str(dest), exact, "fetched"]
    assert _apt_state() == apt_before  # the private apt configuration left the system's apt alone


def test_provision_rejects_an_unsupported_version(tmp_path: Path) -> None:
    proc = _provision_cli(_provision_env(tmp_path), "3.6")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "unsupported VERSION '3.6' (expected 3.5 or 3.4)" in proc.stderr
    script = subprocess.run([str(REPO / "scripts" / "provision-etcd")], capture_output=True, text=True, timeout=60)
    assert script.returncode == 1 and "usage: provision-etcd VERSION" in script.stderr


def test_provision_script_needs_only_the_system_python_and_the_stdlib(tmp_path: Path) -> None:
    system_python = shutil.which("python3", path=SYSTEM_PATH)
    assert system_python, "no python3 in /usr/bin:/bin"
    for version in ("3.5", "3.4"):
        # Outside the tree, with the system python3 first on PATH and no virtualenv in sight.
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHON")}
        env["PATH"] = f"{SYSTEM_PATH}:{env.get('PATH', '')}"
        proc = subprocess.run([str(REPO / "scripts" / "provision-etcd"), version],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == [str(etcd_bin_dir(version))]
    # What `python3 -m streamcodec etcd provision` imports: the standard library and this tree, nothing else.
    probe = textwrap.dedent(
        """
        import json, sys, sysconfig
        sys.path.insert(0, sys.argv[1])
        from streamcodec import cli
        code = cli.main(["etcd", "provision", "3.5"])
        stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
        files = {name: getattr(m, "__file__", None) for name, m in list(sys.modules.items())}
        foreign = {n: f for n, f in files.items() if f and not f.startswith(stdlib + (sys.argv[1] + "/streamcodec/",))}
        print(json.dumps({"code": code, "foreign": foreign, "site": [p for p in sys.path if "-packages" in p]}))
        """
    )
    proc = subprocess.run([system_python, "-I", "-S", "-c", probe, str(REPO)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report == {"code": 0, "foreign": {}, "site": []}, report
