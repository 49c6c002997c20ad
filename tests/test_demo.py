"""The demo's --quick run, end to end: real etcd, real server processes,
informer processes that verify every object."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_quick_runs_every_mode_and_verifies_every_object(tmp_path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "streamcodec.demo", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert {(r["mode"], r["informers"]) for r in runs} == {
        (m, n) for m in ("buffered", "streaming", "watch-list") for n in (1, 2, 4)
    }
    for r in runs:
        assert not r["server_died"] and r["failures"] == [], r
        assert r["sync_seconds"] > 0 and r["peak_rss"] >= r["baseline_rss"] > 0
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "watch-list" in proc.stdout and "peak RSS growth" in proc.stdout
