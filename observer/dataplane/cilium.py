"""Cilium's kube-proxy replacement: the load-balancing BPF maps its agent pins under the BPF
filesystem (``<bpf-root>/tc/globals/``), read with ``bpf(2)`` (``observer.dataplane.bpf``).

Layouts, as in cilium/cilium v1.18 (``bpf/lib/common.h`` ``struct lb4_key`` / ``lb4_service`` /
``lb4_backend`` and their ``lb6_`` twins; Go mirrors in ``pkg/loadbalancer/maps/types.go``
``Service4Key``, ``Service4Value``, ``Backend4ValueV3``):

* ``cilium_lb{4,6}_services_v2`` (hash). Key: address (big-endian), dport (big-endian),
  ``backend_slot`` (host order), proto, scope (0 external, 1 internal: ``LB_LOOKUP_SCOPE_*``),
  2 pad. Value: ``backend_id`` (u32, a union: the master's holds affinity timeout / L7 proxy
  port), ``count`` (u16), ``rev_nat_index`` (big-endian), ``flags``, ``flags2``, ``qcount``
  (u16; ``pad`` before v1.15 — not read).
* ``cilium_lb{4,6}_backends_v3`` (hash, since v1.14). Key: backend id (u32). Value: address,
  port (big-endian), proto, flags (the backend's state: 0 active, 1 terminating,
  2 quarantined, 3 maintenance — ``pkg/loadbalancer`` ``NewBackendFlags``), ``cluster_id``
  (u16), zone, pad. ``cilium_lb{4,6}_backends_v2`` (before v1.14) lacks the last four bytes.

Which backends a frontend sends new connections to: slot 0 of a frontend is its master entry;
slots ``1..count+qcount`` hold backend ids, the active ones first
(``pkg/loadbalancer/reconciler/bpf_reconciler.go``: backends ordered by state, then
``upsertMaster(..., activeCount, inactiveCount)``; with no active backend, ``count`` counts the
terminating ones — KEP-1669's fallback). The datapath picks a slot in ``1..count``
(``bpf/lib/lb.h`` ``lb4_select_backend_id``: ``get_prandom_u32() % svc->count + 1``; Maglev's
table is built from the same first ``count`` backends). So an endpoint is *selected* while a
slot ``≤ count`` names it; a terminating backend keeps a slot above ``count`` (and its
connections) until Cilium removes it. Releases before v1.15 (``pkg/maps/lbmap/lbmap.go``
``upsertServiceProto``) write non-active backends after the active ones too, with ``count``
the active ones: the same rule reads both. Those releases write proto 0 (any) in the key;
the backends' proto then names the frontend's protocol.

The reconciler writes backends before the slots naming them, and deletes a backend it orphans
*before* rewriting the slots (``orphanBackends`` then ``deleteBackend``): a slot may briefly
name a backend that is gone, which the datapath cannot reach either. Reading the services map
first and the backends second, a slot naming a backend never seen means the maps changed
during the read: the read is reported unreadable (counted) and the next one tells.

Maps send no notification when they change: the source polls (``sources.DeltaPollingSource``).
A full read copies both maps (BPF_MAP_LOOKUP_BATCH) and decodes only what changed since the
last (``LoadBalancing.apply``) — still about a second of CPU at 10,000 services when most
frontends changed, so full reads are rare; the service ports the tracker expects to change
are read in between by looking their frontends up entry by entry (``CiliumMaps.frontends``:
master, slots 1..count, their backends; a microsecond or two per entry).
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import socket
import struct
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from observer.dataplane import bpf
from observer.dataplane.commands import CommandError
from observer.dataplane.mode import DataplaneMode, Detected, Option, Probe, Wiring
from observer.dataplane.model import (
    Backend,
    DataplaneParseError,
    DataplaneSnapshot,
    DataplaneSource,
    ProgrammedEndpoint,
    ProgrammedService,
    select,
)
from observer.dataplane.names import FrontendNames
from observer.dataplane.sources import Changes, DeltaPollingSource, Install
from observer.values import EndpointKey, Mode, ServicePort, join_host_port

DEFAULT_BPF_ROOT = "/sys/fs/bpf"
PIN_DIR = "tc/globals"  # Cilium's pin path for its global maps, under the BPF filesystem
SERVICE_MAPS = {4: "cilium_lb4_services_v2", 6: "cilium_lb6_services_v2"}
# Newest first: the first one pinned is read.
BACKEND_MAPS = {4: ("cilium_lb4_backends_v3", "cilium_lb4_backends_v2"),
                6: ("cilium_lb6_backends_v3", "cilium_lb6_backends_v2")}
_ADDRESS = {4: 4, 6: 16}
SERVICE_KEY = {f: struct.Struct(f"={n}s2sHBB2x") for f, n in _ADDRESS.items()}
SERVICE_VALUE = struct.Struct("=IHHBBH")  # backend_id, count, rev_nat (BE), flags, flags2, qcount
BACKEND_KEY = struct.Struct("=I")
BACKEND_VALUE = {(name, f): struct.Struct(f"={n}s2sBB" + ("HBx" if name.endswith("v3") else ""))
                 for f, n in _ADDRESS.items() for name in BACKEND_MAPS[f]}
_PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_SCTP: "sctp"}
_EXT_LOCAL_SCOPE = 1 << 2  # lb4_service.flags: externalTrafficPolicy=Local
_INT_LOCAL_SCOPE = 1 << 4  # lb4_service.flags2: internalTrafficPolicy=Local
SCOPE_INTERNAL = 1
_FLAGS = 8  # offset of lb4_service.flags in a service value; flags2 follows it
_SLOT = 0xFFFF  # an entry's place in a frontend's entries: scope << 16 | backend_slot


class Frontend(NamedTuple):
    address: bytes  # 4 or 16 bytes, network order
    port: bytes  # 2 bytes, network order
    proto: int  # 0 (any) before v1.15


# --- the pinned maps ---------------------------------------------------------------------

@dataclass
class PinnedMap:
    path: str
    fd: int
    key: struct.Struct
    value: struct.Struct

    def read(self) -> tuple[bytes, bytes]:
        return bpf.lookup_batch(self.fd, self.key.size, self.value.size)


def _open(path: str, key: struct.Struct, value: struct.Struct) -> PinnedMap:
    fd = bpf.obj_get(path)
    try:
        info = bpf.map_info(fd)
        if (info.type, info.key_size, info.value_size) != (bpf.MAP_TYPE_HASH, key.size,
                                                           value.size):
            raise DataplaneParseError(
                f"{path}: a map of type {info.type} with {info.key_size}-byte keys and "
                f"{info.value_size}-byte values matches no Cilium layout known here (a hash "
                f"map with {key.size}-byte keys and {value.size}-byte values): a Cilium "
                "release this agent does not know")
    except BaseException:
        os.close(fd)
        raise
    return PinnedMap(path, fd, key, value)


def _bpf_error(error: OSError, what: str) -> CommandError:
    if error.errno in (errno.EPERM, errno.EACCES):
        return CommandError("permission", f"{what}: {error.strerror} (reading pinned BPF maps "
                                          "takes CAP_BPF, or CAP_SYS_ADMIN before Linux 5.8, "
                                          "and read access to the files)")
    return CommandError("failed", f"{what}: {error.strerror}")


@dataclass
class FamilyMaps:
    family: int
    services: PinnedMap
    backends: PinnedMap
    backend_version: str  # the backend map's name


class CiliumMaps:
    """The load-balancing maps pinned under one BPF root, opened read-only; the layout of
    each found from what is pinned and checked against the kernel's key and value sizes."""

    def __init__(self, families: list[FamilyMaps]) -> None:
        self.families = families
        self._lookups: dict[int, tuple[bpf.Lookup, bpf.Lookup]] | None = None

    @classmethod
    def open(cls, root: str) -> CiliumMaps:
        directory = os.path.join(root, PIN_DIR)
        families: list[FamilyMaps] = []
        opened: list[PinnedMap] = []  # closed again if any open fails
        try:
            for family, name in SERVICE_MAPS.items():
                path = os.path.join(directory, name)
                if not os.path.exists(path):
                    continue
                versions = [n for n in BACKEND_MAPS[family]
                            if os.path.exists(os.path.join(directory, n))]
                if not versions:
                    raise CommandError("unavailable", f"{path} is pinned but none of "
                                       f"{', '.join(BACKEND_MAPS[family])} is")
                opened.append(_open(path, SERVICE_KEY[family], SERVICE_VALUE))
                opened.append(_open(os.path.join(directory, versions[0]), BACKEND_KEY,
                                    BACKEND_VALUE[versions[0], family]))
                families.append(FamilyMaps(family, opened[-2], opened[-1], versions[0]))
        except BaseException as error:
            for pinned in opened:
                os.close(pinned.fd)
            if isinstance(error, OSError):
                raise _bpf_error(error, f"opening Cilium's maps under {directory}") from None
            raise
        if not families:
            raise CommandError("unavailable", f"no Cilium service map pinned under {directory}"
                               f" ({', '.join(SERVICE_MAPS.values())}): no kube-proxy "
                               "replacement here, or --bpf-root is not where bpffs is mounted")
        return cls(families)

    def read(self) -> list[tuple[FamilyMaps, tuple[bytes, bytes], tuple[bytes, bytes]]]:
        """Each family's services map, then its backends map (the order the reconciler's
        writes make safe to read: see the module's docstring)."""
        try:
            return [(f, f.services.read(), f.backends.read()) for f in self.families]
        except OSError as error:
            raise _bpf_error(error, "reading Cilium's maps") from None

    def frontends(self, frontends: Iterable[Frontend], settled: Collection[Frontend],
                  memory: PartsMemory, baseline: Baseline
                  ) -> tuple[dict[Frontend, Rules], list[Frontend]]:
        """These frontends as they are now, looked up entry by entry: the rules of those that
        changed (a gone one's are ``Rules(None, …)``), and those that read the same bytes as
        when their rules were last installed — by a read by parts (``settled``: their bytes
        kept in ``memory``), else by the last full read installed (``baseline``) — which are
        not decoded again. One that Cilium is writing under the read is in neither (a slot or
        backend missing that the master counts, or the master rewritten by the end of the
        read): the next read takes it."""
        if self._lookups is None:  # buffers made once for the maps' life
            self._lookups = {
                f.family: (bpf.Lookup(f.services.fd, f.services.key, f.services.value.size),
                           bpf.Lookup(f.backends.fd, BACKEND_KEY, f.backends.value.size))
                for f in self.families}
        lookups = self._lookups
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
                signature = _lookup(frontend, services, backends, last)
                if signature is None:
                    continue
                memory.signatures[frontend] = signature
                if signature == last:
                    same.append(frontend)
                    continue
                found[frontend] = _rules(_selected(frontend, signature, memory.address))
        except OSError as error:
            raise _bpf_error(error, "reading Cilium's maps") from None
        return found, same

    def close(self) -> None:
        for family in self.families:
            for pinned in (family.services, family.backends):
                os.close(pinned.fd)
        self.families = []


