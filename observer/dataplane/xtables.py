"""The legacy iptables backend's ``nat`` table as the kernel hands it out: the table blob of
``IPT_SO_GET_ENTRIES`` (what ``iptables-legacy-save`` formats), read without the command and
decoded only as far as kube-proxy's chains need, into the same ``ParsedSave`` the text path
makes (``observer.dataplane.iptables``), so both give one selection by construction.

The kernel's side (``net/ipv4/netfilter/ip_tables.c``, ``net/ipv6/netfilter/ip6_tables.c``;
structures from ``<linux/netfilter_ipv4/ip_tables.h>``, ``<linux/netfilter_ipv6/ip6_tables.h>``,
``<linux/netfilter/x_tables.h>``, ``<linux/netfilter/nf_nat.h>``):

* ``getsockopt(IPT_SO_GET_INFO)`` on a raw socket: the table's size, entry count and hook
  offsets, in microseconds. No generation number: a replacement of the same size (one
  endpoint swapped for another in one sync) leaves every field as it was.
* ``getsockopt(IPT_SO_GET_ENTRIES)``, asked for exactly the size GET_INFO gave: the whole table
  as one blob of ``ipt_entry`` records, each followed by its matches and its target, under the
  table's lock (one version, never half of two); ``EAGAIN`` when the table's size is no longer
  the one asked for (replaced in between). It costs the kernel about 5 µs per entry (the
  copies of each match and target to user space): 0.25 s at 10,000 services.
* A user chain starts with an entry whose target is ``ERROR`` carrying the chain's name; a
  jump is the standard target with a verdict >= 0, the byte offset of the chain's first rule
  (a verdict equal to the next entry's offset is a rule without a target); the table ends
  with an ``ERROR`` entry named ``ERROR``.

Everything the decoder reads is checked against the blob's bounds and the entry count; what it
cannot read (a DNAT it does not know, an offset out of place) raises ``DataplaneParseError``,
and the caller falls back to the text path: never a guessed selection.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

from observer.dataplane.commands import CommandError
from observer.dataplane.model import DataplaneParseError, ProgrammedEndpoint
from observer.dataplane.netlink import socket_error

_GET_INFO, _GET_ENTRIES = 64, 65  # IPT_SO_GET_INFO / IP6T_SO_GET_INFO and _ENTRIES
_INFO = struct.Struct("=32sI5I5III")  # ipt_getinfo: name, valid_hooks, hook_entry,
# underflow, num_entries, size
ENTRIES_HEADER = 40  # ipt_get_entries: name[32], size, padded to the entries' 8-byte alignment
_OFFSETS = struct.Struct("=HH")  # target_offset, next_offset
_HEADER = 32  # xt_entry_match / xt_entry_target: size (u16), name[29], revision (u8)
_U16 = struct.Struct("=H")
_VERDICT = struct.Struct("=i")
_FLAGS = struct.Struct("=I")
_NAT_MAP_IPS, _NAT_PROTO_SPECIFIED = 1, 2  # nf_nat.h NF_NAT_RANGE_*
_F_GOTO = 0x02  # IPT_F_GOTO / IP6T_F_GOTO: "-g", not "-j"
_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
_COMMENT = b"comment\0"
_ERROR = b"ERROR\0"
_DNAT = b"DNAT\0"


class Family(NamedTuple):
    """Where one IP family's ``ipt_entry`` keeps what the decoder reads."""

    name: str  # "ip" / "ip6", as the text path names the families
    address_family: int
    level: int  # the getsockopt level
    entry_size: int  # sizeof(struct ipt_entry) / ip6t_entry: where the first match starts
    offsets: int  # where target_offset and next_offset are
    destination: int  # ip.dst (then ip.smsk, then ip.dmsk)
    address: int  # bytes of one address
    protocol: int  # ip.proto (u16), then ip.flags (u8) at ``flags``
    flags: int
    # DNAT revisions this family's kernel module serves: revision -> (target data size,
    # offset of flags, of the lowest address, of the lowest port)
    dnat: dict[int, tuple[int, int, int, int]]


