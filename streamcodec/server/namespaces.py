"""kube-apiserver's NamespaceLifecycle admission and its system namespaces.

What k8s.io/apiserver's ``NamespaceLifecycle`` plugin (admission/plugin/namespace/lifecycle) refuses:

* a create or an update of a namespaced object whose namespace has no Namespace object: 404,
  ``namespaces "X" not found`` (the plugin answers with the Namespace lookup's own NotFound);
* the deletion of an immortal namespace (``default``, ``kube-system``, ``kube-public``): 403,
  ``namespaces "default" is forbidden: this namespace may not be deleted``.

* a create in a namespace being terminated: 403, ``configmaps "cm" is forbidden: unable to create new
  content in namespace X because it is being terminated`` (cause ``NamespaceTerminating``).

Deletes of other objects are always allowed, and so are operations on Namespaces themselves and on
cluster-scoped objects.

Deleting a Namespace is kube's two-step termination: the DELETE marks it (``deletionTimestamp``, phase
``Terminating``) and answers 200 with it; a DELETE of one already terminating is kube's 409 ("The system
is ensuring all content is removed ..."); then, as kube's namespace controller does, every object of
every namespaced resource in it is deleted (each a DELETED event for its watchers), its ``kubernetes``
finalizer is removed and, with no finalizer left, the Namespace itself.  The replica that took the
DELETE does this in the background, retrying while etcd fails; a server that starts finishes any
termination left unfinished (each termination is tied to the Namespace's uid: a namespace re-created
under the name is left alone).  A Namespace is created with ``spec.finalizers`` holding ``kubernetes``,
phase ``Active`` and the label ``kubernetes.io/metadata.name``; an update keeps finalizers and status as
they were (kube's namespace strategy); ``PUT /api/v1/namespaces/X/finalize`` sets the finalizers (what
another finalizer's owner does when it is done), and a terminating namespace left without any is deleted.

kube-apiserver creates its system namespaces when it starts (``default``, ``kube-system``,
``kube-public``, ``kube-node-lease``: its system namespaces controller, create-if-absent, an
AlreadyExists from another replica being success): :meth:`NamespaceLifecycle.start` does the same, in
the background, retrying while etcd is unreachable, so a server starts, and answers what needs no
storage, without etcd.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Dict, Iterable, Optional, Tuple

from streamcodec.errors import DecodeError
from streamcodec.storage import errors as storage_errors
from streamcodec.storage.interface import Store

from .defaults import UPDATE_RETRIES
from .objects import DEFAULT_RESOURCES, Resource, decode_stored, encode_for_storage, prepare_for_storage, timestamp_now
from .status import APIError, forbidden, from_storage_error, not_found

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
#: The finalizer kube's namespace controller owns: the namespace's content is deleted once it is removed.
KUBERNETES_FINALIZER = "kubernetes"
#: Keys a terminating namespace's content is listed (and deleted) by at a time.
CONTENT_PAGE = 500
#: The label kube puts on every Namespace (its name): what namespace selectors select by name.
NAME_LABEL = "kubernetes.io/metadata.name"
TERMINATING = "Terminating"


class NamespaceLifecycle:
    """NamespaceLifecycle for one App: ``store`` gives its store, ``key`` the etcd key of a Namespace."""

    def __init__(self, store: Callable[[], Awaitable[Store]], key: Callable[[str], bytes],
                 content: Callable[[str], Iterable[bytes]] = lambda namespace: ()) -> None:
        """``content``: the key prefixes of a namespace's objects (one per namespaced resource)."""
        self._store = store
        self._key = key
        self._content = content
        self._creator: Optional["asyncio.Task[None]"] = None
        #: the terminations this server is finishing, by namespace name and uid
        self._finalizers: Dict[Tuple[str, str], "asyncio.Task[None]"] = {}
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
        phase = await self._phase(namespace)
        # kube waits for its namespace cache before it refuses; here a system namespace may be missing only
        # because this server has just started and is still creating it
        if phase is None and namespace in SYSTEM_NAMESPACES and self._creator is not None and not self.first_try.is_set():
            await self.first_try.wait()
            phase = await self._phase(namespace)
        if phase is None:
            raise not_found(NAMESPACES.name, namespace)
        if phase == TERMINATING and operation == "create":
            error = forbidden(resource.name, name, f"unable to create new content in namespace {namespace} because it is being terminated")
            error.details["causes"] = [{"reason": "NamespaceTerminating", "message": f"namespace {namespace} is being terminated",
                                        "field": "metadata.namespace"}]
            raise error

    async def _phase(self, namespace: str) -> Optional[str]:
        """The namespace's ``status.phase`` ("" when it has none), None when it does not exist."""
        store = await self._store()
        try:
            kv = await store.get(self._key(namespace))
        except storage_errors.NotFound:
            return None
        except storage_errors.StorageError as exc:
            raise from_storage_error(exc) from None  # etcd down: 503, not the 404 of a missing namespace
        return _phase_of(decode_stored(kv.value, int(kv.mod_revision)))

    # -- termination (kube's namespace registry's Delete and its namespace controller) ---------------

    async def terminate(self, name: str) -> Tuple[bytes, int]:
        """DELETE of Namespace ``name``: mark it terminating and start deleting its content; the stored
        value and revision of the marked Namespace.  kube's 409 when it is terminating already (its
        termination is resumed here, should the replica finishing it have gone), its 404 when it does not
        exist, its 503 while etcd fails."""
        store = await self._store()
        key = self._key(name)
        try:
            for _ in range(UPDATE_RETRIES):
                kv = await store.get(key)
                obj = _stored_form(decode_stored(kv.value, int(kv.mod_revision)))
                uid = str(obj["metadata"].get("uid") or "")
                if obj["metadata"].get("deletionTimestamp"):
                    if not _mapping(obj.get("spec")).get("finalizers"):  # nothing left to wait for: kube deletes it now
                        try:
                            return bytes(kv.value), (await store.delete(key, int(kv.mod_revision))).revision
                        except storage_errors.Conflict:
                            continue
                    self._finish(name, uid)
                    raise APIError(409, "Conflict", f'Operation cannot be fulfilled on namespaces "{name}": The system is ensuring all '
                                   "content is removed from this namespace.  Upon completion, this namespace will automatically be "
                                   "purged by the system.", details={"name": name, "kind": NAMESPACES.name})
                obj["metadata"]["deletionTimestamp"] = timestamp_now()
                obj["status"] = {**_mapping(obj.get("status")), "phase": TERMINATING}
                value = encode_for_storage(obj)
                try:
                    revision = await store.update(key, value, int(kv.mod_revision))
                except storage_errors.Conflict:
                    continue  # written meanwhile: mark the newer version
                self._finish(name, uid)
                return value, revision
            raise storage_errors.Conflict("the namespace kept changing")
        except storage_errors.StorageError as exc:
            raise from_storage_error(exc, resource=NAMESPACES.name, name=name) from None

    async def finalize(self, name: str, body: Dict[str, Any]) -> Tuple[bytes, int]:
        """PUT of Namespace ``name``'s ``finalize`` subresource: its ``spec.finalizers`` become the body's
        (what a finalizer's owner does once its work is done; kube's FinalizeREST); a terminating one
        without finalizers left is then deleted.  The stored value and the revision of the write."""
        finalizers = _mapping(body.get("spec")).get("finalizers") or []
        if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
            raise APIError(422, "Invalid", f'Namespace "{name}" is invalid: spec.finalizers: Invalid value: must be a list of names')
        store = await self._store()
        key = self._key(name)
        try:
            for _ in range(UPDATE_RETRIES):
                kv = await store.get(key)
                obj = _stored_form(decode_stored(kv.value, int(kv.mod_revision)))
                obj["spec"] = {**_mapping(obj.get("spec")), "finalizers": list(dict.fromkeys(finalizers))}
                value = encode_for_storage(obj)
                try:
                    if not finalizers and obj["metadata"].get("deletionTimestamp"):
                        return value, (await store.delete(key, int(kv.mod_revision))).revision
                    return value, await store.update(key, value, int(kv.mod_revision))
                except storage_errors.Conflict:
                    continue
            raise storage_errors.Conflict("the namespace kept changing")
        except storage_errors.StorageError as exc:
            raise from_storage_error(exc, resource=NAMESPACES.name, name=name) from None

    def _finish(self, name: str, uid: str) -> None:
        """Finish the termination of namespace ``name`` whose uid is ``uid`` in the background (once at a time)."""
        if (name, uid) not in self._finalizers:
            task = asyncio.get_running_loop().create_task(self._finalize(name, uid))
            self._finalizers[(name, uid)] = task
            task.add_done_callback(lambda _: self._finalizers.pop((name, uid), None))

    async def _finalize(self, name: str, uid: str) -> None:
        delay = RETRY_SECONDS[0]
        while True:
            try:
                store = await self._store()
                while await self._terminating(store, name, uid) is not None:
                    await self._delete_content(store, name)
                    if await self._purge(store, name, uid):
                        return
                return  # gone, or a namespace of another uid under its name: not this task's
            except storage_errors.StorageError as exc:
                log.warning("could not finish terminating namespace %s (storage: %s); trying again in %g s", name, exc.code, delay)
            except Exception:  # noqa: BLE001 -- not etcd's failure: trying again would not help (a restart resumes it)
                log.exception("terminating namespace %s failed", name)
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_SECONDS[1])

    async def _terminating(self, store: Store, name: str, uid: str) -> Optional[Tuple[Any, Dict[str, Any]]]:
        """The key-value and object of namespace ``name`` while it is this termination's (``uid``, marked), else None."""
        try:
            kv = await store.get(self._key(name))
        except storage_errors.NotFound:
            return None
        obj = _stored_form(decode_stored(kv.value, int(kv.mod_revision)))
        if str(obj["metadata"].get("uid") or "") != uid or not obj["metadata"].get("deletionTimestamp"):
            return None
        return kv, obj

    async def _delete_content(self, store: Store, name: str) -> None:
        """Delete every object under the namespace's content prefixes, a page at a time, until none is left."""
        for prefix in self._content(name):
            while True:
                keys = [kv.key async for kv in store.list_stream(prefix, limit=CONTENT_PAGE)]
                if not keys:
                    break
                for key in keys:
                    try:
                        await store.delete(key)
                    except storage_errors.NotFound:
                        pass  # deleted by its own client meanwhile

    async def _purge(self, store: Store, name: str, uid: str) -> bool:
        """Remove the ``kubernetes`` finalizer and, with none left, the Namespace, unless content came
        meanwhile (a create admitted just before the mark); whether this termination is over."""
        for _ in range(UPDATE_RETRIES):
            found = await self._terminating(store, name, uid)
            if found is None:
                return True
            kv, obj = found
            spec = _mapping(obj.get("spec"))
            left = [f for f in spec.get("finalizers") or [] if f != KUBERNETES_FINALIZER]
            if not left and await self._has_content(store, name):
                return False  # swept again by the caller, then purged
            try:
                if not left:
                    await store.delete(self._key(name), int(kv.mod_revision))
                    return True
                if left != spec.get("finalizers"):
                    obj["spec"] = {**spec, "finalizers": left}
                    await store.update(self._key(name), encode_for_storage(obj), int(kv.mod_revision))
                return True  # another finalizer's owner ends it, through the finalize subresource
            except (storage_errors.Conflict, storage_errors.NotFound):
                continue
        raise storage_errors.Conflict("the namespace kept changing")

    async def _has_content(self, store: Store, name: str) -> bool:
        for prefix in self._content(name):
            async for _ in store.list_stream(prefix, limit=1):
                return True
        return False

    # -- system namespaces -------------------------------------------------

    def start(self, store: Store) -> None:
        """Start creating the system namespaces (once; in the running loop)."""
        if self._creator is None:
            self._creator = asyncio.get_running_loop().create_task(self._create_system_namespaces(store))

    async def aclose(self) -> None:
        self.first_try.set()  # no write waits for a creation that will not come
        creator, self._creator = self._creator, None
        for task in [creator, *self._finalizers.values()]:
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
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
                try:
                    await self._resume_terminations(store)
                    return
                except storage_errors.StorageError as exc:
                    failed = [exc]
            # the storage error's code only: its text (gRPC's details) says nothing an operator can act on here
            log.warning("could not create the system namespaces (storage: %s); trying again in %g s", failed[0].code, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_SECONDS[1])

    async def _create(self, store: Store, namespace: str) -> None:
        """Create-if-absent, as a client would POST ``{"metadata": {"name": namespace}}``."""
        stored = admitted_namespace(prepare_for_storage({"metadata": {"name": namespace}}, NAMESPACES, None, namespace, creating=True), None)
        try:
            await store.create(self._key(namespace), encode_for_storage(stored))
        except storage_errors.AlreadyExists:
            pass  # there already, or another replica made it first

    async def _resume_terminations(self, store: Store) -> None:
        """Finish the terminations a server left unfinished (it stopped, or its etcd did)."""
        async for kv in store.list_stream(self._key("")):
            try:
                metadata = _mapping(decode_stored(kv.value, int(kv.mod_revision)).get("metadata"))
            except (ValueError, DecodeError):  # another writer's damaged value: not ours to finish
                log.warning("a stored Namespace cannot be read (revision %s); its termination is not resumed", kv.mod_revision)
                continue
            if metadata.get("deletionTimestamp") and isinstance(metadata.get("name"), str):
                self._finish(metadata["name"], str(metadata.get("uid") or ""))


