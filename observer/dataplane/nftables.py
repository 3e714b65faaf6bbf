"""kube-proxy's nftables mode, from ``nft -a list table ip|ip6 kube-proxy`` (full reads, parsed
line by line as the text streams in) and ``nft -j monitor`` events (JSON, one change a line).

Layout (``pkg/proxy/nftables/proxier.go``; real rule sets in ``TestOverallNFTablesRules``):
the ``service-ips`` map sends ``clusterIP . proto . port`` to the chain
``service-<h8>-<ns>/<name>/<proto>/<port>`` (Cluster policy) or ``local-...`` (Local policy);
that chain picks an endpoint with ``numgen random mod N vmap { 0 : goto endpoint-..., ... }``
(plus ``ip saddr @affinity-... goto endpoint-...`` rules for session affinity). An endpoint
chain ``endpoint-<h8>-<ns>/<name>/<proto>/<port>__<ip>/<port>`` DNATs to the pod.

A removed endpoint leaves the vmap at once, but its chain is only flushed and deleted on a later
sync: selection is membership of the vmap (or an affinity goto), never the chain's existence.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from observer.dataplane.model import (
    DataplaneParseError,
    DataplaneSnapshot,
    ProgrammedEndpoint,
    ProgrammedService,
)

POLICY_PREFIXES = {"service-": "cluster", "local-": "local"}
ENDPOINT_PREFIX = "endpoint-"


def service_from_chain(chain: str) -> tuple[str, str] | None:
    """``service-ULMVA6XW-ns1/svc1/tcp/p80`` -> (``ns1/svc1:p80``, ``tcp``)."""
    _, _, rest = chain.partition("-")
    _, _, base = rest.partition("-")
    base = base.split("__", 1)[0]
    parts = base.split("/")
    if len(parts) != 4 or not parts[0] or not parts[1]:
        return None
    namespace, name, protocol, port = parts
    return (f"{namespace}/{name}:{port}" if port else f"{namespace}/{name}", protocol)


def endpoint_from_chain(chain: str) -> tuple[str, int] | None:
    """``endpoint-...__10.180.0.1/80`` -> (``10.180.0.1``, 80); IPv6 colons are dots there."""
    _, sep, endpoint = chain.rpartition("__")
    host, slash, port = endpoint.rpartition("/")
    if not sep or not slash or not port.isdigit():
        return None
    for candidate in (host, host.replace(".", ":")):
        try:
            return str(ipaddress.ip_address(candidate)), int(port)
        except ValueError:
            continue
    return None


def targets(node: Any) -> Iterator[str]:
    """Every goto/jump target inside a rule's expression list, vmaps included."""
    if isinstance(node, dict):
        for verb in ("goto", "jump"):
            inner = node.get(verb)
            if isinstance(inner, dict) and isinstance(inner.get("target"), str):
                yield inner["target"]
        for value in node.values():
            yield from targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from targets(value)


def _dnat(expr: Any) -> tuple[str, int] | None:
    for item in expr if isinstance(expr, list) else []:
        dnat = item.get("dnat") if isinstance(item, dict) else None
        if isinstance(dnat, dict) and isinstance(dnat.get("addr"), str) and isinstance(
                dnat.get("port"), int):
            return dnat["addr"], dnat["port"]
    return None


