"""Typed views of the two objects the agent reads, parsed from the API's JSON.

Parsing is pure and strict about what the agent relies on: a field the agent needs that is
missing or of the wrong type raises ``MalformedObject`` (the caller logs it, counts it and
moves on). Fields the agent does not need are ignored.

Semantics (``staging/src/k8s.io/endpointslice/utils.go``, ``podToEndpoint``): an endpoint's
``ready`` is "serving and not terminating"; ``serving`` is the pod's Ready condition;
``terminating`` is "the pod has a deletionTimestamp". A nil condition is read as the API
documents it: ``ready``/``serving`` nil mean true (unknown state is treated as ready),
``terminating`` nil means false.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from observer.kube.apitime import parse_time
from observer.kube.lifecycle import containers_of, known_prestop_seconds
from observer.kube.owners import Workload, owner_of

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class MalformedObject(ValueError):
    """An object the agent cannot use; ``reason`` is a short, bounded label value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedObject("malformed", f"{what} is not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    """A JSON list (absent or null: empty)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedObject("malformed", f"{what} is not a list")
    return value


def _str(value: Any, what: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise MalformedObject("malformed", f"{what} is missing or not a string")
    return value


def _bool(value: Any, default: bool, what: str) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise MalformedObject("malformed", f"{what} is not a boolean")
    return value


@dataclass(frozen=True, slots=True)
class PortRef:
    """One port of an EndpointSlice: the service port it serves."""

    name: str  # "" for an unnamed service port
    port: int
    protocol: str  # TCP, UDP or SCTP


@dataclass(frozen=True, slots=True)
class Endpoint:
    # The first address only: consumers use the first (EndpointSlice API, ``addresses``).
    # Kept compact, with repeated strings interned: a large cluster has 100,000s of these.
    address: str
    ready: bool
    serving: bool
    terminating: bool
    node_name: str  # "" when the slice does not say
    pod_namespace: str  # "" without a Pod targetRef
    pod_name: str
    pod_uid: str


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str  # from the kubernetes.io/service-name label; "" when absent
    address_type: str
    ports: tuple[PortRef, ...]
    endpoints: tuple[Endpoint, ...]
    resource_version: str


def parse_endpoint_slice(raw: Any) -> EndpointSlice:
    obj = _mapping(raw, "endpointslice")
    meta = _mapping(obj.get("metadata"), "metadata")
    labels = meta.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise MalformedObject("malformed", "metadata.labels is not an object")
    ports = []
    for i, item in enumerate(_list(obj.get("ports"), "ports")):
        port = _mapping(item, f"ports[{i}]")
        number = port.get("port")
        if number is None:
            continue  # a nil port means "all ports" (FQDN/headless use); kube-proxy skips it too
        if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
            raise MalformedObject("malformed", f"ports[{i}].port is not a port number")
        ports.append(PortRef(
            sys.intern(_str(port.get("name"), f"ports[{i}].name", required=False)), number,
            sys.intern(_str(port.get("protocol") or "TCP", f"ports[{i}].protocol"))))
    endpoints = []
    for i, item in enumerate(_list(obj.get("endpoints"), "endpoints")):
        ep = _mapping(item, f"endpoints[{i}]")
        addresses = ep.get("addresses")
        if not isinstance(addresses, list) or not addresses or not all(
                isinstance(a, str) for a in addresses):
            raise MalformedObject("malformed", f"endpoints[{i}].addresses is not a list of "
                                               "strings")
        cond = ep.get("conditions") or {}
        cond = _mapping(cond, f"endpoints[{i}].conditions")
        terminating = _bool(cond.get("terminating"), False, "conditions.terminating")
        serving = _bool(cond.get("serving"), True, "conditions.serving")
        ready = _bool(cond.get("ready"), True, "conditions.ready")
        ref = ep.get("targetRef") or {}
        ref = _mapping(ref, f"endpoints[{i}].targetRef")
        is_pod = ref.get("kind") == "Pod"
        endpoints.append(Endpoint(
            address=addresses[0], ready=ready, serving=serving, terminating=terminating,
            node_name=sys.intern(_str(ep.get("nodeName"), "nodeName", required=False)),
            pod_namespace=sys.intern(_str(ref.get("namespace"), "targetRef.namespace",
                                          required=False)) if is_pod else "",
            pod_name=_str(ref.get("name"), "targetRef.name", required=False) if is_pod else "",
            pod_uid=_str(ref.get("uid"), "targetRef.uid", required=False) if is_pod else "",
        ))
    return EndpointSlice(
        namespace=sys.intern(_str(meta.get("namespace"), "metadata.namespace")),
        name=_str(meta.get("name"), "metadata.name"),
        service=sys.intern(_str(labels.get(SERVICE_NAME_LABEL), "service-name label",
                                required=False)),
        address_type=sys.intern(_str(obj.get("addressType"), "addressType")),
        ports=tuple(ports), endpoints=tuple(endpoints),
        resource_version=_str(meta.get("resourceVersion"), "metadata.resourceVersion",
                              required=False),
    )


@dataclass(frozen=True, slots=True)
class ContainerState:
    name: str
    running: bool
    terminated: bool
    killed: bool  # terminated by SIGKILL (exit code 137 or signal 9)


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    uid: str
    node_name: str
    ips: tuple[str, ...]
    phase: str
    ready: bool
    # metav1.Time: whole seconds since the epoch, from the API server's clock.
    deletion_timestamp: float | None
    deletion_grace_seconds: int | None
    containers: tuple[ContainerState, ...]
    resource_version: str
    prestop_seconds: float | None  # the longest preStop hook; None: one takes unknown time
    # Its workload (observer.kube.owners), and why its owner references could not be
    # followed, if they could not (it is then its own workload). None: not read.
    workload: Workload | None = None
    owner_problem: str | None = None

    @property
    def deletion_requested_at(self) -> float | None:
        """When the DELETE was received by the API server (whole seconds): deletionTimestamp is
        request time + grace (apiserver ``registry/rest/delete.go``)."""
        if self.deletion_timestamp is None or self.deletion_grace_seconds is None:
            return None
        return self.deletion_timestamp - self.deletion_grace_seconds

    @property
    def all_terminated(self) -> bool:
        """Every container has exited (or the pod is terminal)."""
        if self.phase in ("Succeeded", "Failed"):
            return True
        return bool(self.containers) and all(c.terminated for c in self.containers)


def parse_pod(raw: Any) -> Pod:
    obj = _mapping(raw, "pod")
    meta = _mapping(obj.get("metadata"), "metadata")
    spec = _mapping(obj.get("spec") or {}, "spec")
    status = _mapping(obj.get("status") or {}, "status")
    ips: list[str] = []
    for item in _list(status.get("podIPs"), "status.podIPs"):
        ip = _mapping(item, "status.podIPs[]").get("ip")
        if isinstance(ip, str) and ip and ip not in ips:
            ips.append(ip)
    if isinstance(status.get("podIP"), str) and status["podIP"] and status["podIP"] not in ips:
        ips.insert(0, status["podIP"])
    ready = False
    for item in _list(status.get("conditions"), "status.conditions"):
        condition = _mapping(item, "status.conditions[]")
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
    containers = []
    for item in _list(status.get("containerStatuses"), "status.containerStatuses"):
        cs = _mapping(item, "status.containerStatuses[]")
        state = _mapping(cs.get("state") or {}, "containerStatuses[].state")
        terminated = state.get("terminated")
        killed = False
        if terminated is not None:
            term = _mapping(terminated, "state.terminated")
            killed = term.get("exitCode") == 137 or term.get("signal") == 9
        containers.append(ContainerState(
            name=_str(cs.get("name"), "containerStatuses[].name"),
            running=state.get("running") is not None,
            terminated=terminated is not None, killed=killed))
    deletion = meta.get("deletionTimestamp")
    grace = meta.get("deletionGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
        raise MalformedObject("malformed", "metadata.deletionGracePeriodSeconds is not an integer")
    try:
        if deletion is not None and not isinstance(deletion, str):
            raise TypeError("not a string")
        deletion_ts = parse_time(deletion) if deletion is not None else None
    except (TypeError, ValueError):
        raise MalformedObject("malformed", "metadata.deletionTimestamp is not a time") from None
    namespace = _str(meta.get("namespace"), "metadata.namespace")
    name = _str(meta.get("name"), "metadata.name")
    owner = owner_of(namespace, name, meta)
    return Pod(
        namespace=namespace, name=name,
        uid=_str(meta.get("uid"), "metadata.uid"),
        node_name=_str(spec.get("nodeName"), "spec.nodeName", required=False),
        ips=tuple(ips), phase=_str(status.get("phase"), "status.phase", required=False),
        ready=ready, deletion_timestamp=deletion_ts, deletion_grace_seconds=grace,
        containers=tuple(containers),
        resource_version=_str(meta.get("resourceVersion"), "metadata.resourceVersion",
                              required=False),
        prestop_seconds=known_prestop_seconds(containers_of(spec)),
        workload=owner.workload, owner_problem=owner.problem,
    )
