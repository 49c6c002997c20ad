"""The package as a user gets it: ``python -m build`` (an sdist, then a wheel from the sdist), installed with pip into
a fresh virtualenv outside the source tree, then its commands run from a directory outside the tree against real
etcd.  And the sdist once more without a C compiler: it installs with the pure-Python twins."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Set, Tuple

import httpx
import pytest

from streamcodec.cli import build_parser
from streamcodec.demo.experiment import MODES
from streamcodec.local_etcd import EtcdProcess, etcd_bin_dir
from tests.apiserver_harness import free_port, wait_until_serving

pytestmark = [pytest.mark.heavy, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "streamcodec"
#: Left out of the copy the distributions are built from: build products, caches and what is not the package.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.c", ".*cache", ".hypothesis",
    ".benchmarks", "tests", "benchmarks", "docs",
)
#: Top-level names the distribution once installed, which any other project may own (RECORD checks the rest).
_FOREIGN_TOP_LEVEL = ("storage", "apiserver")


def _run(cmd: Sequence[object], timeout: float, **kwargs: Any) -> "subprocess.CompletedProcess[str]":
    """Runs ``cmd`` (paths allowed) and asserts it succeeded, showing its output when not."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _commands() -> Set[str]:
    """Every subcommand of the tree's ``streamcodec`` parser."""
    parser = build_parser()
    choices = [a.choices for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    assert len(choices) == 1 and choices[0]
    return set(choices[0])  # type: ignore[arg-type]


def _listed_commands(help_text: str) -> Set[str]:
    """The subcommands a ``--help`` text lists, one per line under the positional arguments."""
    return set(re.findall(r"^ {4}([a-z][\w-]*)(?: |$)", help_text, re.MULTILINE))


def _subpackages() -> Set[str]:
    """Dotted names of every package of the tree (a directory with ``__init__.py``)."""
    return {".".join(p.parent.relative_to(REPO).parts) for p in PACKAGE.rglob("__init__.py") if "__pycache__" not in p.parts}


def _extensions() -> Set[str]:
    """Dotted names of every compiled module of the tree (one per ``.pyx``)."""
    return {".".join(p.relative_to(REPO).with_suffix("").parts) for p in PACKAGE.rglob("*.pyx")}


@dataclass
class Dists:
    sdist: Path
    wheel: Path
    #: The sdist's install into another fresh venv without a C compiler, running while the wheel is built.
    no_compiler: "Future[Tuple[Venv, List[str]]]"


@dataclass
class Venv:
    root: Path
    python: Path
    site: Path
    env: Dict[str, str]
    workdir: Path

    def run(self, *args: object, timeout: float = 120, **env: str) -> "subprocess.CompletedProcess[str]":
        """Runs ``args`` (the first one a program of the venv's bin/) in a directory outside the tree."""
        program = self.root / "bin" / str(args[0])
        return _run([program, *args[1:]], timeout, cwd=self.workdir, env=dict(self.env, **env))

    def probe(self) -> Dict[str, Any]:
        """What the venv's interpreter imports: implementations and the file of every streamcodec module."""
        script = textwrap.dedent(
            """
            import importlib, json, pkgutil, sys
            import streamcodec, streamcodec.storage
            names = [m.name for m in pkgutil.walk_packages(streamcodec.__path__, "streamcodec.")
                     if not m.name.endswith("__main__")]
            for name in names:
                importlib.import_module(name)
            print(json.dumps({
                "implementation": streamcodec.IMPLEMENTATION, "pure_python": streamcodec.PURE_PYTHON,
                "storage_implementation": streamcodec.storage.IMPLEMENTATION,
                "files": {n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.startswith("streamcodec")},
                "sys_path": sys.path,
            }))
            """
        )
        return json.loads(self.run("python", "-c", script).stdout)


def _make_venv(tmp: Path) -> Venv:
    root = tmp / "venv"
    _run([sys.executable, "-m", "venv", root], 120)
    python = root / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], 60).stdout.strip())
    workdir = tmp / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "STREAMCODEC_PURE_PYTHON")}
    # The new venv first, and nothing of the tree (its own .venv/bin, say) on PATH.
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(":") if p and not Path(p).resolve().is_relative_to(REPO)]
    env.update(PATH=":".join([str(root / "bin"), *path]), VIRTUAL_ENV=str(root), PIP_NO_INPUT="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return Venv(root=root, python=python, site=site, env=env, workdir=workdir)


#: A C compiler that is there but fails, as on a machine without Python's headers: every extension fails to build.
FAILING_CC = "false"


def _compile_warnings(output: str) -> List[str]:
    """What setup.py's optional build_ext said it could not compile, sorted."""
    return sorted(re.findall(r"WARNING: could not compile (.+?) \(", output))


def _install_without_compiler(sdist: Path, tmp: Path) -> Tuple[Venv, List[str]]:
    venv = _make_venv(tmp)
    # -v: pip shows the build's own output, warnings included
    proc = venv.run("python", "-m", "pip", "install", "-v", sdist, timeout=600, CC=FAILING_CC, CXX=FAILING_CC)
    return venv, _compile_warnings(proc.stdout + proc.stderr)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tree's sources: building writes next to them (egg-info, generated C), never in the tree."""
    src = tmp_path_factory.mktemp("src") / "streamcodec"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCES)
    return src


