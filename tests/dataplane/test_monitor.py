"""How the nftables mode cuts ``nft -j monitor``'s output into bursts."""

from __future__ import annotations

import asyncio

import pytest

from observer.dataplane.commands import CommandError
from observer.dataplane.sources import BURST_QUIET_SECONDS, NftMonitor


async def test_a_burst_ends_after_a_quiet_gap_and_waits_for_a_half_written_line() -> None:
    events = asyncio.StreamReader()
    events.feed_data(b'{"add": {"rule": {"a": 1}}}\n{"add": {"ru')
    loop = asyncio.get_running_loop()
    # The line's end comes well after the quiet window: nft is still writing it.
    loop.call_later(BURST_QUIET_SECONDS * 10, events.feed_data, b'le": {"b": 2}}}\n')
    loop.call_later(BURST_QUIET_SECONDS * 100, events.feed_data, b'{"next": "burst"}\n')
    monitor = NftMonitor(events)
    lines = [line for line in await monitor.burst() if line]
    assert lines == [b'{"add": {"rule": {"a": 1}}}', b'{"add": {"rule": {"b": 2}}}']
    assert await monitor.burst() == [b'{"next": "burst"}', b""]  # left for the next burst


async def test_a_burst_cut_short_is_resumed_whole() -> None:
    """Cancelled while reading the rest of a burst (a full read ended first): nothing read
    so far is lost."""
    events = asyncio.StreamReader()
    events.feed_data(b'{"add": 1}\n')
    monitor = NftMonitor(events)
    reading = asyncio.ensure_future(monitor.burst())
    await asyncio.sleep(0)  # the first line is read; the rest of the burst is awaited
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    events.feed_data(b'{"add": 2}\n')
    assert [line for line in await monitor.burst() if line] == [b'{"add": 1}', b'{"add": 2}']


async def test_a_burst_ends_with_the_stream() -> None:
    events = asyncio.StreamReader()
    events.feed_data(b'{"add": 1}\n')
    events.feed_eof()
    monitor = NftMonitor(events)
    assert [line for line in await monitor.burst() if line] == [b'{"add": 1}']
    with pytest.raises(CommandError, match="nft monitor ended"):
        await monitor.burst()
