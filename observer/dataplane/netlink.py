"""Netlink sockets in the node's or a named network namespace; and the kernel's IPVS tables
over generic netlink (pyroute2): the thin I/O shell around ``parse_ipvs``.

The dump is what ``ipvsadm -Ln`` asks for: ``IPVS_CMD_GET_SERVICE`` with ``NLM_F_DUMP``, then
``IPVS_CMD_GET_DEST`` per virtual server (``include/uapi/linux/ip_vs.h``). pyroute2 resolves
the ``IPVS`` generic netlink family first; a kernel without the ``ip_vs`` module has no such
family and answers ``ENOENT``, reported as ``unavailable``.

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
import threading
from typing import Any

from observer.dataplane.commands import CommandError
from observer.dataplane.ipvs import Attrs, Virtual

_CLONE_NEWNET = 0x40000000  # <linux/sched.h>
NETLINK_GENERIC = 16  # <linux/netlink.h>


async def ipvs_dump(netns: str | None) -> list[Virtual]:
    """Every virtual server's attributes and its real servers'; ``CommandError`` on failure
    (``unavailable``: no IPVS in this kernel; ``permission``; ``failed``). The caller bounds
    its time."""
    # Imported here, in IPVS mode only: pyroute2 adds 11 MiB to the agent's RSS
    # (docs/benchmarks.md), which the other modes need not carry.
    from pyroute2.ipvs import AsyncIPVS, IPVSService  # type: ignore[import-untyped]
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    try:
        sock = await netlink_socket(netns, NETLINK_GENERIC)
    except OSError as error:
        raise _netlink_error(error.errno or 0, str(error)) from None
    ipvs = AsyncIPVS(fileno=sock.detach())
    try:
        await ipvs.setup_endpoint()  # resolves the IPVS family
        virtuals: list[Virtual] = []
        for message in await ipvs.service("dump"):
            service = IPVSService.from_message(message)
            dests = await ipvs.dest("dump", service=service)
            virtuals.append((_attrs(message, "IPVS_CMD_ATTR_SERVICE"),
                             [_attrs(d, "IPVS_CMD_ATTR_DEST") for d in dests]))
        return virtuals
    except NetlinkError as error:
        raise _netlink_error(error.code, str(error)) from None
    finally:
        ipvs.close()


def _attrs(message: Any, name: str) -> Attrs:
    nested = message.get_attr(name)
    return {} if nested is None else dict(nested["attrs"])


def _netlink_error(code: int, text: str) -> CommandError:
    if code == errno.ENOENT:
        return CommandError("unavailable", "the kernel has no IPVS (ip_vs module not loaded)")
    if code in (errno.EPERM, errno.EACCES):
        return CommandError("permission", f"IPVS netlink: {text} (needs CAP_NET_ADMIN)")
    return CommandError("failed", f"IPVS netlink: {text}")


async def netlink_socket(netns: str | None, protocol: int) -> socket.socket:
    """A netlink socket of ``protocol``, in ``netns`` if named. Raises ``OSError`` as the
    kernel answered, or ``CommandError`` (``failed``) for a namespace that does not exist."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, protocol)
    loop = asyncio.get_running_loop()
    made: asyncio.Future[socket.socket] = loop.create_future()

    def settle(result: socket.socket | BaseException) -> None:
        if made.cancelled():
            if isinstance(result, socket.socket):
                result.close()
        elif isinstance(result, BaseException):
            made.set_exception(result)
        else:
            made.set_result(result)

    def in_namespace() -> None:
        result: socket.socket | BaseException
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"entering {netns!r}: {os.strerror(code)}")
            finally:
                os.close(fd)
            result = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, protocol)
        except FileNotFoundError:
            result = CommandError("failed", f"no network namespace {netns!r}")
        except OSError as error:
            result = error
        loop.call_soon_threadsafe(settle, result)

    threading.Thread(target=in_namespace, name=f"netns-{netns}", daemon=True).start()
    return await made
