"""The agent's series do not grow with the cluster: labels carry stages, causes, reasons and
modes, never services, pods or addresses (docs/metrics.md). Counted on a live /metrics with
10 and with 10,000 services, episodes measured in both."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.harness import AgentEnv, Endpoint, key, until
from tests.conftest import ManualClock

SERVICES = 10_000


async def series(env: AgentEnv) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"{env.agent.http.url}/metrics") as response:
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items())))
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("endpoint_propagation_")}


async def one_episode(env: AgentEnv, clock: ManualClock, service: str) -> None:
    """An endpoint of ``service`` (on another node) removed: dataplane stage measured."""
    env.cluster.set_endpoint(f"{service}-abc", "10.0.0.1", ready=False, terminating=True)
    await until(lambda: key(service, "10.0.0.1") in env.agent.tracker.episodes, "episode")
    clock.advance(0.5)
    env.dataplane.set(key(service, "10.0.0.1"), False)
    await until(lambda: env.agent.tracker.episodes[key(service, "10.0.0.1")].dataplane
                is not None, "dataplane seen")
    clock.advance(1.0)
    env.cluster.drop_endpoint(f"{service}-abc", "10.0.0.1")  # it went
    await until(lambda: key(service, "10.0.0.1") not in env.agent.tracker.episodes, "done")


def add_services(env: AgentEnv, first: int, last: int) -> None:
    for i in range(first, last):
        env.cluster.put_slice(f"svc{i}-abc", f"svc{i}",
                              Endpoint("10.0.0.1", "node-b"), Endpoint("10.0.0.2", "node-b"))
        env.dataplane.set(key(f"svc{i}", "10.0.0.1"), True)
        env.dataplane.set(key(f"svc{i}", "10.0.0.2"), True)


async def test_series_do_not_depend_on_the_number_of_services(env: AgentEnv,
                                                              clock: ManualClock) -> None:
    add_services(env, 0, 10)
    await until(lambda: len(env.agent.catalog.service_port_names()) == 10, "10 services")
    await one_episode(env, clock, "svc0")
    few = await series(env)

    add_services(env, 10, SERVICES)
    await until(lambda: len(env.agent.catalog.service_port_names()) == SERVICES,
                "10,000 services")
    await one_episode(env, clock, "svc9999")
    many = await series(env)

    assert len(few) > 100  # every stage, reason and bucket is there
    assert many == few
