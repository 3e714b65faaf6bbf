"""kube-proxy's IPVS mode, from the kernel's IPVS tables over generic netlink.

Virtual servers are ``VIP:port`` (cluster IPs, external IPs, node ports), real servers are
``podIP:port``. A terminating TCP real server is set to weight 0 (no new connections) and
deleted only once its connections drain (``pkg/proxy/ipvs/graceful_termination.go``): weight
0 is the removal signal. IPVS knows no service names; ``service`` is ``VIP:port`` here, and
``names.FrontendNames`` gives each virtual server the name of the service port whose
endpoints it balances.

``service_attrs`` / ``dest_attrs`` decode the replies of ``IPVS_CMD_GET_SERVICE`` and
``IPVS_CMD_GET_DEST`` dumps — what the kernel puts there is ``ip_vs_genl_fill_service`` /
``ip_vs_genl_fill_dest`` in ``net/netfilter/ipvs/ip_vs_ctl.c`` with the layout of
``include/uapi/linux/ip_vs.h`` — into the attributes ``parse_ipvs`` reads, by name
(``IPVS_SVC_ATTR_*``, ``IPVS_DEST_ATTR_*``, the names and values pyroute2 would give them).
The kernel of our CI machines has no IPVS module, so both are tested on messages encoded in
that layout (``observer/testing/ipvs_netlink.py``, its origin stated there), and the
decoding against pyroute2's of the same bytes.

The dump is what ``ipvsadm -Ln`` asks for: the ``IPVS`` generic netlink family's id from the
controller, an ``IPVS_CMD_GET_SERVICE`` dump, then an ``IPVS_CMD_GET_DEST`` dump per virtual
server, naming it by the identity attributes the kernel gave (``ip_vs_genl_dump_services`` /
``ip_vs_genl_dump_dests``). A kernel without the ``ip_vs`` module has no such family and answers
``ENOENT``, reported as ``unavailable``. No change events: the mode is polled.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.mode import DataplaneMode, Detected, Probe, Wiring
from observer.dataplane.model import (
    Backend,
    DataplaneParseError,
    DataplaneSnapshot,
    DataplaneSource,
    ProgrammedEndpoint,
    ProgrammedService,
)
from observer.dataplane.names import FrontendNames
from observer.dataplane.netlink import (
    NETLINK_GENERIC,
    GenericNetlink,
    netlink_socket,
    socket_error,
)
from observer.dataplane.nlwire import attribute, attributes
from observer.dataplane.sources import PollingSource
from observer.values import Mode, join_host_port

# One netlink attribute set, by name ("IPVS_SVC_ATTR_PORT": 53).
Attrs = Mapping[str, object]
# A virtual server's attributes and those of its real servers.
Virtual = tuple[Attrs, Iterable[Attrs]]

_PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_SCTP: "sctp"}
_FAMILIES = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}
_ADDRESS_SIZES = {int(socket.AF_INET): 4, int(socket.AF_INET6): 16}
_IPVS_CMD_ATTR_SERVICE, _IPVS_CMD_ATTR_DEST = 1, 2
# The attributes read, by number: name, and how the payload is laid out ("addr": the 16-byte
# union nf_inet_addr, decoded by the family attribute beside it; ports are big-endian).
_Layout = dict[int, tuple[str, str]]
_SERVICE: _Layout = {1: ("IPVS_SVC_ATTR_AF", "=H"), 2: ("IPVS_SVC_ATTR_PROTOCOL", "=H"),
                     3: ("IPVS_SVC_ATTR_ADDR", "addr"), 4: ("IPVS_SVC_ATTR_PORT", ">H"),
                     5: ("IPVS_SVC_ATTR_FWMARK", "=I")}
_DEST: _Layout = {1: ("IPVS_DEST_ATTR_ADDR", "addr"), 2: ("IPVS_DEST_ATTR_PORT", ">H"),
                  4: ("IPVS_DEST_ATTR_WEIGHT", "=I"), 11: ("IPVS_DEST_ATTR_ADDR_FAMILY", "=H")}


def service_attrs(reply: bytes) -> Attrs:
    """A ``IPVS_CMD_GET_SERVICE`` reply's attributes (after its generic netlink header)."""
    return _decode(reply, _IPVS_CMD_ATTR_SERVICE, _SERVICE, "IPVS_SVC_ATTR_AF")


