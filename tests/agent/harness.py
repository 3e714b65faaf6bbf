"""Drive a cluster through the lab API server and run the real agent against it."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client

from observer.agent import Agent
from observer.dataplane.memory import MemoryDataplane
from observer.lab.apiserver.registry import DeleteOptions, WriteOptions
from observer.lab.apiserver.server import ApiServer
from observer.values import EndpointKey, ServicePort

NS = "default"


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (polling) until ``predicate()`` holds; the agent works on real sockets. No deadline
    of its own: a busy machine may take long to give the event, and must not change the
    verdict. A wait that never ends meets the per-test timeout, whose dump of the tasks shows
    ``what`` in the waiting task's name."""
    task = asyncio.current_task()
    assert task is not None
    name = task.get_name()
    task.set_name(f"{name} waiting for: {what}")
    try:
        while not predicate():  # noqa: ASYNC110 (state of real sockets: no event to await)
            await asyncio.sleep(0.005)
    finally:
        task.set_name(name)


@dataclass
class Endpoint:
    ip: str
    node: str
    pod: str = ""
    uid: str = ""
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"addresses": [self.ip], "nodeName": self.node,
                               "conditions": {"ready": self.ready, "serving": self.serving,
                                              "terminating": self.terminating}}
        if self.pod:
            out["targetRef"] = {"kind": "Pod", "namespace": NS, "name": self.pod,
                                "uid": self.uid}
        return out


