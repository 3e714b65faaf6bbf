"""A kube-proxy emulation for one node: watches EndpointSlices like kube-proxy's informer and
programs the node's own network namespace with kube-proxy's rule layout, using the real tools
(``nft -f``, ``iptables-restore``), or an in-memory dataplane.

Behaviour followed: endpoint selection per ``pkg/proxy/topology.go`` ``CategorizeEndpoints``
(Ready endpoints; when a service port has none, the serving-and-terminating ones — KEP-1669);
sync pacing per ``BoundedFrequencyRunner`` with ``minSyncPeriod`` (a change is programmed after
the programming delay, but never sooner than minSyncPeriod after the previous sync; changes
that arrive meanwhile are batched); partial syncs that rewrite only the changed service ports.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Protocol

from observer.clock import Clock
from observer.dataplane.commands import CommandRunner
from observer.dataplane.memory import MemoryDataplane
from observer.lab.config import LabConfig
from observer.lab.controller import NAMESPACE
from observer.lab.rules import ServicePortRules, iptables_sync, nft_sync
from observer.lab.truth import Truth
from observer.values import EndpointKey, ServicePort


class Programmer(Protocol):
    async def apply(self, services: list[ServicePortRules], *, first: bool) -> None:
        """Commit these service ports' rules (all of them when ``first``)."""


class NftProgrammer:
    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner
        self.endpoint_chains: set[str] = set()

    async def apply(self, services: list[ServicePortRules], *, first: bool) -> None:
        lines = nft_sync(services, known_endpoint_chains=self.endpoint_chains, first=first)
        await self.runner.run(["nft", "-f", "-"], stdin=("\n".join(lines) + "\n").encode())


class IptablesProgrammer:
    def __init__(self, runner: CommandRunner, backend: str) -> None:
        self.runner = runner
        self.backend = backend
        self.seps: dict[str, set[str]] = {}

    async def apply(self, services: list[ServicePortRules], *, first: bool) -> None:
        lines = iptables_sync(services, previous=self.seps, first=first)
        await self.runner.run([f"iptables-{self.backend}-restore", "--noflush"],
                              stdin=("\n".join(lines) + "\n").encode())


class MemoryProgrammer:
    def __init__(self, dataplane: MemoryDataplane) -> None:
        self.dataplane = dataplane
        self.selected: dict[ServicePort, set[EndpointKey]] = {}

    async def apply(self, services: list[ServicePortRules], *, first: bool) -> None:
        for s in services:
            port = ServicePort(s.namespace, s.name, s.port_name, s.protocol.upper())
            now = {EndpointKey(port, ip, number) for ip, number in s.endpoints}
            for key in now:
                self.dataplane.set(key, True)
            for key in self.selected.get(port, set()) - now:
                self.dataplane.set(key, False)
            self.selected[port] = now


def select(endpoints: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """The IPs kube-proxy programs, and whether that is the terminating fallback."""
    ready = [e["addresses"][0] for e in endpoints if e["conditions"].get("ready")]
    if ready:
        return ready, False
    serving = [e["addresses"][0] for e in endpoints
               if e["conditions"].get("serving") and e["conditions"].get("terminating")]
    return serving, bool(serving)


class KubeProxy:
    def __init__(self, *, node: str, server: Any, truth: Truth, clock: Clock,
                 config: LabConfig, programmer: Programmer, cluster_ips: dict[str, str],
                 rng: random.Random) -> None:
        self.node = node
        self.server = server
        self.truth = truth
        self.clock = clock
        self.config = config
        self.programmer = programmer
        self.cluster_ips = cluster_ips
        self.rng = rng
        self.slices: dict[str, list[dict[str, Any]]] = {}  # service -> endpoints
        self.programmed: dict[str, list[str]] = {}
        self.synced = asyncio.Event()

    def _rules(self, service: str, ips: list[str]) -> ServicePortRules:
        draining = [e["addresses"][0] for e in self.slices.get(service, [])
                    if e["conditions"].get("serving") and e["conditions"].get("terminating")]
        return ServicePortRules(namespace=NAMESPACE, name=service, port_name="http",
                                cluster_ip=self.cluster_ips[service], port=80,
                                endpoints=tuple((ip, 8080) for ip in ips),
                                terminating=tuple((ip, 8080) for ip in draining))

    async def _sync(self, services: set[str], *, first: bool) -> None:
        wanted: dict[str, list[str]] = {}
        fallback: dict[str, bool] = {}
        for service in services:
            wanted[service], fallback[service] = select(self.slices.get(service, []))
        started = self.clock.monotonic()
        await self.programmer.apply([self._rules(s, wanted[s]) for s in sorted(services)],
                                    first=first)
        committed = self.clock.monotonic()
        for service in services:
            name = f"{NAMESPACE}/{service}:http"
            for ip in set(self.programmed.get(service, [])) - set(wanted[service]):
                episode = self.truth.get(name, ip)
                if episode is not None and self.node not in episode.dataplane:
                    episode.dataplane[self.node] = committed
                    episode.dataplane_precision[self.node] = committed - started
            if fallback[service]:
                for ip in wanted[service]:
                    episode = self.truth.get(name, ip)
                    if episode is not None:
                        episode.fallback_nodes.add(self.node)
            self.programmed[service] = wanted[service]

    async def run(self) -> None:
        store = self.server.store
        watcher = store.watch("endpointslices", namespace=NAMESPACE, predicate=lambda _: True,
                              since=None)
        loop = asyncio.get_running_loop()
        dirty: set[str] = set()
        sync_at: float | None = None
        last_sync = -1e9
        try:
            while watcher.queue:
                self._take(watcher.queue.popleft(), dirty)
            await self._sync(set(self.cluster_ips), first=True)
            dirty.clear()
            last_sync = loop.time()
            self.synced.set()
            while True:
                await watcher.wait(3600 if sync_at is None else max(0.0, sync_at - loop.time()))
                while watcher.queue:
                    self._take(watcher.queue.popleft(), dirty)
                if dirty and sync_at is None:
                    sync_at = max(loop.time() + self.config.proxy_delay.sample(self.rng),
                                  last_sync + self.config.min_sync_period)
                if sync_at is not None and loop.time() >= sync_at:
                    batch, dirty = dirty, set()
                    await self._sync(batch, first=False)
                    last_sync, sync_at = loop.time(), None
        finally:
            store.unwatch(watcher)

    def _take(self, event: tuple[str, dict[str, Any]], dirty: set[str]) -> None:
        kind, eps = event
        service = (eps["metadata"].get("labels") or {}).get("kubernetes.io/service-name")
        if service not in self.cluster_ips:
            return
        self.slices[service] = [] if kind == "DELETED" else list(eps.get("endpoints") or [])
        dirty.add(service)