def dest_attrs(reply: bytes) -> Attrs:
    """A ``IPVS_CMD_GET_DEST`` reply's attributes."""
    return _decode(reply, _IPVS_CMD_ATTR_DEST, _DEST, "IPVS_DEST_ATTR_ADDR_FAMILY")


def service_identity(reply: bytes) -> bytes:
    """The attributes that name a virtual server (family; protocol, address and port, or
    firewall mark), as the kernel gave them: what ``IPVS_CMD_GET_DEST`` is asked with
    (``ip_vs_genl_parse_service`` reads no more for a lookup)."""
    nested = _nested(reply, _IPVS_CMD_ATTR_SERVICE)
    return b"".join(reply[start - 4:end] + b"\0" * (-(end - start) % 4)
                    for kind, (start, end) in attributes(reply, *nested).items()
                    if kind in _SERVICE)


def _nested(reply: bytes, kind: int) -> tuple[int, int]:
    span = attributes(reply).get(kind)
    if span is None:
        raise DataplaneParseError(f"IPVS reply without its attribute {kind}")
    return span


def _decode(reply: bytes, kind: int, layout: _Layout, family_name: str) -> Attrs:
    out: dict[str, object] = {}
    address: tuple[str, bytes] | None = None
    for number, (start, end) in attributes(reply, *_nested(reply, kind)).items():
        if number not in layout:
            continue  # scheduler, flags, thresholds, counters, statistics: not needed
        name, form = layout[number]
        raw = reply[start:end]
        if form == "addr":
            address = (name, raw)
            continue
        try:
            out[name] = struct.unpack(form, raw)[0]
        except struct.error:
            raise DataplaneParseError(f"{name} has {len(raw)} bytes") from None
    if address is not None:
        name, raw = address
        family = out.get(family_name)
        # Undecodable without its family (as pyroute2 leaves it): parse_ipvs says so.
        out[name] = raw
        if isinstance(family, int) and family in _ADDRESS_SIZES and len(raw) == 16:
            out[name] = socket.inet_ntop(family, raw[:_ADDRESS_SIZES[family]])
    return out


def parse_ipvs(virtuals: Iterable[Virtual]) -> DataplaneSnapshot:
    """Virtual servers and their real servers; a real server is selected while its weight is
    above 0. Firewall-mark virtual servers (no address: kube-proxy makes none) are left out."""
    services = []
    for service, dests in virtuals:
        family = _number(service, "IPVS_SVC_ATTR_AF")
        if "IPVS_SVC_ATTR_FWMARK" in service and "IPVS_SVC_ATTR_ADDR" not in service:
            continue
        protocol = _PROTOCOLS.get(_number(service, "IPVS_SVC_ATTR_PROTOCOL"))
        if protocol is None:
            raise DataplaneParseError(f"unknown protocol in {dict(service)!r}"[:200])
        vip = _address(service, "IPVS_SVC_ATTR_ADDR", family)
        port = _number(service, "IPVS_SVC_ATTR_PORT", 0xFFFF)
        reals = tuple(ProgrammedEndpoint(
            _address(dest, "IPVS_DEST_ATTR_ADDR",
                     _number(dest, "IPVS_DEST_ATTR_ADDR_FAMILY", 0xFFFF)),
            _number(dest, "IPVS_DEST_ATTR_PORT", 0xFFFF),
            _number(dest, "IPVS_DEST_ATTR_WEIGHT") > 0) for dest in dests)
        services.append(ProgrammedService(service=join_host_port(vip, port), protocol=protocol,
                                          cluster_ip=vip, cluster=reals, local=()))
    return DataplaneSnapshot("ipvs", None, tuple(services))


def _number(attrs: Attrs, name: str, top: int = 0xFFFFFFFF) -> int:
    value = attrs.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise DataplaneParseError(f"{name} is {value!r}, not a number up to {top}")
    return value


