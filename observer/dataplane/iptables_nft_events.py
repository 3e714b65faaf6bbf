"""iptables-nft's jumps, followed from the kernel's nf_tables change events over netlink.

The kernel announces every committed nf_tables change to the ``NFNLGRP_NFTABLES`` multicast
group of ``NETLINK_NETFILTER`` sockets: one message per table, chain, rule, set or element
added or deleted, and at the end of each transaction an ``NFT_MSG_NEWGEN`` (the new
generation) — ``nf_tables_commit()`` and ``nf_tables_gen_notify()`` in the kernel's
``net/netfilter/nf_tables_api.c``; message and attribute numbers from
``include/uapi/linux/netfilter/nf_tables.h``. This is what ``nft monitor`` prints, read here
without it: for iptables-nft's rule churn (kube-proxy rewrites whole chains per partial sync)
formatting each event as JSON cost ``nft`` more CPU than everything else the agent does
(docs/benchmarks.md).

Only what iptables-nft's ``JumpState`` needs is decoded: rules added to or deleted from
``KUBE-SVC-``/``KUBE-SVL-`` chains of the ``nat`` tables (``ip``, ``ip6``), with the chains an
added rule jumps or goes to (an ``immediate`` expression holding a verdict: iptables-nft
writes ``-j CHAIN`` natively, while matches and comments are opaque ``xt`` data), and chains
deleted. Everything else is skipped after its first two attributes; a transaction's end
closes a burst whatever it held (the generation moved: a dump running meanwhile starts over).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator
from typing import NamedTuple

from observer.dataplane.model import DataplaneParseError, EventsLost
from observer.dataplane.netlink import netlink_socket, socket_error
from observer.dataplane.nlwire import DATAGRAM, attributes, elements, messages

NETLINK_NETFILTER = 12  # <linux/netlink.h>
_NFNLGRP_NFTABLES = 7  # <linux/netfilter/nfnetlink.h>
_SOL_NETLINK = 270
_NETLINK_ADD_MEMBERSHIP = 1
_SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>: beyond net.core.rmem_max, with CAP_NET_ADMIN
RECEIVE_BUFFER = 16 * 1024 * 1024  # the kernel's queue for us; overflowing it loses events

_NFNL_SUBSYS_NFTABLES = 10
_DELCHAIN, _NEWRULE, _DELRULE, _NEWGEN = 5, 6, 8, 15  # enum nf_tables_msg_types
_FAMILIES = {2: "ip", 10: "ip6"}  # NFPROTO_IPV4, NFPROTO_IPV6
_NFGENMSG_SIZE = 4
_HANDLE = struct.Struct(">Q")  # NFTA_RULE_HANDLE: big-endian u64
_CODE = struct.Struct(">i")  # NFTA_VERDICT_CODE: big-endian s32
_JUMP, _GOTO = -3, -4  # enum nft_verdicts
# Attribute numbers: NFTA_RULE_{TABLE,CHAIN,HANDLE,EXPRESSIONS}, NFTA_CHAIN_{TABLE,NAME},
# NFTA_LIST_ELEM, NFTA_EXPR_{NAME,DATA}, NFTA_IMMEDIATE_DATA, NFTA_DATA_VERDICT,
# NFTA_VERDICT_{CODE,CHAIN}.
_RULE_TABLE, _RULE_CHAIN, _RULE_HANDLE, _RULE_EXPRESSIONS = 1, 2, 3, 4
_CHAIN_TABLE, _CHAIN_NAME = 1, 3
_LIST_ELEM, _EXPR_NAME, _EXPR_DATA = 1, 1, 2
_IMMEDIATE_DATA, _DATA_VERDICT, _VERDICT_CODE, _VERDICT_CHAIN = 2, 2, 1, 2
_SERVICE_CHAINS = (b"KUBE-SVC-", b"KUBE-SVL-")


class JumpEvent(NamedTuple):
    """A rule of a service chain added or deleted (``handle``), or the chain deleted
    (``handle`` None); an added rule's jump and goto targets."""

    verb: str  # "add" | "delete"
    family: str  # "ip" | "ip6"
    chain: str
    handle: int | None
    targets: tuple[str, ...] = ()


def _string(data: bytes, span: tuple[int, int] | None) -> bytes:
    if span is None:
        raise DataplaneParseError("netlink message without a name it must carry")
    value = data[span[0]:span[1]]
    return value[:-1] if value.endswith(b"\0") else value


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise DataplaneParseError(f"netlink name is not UTF-8: {raw[:40]!r}") from None