class Addresses:
    """Backends' (ip, port, protocol), decoded once, by their bytes: a backend value begins
    with its address, port and protocol; its state, after them, does not change where
    connections go. Full reads and reads by parts share one (full reads in a worker thread
    of their own, while reads by parts go on: a dict's single operations are atomic, and a
    value decodes the same whoever does it)."""

    def __init__(self) -> None:
        self._known: dict[bytes, tuple[str, int, int]] = {}

    def __call__(self, raw: bytes) -> tuple[str, int, int]:
        key = raw[:len(raw) - _BACKEND_TAIL[len(raw)]]
        found = self._known.get(key)
        if found is None:
            if len(self._known) >= _MAX_ADDRESSES_KEPT:
                self._known.clear()
            found = self._known[key] = (_address(key[:-3]), int.from_bytes(key[-3:-1], "big"),
                                        key[-1])
        return found


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
        """The frontend's entries as ``_lookup`` reads them, from the full read's copy."""
        entries = self.frontends.get(frontend)
        if entries is None:
            return None
        return _lookup(frontend, lambda _a, _p, slot, _r, scope: entries.get(scope << 16 | slot),
                       self.backends.get, None)


# Bytes after (address, port, protocol) in a backend value, by the value's size.
_BACKEND_TAIL = {layout.size: layout.size - _ADDRESS[family] - 3
                 for (_, family), layout in BACKEND_VALUE.items()}