@pytest.fixture(scope="module")
def dists(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dists]:
    """``python -m build``'s sdist, then a wheel built from that sdist (what ``python -m build`` does by default,
    in two steps so that installing the sdist without a compiler runs meanwhile)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--sdist", "--outdir", out, source], 600)
    (sdist,) = out.glob("*.tar.gz")
    with ThreadPoolExecutor(1) as pool:
        no_compiler = pool.submit(_install_without_compiler, sdist, tmp_path_factory.mktemp("no-compiler"))
        unpacked = tmp_path_factory.mktemp("sdist")
        with tarfile.open(sdist) as archive:
            archive.extractall(unpacked, filter="data")
        (tree,) = unpacked.iterdir()
        _run([sys.executable, "-m", "build", "--wheel", "--outdir", out, tree], 600)
        (wheel,) = out.glob("*.whl")
        yield Dists(sdist=sdist, wheel=wheel, no_compiler=no_compiler)


@pytest.fixture(scope="module")
def installed(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh virtualenv outside the tree with the wheel (and the demo's extras) installed by pip."""
    venv = _make_venv(tmp_path_factory.mktemp("installed"))
    venv.run("python", "-m", "pip", "install", "-q", f"{dists.wheel}[demo]", timeout=600)
    return venv


def test_distributions_carry_the_package_and_nothing_else(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as wheel:
        names = wheel.namelist()
    dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
    assert {n.split("/")[0] for n in names} == {"streamcodec", dist_info}
    packaged = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packaged == _subpackages()
    compiled = {n.split(".")[0].replace("/", ".") for n in names if n.endswith(".so")}
    assert compiled == _extensions()

    with tarfile.open(dists.sdist) as sdist:
        members = [m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name]
    needed = {str(p.relative_to(REPO)) for suffix in ("*.pyx", "*.pxi", "*.pyi", "*.proto", "py.typed", "*.h")
              for p in PACKAGE.rglob(suffix)}
    assert {"pyproject.toml", "setup.py", "MANIFEST.in", "streamcodec/_json.pyx"} | needed <= set(members)
    assert not [m for m in members if m.endswith((".so", ".c")) or m.startswith(("tests/", "storage/", "apiserver/"))]


def test_installed_commands(installed: Venv) -> None:
    commands = _commands()
    assert "etcd" in commands
    top_help = installed.run("streamcodec", "--help").stdout
    assert _listed_commands(top_help) == commands, top_help
    assert installed.run("python", "-m", "streamcodec", "--help").stdout == top_help
    provisioned = etcd_bin_dir("3.5")
    proc = installed.run("streamcodec", "etcd", "provision", "3.5", ETCD_BIN=str(provisioned))
    assert proc.stdout.splitlines() == [str(provisioned.resolve())]


def test_installed_imports_resolve_into_the_venv(installed: Venv) -> None:
    report = installed.probe()
    assert report["implementation"] == "cython" and report["storage_implementation"] == "cython"
    files = report["files"]
    assert set(files) >= _subpackages() | _extensions()
    outside = {n: f for n, f in files.items() if not f or not f.startswith(str(installed.site) + "/streamcodec/")}
    assert outside == {}
    assert not [p for p in report["sys_path"] if p and Path(p).resolve().is_relative_to(REPO)]
    tops = {p.name for p in installed.site.iterdir()}
    assert not tops & set(_FOREIGN_TOP_LEVEL), sorted(tops)
    record = next(installed.site.glob("streamcodec-*.dist-info")) / "RECORD"
    top_level = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines()}
    assert {t for t in top_level if t != ".."} == {"streamcodec", record.parent.name}  # "..": the bin/streamcodec script


