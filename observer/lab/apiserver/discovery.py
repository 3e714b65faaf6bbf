"""Discovery documents and ``/version``: what clients read to learn which resources exist.

Shapes follow the legacy (unaggregated) discovery endpoints of
``k8s.io/apiserver/pkg/endpoints/discovery``. Clients that ask for aggregated discovery
(``Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList``) also accept the
plain documents and fall back to them, which is what kubectl does against older servers.
"""

from __future__ import annotations

from typing import Any

from observer.lab.apiserver.catalog import RESOURCES
from observer.lab.apiserver.resources import ResourceType

# The Kubernetes API version whose behaviour this server follows.
KUBE_VERSION = {"major": "1", "minor": "34", "gitVersion": "v1.34.0-observer-lab"}


def version(build: str, served: dict[str, str]) -> dict[str, Any]:
    """``/version``; ``served``: the major, minor and gitVersion it says (``KUBE_VERSION``
    unless a test plays an older cluster)."""
    return {**served, "gitCommit": build, "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z", "goVersion": "n/a (Python)",
            "compiler": "cpython", "platform": "linux/amd64"}


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": server_address}]}


def _groups() -> dict[str, str]:
    return {rt.group: rt.version for rt in RESOURCES if rt.group}


def api_group(group: str) -> dict[str, Any]:
    gv = {"groupVersion": f"{group}/{_groups()[group]}", "version": _groups()[group]}
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv],
            "preferredVersion": gv}


def api_group_list() -> dict[str, Any]:
    groups = [{k: v for k, v in api_group(g).items() if k not in ("kind", "apiVersion")}
              for g in sorted(_groups())]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _resource_entries(rt: ResourceType) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "name": rt.resource, "singularName": rt.kind.lower(), "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update",
                  "watch"],
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.kind == "Pod":
        entry["categories"] = ["all"]
    entries = [entry]
    if rt.has_status:
        entries.append({"name": f"{rt.resource}/status", "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind, "verbs": ["get", "patch", "update"]})
    return entries


def resource_list(group: str, version_: str) -> dict[str, Any] | None:
    types = [rt for rt in RESOURCES if rt.group == group and rt.version == version_]
    if not types:
        return None
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version_}" if group else version_,
            "resources": [e for rt in types for e in _resource_entries(rt)]}


# OpenAPI v3: kubectl reads it to learn whether the server validates fields itself
# (``fieldValidation``; k8s.io/cli-runtime/pkg/resource/query_param_verifier_v3.go looks for the
# parameter on the PATCH operation carrying the kind's x-kubernetes-group-version-kind). The
# documents here describe operations and their query parameters only; they carry no schemas
# (``components``), so clients use their compiled-in types for strategic-merge metadata.

_WRITE_PARAMS = ("dryRun", "fieldManager", "fieldValidation")


def _gv_path(group: str, version_: str) -> str:
    return f"apis/{group}/{version_}" if group else f"api/{version_}"


def openapi_index(build: str) -> dict[str, Any]:
    gvs = sorted({(rt.group, rt.version) for rt in RESOURCES})
    return {"paths": {_gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}"
                                                          f"?hash={build}"} for g, v in gvs}}


def _operation(rt: ResourceType, action: str, params: tuple[str, ...]) -> dict[str, Any]:
    return {
        "operationId": f"{action}{rt.kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version,
                                            "kind": rt.kind},
        "parameters": [{"name": p, "in": "query", "schema": {"type": "string"}} for p in params],
        "responses": {"200": {"description": "OK"}},
    }


def openapi_document(group: str, version_: str) -> dict[str, Any] | None:
    types = [rt for rt in RESOURCES if rt.group == group and rt.version == version_]
    if not types:
        return None
    paths: dict[str, Any] = {}
    list_params = ("labelSelector", "fieldSelector", "limit", "continue", "resourceVersion",
                   "resourceVersionMatch", "watch", "allowWatchBookmarks", "timeoutSeconds")
    for rt in types:
        collection = (f"{rt.prefix}/namespaces/{{namespace}}/{rt.resource}" if rt.namespaced
                      else f"{rt.prefix}/{rt.resource}")
        if rt.namespaced:
            paths[f"{rt.prefix}/{rt.resource}"] = {"get": _operation(rt, "list", list_params)}
        paths[collection] = {"get": _operation(rt, "list", list_params),
                             "post": _operation(rt, "post", _WRITE_PARAMS),
                             "delete": _operation(rt, "deletecollection",
                                                  ("labelSelector", "fieldSelector", "dryRun",
                                                   "gracePeriodSeconds"))}
        item = {"get": _operation(rt, "get", ()),
                "put": _operation(rt, "put", _WRITE_PARAMS),
                "patch": _operation(rt, "patch", _WRITE_PARAMS),
                "delete": _operation(rt, "delete", ("dryRun", "gracePeriodSeconds"))}
        paths[f"{collection}/{{name}}"] = item
        if rt.has_status:
            paths[f"{collection}/{{name}}/status"] = {k: item[k] for k in ("get", "put", "patch")}
    return {"openapi": "3.0.0",
            "info": {"title": "observer lab API server", "version": KUBE_VERSION["gitVersion"]},
            "paths": paths}
