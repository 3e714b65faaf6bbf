"""How the nftables mode cuts ``nft -j monitor``'s output into bursts, and how the event-driven
source ends when cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from observer.clock import SystemClock
from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.nftables import BURST_QUIET_SECONDS, NftMonitor
from observer.dataplane.sources import MonitorSource
from observer.values import EndpointKey, ServicePort


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


class _SlowToStopEvents:
    """Change events whose reader takes a while to unwind when cancelled (it holds the
    cancellation until ``release`` is set), and that never delivers a burst."""

    def __init__(self) -> None:
        self.unwinding = asyncio.Event()
        self.release = asyncio.Event()

    async def burst(self) -> list[bytes]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.unwinding.set()
            await self.release.wait()
            raise
        raise AssertionError("unreachable")


class _InstantTables:
    """A ruleset whose full read returns at once, with nothing in it."""

    def __init__(self, events: _SlowToStopEvents) -> None:
        self._events = events

    @contextlib.asynccontextmanager
    async def events(self, runner: CommandRunner) -> AsyncIterator[_SlowToStopEvents]:
        yield self._events

    def apply(self, burst: list[bytes]) -> bool:
        return bool(burst)

    async def load(self, runner: CommandRunner) -> None:
        return None

    def selection(self) -> tuple[dict[EndpointKey, bool], bool]:
        return {}, True

    def delta(self) -> tuple[dict[ServicePort, dict[EndpointKey, bool]], bool]:
        return {}, True


class _NoMetrics:
    def scan(self, seconds: float) -> None: ...

    def error(self, reason: str) -> None: ...

    def drift(self, count: int) -> None: ...


async def test_a_cancel_while_a_finished_read_stops_its_event_reader_ends_the_source() -> None:
    """The full read ends first; while the source waits for the event reader it cancelled to
    unwind, the source itself is cancelled. That cancellation must end it (it was once taken
    for the reader's own and swallowed: the source ran on, and the agent never stopped)."""
    events = _SlowToStopEvents()
    source = MonitorSource(mode="nftables",
                           runner=CommandRunner(), clock=SystemClock(), metrics=_NoMetrics(),
                           tables=_InstantTables(events))
    task = asyncio.create_task(source.run(lambda change: None))
    await events.unwinding.wait()  # the read is done; its event reader is being stopped
    task.cancel()
    events.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
