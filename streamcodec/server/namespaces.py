"""kube-apiserver's NamespaceLifecycle admission and its system namespaces.

What k8s.io/apiserver's ``NamespaceLifecycle`` plugin (admission/plugin/namespace/lifecycle) refuses:

* a create or an update of a namespaced object whose namespace has no Namespace object: 404,
  ``namespaces "X" not found`` (the plugin answers with the Namespace lookup's own NotFound);
* the deletion of an immortal namespace (``default``, ``kube-system``, ``kube-public``): 403,
  ``namespaces "default" is forbidden: this namespace may not be deleted``.

Deletes of other objects are always allowed (so what a deleted namespace left behind can be cleaned
up), and so are operations on Namespaces themselves and on cluster-scoped objects.  kube also refuses
creates in a namespace being terminated (phase ``Terminating``); this server deletes a Namespace's key
outright, so it has no such state (a stored Namespace's status is not read: existence is one etcd get).

kube-apiserver creates its system namespaces when it starts (``default``, ``kube-system``,
``kube-public``, ``kube-node-lease``: its system namespaces controller, create-if-absent, an
AlreadyExists from another replica being success): :meth:`NamespaceLifecycle.start` does the same, in
the background, retrying while etcd is unreachable, so a server starts, and answers what needs no
storage, without etcd.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Optional

from streamcodec.storage import errors as storage_errors
from streamcodec.storage.interface import Store

from .objects import DEFAULT_RESOURCES, Resource, encode_for_storage, prepare_for_storage
from .status import forbidden, from_storage_error, not_found

__all__ = ["NamespaceLifecycle", "SYSTEM_NAMESPACES", "IMMORTAL_NAMESPACES"]

log = logging.getLogger("streamcodec.server")

#: What kube-apiserver's system namespaces controller creates at start-up.
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
#: What NamespaceLifecycle never lets be deleted.  kube-node-lease may be: kube's controller re-creates it
#: within a minute, this server at its next start.
IMMORTAL_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
NAMESPACES: Resource = DEFAULT_RESOURCES["namespaces"]
#: The first and the longest wait (seconds, doubling) between tries to create the system namespaces while
#: etcd fails (kube's controller tries every minute).
RETRY_SECONDS = (1.0, 60.0)


class NamespaceLifecycle:
    """NamespaceLifecycle for one App: ``store`` gives its store, ``key`` the etcd key of a Namespace."""

    def __init__(self, store: Callable[[], Awaitable[Store]], key: Callable[[str], bytes]) -> None:
        self._store = store
        self._key = key
        self._creator: Optional["asyncio.Task[None]"] = None
        #: set once the first try to create the system namespaces has ended, whatever its outcome (tests wait on it)
        self.first_try = asyncio.Event()

    # -- admission -----------------------------------------------------------

    async def admit(self, operation: str, resource: Resource, namespace: Optional[str], name: str) -> None:
        """Refuse ``operation`` (``create``, ``update`` or ``delete``) as kube's plugin does, with its Status.

        One etcd read of the Namespace for a create or update of a namespaced object.  As kube admits them,
        a create comes here once its body is decoded, an update once the object it replaces is read (so
        a missing object is its own 404), a delete before anything is read.
        """
        if operation == "delete":
            if resource.name == NAMESPACES.name and name in IMMORTAL_NAMESPACES:
                raise forbidden(NAMESPACES.name, name, "this namespace may not be deleted")
            return
        if namespace is None:
            return
        if await self._exists(namespace):
            return
        # kube waits for its namespace cache before it refuses; here a system namespace may be missing only
        # because this server has just started and is still creating it
        if namespace in SYSTEM_NAMESPACES and self._creator is not None and not self.first_try.is_set():
            await self.first_try.wait()
            if await self._exists(namespace):
                return
        raise not_found(NAMESPACES.name, namespace)

    async def _exists(self, namespace: str) -> bool:
        store = await self._store()
        try:
            await store.get(self._key(namespace))
        except storage_errors.NotFound:
            return False
        except storage_errors.StorageError as exc:
            raise from_storage_error(exc) from None  # etcd down: 503, not the 404 of a missing namespace
        return True

    # -- system namespaces -------------------------------------------------

    def start(self, store: Store) -> None:
        """Start creating the system namespaces (once; in the running loop)."""
        if self._creator is None:
            self._creator = asyncio.get_running_loop().create_task(self._create_system_namespaces(store))

    async def aclose(self) -> None:
        creator, self._creator = self._creator, None
        if creator is not None and not creator.done():
            creator.cancel()
            try:
                await creator
            except asyncio.CancelledError:
                pass

    async def _create_system_namespaces(self, store: Store) -> None:
        delay = RETRY_SECONDS[0]
        while True:
            outcomes = await asyncio.gather(*(self._create(store, ns) for ns in SYSTEM_NAMESPACES), return_exceptions=True)
            self.first_try.set()
            bug = next((o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, storage_errors.StorageError)), None)
            if bug is not None:  # not etcd's failure: trying again would not help
                log.error("creating the system namespaces failed", exc_info=bug)
                return
            failed = [o for o in outcomes if isinstance(o, storage_errors.StorageError)]
            if not failed:
                return
            # the storage error's code only: its text (gRPC's details) says nothing an operator can act on here
            log.warning("could not create the system namespaces (storage: %s); trying again in %g s", failed[0].code, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_SECONDS[1])

    async def _create(self, store: Store, namespace: str) -> None:
        """Create-if-absent, as a client would POST ``{"metadata": {"name": namespace}}``."""
        stored = prepare_for_storage({"metadata": {"name": namespace}}, NAMESPACES, None, namespace, creating=True)
        try:
            await store.create(self._key(namespace), encode_for_storage(stored))
        except storage_errors.AlreadyExists:
            pass  # there already, or another replica made it first
