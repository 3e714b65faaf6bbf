from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from observer.agent import build_agent, given
from observer.config import AgentConfig, TrafficSettings, WatchSettings
from observer.dataplane.memory import MemoryDataplane
from observer.lab.apiserver.server import ApiServer
from tests.agent.harness import AgentEnv, Cluster, until
from tests.conftest import ManualClock, client_configuration


@pytest.fixture
def agent_config() -> AgentConfig:
    # Connections are not followed here (the host's conntrack, as root, would be: its traffic
    # windows would hold each episode's record open); tests/traffic follows them in netns.
    return AgentConfig(node_name="node-a", listen=("127.0.0.1", 0), housekeeping_interval=0.01,
                       watch=WatchSettings(inactivity_timeout=5.0, backoff_initial=0.01,
                                           backoff_max=0.05),
                       traffic=TrafficSettings(mode="off"))


@pytest.fixture
async def env(apiserver: ApiServer, kubeconfig: Path, clock: ManualClock,
              agent_config: AgentConfig) -> AsyncIterator[AgentEnv]:
    configuration = await client_configuration(kubeconfig)
    dataplane = MemoryDataplane(clock=clock, mode="nftables")
    sleeps: list[float] = []
    reconnects = asyncio.Event()  # cleared by a test: backoffs wait until it is set again
    reconnects.set()

    async def fast_sleep(seconds: float) -> None:
        # Backoff waits are recorded, not waited out: the test checks what was asked for.
        sleeps.append(seconds)
        await asyncio.sleep(0.01)
        await reconnects.wait()

    async with client.ApiClient(configuration) as api:
        agent = await build_agent(agent_config, api=api, clock=clock, dataplane=given(dataplane),
                                  sleep=fast_sleep)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(agent.ready, "agent ready")
            yield AgentEnv(agent, dataplane, Cluster(apiserver), api, sleeps, reconnects)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
