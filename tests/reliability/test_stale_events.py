"""The agent behind a network path that resets every connection every 1.5 s, while pods are
deleted one at a time: each watch keeps reconnecting, so some deletions happen while the pod
watch is away and are seen only on its catch-up, after the slice update that followed them.

Found by a fault run before this test existed: stages were timed from such late receipts (a
0.0 s controller stage, where the controller had taken 0.4 s) and deletions whose controller
stage could not be timed left no trace in /metrics. Now a reading received on catch-up carries
the gap as its precision, a stage whose bound is wider than --max-stage-uncertainty is counted
instead of observed, and every episode ends in exactly one outcome."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry

from observer.agent import build_agent, given
from observer.clock import SystemClock
from observer.config import AgentConfig, WatchSettings
from observer.dataplane.memory import MemoryDataplane
from observer.lab.apiserver.server import ApiServer
from observer.lab.results import accounting
from tests.agent.harness import Cluster, Endpoint, key, until
from tests.conftest import client_configuration
from tests.tcpproxy import CuttingProxy

PODS = 8
CONTROLLER = 0.4  # deletion -> the slice marks the endpoint terminating
DATAPLANE = 0.1  # then this node's dataplane drops it
GONE = 0.4  # then the pod is force-deleted and its endpoint leaves the slice
UNCERTAINTY = 0.05  # --max-stage-uncertainty


def through(kubeconfig: Path, port: int) -> Path:
    """The same kubeconfig, its server reached through the proxy (same address and
    certificate: only the port differs)."""
    document = yaml.safe_load(kubeconfig.read_text())
    for cluster in document["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = kubeconfig.with_name("through-proxy")
    path.write_text(yaml.safe_dump(document))
    return path


def bucket(registry: CollectorRegistry, stage: str, le: str) -> float:
    value = registry.get_sample_value("endpoint_propagation_duration_seconds_bucket", {
        "stage": stage, "cause": "deletion", "proxy_mode": "nftables", "le": le})
    return value or 0.0


async def test_reset_connections_leave_no_false_stage_and_no_episode_unaccounted(
        apiserver: ApiServer, kubeconfig: Path) -> None:
    clock = SystemClock()
    proxy = CuttingProxy(int(apiserver.url.rsplit(":", 1)[1]), period=1.5)
    cluster = Cluster(apiserver)
    dataplane = MemoryDataplane(clock=clock, mode="nftables")
    endpoints = []
    for i in range(PODS):
        ip = f"10.0.0.{i + 1}"
        uid = cluster.create_pod(f"web-{i}", "node-a", ip)
        endpoints.append(Endpoint(ip, "node-a", f"web-{i}", uid))
        dataplane.set(key("web", ip), True)
    cluster.put_slice("web-abc", "web", *endpoints)
    registry = CollectorRegistry()
    async with proxy.running() as port, client.ApiClient(
            await client_configuration(through(kubeconfig, port))) as api:
        agent = await build_agent(AgentConfig(
            node_name="node-a", listen=("127.0.0.1", 0), housekeeping_interval=0.1,
            max_stage_uncertainty=UNCERTAINTY,
            watch=WatchSettings(inactivity_timeout=5.0, backoff_initial=0.3, backoff_max=0.6)),
            api=api, clock=clock, dataplane=given(dataplane), registry=registry)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(agent.ready, "agent ready")
            for i, endpoint in enumerate(endpoints):
                cluster.delete_pod(endpoint.pod, grace=30)
                await asyncio.sleep(CONTROLLER)
                cluster.set_endpoint("web-abc", endpoint.ip, ready=False, terminating=True)
                await asyncio.sleep(DATAPLANE)
                dataplane.set(key("web", endpoint.ip), False)
                await asyncio.sleep(GONE)
                cluster.remove_pod(endpoint.pod)
                cluster.drop_endpoint("web-abc", endpoint.ip)
                await until(lambda n=i + 1: len(agent.tracker.finished) == n,  # type: ignore[misc]
                            f"deletion {i + 1} ended")
        finally:
            stop.set()
            await task
    assert proxy.cuts >= 3  # the fault really hit: ~8 s of deletions, a cut every 1.5 s
    counted = accounting([registry])
    # Every deletion is accounted for, in exactly one outcome.
    assert counted.episodes == PODS, counted
    assert counted.in_flight == 0
    # No stage shorter than what the test made it take, less the stated uncertainty.
    assert bucket(registry, "controller", "0.3") == 0  # CONTROLLER - UNCERTAINTY = 0.35
    assert bucket(registry, "total", "0.4") == 0  # CONTROLLER + DATAPLANE - UNCERTAINTY
    for episode in agent.tracker.finished:
        assert episode.stages.get("controller", CONTROLLER) >= CONTROLLER - UNCERTAINTY, episode
        assert episode.stages.get("dataplane", DATAPLANE) >= DATAPLANE - UNCERTAINTY, episode
        assert episode.stages.get("total", 1.0) >= CONTROLLER + DATAPLANE - UNCERTAINTY, episode
        # What was not timed says why, and the outcome follows from it.
        assert (episode.outcome == "partial") is bool(episode.unmeasured), episode
