"""The traffic tests' world, made of the lab's own parts (``observer/lab/network.py``,
``apps.py``, ``clients.py``): a node namespace (kube-proxy's rules go there), pods in
namespaces of their own with real servers, and the fabric namespace as the remote client —
another node, an ingress — whose connections arrive already addressed to the pods.

    fabric (192.168.0.250) ── node (192.168.0.1) ── pod (10.100.0.N)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from observer.clock import SystemClock
from observer.lab.apps import PodRuntime, PodServer, Sockets
from observer.lab.clients import Connection, Outcome, connect, request
from observer.lab.netns import Namespaces
from observer.lab.network import LabNetwork, node_address
from observer.lab.rules import ServicePortRules, nft_sync
from tests.netns import Netns

NODE_ADDRESS = node_address(0)
PORT = 8080


@dataclass
class Topology:
    namespaces: Namespaces
    network: LabNetwork
    node: Netns
    client: Netns  # the fabric: a remote client
    runtime: PodRuntime
    _sockets: dict[str, Sockets] = field(default_factory=dict)

    @classmethod
    async def make(cls) -> Topology:
        namespaces = Namespaces()
        try:
            network = LabNetwork(namespaces, nodes=1)
            await network.start()
            node = await namespaces.create("node-1")
            await network.join(0, node)
        except BaseException:
            await namespaces.close()
            raise
        return cls(namespaces, network, Netns(node), Netns(network.fabric),
                   PodRuntime(network, node, PORT))

    async def pod(self, ip: str) -> None:
        """A pod with nothing listening: every attempt is refused."""
        await self.network.add_pod(self.node.name, ip)

    async def serve(self, ip: str) -> PodServer:
        """A pod whose app answers each request (``exit()``: the process is gone)."""
        await self.runtime.start(ip, ip, "hasty")
        return self.runtime.servers[ip]

    def sockets(self, netns: Netns) -> Sockets:
        if netns.name not in self._sockets:
            self._sockets[netns.name] = Sockets(netns.name)
        return self._sockets[netns.name]

    async def connect(self, netns: Netns, ip: str, port: int = PORT) -> Connection | Outcome:
        conn, _ = await connect(self.sockets(netns), ip, port, SystemClock())
        return conn

    async def request(self, netns: Netns, ip: str, port: int = PORT) -> Outcome:
        """One request on a new connection from ``netns``."""
        outcome, _, _, _ = await request(self.sockets(netns), ip, port, SystemClock())
        return outcome

    def program(self, services: list[ServicePortRules], *, known: set[str],
                first: bool = False) -> None:
        """kube-proxy's nftables rules for ``services`` in the node (one transaction), with
        the hooks that send service traffic through them."""
        self.node.nft("\n".join(nft_sync(services, known_endpoint_chains=known,
                                         first=first)) + "\n")

    async def close(self) -> None:
        await self.runtime.close()
        for sockets in self._sockets.values():
            sockets.close()
        await self.namespaces.close()
