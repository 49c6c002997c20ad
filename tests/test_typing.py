"""The stubs and annotations hold: mypy accepts a typical use of the public
API and rejects a wrong one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mypy(*paths: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--ignore-missing-imports", *paths],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_public_api_type_checks(tmp_path) -> None:
    ok = _mypy("tests/typing_usage.py", "streamcodec/__init__.py", "streamcodec/pool.py", "streamcodec/writer.py")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.py"
    bad.write_text("from streamcodec import JSONEncoder\nx: str = JSONEncoder().encode({})\n")
    wrong = _mypy(str(bad))
    assert wrong.returncode == 1 and "Incompatible types" in wrong.stdout, wrong.stdout
