"""kube-proxy's nftables mode, from ``nft -j list table ip|ip6 kube-proxy``.

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
import json
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
        if chain in self.policy_rules or (chain.startswith(tuple(POLICY_PREFIXES))
                                          and "/" in chain):
            self.touched.add(chain)
            if chain not in self.policy_rules:
                self._index(chain)
            self.policy_rules.setdefault(chain, {})[handle] = [
                t for t in targets(expr) if t.startswith(ENDPOINT_PREFIX)]
        elif chain.startswith(ENDPOINT_PREFIX) and "/" in chain:
            dnat = _dnat(expr)
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


def load_json(text: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise DataplaneParseError(f"nft output is not JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("nftables"), list):
        raise DataplaneParseError("nft output has no 'nftables' list")
    items: list[dict[str, Any]] = document["nftables"]
    if not all(isinstance(item, dict) and len(item) == 1 for item in items):
        raise DataplaneParseError("nft output has malformed objects")
    return items


def apply_objects(state: ChainState, items: list[dict[str, Any]]) -> None:
    """Fold listed objects (``nft -j list``) into the state."""
    for item in items:
        (kind, body), = item.items()
        if not isinstance(body, dict):
            raise DataplaneParseError(f"nft {kind} object is not a JSON object")
        if kind == "chain" and isinstance(body.get("name"), str):
            state.add_chain(body["name"])
        elif kind == "rule":
            chain, handle = body.get("chain"), body.get("handle")
            if not isinstance(chain, str) or not isinstance(handle, int):
                raise DataplaneParseError("nft rule without chain or handle")
            state.add_rule(chain, handle, body.get("expr"))
        elif kind == "map" and body.get("name") == "service-ips":
            _service_ips(state, body.get("elem") or [])


def _service_ips(state: ChainState, elements: Any) -> None:
    for element in elements if isinstance(elements, list) else []:
        if not (isinstance(element, list) and len(element) == 2):
            continue
        key, verdict = element
        concat = key.get("concat") if isinstance(key, dict) else None
        goto = list(targets(verdict))
        if (isinstance(concat, list) and concat and isinstance(concat[0], str) and goto
                and goto[0].startswith(tuple(POLICY_PREFIXES))):
            state.cluster_ips[goto[0]] = concat[0]


def parse_nft_json(text: str) -> DataplaneSnapshot:
    """Parse ``nft -j list table <family> kube-proxy`` output into the common model."""
    state = ChainState()
    apply_objects(state, load_json(text))
    return state.snapshot()
