"""kube-proxy's iptables mode, as ``iptables-save -t nat`` prints it (either backend).

Layout (``pkg/proxy/iptables/proxier.go``; real rule sets in ``TestOverallIPTablesRules``):
``KUBE-SERVICES`` jumps to ``KUBE-SVC-<h>`` (Cluster policy) or ``KUBE-SVL-<h>`` (Local policy)
for a cluster IP, to ``KUBE-EXT-<h>``/``KUBE-FW-<h>`` for external IPs; SVC/SVL chains jump
(with ``-m statistic`` probabilities, and ``-m recent`` rules for session affinity) to
``KUBE-SEP-<e>`` chains that DNAT to ``ip:port``. An endpoint is selected while an SVC/SVL
chain jumps to its SEP chain.

Names: ``<h> = base32(sha256(svcPortName + protocol))[:16]`` and
``<e> = base32(sha256(svcPortName + protocol + "ip:port"))[:16]``. In "large cluster mode"
(> 1000 endpoints) kube-proxy drops the comments on SVC and SEP rules; the service's name is
still in the ``KUBE-SERVICES`` comment, and an unreferenced SEP chain is matched to its service
by recomputing the hash over candidate names (the agent's EndpointSlices supply them).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from observer.dataplane.model import (
    Backend,
    DataplaneParseError,
    DataplaneSnapshot,
    ProgrammedEndpoint,
    ProgrammedService,
    split_host_port,
)
from observer.episodes.model import EndpointKey, ServicePort

_JUMP = re.compile(r" (?:-j|--jump) (\S+)")
_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')
_DEST = re.compile(r" -d (\S+)")
_PROTO = re.compile(r" -p (\w+)")
_TO = re.compile(r"--to-destination (\S+)")
_PROTOCOLS = ("tcp", "udp", "sctp")


def chain_hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def service_hash(service: str, protocol: str) -> str:
    return chain_hash(service + protocol)


def endpoint_hash(service: str, protocol: str, ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return chain_hash(f"{service}{protocol}{host}:{port}")


@dataclass
class _Sep:
    ip: str
    port: int
    protocol: str
    service: str | None


@dataclass
class ParsedSave:
    names: dict[str, str] = field(default_factory=dict)  # service hash -> name
    protocols: dict[str, str] = field(default_factory=dict)
    cluster_ips: dict[str, str] = field(default_factory=dict)
    targets: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (path, h) -> SEPs
    seps: dict[str, _Sep] = field(default_factory=dict)


def _comment(rule: str) -> str | None:
    m = _COMMENT.search(rule)
    if m is None:
        return None
    return m.group(1).replace('\\"', '"') if m.group(1) is not None else m.group(2)


class SaveParser:
    """``iptables-save -t nat`` output, fed one line at a time (a large dump streams through
    and is never held whole)."""

    def __init__(self) -> None:
        self.parsed = ParsedSave()
        self._in_nat = self._committed = False
        self._number = 0

    def feed(self, line: str) -> None:
        self._number += 1
        line = line.rstrip("\n")
        if line.startswith("*"):
            self._in_nat, self._committed = line == "*nat", False
            return
        if not self._in_nat:
            return
        if line == "COMMIT":
            self._committed, self._in_nat = True, False
            return
        if not line.startswith("-A "):
            if line and not line.startswith((":", "#")):
                raise DataplaneParseError(f"line {self._number}: unexpected {line[:80]!r}")
            return
        parts = line.split(" ", 2)
        if len(parts) < 3:
            raise DataplaneParseError(f"line {self._number}: rule without a body")
        _rule(self.parsed, parts[1], " " + parts[2])

    def finish(self) -> ParsedSave:
        if self._in_nat and not self._committed:
            raise DataplaneParseError("the nat table has no COMMIT: the output is truncated")
        return self.parsed


def _read(text: str) -> ParsedSave:
    parser = SaveParser()
    for line in text.splitlines():
        parser.feed(line)
    return parser.finish()


def _rule(parsed: ParsedSave, chain: str, rule: str) -> None:
    if chain == "KUBE-SERVICES":
        _service_rule(parsed, rule)
    elif chain.startswith(("KUBE-SVC-", "KUBE-SVL-")):
        jump = _JUMP.search(rule)
        if jump and jump.group(1).startswith("KUBE-SEP-"):
            path = "cluster" if chain.startswith("KUBE-SVC-") else "local"
            seps = parsed.targets.setdefault((path, chain[9:]), [])
            if jump.group(1) not in seps:
                seps.append(jump.group(1))
            comment = _comment(rule)
            if comment and " -> " in comment:
                parsed.names.setdefault(chain[9:], comment.split(" -> ", 1)[0])
        else:
            parsed.targets.setdefault(("cluster" if chain.startswith("KUBE-SVC-")
                                       else "local", chain[9:]), [])
    elif chain.startswith("KUBE-SEP-"):
        to = _TO.search(rule)
        if to is not None:
            ip, port = split_host_port(to.group(1))
            proto = _PROTO.search(rule)
            parsed.seps[chain] = _Sep(ip, port, proto.group(1) if proto else "tcp",
                                      _comment(rule))




def _service_rule(parsed: ParsedSave, rule: str) -> None:
    jump = _JUMP.search(rule)
    if jump is None:
        return
    target = jump.group(1)
    if not target.startswith(("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-")):
        return
    h = target.split("-", 2)[2]
    comment = _comment(rule)
    if comment:
        for suffix in (" cluster IP", " external IP", " loadbalancer IP"):
            if comment.endswith(suffix):
                parsed.names.setdefault(h, comment[: -len(suffix)])
    proto = _PROTO.search(rule)
    if proto:
        parsed.protocols.setdefault(h, proto.group(1))
    dest = _DEST.search(rule)
    if dest and target.startswith(("KUBE-SVC-", "KUBE-SVL-")):
        parsed.cluster_ips.setdefault(h, dest.group(1).split("/")[0])


def _resolve_names(parsed: ParsedSave, candidates: set[str]) -> None:
    """Name the service chains no comment names, by hashing candidate names."""
    unresolved = {h for _, h in parsed.targets} - set(parsed.names)
    if not unresolved or not candidates:
        return
    for name in candidates:
        for proto in _PROTOCOLS:
            h = service_hash(name, proto)
            if h in unresolved:
                parsed.names[h] = name
                parsed.protocols.setdefault(h, proto)


def parse_iptables_save(text: str, *, backend: Backend,
                        known_services: Iterable[str] = ()) -> DataplaneSnapshot:
    """Parse ``iptables-save -t nat`` output into the common model."""
    return snapshot_of(_read(text), backend=backend, known_services=known_services)


def snapshot_of(parsed: ParsedSave, *, backend: Backend,
                known_services: Iterable[str] = ()) -> DataplaneSnapshot:
    candidates = set(known_services)
    _resolve_names(parsed, candidates)
    hashes = {h for _, h in parsed.targets} | set(parsed.names)
    referenced = {sep for seps in parsed.targets.values() for sep in seps}
    stale: dict[str, list[ProgrammedEndpoint]] = {}
    for sep_name, sep in parsed.seps.items():
        if sep_name in referenced:
            continue
        owner = _stale_owner(sep_name, sep, parsed, candidates)
        if owner is not None:
            stale.setdefault(owner, []).append(ProgrammedEndpoint(sep.ip, sep.port, False))
            hashes.add(owner)
    services = []
    for h in sorted(hashes):
        paths: dict[str, list[ProgrammedEndpoint]] = {"cluster": [], "local": []}
        protocol = parsed.protocols.get(h)
        for path in ("cluster", "local"):
            for sep_name in parsed.targets.get((path, h), []):
                target = parsed.seps.get(sep_name)
                if target is None:
                    raise DataplaneParseError(f"{sep_name} is jumped to but has no DNAT rule")
                paths[path].append(ProgrammedEndpoint(target.ip, target.port, True))
                protocol = protocol or target.protocol
        paths["cluster"].extend(stale.get(h, []))
        if not paths["cluster"] and not paths["local"] and (("cluster", h) not in parsed.targets
                                                             and ("local", h) not in
                                                             parsed.targets):
            continue  # named only by an external rule, with no chain of its own
        services.append(ProgrammedService(
            service=parsed.names.get(h, f"KUBE-SVC-{h}"), protocol=protocol or "tcp",
            cluster_ip=parsed.cluster_ips.get(h),
            cluster=tuple(paths["cluster"]), local=tuple(paths["local"])))
    return DataplaneSnapshot("iptables", backend, tuple(services))


def _stale_owner(sep_name: str, sep: _Sep, parsed: ParsedSave, candidates: set[str]) -> str | None:
    """The service hash an unreferenced SEP chain belongs to, from its comment or its name."""
    if sep.service:
        return service_hash(sep.service, sep.protocol)
    for name in set(parsed.names.values()) | candidates:
        if f"KUBE-SEP-{endpoint_hash(name, sep.protocol, sep.ip, sep.port)}" == sep_name:
            parsed.names.setdefault(service_hash(name, sep.protocol), name)
            return service_hash(name, sep.protocol)
    return None


@dataclass
class JumpState:
    """iptables-nft's SVC/SVL chains as nf_tables events show them: each rule (by handle) and
    the SEP chain it jumps to. Jumps are native nft expressions even for iptables-nft rules
    (comments and DNAT are opaque ``xt`` there), so removals can be followed from the event
    stream alone; which endpoint a SEP chain is comes from the last full read."""

    jumps: dict[str, dict[int, str]] = field(default_factory=dict)  # chain -> handle -> SEP
    endpoints: dict[str, tuple[ServicePort, str, int]] = field(default_factory=dict)
    ports: dict[str, ServicePort] = field(default_factory=dict)  # service hash -> port
    touched: set[str] = field(default_factory=set)  # service hashes changed since last delta

    def add_rule(self, chain: str, handle: int, targets: Iterable[str]) -> None:
        if chain.startswith(("KUBE-SVC-", "KUBE-SVL-")):
            seps = [t for t in targets if t.startswith("KUBE-SEP-")]
            if seps:
                self.jumps.setdefault(chain, {})[handle] = seps[0]
                self.touched.add(chain[9:])

    def delete_rule(self, chain: str, handle: int) -> None:
        if self.jumps.get(chain, {}).pop(handle, None) is not None:
            self.touched.add(chain[9:])

    def delete_chain(self, chain: str) -> None:
        if self.jumps.pop(chain, None) is not None:
            self.touched.add(chain[9:])

    def take_touched(self) -> set[str]:
        touched, self.touched = self.touched, set()
        return touched

    def selected_by_hash(self, h: str) -> set[EndpointKey] | None:
        """What a service port's SVC and SVL chains select; None if a jump goes to a SEP
        chain not known yet."""
        chosen: set[EndpointKey] = set()
        for chain in (f"KUBE-SVC-{h}", f"KUBE-SVL-{h}"):
            for sep in self.jumps.get(chain, {}).values():
                identity = self.endpoints.get(sep)
                if identity is None:
                    return None
                chosen.add(EndpointKey(*identity))
        return chosen

    def learn(self, parsed: ParsedSave, known_services: Iterable[str] = ()) -> None:
        """Which endpoint each SEP chain is, from a full ``iptables-save -t nat``."""
        _resolve_names(parsed, set(known_services))
        for path_hash, seps in parsed.targets.items():
            name = parsed.names.get(path_hash[1])
            for sep_name in seps:
                sep = parsed.seps.get(sep_name)
                if name is None or sep is None:
                    continue
                port = ProgrammedService(name, sep.protocol, None, (), ()).service_port()
                if port is not None:
                    self.endpoints[sep_name] = (port, sep.ip, sep.port)
                    self.ports[path_hash[1]] = port

    def selection(self) -> dict[EndpointKey, bool] | None:
        """Every known endpoint and whether a jump selects it; None when a jump goes to a SEP
        chain not known yet (a new endpoint: a full read must tell which)."""
        out = {EndpointKey(*identity): False for identity in self.endpoints.values()}
        for rules in self.jumps.values():
            for sep in rules.values():
                identity = self.endpoints.get(sep)
                if identity is None:
                    return None
                out[EndpointKey(*identity)] = True
        return out
