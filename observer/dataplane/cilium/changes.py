"""What ``DeltaPollingSource`` reads of Cilium's maps (``CiliumChanges``): full reads and reads
by parts, each installed in the event loop, and the frontends named after service ports.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from observer.dataplane.cilium.decode import Addresses, Rules, rules_of
from observer.dataplane.cilium.maps import SERVICE_MAPS, CiliumMaps, Frontend, read_maps
from observer.dataplane.cilium.source import Changes, Install
from observer.dataplane.cilium.state import Baseline, LoadBalancing, PartsMemory, read_frontends
from observer.dataplane.commands import CommandError
from observer.dataplane.model import ProgrammedEndpoint, ProgrammedService, select
from observer.dataplane.names import FrontendNames
from observer.values import EndpointKey, Mode, ServicePort


class Named(NamedTuple):
    """A frontend named after a service port: the port, its (protocol, "VIP:port"), and its
    rules as last read."""

    port: ServicePort
    ident: tuple[str, str]
    service: ProgrammedService
    chosen: tuple[tuple[ProgrammedEndpoint, ...], tuple[ProgrammedEndpoint, ...]]


def _same(named: Named, rules: Rules) -> bool:
    """Whether the rules read are those the frontend is named with: the same frontend (its
    protocol and address) choosing the same endpoints."""
    return (rules.service is not None and rules.chosen == named.chosen
            and (rules.service.protocol, rules.service.service) == named.ident)


@dataclass(frozen=True)
class FullRead:
    """What a full read takes from the event loop: the frontends whose rules the install may
    need beyond those that changed (those read by parts since the last full read — what they
    found gives way to this read — and those not named yet), and the naming as it was when
    the read was asked for."""

    needed: frozenset[Frontend]
    named: Mapping[Frontend, Named]


class CiliumChanges:
    """What ``DeltaPollingSource`` reads: the service ports whose frontends changed, each
    with its selection merged over every frontend that bears the port's name (its cluster
    IP, node ports, external and load-balancer addresses).

    Full reads (``full``) decode what changed in the maps since the last one into
    ``state``, in a worker thread; reads by parts (``parts``) look up the frontends of the
    service ports asked for, meanwhile, and what they find stands over ``state`` until a
    full read that started after them is installed. Installing, naming and the merge run in
    the event loop (the names come from the slices, which the event loop owns). Reads by
    parts keep the maps open from one to the next (``close``)."""

    mode: Mode = "cilium"

    def __init__(self, root: str, names: FrontendNames) -> None:
        self.root = root
        self.names = names
        addresses = Addresses()
        self.state = LoadBalancing(addresses)  # changed only by full reads
        self.families: set[int] = set()  # whose maps were read: they must stay pinned
        # Frontends read by parts since the full read last installed started: when that read
        # started (monotonic).
        self.parts_read: dict[Frontend, float] = {}
        self.full_started: float | None = None  # the last full read installed
        self._memory = PartsMemory(addresses)
        self._baseline = Baseline({}, {})  # the last full read installed
        self._maps: CiliumMaps | None = None  # open for reads by parts
        self._maps_lock = threading.Lock()
        self.named: dict[Frontend, Named] = {}
        self.by_port: dict[ServicePort, set[Frontend]] = {}
        self.unnamed: set[Frontend] = set()

    def full(self) -> Callable[[], Install]:
        """A full read, to run in a worker thread. What it reads of this object's naming is
        handed to it here, in the event loop (``FullRead``): reads by parts go on meanwhile,
        renaming frontends. The state it changes — ``state``, ``families`` — no other read
        touches, and one full read runs at a time; what it found is installed in the event
        loop (``_install_all``), after it ended."""
        handoff = FullRead(needed=frozenset(self.parts_read.keys() | self.unnamed),
                           named=dict(self.named))
        return lambda: self._full_read(handoff)

    def _full_read(self, handoff: FullRead) -> Install:
        reads = read_maps(self.root)
        found = {maps.family for maps, _, _ in reads}
        if self.families - found:  # not "every frontend gone": the maps are (restart)
            raise CommandError("unavailable", ", ".join(
                SERVICE_MAPS[f] for f in sorted(self.families - found)) + " no longer pinned")
        self.families |= found
        # The rules made here, in the read's thread: the event loop only names and merges.
        # Those the frontend is named with already (what reads by parts found since the last
        # full read, mostly) are not kept: ``kept`` says which naming they matched.
        views: dict[Frontend, Rules] = {}
        kept: dict[Frontend, Named] = {}
        for frontend in self.state.apply(reads) | handoff.needed:
            rules = rules_of(self.state.service(frontend))
            named = handoff.named.get(frontend)
            if named is not None and _same(named, rules):
                kept[frontend] = named
            else:
                views[frontend] = rules
        baseline = self.state.baseline()
        return lambda started: self._install_all(views, kept, baseline, started)

    def _install_all(self, views: dict[Frontend, Rules], kept: dict[Frontend, Named],
                     baseline: Baseline, started: float) -> Changes:
        """A full read started at ``started`` is newer than every read by parts before it."""
        previous = started if self.full_started is None else self.full_started
        since = {f: at for f, at in self.parts_read.items() if at < started}
        for frontend in since:
            del self.parts_read[frontend]
        self.full_started = started
        self._baseline = baseline
        self.close()  # what a full read found pinned is what reads by parts open next
        # Frontends read by parts since this read started are newer than what it found.
        fresh = (views.keys() | kept.keys() | self.unnamed | since.keys()) - self.parts_read.keys()
        for frontend in fresh - views.keys():
            if frontend in kept and self.named.get(frontend) is kept[frontend]:
                fresh.discard(frontend)  # named as this read found it
            else:  # (renamed by a read by parts since the read compared, or met since)
                views[frontend] = rules_of(self.state.service(frontend))
        return self._renamed(fresh, lambda f: since.get(f, previous), views)

    def parts(self, ports: Collection[ServicePort]) -> Callable[[], Install] | None:
        frontends = {f for port in ports for f in self.by_port.get(port, ())}
        if not frontends:
            return None
        # Those read by parts since the last full read stand as that read found them; the
        # others as the last full read did (its baseline).
        settled = {f for f in frontends if f in self.parts_read}
        baseline = self._baseline

        def read() -> Install:
            found, same = self._read_frontends(frontends, settled, baseline)
            return lambda started: self._install_parts(found, same, started)
        return read

    def _read_frontends(self, frontends: Iterable[Frontend], settled: Collection[Frontend],
                        baseline: Baseline) -> tuple[dict[Frontend, Rules], list[Frontend]]:
        """The maps stay open until a full read is installed (Cilium re-creates its maps when
        it restarts with another size or layout: a full read opens them afresh and finds
        that) or a read fails."""
        with self._maps_lock:
            if self._maps is None:
                self._maps = CiliumMaps.open(self.root)
            try:
                return read_frontends(self._maps, frontends, settled, self._memory, baseline)
            except BaseException:
                self._maps.close()
                self._maps = None
                raise

    def close(self) -> None:
        """Close the maps kept open for reads by parts (the next read opens them again)."""
        with self._maps_lock:
            if self._maps is not None:
                self._maps.close()
                self._maps = None

    def knows(self, port: ServicePort) -> bool:
        return port in self.by_port

    def _install_parts(self, found: dict[Frontend, Rules], same: list[Frontend],
                       started: float) -> Changes:
        for frontend in same:  # as when its rules were installed: covered until now
            self.parts_read[frontend] = started
        since: dict[Frontend, float] = {}
        for frontend in found:
            before = self.parts_read.get(frontend)
            since[frontend] = before if before is not None else (
                self.full_started if self.full_started is not None else started)
            self.parts_read[frontend] = started
        return self._renamed(since.keys(), since.__getitem__, found)

    def _renamed(self, frontends: Iterable[Frontend], since: Callable[[Frontend], float],
                 views: Mapping[Frontend, Rules]) -> Changes:
        """Name each frontend (again) as it is now (``views``): the selection of every
        service port that touches, with the earliest of its frontends' ``since``."""
        ports: dict[ServicePort, float] = {}
        for frontend in frontends:
            for port in self._rename(frontend, views[frontend]):
                ports[port] = min(ports.get(port, math.inf), since(frontend))
        changes: Changes = {}
        for port, at in ports.items():
            selection: dict[EndpointKey, bool] = {}
            for frontend in self.by_port.get(port, ()):
                select(port, self.named[frontend].service, selection)
            changes[port] = (selection, at)
        return changes

    def _rename(self, frontend: Frontend, rules: Rules) -> set[ServicePort]:
        """Name the frontend (again) as it now is; the service ports whose selection that
        touches."""
        service = rules.service
        was = self.named.pop(frontend, None)
        if was is not None and _same(was, rules):
            # the same endpoints chosen: no port's selection changes (nor what it is made of:
            # endpoints not chosen are as good as absent)
            self.named[frontend] = was
            return set()
        before: set[ServicePort] = set()
        if was is not None:
            before.add(was.port)
            self.by_port[was.port].discard(frontend)
            if not self.by_port[was.port]:
                del self.by_port[was.port]
        self.unnamed.discard(frontend)
        if service is None:  # gone: a frontend made at its address later is named afresh
            if was is not None:
                self.names.forget(was.ident)
            self._memory.signatures.pop(frontend, None)
            return before
        ident = (service.protocol, service.service)
        port = was.port if was is not None and was.ident == ident else self.names.port(service)
        if port is None:
            self.unnamed.add(frontend)
            return before
        self.named[frontend] = Named(port, ident, service, rules.chosen)
        self.by_port.setdefault(port, set()).add(frontend)
        return before | {port}
