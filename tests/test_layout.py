"""The package's layout rules, checked on the source (no etcd, no server).

Three rooms with arrows one way: the codec (``streamcodec/*.py``) names neither storage nor the
server; storage names neither the server nor the codec's formats; the informer (the client half)
names neither storage nor the server.  Only the glue (the server, the CLI, the demo) joins them.
And every module's ``__all__`` names things that exist, so ``from m import *`` works.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Set, Tuple

import pytest

import streamcodec

PACKAGE = Path(streamcodec.__file__).resolve().parent

#: the glue: what may import from every room
GLUE = {"streamcodec.cli", "streamcodec.__main__", "streamcodec.local_etcd", "streamcodec.etcd_provision"}


def modules() -> Iterator[Tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.rglob("*.pyx")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def imported(name: str, path: Path) -> Set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if path.suffix == ".pyx":  # Cython is not Python: the module named by each import line
        found = set()
        for match in re.finditer(r"^(?:from|import)\s+(\.*)([\w.]*)", path.read_text(), re.M):
            dots, module = match.groups()
            if dots:
                base = package.split(".")[: len(package.split(".")) - (len(dots) - 1)]
                module = ".".join(base + ([module] if module else []))
            found.add(module)
        return found
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def room(name: str) -> str:
    parts = name.split(".")
    if name in GLUE:
        return "glue"
    if len(parts) > 1 and parts[1] in ("storage", "server", "informer", "demo"):
        return parts[1] if parts[1] != "demo" else "glue"
    return "codec"


FORBIDDEN = {
    "codec": ("streamcodec.storage", "streamcodec.server", "streamcodec.informer", "streamcodec.demo", "grpc"),
    "storage": ("streamcodec.server", "streamcodec.informer", "streamcodec.demo", "streamcodec._", "streamcodec.kube_schema", "streamcodec.writer"),
    "informer": ("streamcodec.storage", "streamcodec.server", "streamcodec.demo", "grpc"),
    "server": ("streamcodec.demo", "streamcodec.informer", "streamcodec.cli"),
    "glue": (),
}


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_point_one_way(name: str, path: Path) -> None:
    kind = room(name)
    bad = sorted(
        m for m in imported(name, path)
        if any(m == f or m.startswith(f + ".") or (f.endswith("_") and m.startswith(f)) for f in FORBIDDEN[kind])
        and not m.startswith("streamcodec.storage._wire")  # storage's own wire codec
    )
    assert not bad, f"{name} ({kind}) imports {bad}"


def test_the_rules_catch_a_wrong_arrow(tmp_path: Path) -> None:
    """The check itself can fail: a codec module naming storage is caught."""
    fake = tmp_path / "streamcodec" / "fake.py"
    fake.parent.mkdir()
    fake.write_text("from .storage import EtcdStore\nimport grpc\n")
    assert {"streamcodec.storage", "grpc"} <= imported("streamcodec.fake", fake)
    compiled = tmp_path / "streamcodec" / "fake2.pyx"
    compiled.write_text("from .server.app import (\n    App,\n)\ncimport cython\n")
    assert "streamcodec.server.app" in imported("streamcodec.fake2", compiled)


def test_every_public_name_exists() -> None:
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="streamcodec."):
        if info.name.endswith("__main__"):
            continue  # runs the command on import
        module = importlib.import_module(info.name)
        for public in getattr(module, "__all__", ()):
            assert hasattr(module, public), f"{info.name}.__all__ names {public!r}, which it does not define"


def test_every_benchmark_module_imports() -> None:
    """The benchmarks are not run by the test command; a rename in the package must still not break them."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
         *sorted(str(p.relative_to(root)) for p in (root / "benchmarks").glob("bench_*.py"))],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert re.search(r"^\d+ tests? collected", proc.stdout, re.M), proc.stdout[-1000:]


def test_no_asyncio_wait_for_in_the_package() -> None:
    """``asyncio.wait_for`` before Python 3.12 loses a cancellation that arrives as its awaitable completes
    (tests/test_informer.py::test_a_timeout_never_loses_a_cancellation); the package uses ``asyncio.timeout``."""
    users = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py*")
        if p.suffix in (".py", ".pyx", ".pxi") and re.search(r"\bwait_for\(", re.sub(r"#.*|``.*?``", "", p.read_text("utf-8")))
    )
    assert not users, users