def _address(attrs: Attrs, name: str, family: int) -> str:
    """An address attribute, as pyroute2 decodes the kernel's 16-byte ``union nf_inet_addr``
    by the family attribute next to it (``IPVS_DEST_ATTR_ADDR_FAMILY`` dates from Linux 3.18;
    no kernel Kubernetes supports lacks it)."""
    value = attrs.get(name)
    try:
        address = ipaddress.ip_address(value if isinstance(value, str) else b"")
    except ValueError:
        raise DataplaneParseError(f"{name} is {value!r}, not an address") from None
    if address.version != _FAMILIES.get(family):
        raise DataplaneParseError(f"{name} {address} is not of address family {family}")
    return str(address)


# --- reading: the kernel's tables over generic netlink ----------------------------------

_IPVS_CMD_GET_SERVICE, _IPVS_CMD_GET_DEST, _IPVS_CMD_ATTR_SERVICE = 4, 8, 1  # <linux/ip_vs.h>
_IPVS_GENL_VERSION = 1



async def ipvs_dump(netns: str | None) -> list[Virtual]:
    """Every virtual server's attributes and its real servers'; ``CommandError`` on failure
    (``unavailable``: no IPVS in this kernel; ``permission``; ``failed``), and
    ``DataplaneParseError`` for a message that cannot be read. The caller bounds its time."""
    try:
        sock = await netlink_socket(netns, NETLINK_GENERIC)
    except OSError as error:
        raise _ipvs_error(error) from None
    try:
        genl = GenericNetlink(sock)
        family = await genl.family("IPVS")
        virtuals: list[Virtual] = []
        for service in await genl.dump(family, _IPVS_CMD_GET_SERVICE,
                                       version=_IPVS_GENL_VERSION):
            which = attribute(_IPVS_CMD_ATTR_SERVICE, service_identity(service), nested=True)
            dests = await genl.dump(family, _IPVS_CMD_GET_DEST, which,
                                    version=_IPVS_GENL_VERSION)
            virtuals.append((service_attrs(service), [dest_attrs(d) for d in dests]))
        return virtuals
    except OSError as error:
        raise _ipvs_error(error) from None
    finally:
        sock.close()


def _ipvs_error(error: OSError) -> CommandError:
    if error.errno == errno.ENOENT:
        return CommandError("unavailable", "the kernel has no IPVS (ip_vs module not loaded)")
    return socket_error(error, "IPVS netlink")


@dataclass
class IpvsReader:
    """The kernel's IPVS tables over netlink (in ``runner``'s namespace, within its timeout);
    with ``names``, virtual servers named after service ports. ``dump`` is the netlink
    request (``ipvs_dump``), replaceable where there is no IPVS to ask."""

    runner: CommandRunner
    names: FrontendNames | None = None
    dump: Callable[[str | None], Awaitable[list[Virtual]]] = ipvs_dump
    mode: Mode = "ipvs"
    backend: Backend | None = None

    async def read(self) -> DataplaneSnapshot:
        try:
            async with asyncio.timeout(self.runner.timeout):
                virtuals = await self.dump(self.runner.netns)
        except TimeoutError:
            raise CommandError("timeout", f"IPVS netlink dump did not finish in "
                                          f"{self.runner.timeout} s") from None
        snapshot = parse_ipvs(virtuals)
        return snapshot if self.names is None else self.names.apply(snapshot)


async def _detect(probe: Probe) -> Detected:
    _, rules, ipvs = await probe.iptables_backend()
    if rules and ipvs:
        return Detected(found=True)
    return Detected(found=False, why="no IPVS mode rules (matching the KUBE-CLUSTER-IP ipset)")


def _reader(wiring: Wiring) -> IpvsReader:
    names = FrontendNames(wiring.candidates) if wiring.candidates is not None else None
    return IpvsReader(wiring.runner, names)


async def _source(wiring: Wiring) -> DataplaneSource:
    """No notification announces IPVS changes: polled."""
    clock, metrics = wiring.source_parts()
    return PollingSource(reader=_reader(wiring), clock=clock, metrics=metrics,
                         interval=wiring.poll_interval, max_cpu=wiring.poll_max_cpu)


MODE = DataplaneMode(
    name="ipvs",
    about="kube-proxy's IPVS mode (deprecated since Kubernetes 1.35): the kernel's virtual "
          "servers over generic netlink, polled; weight 0 is a removal",
    detect=_detect, reader=_reader, source=_source)
