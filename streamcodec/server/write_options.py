"""The options of a write as kube-apiserver reads them: ``dryRun`` and a DELETE's ``DeleteOptions``.

kube-apiserver takes a DELETE's options from its body (a ``DeleteOptions`` in any request format:
client-go sends one with every delete, in its content type) or, without a body, from the query;
``dryRun`` of a create or an update comes from the query.  A value it does not know is a 422 naming
the options' kind (``DeleteOptions.meta.k8s.io "" is invalid: ...``), never ignored: a dry run taken
for a real write, or a precondition dropped, would change what the client meant to keep.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, Mapping, Optional, Sequence

from streamcodec.errors import go_quote

from .status import APIError, bad_request

__all__ = ["DeleteOptions", "check_preconditions", "delete_options", "dry_run", "query_dry_run"]

#: kube's allowed dryRun values (metav1.DryRunAll).
DRY_RUN_ALL = "All"
#: kube's metav1.DeletionPropagation values.
PROPAGATION_POLICIES = ("Background", "Foreground", "Orphan")


@dataclasses.dataclass(frozen=True)
class DeleteOptions:
    """What of a ``DeleteOptions`` this server acts on.  Deletion is always immediate here (no
    graceful deletion, no garbage collector), so ``gracePeriodSeconds`` and the propagation policy
    are checked as kube checks them and have nothing else to do."""

    dry_run: bool = False
    uid: Optional[str] = None  #: ``preconditions.uid``
    resource_version: Optional[str] = None  #: ``preconditions.resourceVersion``

    @property
    def reads_current(self) -> bool:
        """Whether the delete must read the object first (a dry run, or a precondition to check)."""
        return self.dry_run or self.uid is not None or self.resource_version is not None


def _invalid(kind: str, field: str, reason: str, detail: str) -> APIError:
    """kube's ``errors.NewInvalid`` of an options kind of meta.k8s.io with one cause."""
    return APIError(422, "Invalid", f'{kind}.meta.k8s.io "" is invalid: {field}: {detail}', details={
        "group": "meta.k8s.io", "kind": kind, "causes": [{"reason": reason, "message": detail, "field": field}],
    })


def dry_run(values: Optional[Sequence[Any]], kind: str) -> bool:
    """Whether a write with these ``dryRun`` values is a dry run: 422 (as ``kind``'s validation in kube)
    for any value but ``All``."""
    if not values:
        return False
    if any(v != DRY_RUN_ALL for v in values):
        shown = "[]string{" + ", ".join(go_quote(str(v)) for v in values) + "}"
        raise _invalid(kind, "dryRun", "FieldValueNotSupported",
                       f"Unsupported value: {shown}: supported values: {go_quote(DRY_RUN_ALL)}")
    return True


def query_dry_run(query: Mapping[str, str], kind: str) -> bool:
    """``dryRun`` from a write's query (one value: the server refuses a parameter given twice otherwise)."""
    return dry_run([query["dryRun"]], kind) if "dryRun" in query else False


def delete_options(body: Optional[Dict[str, Any]], query: Mapping[str, str]) -> DeleteOptions:
    """A DELETE's options, from its decoded body if it has one, else from its query: 400 for a body of
    another kind or of the wrong shape, 422 for values kube's validation refuses."""
    if body is None:
        fields: Dict[str, Any] = {}
        if "dryRun" in query:
            fields["dryRun"] = [query["dryRun"]]
        if "propagationPolicy" in query:
            fields["propagationPolicy"] = query["propagationPolicy"]
        for name in ("gracePeriodSeconds", "orphanDependents"):
            if name in query:
                fields[name] = _query_scalar(name, query[name])
    else:
        kind, api_version = body.get("kind"), body.get("apiVersion")
        if kind not in (None, "", "DeleteOptions") or api_version not in (None, "", "v1", "meta.k8s.io/v1"):
            raise bad_request(f"the body of a delete must be a DeleteOptions, not {api_version}/{kind}")
        fields = body
    grace = fields.get("gracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
        raise bad_request("DeleteOptions.gracePeriodSeconds must be an integer")
    orphan = fields.get("orphanDependents")
    if orphan is not None and not isinstance(orphan, bool):
        raise bad_request("DeleteOptions.orphanDependents must be a boolean")
    policy = fields.get("propagationPolicy")
    if policy is not None:
        if not isinstance(policy, str):
            raise bad_request("DeleteOptions.propagationPolicy must be a string")
        if orphan is not None:
            raise _invalid("DeleteOptions", "propagationPolicy", "FieldValueInvalid",
                           f"Invalid value: {go_quote(policy)}: orphanDependents and deletionPropagation cannot be both set")
        if policy not in PROPAGATION_POLICIES:
            raise _invalid("DeleteOptions", "propagationPolicy", "FieldValueNotSupported",
                           f"Unsupported value: {go_quote(policy)}: supported values: "
                           + ", ".join(map(go_quote, PROPAGATION_POLICIES)))
    values = fields.get("dryRun")
    if values is not None and (not isinstance(values, list) or not all(isinstance(v, str) for v in values)):
        raise bad_request("DeleteOptions.dryRun must be a list of strings")
    preconditions = fields.get("preconditions") or {}
    if not isinstance(preconditions, dict):
        raise bad_request("DeleteOptions.preconditions must be an object")
    uid, rv = preconditions.get("uid"), preconditions.get("resourceVersion")
    for name, value in (("uid", uid), ("resourceVersion", rv)):
        if value is not None and not isinstance(value, str):
            raise bad_request(f"DeleteOptions.preconditions.{name} must be a string")
    return DeleteOptions(dry_run(values, "DeleteOptions"), uid, rv)


def _query_scalar(name: str, value: str) -> Any:
    if name == "orphanDependents":
        if value in ("true", "True", "1"):
            return True
        if value in ("false", "False", "0"):
            return False
        raise bad_request(f"{name}: invalid value {value!r}: must be true or false")
    if not _INTEGER.fullmatch(value):
        raise bad_request(f"{name}: invalid value {value!r}: must be an integer")
    return int(value)


_INTEGER = re.compile(r"-?[0-9]{1,18}")


def check_preconditions(options: DeleteOptions, resource: str, name: str, current: Dict[str, Any]) -> None:
    """409 as kube's ``Preconditions.Check`` when the object as it is now fails ``options``' preconditions
    (``current``: the stored object, its metadata.resourceVersion filled in)."""
    metadata = current.get("metadata") or {}
    uid, rv = metadata.get("uid", ""), metadata.get("resourceVersion", "")
    if options.uid is not None and options.uid != uid:
        problem = f"UID in precondition: {options.uid}, UID in object meta: {uid}"
    elif options.resource_version is not None and options.resource_version != rv:
        problem = f"ResourceVersion in precondition: {options.resource_version}, ResourceVersion in object meta: {rv}"
    else:
        return
    raise APIError(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": Precondition failed: {problem}',
                   details={"name": name, "kind": resource})
