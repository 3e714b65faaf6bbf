"""Decoding Cilium's map entries: pure functions of their bytes (no map, no system call).

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
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from observer.dataplane.cilium.maps import (
    ADDRESS_SIZE,
    BACKEND_VALUE,
    SCOPE_INTERNAL,
    SERVICE_VALUE,
    Frontend,
)
from observer.dataplane.model import DataplaneParseError, ProgrammedEndpoint, ProgrammedService
from observer.values import join_host_port

_PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_SCTP: "sctp"}
_EXT_LOCAL_SCOPE = 1 << 2  # lb4_service.flags: externalTrafficPolicy=Local
_INT_LOCAL_SCOPE = 1 << 4  # lb4_service.flags2: internalTrafficPolicy=Local
_FLAGS = 8  # offset of lb4_service.flags in a service value; flags2 follows it
SLOT_MASK = 0xFFFF  # an entry's place in a frontend's entries: scope << 16 | backend_slot
# Bytes after (address, port, protocol) in a backend value, by the value's size.
BACKEND_TAIL = {layout.size: layout.size - ADDRESS_SIZE[family] - 3
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
BACKEND_ID = struct.Struct("=I")


class Addresses:
    """Backends' (ip, port, protocol), decoded once, by their bytes: a backend value begins
    with its address, port and protocol; its state, after them, does not change where
    connections go. Full reads and reads by parts share one (full reads in a worker thread
    of their own, while reads by parts go on: a dict's single operations are atomic, and a
    value decodes the same whoever does it)."""

    def __init__(self) -> None:
        self._known: dict[bytes, tuple[str, int, int]] = {}

    def __call__(self, raw: bytes) -> tuple[str, int, int]:
        key = raw[:len(raw) - BACKEND_TAIL[len(raw)]]
        found = self._known.get(key)
        if found is None:
            if len(self._known) >= _MAX_ADDRESSES_KEPT:
                self._known.clear()
            found = self._known[key] = (ip_text(key[:-3]), int.from_bytes(key[-3:-1], "big"),
                                        key[-1])
        return found


def ip_text(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _named(entries: bytes) -> dict[int, None]:
    """The backend ids the slots of a signature's entries name, in the order first named."""
    return dict.fromkeys(BACKEND_ID.unpack_from(raw)[0]
                         for _, slot, raw in _ENTRY.iter_unpack(entries) if slot)


def backend_values(signature: Signature) -> dict[int, bytes]:
    """A signature's backends' values by id."""
    entries, values = signature
    ids = _named(entries)
    size = len(values) // len(ids) if ids else 0
    return {backend_id: values[i * size:(i + 1) * size] for i, backend_id in enumerate(ids)}


def lookup_frontend(frontend: Frontend,
                    services: Callable[[bytes, bytes, int, int, int], bytes | None],
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
    known = backend_values(last) if last is not None else {}
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
            ids.setdefault(BACKEND_ID.unpack_from(raw)[0])
        if services(address, port, 0, proto, scope) != master:
            return None
    values: list[bytes] = []
    for backend_id in ids:
        value = known.get(backend_id) or backends(backend_id)
        if value is None:
            return None
        values.append(value)
    return b"".join(parts), b"".join(values)


_CHUNK = 8  # entries compared as one stretch of bytes between two reads


def _split(buffer: bytes, size: int) -> list[bytes]:
    """A batch read's keys (or values), one by one."""
    return [buffer[i:i + size] for i in range(0, len(buffer), size)]


def entries_of(keys: bytes, values: bytes, key: struct.Struct,
             value: struct.Struct) -> dict[bytes, bytes]:
    if len(keys) % key.size or len(values) % value.size:
        raise DataplaneParseError("a batch read returned partial entries")
    return dict(zip(_split(keys, key.size), _split(values, value.size), strict=True))


@dataclass
class RawMap:
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
                    was.update(entries_of(self.keys[ks], self.values[vs], key, value))
                    now.update(entries_of(keys[ks], values[vs], key, value))
                elif was or now:  # a run ends
                    _compare(was, now, changed, removed)
                    was, now = {}, {}
        else:
            _compare(entries_of(self.keys, self.values, key, value),
                     entries_of(keys, values, key, value), changed, removed)
        self.keys, self.values = keys, values
        return changed, removed


def _compare(was: dict[bytes, bytes], now: dict[bytes, bytes],
             changed: list[tuple[bytes, bytes]], removed: list[bytes]) -> None:
    changed += [entry for entry in now.items() if was.get(entry[0]) != entry[1]]
    removed += [gone for gone in was if gone not in now]


def describe(frontend: Frontend, entries: Mapping[int, bytes], backends: Mapping[int, bytes],
              gone: Mapping[int, bytes], address: Addresses) -> ProgrammedService | None:
    """A frontend's entries (by place: scope << 16 | slot) as the other modes report a
    service port's rules; None when it has none. ``gone``: backends deleted while a slot
    still names them (named, but not selected: the datapath finds no backend there)."""
    if not entries:
        return None
    paths: dict[bool, list[ProgrammedEndpoint]] = {False: [], True: []}
    protocols: set[int] = set()
    for place, raw in sorted(entries.items()):
        slot = place & SLOT_MASK
        if not slot:
            continue
        (backend_id,) = BACKEND_ID.unpack_from(raw)
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


def decode_selection(frontend: Frontend, signature: Signature,
                     address: Callable[[bytes], tuple[str, int, int]]
                     ) -> ProgrammedService | None:
    """A frontend as a read by parts found it (``lookup_frontend``): every slot it read is one
    new connections are sent to; None when it has no entries."""
    if not signature[0]:
        return None
    values = backend_values(signature)
    paths: dict[bool, list[ProgrammedEndpoint]] = {False: [], True: []}
    protocols: set[int] = set()
    endpoints = paths[False]
    for scope, slot, raw in _ENTRY.iter_unpack(signature[0]):
        if slot == 0:
            endpoints = paths[_local(raw, scope)]
            continue
        ip, port, proto = address(values[BACKEND_ID.unpack_from(raw)[0]])
        endpoints.append(ProgrammedEndpoint(ip, port, True))
        protocols.add(proto)
    return _programmed(frontend, protocols, paths)


class Rules(NamedTuple):
    """A frontend's rules as read (None: gone), and the endpoints new connections are sent to
    on each path (what a change of the rules is judged by)."""

    service: ProgrammedService | None
    chosen: tuple[tuple[ProgrammedEndpoint, ...], tuple[ProgrammedEndpoint, ...]]


def rules_of(service: ProgrammedService | None) -> Rules:
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
    ip, port = ip_text(frontend.address), int.from_bytes(frontend.port, "big")
    return ProgrammedService(service=join_host_port(ip, port),
                             protocol=_PROTOCOLS.get(proto, "any"), cluster_ip=ip,
                             cluster=tuple(paths[False]), local=tuple(paths[True]))
