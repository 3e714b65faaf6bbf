"""The workloads whose pods receive traffic, read from the Kubernetes API, and what their pod
templates say about termination.

A workload is a Deployment, StatefulSet, DaemonSet, a ReplicaSet no controller owns, or a
pod no controller owns (a bare pod; terminal ones are skipped). ReplicaSets of Deployments
and pods of any controller are covered by their owner — the owner's template is what the next
pods will run. Only serving containers are listed (lifecycle.containers_of).

Needs get/list on those resources (``deploy/`` ships a ClusterRole for it, ``report-reader``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from observer.kube import lifecycle

PAGE = 500


class WorkloadError(Exception):
    """The workloads could not be read (API unreachable, access denied, nonsense)."""


@dataclass(frozen=True)
class WorkloadContainer:
    namespace: str
    kind: str
    name: str
    container: str
    prestop: lifecycle.PreStop
    grace_seconds: float
    sidecar: bool = False  # in initContainers (restartPolicy: Always)


def _controlled(obj: dict[str, Any]) -> bool:
    return any(isinstance(ref, dict) and ref.get("controller")
               for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def containers(kind: str, obj: dict[str, Any]) -> list[WorkloadContainer]:
    """The serving containers of one workload object (or bare pod)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    pod_spec = spec if kind == "Pod" else (spec.get("template") or {}).get("spec") or {}
    if not isinstance(pod_spec, dict):
        return []
    grace = lifecycle.grace_seconds(pod_spec)
    return [WorkloadContainer(str(meta.get("namespace", "")), kind, str(meta.get("name", "")),
                              c.name, c.prestop, grace, c.sidecar)
            for c in lifecycle.containers_of(pod_spec) if c.serves]


Lister = Callable[..., Awaitable[Any]]


async def _items(lister: Lister, what: str, namespace: str | None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        args = (namespace,) if namespace else ()
        try:
            response = await lister(*args, limit=PAGE, _continue=token or None,
                                    _preload_content=False)
            status, raw = response.status, await response.read()
        except ApiException as error:
            body = error.body or b""
            status, raw = error.status, body if isinstance(body, bytes) else body.encode()
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise WorkloadError(f"cannot reach the Kubernetes API: "
                                f"{error or type(error).__name__}") from None
        if status in (401, 403):
            raise WorkloadError(
                f"the Kubernetes API denied listing {what} (HTTP {status}): {_message(raw)}. "
                "The report needs get/list on deployments, statefulsets, daemonsets, "
                "replicasets and pods (ClusterRole observer-report-reader in deploy/)")
        if status != 200:
            raise WorkloadError(f"listing {what} failed with HTTP {status}: {_message(raw)}")
        try:
            body = json.loads(raw)
            page = body["items"] or []
            token = (body.get("metadata") or {}).get("continue") or ""
        except (ValueError, KeyError, TypeError, AttributeError):
            raise WorkloadError(f"listing {what}: the answer is not a list") from None
        items += [item for item in page if isinstance(item, dict)]
        if not token:
            return items


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["message"])
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode(errors="replace")


async def read_workloads(api: client.ApiClient, namespace: str | None
                         ) -> list[WorkloadContainer]:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    scoped = namespace is not None
    sources: list[tuple[str, str, Lister]] = [
        ("Deployment", "deployments", apps.list_namespaced_deployment if scoped
         else apps.list_deployment_for_all_namespaces),
        ("StatefulSet", "statefulsets", apps.list_namespaced_stateful_set if scoped
         else apps.list_stateful_set_for_all_namespaces),
        ("DaemonSet", "daemonsets", apps.list_namespaced_daemon_set if scoped
         else apps.list_daemon_set_for_all_namespaces),
        ("ReplicaSet", "replicasets", apps.list_namespaced_replica_set if scoped
         else apps.list_replica_set_for_all_namespaces),
        ("Pod", "pods", core.list_namespaced_pod if scoped
         else core.list_pod_for_all_namespaces),
    ]
    out: list[WorkloadContainer] = []
    for kind, what, lister in sources:
        for obj in await _items(lister, what, namespace):
            if kind in ("ReplicaSet", "Pod") and _controlled(obj):
                continue
            if kind == "Pod" and (obj.get("status") or {}).get("phase") in ("Succeeded",
                                                                            "Failed"):
                continue
            out += containers(kind, obj)
    return out
