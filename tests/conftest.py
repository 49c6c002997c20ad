"""Shared fixtures: real etcd servers (never mocks) and unique key prefixes.

Missing etcd binaries FAIL the tests that need them (run ``scripts/provision-etcd 3.5``
and ``3.4``, or set ETCD_BIN); they are never skipped.
"""

from __future__ import annotations

import uuid
from typing import Iterator, List

import pytest
from hypothesis import settings

from streamcodec.local_etcd import EtcdCluster, EtcdNotAvailable, EtcdProcess, EtcdStartError, etcd_bin_dir, installed_version
from tests.fuzz import QUICK

if QUICK:  # tests without their own max_examples: 10 instead of hypothesis' 100
    settings.register_profile("quick", max_examples=10)
    settings.load_profile("quick")


#: fixtures and harness classes that start a real etcd
_ETCD_FIXTURES = {"etcd", "etcd35", "etcd_bin35", "etcd_cluster", "etcd_version"}
_ETCD_CLASSES = (EtcdProcess, EtcdCluster)


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Marks ``etcd`` every test that starts etcd: through a fixture of this file, or because its
    module uses the etcd harness itself (its own fixtures start EtcdProcess / EtcdCluster)."""
    for item in items:
        module = getattr(item, "module", None)
        uses_harness = module is not None and any(
            getattr(module, name, None) in _ETCD_CLASSES for name in ("EtcdProcess", "EtcdCluster")
        )
        if uses_harness or _ETCD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.etcd)


def pytest_report_header(config: pytest.Config) -> List[str]:
    import streamcodec.storage
    import streamcodec

    lines = [f"streamcodec.IMPLEMENTATION: {streamcodec.IMPLEMENTATION}, streamcodec.storage.IMPLEMENTATION: {streamcodec.storage.IMPLEMENTATION}"]
    for version in ("3.5", "3.4"):
        try:
            lines.append(f"etcd {version}: {installed_version(version)} in {etcd_bin_dir(version)}")
        except EtcdNotAvailable as exc:
            lines.append(f"etcd {version}: NOT AVAILABLE ({exc})")
    return lines


@pytest.fixture(scope="module", params=["3.5", "3.4"], ids=["etcd3.5", "etcd3.4"])
def etcd_version(request: pytest.FixtureRequest) -> str:
    """The etcd minor version under test: 3.5 (above Kubernetes' 3.5.13 watch-progress gate) and 3.4 (below 3.4.31)."""
    return str(request.param)


@pytest.fixture(scope="module")
def etcd(etcd_version: str) -> Iterator[EtcdProcess]:
    """A running single-member etcd of ``etcd_version``, shared by the tests of one module (use ``prefix``)."""
    try:
        server = EtcdProcess(etcd_version)
        server.start()
    except (EtcdNotAvailable, EtcdStartError) as exc:
        pytest.fail(f"etcd {etcd_version} unavailable: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def etcd_bin35() -> str:
    """The directory of etcd 3.5's binaries, for tests whose subprocesses start etcd themselves (the demo):
    given to them as ``ETCD_BIN``.  Fails, never skips, when there are none."""
    try:
        return str(etcd_bin_dir("3.5"))
    except EtcdNotAvailable as exc:
        pytest.fail(f"etcd 3.5 unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def etcd35() -> Iterator[EtcdProcess]:
    """An etcd 3.5 of the module's own, for tests that need 3.5 only (Kubernetes' watch-list from a watch
    cache needs its watch progress requests, which 3.4.23 is below the gate for)."""
    try:
        server = EtcdProcess("3.5")
        server.start()
    except (EtcdNotAvailable, EtcdStartError) as exc:
        pytest.fail(f"etcd 3.5 unavailable: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["3.5", "3.4"], ids=["etcd3.5", "etcd3.4"])
def etcd_cluster(request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    """A fresh 3-member etcd cluster of each version, 3.5 and 3.4 (per test: failover tests kill members)."""
    version = str(request.param)
    try:
        cluster = EtcdCluster(version, size=3)
        cluster.start()
    except (EtcdNotAvailable, EtcdStartError) as exc:
        pytest.fail(f"etcd {version} cluster unavailable: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def prefix() -> bytes:
    """A key prefix no other test uses, e.g. ``b"/registry/test-<uuid>/"``."""
    return f"/registry/test-{uuid.uuid4().hex}/".encode()


@pytest.fixture(scope="session")
def kube_proto() -> "tests.kube_proto.KubeProto":
    """The independent typed-protobuf oracle (tests/kube_proto.py): Kubernetes' own generated.proto files
    (provisioned by scripts/provision-kube-proto) compiled with grpcio-tools.  A provisioning failure FAILS."""
    import os
    import subprocess

    from tests import kube_proto as _kube_proto

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "provision-kube-proto")
    try:
        proc = subprocess.run([script], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"scripts/provision-kube-proto did not run: {exc}", pytrace=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or len(lines) != 1 or not os.path.isdir(lines[0]):
        pytest.fail(f"scripts/provision-kube-proto failed ({proc.returncode}): {proc.stderr.strip()} {proc.stdout.strip()}", pytrace=False)
    try:
        return _kube_proto.load(lines[0])
    except _kube_proto.KubeProtoError as exc:
        pytest.fail(f"cannot build the Kubernetes protobuf oracle: {exc}", pytrace=False)
