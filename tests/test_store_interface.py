"""EtcdStore and its streams keep the storage contract the server depends on (``storage.interface``)."""

from __future__ import annotations

import inspect

from streamcodec.local_etcd import EtcdProcess
from streamcodec.storage import EtcdStore
from streamcodec.storage.interface import EventStream, KeyValueStream, Store, WatchListEvents


def test_every_method_of_the_contract_has_etcd_stores_signature() -> None:
    for name, member in inspect.getmembers(Store, predicate=inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = getattr(EtcdStore, name)
        assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(member), name
        wanted = list(inspect.signature(member).parameters)
        assert list(inspect.signature(ours).parameters)[: len(wanted)] == wanted, name


async def test_etcd_store_and_its_streams_are_what_the_contract_says(etcd: EtcdProcess, prefix: bytes) -> None:
    async with EtcdStore([etcd.endpoint]) as store:
        assert isinstance(store, Store)
        revision = await store.create(prefix + b"a", b"{}")
        assert await store.current_revision() >= revision
        listing = store.list_stream(prefix)
        assert isinstance(listing, KeyValueStream)
        assert [kv.key async for kv in listing] == [prefix + b"a"] and listing.revision >= revision
        watch = store.shared_watch(prefix, revision + 1)
        assert isinstance(watch, EventStream)
        await watch.start()
        await store.delete(prefix + b"a")
        event = await watch.__anext__()
        assert event.type == "DELETED"
        await watch.aclose()
        watch_list = store.watch_list(prefix)
        assert isinstance(watch_list, WatchListEvents)
        await watch_list.aclose()
