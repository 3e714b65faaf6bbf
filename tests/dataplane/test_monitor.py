"""How the event-driven source cuts ``nft -j monitor``'s output into bursts."""

from __future__ import annotations

import asyncio

from observer.clock import SystemClock
from observer.dataplane.sources import BURST_QUIET_SECONDS, KubeProxyTables, MonitorSource
from tests.dataplane.test_netns import Health


def source() -> MonitorSource:
    return MonitorSource(reader=None, runner=None, clock=SystemClock(),  # type: ignore[arg-type]
                         metrics=Health(), tables=KubeProxyTables())


async def test_a_burst_ends_after_a_quiet_gap_and_waits_for_a_half_written_line() -> None:
    events = asyncio.StreamReader()
    events.feed_data(b'{"add": {"rule": {"a": 1}}}\n{"add": {"ru')
    loop = asyncio.get_running_loop()
    # The line's end comes well after the quiet window: nft is still writing it.
    loop.call_later(BURST_QUIET_SECONDS * 10, events.feed_data, b'le": {"b": 2}}}\n')
    loop.call_later(BURST_QUIET_SECONDS * 100, events.feed_data, b'{"next": "burst"}\n')
    lines = [line for line in await source()._rest_of_burst(events) if line]
    assert lines == [b'{"add": {"rule": {"a": 1}}}', b'{"add": {"rule": {"b": 2}}}']
    assert await events.readline() == b'{"next": "burst"}\n'  # left for the next burst


async def test_a_burst_ends_with_the_stream() -> None:
    events = asyncio.StreamReader()
    events.feed_data(b'{"add": 1}\n')
    events.feed_eof()
    assert [line for line in await source()._rest_of_burst(events) if line] == [b'{"add": 1}']
    assert await events.readline() == b""
