"""An EndpointSlice controller emulation: one slice per service, rewritten after a reaction
delay whenever one of the service's pods changes.

Endpoint conditions follow ``staging/src/k8s.io/endpointslice/utils.go`` (``podToEndpoint``):
``serving`` = the pod's Ready condition, ``terminating`` = the pod has a deletionTimestamp,
``ready`` = serving and not terminating. A pod leaves the slice when it is terminal
(Succeeded/Failed) or gone. What it leaves out: topology hints, slice splitting at 100
endpoints, the mirroring of Endpoints objects.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from observer.clock import Clock
from observer.lab.apiserver.registry import WriteOptions
from observer.lab.apiserver.server import ApiServer
from observer.lab.config import Delay
from observer.lab.truth import Truth

NAMESPACE = "lab"
TARGET_PORT = 8080


def pod_endpoint(pod: dict[str, Any]) -> dict[str, Any] | None:
    status, meta = pod.get("status") or {}, pod["metadata"]
    ip = status.get("podIP")
    if not ip or status.get("phase") in ("Succeeded", "Failed"):
        return None
    serving = any(c.get("type") == "Ready" and c.get("status") == "True"
                  for c in status.get("conditions") or [])
    terminating = meta.get("deletionTimestamp") is not None
    return {"addresses": [ip], "nodeName": pod["spec"].get("nodeName"),
            "conditions": {"ready": serving and not terminating, "serving": serving,
                           "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                          "uid": meta["uid"]}}


class EndpointSliceController:
    def __init__(self, *, server: ApiServer, truth: Truth, clock: Clock, delay: Delay,
                 rng: random.Random) -> None:
        self.server = server
        self.truth = truth
        self.clock = clock
        self.delay = delay
        self.rng = rng
        self._scheduled: dict[str, asyncio.TimerHandle] = {}

    def _service_pods(self, service: str) -> list[dict[str, Any]]:
        return [p for (ns, _), p in sorted(self.server.store.items("pods").items())
                if ns == NAMESPACE and (p["metadata"].get("labels") or {}).get("app") == service]

    def sync(self, service: str) -> None:
        """Write the service's slice from its pods now; record when endpoints left Ready."""
        self._scheduled.pop(service, None)
        endpoints = [e for e in map(pod_endpoint, self._service_pods(service)) if e]
        registry = self.server.registries["endpointslices"]
        name = f"{service}-lab"
        current = self.server.store.get("endpointslices", (NAMESPACE, name))
        before = {e["addresses"][0]: e["conditions"]["ready"]
                  for e in (current or {}).get("endpoints") or []}
        body = {"metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
                "endpoints": endpoints}
        if current is None:
            registry.create(NAMESPACE, body, WriteOptions())
        else:
            registry.update(NAMESPACE, name, body, WriteOptions())
        now = self.clock.monotonic()
        after = {e["addresses"][0]: e["conditions"]["ready"] for e in endpoints}
        for ip, was_ready in before.items():
            if was_ready and not after.get(ip, False):
                episode = self.truth.get(f"{NAMESPACE}/{service}:http", ip)
                if episode is not None and episode.not_ready is None:
                    episode.not_ready = now

    def pod_changed(self, pod: dict[str, Any]) -> None:
        service = (pod["metadata"].get("labels") or {}).get("app")
        if service and service not in self._scheduled:
            loop = asyncio.get_running_loop()
            self._scheduled[service] = loop.call_later(self.delay.sample(self.rng), self.sync,
                                                       service)

    async def run(self) -> None:
        watcher = self.server.store.watch("pods", namespace=NAMESPACE,
                                          predicate=lambda _: True, since=None)
        try:
            while True:
                await watcher.wait(3600)
                while watcher.queue:
                    _, pod = watcher.queue.popleft()
                    self.pod_changed(pod)
        finally:
            self.server.store.unwatch(watcher)
            for handle in self._scheduled.values():
                handle.cancel()