_MAX_ADDRESSES_KEPT = 1 << 17  # twice Cilium's default backend map size (--bpf-lb-map-max)
# A frontend's entries as read by key — (scope, slot, value) records (``_ENTRY``) in the
# order read — and the values of the backends their slots name, in the order first named:
# two bytes objects, which a read of the same entries reproduces byte for byte (ten
# thousand frontends' signatures kept as tuples of their parts held a quarter of a million
# objects).
Signature = tuple[bytes, bytes]
_PLACE = struct.Struct("=BH")  # scope, slot
_ENTRY = struct.Struct(f"=BH{SERVICE_VALUE.size}s")
_COUNT = struct.Struct("=H")  # lb4_service.count, after the 4-byte backend_id
_BACKEND_ID = struct.Struct("=I")


def _named(entries: bytes) -> dict[int, None]:
    """The backend ids the slots of a signature's entries name, in the order first named."""
    return dict.fromkeys(_BACKEND_ID.unpack_from(raw)[0]
                         for _, slot, raw in _ENTRY.iter_unpack(entries) if slot)


def _values(signature: Signature) -> dict[int, bytes]:
    """A signature's backends' values by id."""
    entries, values = signature
    ids = _named(entries)
    size = len(values) // len(ids) if ids else 0
    return {backend_id: values[i * size:(i + 1) * size] for i, backend_id in enumerate(ids)}


