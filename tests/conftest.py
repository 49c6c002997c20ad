"""Shared fixtures: real etcd servers (never mocks) and unique key prefixes.

Missing etcd binaries FAIL the tests that need them (run ``scripts/provision-etcd 3.5``
and ``3.4``, or set ETCD_BIN); they are never skipped.
"""

from __future__ import annotations

import uuid
from typing import Iterator, List

import pytest

from storage.etcd_process import EtcdCluster, EtcdNotAvailable, EtcdProcess, EtcdStartError, etcd_bin_dir, installed_version


def pytest_report_header(config: pytest.Config) -> List[str]:
    import storage
    import streamcodec

    lines = [f"streamcodec.IMPLEMENTATION: {streamcodec.IMPLEMENTATION}, storage.IMPLEMENTATION: {storage.IMPLEMENTATION}"]
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