def test_installed_demo_quick(installed: Venv, tmp_path: Path, etcd_bin35: str) -> None:
    out = tmp_path / "out"
    proc = installed.run("streamcodec", "demo", "--quick", "--out", out, timeout=300, ETCD_BIN=etcd_bin35)
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert {(r["mode"], r["informers"]) for r in runs} == {(m, n) for m in MODES for n in (1, 2, 4)}  # --quick: 1,2,4
    for r in runs:
        assert not r["server_died"] and r["failures"] == [], r
        assert r["sync_seconds"] > 0 and r["peak_rss"] >= r["baseline_rss"] > 0
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "watch-list" in proc.stdout and "peak RSS growth" in proc.stdout


def test_installed_serve_answers_health_and_lists(installed: Venv, etcd35: EtcdProcess, prefix: bytes) -> None:
    port = free_port()
    server = subprocess.Popen(
        [str(installed.root / "bin" / "streamcodec"), "serve", "--etcd", f"http://{etcd35.endpoint}",
         "--listen", f"127.0.0.1:{port}", "--key-root", prefix.decode().rstrip("/"), "--log-level", "warning"],
        cwd=installed.workdir, env=installed.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(port, server)
        health = httpx.get(url + "/healthz", timeout=10)
        assert health.status_code == 200 and health.text == "ok"
        names = [f"secret-{i}" for i in range(3)]
        for name in names:
            created = httpx.post(url + "/api/v1/namespaces/default/secrets", timeout=10,
                                 json={"metadata": {"name": name}, "data": {"k": "dmFsdWU="}})
            assert created.status_code == 201, created.text
        listed = httpx.get(url + "/api/v1/namespaces/default/secrets", timeout=10).json()
        assert listed["kind"] == "SecretList"
        assert [(i["metadata"]["name"], i["data"]) for i in listed["items"]] == [(n, {"k": "dmFsdWU="}) for n in names]
    finally:
        server.terminate()
        assert server.wait(15) in (0, -15)
    assert server.stderr is not None and b"Traceback" not in server.stderr.read()


def test_sdist_installs_without_a_c_compiler(dists: Dists) -> None:
    venv, warnings = dists.no_compiler.result(timeout=600)
    assert warnings == sorted(_extensions())  # each extension failed on its own, and the others were still tried
    assert not list((venv.site / "streamcodec").rglob("*.so"))
    report = venv.probe()
    assert report["implementation"] == "python" and report["storage_implementation"] == "python"
    assert report["pure_python"] is False  # the twins because nothing was compiled, not because they were asked for
    assert all(f and f.startswith(str(venv.site) + "/streamcodec/") for f in report["files"].values()), report["files"]
    assert _listed_commands(venv.run("streamcodec", "--help").stdout) == _commands()


def test_build_ext_without_any_compiler_warns_once_and_generates_nothing(source: Path, tmp_path: Path) -> None:
    work = tmp_path / "src"
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("*.c", "*.egg-info", "build"))
    cc = "/nonexistent/cc"
    proc = _run([sys.executable, "setup.py", "build_ext", "--build-lib", tmp_path / "lib", "--build-temp", tmp_path / "tmp"],
                300, cwd=work, env=dict(os.environ, CC=cc, CXX=cc))
    assert _compile_warnings(proc.stderr) == ["the C extensions"], proc.stderr
    assert f"no C compiler '{cc}'" in proc.stderr and "the pure-Python twin is used instead" in proc.stderr
    assert not list(work.rglob("*.c"))  # no C generated for a compiler that is not there
    assert not list((tmp_path / "lib").rglob("*.so"))
