"""Faults while pods are being deleted: the lab (in-memory dataplane, two nodes, a real agent
each) runs its deletions while one fault is injected again and again through the lab API
server; then the fault stops. For every fault:

- /metrics keeps answering on every agent, all along;
- the agents recover on their own (ready again, the later deletions measured);
- no episode disappears: every deletion is, on every node, in exactly one outcome of
  ``episodes_total`` (measured, partial, abandoned, fallback) or still in flight —
  the outcomes + in flight == nodes x pods deleted.

docs/reliability.md has the table of what each fault did."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from observer.clock import SystemClock
from observer.lab.apiserver.errors import ApiError
from observer.lab.apiserver.registry import DeleteOptions, WriteOptions
from observer.lab.config import Delay, LabConfig
from observer.lab.controller import NAMESPACE
from observer.lab.results import Accounting, accounting
from observer.lab.scenario import Lab, LabRun
from observer.tasks import cancel_and_wait

NODES = 2
DELETIONS = 60
Inject = Callable[[Lab], Awaitable[None]]


class SteppingClock(SystemClock):
    """The system clocks, with the wall clock stepped by ``offset`` (an NTP step, a VM
    resume); the monotonic clock, which durations come from, never moves back."""

    def __init__(self) -> None:
        self.offset = 0.0

    def wall(self) -> float:
        return super().wall() + self.offset


@dataclass
class Outcome:
    pods_deleted: int = 0
    accounting: Accounting = field(default_factory=Accounting)
    restarts: dict[str, int] = field(default_factory=dict)  # watch restarts by reason
    malformed: int = 0
    scrapes: int = 0
    scrape_failures: list[str] = field(default_factory=list)
    ready_at_end: bool = False
    max_dataplane_seconds: float = 0.0

    @property
    def episodes(self) -> int:
        return self.accounting.episodes


def count(run: LabRun, outcome: Outcome) -> None:
    registries = [node.agent.registry for node in run.nodes if node.agent is not None]
    assert len(registries) == NODES
    outcome.accounting = accounting(registries)
    for registry in registries:
        for family in registry.collect():
            for s in family.samples:
                labels = s.labels
                if s.name == "endpoint_propagation_duration_seconds_sum" and \
                        labels["stage"] == "dataplane":
                    outcome.max_dataplane_seconds = max(outcome.max_dataplane_seconds, s.value)
                elif s.name == "endpoint_propagation_watch_restarts_total":
                    outcome.restarts[labels["reason"]] = \
                        outcome.restarts.get(labels["reason"], 0) + int(s.value)
                elif s.name == "endpoint_propagation_invalid_input_total" and \
                        labels["reason"] == "malformed_event":
                    outcome.malformed += int(s.value)


async def scrape(run: LabRun, outcome: Outcome) -> None:
    """GET every agent's /metrics every 50 ms; any failure is recorded."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            for node in run.nodes:
                assert node.agent is not None
                try:
                    async with session.get(f"{node.agent.http.url}/metrics") as response:
                        body = await response.text()
                        if response.status != 200 or "endpoint_propagation_" not in body:
                            outcome.scrape_failures.append(f"HTTP {response.status}")
                except (aiohttp.ClientError, TimeoutError) as error:
                    outcome.scrape_failures.append(repr(error))
                outcome.scrapes += 1
            await asyncio.sleep(0.05)


async def with_fault(inject: Inject, clock: SystemClock | None = None) -> Outcome:
    config = LabConfig(nodes=NODES, deletions=DELETIONS, dataplane="memory",
                       controller_delay=Delay(0.005, 0.03), proxy_delay=Delay(0.005, 0.03),
                       min_sync_period=0.05, prestop=0.3, app_exit=Delay(0.02, 0.1),
                       readiness_failure=0.05, spacing=0.06, replicas=6,
                       watch_inactivity_timeout=1.0, seed=11)
    lab = Lab(config, clock=clock or SystemClock())
    outcome = Outcome()
    tasks: list[asyncio.Task[None]] = []

    async def faulty() -> None:
        # The fault lasts for the first two thirds of the deletions; the rest show recovery.
        while lab.deletions_done < DELETIONS * 2 // 3:
            await inject(lab)
        lab.server.faults.clear()

    async def ready(run: LabRun) -> None:
        tasks.append(asyncio.create_task(scrape(run, outcome)))
        tasks.append(asyncio.create_task(faulty()))

    async def stop_tasks() -> None:
        await cancel_and_wait(*tasks)

    async def serve(run: LabRun) -> None:
        await stop_tasks()  # before the lab stops the agents: scraping ends while they serve
        outcome.ready_at_end = all(n.agent is not None and n.agent.ready() for n in run.nodes)
        count(run, outcome)

    try:
        await lab.run(ready=ready, serve=serve)
    finally:
        await stop_tasks()
    outcome.pods_deleted = lab.deletions_done
    return outcome


# --- the faults -------------------------------------------------------------------------------

async def restart_api_server(lab: Lab) -> None:
    await asyncio.sleep(1.0)
    await lab.server.restart(down=0.5)


async def cut_streams(lab: Lab) -> None:
    await asyncio.sleep(0.15)
    lab.server.faults.drop_streams()