@dataclass
class ChainState:
    """Rules of the chains that matter, by handle: what the event stream updates."""

    policy_rules: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    endpoint_chains: dict[str, tuple[str, int] | None] = field(default_factory=dict)
    cluster_ips: dict[str, str] = field(default_factory=dict)  # policy chain -> cluster IP
    touched: set[str] = field(default_factory=set)  # policy chains changed since last delta
    by_service: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def _index(self, chain: str) -> None:
        identity = service_from_chain(chain)
        if identity is not None:
            self.by_service.setdefault(identity, set()).add(chain)

    def take_touched(self) -> set[tuple[str, str]]:
        """The service ports whose policy chains changed since the last call."""
        touched = {i for i in map(service_from_chain, self.touched) if i is not None}
        self.touched.clear()
        return touched

    def selected_by_service(self, identity: tuple[str, str]) -> set[tuple[str, int]]:
        """The endpoints a service port's policy chains (both paths) select now."""
        chosen: set[tuple[str, int]] = set()
        for chain in self.by_service.get(identity, ()):
            for target in self.selected_chains(chain):
                endpoint = self.endpoint_chains.get(target) or endpoint_from_chain(target)
                if endpoint is not None:
                    chosen.add(endpoint)
        return chosen

    def add_chain(self, name: str) -> None:
        if name.startswith(tuple(POLICY_PREFIXES)) and "/" in name:
            self.policy_rules.setdefault(name, {})
            self._index(name)
        elif name.startswith(ENDPOINT_PREFIX) and "/" in name:
            self.endpoint_chains.setdefault(name, endpoint_from_chain(name))

    def delete_chain(self, name: str) -> None:
        if self.policy_rules.pop(name, None) is not None:
            self.touched.add(name)
            identity = service_from_chain(name)
            if identity is not None:
                self.by_service.get(identity, set()).discard(name)
        self.endpoint_chains.pop(name, None)

    def add_rule(self, chain: str, handle: int, expr: Any) -> None:
        """A rule as nft's JSON (monitor events) gives it."""
        self.add_parsed_rule(chain, handle, list(targets(expr)), _dnat(expr))

    def add_parsed_rule(self, chain: str, handle: int, goto: list[str],
                        dnat: tuple[str, int] | None) -> None:
        if chain in self.policy_rules or (chain.startswith(tuple(POLICY_PREFIXES))
                                          and "/" in chain):
            self.touched.add(chain)
            if chain not in self.policy_rules:
                self._index(chain)
            self.policy_rules.setdefault(chain, {})[handle] = [
                t for t in goto if t.startswith(ENDPOINT_PREFIX)]
        elif chain.startswith(ENDPOINT_PREFIX) and "/" in chain:
            if dnat is not None:
                self.endpoint_chains[chain] = dnat
            else:
                self.endpoint_chains.setdefault(chain, endpoint_from_chain(chain))

    def delete_rule(self, chain: str, handle: int) -> None:
        rules = self.policy_rules.get(chain)
        if rules is not None:
            rules.pop(handle, None)
            self.touched.add(chain)

    def selected_chains(self, policy_chain: str) -> set[str]:
        return {t for targets in self.policy_rules.get(policy_chain, {}).values()
                for t in targets}

    def snapshot(self) -> DataplaneSnapshot:
        services: dict[tuple[str, str], dict[str, dict[tuple[str, int], bool]]] = {}
        cluster_ips: dict[tuple[str, str], str] = {}
        for chain in self.policy_rules:
            identity = service_from_chain(chain)
            if identity is None:
                continue
            path = POLICY_PREFIXES[chain.split("-", 1)[0] + "-"]
            paths = services.setdefault(identity, {"cluster": {}, "local": {}})
            for target in self.selected_chains(chain):
                endpoint = self.endpoint_chains.get(target) or endpoint_from_chain(target)
                if endpoint is not None:
                    paths[path][endpoint] = True
            if chain in self.cluster_ips:
                cluster_ips[identity] = self.cluster_ips[chain]
        for chain, endpoint in self.endpoint_chains.items():
            identity = service_from_chain(chain)
            if identity is None or endpoint is None:
                continue
            paths = services.setdefault(identity, {"cluster": {}, "local": {}})
            if not any(endpoint in p for p in paths.values()):
                paths["cluster"][endpoint] = False  # a chain no vmap points to any more
        result = []
        for (service, protocol), paths in services.items():
            result.append(ProgrammedService(
                service=service, protocol=protocol,
                cluster_ip=cluster_ips.get((service, protocol)),
                cluster=tuple(ProgrammedEndpoint(ip, port, sel)
                              for (ip, port), sel in paths["cluster"].items()),
                local=tuple(ProgrammedEndpoint(ip, port, sel)
                            for (ip, port), sel in paths["local"].items())))
        return DataplaneSnapshot("nftables", None, tuple(result))


CHAIN_LINE = re.compile(r"^\tchain (\S+) \{")
RULE_HANDLE = re.compile(r" # handle (\d+)$")
JUMP_TARGET = re.compile(r"\b(?:goto|jump) ([^\s,}]+)")
_DNAT = re.compile(r"\bdnat (?:ip6? )?to (\[[^\]]+\]|[0-9.]+):(\d+)")
_ELEMENT = re.compile(r"([0-9a-fA-F.:]+) \. \w+ \. \d+ : goto ([^\s,}]+)")


class NftTextParser:
    """``nft -a list table`` output, fed one line at a time into a ``ChainState``."""

    def __init__(self) -> None:
        self.state = ChainState()
        self._chain: str | None = None
        self._in_service_ips = False
        self._opened = self._closed = False

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        if not self._opened:
            if not line.startswith("table "):
                raise DataplaneParseError(f"not nft list output: {line[:80]!r}")
            self._opened = True
            return
        if line == "}":
            self._closed = True
            return
        if self._closed and line.strip():
            raise DataplaneParseError("output continues after the table ended")
        if m := CHAIN_LINE.match(line):
            self._chain, self._in_service_ips = m.group(1), False
            self.state.add_chain(self._chain)
        elif line.startswith("\tmap service-ips "):
            self._chain, self._in_service_ips = None, True
        elif line.startswith("\t}"):
            self._chain, self._in_service_ips = None, False
        elif self._in_service_ips:
            for ip, target in _ELEMENT.findall(line):
                if target.startswith(tuple(POLICY_PREFIXES)):
                    self.state.cluster_ips[target] = ip
        elif self._chain is not None and line.startswith("\t\t"):
            handle = RULE_HANDLE.search(line)
            if handle is None:
                return  # a chain's own properties (type, hook, policy, comment), not a rule
            dnat = _DNAT.search(line)
            self.state.add_parsed_rule(
                self._chain, int(handle.group(1)), JUMP_TARGET.findall(line),
                (dnat.group(1).strip("[]"), int(dnat.group(2))) if dnat else None)

    def finish(self) -> ChainState:
        if self._opened and not self._closed:
            raise DataplaneParseError("the table never closed: the output is truncated")
        self.state.take_touched()
        return self.state


def parse_nft_text(text: str) -> DataplaneSnapshot:
    """Parse ``nft -a list table <family> kube-proxy`` output into the common model."""
    parser = NftTextParser()
    for line in text.splitlines():
        parser.feed(line)
    return parser.finish().snapshot()
