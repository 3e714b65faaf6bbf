"""End to end with a real dataplane: the agent, the lab API server, and an nftables ruleset in
a real network namespace whose changes reach the agent as kernel netlink events."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kubernetes_asyncio import client

from observer import __version__
from observer.agent import build_agent
from observer.clock import SystemClock
from observer.config import AgentConfig, DataplaneSettings
from observer.lab.apiserver.registry import WriteOptions
from observer.lab.apiserver.server import ApiServer
from observer.values import EndpointKey, ServicePort
from tests.agent.harness import Endpoint, until
from tests.conftest import client_configuration
from tests.dataplane.edits import NFT_DROP_SVC4_EP4, load
from tests.netns import Netns

KEY = EndpointKey(ServicePort("ns4", "svc4", "p80", "TCP"), "10.180.0.4", 80)


async def test_nftables_removal_times_the_dataplane_stage(apiserver: ApiServer,
                                                          kubeconfig: Path,
                                                          netns: Netns) -> None:
    load(netns, "nftables")  # kube-proxy's rules: ns4/svc4:p80 -> 10.180.0.4, 10.180.0.5
    slices = apiserver.registries["endpointslices"]
    slices.create("ns4", {
        "metadata": {"name": "svc4-1", "labels": {"kubernetes.io/service-name": "svc4"}},
        "addressType": "IPv4", "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
        "endpoints": [Endpoint("10.180.0.4", "node-b").to_api(),
                      Endpoint("10.180.0.5", "node-b").to_api()]}, WriteOptions())
    async with client.ApiClient(await client_configuration(kubeconfig)) as api:
        agent = await build_agent(AgentConfig(
            node_name="node-a", listen=("127.0.0.1", 0),
            dataplane=DataplaneSettings(netns=netns.name, poll_max_cpu=0.5)),
            api=api, clock=SystemClock())
        source = agent.dataplane
        assert source is not None
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(agent.ready, "agent ready")
            await until(lambda: source.selected(KEY) is True, "dataplane read")
            current = slices.get("ns4", "svc4-1")
            current["endpoints"][0]["conditions"] = {"ready": False, "serving": False,
                                                     "terminating": True}
            slices.update("ns4", "svc4-1", current, WriteOptions())
            await until(lambda: bool(agent.tracker.episodes), "episode started")
            await asyncio.sleep(0.25)
            netns.nft(NFT_DROP_SVC4_EP4)  # kube-proxy drops it 250 ms after the slice update
            await until(lambda: agent.tracker.episodes[KEY].dataplane is not None,
                        "dataplane seen")
            current = slices.get("ns4", "svc4-1")
            del current["endpoints"][0]  # the pod went, and the controller removed it
            slices.update("ns4", "svc4-1", current, WriteOptions())
            await until(lambda: bool(agent.tracker.finished), "episode finished")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    (episode,) = agent.tracker.finished
    assert episode.key == KEY
    assert episode.dataplane is not None
    assert episode.dataplane.source == "dataplane"
    # Real time: at least the 250 ms waited; an upper bound only against a hang.
    assert 0.25 <= episode.stages["dataplane"] < 5
    sample = agent.registry.get_sample_value
    assert sample("endpoint_propagation_build_info",
                  {"version": __version__, "proxy_mode": "nftables"}) == 1
    # The initial read; the rest came as events.
    assert sample("endpoint_propagation_dataplane_scan_duration_seconds_count") == 1