def _targets(data: bytes, span: tuple[int, int]) -> tuple[str, ...]:
    """The chains an expression list jumps or goes to."""
    found = []
    for start, end in elements(data, span, _LIST_ELEM):
        expr = attributes(data, start, end)
        if _string(data, expr.get(_EXPR_NAME)) != b"immediate" or _EXPR_DATA not in expr:
            continue
        immediate = attributes(data, *expr[_EXPR_DATA]).get(_IMMEDIATE_DATA)
        verdict = attributes(data, *immediate).get(_DATA_VERDICT) if immediate else None
        if verdict is None:
            continue  # a value, not a verdict
        parts = attributes(data, *verdict)
        code = parts.get(_VERDICT_CODE)
        if code is None or code[1] - code[0] != 4:
            raise DataplaneParseError("netlink verdict without a 4-byte code")
        if _CODE.unpack_from(data, code[0])[0] in (_JUMP, _GOTO):
            found.append(_text(_string(data, parts.get(_VERDICT_CHAIN))))
    return tuple(found)


def _event(data: bytes, message: int, family: str, start: int, end: int) -> JumpEvent | None:
    attrs = attributes(data, start, end)
    if message == _DELCHAIN:
        if _string(data, attrs.get(_CHAIN_TABLE)) != b"nat":
            return None
        name = _string(data, attrs.get(_CHAIN_NAME))
        if not name.startswith(_SERVICE_CHAINS):
            return None
        return JumpEvent("delete", family, _text(name), None)
    if _string(data, attrs.get(_RULE_TABLE)) != b"nat":
        return None
    chain = _string(data, attrs.get(_RULE_CHAIN))
    if not chain.startswith(_SERVICE_CHAINS):
        return None  # SEP chains and the rest: most of a sync's events, of no use here
    handle = attrs.get(_RULE_HANDLE)
    if handle is None or handle[1] - handle[0] != 8:
        raise DataplaneParseError("netlink rule message without an 8-byte handle")
    number = _HANDLE.unpack_from(data, handle[0])[0]
    if message == _DELRULE:
        return JumpEvent("delete", family, _text(chain), number)
    expressions = attrs.get(_RULE_EXPRESSIONS)
    targets = _targets(data, expressions) if expressions is not None else ()
    return JumpEvent("add", family, _text(chain), number, targets)


def decode(data: bytes, out: list[JumpEvent | None]) -> None:
    """The events of one datagram appended to ``out``, in order, and ``None`` where a
    transaction ended. A malformed message raises ``DataplaneParseError``; what came before
    it is in ``out`` (what follows cannot be framed)."""
    for kind, _, start, end in messages(data):
        if kind >> 8 != _NFNL_SUBSYS_NFTABLES:
            continue
        message = kind & 0xFF
        if message == _NEWGEN:
            out.append(None)
        elif message in (_NEWRULE, _DELRULE, _DELCHAIN) and end - start >= _NFGENMSG_SIZE:
            family = _FAMILIES.get(data[start])  # nfgenmsg: family, version, resource id
            if family is not None:
                event = _event(data, message, family, start + _NFGENMSG_SIZE, end)
                if event is not None:
                    out.append(event)


class NftEvents:
    """The kernel's nf_tables events, cut into transactions (one kube-proxy sync each)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray(DATAGRAM)
        self._pending: list[JumpEvent] = []  # of a transaction not ended yet
        self._ended: deque[list[JumpEvent]] = deque()

    async def burst(self) -> list[JumpEvent]:
        """The next transaction's events (as many as concerned service chains: perhaps
        none). Cancelling loses nothing. ``EventsLost`` when some did not arrive whole — the
        rest is kept and still delivered."""
        loop = asyncio.get_running_loop()
        while not self._ended:
            try:
                size = await loop.sock_recv_into(self.sock, self._buffer)
            except OSError as error:
                if error.errno == errno.ENOBUFS:
                    raise EventsLost("events_lost", "nf_tables events lost: the kernel's "
                                     "queue for this socket overflowed") from None
                raise socket_error(error, "nf_tables events") from None
            items: list[JumpEvent | None] = []
            try:
                decode(bytes(self._buffer[:size]), items)
            except DataplaneParseError as error:
                raise EventsLost("garbage", f"nf_tables event unreadable: {error}") from None
            finally:
                self._take(items)
        return self._ended.popleft()

    def _take(self, items: list[JumpEvent | None]) -> None:
        for item in items:
            if item is None:
                self._ended.append(self._pending)
                self._pending = []
            else:
                self._pending.append(item)


@contextlib.asynccontextmanager
async def nft_events(netns: str | None) -> AsyncIterator[NftEvents]:
    """Subscribed to the nf_tables events of the node's namespace (or ``netns``): events
    committed from the moment this returns are delivered. Needs ``CAP_NET_ADMIN``."""
    try:
        sock = await netlink_socket(netns, NETLINK_NETFILTER)
    except OSError as error:
        raise socket_error(error, "nf_tables events") from None
    try:
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, RECEIVE_BUFFER)
            except PermissionError:  # without CAP_NET_ADMIN: capped by net.core.rmem_max
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _NFNLGRP_NFTABLES)
        except OSError as error:
            raise socket_error(error, "nf_tables events") from None
        yield NftEvents(sock)
    finally:
        sock.close()
