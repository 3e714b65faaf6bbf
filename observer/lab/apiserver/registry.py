"""REST semantics of one resource on top of the store: create, update, patch, delete, get, list.

This is the server's equivalent of ``k8s.io/apiserver/pkg/registry/generic/registry/store.go``
with the pod and EndpointSlice strategies: defaulting, validation, optimistic concurrency,
no-op detection, status subresource rules and graceful deletion
(``k8s.io/apiserver/pkg/registry/rest/delete.go``, ``pkg/registry/core/pod/strategy.go``).
It knows no HTTP; the lab's components may call it directly.
"""

from __future__ import annotations

import copy
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from observer.clock import Clock
from observer.kube.apitime import format_time
from observer.lab.apiserver import errors
from observer.lab.apiserver.errors import ApiError, Cause
from observer.lab.apiserver.resources import ResourceType, name_causes
from observer.lab.apiserver.schema import conform
from observer.lab.apiserver.store import Key, Obj, Store

FieldValidation = Literal["Ignore", "Warn", "Strict"]

# Metadata the server owns; a client's values are ignored (rest.FillObjectMetaSystemFields,
# BeforeCreate/BeforeUpdate in k8s.io/apiserver/pkg/registry/rest).
_SYSTEM_META = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                "generation", "selfLink")


@dataclass
class WriteOptions:
    dry_run: bool = False
    field_validation: FieldValidation = "Warn"
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DeleteOptions:
    grace_period_seconds: int | None = None
    uid: str | None = None
    resource_version: str | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class DeleteResult:
    obj: Obj
    deleted: bool  # False: a graceful deletion started or continues; the object is still there