def _lookup(frontend: Frontend, services: Callable[[bytes, bytes, int, int, int], bytes | None],
            backends: Callable[[int], bytes | None], last: Signature | None
            ) -> Signature | None:
    """A frontend's master entries and the slots its datapath chooses from (1..count: those
    past count are never selected, so a read of selection leaves them), and their backends;
    None when Cilium's writes were seen half-done (the reconciler writes backends, then slots,
    then the master, then deletes what is past the new end: a slot the master counts that is
    missing, a backend a slot names that is missing, or a master rewritten during the read).

    Given ``last`` — its last read by parts since the last full read, or else that full read's
    copy of its entries (``Baseline``) — only the scopes that had entries then are looked
    up, and backends it had are not looked up again: Cilium allocates backend ids upwards and
    gives an id out again only after 2^32 others (``pkg/loadbalancer/reconciler/
    id_allocator.go`` v1.18, ``acquireLocalID``), so an id names the same address for as
    long as it exists (after a Cilium restart it may name another: a full read shows it, and
    frontends are then compared with what that read found)."""
    address, port, proto = frontend
    parts: list[bytes] = []
    ids: dict[int, None] = {}  # the backends the slots name, in the order first named
    known = _values(last) if last is not None else {}
    scopes = sorted({scope for scope, slot, _ in _ENTRY.iter_unpack(last[0]) if not slot}) \
        if last is not None and last[0] else (0, SCOPE_INTERNAL)
    for scope in scopes:
        master = services(address, port, 0, proto, scope)
        if master is None:
            continue
        parts += (_PLACE.pack(scope, 0), master)
        for slot in range(1, _COUNT.unpack_from(master, 4)[0] + 1):
            raw = services(address, port, slot, proto, scope)
            if raw is None:
                return None
            parts += (_PLACE.pack(scope, slot), raw)
            ids.setdefault(_BACKEND_ID.unpack_from(raw)[0])
        if services(address, port, 0, proto, scope) != master:
            return None
    values: list[bytes] = []
    for backend_id in ids:
        value = known.get(backend_id) or backends(backend_id)
        if value is None:
            return None
        values.append(value)
    return b"".join(parts), b"".join(values)


# --- the decoded state --------------------------------------------------------------------

