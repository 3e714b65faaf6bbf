"""Cilium's agent, as far as its load-balancing maps go: creates and pins the maps the way its
datapath declares them (``bpf/lib/lb.h``: hash maps pinned by name) and writes them in the
order its reconciler does (``pkg/loadbalancer/reconciler/bpf_reconciler.go`` v1.18,
``BPFOps.Update``): orphaned backends deleted first, then each backend's entry (when new or
its state changed) and its slot, active backends first; the master entry with ``count``
(active, or the terminating ones when none is active) and ``qcount`` (the rest); then the
slots past the new end deleted. Deleting a frontend deletes its orphaned backends, then every
slot from the master up. Backend and service ids are allocated from 1 upwards, a backend's id
shared by every frontend that lists its address.

What the lab's kube-proxy stand-in programs with ``--dataplane cilium`` (one set of maps per
emulated node, under its own BPF filesystem path), and what the Cilium reader's tests and
benchmark fill real maps with.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Sequence

from observer.dataplane import bpf
from observer.lab.rules import ServicePortRules

# The maps' layouts, stated here on their own from Cilium's declarations (cilium/cilium v1.18,
# ``bpf/lib/lb.h``; ``bpf/lib/common.h`` in older releases), so that the reader's statement of
# them (``observer.dataplane.cilium.maps``) is checked against an independent one. Each C
# declaration is quoted above its transcription; ctypes lays the fields out as the C compiler
# does (natural alignment, no packing: none of these is ``__packed``). ``__be`` fields are
# byte arrays here, written in network order.
PIN_DIR = "tc/globals"  # LIBBPF_PIN_BY_NAME, under Cilium's BPF filesystem mount
SERVICE_MAPS = {4: "cilium_lb4_services_v2", 6: "cilium_lb6_services_v2"}
BACKEND_MAPS = {4: "cilium_lb4_backends_v3", 6: "cilium_lb6_backends_v3"}


class Lb4Key(ctypes.Structure):
    """struct lb4_key { __be32 address; __be16 dport; __u16 backend_slot; __u8 proto;
    __u8 scope; __u8 pad[2]; };"""

    _fields_ = (("address", ctypes.c_uint8 * 4), ("dport", ctypes.c_uint8 * 2),
                ("backend_slot", ctypes.c_uint16), ("proto", ctypes.c_uint8),
                ("scope", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 2))


class Lb6Key(ctypes.Structure):
    """struct lb6_key { union v6addr address; __be16 dport; __u16 backend_slot; __u8 proto;
    __u8 scope; __u8 pad[2]; };"""

    _fields_ = (("address", ctypes.c_uint8 * 16), ("dport", ctypes.c_uint8 * 2),
                ("backend_slot", ctypes.c_uint16), ("proto", ctypes.c_uint8),
                ("scope", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 2))


class LbService(ctypes.Structure):
    """struct lb4_service (lb6_service alike) { union { __u32 backend_id; __u32
    affinity_timeout; __u32 l7_lb_proxy_port; }; __u16 count; __u16 rev_nat_index; __u8 flags;
    __u8 flags2; __u16 qcount; };"""

    _fields_ = (("backend_id", ctypes.c_uint32), ("count", ctypes.c_uint16),
                ("rev_nat_index", ctypes.c_uint16), ("flags", ctypes.c_uint8),
                ("flags2", ctypes.c_uint8), ("qcount", ctypes.c_uint16))


class Lb4Backend(ctypes.Structure):
    """struct lb4_backend { __be32 address; __be16 port; __u8 proto; __u8 flags;
    __u16 cluster_id; __u8 zone; __u8 pad; };"""

    _fields_ = (("address", ctypes.c_uint8 * 4), ("port", ctypes.c_uint8 * 2),
                ("proto", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("cluster_id", ctypes.c_uint16), ("zone", ctypes.c_uint8),
                ("pad", ctypes.c_uint8))


class Lb6Backend(ctypes.Structure):
    """struct lb6_backend { union v6addr address; __be16 port; __u8 proto; __u8 flags;
    __u16 cluster_id; __u8 zone; __u8 pad; };"""

    _fields_ = (("address", ctypes.c_uint8 * 16), ("port", ctypes.c_uint8 * 2),
                ("proto", ctypes.c_uint8), ("flags", ctypes.c_uint8),
                ("cluster_id", ctypes.c_uint16), ("zone", ctypes.c_uint8),
                ("pad", ctypes.c_uint8))


KEYS: dict[int, type[ctypes.Structure]] = {4: Lb4Key, 6: Lb6Key}
BACKENDS: dict[int, type[ctypes.Structure]] = {4: Lb4Backend, 6: Lb6Backend}
BACKEND_ID = ctypes.c_uint32  # the backends maps' key: __u32 backend_id


ACTIVE, TERMINATING, QUARANTINED, MAINTENANCE = 0, 1, 2, 3  # lb4_backend.flags
MAX_ENTRIES = 65536  # CILIUM_LB_MAP_MAX_ENTRIES' default (--bpf-lb-map-max)
Address = tuple[str, int, int]  # ip, port, IP protocol number
FrontendId = tuple[str, int, int, int]  # vip, port, protocol, scope


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def _packed(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


class CiliumAgent:
    """One node's load-balancing maps, created and pinned under ``root``/tc/globals (v1.18
    layouts: services v2, backends v3) and written as Cilium's agent writes them."""

    def __init__(self, root: str, *, families: Sequence[int] = (4,),
                 max_entries: int = MAX_ENTRIES) -> None:
        directory = os.path.join(root, PIN_DIR)
        os.makedirs(directory, exist_ok=True)
        self.services: dict[int, int] = {}
        self.backends: dict[int, int] = {}
        for family in families:
            for fds, name, key, value in (
                    (self.services, SERVICE_MAPS[family], ctypes.sizeof(KEYS[family]),
                     ctypes.sizeof(LbService)),
                    (self.backends, BACKEND_MAPS[family], ctypes.sizeof(BACKEND_ID),
                     ctypes.sizeof(BACKENDS[family]))):
                fds[family] = bpf.map_create(bpf.MAP_TYPE_HASH, key, value, max_entries, name)
                bpf.obj_pin(fds[family], os.path.join(directory, name))
        self.backend_ids: dict[Address, int] = {}
        self.backend_states: dict[Address, int] = {}
        self.references: dict[Address, set[FrontendId]] = {}
        self.frontend_ids: dict[FrontendId, int] = {}
        self.slots: dict[FrontendId, list[Address]] = {}
        self._next_backend = self._next_frontend = 1

    def close(self) -> None:
        for fd in (*self.services.values(), *self.backends.values()):
            os.close(fd)
        self.services, self.backends = {}, {}

    def _service_key(self, frontend: FrontendId, slot: int) -> bytes:
        vip, port, protocol, scope = frontend
        key = KEYS[_family(vip)](backend_slot=slot, proto=protocol, scope=scope)
        ctypes.memmove(key.address, _packed(vip), len(key.address))
        ctypes.memmove(key.dport, port.to_bytes(2, "big"), 2)
        return bytes(key)

    def _backend_value(self, address: Address, state: int) -> bytes:
        ip, port, protocol = address
        value = BACKENDS[_family(ip)](proto=protocol, flags=state)
        ctypes.memmove(value.address, _packed(ip), len(value.address))
        ctypes.memmove(value.port, port.to_bytes(2, "big"), 2)
        return bytes(value)

    def _orphans(self, frontend: FrontendId, keep: set[Address]) -> None:
        for address in self.slots.get(frontend, []):
            if address in keep:
                continue
            users = self.references[address]
            users.discard(frontend)
            if not users:
                del self.references[address]
                bpf.delete(self.backends[_family(address[0])],
                           bytes(BACKEND_ID(self.backend_ids[address])))
                del self.backend_ids[address], self.backend_states[address]

    def upsert(self, vip: str, port: int, backends: Sequence[tuple[str, int, int]], *,
               protocol: int = socket.IPPROTO_TCP, scope: int = 0, flags: int = 0,
               flags2: int = 0) -> None:
        """A frontend and its backends, each ``(ip, port, state)``."""
        frontend = (vip, port, protocol, scope)
        if frontend not in self.frontend_ids:
            self.frontend_ids[frontend] = self._next_frontend
            self._next_frontend += 1
        rev_nat = socket.htons(self.frontend_ids[frontend])  # stored in network order
        ordered = sorted(backends, key=lambda b: b[2])  # by state: active first (stable)
        addresses = [(ip, number, protocol) for ip, number, _ in ordered]
        self._orphans(frontend, set(addresses))
        family = _family(vip)
        counts = [0, 0, 0]  # active, terminating, other
        for slot, (address, (_, _, state)) in enumerate(zip(addresses, ordered, strict=True),
                                                        start=1):
            if address not in self.backend_ids:
                self.backend_ids[address] = self._next_backend
                self._next_backend += 1
            if self.backend_states.get(address) != state:
                bpf.update(self.backends[family], bytes(BACKEND_ID(self.backend_ids[address])),
                           self._backend_value(address, state))
                self.backend_states[address] = state
            self.references.setdefault(address, set()).add(frontend)
            bpf.update(self.services[family], self._service_key(frontend, slot),
                       bytes(LbService(backend_id=self.backend_ids[address], count=0,
                                       rev_nat_index=rev_nat, flags=flags, flags2=flags2)))
            counts[min(state, 2)] += 1
        active, terminating, other = counts
        if active == 0:  # KEP-1669: with no active backend, the terminating ones are used
            active = terminating
        else:
            other += terminating
        bpf.update(self.services[family], self._service_key(frontend, 0),
                   bytes(LbService(backend_id=0, count=active, rev_nat_index=rev_nat,
                                   flags=flags, flags2=flags2, qcount=other)))
        for slot in range(len(addresses) + 1, len(self.slots.get(frontend, [])) + 1):
            bpf.delete(self.services[family], self._service_key(frontend, slot))
        self.slots[frontend] = addresses

    def delete(self, vip: str, port: int, *, protocol: int = socket.IPPROTO_TCP,
               scope: int = 0) -> None:
        frontend = (vip, port, protocol, scope)
        self._orphans(frontend, set())
        for slot in range(len(self.slots.pop(frontend, [])) + 1):
            bpf.delete(self.services[_family(vip)], self._service_key(frontend, slot))
        self.frontend_ids.pop(frontend, None)


class CiliumProgrammer:
    """The lab's kube-proxy stand-in programming a node as Cilium does: every Ready endpoint
    active, every serving-and-terminating one kept as a terminating backend (so its
    connections go on, as with Cilium's graceful termination)."""

    def __init__(self, agent: CiliumAgent) -> None:
        self.agent = agent

    async def apply(self, services: list[ServicePortRules], *, first: bool) -> None:
        for s in services:
            self.agent.upsert(s.cluster_ip, s.port, [
                *((ip, port, ACTIVE) for ip, port in s.endpoints
                  if (ip, port) not in s.terminating),
                *((ip, port, TERMINATING) for ip, port in s.terminating)])
