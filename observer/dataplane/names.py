"""Names for frontends that know no service name: IPVS virtual servers and Cilium's service
map entries are ``VIP:port``. ``FrontendNames`` gives each the name of the service port whose
endpoints it balances, from the EndpointSlices the agent watches (the Services' cluster IPs
would say it directly, but they are not worth a Service watch on every node)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace

import structlog

from observer.dataplane.model import DataplaneSnapshot, ProgrammedService
from observer.values import ServicePort

log = structlog.get_logger("observer.dataplane")
# (ip, port, protocol) -> the service ports whose EndpointSlices list that endpoint
Candidates = Callable[[str, int, str], Collection[ServicePort]]


class FrontendNames:
    """Names frontends after service ports. A frontend (cluster IP, node port, external or
    load-balancer IP, each with a port and protocol) balances the endpoints of one service
    port: it takes the name of the service port that lists the most of its endpoints, and
    keeps it for as long as it exists — so an endpoint kept but no longer selected after it
    left the slices (graceful termination) is still attributed, and a change is timed by the
    dataplane alone, never by the slice watch. A tie (two service ports with the same
    endpoints) or no match yet leaves it unnamed (and out of the selection) until a later read
    decides."""

    def __init__(self, candidates: Candidates) -> None:
        self.candidates = candidates
        self._names: dict[tuple[str, str], ServicePort] = {}  # (protocol, "VIP:port")
        self._tied: set[tuple[str, str]] = set()  # told once in the log

    def apply(self, snapshot: DataplaneSnapshot) -> DataplaneSnapshot:
        """Every frontend of a full read named; names of frontends gone are forgotten."""
        services = [self.name(service) for service in snapshot.services]
        self.keep({(s.protocol, s.service) for s in snapshot.services})
        return replace(snapshot, services=tuple(services))

    def name(self, service: ProgrammedService) -> ProgrammedService:
        """The frontend under its service port's name, if one is known or decided now."""
        port = self.port(service)
        return service if port is None else replace(service, service=str(port))

    def port(self, service: ProgrammedService) -> ServicePort | None:
        """The service port the frontend is named after, if one is known or decided now."""
        ident = (service.protocol, service.service)
        port = self._names.get(ident) or self._resolve(ident, service)
        if port is not None:
            self._names[ident] = port
        return port

    def keep(self, idents: Iterable[tuple[str, str]]) -> None:
        """Forget every frontend but these (protocol, ``VIP:port``)."""
        seen = set(idents)
        self._names = {k: v for k, v in self._names.items() if k in seen}
        self._tied &= seen

    def forget(self, ident: tuple[str, str]) -> None:
        """A frontend is gone: a new one at its address is named afresh."""
        self._names.pop(ident, None)
        self._tied.discard(ident)

    def _resolve(self, ident: tuple[str, str],
                 service: ProgrammedService) -> ServicePort | None:
        votes: Counter[ServicePort] = Counter()
        for endpoint in (*service.cluster, *service.local):
            votes.update(self.candidates(endpoint.ip, endpoint.port, service.protocol.upper()))
        ranked = votes.most_common(2)
        if not ranked:
            return None
        if len(ranked) == 2 and ranked[0][1] == ranked[1][1]:
            if ident not in self._tied:
                self._tied.add(ident)
                log.warning("frontend matches several service ports equally; left unnamed "
                            "until one matches better", virtual=service.service,
                            protocol=service.protocol,
                            candidates=sorted(str(p) for p, _ in ranked))
            return None
        return ranked[0][0]
