"""Fixtures more than one benchmark module needs."""

from __future__ import annotations

from typing import Iterator

import pytest

from streamcodec.local_etcd import EtcdProcess


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdProcess]:
    """One etcd 3.5 member on free loopback ports, for the module's benchmarks."""
    with EtcdProcess("3.5") as server:
        yield server