# nf_nat_ipv4_multi_range_compat (rev 0): rangesize, then {flags, min_ip, max_ip, min, max};
# nf_nat_range (rev 1): flags, min_addr[16], max_addr[16], min_proto, max_proto; nf_nat_range2
# (rev 2) adds base_proto. Each padded to 8 bytes (XT_ALIGN).
IP = Family("ip", socket.AF_INET, socket.IPPROTO_IP, entry_size=112, offsets=88,
            destination=4, address=4, protocol=80, flags=82,
            dnat={0: (24, 4, 8, 16), 1: (40, 0, 4, 36), 2: (48, 0, 4, 36)})
IP6 = Family("ip6", socket.AF_INET6, socket.IPPROTO_IPV6, entry_size=168, offsets=140,
             destination=16, address=16, protocol=128, flags=131,
             dnat={1: (40, 0, 4, 36), 2: (48, 0, 4, 36)})
FAMILIES = (IP, IP6)


@dataclass(frozen=True)
class TableInfo:
    """``IPT_SO_GET_INFO``'s answer: what changes when the table is replaced by one of another
    shape (but not by one of the same size and entry count)."""

    valid_hooks: int
    hook_entry: tuple[int, ...]
    underflow: tuple[int, ...]
    num_entries: int
    size: int

    @classmethod
    def unpack(cls, raw: bytes) -> TableInfo:
        fields = _INFO.unpack(raw)
        return cls(fields[1], fields[2:7], fields[7:12], fields[12], fields[13])


_libc = ctypes.CDLL(None, use_errno=True)
_getsockopt = _libc.getsockopt
_getsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                        ctypes.POINTER(ctypes.c_uint32))
_getsockopt.restype = ctypes.c_int


def _socket_error(error: OSError, what: str) -> CommandError:
    return socket_error(error, what, needs="CAP_NET_RAW and CAP_NET_ADMIN")


class TableGone(Exception):
    """The table was replaced between GET_INFO and GET_ENTRIES (``EAGAIN``): ask again."""


