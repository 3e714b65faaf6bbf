"""Connection tracking over netlink, decoded by the agent: the kernel's NEW events, the socket
filter that lets only flows to endpoints of interest through, and a filtered dump of the flows
open to one endpoint.

Numbers from ``include/uapi/linux/netfilter/nfnetlink_conntrack.h`` (attributes),
``nfnetlink.h`` (groups, subsystems), ``nf_conntrack_tcp.h`` (TCP states) and
``include/uapi/linux/filter.h`` (classic BPF). Checked on these machines (Linux 6.18): one
event per datagram, message type ``(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW``,
attributes after the 4-byte ``nfgenmsg``; address and port payloads big-endian; a NEW event is
sent when the flow is confirmed, after the NAT hooks, so its reply tuple's source is the real
endpoint (after kube-proxy's DNAT). With ``net.netfilter.nf_conntrack_timestamp=1`` kernels
>= 6.14 add ``CTA_TIMESTAMP_EVENT`` (big-endian u64, nanoseconds of CLOCK_REALTIME when the
kernel sent the event): used to back-date the reading by the time it spent queued.

The socket filter (``endpoint_filter``) is classic BPF run by the kernel on every event before
it is queued for us: it walks the netlink attributes with the ``SKF_AD_NLATTR`` and
``SKF_AD_NLATTR_NEST`` ancillary loads (``bpf_skb_get_nlattr{,_nest}`` in
``net/core/filter.c``: A = offset of attribute X found from offset A, or 0) down to
``CTA_TUPLE_REPLY`` / ``CTA_TUPLE_IP`` / ``CTA_IP_V{4,6}_SRC`` and ``CTA_TUPLE_PROTO`` /
``CTA_PROTO_SRC_PORT``, and accepts only the (address, port) pairs asked for.
libnetfilter_conntrack's ``nfct_filter_attach`` builds the same kind of program, but on the
original tuple (the service address before DNAT), which is not what identifies an endpoint.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from observer.dataplane.model import DataplaneParseError
from observer.dataplane.nlwire import HEADER, attribute, attributes, messages

NETLINK_NETFILTER = 12  # <linux/netlink.h>
GROUP_NEW = 1  # NFNLGRP_CONNTRACK_NEW
_SUBSYS_CTNETLINK = 1
MSG_NEW = (_SUBSYS_CTNETLINK << 8) | 0  # IPCTNL_MSG_CT_NEW: events of new flows
_MSG_GET = (_SUBSYS_CTNETLINK << 8) | 1  # IPCTNL_MSG_CT_GET: a dump's request and its replies
_NFGENMSG = struct.Struct("=BBH")  # family, version, resource id (big-endian, unused here)
# enum ctattr_type, ctattr_tuple, ctattr_ip, ctattr_l4proto, ctattr_protoinfo(_tcp), filter
_TUPLE_ORIG, _TUPLE_REPLY, _STATUS, _PROTOINFO, _TIMEOUT = 1, 2, 3, 4, 7
_FILTER, _TIMESTAMP_EVENT = 25, 27
_TUPLE_IP, _TUPLE_PROTO = 1, 2
_IP_V4_SRC, _IP_V4_DST, _IP_V6_SRC, _IP_V6_DST = 1, 2, 3, 4
_PROTO_NUM, _PROTO_SRC_PORT = 1, 2
_PROTOINFO_TCP, _PROTOINFO_TCP_STATE, _PROTOINFO_TCP_FLAGS_REPLY = 1, 1, 5
_IPS_ASSURED = 1 << 2  # enum ip_conntrack_status: traffic seen both ways (a TCP handshake done)
_TCP_CLOSE_INIT = 0x04  # IP_CT_TCP_FLAG_CLOSE_INIT: "this sender sent FIN first"
_FILTER_REPLY_FLAGS = 2
# CTA_FILTER_F_* (net/netfilter/nf_conntrack_netlink.c): which fields of the tuple to match.
_FILTER_F_IP_SRC, _FILTER_F_PROTO_NUM, _FILTER_F_PROTO_SRC_PORT = 1 << 0, 1 << 3, 1 << 4
# enum tcp_conntrack: a flow in one of these still has a connection both ends may use.
_TCP_OPEN_STATES = frozenset({1, 2, 3, 4, 5})  # SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT,
#                                               CLOSE_WAIT; not LAST_ACK, TIME_WAIT, CLOSE
_TCP_CLOSE = 8
# The closing states, by the sysctl (net.netfilter.nf_conntrack_tcp_timeout_<name>, seconds)
# that sets how long a flow stays in each after entering it.
TCP_CLOSING_STATES = {"last_ack": 6, "time_wait": 7, "close": _TCP_CLOSE}
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_U16 = struct.Struct(">H")
_ATTR = struct.Struct("=HH")  # struct nlattr: length, type (with flags in the top bits)
_TYPE_MASK = 0x3FFF
_U32 = struct.Struct("=I")
_U64 = struct.Struct(">Q")
_U32_BE = struct.Struct(">I")
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
_PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}
_OFFSET = HEADER.size + _NFGENMSG.size  # where a message's attributes start


class Flow(NamedTuple):
    """A new flow as its NEW event told it: the endpoint it reached (the reply tuple's source),
    whether this node translated the address to it (``local``: kube-proxy's DNAT here) or it
    arrived already addressed to it (``forwarded``), and when the kernel sent the event (ns of
    CLOCK_REALTIME; None without ``nf_conntrack_timestamp``)."""

    ip: str
    port: int
    protocol: str
    local: bool
    sent_ns: int | None


def _find(data: bytes, span: tuple[int, int] | None, kind: int, what: str) -> tuple[int, int]:
    """The payload of the first attribute ``kind`` of the run ``span`` (the walk stops there:
    the hot path reads a few attributes of each event, not all of them)."""
    if span is not None:
        start, end = span
        while start + 4 <= end:
            length, own = _ATTR.unpack_from(data, start)
            if length < 4 or start + length > end:
                break  # overruns its run: reported below
            if own & _TYPE_MASK == kind:
                return start + 4, start + length
            start += (length + 3) & ~3
    raise DataplaneParseError(f"conntrack event without {what}")


def _address(data: bytes, ip: tuple[int, int], v4: int, v6: int) -> bytes:
    try:
        span = _find(data, ip, v4, "")
    except DataplaneParseError:
        span = _find(data, ip, v6, "a source and a destination address")
    if span[1] - span[0] not in (4, 16):
        raise DataplaneParseError("conntrack tuple address neither 4 nor 16 bytes long")
    return data[span[0]:span[1]]


def _flow(data: bytes, start: int, end: int) -> Flow:
    top = attributes(data, start, end)
    reply = top.get(_TUPLE_REPLY)
    endpoint = _address(data, _find(data, reply, _TUPLE_IP, "a reply address"), _IP_V4_SRC,
                        _IP_V6_SRC)
    proto = _find(data, reply, _TUPLE_PROTO, "a reply protocol")
    number = _find(data, proto, _PROTO_NUM, "a protocol number")
    if number[1] - number[0] != 1:
        raise DataplaneParseError("conntrack protocol number not 1 byte long")
    try:
        port = _find(data, proto, _PROTO_SRC_PORT, "")
    except DataplaneParseError:  # ICMP and others: no port
        port = (0, 0)
    original = _address(data, _find(data, top.get(_TUPLE_ORIG), _TUPLE_IP,
                                    "an original address"), _IP_V4_DST, _IP_V6_DST)
    stamp = top.get(_TIMESTAMP_EVENT)
    return Flow(
        ip=socket.inet_ntop(socket.AF_INET if len(endpoint) == 4 else socket.AF_INET6,
                            endpoint),
        port=_U16.unpack_from(data, port[0])[0] if port[1] - port[0] == 2 else 0,
        protocol=_PROTOCOL_NAMES.get(data[number[0]], str(data[number[0]])),
        local=original != endpoint,
        sent_ns=_U64.unpack_from(data, stamp[0])[0] if stamp and stamp[1] - stamp[0] == 8
        else None)


def new_flows(data: bytes) -> Iterator[Flow]:
    """The NEW events of one datagram; other messages are skipped. ``DataplaneParseError`` at
    one that cannot be read (the flows before it were yielded)."""
    for kind, _, start, end in messages(data):
        if kind == MSG_NEW:
            yield _flow(data, start + _NFGENMSG.size, end)


# --- the socket filter -----------------------------------------------------------------------

_SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>
BPF_MAXINSNS = 4096  # <linux/bpf_common.h>: the kernel refuses longer classic programs
_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
_LD_IMM, _LDX_IMM, _LD_ABS_W, _LD_IND_W, _LD_IND_H = 0x00, 0x01, 0x20, 0x40, 0x48
_LD_MEM, _ST, _TAX, _JA, _JEQ, _RET = 0x60, 0x02, 0x07, 0x05, 0x15, 0x06
_AD_NLATTR, _AD_NLATTR_NEST = (-0x1000 + 12) & 0xFFFFFFFF, (-0x1000 + 16) & 0xFFFFFFFF
_ACCEPT, _REJECT = 0xFFFFFFFF, 0
_M_REPLY, _M_PORT, _M_IP = 0, 1, 2  # scratch memory slots


class _Program:
    def __init__(self) -> None:
        self.code: list[tuple[int, int, int, int]] = []

    def op(self, code: int, k: int = 0, jt: int = 0, jf: int = 0) -> None:
        self.code.append((code, jt, jf, k))

    def find(self, kind: int, *, nested: bool) -> None:
        """A = offset of attribute ``kind`` (inside the attribute at A when ``nested``)."""
        self.op(_LDX_IMM, kind)
        self.op(_LD_ABS_W, _AD_NLATTR_NEST if nested else _AD_NLATTR)

    def reject_if_zero(self) -> None:
        """The attribute was not found (A is 0): reject."""
        self.op(_JEQ, 0, jf=1)
        self.op(_RET, _REJECT)


def endpoint_filter(endpoints: Iterable[tuple[str, int | None]]) -> bytes | None:
    """A classic BPF program accepting only NEW events whose reply tuple's source is one of
    ``endpoints`` (address, port; port None: any); None when it would be longer than the kernel
    allows (the caller then lets every event through and filters them itself). No endpoints:
    rejects all."""
    by_address: dict[bytes, set[int | None]] = {}
    for ip, port in endpoints:
        by_address.setdefault(ipaddress.ip_address(ip).packed, set()).add(port)
    p = _Program()
    p.op(_LD_IMM, _OFFSET)
    p.find(_TUPLE_REPLY, nested=False)
    p.reject_if_zero()
    p.op(_ST, _M_REPLY)
    p.find(_TUPLE_PROTO, nested=True)
    p.reject_if_zero()
    p.find(_PROTO_SRC_PORT, nested=True)
    p.reject_if_zero()
    p.op(_TAX)
    p.op(_LD_IND_H, 4)  # the port, after the attribute's 4-byte header
    p.op(_ST, _M_PORT)
    p.op(_LD_MEM, _M_REPLY)
    p.find(_TUPLE_IP, nested=True)
    p.reject_if_zero()
    p.op(_ST, _M_IP)
    for family, v_src in ((4, _IP_V4_SRC), (16, _IP_V6_SRC)):  # each family's blocks
        chosen = {a: ports for a, ports in by_address.items() if len(a) == family}
        p.op(_LD_MEM, _M_IP)
        p.find(v_src, nested=True)
        p.op(_JEQ, 0, jf=1)
        skip_at = len(p.code)
        p.op(_JA)  # not this family: to the next one (its distance patched below)
        p.op(_TAX)  # X: the address attribute, for every block of this family
        for packed, ports in sorted(chosen.items()):
            _address_block(p, packed, None if None in ports else sorted(
                port for port in ports if port is not None))
        p.op(_RET, _REJECT)
        p.code[skip_at] = (_JA, 0, 0, len(p.code) - skip_at - 1)
    p.op(_RET, _REJECT)  # neither family: no address
    if len(p.code) > BPF_MAXINSNS:
        return None
    return b"".join(_INSN.pack(*insn) for insn in p.code)


def _address_block(p: _Program, packed: bytes, ports: list[int] | None) -> None:
    """If X's address is ``packed``: accept on one of ``ports`` (None: on any), else reject
    (addresses are distinct, no later block can match); if not, fall through to the next
    block."""
    words = [packed[i:i + 4] for i in range(0, len(packed), 4)]
    size = 2 * len(words) + (1 if ports is None else 1 + len(ports) + 2)  # this block's length
    for i, word in enumerate(words):
        p.op(_LD_IND_W, 4 + 4 * i)
        p.op(_JEQ, int.from_bytes(word, "big"), jf=size - 2 * i - 2)
    if ports is None:
        p.op(_RET, _ACCEPT)
        return
    p.op(_LD_MEM, _M_PORT)
    for i, port in enumerate(ports):
        p.op(_JEQ, port, jt=len(ports) - i)
    p.op(_RET, _REJECT)
    p.op(_RET, _ACCEPT)


def attach(sock: socket.socket, program: bytes | None) -> None:
    """Install ``program`` on ``sock`` (replacing the one before, atomically); None: accept
    everything (a program of one ``ret`` accepting all)."""
    if program is None:
        program = _INSN.pack(_RET, 0, 0, _ACCEPT)
    code = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog: unsigned short len, (padding), struct sock_filter *filter
    fprog = struct.pack("HL", len(program) // _INSN.size, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


# --- the flows open to an endpoint -----------------------------------------------------------

def open_flows_request(ip: str, port: int, protocol: str, seq: int) -> bytes:
    """A dump of the flows whose reply tuple comes from ``ip``:``port``, filtered in the kernel
    (``CTA_FILTER``, Linux >= 5.8 for the original tuple, 5.10 for the reply one)."""
    address = ipaddress.ip_address(ip)
    v_src = _IP_V4_SRC if address.version == 4 else _IP_V6_SRC
    tuple_ = attribute(_TUPLE_REPLY, attribute(_TUPLE_IP, attribute(v_src, address.packed),
                                               nested=True)
                       + attribute(_TUPLE_PROTO, attribute(_PROTO_NUM,
                                                           bytes([PROTOCOLS[protocol]]))
                                   + attribute(_PROTO_SRC_PORT, _U16.pack(port)), nested=True),
                       nested=True)
    flags = _FILTER_F_IP_SRC | _FILTER_F_PROTO_NUM | _FILTER_F_PROTO_SRC_PORT
    body = (_NFGENMSG.pack(socket.AF_INET if address.version == 4 else socket.AF_INET6, 0, 0)
            + tuple_ + attribute(_FILTER, attribute(_FILTER_REPLY_FLAGS, _U32.pack(flags)),
                                 nested=True))
    return HEADER.pack(HEADER.size + len(body), _MSG_GET, _NLM_F_REQUEST | _NLM_F_DUMP, seq,
                       0) + body


class TcpFlow(NamedTuple):
    """A dumped TCP flow, as far as telling whether a pod's stop cut it goes."""

    state: int  # enum tcp_conntrack
    assured: bool  # IPS_ASSURED: traffic seen both ways (the handshake done)
    reply_closed_first: bool  # the reply side (the endpoint: the pod) sent the first FIN
    remaining: int  # CTA_TIMEOUT: whole seconds before it expires (rounded down)

    @property
    def open(self) -> bool:
        """Set up or in use, not closed or closing on both sides."""
        return self.state in _TCP_OPEN_STATES


def dumped_tcp(data: bytes, start: int, end: int) -> TcpFlow | None:
    """One dumped flow (a ``_MSG_GET`` reply's payload); None when it is not TCP."""
    top = attributes(data, start + _NFGENMSG.size, end)
    info = top.get(_PROTOINFO)
    nest = attributes(data, *info).get(_PROTOINFO_TCP) if info is not None else None
    tcp = attributes(data, *nest) if nest is not None else {}
    state = tcp.get(_PROTOINFO_TCP_STATE)
    if state is None:
        return None
    if state[1] - state[0] != 1:
        raise DataplaneParseError("dumped conntrack flow with a TCP state not 1 byte long")
    flags = tcp.get(_PROTOINFO_TCP_FLAGS_REPLY)  # struct nf_ct_tcp_flags: flags, mask
    return TcpFlow(state=data[state[0]],
                   assured=bool(_u32(data, top.get(_STATUS), "a status") & _IPS_ASSURED),
                   reply_closed_first=flags is not None and flags[1] > flags[0]
                   and bool(data[flags[0]] & _TCP_CLOSE_INIT),
                   remaining=_u32(data, top.get(_TIMEOUT), "a timeout"))


def cut(flow: TcpFlow, *, within: float, timeouts: Mapping[int, int]) -> bool:
    """Whether the pod's stop cut ``flow``: an established connection (``assured``: a
    connection still being set up is not one its client had; its attempt fails or succeeds
    elsewhere) still open, or one the pod's side closed — its FIN first, or a reset from
    either side — that entered its closing state less than ``within`` seconds ago. A streaming
    client sees the pod's FIN and closes at once: by the time the stop is seen its flow is
    LAST_ACK or TIME_WAIT, gone from the open states but cut all the same; a flow its client
    closed first was done with.

    How long a flow has been in its state: ``timeouts[state]`` (the namespace's sysctl,
    seconds) minus its countdown, which the kernel rounds down to a second
    (``nf_ct_expires() / HZ``): a flow closed up to a second before ``within`` counts too. A
    closing state without a timeout in ``timeouts`` is not counted."""
    if not flow.assured:
        return False
    if flow.open:
        return True
    timeout = timeouts.get(flow.state)
    if timeout is None:
        return False
    if flow.state != _TCP_CLOSE and not flow.reply_closed_first:
        return False
    return timeout - flow.remaining - 1 < within


def _u32(data: bytes, span: tuple[int, int] | None, what: str) -> int:
    if span is None or span[1] - span[0] != 4:
        raise DataplaneParseError(f"dumped conntrack flow without {what} of 4 bytes")
    return int(_U32_BE.unpack_from(data, span[0])[0])