def admitted_namespace(obj: Dict[str, Any], previous: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A Namespace as it is stored (kube's namespace strategy): labelled ``kubernetes.io/metadata.name``
    with its name; created with the ``kubernetes`` finalizer added and phase ``Active``; updated with the
    finalizers and status it had (the finalize and status subresources change those)."""
    out = dict(obj)
    metadata = out["metadata"] = dict(obj["metadata"])
    metadata["labels"] = {**_mapping(metadata.get("labels")), NAME_LABEL: metadata["name"]}
    spec = dict(_mapping(obj.get("spec")))
    if previous is None:
        finalizers = [f for f in spec.get("finalizers") or [] if isinstance(f, str)]
        spec["finalizers"] = finalizers if KUBERNETES_FINALIZER in finalizers else finalizers + [KUBERNETES_FINALIZER]
        out["status"] = {"phase": "Active"}
    else:
        old_spec = _mapping(previous.get("spec"))
        spec.pop("finalizers", None)
        if "finalizers" in old_spec:
            spec["finalizers"] = old_spec["finalizers"]
        out.pop("status", None)
        if "status" in previous:
            out["status"] = previous["status"]
    out["spec"] = spec
    return out


def _phase_of(namespace: Dict[str, Any]) -> str:
    return str(_mapping(namespace.get("status")).get("phase") or "")


def _mapping(value: Any) -> Dict[str, Any]:
    """``value`` if it is an object, else an empty one (a field another writer gave the wrong type)."""
    return value if isinstance(value, dict) else {}


def _stored_form(obj: Dict[str, Any]) -> Dict[str, Any]:
    """An object read back (:func:`decode_stored`) as it is stored again: without its resourceVersion."""
    obj["metadata"].pop("resourceVersion", None)
    return obj

