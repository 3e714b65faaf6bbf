"""Which dumped flows a pod's stop cut (``conntrack.dumped_tcp`` and ``conntrack.cut``), on
flows encoded here from the kernel's numbers (``nfnetlink_conntrack.h``, ``nf_conntrack_tcp.h``,
``nf_conntrack_common.h``). The kernel's own behaviour — which side's flags say it closed first,
what state a stream its client closed after the pod's FIN is in — is checked on the real kernel
in ``test_connections.py``."""

from __future__ import annotations

import contextlib
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from observer.dataplane.model import DataplaneParseError
from observer.traffic.conntrack import TCP_CLOSING_STATES, TcpFlow, cut, dumped_tcp
from tests.traffic.test_conntrack_properties import (
    CHECKS,
    CTA_STATUS,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY,
    nla,
    tuple_attr,
)

CTA_PROTOINFO, CTA_TIMEOUT = 4, 7
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY = 4, 5
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 1 << 1, 1 << 2, 1 << 3
CLOSE_INIT, SACK_PERM = 0x04, 0x02
ESTABLISHED, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE = 3, 5, 6, 7, 8
SYN_SENT = 1
TIMEOUTS = {TCP_CLOSING_STATES["last_ack"]: 30, TCP_CLOSING_STATES["time_wait"]: 120,
            TCP_CLOSING_STATES["close"]: 10}
NFGENMSG = struct.pack("=BBH", socket.AF_INET, 0, 0)


def dump(state: int, *, status: int = IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED,
         original: int = SACK_PERM, reply: int = SACK_PERM, remaining: int = 100) -> bytes:
    """One flow of a dump's reply, as ``ctnetlink_dump_table`` writes it: the payload after
    the netlink header."""
    tcp = (nla(CTA_PROTOINFO_TCP_STATE, bytes([state]))
           + nla(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, bytes([original, 0xFF]))
           + nla(CTA_PROTOINFO_TCP_FLAGS_REPLY, bytes([reply, 0xFF])))
    return (NFGENMSG + tuple_attr(CTA_TUPLE_ORIG, "192.168.0.250", "10.100.0.4", 6, 40000, 8080)
            + tuple_attr(CTA_TUPLE_REPLY, "10.100.0.4", "192.168.0.250", 6, 8080, 40000)
            + nla(CTA_STATUS, struct.pack(">I", status))
            + nla(CTA_TIMEOUT, struct.pack(">I", remaining))
            + nla(CTA_PROTOINFO, nla(CTA_PROTOINFO_TCP, tcp, nested=True), nested=True))


def flow(payload: bytes) -> TcpFlow:
    decoded = dumped_tcp(payload, 0, len(payload))
    assert decoded is not None
    return decoded


@pytest.mark.parametrize(("payload", "is_cut"), [
    (dump(ESTABLISHED), True),
    (dump(CLOSE_WAIT, reply=CLOSE_INIT), True),  # its client has not closed yet
    # The pod's FIN first, its client closed after: cut, if that was since the pod's end.
    (dump(TIME_WAIT, reply=CLOSE_INIT, remaining=118), True),
    (dump(LAST_ACK, reply=CLOSE_INIT, remaining=29), True),
    (dump(TIME_WAIT, reply=CLOSE_INIT, remaining=100), False),  # 20 s ago: before it
    (dump(TIME_WAIT, reply=CLOSE_INIT, remaining=115), True),  # 5 s ago, rounded: within
    (dump(TIME_WAIT, original=CLOSE_INIT, remaining=119), False),  # its client closed first
    (dump(CLOSE, remaining=9), True),  # a reset of an established connection
    (dump(CLOSE, status=IPS_CONFIRMED, remaining=9), False),  # a refused SYN: never was up
    (dump(SYN_SENT, status=IPS_CONFIRMED), False),  # still opening: no connection to cut
])
def test_cut_is_open_or_closed_by_the_pod_since_its_end(payload: bytes, is_cut: bool) -> None:
    assert cut(flow(payload), within=5.0, timeouts=TIMEOUTS) is is_cut


def test_a_closing_state_without_a_known_timeout_is_not_counted() -> None:
    closing = flow(dump(TIME_WAIT, reply=CLOSE_INIT, remaining=119))
    assert cut(closing, within=5.0, timeouts={}) is False
    assert cut(flow(dump(ESTABLISHED)), within=5.0, timeouts={}) is True


def test_a_flow_without_tcp_information_is_not_tcp() -> None:
    payload = NFGENMSG + nla(CTA_STATUS, struct.pack(">I", IPS_ASSURED))
    assert dumped_tcp(payload, 0, len(payload)) is None


@CHECKS
@given(st.sampled_from([ESTABLISHED, TIME_WAIT, CLOSE]), st.integers(0, 255),
       st.integers(0, 2**32 - 1), st.data())
def test_mangled_dumps_give_a_flow_or_a_parse_error(state: int, flags: int, remaining: int,
                                                     data: st.DataObject) -> None:
    payload = bytearray(dump(state, reply=flags, remaining=remaining))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(payload) - 1))
        if data.draw(st.booleans()):
            payload[at] = data.draw(st.integers(0, 255))
        else:
            del payload[at:]
            if not payload:
                break
    with contextlib.suppress(DataplaneParseError):
        decoded = dumped_tcp(bytes(payload), 0, len(payload))
        if decoded is not None:
            assert isinstance(cut(decoded, within=1.0, timeouts=TIMEOUTS), bool)