def _address(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


_CHUNK = 8  # entries compared as one stretch of bytes between two reads


def _split(buffer: bytes, size: int) -> list[bytes]:
    """A batch read's keys (or values), one by one."""
    return [buffer[i:i + size] for i in range(0, len(buffer), size)]


def _entries(keys: bytes, values: bytes, key: struct.Struct,
             value: struct.Struct) -> dict[bytes, bytes]:
    if len(keys) % key.size or len(values) % value.size:
        raise DataplaneParseError("a batch read returned partial entries")
    return dict(zip(_split(keys, key.size), _split(values, value.size), strict=True))


@dataclass
class _Raw:
    """One map's last read: its buffers (an unchanged map reads the same bytes).

    A hash map is read in bucket order, the same for the same keys: a read of as many entries
    as the last differs from it only where entries changed or moved within their bucket (an
    update puts the entry first in its bucket), so only the stretches (``_CHUNK`` entries)
    whose bytes differ are decoded, on both sides — every entry that changed or moved lies in
    one, and an entry's old and new places in the same run of such stretches (its bucket's
    entries are read one after another, and those between its places moved with it). A read
    of another length (entries added or removed) is diffed against the last in full. No
    entry is kept decoded between reads: the buffers are the map's state (a dict of the
    service map's 60,000 entries held 9 MiB at 10,000 frontends, changed by every full read)."""

    keys: bytes = b""
    values: bytes = b""

    def diff(self, keys: bytes, values: bytes, key: struct.Struct, value: struct.Struct
             ) -> tuple[list[tuple[bytes, bytes]], list[bytes]] | None:
        """(entries added or changed, keys removed) since the last read; None: unchanged."""
        if keys == self.keys and values == self.values:
            return None
        changed: list[tuple[bytes, bytes]] = []
        removed: list[bytes] = []
        if len(keys) == len(self.keys) and len(values) == len(self.values):
            # Run by run (stretches that differ, one after another), so that what a read
            # holds at once stays small: the run's entries as last read and as read now.
            k, v = key.size * _CHUNK, value.size * _CHUNK
            was: dict[bytes, bytes] = {}
            now: dict[bytes, bytes] = {}
            for i in range(0, len(keys) // key.size + _CHUNK, _CHUNK):
                ks, vs = slice(i * key.size, i * key.size + k), slice(i * value.size,
                                                                     i * value.size + v)
                if keys[ks] != self.keys[ks] or values[vs] != self.values[vs]:
                    was.update(_entries(self.keys[ks], self.values[vs], key, value))
                    now.update(_entries(keys[ks], values[vs], key, value))
                elif was or now:  # a run ends
                    _compare(was, now, changed, removed)
                    was, now = {}, {}
        else:
            _compare(_entries(self.keys, self.values, key, value),
                     _entries(keys, values, key, value), changed, removed)
        self.keys, self.values = keys, values
        return changed, removed


def _compare(was: dict[bytes, bytes], now: dict[bytes, bytes],
             changed: list[tuple[bytes, bytes]], removed: list[bytes]) -> None:
    changed += [entry for entry in now.items() if was.get(entry[0]) != entry[1]]
    removed += [gone for gone in was if gone not in now]


def _describe(frontend: Frontend, entries: Mapping[int, bytes], backends: Mapping[int, bytes],
              gone: Mapping[int, bytes], address: Addresses) -> ProgrammedService | None:
    """A frontend's entries (by place: scope << 16 | slot) as the other modes report a
    service port's rules; None when it has none. ``gone``: backends deleted while a slot
    still names them (named, but not selected: the datapath finds no backend there)."""
    if not entries:
        return None
    paths: dict[bool, list[ProgrammedEndpoint]] = {False: [], True: []}
    protocols: set[int] = set()
    for place, raw in sorted(entries.items()):
        slot = place & _SLOT
        if not slot:
            continue
        (backend_id,) = _BACKEND_ID.unpack_from(raw)
        value = backends.get(backend_id)
        reachable = value is not None
        value = value or gone.get(backend_id)
        if value is None:
            continue
        master = entries.get(place - slot)
        count = _COUNT.unpack_from(master, 4)[0] if master is not None else 0
        ip, port, proto = address(value)
        paths[master is not None and _local(master, place >> 16)].append(
            ProgrammedEndpoint(ip, port, reachable and slot <= count))
        protocols.add(proto)
    return _programmed(frontend, protocols, paths)


def _selected(frontend: Frontend, signature: Signature,
              address: Callable[[bytes], tuple[str, int, int]]) -> ProgrammedService | None:
    """A frontend as a read by parts found it (``_lookup``): every slot it read is one new
    connections are sent to; None when it has no entries."""
    if not signature[0]:
        return None
    values = _values(signature)
    paths: dict[bool, list[ProgrammedEndpoint]] = {False: [], True: []}
    protocols: set[int] = set()
    endpoints = paths[False]
    for scope, slot, raw in _ENTRY.iter_unpack(signature[0]):
        if slot == 0:
            endpoints = paths[_local(raw, scope)]
            continue
        ip, port, proto = address(values[_BACKEND_ID.unpack_from(raw)[0]])
        endpoints.append(ProgrammedEndpoint(ip, port, True))
        protocols.add(proto)
    return _programmed(frontend, protocols, paths)


class Rules(NamedTuple):
    """A frontend's rules as read (None: gone), and the endpoints new connections are sent to
    on each path (what a change of the rules is judged by)."""

    service: ProgrammedService | None
    chosen: tuple[tuple[ProgrammedEndpoint, ...], tuple[ProgrammedEndpoint, ...]]


def _rules(service: ProgrammedService | None) -> Rules:
    if service is None:
        return Rules(None, ((), ()))
    return Rules(service, (tuple([e for e in service.cluster if e.selected]),
                           tuple([e for e in service.local if e.selected])))


def _local(master: bytes, scope: int) -> bool:
    """Whether the scope's slots (its master's value given) are the Local traffic policy's
    path."""
    return bool(master[_FLAGS] & _EXT_LOCAL_SCOPE if scope != SCOPE_INTERNAL
                else master[_FLAGS + 1] & _INT_LOCAL_SCOPE)


def _programmed(frontend: Frontend, protocols: set[int],
                paths: dict[bool, list[ProgrammedEndpoint]]) -> ProgrammedService:
    """The frontend as the other modes report a service port's rules (a frontend of a
    release that writes no protocol, pre-1.15, takes its backends')."""
    proto = frontend.proto or (protocols.pop() if len(protocols) == 1 else 0)
    ip, port = _address(frontend.address), int.from_bytes(frontend.port, "big")
    return ProgrammedService(service=join_host_port(ip, port),
                             protocol=_PROTOCOLS.get(proto, "any"), cluster_ip=ip,
                             cluster=tuple(paths[False]), local=tuple(paths[True]))


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
        self._raw: dict[str, _Raw] = {}
        self.pending: set[Frontend] = set()  # touched by a read found inconsistent

    def apply(self, reads: Iterable[tuple[FamilyMaps, tuple[bytes, bytes], tuple[bytes, bytes]]]
              ) -> set[Frontend]:
        touched = self.pending
        self.pending = set()
        owned: set[Frontend] = set()
        moved: set[int] = set()  # backends deleted, back, or at another address
        for maps, services, backends in reads:
            family = maps.family
            diff = self._raw.setdefault(maps.services.path, _Raw()).diff(
                *services, SERVICE_KEY[family], SERVICE_VALUE)
            if diff is not None:
                self._services(family, *diff, touched, owned)
            diff = self._raw.setdefault(maps.backends.path, _Raw()).diff(
                *backends, BACKEND_KEY, BACKEND_VALUE[maps.backend_version, family])
            if diff is not None:
                self._backends(*diff, moved)
        if moved or self.gone:
            self._users(moved, touched)
        unknown = sorted({i for f in touched for place, raw in self.frontends.get(f, {}).items()
                          if place & _SLOT and (i := _BACKEND_ID.unpack_from(raw)[0])
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
            cut = len(value) - _BACKEND_TAIL[len(value)]  # the address, port and protocol
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
                if place & _SLOT and (i := _BACKEND_ID.unpack_from(raw)[0]) in watched:
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
        return _describe(frontend, self.frontends.get(frontend, {}), self.backends, self.gone,
                         self.address)

    def snapshot(self) -> DataplaneSnapshot:
        services = (self.service(f) for f in self.frontends)
        return DataplaneSnapshot("cilium", None, tuple(s for s in services if s is not None))


def _read(root: str) -> list[tuple[FamilyMaps, tuple[bytes, bytes], tuple[bytes, bytes]]]:
    """One read of every map (opened afresh: Cilium re-creates its maps when it restarts
    with another size or layout, and pins the new ones in place)."""
    maps = CiliumMaps.open(root)
    try:
        return maps.read()
    finally:
        maps.close()


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
        state.apply(await asyncio.to_thread(_read, self.root))
        snapshot = state.snapshot()
        return snapshot if self.names is None else self.names.apply(snapshot)


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
        # The frontends whose rules the install may need beyond those that changed: those read
        # by parts (what they found gives way to this read) and those not named yet.
        needed = self.parts_read.keys() | self.unnamed

        def read() -> Install:
            reads = _read(self.root)
            found = {maps.family for maps, _, _ in reads}
            if self.families - found:  # not "every frontend gone": the maps are (restart)
                raise CommandError("unavailable", ", ".join(
                    SERVICE_MAPS[f] for f in sorted(self.families - found)) + " no longer pinned")
            self.families |= found
            # The rules made here, in the read's thread: the event loop only names and
            # merges. Those the frontend is named with already (what reads by parts found
            # since the last full read, mostly) are not kept: ``kept`` says which naming
            # they matched.
            views: dict[Frontend, Rules] = {}
            kept: dict[Frontend, Named] = {}
            for frontend in self.state.apply(reads) | needed:
                rules = _rules(self.state.service(frontend))
                named = self.named.get(frontend)
                if named is not None and _same(named, rules):
                    kept[frontend] = named
                else:
                    views[frontend] = rules
            baseline = self.state.baseline()
            return lambda started: self._install_all(views, kept, baseline, started)
        return read

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
                views[frontend] = _rules(self.state.service(frontend))
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
                return self._maps.frontends(frontends, settled, self._memory, baseline)
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


BPF_ROOT = Option("bpf_root", DEFAULT_BPF_ROOT,
                  "where the BPF filesystem is mounted: Cilium's maps are pinned under its "
                  f"{PIN_DIR} (default {DEFAULT_BPF_ROOT})")


def _root(wiring: Wiring) -> str:
    return wiring.options.get(BPF_ROOT.name, BPF_ROOT.default)


async def _detect(probe: Probe) -> Detected:
    try:
        CiliumMaps.open(probe.options.get(BPF_ROOT.name, BPF_ROOT.default)).close()
    except (CommandError, DataplaneParseError) as error:
        return Detected(found=False, why=f"no Cilium maps readable: {error}")
    return Detected(found=True)


def _reader(wiring: Wiring) -> CiliumReader:
    names = FrontendNames(wiring.candidates) if wiring.candidates is not None else None
    return CiliumReader(_root(wiring), names)


async def _source(wiring: Wiring) -> DataplaneSource:
    """Nothing announces map updates: reads by parts of the service ports the slices say are
    changing, full reads under the rest of the budget."""
    clock, metrics = wiring.source_parts()
    CiliumMaps.open(_root(wiring)).close()  # fail now, not at the first read, if unreadable
    names = FrontendNames(wiring.candidates or (lambda ip, port, protocol: ()))
    return DeltaPollingSource(changes=CiliumChanges(_root(wiring), names), clock=clock,
                              metrics=metrics, interval=wiring.poll_interval,
                              max_cpu=wiring.poll_max_cpu)


MODE = DataplaneMode(
    name="cilium",
    about="Cilium's kube-proxy replacement: its service and backend BPF maps, pinned under "
          "the BPF filesystem, polled",
    detect=_detect, reader=_reader, source=_source, options=(BPF_ROOT,))
