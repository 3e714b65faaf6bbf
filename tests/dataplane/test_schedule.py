"""When the event-driven source reads the whole ruleset: its schedule alone, driven by hand."""

from __future__ import annotations

import pytest

from observer.dataplane.sources import CpuAllowance, ReadBudget, ReadSchedule
from tests.conftest import ManualClock


def schedule(clock: ManualClock, *, resync: float = 60.0, cost: float = 0.0,
             max_cpu: float = 0.1) -> ReadSchedule:
    """A schedule whose reads each cost ``cost`` CPU seconds (as the budget measures them)."""
    spent = iter(range(1_000_000))
    plan = ReadSchedule(resync_interval=resync,
                        budget=ReadBudget(max_cpu, cpu=lambda: next(spent) * cost))
    plan.begin(clock.monotonic())
    return plan


def read(plan: ReadSchedule, clock: ManualClock, *, complete: bool = True) -> tuple[bool, float]:
    """One full read, start to end, taking no time; what ``start`` said of it."""
    regular, since = plan.start(clock.monotonic())
    with plan.budget.measure():
        pass
    plan.ended()
    plan.installed(clock.monotonic(), complete=complete)
    return regular, since


def test_the_first_read_at_once_then_a_resync_at_the_interval(clock: ManualClock) -> None:
    plan = schedule(clock, resync=60)
    begun = clock.monotonic()
    assert plan.due_in(clock.monotonic()) == 0
    regular, since = read(plan, clock)
    assert (regular, since) == (False, begun)  # nothing was known: not a resync
    clock.advance(59)
    assert plan.due_in(clock.monotonic()) == 1
    clock.advance(1)
    assert plan.due_in(clock.monotonic()) == 0
    assert read(plan, clock) == (True, begun)  # a resync: changes since the last read's start


def test_something_unknown_makes_a_read_due_within_a_second(clock: ManualClock) -> None:
    plan = schedule(clock, resync=60)
    read(plan, clock)
    clock.advance(10)
    noticed = clock.monotonic()
    plan.unknown(noticed)
    clock.advance(0.5)
    plan.unknown(clock.monotonic())  # already due: the first notice counts
    assert plan.due_in(clock.monotonic()) <= 0  # a second after the last read, long past
    assert read(plan, clock) == (False, noticed)
    assert plan.due_in(clock.monotonic()) == 60


def test_an_incomplete_read_is_followed_a_second_later(clock: ManualClock) -> None:
    plan = schedule(clock, resync=60)
    read(plan, clock, complete=False)  # a chain made between its two dumps
    assert plan.due_in(clock.monotonic()) == 1


def test_reads_keep_to_the_cpu_budget(clock: ManualClock) -> None:
    """A read that costs 10 CPU seconds, at half a core: the next is 20 s away, whatever the
    resync interval or what is unknown; a free one comes at the interval."""
    costly = schedule(clock, resync=0.05, cost=10, max_cpu=0.5)
    read(costly, clock)
    assert costly.due_in(clock.monotonic()) == 20
    costly.unknown(clock.monotonic())
    assert costly.due_in(clock.monotonic()) == 20
    free = schedule(clock, resync=0.05, cost=0, max_cpu=0.5)
    read(free, clock)
    assert free.due_in(clock.monotonic()) == pytest.approx(0.05)


def test_reads_that_give_way_are_retried_twice_as_late_each_time(clock: ManualClock) -> None:
    plan = schedule(clock, resync=1)
    read(plan, clock)
    waits = []
    for _ in range(9):
        clock.advance(plan.due_in(clock.monotonic()))
        plan.start(clock.monotonic())
        plan.gave_way()  # a burst of events came while it ran
        waits.append(plan.due_in(clock.monotonic()))
    assert waits == [2, 4, 8, 16, 32, 64, 64, 64, 64]
    assert plan.abandoned == 9
    plan.ended()  # one ran to its end
    assert plan.due_in(clock.monotonic()) == 1


def test_reads_by_parts_keep_to_an_allowance_and_catch_up_after_a_stall() -> None:
    """Small reads at a tenth of a core: CPU seconds accrue at that rate up to a second's
    worth; a read that spent more than there was waits until the debt is paid."""
    allowance = CpuAllowance(0.1, window=1.0)
    assert allowance.due(0.0) == 0.0  # nothing owed
    allowance.spend(0.0, 0.05)
    assert allowance.due(0.0) == pytest.approx(0.5)  # 0.05 s owed, paid at 0.1 a second
    assert allowance.due(0.5) == pytest.approx(0.5)
    # A stall of a minute: no more than a second's worth accrued, but that much at once —
    # the backlog's reads go on at once, however dear each was before.
    allowance.spend(60.0, 0.1)
    assert allowance.due(60.0) == 60.0
    allowance.spend(60.0, 0.3)
    assert allowance.due(60.0) == pytest.approx(63.0)
