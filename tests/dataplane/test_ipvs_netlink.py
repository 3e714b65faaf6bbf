"""The IPVS reader's netlink shell against the real kernel, in namespaces the tests make.

This project's machines have no IPVS module, so what can be real here is: the socket made in
the right namespace (and no thread of ours left there), and the kernel's own answer to the
IPVS family lookup, and the generic netlink framing on the controller family. The decoding of
IPVS's messages is tested on the kernel-layout fixture (tests/dataplane/test_parsers.py)."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.ipvs import IpvsReader
from observer.dataplane.netlink import NETLINK_GENERIC, GenericNetlink, netlink_socket
from observer.dataplane.nlwire import attributes
from tests.netns import Netns


async def test_the_socket_is_made_in_the_namespace_and_no_thread_stays(netns: Netns) -> None:
    own = os.readlink("/proc/thread-self/ns/net")
    sock = await netlink_socket(netns.name, NETLINK_GENERIC)
    try:
        # It comes bound (a port id from the kernel): bound sockets are the ones listed.
        inode = str(os.fstat(sock.fileno()).st_ino)
        # /proc/net/netlink lists the netlink sockets of the reader's namespace (Inode column).
        inside = netns.run("cat", "/proc/net/netlink")
        outside = Path("/proc/net/netlink").read_text()  # noqa: ASYNC240
        assert inode in inside.split()
        assert inode not in outside.split()
    finally:
        sock.close()
    assert os.readlink("/proc/thread-self/ns/net") == own
    assert os.readlink(f"/proc/{os.getpid()}/ns/net") == own


async def test_the_kernels_answer_in_a_namespace(netns: Netns) -> None:
    """Without the ip_vs module (this project's machines) the kernel knows no IPVS family:
    a clear ``unavailable``. With it, a fresh namespace has no virtual servers."""
    reader = IpvsReader(CommandRunner(netns=netns.name, timeout=10))
    outcome = await asyncio.gather(reader.read(), return_exceptions=True)
    if isinstance(outcome[0], CommandError):
        assert outcome[0].reason == "unavailable", outcome
        assert "ip_vs module" in str(outcome[0])
    else:
        assert outcome[0].services == (), outcome  # type: ignore[union-attr]


async def test_a_namespace_that_does_not_exist() -> None:
    reader = IpvsReader(CommandRunner(netns="obs-test-no-such-namespace", timeout=10))
    with pytest.raises(CommandError, match="no network namespace 'obs-test-no-such-namespace'"):
        await reader.read()


async def test_generic_netlink_requests_and_dumps_against_the_kernel(netns: Netns) -> None:
    """The request/reply framing the IPVS dump uses, on the one generic netlink family every
    kernel has, the controller: a family looked up by name, a dump read to its end, and the
    kernel's refusal as an errno."""
    sock = await netlink_socket(netns.name, NETLINK_GENERIC)
    try:
        genl = GenericNetlink(sock)
        assert await genl.family("nlctrl") == 16  # GENL_ID_CTRL
        families = await genl.dump(16, 3, version=1)  # CTRL_CMD_GETFAMILY, every family
        names = {reply[start:end].rstrip(b"\0").decode() for reply in families
                 for start, end in [attributes(reply)[2]]}  # CTRL_ATTR_FAMILY_NAME
        assert "nlctrl" in names, names
        assert len(families) == len(names) > 1
        with pytest.raises(OSError, match="No such file") as refused:
            await genl.family("obs-nofamily")  # as IPVS is here: no such family
        assert refused.value.errno == errno.ENOENT
        assert await genl.family("nlctrl") == 16  # the socket is still in step
    finally:
        sock.close()