async def stall_streams(lab: Lab) -> None:
    lab.server.faults.stall_streams(new_too=True)
    await asyncio.sleep(2.5)  # > the 1 s inactivity timeout
    lab.server.faults.unstall()
    await asyncio.sleep(1.0)


async def gone_storm(lab: Lab) -> None:
    await asyncio.sleep(0.2)
    lab.server.faults.expire_streams()


def throttle(code: int) -> Inject:
    async def inject(lab: Lab) -> None:
        lab.server.faults.fail_next(6, code=code, retry_after=1, method="GET")
        lab.server.faults.drop_streams()  # reconnecting meets the errors
        await asyncio.sleep(1.5)
    return inject


async def slow_lists(lab: Lab) -> None:
    # 410 and a compacted history: only a list gets the agents going again, and it is slow.
    # An agent is blind until the list arrives; a pod created and deleted entirely within
    # that window cannot be known to exist (docs/reliability.md), so the window is kept
    # shorter than a pod's life here (replicas below).
    lab.server.faults.slow(0.3, count=2, method="GET")
    lab.server.faults.expire_streams()
    await asyncio.sleep(1.5)


async def malformed_events(lab: Lab) -> None:
    for line in (b'{"type": "MODIFIED", "object": {"metadata": ',  # truncated
                 b"\xff\xfe not json",
                 b'{"type": "MODIFIED", "object": "a string"}',
                 json.dumps({"type": "MODIFIED", "object": {
                     "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": "x", "namespace": NAMESPACE,
                                  "resourceVersion": "1"},
                     "endpoints": "not a list"}}).encode()):
        lab.server.faults.inject_line(line)
        await asyncio.sleep(0.05)


async def oversized_objects(lab: Lab) -> None:
    """Objects at the API's own size limits, changed while deletions go on: a slice of 1000
    endpoints (the maximum) for another service and a pod with 200 KiB of annotations."""
    slices = lab.server.registries["endpointslices"]
    big: dict[str, Any] = {
        "metadata": {"name": "big-0", "labels": {"kubernetes.io/service-name": "big"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": [f"10.200.{i // 250}.{i % 250 + 1}"],
                       "conditions": {"ready": i % 7 != 0}} for i in range(1000)]}
    try:
        current = slices.get(NAMESPACE, "big-0")
    except ApiError:  # the first round: not there yet
        slices.create(NAMESPACE, big, WriteOptions())
    else:
        big["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        slices.update(NAMESPACE, "big-0", big, WriteOptions())
    pods = lab.server.registries["pods"]
    name = f"annotated-{lab.deletions_done}"
    pods.create(NAMESPACE, {"metadata": {"name": name,
                                         "annotations": {"blob": "x" * 200 * 1024}},
                            "spec": {"nodeName": "node-1", "containers": [
                                {"name": "c", "image": "c:1"}]}}, WriteOptions())
    await asyncio.sleep(0.3)
    pods.delete(NAMESPACE, name, DeleteOptions(grace_period_seconds=0))


FAULTS: dict[str, Inject] = {
    "api-server-restart": restart_api_server,
    "streams-cut": cut_streams,
    "streams-stalled": stall_streams,
    "410-storm": gone_storm,
    "429-retry-after": throttle(429),
    "503-retry-after": throttle(503),
    "slow-lists": slow_lists,
    "malformed-events": malformed_events,
    "oversized-objects": oversized_objects,
}
# What proves the fault really hit the agents.
EVIDENCE: dict[str, Callable[[Outcome], bool]] = {
    "api-server-restart": lambda o: o.restarts.get("connection", 0) > 0,
    "streams-cut": lambda o: o.restarts.get("connection", 0) + o.restarts.get("closed", 0) > 4,
    "streams-stalled": lambda o: o.restarts.get("stalled", 0) > 0,
    "410-storm": lambda o: o.restarts.get("expired", 0) > 4,
    "429-retry-after": lambda o: o.restarts.get("http_error", 0) > 0,
    "503-retry-after": lambda o: o.restarts.get("http_error", 0) > 0,
    "slow-lists": lambda o: o.restarts.get("expired", 0) > 0,
    "malformed-events": lambda o: o.malformed > 4,
    "oversized-objects": lambda o: True,
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_no_episode_disappears_under(fault: str) -> None:
    outcome = await with_fault(FAULTS[fault])
    assert EVIDENCE[fault](outcome), outcome
    assert outcome.scrapes > 50
    assert outcome.scrape_failures == []
    assert outcome.ready_at_end
    assert outcome.pods_deleted >= DELETIONS * 3 // 4
    assert outcome.episodes == NODES * outcome.pods_deleted, outcome
    assert outcome.accounting.measured > 0


async def test_wall_clock_steps_change_no_duration() -> None:
    clock = SteppingClock()

    async def step(lab: Lab) -> None:
        await asyncio.sleep(0.3)
        clock.offset = 3600.0 if clock.offset <= 0 else -3600.0

    outcome = await with_fault(step, clock)
    assert outcome.episodes == NODES * outcome.pods_deleted, outcome
    # Every dataplane stage lasted well under a second in this lab; a wall-clock step leaking
    # into a duration would add an hour.
    assert outcome.max_dataplane_seconds < outcome.accounting.measured * 1.0
