"""The test etcd servers themselves: right versions, serving, always cleaned up, clusters survive a crash."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from streamcodec.local_etcd import EtcdCluster, EtcdProcess, EtcdStartError, EtcdctlError

REPO = Path(__file__).resolve().parent.parent


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
        import shutil

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
