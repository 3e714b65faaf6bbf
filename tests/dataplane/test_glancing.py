"""When a change seen by glancing at the tables' shape is said to have happened, and how
precisely (``GlancingSource``, docs/dataplane.md): scripted tables on a manual clock, so each
glance, read, stamp and precision is exact."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from observer.dataplane.commands import CommandError
from observer.dataplane.model import DataplaneChange
from observer.dataplane.sources import GlancingSource
from observer.values import EndpointKey, ServicePort
from tests.conftest import ManualClock
from tests.dataplane.parking import Parking
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
    glances: list[float] = field(default_factory=list)

    def _now(self) -> tuple[object, dict[EndpointKey, bool]]:
        _, shape, selection = [v for v in self.versions if v[0] <= self.clock.mono][-1]
        return shape, selection

    def close(self) -> None: ...

    def glance(self) -> object:
        self.glances.append(self.clock.mono)
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
    parking = Parking(clock, lambda: clock.mono >= until)
    source = GlancingSource(mode="iptables", clock=clock, metrics=health or Health(),
                            tables=tables, interval=interval, max_cpu=max_cpu,
                            cpu=lambda: 0.0, sleep=parking.sleep)
    return await parking.changes(source.run), source


BOTH = {A: True, B: True}
ONLY_B = {B: True}


async def test_a_replacement_of_another_shape_is_stamped_at_the_glance_that_saw_it() -> None:
    clock = ManualClock()
    tables = ScriptedTables(clock, [(0, "big", BOTH), (START + 0.3051, "small", ONLY_B)])
    changes, source = await run(tables, clock, until=START + 0.5)
    (change,) = changes
    assert (change.key, change.selected) == (A, False)
    # stamped halfway between the glance that saw it and the one before
    seen = next(t for t in tables.glances if t > START + 0.3051)
    before = [t for t in tables.glances if t < seen][-1]
    assert change.at.mono == pytest.approx((before + seen) / 2)
    assert abs(change.at.mono - (START + 0.3051)) <= (seen - before) / 2
    # sound: from the previous read's copy (its start) to this read's end, 2 ms on
    previous = [t for t in tables.reads if t < seen][-1]
    assert change.at.precision == pytest.approx(max(change.at.mono - previous,
                                                    seen + 0.002 - change.at.mono))
    assert source.selected(A) is False
    assert source.selected(B) is True


async def test_a_replacement_of_the_same_shape_waits_for_the_next_read() -> None:
    clock = ManualClock()
    tables = ScriptedTables(clock, [(0, "same", BOTH), (START + 0.3051, "same", ONLY_B)])
    changes, _ = await run(tables, clock, until=START + 1.0, interval=0.1)
    (change,) = changes
    read = next(t for t in tables.reads if t > START + 0.3051)  # a periodic read
    previous = [t for t in tables.reads if t < read][-1]
    assert read - previous == pytest.approx(0.1, abs=0.013)  # every interval (10 ms glances)
    # no glance saw it: halfway between the previous read's copy and this read's end
    assert change.at.mono == pytest.approx((previous + read + 0.002) / 2)
    assert change.at.precision == pytest.approx((read + 0.002 - previous) / 2)
    # the stated interval holds the true moment
    assert abs(change.at.mono - (START + 0.3051)) <= change.at.precision


async def test_a_change_the_slices_announce_is_read_for_every_other_glance() -> None:
    """A same-shape replacement while the slices say A is going: read within two glances
    (not the interval's full second), its stamp as precise as the reads are close."""
    clock = ManualClock()
    tables = ScriptedTables(clock, [(0, "same", BOTH), (START + 0.3051, "same", ONLY_B)])
    changes: list[DataplaneChange] = []

    def parked() -> bool:
        if clock.mono >= START + 0.25 and not source.expected and not changes:
            source.expect(A, False)  # the slice update, before kube-proxy's sync
        return clock.mono >= START + 0.6

    parking = Parking(clock, parked)
    source = GlancingSource(mode="iptables", clock=clock, metrics=Health(), tables=tables,
                            interval=1.0, max_cpu=0.5, cpu=lambda: 0.0, sleep=parking.sleep)
    await parking.changes(source.run, into=changes)
    (change,) = changes
    read = next(t for t in tables.reads if t > START + 0.3051)
    assert read - (START + 0.3051) <= 0.021 + 0.002  # two glances (and a read's 2 ms)
    assert abs(change.at.mono - (START + 0.3051)) <= change.at.precision <= 0.013
    assert not source.expected  # seen: reads go back to every interval
    assert [t for t in tables.reads if t > read + 0.003] == []


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
    # the failed read started at the first glance that saw the change; the stamp stays by it
    before = [t for t in tables.glances if t < tables.reads[1]][-1]
    assert change.at.mono == pytest.approx((before + tables.reads[1]) / 2)
    assert change.at.mono - change.at.precision <= tables.reads[0]
