"""Two workloads on one node, each sized by its own consumers — on the real kernel: kube-proxy's
nftables rules in a node namespace, real servers in pod namespaces, real clients.

``web`` is also reached by a slow consumer (an ingress, a load balancer in IP mode) that keeps
sending new connections straight to a deleted pod's address for seconds after it left Ready;
``api`` is reached only through its service address. The per-workload metrics and
``observer report --agent --json`` must give web a preStop covering its consumer (set by
connections) and api one from the rules path (set by kube-proxy), with the cluster-wide number
still there."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from observer.agent import Agent
from observer.lab.apiserver.registry import WriteOptions
from observer.lab.apiserver.server import ApiServer
from observer.lab.apps import PodServer
from observer.lab.rules import ServicePortRules
from tests.agent.harness import Cluster, Endpoint, key, until
from tests.traffic.test_connections import running
from tests.traffic.topology import Topology

VIPS = {"web": "172.30.0.10", "api": "172.30.0.11"}
PODS = {"web": ["10.100.0.4", "10.100.0.5", "10.100.0.6", "10.100.0.7"],
        "api": ["10.100.0.8", "10.100.0.9", "10.100.0.10", "10.100.0.11"]}
DELETED = 3  # of each workload's pods; the last one stays Ready (no kube-proxy fallback)
SLOW_CONSUMER = 2.5  # seconds after the deletion the slow consumer still sends to web's pod


def owned(workload: str) -> dict[str, Any]:
    return {"labels": {"app": workload, "pod-template-hash": "5d8f7c"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": f"{workload}-5d8f7c", "uid": f"uid-{workload}",
                                 "controller": True}]}


def rules(ready: dict[str, list[str]]) -> list[ServicePortRules]:
    return [ServicePortRules("default", name, "http", VIPS[name], 80,
                             tuple((ip, 8080) for ip in ready[name])) for name in VIPS]


def deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {"metadata": {"name": name}, "spec": {
        "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
            "containers": [{"name": "app", "image": "app:1",
                            "ports": [{"containerPort": 8080}]}]}}}}


async def delete(agent: Agent, topology: Topology, cluster: Cluster, servers: dict[str, PodServer],
                 ready: dict[str, list[str]], known: set[str], workload: str, index: int) -> None:
    """One pod's deletion, as a cluster goes through it, with the workload's consumers."""
    ip = PODS[workload][index]
    source = agent.traffic
    assert source is not None
    loop = asyncio.get_running_loop()
    deleted = loop.time()
    cluster.delete_pod(f"{workload}-{index}")
    cluster.set_endpoint(workload, ip, ready=False, serving=True, terminating=True)
    await until(lambda: (ip, 8080) in source.filtered, "the kernel filter follows it")
    ready[workload].remove(ip)
    topology.program(rules(ready), known=known)  # kube-proxy drops it
    episode_key = key(workload, ip)
    await until(lambda: agent.tracker.episodes[episode_key].dataplane is not None, "dataplane")
    # Through the service: this node's kube-proxy, which no longer chooses the pod.
    for _ in range(3):
        assert await topology.request(topology.node, VIPS[workload], 80) == "ok"
    if workload == "web":  # the slow consumer still sends to the pod while it runs
        while loop.time() < deleted + SLOW_CONSUMER:
            assert await topology.request(topology.client, ip) == "ok"
            await asyncio.sleep(0.05)
    servers[ip].exit()
    cluster.pod_terminated(f"{workload}-{index}")
    await until(lambda: any(e.key == episode_key and e.traffic is not None and e.traffic.closed
                            for e in agent.tracker.finished), "traffic window closed")


async def report(agent: Agent, kubeconfig: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "observer.cli", "report", "--json", "--agent", agent.http.url,
        "--kubeconfig", str(kubeconfig), "--min-episodes", str(DELETED),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)  # type: ignore[no-any-return]


async def test_each_workload_is_sized_by_its_own_consumers(
        apiserver: ApiServer, kubeconfig: Path, topology: Topology) -> None:
    known: set[str] = set()
    ready = {name: list(ips) for name, ips in PODS.items()}
    topology.program(rules(ready), known=known, first=True)
    cluster = Cluster(apiserver)
    servers = {}
    for workload, ips in PODS.items():
        apiserver.registries["deployments"].create("default", deployment(workload),
                                                   WriteOptions())
        endpoints = []
        for index, ip in enumerate(ips):
            servers[ip] = await topology.serve(ip)
            uid = cluster.create_pod(f"{workload}-{index}", "node-a", ip,
                                     metadata=owned(workload))
            endpoints.append(Endpoint(ip, "node-a", f"{workload}-{index}", uid))
        cluster.put_slice(workload, workload, *endpoints)

    async with running(apiserver, kubeconfig, topology, window=0.3) as agent:
        for index in range(DELETED):
            for workload in PODS:
                await delete(agent, topology, cluster, servers, ready, known, workload, index)
        sample = agent.registry.get_sample_value
        web = {"namespace": "default", "workload": "deployment/web"}
        api = {"namespace": "default", "workload": "deployment/api"}
        for labels in (web, api):
            assert sample("endpoint_propagation_workload_episodes_total", labels) == DELETED
        assert sample("endpoint_propagation_workload_last_connection_seconds_count",
                      {**web, "source": "forwarded"}) == DELETED
        assert sample("endpoint_propagation_workload_last_connection_seconds_count",
                      {**api, "source": "forwarded"}) is None
        found = await report(agent, kubeconfig)

    rows = {w["workload"]: w for w in found["workloads"]}
    web_row, api_row = rows["deployment/web"], rows["deployment/api"]
    # web: its consumer's last connection, ~2.5 s after each deletion (in the (2, 3] s bucket
    # of the per-workload histogram: p99 ~2.99 s), plus the margin.
    assert web_row["set_by"] == "connections"
    assert web_row["recommended_prestop_seconds"] >= SLOW_CONSUMER + 1
    assert web_row["last_connection_seconds_by_source"]["forwarded"] > 2.0
    # api: nothing but kube-proxy sends to it; the rules path (tens of ms here) plus 1 s.
    assert api_row["set_by"] == "kube-proxy"
    assert api_row["recommended_prestop_seconds"] <= 2
    assert api_row["recommended_prestop_seconds"] < web_row["recommended_prestop_seconds"]
    assert (web_row["episodes"], api_row["episodes"]) == (DELETED, DELETED)
    # The cluster-wide number is still there: set by the slowest consumer anywhere.
    cluster_wide = found["recommendation"]
    assert cluster_wide["set_by"] == "connections"
    assert cluster_wide["prestop_seconds"] >= web_row["recommended_prestop_seconds"] - 1
