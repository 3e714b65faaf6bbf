"""Netlink, spoken directly: sockets in the node's or a named network namespace, and generic
netlink requests (what the IPVS mode's dump is made of). Messages are framed and decoded by the
agent (``nlwire``) rather than by pyroute2, whose per-message decoding cost 10 s of CPU and
280 MiB per read at 10,000 IPVS virtual servers (docs/benchmarks.md).

A namespace is entered the way ``ip netns exec`` does, with ``setns(2)`` on
``/run/netns/NAME`` — but only by a short-lived thread of its own, which opens the netlink
socket there and ends: a socket belongs to the namespace it was created in, and no thread the
agent keeps (the event loop, the executor's) ever leaves the node's namespace.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

from observer.dataplane.commands import CommandError
from observer.dataplane.model import DataplaneParseError
from observer.dataplane.nlwire import DATAGRAM, HEADER, attribute, attributes, messages

_CLONE_NEWNET = 0x40000000  # <linux/sched.h>
NETLINK_GENERIC = 16  # <linux/netlink.h>
_GENL = struct.Struct("=BBH")  # genlmsghdr: command, version, reserved
_U16 = struct.Struct("=H")
_ERROR_CODE = struct.Struct("=i")
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_GENL_ID_CTRL, _CTRL_CMD_GETFAMILY = 16, 3  # <linux/genetlink.h>
_CTRL_ATTR_FAMILY_ID, _CTRL_ATTR_FAMILY_NAME = 1, 2
T = TypeVar("T")


class GenericNetlink:
    """Requests and their replies over a bound, non-blocking ``NETLINK_GENERIC`` socket.
    Errors are ``OSError`` with the kernel's errno."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = 0
        self._buffer = bytearray(DATAGRAM)

    async def family(self, name: str) -> int:
        (reply,) = await self._request(_GENL_ID_CTRL, _CTRL_CMD_GETFAMILY, attribute(
            _CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"), dump=False, version=1)
        span = attributes(reply).get(_CTRL_ATTR_FAMILY_ID)
        if span is None or span[1] - span[0] != 2:
            raise DataplaneParseError(f"the controller's answer for {name!r} has no family id")
        return int(_U16.unpack_from(reply, span[0])[0])

    async def dump(self, family: int, command: int, payload: bytes = b"", *,
                   version: int) -> list[bytes]:
        """Each reply's attributes (what follows its generic netlink header)."""
        return await self._request(family, command, payload, dump=True, version=version)

    async def _request(self, family: int, command: int, payload: bytes, *, dump: bool,
                       version: int) -> list[bytes]:
        self._seq += 1
        body = _GENL.pack(command, version, 0) + payload
        flags = _NLM_F_REQUEST | (_NLM_F_DUMP if dump else 0)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, HEADER.pack(HEADER.size + len(body), family, flags,
                                                        self._seq, 0) + body)
        replies: list[bytes] = []
        while True:
            size = await loop.sock_recv_into(self.sock, self._buffer)
            data = bytes(self._buffer[:size])
            for kind, seq, start, end in messages(data):
                if seq != self._seq:
                    continue  # a late answer to an earlier request
                if kind in (_NLMSG_ERROR, _NLMSG_DONE):
                    code = _ERROR_CODE.unpack_from(data, start)[0] if end - start >= 4 else 0
                    if code < 0:
                        raise OSError(-code, os.strerror(-code))
                    return replies  # the end of a dump, or an acknowledgement
                replies.append(data[start + _GENL.size:end])
            if replies and not dump:
                return replies


def socket_error(error: OSError, what: str, *, needs: str = "CAP_NET_ADMIN") -> CommandError:
    """A failure of a kernel socket (netlink, or iptables' raw socket) as a dataplane error:
    ``permission`` (saying which capabilities it ``needs``) or ``failed``."""
    if error.errno in (errno.EPERM, errno.EACCES):
        return CommandError("permission", f"{what}: {error} (needs {needs})")
    return CommandError("failed", f"{what}: {error}")


async def netlink_socket(netns: str | None, protocol: int) -> socket.socket:
    """A bound, non-blocking netlink socket of ``protocol``, in ``netns`` if named. Raises
    ``OSError`` as the kernel answered, or ``CommandError`` (``failed``) for a namespace that
    does not exist."""
    def make() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, protocol)

    sock = make() if netns is None else await in_namespace(netns, make)
    try:
        sock.setblocking(False)
        sock.bind((0, 0))  # a port id from the kernel
    except BaseException:
        sock.close()
        raise
    return sock


def enter_namespace(netns: str) -> None:
    """Move the calling thread into the named network namespace (what ``ip netns exec``
    does, for one thread). ``CommandError`` (``failed``) for a namespace that does not exist,
    ``OSError`` as the kernel answered."""
    try:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CommandError("failed", f"no network namespace {netns!r}") from None
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"entering {netns!r}: {os.strerror(code)}")
    finally:
        os.close(fd)


def settle(made: asyncio.Future[T], result: T | BaseException) -> None:
    """Hand a thread's result to the event loop's ``made`` (in the loop: through
    ``call_soon_threadsafe``); a socket made for a caller cancelled meanwhile is closed."""
    if made.cancelled():
        if isinstance(result, socket.socket):
            result.close()
    elif isinstance(result, BaseException):
        made.set_exception(result)
    else:
        made.set_result(result)


async def in_namespace(netns: str, make: Callable[[], T]) -> T:
    """``make()``'s result, called by a short-lived thread that has entered ``netns`` (a
    socket it opens belongs there; ``/proc/sys/net`` it reads is that namespace's). Its
    exception is raised here; ``CommandError`` (``failed``) for a namespace that does not
    exist. A socket made for a caller cancelled meanwhile is closed."""
    loop = asyncio.get_running_loop()
    made: asyncio.Future[T] = loop.create_future()

    def entered() -> None:
        result: T | BaseException
        try:
            enter_namespace(netns)
            result = make()
        except Exception as error:  # raised in the caller, whatever it is
            result = error
        loop.call_soon_threadsafe(settle, made, result)

    threading.Thread(target=entered, name=f"netns-{netns}", daemon=True).start()
    return await made
