"""Cilium's load-balancing maps: their layouts and opening and reading them.

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

Each map's layout is found from what is pinned and checked against the kernel's key and value
sizes. The lab's map writer (``observer.lab.cilium``) states the same layouts on its own, from
Cilium's headers, so each is checked against the other.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

from observer.dataplane import bpf
from observer.dataplane.commands import CommandError
from observer.dataplane.model import DataplaneParseError

DEFAULT_BPF_ROOT = "/sys/fs/bpf"
PIN_DIR = "tc/globals"  # Cilium's pin path for its global maps, under the BPF filesystem
SERVICE_MAPS = {4: "cilium_lb4_services_v2", 6: "cilium_lb6_services_v2"}
# Newest first: the first one pinned is read.
BACKEND_MAPS = {4: ("cilium_lb4_backends_v3", "cilium_lb4_backends_v2"),
                6: ("cilium_lb6_backends_v3", "cilium_lb6_backends_v2")}
ADDRESS_SIZE = {4: 4, 6: 16}
SERVICE_KEY = {f: struct.Struct(f"={n}s2sHBB2x") for f, n in ADDRESS_SIZE.items()}
SERVICE_VALUE = struct.Struct("=IHHBBH")  # backend_id, count, rev_nat (BE), flags, flags2, qcount
BACKEND_KEY = struct.Struct("=I")
BACKEND_VALUE = {(name, f): struct.Struct(f"={n}s2sBB" + ("HBx" if name.endswith("v3") else ""))
                 for f, n in ADDRESS_SIZE.items() for name in BACKEND_MAPS[f]}
SCOPE_INTERNAL = 1


class Frontend(NamedTuple):
    address: bytes  # 4 or 16 bytes, network order
    port: bytes  # 2 bytes, network order
    proto: int  # 0 (any) before v1.15


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


def bpf_error(error: OSError, what: str) -> CommandError:
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
                raise bpf_error(error, f"opening Cilium's maps under {directory}") from None
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
            raise bpf_error(error, "reading Cilium's maps") from None

    def lookups(self) -> dict[int, tuple[bpf.Lookup, bpf.Lookup]]:
        """Per family, entry-by-entry lookups of its services and backends maps (their buffers
        made once for the maps' life)."""
        if self._lookups is None:
            self._lookups = {
                f.family: (bpf.Lookup(f.services.fd, f.services.key, f.services.value.size),
                           bpf.Lookup(f.backends.fd, BACKEND_KEY, f.backends.value.size))
                for f in self.families}
        return self._lookups

    def close(self) -> None:
        for family in self.families:
            for pinned in (family.services, family.backends):
                os.close(pinned.fd)
        self.families = []


def read_maps(root: str) -> list[tuple[FamilyMaps, tuple[bytes, bytes], tuple[bytes, bytes]]]:
    """One read of every map (opened afresh: Cilium re-creates its maps when it restarts
    with another size or layout, and pins the new ones in place)."""
    maps = CiliumMaps.open(root)
    try:
        return maps.read()
    finally:
        maps.close()