class XtTable:
    """One family's ``nat`` table through a raw socket (made by the caller, in the node's or
    a named network namespace: the socket reads the tables of the namespace it was made in).
    Calls block in the kernel (GET_ENTRIES: a quarter of a second at 10,000 services): the
    caller runs them on a thread of its own."""

    def __init__(self, sock: socket.socket, family: Family) -> None:
        self.sock = sock
        self.family = family
        self._info = ctypes.create_string_buffer(_INFO.size)

    def close(self) -> None:
        self.sock.close()

    def _call(self, option: int, buffer: ctypes.Array[ctypes.c_char] | ctypes.c_void_p,
              size: int) -> None:
        length = ctypes.c_uint32(size)
        if _getsockopt(self.sock.fileno(), self.family.level, option, buffer,
                       ctypes.byref(length)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    def info(self) -> TableInfo | None:
        """The table's shape; None when the family has no ``nat`` table here (its module
        is not loaded: nothing can be programmed in it)."""
        ctypes.memmove(self._info, b"nat".ljust(32, b"\0"), 32)
        try:
            self._call(_GET_INFO, self._info, _INFO.size)
        except OSError as error:
            if error.errno == errno.ENOENT:
                return None
            raise _socket_error(error, f"{self.family.name} nat table info") from None
        return TableInfo.unpack(self._info.raw)

    def entries(self, info: TableInfo) -> bytearray:
        """The table blob (``ENTRIES_HEADER`` bytes of request first). ``TableGone`` when
        the table no longer has that size."""
        buffer = bytearray(ENTRIES_HEADER + info.size)
        struct.pack_into("=32sI", buffer, 0, b"nat", info.size)
        view = (ctypes.c_char * len(buffer)).from_buffer(buffer)
        try:
            self._call(_GET_ENTRIES, view, len(buffer))
        except OSError as error:
            if error.errno == errno.EAGAIN:
                raise TableGone(str(error)) from None
            raise _socket_error(error, f"{self.family.name} nat table entries") from None
        finally:
            del view  # the buffer may be resized or freed only once no view holds it
        return buffer


def open_table(family: Family) -> XtTable:
    """A raw socket for ``family``'s tables, in the calling thread's network namespace."""
    try:
        sock = socket.socket(family.address_family, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as error:
        raise _socket_error(error, f"a raw {family.name} socket") from None
    return XtTable(sock, family)


# --- decoding -------------------------------------------------------------------------------

class TableReader:
    """Reads what the decoder found only when asked (a rule's comment, protocol,
    destination): most are never needed. Holds the blob until dropped."""

    def __init__(self, blob: bytes | bytearray, base: int, info: TableInfo,
                 family: Family) -> None:
        if len(blob) < base + info.size:
            raise DataplaneParseError(f"the table is {len(blob) - base} bytes, not "
                                      f"{info.size}: truncated")
        self.blob, self.base, self.end, self.family = blob, base, base + info.size, family

    def comment(self, entry: int) -> str | None:
        """The rule's first comment (the text path's ``--comment``), or None."""
        blob, family = self.blob, self.family
        target = entry + _OFFSETS.unpack_from(blob, entry + family.offsets)[0]
        match = entry + family.entry_size
        while match < target:
            size = _U16.unpack_from(blob, match)[0]
            if size < _HEADER or match + size > target:
                raise DataplaneParseError(f"a match at byte {match - self.base} overruns its "
                                          "rule")
            if blob.startswith(_COMMENT, match + 2):
                text, nul, _ = bytes(blob[match + _HEADER:match + size]).partition(b"\0")
                if not nul:
                    raise DataplaneParseError(f"a comment at byte {match - self.base} is not "
                                              "terminated")
                return text.decode(errors="replace")
            match += size
        return None

    def protocol(self, entry: int) -> str | None:
        """``-p``: tcp, udp, sctp, else the number; None when the rule names none."""
        number = _U16.unpack_from(self.blob, entry + self.family.protocol)[0]
        return _PROTOCOLS.get(number, str(number)) if number else None

    def destination(self, entry: int) -> str | None:
        """``-d``'s address (iptables-save prints it when the address or its mask is set)."""
        family = self.family
        start, size = entry + family.destination, family.address
        address = bytes(self.blob[start:start + size])
        mask = self.blob[start + 2 * size:start + 3 * size]  # after the source's mask
        if not any(address) and not any(mask):
            return None
        return socket.inet_ntop(family.address_family, address)

    def dnat(self, target: int, size: int) -> ProgrammedEndpoint:
        """A DNAT target's one destination (``--to-destination ip:port``)."""
        blob, family = self.blob, self.family
        revision = blob[target + 31]
        layout = family.dnat.get(revision)
        if layout is None or size != _HEADER + layout[0]:
            raise DataplaneParseError(f"a DNAT target of revision {revision} and {size} bytes "
                                      f"at byte {target - self.base}: not one this reader knows")
        data = target + _HEADER
        if revision == 0 and _FLAGS.unpack_from(blob, data)[0] != 1:
            raise DataplaneParseError("a DNAT target with more than one range")
        _, flags_at, low, port = layout
        flags = _FLAGS.unpack_from(blob, data + flags_at)[0]
        width = family.address if revision else 4
        high = low + (16 if revision else 4)
        low_ip = bytes(blob[data + low:data + low + width])
        high_ip = bytes(blob[data + high:data + high + width])
        ports = bytes(blob[data + port:data + port + 4])
        wanted = _NAT_MAP_IPS | _NAT_PROTO_SPECIFIED
        if flags & wanted != wanted or low_ip != high_ip or ports[:2] != ports[2:]:
            # iptables-save prints a range or a bare address: the text path refuses it too
            raise DataplaneParseError(f"a DNAT at byte {target - self.base} is not one "
                                      "address:port")
        ip = socket.inet_ntop(family.address_family, low_ip)
        return ProgrammedEndpoint(ip, int.from_bytes(ports[:2], "big"), True)


@dataclass
class DecodedTable:
    """kube-proxy's chains in one family's table, as the text path's ``SaveParser`` collects
    them (``observer.dataplane.iptables.parsed_table`` makes its ``ParsedSave``); entries are
    byte offsets for ``reader`` to read further."""

    reader: TableReader
    services: list[tuple[str, int]]  # KUBE-SERVICES jumps to a service chain: (chain, entry)
    chains: list[str]  # KUBE-SVC/SVL chains with rules
    jumps: dict[str, list[tuple[str, int]]]  # SVC/SVL chain -> its jumps to SEPs: (SEP, entry)
    seps: dict[str, tuple[ProgrammedEndpoint, int]]  # SEP chain -> last DNAT, its entry


_SERVICE_CHAINS = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-")
_RETURN = -5  # XT_RETURN: a user chain's foot, the unconditional rule that ends it
_E, _D = ord("E"), ord("D")  # first letters of the target names looked for
# A user chain's foot: the standard target (its size, an empty name, revision 0) saying RETURN.
_FOOT = struct.pack("=H29sBi", _HEADER + 8, b"", 0, _RETURN)


class Decoder:
    """Decodes one family's tables, read after read. What a read repeats from the one before
    — chain names, DNAT targets, as raw bytes — is looked up instead of decoded again (at
    10,000 services a read has 60,000 chain heads and 50,000 DNAT targets); each cache holds
    what the last read held."""

    def __init__(self, family: Family) -> None:
        self.family = family
        self._heads: dict[bytes, tuple[str, int]] = {}  # ERROR target's name -> chain, kind
        self._dnats: dict[bytes, ProgrammedEndpoint] = {}  # DNAT target -> its endpoint

    def decode(self, blob: bytes | bytearray, base: int, info: TableInfo) -> DecodedTable:
        """The table ``base`` bytes into ``blob``, as GET_INFO described it: every entry's
        offsets checked, each chain's foot, the entry count; kube-proxy's chains collected."""
        family = self.family
        reader = TableReader(blob, base, info, family)
        end = reader.end
        offsets_at, entry_size = family.offsets, family.entry_size
        minimum, flags_at = entry_size + _HEADER + 8, family.flags
        unpack_offsets, unpack_verdict = _OFFSETS.unpack_from, _VERDICT.unpack_from
        head_cache, dnat_cache = self._heads, self._dnats
        view = memoryview(blob)
        foot = _OFFSETS.pack(entry_size, minimum)  # the foot's offsets: the smallest entry
        heads_seen: dict[bytes, tuple[str, int]] = {}
        dnats_seen: dict[bytes, ProgrammedEndpoint] = {}
        heads: dict[int, str] = {}  # offset of a user chain's first rule -> the chain
        services: list[tuple[int, int]] = []  # (entry, verdict) in KUBE-SERVICES
        svc: dict[str, list[tuple[int, int]]] = {}  # KUBE-SVC/SVL -> (entry, verdict)
        rules: list[tuple[int, int]] = []  # those of the current chain
        chains: list[str] = []
        seps: dict[str, tuple[ProgrammedEndpoint, int]] = {}
        chain = ""  # "": the built-in chains, before the first user chain
        kind = 0  # 1: KUBE-SERVICES, 2: KUBE-SVC/SVL, 3: KUBE-SEP
        first = last = entry = base
        count = 0
        last_start = end - minimum  # where the last entry can start, at the latest
        if info.size < minimum:
            raise DataplaneParseError(f"a table of {info.size} bytes has no room for an entry")
        while entry < end:
            target_offset, next_offset = unpack_offsets(blob, entry + offsets_at)
            target = entry + target_offset
            following = entry + next_offset
            # (each entry leaves room for a whole entry after it, or ends the table)
            if (next_offset < minimum or next_offset & 7 or (following > last_start
                    and following != end)
                    or target_offset < entry_size or target + _HEADER > following):
                raise DataplaneParseError(f"the entry at byte {entry - base} is malformed "
                                          f"(target at {target_offset}, next at {next_offset})")
            tag = blob[target + 2]
            if tag == 0:  # the standard target: a verdict
                # A verdict naming the next entry is a rule without a target; "-g" is no "-j".
                if kind == 1 or kind == 2:
                    verdict = unpack_verdict(blob, target + _HEADER)[0]
                    if verdict >= 0 and verdict != following - base and \
                            not blob[entry + flags_at] & _F_GOTO:
                        (services if kind == 1 else rules).append((entry, verdict))
            elif tag == _E and blob.startswith(_ERROR, target + 2):
                if chain:  # it ends with its foot (libiptc writes one, the kernel expects it)
                    if not (blob.startswith(foot, last + offsets_at)
                            and blob.startswith(_FOOT, last + entry_size)):
                        raise DataplaneParseError(f"chain {chain} does not end with its "
                                                  "RETURN")
                    if kind == 2 and last != first:
                        chains.append(chain)  # a service chain with rules
                raw = bytes(view[target + _HEADER:following])
                known = head_cache.get(raw) or _chain(raw, entry - base)
                heads_seen[raw] = known
                chain, kind = known
                heads[following - base] = chain
                first = following
                if kind == 2:
                    rules = svc[chain] = []
            elif tag == _D and kind == 3 and blob.startswith(_DNAT, target + 2):
                raw = bytes(view[target:following])
                endpoint = dnat_cache.get(raw) or reader.dnat(target, len(raw))
                dnats_seen[raw] = endpoint
                seps[chain] = (endpoint, entry)
            last = entry
            entry = following
            count += 1
        if entry != end or count != info.num_entries or chain != "ERROR" or first != end:
            raise DataplaneParseError(f"{count} entries in {entry - base} bytes, ending in "
                                      f"{chain!r}: not the {info.num_entries} entries in "
                                      f"{info.size} bytes of a whole table")
        self._heads, self._dnats = heads_seen, dnats_seen

        def named(verdict: int) -> str:
            try:
                return heads[verdict]
            except KeyError:  # a jump into the middle of a chain: no table the kernel takes
                raise DataplaneParseError(f"a jump to byte {verdict}, where no chain starts"
                                          ) from None

        return DecodedTable(
            reader,
            [(name, entry) for entry, verdict in services
             if (name := named(verdict)).startswith(_SERVICE_CHAINS)],
            chains,
            {chain: [(sep, entry) for entry, verdict in jumps
                     if (sep := named(verdict)).startswith("KUBE-SEP-")]
             for chain, jumps in svc.items()},
            seps)


def _chain(raw: bytes, at: int) -> tuple[str, int]:
    """A user chain's name (an ERROR target's data) and what kind of chain it is to the
    decoder (1: KUBE-SERVICES, 2: KUBE-SVC/SVL, 3: KUBE-SEP, 0: any other)."""
    name, nul, _ = raw.partition(b"\0")
    if not nul or not name:
        raise DataplaneParseError(f"the chain name at byte {at} is not terminated")
    try:
        chain = name.decode()
    except UnicodeDecodeError:
        raise DataplaneParseError(f"the chain name at byte {at} is not UTF-8") from None
    return chain, (1 if chain == "KUBE-SERVICES" else
                   2 if chain.startswith(("KUBE-SVC-", "KUBE-SVL-")) else
                   3 if chain.startswith("KUBE-SEP-") else 0)
