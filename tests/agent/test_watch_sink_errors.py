"""A failure while handling a watch event is the agent's, not the stream's: counted, logged
with the object, and the stream goes on. (It was once taken for a connection error: the watch
resumed, the server sent the same event again, and it failed again, for ever.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from structlog.testing import capture_logs

from observer.clock import SystemClock
from observer.config import WatchSettings
from observer.kube.watch import ResourceWatch
from observer.lab.apiserver.server import ApiServer
from observer.tasks import cancel_and_wait
from tests.agent.harness import Cluster, until
from tests.conftest import client_configuration


class Counts:
    def __init__(self) -> None:
        self.restarts: list[str] = []
        self.invalid: list[tuple[str, str]] = []

    def event(self, resource: str) -> None: ...

    def restart(self, resource: str, reason: str) -> None:
        self.restarts.append(reason)

    def malformed(self, resource: str) -> None: ...

    def invalid_input(self, resource: str, reason: str) -> None:
        self.invalid.append((resource, reason))


class FailsOnOnePod:
    """A sink with a bug that one object triggers."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def list_page(self, items: list[dict[str, Any]], *, first: bool) -> None: ...

    def listed(self, *, relist: bool) -> None: ...

    def event(self, event_type: str, obj: dict[str, Any], *, precision: float) -> None:
        name = obj["metadata"]["name"]
        if name == "trouble":
            raise ValueError("a bug the object triggers")
        self.seen.append(name)


def pod_watch(api: client.ApiClient, sink: FailsOnOnePod, counts: Counts) -> ResourceWatch:
    """The agent's watch of pods, into ``sink``, retrying at once."""
    return ResourceWatch(resource="pods", request=client.CoreV1Api(
        api).list_pod_for_all_namespaces, sink=sink, metrics=counts, clock=SystemClock(),
        settings=WatchSettings(backoff_initial=0.01, backoff_max=0.05))


async def test_a_failure_handling_an_event_is_counted_and_the_stream_goes_on(
        apiserver: ApiServer, kubeconfig: Path) -> None:
    cluster, sink, counts = Cluster(apiserver), FailsOnOnePod(), Counts()
    async with client.ApiClient(await client_configuration(kubeconfig)) as api:
        watch = pod_watch(api, sink, counts)
        with capture_logs() as logs:
            task = asyncio.create_task(watch.run())
            try:
                await watch.synced.wait()
                for name in ("before", "trouble", "after"):
                    cluster.create_pod(name, "node-a", "10.0.0.1")
                await until(lambda: "after" in sink.seen, "the event after the failing one")
            finally:
                await cancel_and_wait(task)
    assert counts.restarts == []  # the stream was never restarted for it
    # Each pod is created, then its status written: two events each. The failing pod's two
    # failed once each (not replayed); the others' arrived once each.
    assert counts.invalid == [("pods", "unhandled")] * 2
    assert sink.seen == ["before", "before", "after", "after"]
    failures = [e for e in logs if e["event"] == "watch event could not be handled: skipped"]
    assert [(f["object"], f["log_level"]) for f in failures] == [("default/trouble", "error")] * 2
    assert all("a bug the object triggers" in f["error"] for f in failures)


class FailsOnAListedPod(FailsOnOnePod):
    """The same bug, met in a list's page."""

    def list_page(self, items: list[dict[str, Any]], *, first: bool) -> None:
        names = [item["metadata"]["name"] for item in items]
        if "trouble" in names:
            raise ValueError("a bug a listed object triggers")
        self.seen.extend(names)


async def test_a_failure_handling_a_list_is_counted_and_the_watch_goes_on(
        apiserver: ApiServer, kubeconfig: Path) -> None:
    # A ValueError out of the sink during a list was once taken for a malformed response:
    # listed again, failed again, for ever, and no event was ever watched.
    cluster, sink, counts = Cluster(apiserver), FailsOnAListedPod(), Counts()
    cluster.create_pod("trouble", "node-a", "10.0.0.1")
    async with client.ApiClient(await client_configuration(kubeconfig)) as api:
        watch = pod_watch(api, sink, counts)
        with capture_logs() as logs:
            task = asyncio.create_task(watch.run())
            try:
                await watch.synced.wait()
                cluster.create_pod("after", "node-a", "10.0.0.2")
                await until(lambda: "after" in sink.seen, "an event after the failed list")
            finally:
                await cancel_and_wait(task)
    assert counts.restarts == []
    assert counts.invalid == [("pods", "unhandled")]
    failures = [e for e in logs if e["event"] == "list could not be handled: went on"]
    assert [(f["step"], f["log_level"]) for f in failures] == [("list_page", "error")]
    assert "a bug a listed object triggers" in failures[0]["error"]
