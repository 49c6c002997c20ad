"""The demo's --quick run, end to end: real etcd, real server processes,
informer processes that verify every object; and the same run with the real
k8s.io/apiserver peer (--kube-apiserver) beside our server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.kube_apiserver_harness import provision_kube_apiserver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_quick_runs_every_mode_and_verifies_every_object(tmp_path, etcd_bin35: str) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "streamcodec.demo", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, ETCD_BIN=etcd_bin35),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert {(r["mode"], r["informers"]) for r in runs} == {
        (m, n) for m in ("buffered", "streaming", "watch-list", "watch-list-shared") for n in (1, 2, 4)
    }
    for r in runs:
        assert not r["server_died"] and r["failures"] == [], r
        assert r["sync_seconds"] > 0 and r["peak_rss"] >= r["baseline_rss"] > 0
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "watch-list" in proc.stdout and "peak RSS growth" in proc.stdout


@pytest.fixture(scope="session")
def kube_bin() -> str:
    """The real k8s.io/apiserver peer, provisioned as tests/test_kube_apiserver_peer.py does (fails, never skips)."""
    return provision_kube_apiserver()


@pytest.mark.slow
@pytest.mark.clientgo
def test_demo_quick_against_kube_apiserver_verifies_every_object_in_every_mode(tmp_path, kube_bin: str, etcd_bin35: str) -> None:
    """--kube-apiserver: the peer's modes run in the same demo, on the same data, and land in the same results."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "streamcodec.demo", "--quick", "--kube-apiserver", kube_bin, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, ETCD_BIN=etcd_bin35),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    ours = ("buffered", "streaming", "watch-list", "watch-list-shared")
    peer = ("kube-apiserver-list", "kube-apiserver-watch-list")
    runs = results["runs"]
    assert sorted((r["mode"], r["informers"]) for r in runs) == sorted((m, n) for m in ours + peer for n in (1, 2, 4))
    for r in runs:
        # every informer of every run synced and checked all 40 objects against their checksums
        assert not r["server_died"] and r["failures"] == [], r
        assert r["sync_seconds"] > 0 and r["peak_rss"] >= r["baseline_rss"] > 0, r
        assert r["server"] == ("k8s.io/apiserver" if r["mode"] in peer else "streamcodec"), r
    # the peer's baseline holds its watch cache: at least the 40 × 64 KiB it filled at start-up
    assert all(r["startup_peak_rss"] >= 40 * (64 << 10) for r in runs if r["mode"] in peer)
    info = results["kube_apiserver"]
    assert info["binary"] == kube_bin and info["watch_cache"] is True and info["modes"] == list(peer)
    assert len(info["comparison"]) == 2 * 3, info["comparison"]  # ours / peer, per peer mode and informer count
    assert "kube-apiserver watch-list" in proc.stdout and "EXCLUDES the watch cache" in proc.stdout
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
