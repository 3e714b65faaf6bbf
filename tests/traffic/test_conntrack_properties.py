"""Property-based tests (hypothesis) of the conntrack event decoder (``conntrack.new_flows``):
any NEW events, encoded here from the kernel's own numbers
(``include/uapi/linux/netfilter/nfnetlink_conntrack.h``, ``nfnetlink.h``, ``netlink.h``), decode
to the flows they carry; mangled bytes give flows or ``DataplaneParseError``, nothing else."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from observer.dataplane.model import DataplaneParseError
from observer.traffic.conntrack import Flow, new_flows

CHECKS = settings(max_examples=300, deadline=5000,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# nfnetlink_conntrack.h: enum ctattr_type / ctattr_tuple / ctattr_ip / ctattr_l4proto
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_TIMESTAMP_EVENT = 1, 2, 3, 27
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NLA_F_NESTED = 0x8000
# nfnetlink.h: NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW (a new flow) / _DELETE
CT_NEW, CT_DELETE = 1 << 8 | 0, 1 << 8 | 2
NLMSG_NOOP = 1
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}


def nla(kind: int, payload: bytes, *, nested: bool = False) -> bytes:
    """struct nlattr (host-order length and type), the payload, padding to 4 bytes."""
    header = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return header + payload + b"\0" * (-len(payload) % 4)


def tuple_attr(kind: int, src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    v6 = ":" in src
    ip = (nla(CTA_IP_V6_SRC if v6 else CTA_IP_V4_SRC, ipaddress.ip_address(src).packed)
          + nla(CTA_IP_V6_DST if v6 else CTA_IP_V4_DST, ipaddress.ip_address(dst).packed))
    l4 = (nla(CTA_PROTO_NUM, bytes([proto])) + nla(CTA_PROTO_SRC_PORT, struct.pack(">H", sport))
          + nla(CTA_PROTO_DST_PORT, struct.pack(">H", dport)))
    return nla(kind, nla(CTA_TUPLE_IP, ip, nested=True) + nla(CTA_TUPLE_PROTO, l4, nested=True),
               nested=True)


def message(kind: int, body: bytes, family: int) -> bytes:
    """struct nlmsghdr, then struct nfgenmsg (family, version 0, resource id), then ``body``."""
    payload = struct.pack("=BBH", family, 0, 0) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, 0, 0) + payload


def event(flow: Flow, client: str, service: str) -> bytes:
    """A NEW event as the kernel sends one: the original tuple client -> address it was sent to
    (a service address this node translated when ``local``, else the endpoint itself), the
    reply tuple endpoint -> client; the event's stamp when it has one."""
    proto = PROTOCOLS[flow.protocol]
    sent_to = service if flow.local else flow.ip
    body = (tuple_attr(CTA_TUPLE_ORIG, client, sent_to, proto, 40000, 80)
            + tuple_attr(CTA_TUPLE_REPLY, flow.ip, client, proto, flow.port, 40000)
            + nla(CTA_STATUS, struct.pack(">I", 8)))
    if flow.sent_ns is not None:
        body += nla(CTA_TIMESTAMP_EVENT, struct.pack(">Q", flow.sent_ns))
    return message(CT_NEW, body, socket.AF_INET6 if ":" in flow.ip else socket.AF_INET)


V4 = st.ip_addresses(v=4).map(str)
V6 = st.ip_addresses(v=6).map(str)


@st.composite
def flows(draw: st.DrawFn) -> tuple[Flow, str, str]:
    six = draw(st.booleans())
    addresses = V6 if six else V4
    endpoint, client, service = draw(st.lists(addresses, min_size=3, max_size=3, unique=True))
    # Written as the decoder writes addresses: inet_ntop's text (RFC 5952; an IPv4-mapped
    # address in its dotted form, which Python's ipaddress writes otherwise before 3.13).
    family = socket.AF_INET6 if six else socket.AF_INET
    endpoint, client, service = (socket.inet_ntop(family, socket.inet_pton(family, a))
                                 for a in (endpoint, client, service))
    flow = Flow(ip=endpoint, port=draw(st.integers(1, 65535)),
                protocol=draw(st.sampled_from(sorted(PROTOCOLS))), local=draw(st.booleans()),
                sent_ns=draw(st.none() | st.integers(0, 2**64 - 1)))
    return flow, client, service


@CHECKS
@given(st.lists(flows(), max_size=6), st.lists(st.booleans(), max_size=6))
def test_new_events_decode_to_the_flows_they_carry(
        events: list[tuple[Flow, str, str]], others: list[bool]) -> None:
    """Several messages in one datagram, other kinds among them (skipped)."""
    datagram = b""
    for i, (flow, client, service) in enumerate(events):
        if i < len(others) and others[i]:
            datagram += message(CT_DELETE, tuple_attr(CTA_TUPLE_ORIG, client, service, 6, 1, 2),
                                socket.AF_INET)
        datagram += event(flow, client, service)
    assert list(new_flows(datagram)) == [flow for flow, _, _ in events]


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    flow, client, service = draw(flows())
    data = bytearray(event(flow, client, service))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@CHECKS
@given(st.one_of(mangled(), st.binary(max_size=300)))
def test_mangled_events_give_flows_or_a_parse_error(data: bytes) -> None:
    with contextlib.suppress(DataplaneParseError):
        for flow in new_flows(data):
            assert isinstance(flow, Flow)
            assert 0 <= flow.port <= 65535
