"""kube-proxy's rule layouts, written for a set of service ports: what the lab's kube-proxy
emulation programs and what the dataplane benchmark loads. The layouts are those of
``TestOverallIPTablesRules`` / ``TestOverallNFTablesRules`` (see tests/fixtures/dataplane), with
kube-proxy's chain-name hashes.

Simplification: a service port whose endpoints are all gone keeps its (now empty) chains here,
where kube-proxy would replace them with a reject rule; for "is this endpoint selected" the two
are the same.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from observer.dataplane.iptables import endpoint_hash, service_hash
from observer.values import join_host_port


@dataclass(frozen=True)
class ServicePortRules:
    namespace: str
    name: str
    port_name: str
    cluster_ip: str
    port: int
    endpoints: tuple[tuple[str, int], ...]  # selected, in order
    protocol: str = "tcp"
    # Serving and terminating (KEP-1669): kube-proxy's rules leave them out unless nothing
    # is Ready; Cilium keeps them as terminating backends.
    terminating: tuple[tuple[str, int], ...] = ()

    @property
    def port_name_string(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base


def _h8(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:8]


# --- nftables ---------------------------------------------------------------------------------

def nft_service_chain(s: ServicePortRules) -> str:
    base = f"{s.namespace}/{s.name}/{s.protocol}/{s.port_name}"
    return f"service-{_h8(base)}-{base}"


def nft_endpoint_chain(s: ServicePortRules, ip: str, port: int) -> str:
    host = ip.replace(":", ".")
    base = f"{s.namespace}/{s.name}/{s.protocol}/{s.port_name}__{host}/{port}"
    return f"endpoint-{_h8(base)}-{base}"


def nft_table(family: str = "ip") -> list[str]:
    """The table, its service map, and the hooks that send traffic through it (nat
    prerouting and output, as kube-proxy's ``nat-prerouting``/``nat-output`` do)."""
    addr = "ipv4_addr" if family == "ip" else "ipv6_addr"
    lines = [f"add table {family} kube-proxy",
             f"add map {family} kube-proxy service-ips {{ type {addr} . inet_proto . "
             "inet_service : verdict ; }",
             f"add chain {family} kube-proxy services",
             f"add rule {family} kube-proxy services {family} daddr . meta l4proto . th dport "
             "vmap @service-ips"]
    for hook in ("prerouting", "output"):
        lines += [f"add chain {family} kube-proxy nat-{hook} {{ type nat hook {hook} priority "
                  "-100 ; }", f"add rule {family} kube-proxy nat-{hook} jump services"]
    return lines


def nft_sync(services: Iterable[ServicePortRules], *, known_endpoint_chains: set[str],
             family: str = "ip", first: bool = False) -> list[str]:
    """One transaction: (re)write these service ports' chains; endpoint chains are created
    when first needed and, as kube-proxy does, left behind when no longer used."""
    lines = nft_table(family) if first else []
    for s in services:
        chain = nft_service_chain(s)
        if first:
            lines.append(f"add chain {family} kube-proxy {chain}")
            lines.append(f"add element {family} kube-proxy service-ips {{ {s.cluster_ip} . "
                         f"{s.protocol} . {s.port} : goto {chain} }}")
        for ip, port in s.endpoints:
            endpoint = nft_endpoint_chain(s, ip, port)
            if endpoint not in known_endpoint_chains:
                known_endpoint_chains.add(endpoint)
                lines.append(f"add chain {family} kube-proxy {endpoint}")
                lines.append(f"add rule {family} kube-proxy {endpoint} meta l4proto "
                             f"{s.protocol} dnat to {join_host_port(ip, port)}")
        lines.append(f"flush chain {family} kube-proxy {chain}")
        if s.endpoints:
            entries = " , ".join(f"{i} : goto {nft_endpoint_chain(s, ip, port)}"
                                 for i, (ip, port) in enumerate(s.endpoints))
            lines.append(f"add rule {family} kube-proxy {chain} numgen random mod "
                         f"{len(s.endpoints)} vmap {{ {entries} }}")
    return lines


# --- iptables ---------------------------------------------------------------------------------

def iptables_sync(services: Iterable[ServicePortRules], *, previous: dict[str, set[str]],
                  first: bool = False) -> list[str]:
    """One ``iptables-restore --noflush`` input: each service port's SVC chain rewritten, the
    SEP chains of its endpoints declared and filled, stale SEP chains deleted — in the same
    restore, as kube-proxy does. ``previous`` maps a service port to its SEP chains."""
    declare, rules, delete = [], [], []
    if first:  # the chains, and the hooks that send traffic through them
        declare += [":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]"]
        rules += ["-A PREROUTING -j KUBE-SERVICES", "-A OUTPUT -j KUBE-SERVICES"]
    for s in services:
        name, proto = s.port_name_string, s.protocol
        svc = f"KUBE-SVC-{service_hash(name, proto)}"
        declare.append(f":{svc} - [0:0]")
        if first:
            rules.append(f'-A KUBE-SERVICES -m comment --comment "{name} cluster IP" -m {proto} '
                         f"-p {proto} -d {s.cluster_ip} --dport {s.port} -j {svc}")
        current = set()
        for i, (ip, port) in enumerate(s.endpoints):
            sep = f"KUBE-SEP-{endpoint_hash(name, proto, ip, port)}"
            current.add(sep)
            declare.append(f":{sep} - [0:0]")
            rules.append(f"-A {sep} -m comment --comment {name} -s {ip} -j KUBE-MARK-MASQ")
            rules.append(f"-A {sep} -m comment --comment {name} -m {proto} -p {proto} -j DNAT "
                         f"--to-destination {join_host_port(ip, port)}")
            remaining = len(s.endpoints) - i
            statistic = (f"-m statistic --mode random --probability {1 / remaining:.10f} "
                         if remaining > 1 else "")
            rules.append(f'-A {svc} -m comment --comment "{name} -> {join_host_port(ip, port)}" '
                         f"{statistic}-j {sep}")
        stale = sorted(previous.get(name, set()) - current)
        declare += [f":{sep} - [0:0]" for sep in stale]  # a chain must be empty to go
        delete += [f"-X {sep}" for sep in stale]
        previous[name] = current
    return ["*nat", *declare, *rules, *delete, "COMMIT"]
