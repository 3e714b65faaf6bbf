"""When a change seen by glancing at the tables' shape is said to have happened, and how
precisely (``GlancingSource``, docs/dataplane.md): scripted tables on a manual clock, so each
glance, read, stamp and precision is exact."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from observer.dataplane.commands import CommandError
from observer.dataplane.model import DataplaneChange
from observer.dataplane.sources import GlancingSource
from observer.values import EndpointKey, ServicePort
from tests.conftest import ManualClock
from tests.dataplane.test_netns import Health

PORT = ServicePort("default", "web", "http", "TCP")
A, B = EndpointKey(PORT, "10.0.0.1", 80), EndpointKey(PORT, "10.0.0.2", 80)
START = 1000.0  # ManualClock's first reading


@dataclass(frozen=True)
class Read:
    selection: dict[EndpointKey, bool]
    shape: object
    cpu: float


@dataclass
class ScriptedTables:
    """Tables replaced at given moments (``versions``: from when, its shape, its selection);
    a read copies them as they are when it starts and takes ``duration`` seconds of the
    clock, ``cpu`` of them on a worker thread."""

    clock: ManualClock
    versions: list[tuple[float, object, dict[EndpointKey, bool]]]
    duration: float = 0.002
    cpu: float = 0.002
    fail: set[int] = field(default_factory=set)  # reads (by number) that fail
    reads: list[float] = field(default_factory=list)

    def _now(self) -> tuple[object, dict[EndpointKey, bool]]:
        _, shape, selection = [v for v in self.versions if v[0] <= self.clock.mono][-1]
        return shape, selection

    async def open(self) -> None: ...

    def close(self) -> None: ...

    def glance(self) -> object:
        return self._now()[0]

    async def read(self) -> Read:
        number = len(self.reads)
        self.reads.append(self.clock.mono)
        shape, selection = self._now()
        self.clock.advance(self.duration)
        if number in self.fail:
            raise CommandError("failed", "scripted")
        return Read(dict(selection), shape, self.cpu)


async def run(tables: ScriptedTables, clock: ManualClock, *, until: float,
              interval: float = 0.1, max_cpu: float = 0.5,
              health: Health | None = None) -> tuple[list[DataplaneChange], GlancingSource]:
    """The source, run until the clock reaches ``until``."""
    changes: list[DataplaneChange] = []
    done = asyncio.Event()

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        if clock.mono >= until:
            done.set()
            await asyncio.Event().wait()  # parked until cancelled

    source = GlancingSource(mode="iptables", clock=clock, metrics=health or Health(),
                            tables=tables, interval=interval, max_cpu=max_cpu,
                            cpu=lambda: 0.0, sleep=sleep)
    task = asyncio.create_task(source.run(changes.append))
    await done.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return changes, source


BOTH = {A: True, B: True}
ONLY_B = {B: True}


async def test_a_replacement_of_another_shape_is_stamped_at_the_glance_that_saw_it() -> None:
    clock = ManualClock()
    tables = ScriptedTables(clock, [(0, "big", BOTH), (START + 0.3051, "small", ONLY_B)])
    changes, source = await run(tables, clock, until=START + 0.5)
    (change,) = changes
    assert (change.key, change.selected) == (A, False)
    # glances every 10 ms (each after a read's 2 ms): the first after 1000.3051 is at 1000.310
    seen = next(t for t in tables.reads if t > START + 0.3)
    assert change.at.mono == pytest.approx(seen)
    assert seen - (START + 0.3051) < 0.0101
    # sound: the previous read copied the old tables at its start; this one ended 2 ms on
    previous = [t for t in tables.reads if t < seen][-1]
    assert change.at.precision == pytest.approx(max(seen - previous, 0.002))
    assert source.selected(A) is False
    assert source.selected(B) is True


async def test_a_replacement_of_the_same_shape_waits_for_the_next_read() -> None:
    clock = ManualClock()
    tables = ScriptedTables(clock, [(0, "same", BOTH), (START + 0.3051, "same", ONLY_B)])
    changes, _ = await run(tables, clock, until=START + 1.0, interval=0.1)
    (change,) = changes
    read = next(t for t in tables.reads if t > START + 0.3051)  # a periodic read
    previous = [t for t in tables.reads if t < read][-1]
    assert change.at.mono == pytest.approx(read)
    assert read - previous == pytest.approx(0.1, abs=0.013)  # every interval (10 ms glances)
    assert change.at.precision == pytest.approx(read - previous)
    # the stated interval holds the true moment
    assert change.at.mono - change.at.precision <= START + 0.3051 <= change.at.mono


async def test_reads_keep_to_the_cpu_budget_and_the_precision_says_so() -> None:
    """Replacements every 0.5 s, each read costing 0.2 s of CPU against a 10 % budget: reads
    are spaced to ~2 s, a change is stamped at the first glance after the last read, and
    its precision covers every replacement that may have made it."""
    clock = ManualClock()
    versions: list[tuple[float, object, dict[EndpointKey, bool]]] = [(0, 0, BOTH)]
    for n in range(1, 40):
        versions.append((START + 0.5 * n + 0.0001, n, ONLY_B if n % 2 else BOTH))
    tables = ScriptedTables(clock, versions, duration=0.2, cpu=0.2)
    changes, _ = await run(tables, clock, until=START + 20, max_cpu=0.1)
    gaps = [b - a for a, b in zip(tables.reads, tables.reads[1:], strict=False)]
    # 10 % of 20 s, what the allowance holds after a quiet spell (10 s' worth), one read
    assert 0.2 * len(tables.reads) <= 0.1 * 20 + 0.1 * 10 + 0.2
    assert min(gaps[-5:]) > 1.5  # once the allowance is spent, about 2 s apart
    for change in changes:
        truth = [at for at, _, sel in versions if at <= change.at.mono + change.at.precision
                 and sel.get(A, False) == change.selected]
        assert any(change.at.mono - change.at.precision <= at for at in truth)


async def test_a_failed_read_is_counted_and_the_next_one_tells() -> None:
    clock = ManualClock()
    health = Health()
    tables = ScriptedTables(clock, [(0, "big", BOTH), (START + 0.2051, "small", ONLY_B)],
                            fail={1})
    changes, _ = await run(tables, clock, until=START + 0.6, interval=1.0, health=health)
    assert health.errors == ["failed"]
    (change,) = changes
    # the failed read started at the first glance that saw the change; the stamp stays there
    assert change.at.mono == pytest.approx(tables.reads[1])
    assert change.at.mono - change.at.precision <= tables.reads[0]
