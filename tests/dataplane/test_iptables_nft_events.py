"""iptables-nft's jumps from the kernel's nf_tables events: the decoder on a recording of the
kernel's own messages (tests/fixtures/dataplane/nft-events.hex), the feed on a socket pair, and
both against the real kernel in namespaces the tests make."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator

import pytest

from observer.dataplane.iptables_nft_events import JumpEvent, NftEvents, decode, nft_events
from observer.dataplane.model import DataplaneParseError, EventsLost
from tests.dataplane.edits import IPTABLES_DROP_SVC4_EP4, load
from tests.netns import FIXTURES, Netns

RECORDED = [bytes.fromhex(line) for line in (FIXTURES / "nft-events.hex").read_text().split()]
SVC4 = "KUBE-SVC-4SW47YFZTEDKD3PK"


def decoded(datagrams: list[bytes]) -> list[JumpEvent | None]:
    out: list[JumpEvent | None] = []
    for datagram in datagrams:
        decode(datagram, out)
    return out


def transactions(items: list[JumpEvent | None]) -> Iterator[list[JumpEvent]]:
    current: list[JumpEvent] = []
    for item in items:
        if item is None:
            yield current
            current = []
        else:
            current.append(item)


def test_the_kernels_events_decode_to_the_jumps_of_service_chains() -> None:
    """Five transactions; SEP chains' rules, KUBE-SERVICES and the tables' base chains are
    left out; deleted rules carry their handle, added ones their targets."""
    first, second, third, ip6_made, ip6_gone = transactions(decoded(RECORDED))
    assert first == [
        JumpEvent("delete", "ip", SVC4, 61), JumpEvent("delete", "ip", SVC4, 62),
        JumpEvent("delete", "ip", SVC4, 63),
        JumpEvent("add", "ip", SVC4, 73, ("KUBE-MARK-MASQ",)),
        JumpEvent("add", "ip", SVC4, 74, ("KUBE-SEP-C6EBXVWJJZMIWKLZ",))]
    assert [(e.verb, e.handle) for e in second] == [
        ("delete", 66), ("delete", 67), ("delete", 68), ("add", 75)]
    assert [e.targets for e in third if e.verb == "add"] == [
        ("KUBE-MARK-MASQ",), ("KUBE-SEP-SXIVWICOYRO3J4NJ",), ("KUBE-SEP-NEWENDPOINT00000",)]
    assert ip6_made == [JumpEvent("add", "ip6", "KUBE-SVC-IP6SERVICE000000", 3,
                                  ("KUBE-SEP-IP6ENDPOINT00000",))]
    assert ip6_gone == [JumpEvent("delete", "ip6", "KUBE-SVC-IP6SERVICE000000", 3),
                        JumpEvent("delete", "ip6", "KUBE-SVC-IP6SERVICE000000", None)]


def test_a_truncated_datagram_is_an_error_after_what_came_before() -> None:
    whole = decoded(RECORDED[:1])
    for cut in (len(RECORDED[0]) - 1, len(RECORDED[0]) - 300, 10):
        out: list[JumpEvent | None] = []
        with pytest.raises(DataplaneParseError, match="netlink message"):
            decode(RECORDED[0][:cut], out)
        assert out == whole[:len(out)]
    assert len(out) == 0


def test_an_attribute_overrunning_its_message_is_an_error() -> None:
    datagram = bytearray(RECORDED[0])
    datagram[20:22] = (4000).to_bytes(2, "little")  # the first message's first attribute
    with pytest.raises(DataplaneParseError, match="attribute of length 4000"):
        decode(bytes(datagram), [])


async def test_the_feed_delivers_transactions_and_survives_garbage() -> None:
    """Through a real socket: transactions come whole whatever the datagrams; a datagram
    that cannot be read is reported (``garbage``) and what arrived before and after it is
    still delivered."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    try:
        events = NftEvents(ours)
        expected = list(transactions(decoded(RECORDED)))
        garbled = RECORDED[0][:-20]  # the first sync's deletions, its last message cut
        readable: list[JumpEvent | None] = []
        with pytest.raises(DataplaneParseError):
            decode(garbled, readable)
        assert len(readable) == 3  # (the message cut is a SEP chain's rule, of no use here)
        kernel.send(garbled)
        with pytest.raises(EventsLost) as lost:
            await asyncio.wait_for(events.burst(), 5)
        assert lost.value.reason == "garbage"
        for datagram in RECORDED[1:]:
            kernel.send(datagram)
        # What was read of the garbled transaction is delivered with the rest of it.
        first, *rest = expected
        assert await asyncio.wait_for(events.burst(), 5) == first
        assert [await asyncio.wait_for(events.burst(), 5) for _ in rest] == rest
    finally:
        ours.close()
        kernel.close()


async def test_a_cancelled_wait_loses_nothing() -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    try:
        events = NftEvents(ours)
        waiting = asyncio.ensure_future(events.burst())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        for datagram in RECORDED[:3]:  # the first sync, to its end
            kernel.send(datagram)
        assert await asyncio.wait_for(events.burst(), 5) == next(transactions(decoded(
            RECORDED[:3])))
    finally:
        ours.close()
        kernel.close()


def handles(netns: Netns, chain: str) -> dict[int, str]:
    """A chain's rules by handle, as ``nft -a`` lists them: handle -> what it jumps to."""
    listing = netns.run("nft", "-a", "list", "chain", "ip", "nat", chain)
    return {int(h): target for target, h in re.findall(r"jump (\S+).*# handle (\d+)", listing)}


async def test_kube_proxys_sync_arrives_as_one_burst_with_the_kernels_handles(
        netns: Netns) -> None:
    load(netns, "iptables-nft")
    before = handles(netns, SVC4)
    async with nft_events(netns.name) as events:
        await asyncio.to_thread(netns.restore, "nft", IPTABLES_DROP_SVC4_EP4, noflush=True)
        burst = await asyncio.wait_for(events.burst(), 10)
    after = handles(netns, SVC4)
    assert {e.handle for e in burst if e.verb == "delete"} == set(before)
    assert {e.handle: e.targets[0] for e in burst if e.verb == "add"} == after
    assert set(after.values()) == {"KUBE-MARK-MASQ", "KUBE-SEP-C6EBXVWJJZMIWKLZ"}


async def drain(events: NftEvents) -> None:
    while True:
        await asyncio.wait_for(events.burst(), 10)


async def test_an_overflowing_queue_is_reported_and_events_go_on(netns: Netns) -> None:
    """The kernel drops what a full receive queue cannot hold and says so once (ENOBUFS):
    ``events_lost``; what is committed afterwards still arrives."""
    async with nft_events(netns.name) as events:
        events.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's least
        await asyncio.to_thread(load, netns, "iptables-nft")  # hundreds of events, unread
        with pytest.raises(EventsLost) as lost:
            await drain(events)
        assert lost.value.reason == "events_lost"
        while True:  # what the queue held before it overflowed, up to where it did
            try:
                await asyncio.wait_for(events.burst(), 0.5)
            except TimeoutError:
                break
        events.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        await asyncio.to_thread(netns.restore, "nft", IPTABLES_DROP_SVC4_EP4, noflush=True)
        burst = await asyncio.wait_for(events.burst(), 10)
        assert JumpEvent("add", "ip", SVC4, max(handles(netns, SVC4)),
                         ("KUBE-SEP-C6EBXVWJJZMIWKLZ",)) in burst
