"""EtcdStore against real etcd 3.5 and 3.4 with TLS client certificates and user/password auth.

Writes that the store must see come from ``etcdctl`` (an independent client), and what the store
wrote is read back with ``etcdctl``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, Iterator, List

import pytest

from streamcodec.storage import EtcdStore, StorageError, Unauthorized, Unavailable
from streamcodec.local_etcd import EtcdProcess, EtcdStartError, TLSConfig, make_tls

ROOT_PASSWORD = "root-Pa55"
ALICE_PASSWORD = "alice-Pa55"
ALICE_PREFIX = "/registry/alice/"
#: etcdctl arguments to act as root
ROOT = (f"--user=root:{ROOT_PASSWORD}",)
#: errors must come fast: a wrong credential is not a reason to retry for long
FAST: Dict[str, Any] = dict(retries=1, backoff=0.01, max_backoff=0.05, request_timeout=10.0)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSConfig:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_tls(tmp_path_factory: pytest.TempPathFactory) -> TLSConfig:
    """Certificates from an unrelated CA."""
    return make_tls(tmp_path_factory.mktemp("other-tls"))


def _start(version: str, **kw: Any) -> EtcdProcess:
    try:
        return EtcdProcess(version, **kw).start()
    except EtcdStartError as exc:
        pytest.fail(f"etcd {version} did not start: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def tls_etcd(etcd_version: str, tls: TLSConfig) -> Iterator[EtcdProcess]:
    """TLS only, client certificates required, no auth."""
    server = _start(etcd_version, tls=tls)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def auth_etcd(etcd_version: str, tls: TLSConfig) -> Iterator[EtcdProcess]:
    """TLS + auth: ``root`` may do anything, ``alice`` may read and write only under ALICE_PREFIX."""
    server = _start(etcd_version, tls=tls)
    try:
        server.etcdctl("user", "add", f"root:{ROOT_PASSWORD}")
        server.etcdctl("role", "add", "alice-role")
        server.etcdctl("role", "grant-permission", "alice-role", "--prefix=true", "readwrite", ALICE_PREFIX)
        server.etcdctl("user", "add", f"alice:{ALICE_PASSWORD}")
        server.etcdctl("user", "grant-role", "alice", "alice-role")
        server.etcdctl("auth", "enable")
        yield server
    finally:
        server.close()


def _tls_kw(tls: TLSConfig) -> Dict[str, Any]:
    return dict(ca_file=str(tls.ca_file), cert_file=str(tls.client_cert_file), key_file=str(tls.client_key_file))


async def _list(store: EtcdStore, prefix: bytes) -> Dict[bytes, bytes]:
    return {kv.key: bytes(kv.value) async for kv in store.list_stream(prefix)}


async def _watch_then(store: EtcdStore, prefix: bytes, start: int, writer: Any, count: int) -> List[Any]:
    """Open a watch from ``start``, run ``writer()`` (in a thread: it calls etcdctl), collect ``count`` events."""
    events: List[Any] = []
    watch = store.watch(prefix, start)
    await watch.start()
    try:
        await asyncio.to_thread(writer)

        async def collect() -> None:
            async for event in watch:
                if event.type != "BOOKMARK":
                    events.append(event)
                    if len(events) == count:
                        return

        await asyncio.wait_for(collect(), timeout=20)
    finally:
        await watch.aclose()
    return events


def _etcdctl_keys(server: EtcdProcess, prefix: bytes, *auth: str) -> List[str]:
    return server.etcdctl(*auth, "get", "--prefix", "--keys-only", prefix.decode()).split()


# -- TLS ----------------------------------------------------------------------------------------------------------


async def test_list_and_watch_over_tls(tls_etcd: EtcdProcess, tls: TLSConfig, prefix: bytes) -> None:
    async with EtcdStore([tls_etcd.endpoint], **_tls_kw(tls)) as store:
        for i in range(5):
            await store.put(prefix + b"obj-%d" % i, b"value-%d" % i)
        assert _etcdctl_keys(tls_etcd, prefix) == [(prefix + b"obj-%d" % i).decode() for i in range(5)]
        listing = store.list_stream(prefix)
        got = {kv.key: bytes(kv.value) async for kv in listing}
        assert got == {prefix + b"obj-%d" % i: b"value-%d" % i for i in range(5)}
        assert listing.revision is not None

        def writes() -> None:
            tls_etcd.etcdctl("put", (prefix + b"obj-9").decode(), "new")
            tls_etcd.etcdctl("put", (prefix + b"obj-0").decode(), "changed")
            tls_etcd.etcdctl("del", (prefix + b"obj-1").decode())

        events = await _watch_then(store, prefix, listing.revision + 1, writes, 3)
    assert [(e.type, e.kv.key, bytes(e.kv.value)) for e in events] == [
        ("ADDED", prefix + b"obj-9", b"new"),
        ("MODIFIED", prefix + b"obj-0", b"changed"),
        ("DELETED", prefix + b"obj-1", b"value-1"),  # DELETED carries the object as it was
    ]
    assert [e.revision for e in events] == sorted(e.revision for e in events)


async def test_tls_without_client_certificate_is_refused(tls_etcd: EtcdProcess, tls: TLSConfig, prefix: bytes) -> None:
    started = time.monotonic()
    async with EtcdStore([tls_etcd.endpoint], ca_file=str(tls.ca_file), **FAST) as store:
        with pytest.raises(StorageError) as info:
            await _list(store, prefix)
    assert isinstance(info.value, (Unavailable, Unauthorized))
    assert time.monotonic() - started < 10
    # The message must let an operator see what is wrong: the TLS handshake / certificate.
    message = str(info.value).lower()
    assert any(word in message for word in ("certificate", "handshake", "ssl", "tls")), message


async def test_tls_with_untrusted_server_is_refused(
    tls_etcd: EtcdProcess, other_tls: TLSConfig, prefix: bytes
) -> None:
    async with EtcdStore([tls_etcd.endpoint], **_tls_kw(other_tls), **FAST) as store:
        with pytest.raises(StorageError) as info:
            await _list(store, prefix)
    message = str(info.value).lower()
    assert any(word in message for word in ("certificate", "handshake", "ssl", "tls")), message


async def test_plaintext_client_to_tls_server_fails_cleanly(tls_etcd: EtcdProcess, prefix: bytes) -> None:
    async with EtcdStore([tls_etcd.endpoint], **FAST) as store:
        with pytest.raises(Unavailable):
            await _list(store, prefix)


# -- auth ---------------------------------------------------------------------------------------------------------


async def test_list_and_watch_with_password(auth_etcd: EtcdProcess, tls: TLSConfig, prefix: bytes) -> None:
    async with EtcdStore([auth_etcd.endpoint], **_tls_kw(tls), username="root", password=ROOT_PASSWORD) as store:
        for i in range(3):
            await store.put(prefix + b"a%d" % i, b"v%d" % i)
        assert _etcdctl_keys(auth_etcd, prefix, *ROOT) == [(prefix + b"a%d" % i).decode() for i in range(3)]
        listing = store.list_stream(prefix)
        assert await _list_from(listing) == {prefix + b"a%d" % i: b"v%d" % i for i in range(3)}

        def writes() -> None:
            auth_etcd.etcdctl(*ROOT, "put", (prefix + b"a1").decode(), "v1b")

        events = await _watch_then(store, prefix, int(listing.revision or 0) + 1, writes, 1)
    assert [(e.type, e.kv.key, bytes(e.kv.value)) for e in events] == [("MODIFIED", prefix + b"a1", b"v1b")]


async def _list_from(listing: Any) -> Dict[bytes, bytes]:
    return {kv.key: bytes(kv.value) async for kv in listing}


async def test_wrong_password_is_unauthorized(auth_etcd: EtcdProcess, tls: TLSConfig, prefix: bytes) -> None:
    started = time.monotonic()
    async with EtcdStore(
        [auth_etcd.endpoint], **_tls_kw(tls), username="root", password="not-the-password", **FAST
    ) as store:
        with pytest.raises(Unauthorized) as info:
            await _list(store, prefix)
        with pytest.raises(Unauthorized):
            await store.put(prefix + b"x", b"y")
    assert time.monotonic() - started < 10
    assert "authentication failed" in str(info.value).lower() or "invalid" in str(info.value).lower(), str(info.value)
    # nothing was written
    assert _etcdctl_keys(auth_etcd, prefix, *ROOT) == []


async def test_no_credentials_with_auth_enabled_is_unauthorized(
    auth_etcd: EtcdProcess, tls: TLSConfig, prefix: bytes
) -> None:
    # The client certificate's common name is not an etcd user, so it grants nothing.
    async with EtcdStore([auth_etcd.endpoint], **_tls_kw(tls), **FAST) as store:
        with pytest.raises(Unauthorized):
            await _list(store, prefix)
        with pytest.raises(Unauthorized):
            watch = store.watch(prefix)
            try:
                await watch.start()
            finally:
                await watch.aclose()


async def test_role_limits_are_enforced(auth_etcd: EtcdProcess, tls: TLSConfig, prefix: bytes) -> None:
    own = ALICE_PREFIX.encode() + prefix.strip(b"/").replace(b"/", b"-") + b"/"
    async with EtcdStore(
        [auth_etcd.endpoint], **_tls_kw(tls), username="alice", password=ALICE_PASSWORD, **FAST
    ) as store:
        await store.put(own + b"mine", b"ok")
        assert await _list(store, own) == {own + b"mine": b"ok"}
        with pytest.raises(Unauthorized):
            await _list(store, prefix)  # outside alice's role
        with pytest.raises(Unauthorized):
            await store.put(prefix + b"not-mine", b"no")
        with pytest.raises(Unauthorized):
            watch = store.watch(prefix)
            try:
                await watch.start()
                await asyncio.wait_for(watch.__anext__(), timeout=10)
            finally:
                await watch.aclose()
    assert _etcdctl_keys(auth_etcd, prefix, *ROOT) == []


async def test_login_again_after_member_restart(auth_etcd: EtcdProcess, tls: TLSConfig, prefix: bytes) -> None:
    # Simple auth tokens live in the member's memory: a restart invalidates the store's token.
    async with EtcdStore([auth_etcd.endpoint], **_tls_kw(tls), username="root", password=ROOT_PASSWORD) as store:
        await store.put(prefix + b"k", b"before")
        await asyncio.to_thread(auth_etcd.stop)
        await asyncio.to_thread(auth_etcd.start)
        auth_etcd.etcdctl(*ROOT, "put", (prefix + b"k2").decode(), "after")
        assert await _list(store, prefix) == {prefix + b"k": b"before", prefix + b"k2": b"after"}
