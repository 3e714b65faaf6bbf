"""The agent's connection counts against what real clients recorded, connection by connection,
on the real kernel: a node namespace with kube-proxy's nftables rules, pods with real TCP
servers, clients through the service address (this node's kube-proxy: ``local``) and straight
to the pod (an ingress, another node: ``forwarded``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from kubernetes_asyncio import client
from structlog.testing import capture_logs

from observer.agent import Agent, build_agent
from observer.clock import SystemClock
from observer.config import AgentConfig, DataplaneSettings, TrafficSettings
from observer.dataplane.netlink import netlink_socket
from observer.dataplane.nlwire import DATAGRAM, messages
from observer.episodes.model import Episode
from observer.lab.apiserver.server import ApiServer
from observer.lab.apps import PodServer
from observer.lab.clients import Connection
from observer.lab.rules import ServicePortRules
from observer.traffic import conntrack
from observer.values import EndpointKey
from tests.agent.harness import Cluster, Endpoint, key, until
from tests.conftest import client_configuration
from tests.traffic.topology import NODE_ADDRESS, Topology

POD, OTHER = "10.100.0.4", "10.100.0.5"
VIP = "172.30.0.10"
KEY: EndpointKey = key("web", POD)


def web(*endpoints: str) -> ServicePortRules:
    return ServicePortRules("default", "web", "http", VIP, 80,
                            tuple((ip, 8080) for ip in endpoints))


@contextlib.asynccontextmanager
async def running(apiserver: ApiServer, kubeconfig: Path, topology: Topology,
                  window: float) -> AsyncIterator[Agent]:
    async with client.ApiClient(await client_configuration(kubeconfig)) as api:
        agent = await build_agent(AgentConfig(
            node_name="node-a", listen=("127.0.0.1", 0), housekeeping_interval=0.05,
            dataplane=DataplaneSettings(mode="nftables", netns=topology.node.name,
                                        poll_max_cpu=0.5),
            traffic=TrafficSettings(mode="on", window=window)), api=api, clock=SystemClock())
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(agent.ready, "agent ready")
            # Its dataplane's first read (the baseline removals are timed against) is in.
            await until(lambda: agent.dataplane is not None and agent.dataplane.primed(),
                        "the dataplane's first read")
            yield agent
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def two_pods(apiserver: ApiServer, topology: Topology
                   ) -> tuple[set[str], dict[str, PodServer], Cluster]:
    """web's two pods, POD on this node and OTHER on another, serving, in kube-proxy's rules
    and the slice: the endpoint chains known to the rules, the servers by address, the
    cluster."""
    known: set[str] = set()
    topology.program([web(POD, OTHER)], known=known, first=True)
    servers = {ip: await topology.serve(ip) for ip in (POD, OTHER)}
    cluster = Cluster(apiserver)
    cluster.create_pod("web-4", "node-a", POD)
    cluster.create_pod("web-5", "node-b", OTHER)
    cluster.put_slice("web-1", "web", Endpoint(POD, "node-a", pod="web-4"),
                      Endpoint(OTHER, "node-b", pod="web-5"))
    return known, servers, cluster


def finished(agent: Agent) -> Episode:
    (episode,) = [e for e in agent.tracker.finished if e.key == KEY]
    return episode


async def test_counts_equal_what_the_clients_recorded(apiserver: ApiServer, kubeconfig: Path,
                                                       topology: Topology) -> None:
    known, servers, cluster = await two_pods(apiserver, topology)
    fabric, node = topology.client, topology.node
    async with running(apiserver, kubeconfig, topology, window=0.5) as agent:
        source = agent.traffic
        assert source is not None
        # Before the episode: kept open across the stop (cut), and closed before it (not).
        kept = [await topology.connect(fabric, POD) for _ in range(3)]
        for conn in kept:
            assert isinstance(conn, Connection)
            assert await conn.ask() == "ok"
        assert await topology.request(fabric, POD) == "ok"

        cluster.delete_pod("web-4")
        cluster.set_endpoint("web-1", POD, ready=False, serving=True, terminating=True)
        await until(lambda: (POD, 8080) in source.filtered, "the kernel filter follows it")

        # not_ready .. dataplane: through the service (either pod; which one, each pod's
        # server says) and straight to the pod.
        before = {ip: servers[ip].accepted[NODE_ADDRESS] for ip in servers}
        local = dict.fromkeys(servers, 0)
        while local[POD] < 3 or local[OTHER] < 1:
            assert await topology.request(node, VIP, 80) == "ok"
            local = {ip: servers[ip].accepted[NODE_ADDRESS] - before[ip] for ip in servers}
        running_pod = [await topology.request(fabric, POD) for _ in range(4)]
        topology.program([web(OTHER)], known=known)  # kube-proxy drops it
        await until(lambda: agent.tracker.episodes[KEY].dataplane is not None, "dataplane")
        # A consumer slower than kube-proxy still sends to the pod while it runs...
        running_pod += [await topology.request(fabric, POD) for _ in range(2)]
        assert running_pod == ["ok"] * 6

        # ...and after it stopped: each attempt fails for its client.
        servers[POD].exit()
        cluster.pod_terminated("web-4")
        await until(lambda: any(e.key == KEY for e in agent.tracker.finished), "stop seen")
        failed = [await topology.request(fabric, POD) for _ in range(5)]
        assert failed == ["refused"] * 5
        for conn in kept:  # what the clients of the cut connections see on their next request
            assert isinstance(conn, Connection)
            assert await conn.ask() == "reset"
            conn.close()

        episode = finished(agent)
        traffic = episode.traffic
        assert traffic is not None
        with capture_logs() as logs:
            await until(lambda: traffic.closed, "traffic window closed")

    assert traffic.connections == {("local", "not_ready"): local[POD],
                                   ("forwarded", "not_ready"): len(running_pod),
                                   ("forwarded", "stopped"): len(failed)}
    assert traffic.cut == len(kept)
    assert not traffic.lost
    assert episode.deleted is not None
    assert traffic.last["forwarded"].mono > traffic.last["local"].mono > episode.deleted.mono
    sample = agent.registry.get_sample_value
    name = "endpoint_propagation_connections_after_removal_total"
    assert sample(name, {"source": "local", "after": "not_ready"}) == local[POD]
    assert sample(name, {"source": "local", "after": "stopped"}) == 0
    assert sample(name, {"source": "forwarded", "after": "not_ready"}) == 6
    assert sample(name, {"source": "forwarded", "after": "stopped"}) == 5
    assert sample("endpoint_propagation_connections_cut_total") == 3
    for origin in ("local", "forwarded"):
        assert sample("endpoint_propagation_last_connection_seconds_count",
                      {"source": origin}) == 1
    assert sample("endpoint_propagation_traffic_errors_total", {"reason": "events_lost"}) == 0
    # The episode's one canonical line waited for its connections.
    (line,) = [entry for entry in logs if entry["event"] == "episode finished"]
    assert (line["connections_after_not_ready"], line["connections_after_stopped"],
            line["connections_local"], line["connections_forwarded"],
            line["connections_cut"]) == (local[POD] + 6, 5, local[POD], 11, 3)
    # The last connection came after this node's rules had dropped the pod. (From the readings:
    # on a busy machine the deletion's reading can be too uncertain for a total stage.)
    assert episode.dataplane is not None
    assert line["last_connection_seconds"] > episode.dataplane.mono - episode.deleted.mono
    # kube-proxy dropped the pod before it stopped (the rules say safe), yet 5 new connections
    # failed: unsafe means failed connections, whatever the rules say — counted once the
    # record was final, on the pod's node for its workload too.
    assert episode.unsafe_window is None
    assert episode.headroom is not None
    assert (episode.unsafe, episode.failed_connections) == (True, 5)
    assert (line["unsafe"], line["failed_connections"]) == (True, 5)
    assert sample("endpoint_propagation_unsafe_terminations_total") == 1
    assert episode.workload is not None
    assert sample("endpoint_propagation_workload_unsafe_terminations_total", {
        "namespace": episode.workload.namespace, "workload": episode.workload.label}) == 1


async def dumped(netns: str, ip: str, port: int) -> list[conntrack.TcpFlow]:
    """The node's TCP flows to ``ip``:``port``, dumped as the agent dumps them."""
    sock = await netlink_socket(netns, conntrack.NETLINK_NETFILTER)
    loop = asyncio.get_running_loop()
    found: list[conntrack.TcpFlow] = []
    try:
        await loop.sock_sendall(sock, conntrack.open_flows_request(ip, port, "TCP", 1))
        while True:
            data = await loop.sock_recv(sock, DATAGRAM)
            for kind, _, start, end in messages(data):
                if kind != conntrack.MSG_NEW:
                    return found  # NLMSG_DONE (or an error: nothing more comes)
                flow = conntrack.dumped_tcp(data, start, end)
                if flow is not None:
                    found.append(flow)
    finally:
        sock.close()


