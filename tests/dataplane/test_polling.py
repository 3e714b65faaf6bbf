"""When a polled change is said to have happened, and how precisely (docs/dataplane.md).

A scripted reader on a manual clock: each read takes a known time and CPU and shows a known
selection, so the stamp, its precision and the polling period are exact."""

from __future__ import annotations

import itertools
import sys

import pytest

from observer.dataplane.commands import CommandRunner
from observer.dataplane.model import (
    Backend,
    DataplaneChange,
    DataplaneParseError,
    DataplaneSnapshot,
    ProgrammedEndpoint,
    ProgrammedService,
)
from observer.dataplane.sources import PollingSource, reading_cpu
from observer.values import Mode
from tests.conftest import ManualClock
from tests.dataplane.parking import Parking
from tests.dataplane.test_netns import Health


class ScriptedReader:
    """Read n takes ``durations[n]`` seconds of the manual clock, and ``cpu_share`` times that
    of CPU (more than 1: the dump command and the parse on two cores; less: waiting); from
    read ``drop_at`` on, endpoint 10.0.0.1 is no longer selected."""

    mode: Mode = "iptables"
    backend: Backend | None = "legacy"

    def __init__(self, clock: ManualClock, durations: list[float], drop_at: int,
                 cpu_share: float = 1.0) -> None:
        self.clock, self.durations, self.drop_at = clock, durations, drop_at
        self.cpu_share, self.cpu = cpu_share, 0.0
        self.starts: list[float] = []

    async def read(self) -> DataplaneSnapshot:
        n = len(self.starts)
        self.starts.append(self.clock.monotonic())
        took = self.durations[min(n, len(self.durations) - 1)]
        self.clock.advance(took)
        self.cpu += took * self.cpu_share
        endpoints = (ProgrammedEndpoint("10.0.0.1", 80, n < self.drop_at),
                     ProgrammedEndpoint("10.0.0.2", 80, True))
        return DataplaneSnapshot("iptables", "legacy", (
            ProgrammedService("default/web:http", "tcp", "172.30.0.1", endpoints, ()),))


def periods(starts: list[float]) -> list[float]:
    return [round(b - a, 9) for a, b in itertools.pairwise(starts)]


async def poll(reader: ScriptedReader, clock: ManualClock, *, interval: float, reads: int,
               max_cpu: float = 0.25) -> tuple[list[DataplaneChange], list[float]]:
    parking = Parking(clock, lambda: len(reader.starts) >= reads)
    source = PollingSource(reader=reader, clock=clock, metrics=Health(), interval=interval,
                           max_cpu=max_cpu, cpu=lambda: reader.cpu, sleep=parking.sleep)
    return await parking.changes(source.run), parking.sleeps


async def test_a_change_is_stamped_at_the_start_of_the_read_that_shows_it() -> None:
    clock = ManualClock()
    reader = ScriptedReader(clock, [0.01], drop_at=3)
    changes, sleeps = await poll(reader, clock, interval=0.05, reads=4)
    # A read starts every interval, whatever the read took.
    assert periods(reader.starts) == [0.05] * 3
    assert sleeps[0] == pytest.approx(0.04)
    (change,) = changes
    assert (change.key.ip, change.selected) == ("10.0.0.1", False)
    assert change.at.mono == reader.starts[3]
    # It happened after read 2 started and before read 3 ended: within one period of the stamp.
    assert change.at.precision == pytest.approx(0.05)
    assert change.at.wall == pytest.approx(clock.wall_time - (clock.mono - reader.starts[3]))


async def test_long_reads_stretch_the_period_and_the_precision_says_so() -> None:
    clock = ManualClock()
    reader = ScriptedReader(clock, [0.1], drop_at=2)  # each read 0.1 s: 4 x 0.1 s > interval
    changes, _ = await poll(reader, clock, interval=0.05, reads=3)
    assert periods(reader.starts) == [0.4, 0.4]
    (change,) = changes
    assert change.at.mono == reader.starts[2]
    assert change.at.precision == pytest.approx(0.4)


async def test_a_failed_read_widens_the_next_changes_precision() -> None:
    clock = ManualClock()

    class Failing(ScriptedReader):
        async def read(self) -> DataplaneSnapshot:
            snapshot = await super().read()
            if len(self.starts) == 3:  # the third read fails
                raise DataplaneParseError("garbage")
            return snapshot

    reader = Failing(clock, [0.01], drop_at=3)
    changes, _ = await poll(reader, clock, interval=0.05, reads=4)
    (change,) = changes
    # The failed read saw nothing: the change is known only to follow read 1's start.
    assert change.at.mono == reader.starts[3]
    assert change.at.precision == pytest.approx(reader.starts[3] - reader.starts[1])


async def test_one_slow_read_does_not_stretch_the_period_fourfold() -> None:
    clock = ManualClock()
    reader = ScriptedReader(clock, [0.01, 0.01, 0.01, 0.1, 0.01, 0.01], drop_at=99)
    await poll(reader, clock, interval=0.05, reads=6)
    # After the 0.1 s read the average is 0.01 + 0.25 x 0.09 = 0.0325 s: the next period is
    # four times that, 0.13 s (not 0.4 s); then 4 x 0.026875, settling back to the interval.
    assert periods(reader.starts) == [0.05, 0.05, 0.05, 0.13, 0.1075]


async def test_cpu_not_wall_time_sets_the_period() -> None:
    # Waiting costs nothing: a 0.1 s read using 0.005 s of CPU keeps the 0.05 s interval
    # (start to start; the next read starts as soon as this one ends).
    clock = ManualClock()
    waiting = ScriptedReader(clock, [0.1], drop_at=99, cpu_share=0.05)
    await poll(waiting, clock, interval=0.05, reads=3, max_cpu=0.1)
    assert periods(waiting.starts) == [0.1, 0.1]
    # A dump and its parse on two cores: 0.01 s of wall time, 0.02 s of CPU; at most a tenth
    # of one core: a read every 0.2 s.
    clock = ManualClock()
    busy = ScriptedReader(clock, [0.01], drop_at=99, cpu_share=2.0)
    await poll(busy, clock, interval=0.05, reads=3, max_cpu=0.1)
    assert periods(busy.starts) == [0.2, 0.2]


async def test_reading_cpu_counts_the_commands_a_read_runs() -> None:
    # A polled read's cost is mostly the dump command's: a busy command's CPU is counted once
    # it has finished, though it never ran on this thread.
    before = reading_cpu()
    await CommandRunner().run([sys.executable, "-c", "sum(range(10**7))"])
    assert reading_cpu() - before > 0.05
