"""The traffic source on its own: the kernel filter keeps other endpoints' connections away from
the decoder, and every way it can fail is said, counted, and leaves the agent running."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal

import pytest
from kubernetes_asyncio import client

from observer.agent import build_agent
from observer.clock import SystemClock
from observer.config import AgentConfig, DataplaneSettings, TrafficSettings
from observer.dataplane.netlink import enter_namespace
from observer.dataplane.nlwire import HEADER, attribute
from observer.episodes.model import After, Episode, Origin
from observer.episodes.observers import TrafficObserver
from observer.episodes.traffic import TrafficBook
from observer.lab.apiserver.server import ApiServer
from observer.lab.apps import Sockets
from observer.lab.clients import connect
from observer.tasks import cancel_and_wait
from observer.traffic import conntrack
from observer.traffic.source import ConntrackSource, TrafficError, open_conntrack
from observer.values import Timestamp
from tests.agent.harness import key, until
from tests.conftest import (
    REPO,
    client_configuration,
    without_capabilities,
)
from tests.netns import Netns
from tests.traffic.topology import Topology

POD, OTHER = "10.100.0.4", "10.100.0.5"


class Recorder(TrafficObserver):
    def __init__(self) -> None:
        self.connections: list[tuple[Origin, After]] = []
        self.closed: list[Episode] = []
        self.cut = 0

    def connection(self, origin: Origin, after: After) -> None:
        self.connections.append((origin, after))

    def connections_cut(self, count: int) -> None:
        self.cut += count

    def traffic_closed(self, episode: Episode) -> None:
        self.closed.append(episode)


def episode(ip: str, port: int = 8080) -> Episode:
    """An episode whose pod has stopped: its connections count at once (after="stopped")."""
    return Episode(key=key("web", ip, port), cause="deletion", local=True, pod="default/web",
                   pod_uid="u", not_ready=Timestamp(0.0, 0.0, "slice_watch", 0.0),
                   stopped=Timestamp(0.0, 0.0, "pod_watch", 0.0))


class Errors:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def traffic_error(self, reason: str) -> None:
        self.reasons.append(reason)


@pytest.fixture
def topology(topology: Topology) -> Topology:
    """The traffic tests' world, with connection tracking on in the node: it runs in a
    namespace once something there uses it (kube-proxy's NAT rules do); this table stands for
    them."""
    topology.node.nft("add table ip t\nadd chain ip t c { type filter hook forward "
                      "priority 0 ; }\nadd rule ip t c ct state new counter\n")
    return topology


@contextlib.asynccontextmanager
async def following(source: ConntrackSource, *ips: str) -> AsyncIterator[list[Episode]]:
    book = TrafficBook(window=60.0, observers=Recorder(), listener=source)
    episodes = [episode(ip) for ip in ips]
    for e in episodes:  # as the tracker tells it
        book.started(e, 0.0)
        book.stopped(e)
    task = asyncio.create_task(source.run(book))
    try:
        await until(lambda: source.filtered == {(ip, 8080) for ip in ips}, "filter installed")
        yield episodes
    finally:
        await cancel_and_wait(task)
        source.close()


async def test_connections_to_other_endpoints_never_reach_the_decoder(
        topology: Topology) -> None:
    for ip in (POD, OTHER):
        await topology.serve(ip)
    source = await open_conntrack(topology.node.name, clock=SystemClock(), errors=Errors())
    async with following(source, POD) as (followed,):
        for _ in range(20):
            assert await topology.request(topology.client, OTHER) == "ok"
        assert await topology.request(topology.client, POD) == "ok"
        traffic = followed.traffic
        assert traffic is not None
        await until(lambda: bool(traffic.connections), "the followed connection")
        # Events leave the kernel in order: had any of the 20 passed, it came first.
        assert source.datagrams == 1
        assert traffic.connections == {("forwarded", "stopped"): 1}


async def test_lost_events_are_counted_and_the_source_goes_on(topology: Topology) -> None:
    errors = Errors()
    # The smallest queue the kernel allows: a few events. Nothing listens on the pods' port:
    # each attempt is one refused connection, one event.
    for ip in (POD, OTHER):
        await topology.pod(ip)
    source = await open_conntrack(topology.node.name, clock=SystemClock(), errors=errors,
                                  receive_buffer=1)
    async with following(source, POD, OTHER) as (flooded, later):
        def flood() -> None:
            for _ in range(200):
                with contextlib.suppress(ConnectionRefusedError), socket.socket() as sock:
                    sock.connect((POD, 8080))

        # From the client's namespace, while this event loop is held: the kernel's queue for
        # the source overflows meanwhile.
        thread = threading.Thread(target=_in_netns, args=(topology.client.name, flood))
        thread.start()
        thread.join()
        await until(lambda: "events_lost" in errors.reasons, "ENOBUFS seen")
        assert flooded.traffic is not None
        assert later.traffic is not None
        assert flooded.traffic.lost
        assert sum(flooded.traffic.connections.values()) < 200
        assert await topology.request(topology.client, OTHER) == "refused"
        traffic = later.traffic
        await until(lambda: traffic.connections == {("forwarded", "stopped"): 1},
                    "still following")


def _in_netns(name: str, call: Callable[[], None]) -> None:
    enter_namespace(name)
    call()


async def test_events_turned_off_are_said_counted_and_the_agent_runs_on(
        netns: Netns, apiserver: ApiServer, kubeconfig: Path) -> None:
    netns.run("sysctl", "-qw", "net.netfilter.nf_conntrack_events=0")
    errors = Errors()
    with pytest.raises(TrafficError, match="nf_conntrack_events is 0") as raised:
        await open_conntrack(netns.name, clock=SystemClock(), errors=errors)
    assert raised.value.reason == "events_disabled"
    assert errors.reasons == ["events_disabled"]

    async with client.ApiClient(await client_configuration(kubeconfig)) as api:
        def config(mode: Literal["auto", "on"]) -> AgentConfig:
            return AgentConfig(node_name="node-a", listen=("127.0.0.1", 0),
                               dataplane=DataplaneSettings(mode="none", netns=netns.name),
                               traffic=TrafficSettings(mode=mode))
        with pytest.raises(TrafficError):
            await build_agent(config("on"), api=api, clock=SystemClock())
        agent = await build_agent(config("auto"), api=api, clock=SystemClock())
        assert agent.traffic is None
        assert agent.registry.get_sample_value("endpoint_propagation_traffic_errors_total",
                                               {"reason": "events_disabled"}) == 1
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await until(agent.ready, "agent ready without traffic")
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_conntrack_not_loaded_is_said_and_counted(netns: Netns, tmp_path: Path) -> None:
    # Unloading nf_conntrack would take it from every test on the machine: an empty
    # /proc/sys/net/netfilter is what a kernel without it shows.
    errors = Errors()
    with pytest.raises(TrafficError, match="not loaded") as raised:
        await open_conntrack(netns.name, clock=SystemClock(), errors=errors, proc=tmp_path)
    assert raised.value.reason == "conntrack_missing"
    assert errors.reasons == ["conntrack_missing"]


def test_without_cap_net_admin_it_is_a_permission_error() -> None:
    probe = ("import asyncio\n"
             "from observer.clock import SystemClock\n"
             "from observer.traffic.source import TrafficError, open_conntrack\n"
             "class E:\n"
             "    def traffic_error(self, reason): print('counted', reason)\n"
             "async def main():\n"
             "    try:\n"
             "        await open_conntrack(None, clock=SystemClock(), errors=E())\n"
             "    except TrafficError as error:\n"
             "        print('error', error.reason, error)\n"
             "asyncio.run(main())\n")
    result = subprocess.run([*without_capabilities(), sys.executable, "-c", probe], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "counted permission" in result.stdout
    assert "error permission" in result.stdout
    assert "CAP_NET_ADMIN" in result.stdout


async def test_garbage_and_truncated_events_are_counted_and_the_next_one_read() -> None:
    errors = Errors()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    dumps, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dumps.setblocking(False)  # the count of open connections it asks for is never answered
    source = ConntrackSource(ours, dumps, clock=SystemClock(), errors=errors,
                             closing_timeouts={})
    book = TrafficBook(window=60.0, observers=Recorder(), listener=source)
    followed = episode(POD)
    book.started(followed, 0.0)
    book.stopped(followed)
    good = _event(POD, 8080)
    task = asyncio.create_task(source.run(book))
    try:
        theirs.send(b"\x01\x02\x03")  # not even a header
        theirs.send(good[:40])  # a header whose length overruns the datagram
        theirs.send(good)
        traffic = followed.traffic
        assert traffic is not None
        await until(lambda: bool(traffic.connections), "the good event")
    finally:
        await cancel_and_wait(task)
        for sock in (ours, theirs, dumps, _):
            sock.close()
    assert errors.reasons == ["garbage", "garbage"]
    assert traffic.connections == {("local", "stopped"): 1}


def _event(ip: str, port: int) -> bytes:
    """A NEW event as the kernel writes it: 172.30.0.10:80 translated to ``ip``:``port``."""
    def tuple_(src: str, dst: str, sport: int, dport: int) -> bytes:
        addresses = (attribute(1, socket.inet_aton(src)) + attribute(2, socket.inet_aton(dst)))
        ports = (attribute(1, bytes([6])) + attribute(2, sport.to_bytes(2, "big"))
                 + attribute(3, dport.to_bytes(2, "big")))
        return attribute(1, addresses, nested=True) + attribute(2, ports, nested=True)
    body = (bytes([2, 0, 0, 0]) + attribute(1, tuple_("10.250.0.2", "172.30.0.10", 40000, 80),
                                            nested=True)
            + attribute(2, tuple_(ip, "10.250.0.2", port, 40000), nested=True))
    return HEADER.pack(HEADER.size + len(body), conntrack.MSG_NEW, 0, 0, 0) + body


async def test_the_filter_matches_address_and_port_in_both_families(netns: Netns) -> None:
    netns.run("ip", "link", "set", "lo", "up")
    netns.nft("add table inet t\nadd chain inet t c { type filter hook output priority 0 ; }\n"
              "add rule inet t c ct state new counter\n")
    source = await open_conntrack(netns.name, clock=SystemClock(), errors=Errors())
    book = TrafficBook(window=60.0, observers=Recorder(), listener=source)
    followed = {(ip, port): episode(ip, port) for ip, port in (("127.0.0.1", 8081),
                                                                 ("::1", 8083))}
    for e in followed.values():
        book.started(e, 0.0)
        book.stopped(e)
    task = asyncio.create_task(source.run(book))
    sockets = Sockets(netns.name)
    try:
        await until(lambda: source.filtered == set(followed), "filter installed")
        # Refused attempts are new flows too; the followed ones last, so the others, had they
        # passed the filter, would have been read first.
        for ip, port in (("127.0.0.1", 8082), ("::1", 8084), ("127.0.0.2", 8081),
                         ("127.0.0.1", 8081), ("::1", 8083)):
            outcome, _ = await connect(sockets, ip, port, SystemClock())
            assert outcome == "refused"
        await until(lambda: all(e.traffic is not None and e.traffic.connections
                                for e in followed.values()), "both followed connections")
        assert source.datagrams == 2
    finally:
        sockets.close()
        await cancel_and_wait(task)
        source.close()


async def test_too_many_endpoints_for_the_kernel_filter_let_all_through_and_count_right(
        topology: Topology) -> None:
    for ip in (POD, OTHER):
        await topology.pod(ip)
    source = await open_conntrack(topology.node.name, clock=SystemClock(), errors=Errors())
    many = [f"10.{190 + i // 250}.{i % 250}.1" for i in range(800)]
    assert conntrack.endpoint_filter((ip, 8080) for ip in many) is None  # > 4,096 insns
    async with following(source, POD, *many) as (followed, *_):
        assert source.coarse
        assert await topology.request(topology.client, OTHER) == "refused"
        assert await topology.request(topology.client, POD) == "refused"
        traffic = followed.traffic
        assert traffic is not None
        await until(lambda: bool(traffic.connections), "the followed connection")
        assert source.datagrams >= 2  # the other one reached the decoder, and was dropped
        assert traffic.connections == {("forwarded", "stopped"): 1}