@dataclass
class Cluster:
    """Writes to the API server in-process (exact ordering); the agent reads over HTTP."""

    server: ApiServer
    slices: dict[str, dict[str, Endpoint]] = field(default_factory=dict)
    slice_services: dict[str, str] = field(default_factory=dict)
    address_types: dict[str, str] = field(default_factory=dict)
    port_names: dict[str, str] = field(default_factory=dict)

    def create_pod(self, name: str, node: str, ip: str,
                   prestop: dict[str, Any] | None = None, *,
                   metadata: dict[str, Any] | None = None) -> str:
        """A running, Ready pod; ``metadata``: more of it (labels, owner references)."""
        pods = self.server.registries["pods"]
        app: dict[str, Any] = {"name": "app", "image": "app:1"}
        if prestop is not None:
            app["lifecycle"] = {"preStop": prestop}
        created = pods.create(NS, {"metadata": {"name": name, **(metadata or {})}, "spec": {
            "nodeName": node, "containers": [app]}}, WriteOptions())
        pods.patch(NS, name, {**created, "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0,
                                   "image": "app:1", "imageID": "", "state": {
                                       "running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}},
                   WriteOptions(), status=True)
        return str(created["metadata"]["uid"])

    def delete_pod(self, name: str, grace: int | None = 30) -> None:
        self.server.registries["pods"].delete(NS, name, DeleteOptions(grace_period_seconds=grace))

    def pod_terminated(self, name: str, *, killed: bool = False) -> None:
        """Every container exited, and the pod is terminal (the kubelet of Kubernetes >= 1.27
        moves a deleted pod to Failed/Succeeded before it goes)."""
        pods = self.server.registries["pods"]
        current = pods.get(NS, name)
        status = copy.deepcopy(current["status"])
        status["phase"] = "Failed" if killed else "Succeeded"
        status["conditions"] = [{"type": "Ready", "status": "False"}]
        status["containerStatuses"][0]["ready"] = False
        status["containerStatuses"][0]["state"] = {"terminated": {
            "exitCode": 137 if killed else 0, "reason": "Error" if killed else "Completed"}}
        pods.patch(NS, name, {**current, "status": status}, WriteOptions(), status=True)

    def remove_pod(self, name: str) -> None:
        self.server.registries["pods"].delete(NS, name, DeleteOptions(grace_period_seconds=0))

    def put_slice(self, name: str, service: str, *endpoints: Endpoint,
                  address_type: str = "IPv4", port_name: str = "http") -> None:
        self.slices[name] = {e.ip: e for e in endpoints}
        self.slice_services[name] = service
        self.address_types[name] = address_type
        self.port_names[name] = port_name
        registry = self.server.registries["endpointslices"]
        body = {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
                "addressType": address_type,
                "ports": [{"name": port_name, "port": 8080, "protocol": "TCP"}],
                "endpoints": [e.to_api() for e in endpoints]}
        if self.server.store.get("endpointslices", (NS, name)) is None:
            registry.create(NS, body, WriteOptions())
        else:
            registry.update(NS, name, body, WriteOptions())

    def set_endpoint(self, slice_name: str, ip: str, **changes: bool) -> None:
        endpoints = self.slices[slice_name]
        for key, value in changes.items():
            setattr(endpoints[ip], key, value)
        self.put_slice(slice_name, self.slice_services[slice_name], *endpoints.values(),
                       address_type=self.address_types[slice_name],
                       port_name=self.port_names[slice_name])

    def drop_endpoint(self, slice_name: str, ip: str) -> None:
        endpoints = self.slices[slice_name]
        del endpoints[ip]
        self.put_slice(slice_name, self.slice_services[slice_name], *endpoints.values(),
                       address_type=self.address_types[slice_name],
                       port_name=self.port_names[slice_name])


def key(service: str, ip: str, port: int = 8080, port_name: str = "http") -> EndpointKey:
    return EndpointKey(ServicePort(NS, service, port_name, "TCP"), ip, port)


@dataclass
class AgentEnv:
    agent: Agent
    dataplane: MemoryDataplane
    cluster: Cluster
    api: client.ApiClient
    sleeps: list[float]
    reconnects: asyncio.Event  # clear it to hold the watches' reconnections

    def unmeasured(self, stage: str, reason: str) -> float:
        return self.sample("endpoint_propagation_stage_unmeasured_total", stage=stage,
                           reason=reason) or 0.0

    def outcome(self, outcome: str) -> float:
        return self.sample("endpoint_propagation_episodes_total", outcome=outcome) or 0.0

    def sample(self, name: str, **labels: str) -> float | None:
        return self.agent.registry.get_sample_value(name, labels)

    def stage_sum(self, stage: str, cause: str = "deletion") -> float | None:
        return self.sample("endpoint_propagation_duration_seconds_sum", stage=stage, cause=cause,
                           proxy_mode=self.dataplane.mode)

    def stage_count(self, stage: str, cause: str = "deletion") -> float | None:
        return self.sample("endpoint_propagation_duration_seconds_count", stage=stage,
                           cause=cause, proxy_mode=self.dataplane.mode)

    def restarts(self, resource: str, reason: str) -> float:
        return self.sample("endpoint_propagation_watch_restarts_total", resource=resource,
                           reason=reason) or 0.0

    def invalid(self, resource: str, reason: str) -> float:
        return self.sample("endpoint_propagation_invalid_input_total", resource=resource,
                           reason=reason) or 0.0

    def abandoned(self, reason: str) -> float:
        return self.sample("endpoint_propagation_abandoned_total", reason=reason) or 0.0

    async def seen(self, resource: str) -> None:
        """Wait until the agent's watch of ``resource`` has caught up with the last write to it
        (writes of other resources, such as the agent's own Events, come to it as bookmarks
        only, which the manual clock paces)."""
        watch = self.agent.pods if resource == "pods" else self.agent.slices
        store = self.cluster.server.store
        revision = str(store.last_change(resource) or store.revision)
        await until(lambda: watch.version == revision, f"{resource} watch at {revision}")

    async def watching(self, resource: str) -> None:
        """Wait until every watch the agent has on ``resource`` has a stream open (faults act
        on open streams only; the pods resource carries two watches, the node's pods and the
        terminal pods, and one open stream said nothing of the other)."""
        request = next(w.request for w in self.agent.watches if w.resource == resource)
        wanted = sum(w.request == request for w in self.agent.watches)
        streams = self.cluster.server.faults.streams
        await until(lambda: sum(s.resource == resource for s in streams) >= wanted,
                    f"{resource} watches open")

    async def settle_finished(self, count: int) -> None:
        await until(lambda: len(self.agent.tracker.finished) >= count,
                    f"{count} finished episodes")

    async def settle_episode(self, k: EndpointKey) -> None:
        await until(lambda: k in self.agent.tracker.episodes, f"episode for {k}")
