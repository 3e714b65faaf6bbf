"""The agent in IPVS mode, end to end: the lab API server, real watches, the real polling
source and IPVS reader. The kernel here has no IPVS module, so the netlink dump is the one
thing replaced: it answers with the virtual servers the test programs, encoded in the kernel's
message layout and decoded as the agent decodes the kernel's (tests/fixtures/dataplane/
ipvs_netlink.py) — as
kube-proxy's IPVS proxier would program them: the service's cluster IP and node port, and a
terminating endpoint's real server set to weight 0 (pkg/proxy/ipvs/graceful_termination.go).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from kubernetes_asyncio import client

from observer.agent import Agent, DataplaneWiring, build_agent
from observer.clock import SystemClock
from observer.config import AgentConfig, WatchSettings
from observer.dataplane.commands import CommandRunner
from observer.dataplane.ipvs import IpvsReader, Virtual
from observer.dataplane.names import FrontendNames
from observer.dataplane.sources import PollingSource
from observer.lab.apiserver.server import ApiServer
from observer.testing.ipvs_netlink import Real, Service, virtuals
from tests.agent.harness import Cluster, Endpoint, key, until

WEB = key("web", "10.0.0.1")


@dataclass
class Ipvs:
    services: tuple[Service, ...] = ()

    def program(self, **weights: int) -> None:
        reals = tuple(Real(ip.replace("_", "."), 8080, w) for ip, w in weights.items())
        self.services = (Service("TCP", "10.96.0.10", 80, reals),
                         Service("TCP", "192.168.0.2", 30080, reals))

    async def dump(self, netns: str | None) -> list[Virtual]:
        return virtuals(self.services)


@dataclass
class Env:
    agent: Agent
    source: PollingSource
    cluster: Cluster
    ipvs: Ipvs


@pytest.fixture
async def ipvs_env(apiserver: ApiServer, api: client.ApiClient) -> AsyncIterator[Env]:
    ipvs = Ipvs()
    ipvs.program(**{"10_0_0_1": 1, "10_0_0_2": 1})

    async def kernel_without_ipvs(wiring: DataplaneWiring) -> PollingSource:
        """What the settings would open for IPVS (virtual servers named from the catalog),
        its dump from the stand-in: these kernels have no ip_vs module."""
        reader = IpvsReader(CommandRunner(), FrontendNames(wiring.catalog.service_ports_of),
                            dump=ipvs.dump)
        return PollingSource(reader=reader, clock=wiring.clock, metrics=wiring.health,
                             interval=0.02)

    agent = await build_agent(AgentConfig(node_name="node-a", listen=("127.0.0.1", 0),
                                          watch=WatchSettings(backoff_initial=0.01)),
                              api=api, clock=SystemClock(), dataplane=kernel_without_ipvs)
    source = agent.dataplane
    assert isinstance(source, PollingSource)
    cluster = Cluster(apiserver)
    cluster.put_slice("web-abc", "web", *(
        Endpoint(f"10.0.0.{i}", "node-b", f"web-{i}",
                 cluster.create_pod(f"web-{i}", "node-b", f"10.0.0.{i}")) for i in (1, 2)))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await until(lambda: agent.ready() and source.selected(WEB) is True, "ready and read")
        yield Env(agent, source, cluster, ipvs)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def measured(agent: Agent) -> float:
    return agent.registry.get_sample_value("endpoint_propagation_duration_seconds_count", {
        "stage": "dataplane", "cause": "deletion", "proxy_mode": "ipvs"}) or 0.0


async def test_weight_zero_times_the_dataplane_stage(ipvs_env: Env) -> None:
    env = ipvs_env
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
    await until(lambda: WEB in env.agent.tracker.episodes, "episode")
    await asyncio.sleep(0.3)
    env.ipvs.program(**{"10_0_0_1": 0, "10_0_0_2": 1})  # kube-proxy: no new connections
    written = env.agent.clock.monotonic()
    await until(lambda: env.agent.tracker.episodes[WEB].dataplane is not None, "weight 0 seen")
    seen = env.agent.tracker.episodes[WEB].dataplane
    assert seen is not None
    assert seen.source == "dataplane"
    assert abs(seen.mono - written) <= seen.precision  # the stated precision holds
    env.cluster.pod_terminated("web-1")
    await until(lambda: measured(env.agent) == 1, "measured")
    (episode,) = env.agent.tracker.finished
    assert episode.key == WEB
    assert 0.3 - seen.precision <= episode.stages["dataplane"] < 5
    assert not episode.unsafe


async def test_a_removal_is_timed_by_ipvs_not_by_the_slice(ipvs_env: Env) -> None:
    # The pod stops and its endpoint leaves the slice while IPVS still balances to it: the
    # virtual server keeps its name, and the episode ends when the weight drops: unsafe.
    env = ipvs_env
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
    await until(lambda: WEB in env.agent.tracker.episodes, "episode")
    env.cluster.pod_terminated("web-1")
    env.cluster.drop_endpoint("web-abc", "10.0.0.1")
    await until(lambda: env.agent.tracker.episodes[WEB].stopped is not None, "stop seen")
    await asyncio.sleep(0.3)  # several reads: still selected, still in flight
    assert env.source.selected(WEB) is True
    assert WEB in env.agent.tracker.episodes
    env.ipvs.program(**{"10_0_0_1": 0, "10_0_0_2": 1})
    await until(lambda: measured(env.agent) == 1, "measured")
    (episode,) = env.agent.tracker.finished
    assert episode.unsafe_window is not None
    assert episode.unsafe_window >= 0.3 - 0.1
