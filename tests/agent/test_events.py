"""Unsafe terminations as Kubernetes Events, written by the real agent to the lab API server
over HTTP and read back with the real ``kubectl get events``."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from observer.config import AgentConfig, EventSettings
from observer.lab.apiserver.server import ApiServer
from tests.agent.harness import AgentEnv, Endpoint, key, until
from tests.agent.test_episodes import ready_service, safe_deletion, unsafe_deletion
from tests.conftest import ManualClock, require_tool
from tests.kubectl import Kubectl

OWNED = {"labels": {"app": "web", "pod-template-hash": "5d8f7c"},
         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                              "name": "web-5d8f7c", "uid": "uid-rs", "controller": True}]}


@pytest.fixture
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(require_tool("kubectl"), kubeconfig)


async def events(kubectl: Kubectl, done: Callable[[list[dict[str, Any]]], bool]
                 ) -> list[dict[str, Any]]:
    """The Events in the API server, once ``done`` says they are all there (the agent writes
    them in the background)."""
    while True:
        items: list[dict[str, Any]] = (await kubectl.json("get", "events", "--all-namespaces")
                                       )["items"]
        if done(items):
            return items
        await asyncio.sleep(0.05)


def results(env: AgentEnv) -> dict[str, float | None]:
    return {r: env.sample("endpoint_propagation_events_total", result=r)
            for r in ("created", "aggregated", "rate_limited", "failed")}


async def test_an_unsafe_termination_is_an_event_on_its_pod_and_a_safe_one_none(
        env: AgentEnv, clock: ManualClock, kubectl: Kubectl) -> None:
    uids = await ready_service(env, pods=3)  # web-2 stays Ready: no fallback
    await safe_deletion(env, clock, "web-0", "10.0.0.1", 1)
    await unsafe_deletion(env, clock, "web-1", "10.0.0.2", 2)

    (event,) = await events(kubectl, lambda items: len(items) >= 1)
    assert results(env) == {"created": 1, "aggregated": 0, "rate_limited": 0, "failed": 0}
    assert (event["apiVersion"], event["reason"], event["type"], event["action"]) == (
        "events.k8s.io/v1", "UnsafeTermination", "Warning", "Stop")
    assert event["regarding"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "default",
                                  "name": "web-1", "uid": uids[1]}
    assert event["reportingInstance"] == "observer-agent-node-a"
    assert "kube-proxy kept selecting it 0.38 s after it stopped" in event["note"]
    assert "its preStop: none" in event["note"]
    assert "series" not in event

    _, table, _ = await kubectl("get", "events", "--namespace", "default")
    header, row = table.splitlines()
    assert header.split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert row.split()[1:4] == ["Warning", "UnsafeTermination", "pod/web-1"]


@pytest.fixture
def agent_config(agent_config: AgentConfig, request: pytest.FixtureRequest) -> AgentConfig:
    """The harness' agent, with the test's EventSettings when it gives some."""
    events: EventSettings | None = getattr(request, "param", None)
    return agent_config if events is None else dataclasses.replace(agent_config, events=events)


@pytest.mark.parametrize("agent_config", [EventSettings(burst=1)], indirect=True)
async def test_a_burst_is_aggregated_into_the_workloads_event(
        env: AgentEnv, clock: ManualClock, kubectl: Kubectl) -> None:
    """Burst 1: the first of three unsafe terminations of deployment/web becomes an Event;
    the next two, rate-limited, are counted in its series. web-3 stays Ready."""
    for i in range(4):
        env.cluster.create_pod(f"web-{i}", "node-a", f"10.0.0.{i + 1}", metadata=OWNED)
    await ready_owned(env, 4)
    for i in range(3):
        await unsafe_deletion(env, clock, f"web-{i}", f"10.0.0.{i + 1}", i + 1)

    (event,) = await events(kubectl, lambda items: bool(items) and (
        items[0].get("series") or {}).get("count") == 3)
    assert event["regarding"]["name"] == "web-0"
    assert results(env) == {"created": 1, "aggregated": 2, "rate_limited": 0, "failed": 0}
    _, table, _ = await kubectl("get", "events", "--namespace", "default")
    assert "(x3)" in table.splitlines()[1]


async def ready_owned(env: AgentEnv, count: int) -> None:
    pods = env.cluster.server.registries["pods"]
    endpoints = []
    for i in range(count):
        uid = pods.get("default", f"web-{i}")["metadata"]["uid"]
        endpoints.append(Endpoint(f"10.0.0.{i + 1}", "node-a", f"web-{i}", uid))
        env.dataplane.set(key("web", f"10.0.0.{i + 1}"), True)
    env.cluster.put_slice("web-abc", "web", *endpoints)
    await env.seen("endpointslices")


async def test_without_events_rbac_it_is_counted_logged_once_and_measuring_goes_on(
        env: AgentEnv, clock: ManualClock, apiserver: ApiServer) -> None:
    await ready_service(env, pods=3)
    apiserver.faults.fail_next(2, code=403, retry_after=None, path="/events")
    with capture_logs() as logs:
        await unsafe_deletion(env, clock, "web-0", "10.0.0.1", 1)
        await unsafe_deletion(env, clock, "web-1", "10.0.0.2", 2)
        await until(lambda: results(env)["failed"] == 2, "both writes refused")
    assert env.sample("endpoint_propagation_unsafe_terminations_total") == 2
    said = [e for e in logs if e["event"].startswith("cannot record an Event")]
    assert len(said) == 1
    assert said[0]["reason"] == "forbidden"
    assert "--events off" in said[0]["event"]


@pytest.mark.parametrize("agent_config", [EventSettings(enabled=False)], indirect=True)
async def test_events_off_writes_none(env: AgentEnv, clock: ManualClock,
                                      kubectl: Kubectl) -> None:
    await ready_service(env, pods=2)
    await unsafe_deletion(env, clock, "web-0", "10.0.0.1", 1)
    assert env.agent.events is None
    assert (await kubectl.json("get", "events", "--all-namespaces"))["items"] == []
    assert env.sample("endpoint_propagation_unsafe_terminations_total") == 1
