"""kube-proxy's IPVS mode, from ``ipvsadm -Ln``.

Virtual servers are ``VIP:port`` (cluster IPs, external IPs, node ports), real servers are
``podIP:port``. A terminating TCP real server is set to weight 0 (no new connections) and
deleted only once its connections drain (``pkg/proxy/ipvs/graceful_termination.go``): weight
0 is the removal signal. IPVS knows no service names; ``service`` is ``VIP:port`` here, and
``IpvsNames`` gives each virtual server the name of the service port whose endpoints it
balances, from the EndpointSlices the agent watches (the Services' cluster IPs would say it
directly, but they are not worth a Service watch on every node).

The kernel of our CI machines has no IPVS module, so this parser is tested on recorded output
(``tests/fixtures/dataplane/ipvsadm-Ln.txt``, with its origin stated there).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import replace

import structlog

from observer.dataplane.model import (
    DataplaneParseError,
    DataplaneSnapshot,
    ProgrammedEndpoint,
    ProgrammedService,
    split_host_port,
)
from observer.episodes.model import ServicePort

log = structlog.get_logger("observer.dataplane")
# (ip, port, protocol) -> the service ports whose EndpointSlices list that endpoint
Candidates = Callable[[str, int, str], Collection[ServicePort]]

_VIRTUAL = re.compile(r"^(TCP|UDP|SCTP)\s+(\S+)\s+\S+")
_REAL = re.compile(r"^\s+->\s+(\S+)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)")


def parse_ipvsadm(text: str) -> DataplaneSnapshot:
    services: list[ProgrammedService] = []
    current: tuple[str, str, list[ProgrammedEndpoint]] | None = None

    def close() -> None:
        if current is not None:
            vip, proto, reals = current
            services.append(ProgrammedService(service=vip, protocol=proto,
                                              cluster_ip=split_host_port(vip)[0],
                                              cluster=tuple(reals), local=()))

    lines = text.splitlines()
    if not lines or not lines[0].startswith("IP Virtual Server version"):
        raise DataplaneParseError("not ipvsadm -Ln output")
    for number, line in enumerate(lines[1:], 2):
        if line.startswith(("Prot ", "  -> RemoteAddress")) or not line.strip():
            continue
        if m := _VIRTUAL.match(line):
            close()
            split_host_port(m.group(2))
            current = (m.group(2), m.group(1).lower(), [])
        elif m := _REAL.match(line):
            if current is None:
                raise DataplaneParseError(f"line {number}: real server before any service")
            ip, port = split_host_port(m.group(1))
            current[2].append(ProgrammedEndpoint(ip, port, int(m.group(3)) > 0))
        else:
            raise DataplaneParseError(f"line {number}: unexpected {line[:80]!r}")
    close()
    return DataplaneSnapshot("ipvs", None, tuple(services))


class IpvsNames:
    """Names virtual servers after service ports. A virtual server (cluster IP, node port,
    external or load-balancer IP, each with a port and protocol) balances the endpoints of one
    service port: it takes the name of the service port that lists the most of its real
    servers, and keeps it for as long as it exists — so a real server kept at weight 0 after
    its endpoint left the slices (graceful termination) is still attributed, and a change is
    timed by IPVS alone, never by the slice watch. A tie (two service ports with the same
    endpoints) or no match yet leaves it unnamed (and out of the selection) until a later read
    decides."""

    def __init__(self, candidates: Candidates) -> None:
        self.candidates = candidates
        self._names: dict[tuple[str, str], ServicePort] = {}  # (protocol, "VIP:port")
        self._tied: set[tuple[str, str]] = set()  # told once in the log

    def apply(self, snapshot: DataplaneSnapshot) -> DataplaneSnapshot:
        services, seen = [], set()
        for service in snapshot.services:
            ident = (service.protocol, service.service)
            seen.add(ident)
            port = self._names.get(ident) or self._resolve(ident, service)
            if port is not None:
                self._names[ident] = port
                service = replace(service, service=str(port))
            services.append(service)
        self._names = {k: v for k, v in self._names.items() if k in seen}
        self._tied &= seen
        return replace(snapshot, services=tuple(services))

    def _resolve(self, ident: tuple[str, str],
                 service: ProgrammedService) -> ServicePort | None:
        votes: Counter[ServicePort] = Counter()
        for endpoint in service.cluster:
            votes.update(self.candidates(endpoint.ip, endpoint.port, service.protocol.upper()))
        ranked = votes.most_common(2)
        if not ranked:
            return None
        if len(ranked) == 2 and ranked[0][1] == ranked[1][1]:
            if ident not in self._tied:
                self._tied.add(ident)
                log.warning("IPVS virtual server matches several service ports equally; "
                            "left unnamed until one matches better", virtual=service.service,
                            protocol=service.protocol,
                            candidates=sorted(str(p) for p, _ in ranked))
            return None
        return ranked[0][0]
