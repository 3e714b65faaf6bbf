"""What every dataplane reader reports, whatever mode it reads.

A reader turns the node's rules into ``DataplaneChange`` records: "endpoint X of service port
Y stopped (or started) being selected for new connections on this node, noticed at time T".
The tracker consumes those and knows nothing of iptables, nftables, IPVS or BPF maps. Each mode
has one module (``iptables``, ``nftables``, ``ipvs``, ``cilium``: its reading, parsing and
change state, and its ``MODE``: ``mode`` says what a mode is, ``modes`` lists them and detects
which one this node has); the mechanisms they share stand beside them (``commands``: running
the tools; ``netlink``, ``nlwire``, ``iptables_nft_events``, ``bpf``: the kernel's sockets,
messages and maps; ``sources``: polling and event-driven change detection under a CPU budget).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from observer.values import EndpointKey, Mode, ProxyMode, ServicePort, Timestamp


@dataclass(frozen=True, slots=True)
class DataplaneChange:
    key: EndpointKey
    selected: bool
    at: Timestamp


ChangeSink = Callable[[DataplaneChange], None]


class DataplaneSource(Protocol):
    """A running reader of one node's dataplane."""

    @property
    def mode(self) -> ProxyMode: ...

    def selected(self, key: EndpointKey) -> bool | None:
        """Whether the endpoint is selected now; None when the dataplane does not know the
        service port at all (every one, until it is ``primed``)."""

    def primed(self) -> bool:
        """Whether its first full read is in: the baseline changes are reported against."""

    def expect(self, key: EndpointKey, selected: bool) -> None:
        """The slices say the endpoint should now be ``selected`` (``slices.routed``: Ready,
        or serving and terminating in a port with none Ready): a source that reads by parts
        reads its service port closely until it is."""

    async def run(self, sink: ChangeSink) -> None:
        """Report changes to ``sink`` until cancelled."""


# --- snapshots: what a reader found in one full read ---------------------------------------

Backend = Literal["legacy", "nft"]


class DataplaneParseError(ValueError):
    """Dump output the parser cannot read (garbage, truncated, inconsistent). The only
    exception a parser raises on bad input."""


class EventsLost(Exception):
    """Events the kernel announced that did not reach us whole: the kept state may be wrong
    until a full read (``reason``: ``events_lost`` — the receive queue overflowed — or
    ``garbage``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ProgrammedEndpoint(NamedTuple):
    """A tuple: a full read makes tens of thousands, and a named tuple costs less to build and
    to hold than a dataclass instance. (The garbage collector still tracks it: it untracks
    only plain tuples of plain values, not their subclasses.)"""

    ip: str
    port: int
    selected: bool  # chosen for new connections (a jump/vmap entry to it, or IPVS weight > 0)


@dataclass(frozen=True, slots=True)
class ProgrammedService:
    # "ns/name:port" ("ns/name" for an unnamed port), as kube-proxy's ServicePortName prints
    # it; the chain name when no rule names the service and no candidate name matches its hash.
    service: str
    protocol: str  # lower case, as kube-proxy writes it: tcp, udp, sctp
    cluster_ip: str | None
    cluster: tuple[ProgrammedEndpoint, ...]  # endpoints of the Cluster traffic-policy path
    local: tuple[ProgrammedEndpoint, ...]  # endpoints of the Local traffic-policy path

    def service_port(self) -> ServicePort | None:
        namespace, slash, rest = self.service.partition("/")
        if not slash or not namespace:
            return None
        name, _, port = rest.partition(":")
        return ServicePort(namespace, name, port, self.protocol.upper())


def _endpoint_order(e: ProgrammedEndpoint) -> tuple[int, bytes, int]:
    try:
        packed = ipaddress.ip_address(e.ip).packed
    except ValueError:
        packed = e.ip.encode()
    return (len(packed), packed, e.port)


@dataclass(frozen=True, slots=True)
class DataplaneSnapshot:
    mode: Mode
    backend: Backend | None
    services: tuple[ProgrammedService, ...]

    def to_json(self) -> dict[str, Any]:
        """The documented ``observer dataplane --json`` shape: services sorted by name,
        endpoints by IP then port."""
        def endpoints(items: tuple[ProgrammedEndpoint, ...]) -> list[dict[str, object]]:
            return [{"ip": e.ip, "port": e.port, "selected": e.selected}
                    for e in sorted(items, key=_endpoint_order)]

        return {"mode": self.mode, "backend": self.backend, "services": [
            {"service": s.service, "protocol": s.protocol, "cluster_ip": s.cluster_ip,
             "paths": {"cluster": endpoints(s.cluster), "local": endpoints(s.local)}}
            for s in sorted(self.services, key=lambda s: (s.service, s.protocol))]}

    def selection(self) -> dict[EndpointKey, bool]:
        """Per endpoint: selected on any path. Services whose name is unknown are left out."""
        out: dict[EndpointKey, bool] = {}
        for service in self.services:
            port = service.service_port()
            if port is not None:
                select(port, service, out)
        return out


def select(port: ServicePort, service: ProgrammedService, out: dict[EndpointKey, bool]) -> None:
    """Add a service's endpoints to ``out`` as endpoints of ``port``: selected on any path
    (of any of the port's frontends, merged into one ``out``)."""
    for endpoint in (*service.cluster, *service.local):
        key = EndpointKey(port, endpoint.ip, endpoint.port)
        out[key] = out.get(key, False) or endpoint.selected


# --- what every full read is ---------------------------------------------------------------

class Reader(Protocol):
    @property
    def mode(self) -> Mode: ...

    @property
    def backend(self) -> Backend | None: ...

    async def read(self) -> DataplaneSnapshot: ...


def merge_snapshots(mode: Mode, backend: Backend | None,
           parts: Iterable[DataplaneSnapshot]) -> DataplaneSnapshot:
    services: list[ProgrammedService] = []
    for part in parts:
        services.extend(part.services)
    return DataplaneSnapshot(mode, backend, tuple(services))


def decode_output(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise DataplaneParseError("output is not UTF-8") from None


def either_family(parts: Iterable[dict[EndpointKey, bool]]) -> dict[EndpointKey, bool]:
    """The IP families' selections as one: an endpoint is selected if either selects it."""
    out: dict[EndpointKey, bool] = {}
    for part in parts:
        for key, selected in part.items():
            out[key] = out.get(key, False) or selected
    return out
