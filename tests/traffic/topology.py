"""A node, its pods and a remote client, as network namespaces joined by veths, with real TCP
servers in the pods and real clients: what the traffic tests measure the agent against.

    client (10.250.0.2) ── veth ── node (10.250.0.1; kube-proxy's rules) ── veth ── pod (10.180.0.N)

The node routes between its veths (``ip_forward``); each pod has a /32 and a device route to
its node, which answers its ARP (``proxy_arp``), as Calico-style CNIs do. Servers and clients
run in this process: their sockets are made inside the namespaces by a short-lived thread
(``in_namespace``), then driven by the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from typing import Literal

from observer.dataplane.netlink import in_namespace
from observer.lab.rules import ServicePortRules, nft_sync
from observer.tasks import cancel_and_wait
from tests.netns import Netns

Outcome = Literal["ok", "refused", "reset", "timeout"]
NODE_CLIENT_ADDRESS, CLIENT_ADDRESS = "10.250.0.1", "10.250.0.2"


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, timeout=30, capture_output=True)


@dataclass
class Server:
    """A pod's server: answers each line with its address; ``stop`` is a process exiting."""

    ip: str
    port: int
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.add(writer)
        try:
            while await reader.readline():
                writer.write(f"{self.ip}\n".encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.writers.discard(writer)
            self.handlers.discard(task)
            writer.close()

    async def stop(self) -> None:
        """Every socket closed at once, as the kernel does when the process exits."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.close()
        await cancel_and_wait(*self.handlers)


@dataclass
class Topology:
    node: Netns
    client: Netns
    pods: dict[str, Netns]
    servers: dict[str, Server] = field(default_factory=dict)

    async def serve(self, ip: str, port: int) -> Server:
        def listening() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
            sock.listen(128)
            sock.setblocking(False)
            return sock

        server = Server(ip, port)
        server.server = await asyncio.start_server(
            server.handle, sock=await in_namespace(self.pods[ip].name, listening))
        self.servers[ip] = server
        return server

    async def close(self) -> None:
        for server in self.servers.values():
            await server.stop()


async def request(netns: Netns, ip: str, port: int, *, patience: float = 10.0
                  ) -> tuple[Outcome, str]:
    """One request on a new connection from ``netns``: its outcome and who answered."""
    sock = await open_connection(netns, ip, port, patience=patience)
    if isinstance(sock, str):
        return sock, ""
    reader, writer = sock
    try:
        return await exchange(reader, writer, patience=patience)
    finally:
        writer.close()


Connected = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_connection(netns: Netns, ip: str, port: int, *, patience: float = 10.0
                          ) -> Connected | Outcome:
    def made() -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    sock = await in_namespace(netns.name, made)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (ip, port)),
                               patience)
    except ConnectionRefusedError:
        sock.close()
        return "refused"
    except TimeoutError:
        sock.close()
        return "timeout"
    except OSError as error:
        sock.close()
        return "reset" if error.errno == errno.ECONNRESET else "refused"
    return await asyncio.open_connection(sock=sock)


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                   patience: float = 10.0) -> tuple[Outcome, str]:
    try:
        writer.write(b"GET\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), patience)
    except ConnectionResetError:
        return "reset", ""
    except TimeoutError:
        return "timeout", ""
    if not line:
        return "reset", ""  # closed under it: the request got no answer
    return "ok", line.decode().strip()


def make_topology(pod_ips: list[str], cleanup: contextlib.ExitStack) -> Topology:
    """Namespaces and links; every one is removed when ``cleanup`` closes (a pod's veth goes
    with its namespace)."""
    tag = uuid.uuid4().hex[:6]

    def netns(role: str) -> Netns:
        name = f"obs-{role}-{tag}"
        _ip("netns", "add", name)
        cleanup.callback(subprocess.run, ["ip", "netns", "del", name], check=False, timeout=30)
        return Netns(name)

    node, client = netns("node"), netns("client")
    node.run("ip", "link", "set", "lo", "up")
    node.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    _ip("link", "add", f"c{tag}", "netns", node.name, "type", "veth", "peer", "name", "eth0",
        "netns", client.name)
    node.run("ip", "addr", "add", f"{NODE_CLIENT_ADDRESS}/24", "dev", f"c{tag}")
    node.run("ip", "link", "set", f"c{tag}", "up")
    client.run("ip", "addr", "add", f"{CLIENT_ADDRESS}/24", "dev", "eth0")
    client.run("ip", "link", "set", "eth0", "up")
    client.run("ip", "link", "set", "lo", "up")
    client.run("ip", "route", "add", "default", "via", NODE_CLIENT_ADDRESS)
    pods = {}
    for n, ip in enumerate(pod_ips):
        pod = netns(f"pod{n}")
        veth = f"p{n}{tag}"
        _ip("link", "add", veth, "netns", node.name, "type", "veth", "peer", "name", "eth0",
            "netns", pod.name)
        node.run("ip", "link", "set", veth, "up")
        node.run("sysctl", "-qw", f"net.ipv4.conf.{veth}.proxy_arp=1")
        node.run("ip", "route", "add", f"{ip}/32", "dev", veth)
        pod.run("ip", "addr", "add", f"{ip}/32", "dev", "eth0")
        pod.run("ip", "link", "set", "eth0", "up")
        pod.run("ip", "link", "set", "lo", "up")
        pod.run("ip", "route", "add", "default", "dev", "eth0")
        pods[ip] = pod
    return Topology(node, client, pods)


def program(topology: Topology, services: list[ServicePortRules], *,
            known: set[str], first: bool = False) -> None:
    """kube-proxy's nftables rules for ``services`` in the node (one transaction), with the
    hooks that send service traffic through them (nat prerouting and output)."""
    lines = nft_sync(services, known_endpoint_chains=known, first=first)
    if first:  # the route the service addresses take before DNAT picks a pod
        topology.node.run("ip", "route", "add", "172.30.0.0/16", "dev", "lo")
    topology.node.nft("\n".join(lines) + "\n")
