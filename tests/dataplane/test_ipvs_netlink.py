"""The IPVS reader's netlink shell against the real kernel, in namespaces the tests make.

This project's machines have no IPVS module, so what can be real here is: the socket made in
the right namespace (and no thread of ours left there), and the kernel's own answer to the
IPVS family lookup. The parse of the kernel's messages is tested on the kernel-layout fixture
(tests/dataplane/test_parsers.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.netlink import NETLINK_GENERIC, netlink_socket
from observer.dataplane.readers import IpvsReader
from tests.netns import Netns


async def test_the_socket_is_made_in_the_namespace_and_no_thread_stays(netns: Netns) -> None:
    own = os.readlink("/proc/thread-self/ns/net")
    sock = await netlink_socket(netns.name, NETLINK_GENERIC)
    try:
        sock.bind((0, 0))  # a port id from the kernel: bound sockets are the ones listed
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


def test_pyroute2_is_loaded_in_ipvs_mode_only() -> None:
    """It adds 11 MiB of RSS: the other modes (and the agent's start-up) do without it."""
    code = ("import sys, observer.cli, observer.agent, observer.dataplane.detect; "
            "print('pyroute2' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "False"
