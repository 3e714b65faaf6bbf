"""A kubelet emulation for one node: starts pods (Running, Ready, an IP), and terminates deleted
ones the way the real kubelet does (``pkg/kubelet/kuberuntime`` killContainer): the preStop
hook first, then SIGTERM; the app stops serving after its exit delay; the readiness probe
(still run during termination) fails a little after SIGTERM; SIGKILL when the grace period
runs out; finally the pod is marked terminal and deleted with grace 0 (the kubelet's
confirmation to the API server).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
from typing import Any

import structlog

from observer.clock import Clock
from observer.dataplane.commands import CommandError
from observer.kube.lifecycle import containers_of, known_prestop_seconds
from observer.lab.apiserver.errors import ApiError
from observer.lab.apiserver.registry import DeleteOptions, WriteOptions
from observer.lab.apiserver.server import ApiServer
from observer.lab.apps import PodRuntime
from observer.lab.config import LabConfig
from observer.lab.controller import NAMESPACE
from observer.lab.truth import Truth
from observer.tasks import cancel_and_wait

IP_POOL = 1000
log = structlog.get_logger("observer.lab")


class Kubelet:
    def __init__(self, *, node: str, index: int, server: ApiServer, truth: Truth, clock: Clock,
                 config: LabConfig, rng: random.Random, runtime: PodRuntime | None = None
                 ) -> None:
        self.node = node
        self.runtime = runtime  # real pods (namespaces, servers); None: status only
        self.index = index
        self.server = server
        self.truth = truth
        self.clock = clock
        self.config = config
        self.rng = rng
        self._next_ip = 0
        self._terminating: set[str] = set()
        self._started: set[str] = set()
        self._timers: set[asyncio.TimerHandle] = set()  # pending only
        self._starting: set[asyncio.Task[None]] = set()  # pods whose sandbox is being made

    def _later(self, delay: float, callback: Any, *args: Any) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            callback(*args)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def _patch_status(self, name: str, change: Any) -> None:
        pods = self.server.registries["pods"]
        try:
            pod = pods.get(NAMESPACE, name)
        except ApiError:
            return  # already gone
        status = copy.deepcopy(pod.get("status") or {})
        change(status)
        pods.patch(NAMESPACE, name, {**pod, "status": status}, WriteOptions(), status=True)

    def _start(self, name: str) -> None:
        # Addresses come round again after IP_POOL pods, as a node's pod CIDR does: long runs
        # (the soak) stay within valid IPv4, and the truth, keyed by address, stays bounded.
        n = self._next_ip % IP_POOL
        ip = f"10.{100 + self.index}.{n // 250}.{n % 250 + 2}"
        self._next_ip += 1
        if self.runtime is None:
            self._running(name, ip)
            return
        task = asyncio.create_task(self._sandbox(name, ip))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _sandbox(self, name: str, ip: str) -> None:
        """The pod's namespace and its app listening, then Running and Ready."""
        assert self.runtime is not None
        pod = self.server.store.get("pods", (NAMESPACE, name))
        kind = ((pod or {}).get("metadata", {}).get("labels") or {}).get("app", "")
        try:
            await self.runtime.start(name, ip, kind)
        except (OSError, CommandError) as error:  # the pod stays Pending, as with a CNI error
            log.error("lab pod sandbox failed", pod=name, error=str(error))
            return
        self._running(name, ip)

    def _running(self, name: str, ip: str) -> None:
        def running(status: dict[str, Any]) -> None:
            status.update({
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "hostIP": f"192.168.0.{self.index + 1}",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0,
                                       "image": "app:1", "imageID": "",
                                       "state": {"running": {}}}]})
        self._patch_status(name, running)

    def _terminate(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or self.config.grace)
        # The pod's own preStop hooks, read as the report reads them (an unknown one: none).
        sigterm = known_prestop_seconds(containers_of(pod.get("spec") or {})) or 0.0
        exit_after = sigterm + self.config.app_exit.sample(self.rng)
        killed = exit_after >= grace
        exit_after = min(exit_after, grace)
        self._later(sigterm + self.config.readiness_failure, self._not_ready, name)
        if self.runtime is not None:
            self._later(sigterm, self.runtime.sigterm, name)
        self._later(exit_after, self._exited, name, pod, killed)

    def _not_ready(self, name: str) -> None:
        def unready(status: dict[str, Any]) -> None:
            status["conditions"] = [{"type": "Ready", "status": "False"}]
            for cs in status.get("containerStatuses") or []:
                cs["ready"] = False
        self._patch_status(name, unready)

    def _exited(self, name: str, pod: dict[str, Any], killed: bool) -> None:
        ip = (pod.get("status") or {}).get("podIP")
        service = f"{NAMESPACE}/{(pod['metadata'].get('labels') or {})['app']}:http"
        episode = self.truth.get(service, ip) if ip else None
        if self.runtime is not None:
            self.runtime.exit(name)
        if episode is not None:
            episode.stopped = self.clock.monotonic()
            episode.killed = killed

        def terminated(status: dict[str, Any]) -> None:
            status["phase"] = "Failed" if killed else "Succeeded"
            status["conditions"] = [{"type": "Ready", "status": "False"}]
            for cs in status.get("containerStatuses") or []:
                cs["ready"] = False
                cs["state"] = {"terminated": {"exitCode": 137 if killed else 0,
                                              "reason": "Error" if killed else "Completed"}}
        self._patch_status(name, terminated)
        self._later(0.05, self._confirm, name, pod["metadata"]["uid"])

    def _confirm(self, name: str, uid: str) -> None:
        with contextlib.suppress(ApiError):  # gone already
            self.server.registries["pods"].delete(NAMESPACE, name,
                                                  DeleteOptions(grace_period_seconds=0, uid=uid))

    def _seen(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if name not in self._started and not (pod.get("status") or {}).get("podIP"):
            self._started.add(name)
            self._later(self.rng.uniform(0.05, 0.2), self._start, name)
        if pod["metadata"].get("deletionTimestamp") and name not in self._terminating:
            self._terminating.add(name)
            self._terminate(pod)

    async def run(self) -> None:
        node = self.node
        watcher = self.server.store.watch(
            "pods", namespace=NAMESPACE, since=None,
            predicate=lambda p: (p.get("spec") or {}).get("nodeName") == node)
        try:
            while True:
                await watcher.wait(3600)
                while watcher.queue:
                    event, pod = watcher.queue.popleft()
                    if event != "DELETED":
                        self._seen(pod)
                    else:  # gone: nothing more to do for it (bounded state in long runs)
                        self._started.discard(pod["metadata"]["name"])
                        self._terminating.discard(pod["metadata"]["name"])
        finally:
            self.server.store.unwatch(watcher)
            for timer in list(self._timers):
                timer.cancel()
            await cancel_and_wait(*self._starting)