async def test_streams_closed_after_the_pod_exited_are_cut_too(
        apiserver: ApiServer, kubeconfig: Path, topology: Topology) -> None:
    """A streaming client reads the pod's FIN and closes at once; the kubelet reports the stop
    later. When the agent counts, those flows are closing (LAST_ACK, TIME_WAIT), no longer
    open, and were cut all the same. A connection its client closed first is not."""
    known, servers, cluster = await two_pods(apiserver, topology)
    fabric, node = topology.client, topology.node
    async with running(apiserver, kubeconfig, topology, window=0.2) as agent:
        source = agent.traffic
        assert source is not None
        streams = [await topology.connect(fabric, POD) for _ in range(3)]
        done = await topology.connect(fabric, POD)
        for conn in (*streams, done):
            assert isinstance(conn, Connection)
            assert await conn.ask() == "ok"
        assert isinstance(done, Connection)
        done.close()  # its client was done: closed first (TIME_WAIT, the client's FIN first)

        cluster.delete_pod("web-4")
        cluster.set_endpoint("web-1", POD, ready=False, serving=True, terminating=True)
        await until(lambda: (POD, 8080) in source.filtered, "the kernel filter follows it")
        topology.program([web(OTHER)], known=known)
        await until(lambda: agent.tracker.episodes[KEY].dataplane is not None, "dataplane")
        servers[POD].exit()
        for conn in streams:  # each stream's client sees its connection end, and closes it
            assert isinstance(conn, Connection)
            assert await conn.ask() == "reset"
            conn.close()

        async def all_closing() -> bool:
            flows = await dumped(node.name, POD, 8080)
            return len(flows) == 4 and not any(flow.open for flow in flows)
        while not await all_closing():  # noqa: ASYNC110 (the kernel's table: no event)
            await asyncio.sleep(0.01)
        cluster.pod_terminated("web-4")
        await until(lambda: any(e.key == KEY for e in agent.tracker.finished), "stop seen")
        traffic = finished(agent).traffic
        assert traffic is not None
        await until(lambda: traffic.closed, "traffic window closed")

    assert traffic.cut == len(streams)
    assert agent.registry.get_sample_value("endpoint_propagation_connections_cut_total") == 3