class Registry:
    def __init__(self, rt: ResourceType, *, store: Store, clock: Clock) -> None:
        self.rt = rt
        self.store = store
        self.clock = clock

    # helpers -------------------------------------------------------------------------------

    def _not_found(self, name: str) -> ApiError:
        return errors.not_found(group=self.rt.group, resource=self.rt.resource, name=name)

    def _invalid(self, name: str, causes: list[Cause]) -> ApiError:
        return errors.invalid(group=self.rt.group, kind=self.rt.kind, name=name, causes=causes)

    def _decode(self, body: Any, options: WriteOptions) -> Obj:
        """What the typed decoder does: check the type, drop unknown fields."""
        if not isinstance(body, dict):
            raise errors.bad_request(
                f"Object of type {type(body).__name__} cannot be handled as a {self.rt.kind}")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version not in (None, "", self.rt.api_version):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({self.rt.api_version})")
        if kind not in (None, "", self.rt.kind):
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({self.rt.kind})")
        conformed, findings = conform(body, self.rt.model)
        obj: Obj = conformed
        if findings.type_errors:
            raise errors.bad_request(f"{self.rt.kind} in version \"{self.rt.version}\" cannot be "
                                     f"handled as a {self.rt.kind}: {findings.type_errors[0]}")
        unknown = [f'unknown field "{path}"' for path in findings.unknown]
        if unknown and options.field_validation == "Strict":
            raise errors.bad_request("strict decoding error: " + ", ".join(unknown))
        if options.field_validation == "Warn":
            options.warnings.extend(unknown)
        obj["apiVersion"], obj["kind"] = self.rt.api_version, self.rt.kind
        obj.setdefault("metadata", {})
        return obj

    def _commit(self, obj: Obj, options: WriteOptions) -> Obj:
        if options.dry_run:
            return obj
        return self.store.put(self.rt.resource, obj)

    # reads ---------------------------------------------------------------------------------

    def _current(self, namespace: str, name: str) -> Obj:
        """The stored object itself: never to be mutated."""
        obj = self.store.get(self.rt.resource, (namespace, name))
        if obj is None:
            raise self._not_found(name)
        return obj

    def get(self, namespace: str, name: str) -> Obj:
        """A copy the caller may change (the lab's components edit and write back)."""
        return copy.deepcopy(self._current(namespace, name))

    # create --------------------------------------------------------------------------------

    def create(self, namespace: str, body: Any, options: WriteOptions) -> Obj:
        obj = self._decode(body, options)
        meta = obj["metadata"]
        if meta.get("namespace") not in (None, "", namespace):
            raise errors.bad_request("the namespace of the provided object does not match the "
                                     "namespace sent on the request")
        if meta.get("resourceVersion"):
            raise errors.bad_request("resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise self._invalid("", [Cause("FieldValueRequired", "Required value: name or "
                                               "generateName is required", "metadata.name")])
        for key in _SYSTEM_META:
            meta.pop(key, None)
        if self.rt.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = format_time(self.clock.wall())
        meta["generation"] = 1
        if self.rt.has_status:
            obj["status"] = self.rt.initial_status(obj)
        obj = self.rt.default(obj)
        causes = name_causes(meta["name"]) + self.rt.validate(obj)
        if causes:
            raise self._invalid(meta["name"], causes)
        if self.store.get(self.rt.resource, (namespace, meta["name"])) is not None:
            raise errors.already_exists(group=self.rt.group, resource=self.rt.resource,
                                        name=meta["name"])
        return self._commit(obj, options)

    # update --------------------------------------------------------------------------------

    def update(self, namespace: str, name: str, body: Any, options: WriteOptions, *,
               status: bool = False) -> Obj:
        old = self._current(namespace, name)
        new = self._decode(body, options)
        meta = new["metadata"]
        if meta.get("name", name) != name:
            raise errors.bad_request(f"the name of the object ({meta.get('name')}) does not match "
                                     f"the name on the URL ({name})")
        if meta.get("namespace") not in (None, "", namespace):
            raise errors.bad_request("the namespace of the provided object does not match the "
                                     "namespace sent on the request")
        wanted = meta.get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise errors.conflict(group=self.rt.group, resource=self.rt.resource, name=name,
                                  why=errors.STALE_OBJECT)
        return self._replace(old, new, options, status=status)

    def _replace(self, old: Obj, new: Obj, options: WriteOptions, *, status: bool) -> Obj:
        name = old["metadata"]["name"]
        meta = new["metadata"]
        meta["name"] = name
        if self.rt.namespaced:
            meta["namespace"] = old["metadata"]["namespace"]
        for key in _SYSTEM_META:
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
            else:
                meta.pop(key, None)
        if status:
            # podStatusStrategy: only status changes; metadata.ResetObjectMetaForStatus.
            new = {**copy.deepcopy(old), "status": new.get("status", {})}
        elif self.rt.has_status:
            new["status"] = old.get("status", {})
        new = self.rt.default(new)
        causes = self.rt.validate(new) + self.rt.validate_update(new, old)
        if causes:
            raise self._invalid(name, causes)
        comparable_old = {**old, "metadata": {k: v for k, v in old["metadata"].items()
                                              if k != "resourceVersion"}}
        comparable_new = {**new, "metadata": {k: v for k, v in meta.items()
                                              if k != "resourceVersion"}}
        if comparable_new == comparable_old:
            return old  # a no-op write gets no new resourceVersion
        if not status and {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
                k: v for k, v in old.items() if k not in ("metadata", "status")}:
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and (
                not self.rt.graceful_delete or meta.get("deletionGracePeriodSeconds") == 0):
            # The last finalizer is gone from an object already being deleted.
            if not options.dry_run:
                return self.store.delete(self.rt.resource, (meta.get("namespace", ""), name))
            return new
        return self._commit(new, options)

    def patch(self, namespace: str, name: str, patched: Any, options: WriteOptions, *,
              status: bool = False) -> Obj:
        """Finish a PATCH: ``patched`` is the current object with the patch applied."""
        old = self._current(namespace, name)
        if isinstance(patched, dict) and isinstance(patched.get("metadata"), dict):
            wanted = patched["metadata"].get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise errors.conflict(group=self.rt.group, resource=self.rt.resource, name=name,
                                      why=errors.STALE_OBJECT)
        return self._replace(old, self._decode(patched, options), options, status=status)

    # delete --------------------------------------------------------------------------------

    def delete(self, namespace: str, name: str, options: DeleteOptions) -> DeleteResult:
        old = self._current(namespace, name)
        meta = old["metadata"]
        if options.uid is not None and options.uid != meta["uid"]:
            raise errors.conflict(group=self.rt.group, resource=self.rt.resource, name=name,
                                  why=f"Precondition failed: UID in precondition: {options.uid}, "
                                      f"UID in object meta: {meta['uid']}")
        if options.resource_version is not None and options.resource_version != meta[
                "resourceVersion"]:
            raise errors.conflict(
                group=self.rt.group, resource=self.rt.resource, name=name,
                why=f"Precondition failed: ResourceVersion in precondition: "
                    f"{options.resource_version}, ResourceVersion in object meta: "
                    f"{meta['resourceVersion']}")
        grace = self._grace(old, options)
        key: Key = (namespace, name)
        if grace == 0 and not meta.get("finalizers"):
            if options.dry_run:
                return DeleteResult(old, deleted=True)
            return DeleteResult(self.store.delete(self.rt.resource, key), deleted=True)
        if grace is None:  # graceful deletion already under way and not shortened
            return DeleteResult(old, deleted=False)
        deadline = math.floor(self.clock.wall()) + grace
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = format_time(deadline)
        new["metadata"]["deletionGracePeriodSeconds"] = grace
        new["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
        if options.dry_run:
            return DeleteResult(new, deleted=False)
        return DeleteResult(self.store.put(self.rt.resource, new), deleted=False)

    def _grace(self, obj: Obj, options: DeleteOptions) -> int | None:
        """The grace period this delete applies; None when it changes nothing."""
        if not self.rt.graceful_delete:
            return 0
        spec, status, meta = obj.get("spec") or {}, obj.get("status") or {}, obj["metadata"]
        grace = options.grace_period_seconds
        if grace is None:
            grace = int(spec.get("terminationGracePeriodSeconds", 30))
        if not spec.get("nodeName") or status.get("phase") in ("Failed", "Succeeded"):
            grace = 0  # CheckGracefulDelete: unscheduled or terminal pods go at once
        current = meta.get("deletionGracePeriodSeconds")
        if meta.get("deletionTimestamp") and current is not None and grace >= int(current):
            # A second delete may only shorten the grace period (rest.BeforeDelete).
            return None if grace or current else 0
        return max(grace, 0)
