"""The decoded state of Cilium's maps: what full reads found (``LoadBalancing``), what reads
by parts keep (``PartsMemory``) and compare with (``Baseline``), reads by parts themselves
(``read_frontends``), and a one-off full read as a snapshot (``CiliumReader``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from observer.dataplane.cilium import decode
from observer.dataplane.cilium.decode import (
    BACKEND_ID,
    BACKEND_TAIL,
    SLOT_MASK,
    Addresses,
    RawMap,
    Rules,
    Signature,
    describe,
    lookup_frontend,
    rules_of,
)
from observer.dataplane.cilium.maps import (
    BACKEND_KEY,
    BACKEND_VALUE,
    DEFAULT_BPF_ROOT,
    SERVICE_KEY,
    SERVICE_MAPS,
    SERVICE_VALUE,
    CiliumMaps,
    FamilyMaps,
    Frontend,
    bpf_error,
    read_maps,
)
from observer.dataplane.commands import CommandError
from observer.dataplane.model import (
    Backend,
    DataplaneParseError,
    DataplaneSnapshot,
    ProgrammedService,
)
from observer.dataplane.names import FrontendNames
from observer.values import Mode


@dataclass
class PartsMemory:
    """What reads by parts keep from one to the next: each frontend's signature, to tell
    whether it changed. Kept by the reads and by their installs: never at once, as one read
    at a time is made and installed before the next."""

    address: Addresses
    signatures: dict[Frontend, Signature] = field(default_factory=dict)


@dataclass(frozen=True)
class Baseline:
    """The frontends' entries as the last full read installed found them (``LoadBalancing``'s
    entries at the end of that read: never changed after), and the backends as known now:
    what a frontend read by parts for the first time since is compared with."""

    frontends: Mapping[Frontend, Mapping[int, bytes]]
    backends: Mapping[int, bytes]

    def signature(self, frontend: Frontend) -> Signature | None:
        """The frontend's entries as ``lookup_frontend`` reads them, from the full read's copy."""
        entries = self.frontends.get(frontend)
        if entries is None:
            return None
        return lookup_frontend(
            frontend, lambda _a, _p, slot, _r, scope: entries.get(scope << 16 | slot),
            self.backends.get, None)


def read_frontends(maps: CiliumMaps, frontends: Iterable[Frontend], settled: Collection[Frontend],
               memory: PartsMemory, baseline: Baseline
               ) -> tuple[dict[Frontend, Rules], list[Frontend]]:
    """These frontends as they are now, looked up entry by entry: the rules of those that
    changed (a gone one's are ``Rules(None, …)``), and those that read the same bytes as
    when their rules were last installed — by a read by parts (``settled``: their bytes
    kept in ``memory``), else by the last full read installed (``baseline``) — which are
    not decoded again. One that Cilium is writing under the read is in neither (a slot or
    backend missing that the master counts, or the master rewritten by the end of the
    read): the next read takes it."""
    lookups = maps.lookups()
    found: dict[Frontend, Rules] = {}
    same: list[Frontend] = []
    try:
        for frontend in frontends:
            family = 4 if len(frontend.address) == 4 else 6
            if family not in lookups:
                raise CommandError("unavailable", f"{SERVICE_MAPS[family]} is not pinned")
            services, backends = lookups[family]
            last = (memory.signatures.get(frontend) if frontend in settled
                    else baseline.signature(frontend))
            signature = lookup_frontend(frontend, services, backends, last)
            if signature is None:
                continue
            memory.signatures[frontend] = signature
            if signature == last:
                same.append(frontend)
                continue
            found[frontend] = rules_of(decode.decode_selection(frontend, signature, memory.address))
    except OSError as error:
        raise bpf_error(error, "reading Cilium's maps") from None
    return found, same


class LoadBalancing:
    """Cilium's frontends and backends as the maps hold them (their values' bytes), updated
    from each read by what changed: ``apply`` answers which frontends the changes touched.

    A frontend's entries are a dict by place (scope << 16 | slot) that a read replaces
    rather than changes (``_own``): ``frontends`` copied at the end of a read
    (``Baseline``) stays as that read found it while the next read goes on."""

    def __init__(self, address: Addresses) -> None:
        self.address = address
        self.frontends: dict[Frontend, dict[int, bytes]] = {}
        self.backends: dict[int, bytes] = {}
        self.gone: dict[int, bytes] = {}  # deleted while a slot may still name them
        self._raw: dict[str, RawMap] = {}
        self.pending: set[Frontend] = set()  # touched by a read found inconsistent

    def apply(self, reads: Iterable[tuple[FamilyMaps, tuple[bytes, bytes], tuple[bytes, bytes]]]
              ) -> set[Frontend]:
        touched = self.pending
        self.pending = set()
        owned: set[Frontend] = set()
        moved: set[int] = set()  # backends deleted, back, or at another address
        for maps, services, backends in reads:
            family = maps.family
            diff = self._raw.setdefault(maps.services.path, RawMap()).diff(
                *services, SERVICE_KEY[family], SERVICE_VALUE)
            if diff is not None:
                self._services(family, *diff, touched, owned)
            diff = self._raw.setdefault(maps.backends.path, RawMap()).diff(
                *backends, BACKEND_KEY, BACKEND_VALUE[maps.backend_version, family])
            if diff is not None:
                self._backends(*diff, moved)
        if moved or self.gone:
            self._users(moved, touched)
        unknown = sorted({i for f in touched for place, raw in self.frontends.get(f, {}).items()
                          if place & SLOT_MASK and (i := BACKEND_ID.unpack_from(raw)[0])
                          not in self.backends and i not in self.gone})
        if unknown:
            self.pending = touched
            raise DataplaneParseError(
                f"service slots name backends {unknown[:5]} found in no backend map read: the "
                "maps changed during the read; the next read will tell")
        return touched

    def _own(self, frontend: Frontend, owned: set[Frontend]) -> dict[int, bytes]:
        """The frontend's entries, this read's own to change (a copy of the last read's)."""
        entries = self.frontends.get(frontend)
        if entries is None or frontend not in owned:
            owned.add(frontend)
            entries = self.frontends[frontend] = dict(entries or {})
        return entries

    def _services(self, family: int, changed: list[tuple[bytes, bytes]], removed: list[bytes],
                  touched: set[Frontend], owned: set[Frontend]) -> None:
        key_layout = SERVICE_KEY[family]
        for raw in removed:
            address, port, slot, proto, scope = key_layout.unpack(raw)
            frontend = Frontend(address, port, proto)
            entries = self._own(frontend, owned)
            entries.pop(scope << 16 | slot, None)
            if not entries:
                del self.frontends[frontend]
            touched.add(frontend)
        for raw, value in changed:
            address, port, slot, proto, scope = key_layout.unpack(raw)
            frontend = Frontend(address, port, proto)
            self._own(frontend, owned)[scope << 16 | slot] = value
            touched.add(frontend)

    def _backends(self, changed: list[tuple[bytes, bytes]], removed: list[bytes],
                  moved: set[int]) -> None:
        for raw in removed:
            (backend_id,) = BACKEND_KEY.unpack(raw)
            value = self.backends.pop(backend_id, None)
            if value is not None:
                self.gone[backend_id] = value
                moved.add(backend_id)
        for raw, value in changed:
            (backend_id,) = BACKEND_KEY.unpack(raw)
            old = self.backends.get(backend_id)
            back = self.gone.pop(backend_id, None)
            cut = len(value) - BACKEND_TAIL[len(value)]  # the address, port and protocol
            if back is not None or (old is not None and old[:cut] != value[:cut]):
                moved.add(backend_id)
            self.backends[backend_id] = value

    def _users(self, moved: set[int], touched: set[Frontend]) -> None:
        """Touch the frontends whose slots name a backend that ``moved``; forget the deleted
        backends no slot names any more. One pass over every entry: done only when backends
        were deleted (or came back, or, after a restart, name another address), which the
        reconciler does apart from the slots naming them (``orphanBackends``)."""
        watched = moved | self.gone.keys()
        named: set[int] = set()
        for frontend, entries in self.frontends.items():
            for place, raw in entries.items():
                if place & SLOT_MASK and (i := BACKEND_ID.unpack_from(raw)[0]) in watched:
                    named.add(i)
                    if i in moved:
                        touched.add(frontend)
        for backend_id in self.gone.keys() - named:
            del self.gone[backend_id]

    def baseline(self) -> Baseline:
        """The entries as this read leaves them, to compare reads by parts with."""
        return Baseline(dict(self.frontends), self.backends)

    def service(self, frontend: Frontend) -> ProgrammedService | None:
        """The frontend as the other modes report a service port's rules; None once gone."""
        return describe(frontend, self.frontends.get(frontend, {}), self.backends, self.gone,
                         self.address)

    def snapshot(self) -> DataplaneSnapshot:
        services = (self.service(f) for f in self.frontends)
        return DataplaneSnapshot("cilium", None, tuple(s for s in services if s is not None))


@dataclass
class CiliumReader:
    """Full reads, for ``observer dataplane --mode cilium``: every frontend, named after its
    service port where ``names`` can tell. The system calls run in a thread: a read of
    large maps takes tens of milliseconds the event loop should not wait for."""

    root: str = DEFAULT_BPF_ROOT
    names: FrontendNames | None = None
    mode: Mode = "cilium"
    backend: Backend | None = None

    async def read(self) -> DataplaneSnapshot:
        state = LoadBalancing(Addresses())
        state.apply(await asyncio.to_thread(read_maps, self.root))
        snapshot = state.snapshot()
        return snapshot if self.names is None else self.names.apply(snapshot)
