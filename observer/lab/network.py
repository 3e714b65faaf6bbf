"""The lab's wires, real: a fabric namespace with a bridge joining the nodes' namespaces (and
holding the ingress-like client), and every pod in a namespace of its own on its node.

    fabric (br0 192.168.0.250: the ingress)
      ├── veth ── node-1 (192.168.0.1; kube-proxy's rules; routes 10.102/16 via .2, …)
      │             ├── veth ── pod 10.101.0.2 (a real server)
      │             └── …
      ├── veth ── node-2 (192.168.0.2) …
      └── …

A pod has a /32 and a device route to its node, which answers its ARP (``proxy_arp``) at once
(``proxy_delay`` 0), as Calico-style CNIs do — the kernel's default holds a proxied answer to a
broadcast request up to 0.8 s (``arp_process`` in ``net/ipv4/arp.c`` queues it with
``pneigh_enqueue``; Calico's felix and Weave set it to 0 on their interfaces): a new pod's first
answers to each client would wait that long, which the lab saw as connections still being set
up half a second after their SYN. A node routes the other nodes' pod CIDRs
(``10.(100+i)/16``, what the lab's kubelet assigns) over the fabric, and service addresses
(``172.30/16``) out of its fabric interface, where kube-proxy's DNAT has rewritten them before
they leave. Traffic between pods
of two nodes really crosses both nodes' netfilter. Each namespace is set up by one shell script
(one process) of ``ip``/``sysctl`` commands; all are removed with the lab's namespaces.
"""

from __future__ import annotations

import json

from observer.dataplane.commands import CommandRunner
from observer.lab.netns import Namespaces

FABRIC_ADDRESS = "192.168.0.250"  # the ingress-like client's source address
SERVICE_CIDR = "172.30.0.0/16"
_TABLE = "lab"


def node_address(index: int) -> str:
    return f"192.168.0.{index + 1}"


def pod_cidr(index: int) -> str:
    return f"10.{100 + index}.0.0/16"


class LabNetwork:
    def __init__(self, namespaces: Namespaces, nodes: int) -> None:
        self.namespaces = namespaces
        self.nodes = nodes
        self.fabric = ""
        self.pods: dict[str, str] = {}  # pod address -> its namespace
        self._pod_count = 0

    async def _script(self, lines: list[str]) -> None:
        await CommandRunner().run(["sh", "-ec", "\n".join(lines)])

    async def start(self) -> None:
        self.fabric = await self.namespaces.create("fabric")
        f = self.fabric
        await self._script([
            f"ip -n {f} link set lo up",
            f"ip -n {f} link add br0 type bridge",
            f"ip -n {f} addr add {FABRIC_ADDRESS}/24 dev br0",
            f"ip -n {f} link set br0 up",
            *(f"ip -n {f} route add {pod_cidr(i)} via {node_address(i)}"
              for i in range(self.nodes))])

    async def join(self, index: int, netns: str) -> None:
        """Node ``index`` (its namespace made) on the fabric, routing to the others."""
        f, port = self.fabric, f"n{index}"
        await self._script([
            f"ip -n {netns} link set lo up",
            f"ip netns exec {netns} sysctl -qw net.ipv4.ip_forward=1",
            # Conntrack events carry the kernel's time (Linux >= 6.14): the agents time each
            # connection when it happened, not when their busy event loop read it.
            f"ip netns exec {netns} sysctl -qw net.netfilter.nf_conntrack_timestamp=1",
            f"ip -n {f} link add {port} type veth peer name fabric0 netns {netns}",
            f"ip -n {f} link set {port} master br0 up",
            f"ip -n {netns} addr add {node_address(index)}/24 dev fabric0",
            f"ip -n {netns} link set fabric0 up",
            f"ip -n {netns} route add {SERVICE_CIDR} dev fabric0",
            *(f"ip -n {netns} route add {pod_cidr(j)} via {node_address(j)}"
              for j in range(self.nodes) if j != index)])

    async def add_pod(self, node_netns: str, ip: str) -> str:
        """A pod's namespace with address ``ip``, wired to its node; its name."""
        self._pod_count += 1
        number = self._pod_count  # pods are made concurrently
        netns = await self.namespaces.create(f"pod{number}")
        veth = f"p{number}"
        await self._script([
            f"ip -n {netns} link set lo up",
            f"ip -n {node_netns} link add {veth} type veth peer name eth0 netns {netns}",
            f"ip netns exec {node_netns} sysctl -qw net.ipv4.conf.{veth}.proxy_arp=1 "
            f"net.ipv4.neigh.{veth}.proxy_delay=0",
            f"ip -n {node_netns} link set {veth} up",
            f"ip -n {node_netns} route add {ip}/32 dev {veth}",
            f"ip -n {netns} addr add {ip}/32 dev eth0",
            f"ip -n {netns} link set eth0 up",
            f"ip -n {netns} route add default dev eth0",
            f"ip netns exec {netns} nft -f - <<'EOF'\n{self._syn_counters()}EOF"])
        self.pods[ip] = netns
        return netns

    def _syn_counters(self) -> str:
        """In the pod, the source (address, port) of every connection attempt (SYN) that
        reached it, whether anything listened: the lab's truth of which pod a refused
        attempt through a service address reached (``attempts``)."""
        return "\n".join([
            f"add table ip {_TABLE}",
            f"add set ip {_TABLE} syns {{ type ipv4_addr . inet_service ; flags dynamic ; "
            "size 262144 ; }",
            f"add chain ip {_TABLE} in {{ type filter hook input priority 0 ; }}",
            f"add rule ip {_TABLE} in tcp flags & (syn | ack) == syn "
            f"add @syns {{ ip saddr . tcp sport }}"]) + "\n"

    async def attempts(self, ip: str) -> set[tuple[str, int]]:
        """The (source address, port) of each connection attempt that reached the pod."""
        out = await CommandRunner(netns=self.pods[ip]).run(
            ["nft", "-j", "list", "set", "ip", _TABLE, "syns"])
        found: set[tuple[str, int]] = set()
        for item in json.loads(out).get("nftables", []):
            for element in (item.get("set") or {}).get("elem") or []:
                value = element.get("elem", {}).get("val", element) if isinstance(
                    element, dict) else element
                address, port = value["concat"]
                found.add((str(address), int(port)))
        return found
