"""Real etcd + etcdctl binaries of a supported version (3.5 or 3.4) on this machine.

Standard library only: ``scripts/provision-etcd`` runs this with the system
``python3`` and the source tree, before any virtualenv exists.

Where the binaries come from, first match wins:

1. ``$ETCD_BIN`` (a directory), if its ``etcd --version`` is VERSION.x;
2. an ``etcd`` on ``PATH`` (with ``etcdctl`` beside it), if its version is VERSION.x;
3. the cache ``${STREAMCODEC_CACHE:-$HOME/.cache/streamcodec}/etcd/<exact version>/``;
4. Debian packages etcd-server + etcd-client, fetched with ``apt-get download``
   under a PRIVATE apt configuration (own sources list, state, cache and status
   file, so the system's apt state is untouched) from the same Debian mirror the
   system's own apt sources name: 3.5 -> suite trixie (3.5.16), 3.4 -> suite
   bookworm (3.4.23).  They are unpacked with ``dpkg-deb -x`` and the binaries
   copied into the cache (step 3).  A lock file in the cache makes concurrent
   callers wait for one download.

Other systems (no Debian mirror): download the upstream release tarball
``etcd-v<exact version>-linux-<amd64|arm64>.tar.gz`` from the etcd project's
GitHub releases page, unpack it and point ``ETCD_BIN`` at the unpacked directory.

Command line: ``streamcodec etcd provision VERSION`` prints the directory.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

__all__ = [
    "SUPPORTED_VERSIONS",
    "DEBIAN_SUITES",
    "EtcdNotAvailable",
    "cache_root",
    "etcd_version_of",
    "provision",
    "main",
]

#: The Debian suite whose etcd-server package is each supported etcd version: one
#: above Kubernetes' 3.5.13 watch-progress gate (trixie: 3.5.16), one below 3.4.31
#: (bookworm: 3.4.23).
DEBIAN_SUITES: Dict[str, str] = {"3.5": "trixie", "3.4": "bookworm"}
SUPPORTED_VERSIONS = tuple(DEBIAN_SUITES)
DEBIAN_PACKAGES = ("etcd-server", "etcd-client")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
CACHE_ENV = "STREAMCODEC_CACHE"
ETCD_BIN_ENV = "ETCD_BIN"
#: Copied into the cache when the package ships them.
BINARIES = ("etcd", "etcdctl", "etcdutl")
#: A slow mirror is slow, but a hung one must not hang a test run forever.
COMMAND_TIMEOUT = 900.0
#: Shared libraries a Go binary may link: anything else would come from a package we did not install.
_LIBC_ONLY = re.compile(r"linux-vdso|ld-linux|/libc\.so|libpthread|libdl|libresolv|statically")
#: apt's update/dpkg hooks refresh system-wide caches (AppStream, PackageKit) from the lists they see:
#: switched off, so they never see our private lists.
_NO_HOOKS = "".join(
    f"#clear {hook};\n"
    for hook in (
        "APT::Update::Pre-Invoke",
        "APT::Update::Post-Invoke",
        "APT::Update::Post-Invoke-Success",
        "DPkg::Pre-Invoke",
        "DPkg::Post-Invoke",
    )
)


class EtcdNotAvailable(RuntimeError):
    """No etcd binaries of the asked version could be found or provisioned."""


def _log(message: str) -> None:
    print(f"streamcodec etcd provision: {message}", file=sys.stderr, flush=True)


def _etcd_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}  # stray ETCD_* would be etcd flags
    if os.uname().machine in ("aarch64", "arm64"):
        env["ETCD_UNSUPPORTED_ARCH"] = "arm64"  # etcd 3.4 refuses to run on arm64 without it (even --version)
    return env


def cache_root() -> Path:
    """``${STREAMCODEC_CACHE:-$HOME/.cache/streamcodec}/etcd``: where fetched binaries are kept."""
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "streamcodec")
    return Path(base) / "etcd"


def etcd_version_of(directory: Path) -> Optional[str]:
    """The exact server version of ``directory/etcd`` ("3.5.16"), or None when it is missing or says none."""
    etcd = Path(directory) / "etcd"
    if not (etcd.is_file() and os.access(etcd, os.X_OK)):
        return None
    try:
        out = subprocess.run(
            [str(etcd), "--version"], capture_output=True, text=True, env=_etcd_env(), timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^etcd Version: *([0-9][0-9.]*)", out, re.MULTILINE)
    return match.group(1) if match else None


def _matches(directory: Path, want: str) -> bool:
    """True when ``directory`` holds etcd + etcdctl and etcd is ``want``.x."""
    etcdctl = Path(directory) / "etcdctl"
    if not (etcdctl.is_file() and os.access(etcdctl, os.X_OK)):
        return False
    return (etcd_version_of(directory) or "").startswith(want + ".")


def _find_cached(root: Path, want: str) -> Optional[Path]:
    for entry in sorted(glob.glob(glob.escape(str(root)) + f"/{want}.*/")):
        directory = Path(entry.rstrip("/"))
        if directory.is_dir() and _matches(directory, want):
            return directory
    return None


def _system_codename() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key == "VERSION_CODENAME":
                    return value.strip().strip("\"'")
    except OSError:
        pass
    return ""


def _deb822_mirror(text: str, codename: str) -> Optional[str]:
    """The first URI of a ``Types: deb`` stanza whose Suites include ``codename`` (a ``*.sources`` file)."""
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: Dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith(("#", " ", "\t")):
                fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and codename in fields.get("suites", "").split():
            uris = fields.get("uris", "").split()
            if uris:
                return uris[0]
    return None


def _one_line_mirror(text: str, codename: str) -> Optional[str]:
    """The URI of the first ``deb [options] URI SUITE ...`` line for ``codename`` (a ``*.list`` file)."""
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] != "deb":
            continue
        i = 1
        if i < len(words) and words[i].startswith("["):  # options: [a=b c=d]
            while i < len(words) and not words[i].endswith("]"):
                i += 1
            i += 1
        if i + 1 < len(words) and words[i + 1] == codename:
            return words[i]
    return None


def debian_mirror() -> str:
    """The Debian archive mirror the system itself uses: the URI of the source whose suites include its codename."""
    codename = _system_codename()
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        mirror = _deb822_mirror(Path(path).read_text(errors="replace"), codename)
        if mirror:
            return mirror
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        if os.path.isfile(path):
            mirror = _one_line_mirror(Path(path).read_text(errors="replace"), codename)
            if mirror:
                return mirror
    raise EtcdNotAvailable("cannot find the Debian mirror in /etc/apt/sources.list{,.d}")


def _run_logged(cmd: Sequence[str], log_file: Path, what: str, env: Dict[str, str], cwd: Optional[Path] = None) -> None:
    """Runs ``cmd`` with its output in ``log_file``; on failure raises with the log in the message."""
    with open(log_file, "wb") as log:
        try:
            code = subprocess.run(
                list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, timeout=COMMAND_TIMEOUT
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    if code != 0:
        output = log_file.read_text(errors="replace").strip()
        reason = "timed out" if code is None else "failed"
        raise EtcdNotAvailable(f"{what} {reason}:\n{output}")


def debian_fetch(suite: str, work: Path, packages: Sequence[str]) -> Path:
    """Downloads ``packages`` of Debian ``suite`` into ``work/debs`` and unpacks them into ``work/root`` (returned).

    apt runs under a private configuration in ``work``: the system's settings
    (proxy, validity checks) still apply, its sources, state, cache and hooks do not.
    """
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise EtcdNotAvailable("this is not a Debian system (no apt-get / dpkg-deb)")
    mirror = debian_mirror()
    if not os.access(DEBIAN_KEYRING, os.R_OK):
        raise EtcdNotAvailable(f"missing {DEBIAN_KEYRING} (install debian-archive-keyring)")
    for sub in ("state/lists/partial", "cache/archives/partial", "debs", "root", "conf.d"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "status").write_text("")
    (work / "sources.list").write_text(f"deb [signed-by={DEBIAN_KEYRING}] {mirror} {suite} main\n")
    for path in sorted(glob.glob("/etc/apt/apt.conf.d/*")):
        if os.path.isfile(path):
            shutil.copy(path, work / "conf.d")
    if os.path.isfile("/etc/apt/apt.conf"):
        shutil.copy("/etc/apt/apt.conf", work / "conf.d" / "zy-main.conf")
    (work / "conf.d" / "zz-streamcodec-private").write_text(_NO_HOOKS)
    # Which configuration parts apt reads is decided before command-line options apply: it has to be APT_CONFIG.
    (work / "apt.conf").write_text(f'Dir::Etc::Parts "{work / "conf.d"}";\nDir::Etc::main "/dev/null";\n')
    env = dict(os.environ, APT_CONFIG=str(work / "apt.conf"))
    dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT)
    if "post-invoke::" in dump.stdout.lower():
        raise EtcdNotAvailable("could not switch off apt's update hooks for the private configuration")
    private: List[str] = []
    for option in (
        f"Dir::Etc::SourceList={work / 'sources.list'}", "Dir::Etc::SourceParts=/dev/null",
        "Dir::Etc::Preferences=/dev/null", "Dir::Etc::PreferencesParts=/dev/null",
        f"Dir::State={work / 'state'}", f"Dir::State::status={work / 'status'}",
        f"Dir::Cache={work / 'cache'}", "APT::Sandbox::User=root",
    ):
        private += ["-o", option]
    private.append("-q")
    _run_logged(["apt-get", *private, "update"], work / "update.log", f"private 'apt-get update' for {suite}", env)
    _run_logged(["apt-get", *private, "download", *packages], work / "download.log",
                f"apt-get download {' '.join(packages)}", env, cwd=work / "debs")
    for deb in sorted((work / "debs").glob("*.deb")):
        _run_logged(["dpkg-deb", "-x", str(deb), str(work / "root")], work / "unpack.log", f"dpkg-deb -x {deb.name}", env)
    return work / "root"


def _check_libc_only(binary: Path) -> None:
    """Go binaries: they must need nothing beyond libc (no shared libraries of packages we did not install)."""
    try:
        proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return  # no ldd: nothing to check with
    if proc.returncode != 0:
        return  # "not a dynamic executable": static, fine
    extra = [line.strip() for line in proc.stdout.splitlines() if line.strip() and not _LIBC_ONLY.search(line)]
    if extra:
        raise EtcdNotAvailable(f"{binary} needs libraries beyond libc: {' '.join(extra)}")


def _fetch_into_cache(want: str, root: Path, log: Callable[[str], None]) -> Path:
    suite = DEBIAN_SUITES[want]
    work = Path(tempfile.mkdtemp(prefix=f".provision-{want}.", dir=root))
    try:
        log(f"fetching etcd {want} (Debian {suite}) ...")
        bin_dir = debian_fetch(suite, work, DEBIAN_PACKAGES) / "usr" / "bin"
        if not all(os.access(bin_dir / b, os.X_OK) for b in ("etcd", "etcdctl")):
            raise EtcdNotAvailable(f"the {suite} packages hold no usr/bin/etcd + etcdctl")
        exact = etcd_version_of(bin_dir)
        if exact is None or not exact.startswith(want + "."):
            raise EtcdNotAvailable(f"Debian {suite} ships etcd '{exact or '?'}', not {want}.x")
        shipped = [bin_dir / b for b in BINARIES if os.access(bin_dir / b, os.X_OK)]
        for binary in shipped:
            _check_libc_only(binary)
        staging = work / "out"
        staging.mkdir()
        for binary in shipped:
            shutil.copy(binary, staging)
        debs = sorted(p.name for p in (work / "debs").glob("*.deb"))
        (staging / "SOURCE-PACKAGES").write_text("".join(name + "\n" for name in debs))
        dest = root / exact
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)  # same file system: the cache entry appears whole or not at all
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not _matches(dest, want):
        raise EtcdNotAvailable(f"installed {dest} but its etcd does not report {want}.x")
    log(f"etcd {exact} ready in {dest}")
    return dest


def provision(version: str, log: Callable[[str], None] = _log) -> Path:
    """The directory holding ``etcd`` and ``etcdctl`` of ``version`` ("3.5" or "3.4"), fetched if need be.

    Searches ``$ETCD_BIN``, ``PATH``, the cache, then fetches Debian's packages
    into the cache (see the module's docstring); ``log`` gets progress lines.
    Raises :class:`EtcdNotAvailable` saying why when no matching binaries can be had.
    """
    if version not in DEBIAN_SUITES:
        raise EtcdNotAvailable(f"unsupported VERSION {version!r} (expected {' or '.join(SUPPORTED_VERSIONS)})")
    given = os.environ.get(ETCD_BIN_ENV)
    if given and _matches(Path(given), version):
        return Path(given).resolve()
    on_path = shutil.which("etcd")
    if on_path:
        path_dir = Path(on_path).resolve().parent
        if _matches(path_dir, version):
            return path_dir
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    found = _find_cached(root, version)
    if found:
        return found
    # Only one provisioning per cache and version at a time (tests and CI may start several at once).
    with open(root / f".lock-{version}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _find_cached(root, version)
        if found:
            return found
        if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
            raise EtcdNotAvailable(
                f"no etcd {version} found and this is not a Debian system: set {ETCD_BIN_ENV} to a directory holding "
                f"etcd and etcdctl {version}.x, e.g. the unpacked upstream release tarball "
                f"etcd-v<exact version>-linux-<amd64|arm64>.tar.gz from the etcd project's GitHub releases page"
            )
        return _fetch_into_cache(version, root, log)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``streamcodec etcd ...``: ``provision VERSION`` prints the directory (exit 0), or why not (exit 1)."""
    parser = argparse.ArgumentParser(prog="streamcodec etcd", description="Local etcd binaries for tests and the demo.")
    sub = parser.add_subparsers(dest="command", required=True)
    prov = sub.add_parser(
        "provision",
        help="find or fetch etcd + etcdctl of VERSION and print their directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prov.add_argument("version", metavar="VERSION", help=f"etcd minor version: {' or '.join(SUPPORTED_VERSIONS)}")
    args = parser.parse_args(argv)
    try:
        directory = provision(args.version)
    except EtcdNotAvailable as exc:
        _log(str(exc))
        return 1
    print(directory, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
