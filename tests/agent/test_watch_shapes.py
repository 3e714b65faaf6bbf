"""The agent's watches as the API server sees them: the requests ``watch_requests`` makes,
run by the agent's own watch loop against the lab API server, and the same selectors through
the real kubectl."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from observer.agent import TERMINAL_PODS, watch_requests
from observer.clock import SystemClock
from observer.config import WatchSettings
from observer.kube.watch import ResourceWatch
from observer.lab.apiserver.registry import WriteOptions
from observer.lab.apiserver.server import ApiServer
from tests.agent.harness import until
from tests.conftest import require_tool
from tests.kubectl import Kubectl

NS = "default"


class Recorder:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.events: list[tuple[str, str]] = []

    def list_page(self, items: list[dict[str, Any]], *, first: bool) -> None:
        self.names += [i["metadata"]["name"] for i in items]

    def listed(self, *, relist: bool) -> None:
        pass

    def event(self, event_type: str, obj: dict[str, Any], *, precision: float) -> None:
        self.events.append((event_type, obj["metadata"]["name"]))


class NoMetrics:
    def event(self, resource: str) -> None:
        pass

    def restart(self, resource: str, reason: str) -> None:
        raise AssertionError(f"{resource} watch restarted: {reason}")

    def malformed(self, resource: str) -> None:
        pass

    def invalid_input(self, resource: str, reason: str) -> None:
        pass


def make_pod(server: ApiServer, name: str, policy: str, phase: str) -> None:
    pods = server.registries["pods"]
    created = pods.create(NS, {"metadata": {"name": name}, "spec": {
        "nodeName": "node-b", "restartPolicy": policy,
        "containers": [{"name": "c", "image": "app:1"}]}}, WriteOptions())
    if phase != "Pending":
        set_phase(server, name, phase)
    assert created["spec"]["restartPolicy"] == policy


def set_phase(server: ApiServer, name: str, phase: str) -> None:
    pods = server.registries["pods"]
    current = pods.get(NS, name)
    pods.patch(NS, name, {**current, "status": {**current["status"], "phase": phase}},
               WriteOptions(), status=True)


async def test_terminal_pods_watch_carries_only_pods_that_end_when_deleted(
        apiserver: ApiServer, api: client.ApiClient, kubeconfig: Path) -> None:
    """Pods that end on their own (Jobs: restartPolicy Never/OnFailure) are not sent to
    every node: only pods of restartPolicy Always, once terminal."""
    make_pod(apiserver, "web-done", "Always", "Succeeded")
    make_pod(apiserver, "web-failed", "Always", "Failed")
    make_pod(apiserver, "web-running", "Always", "Running")
    make_pod(apiserver, "job-done", "Never", "Succeeded")
    make_pod(apiserver, "job-failed", "OnFailure", "Failed")
    wanted = watch_requests(api, "node-a", terminal_pods=True)["terminal_pods"]
    assert wanted.field_selector == TERMINAL_PODS
    recorder = Recorder()
    watch = ResourceWatch(resource="terminal_pods", request=wanted.request, sink=recorder,
                          metrics=NoMetrics(), clock=SystemClock(), settings=WatchSettings(),
                          field_selector=wanted.field_selector,
                          label_selector=wanted.label_selector)
    task = asyncio.create_task(watch.run())
    try:
        await watch.synced.wait()
        assert sorted(recorder.names) == ["web-done", "web-failed"]
        set_phase(apiserver, "web-running", "Failed")
        make_pod(apiserver, "job-later", "Never", "Running")
        set_phase(apiserver, "job-later", "Succeeded")
        make_pod(apiserver, "web-later", "Always", "Running")
        set_phase(apiserver, "web-later", "Succeeded")  # the last write: it marks the end
        await until(lambda: ("ADDED", "web-later") in recorder.events, "the last pod")
        assert recorder.events == [("ADDED", "web-running"), ("ADDED", "web-later")]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    kubectl = Kubectl(require_tool("kubectl"), kubeconfig)
    _, out, _ = await kubectl("get", "pods", "--all-namespaces", "--field-selector",
                              TERMINAL_PODS, "-o", "name")
    assert sorted(out.split()) == ["pod/web-done", "pod/web-failed", "pod/web-later",
                                   "pod/web-running"]


async def test_page_size_zero_lists_in_one_request_and_start_jitter_delays_the_first(
        apiserver: ApiServer, api: client.ApiClient) -> None:
    for i in range(3):
        make_pod(apiserver, f"web-{i}", "Always", "Running")
    wanted = watch_requests(api, "node-b", terminal_pods=False)["pods"]
    calls: list[dict[str, Any]] = []
    order: list[str] = []

    async def request(**params: Any) -> Any:
        calls.append(params)
        order.append("watch" if params.get("watch") else "list")
        return await wanted.request(**params)

    async def sleep(seconds: float) -> None:
        order.append(f"sleep {seconds}")

    recorder = Recorder()
    watch = ResourceWatch(resource="pods", request=request, sink=recorder, metrics=NoMetrics(),
                          clock=SystemClock(), field_selector=wanted.field_selector,
                          settings=WatchSettings(page_size=0, start_jitter=8.0),
                          sleep=sleep, jitter=lambda: 0.25)
    task = asyncio.create_task(watch.run())
    try:
        await watch.synced.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert order[:2] == ["sleep 2.0", "list"]  # a quarter of the window, before any request
    assert "limit" not in calls[0]
    assert sorted(recorder.names) == ["web-0", "web-1", "web-2"]
