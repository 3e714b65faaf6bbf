"""``DeltaPollingSource``: Cilium's change source. Its maps send no notification of changes:
the service ports the tracker expects to change are read by parts, often; everything is read
in full, rarely (``observer.dataplane.cilium.changes.CiliumChanges`` makes both reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from observer.clock import Clock
from observer.dataplane.model import ChangeSink
from observer.dataplane.sources import CpuAllowance, DataplaneMetrics, ReadBudget, ReadingSource
from observer.memory import give_back
from observer.tasks import cancel_and_wait
from observer.values import EndpointKey, Mode, ServicePort, Timestamp

_INLINE_PORTS = 64  # reads by parts of at most this many service ports run in the event loop


# Per service port whose selection a read changed: its whole selection, and since when it
# may have changed (monotonic: the start of the last read that covered it before this one).
Changes = dict[ServicePort, tuple[dict[EndpointKey, bool], float]]
# What a read found, installed in the event loop given the read's start.
Install = Callable[[float], Changes]


class PartsReader(Protocol):
    """A dataplane that can be read in full, rarely, and in parts, often (Cilium's maps:
    ``cilium.CiliumChanges``). The reads are blocking calls, made in a worker thread (reads
    by parts, mostly, in the event loop); what they return is installed in the event loop,
    one read at a time."""

    @property
    def mode(self) -> Mode: ...

    def full(self) -> Callable[[], Install]:
        """The read (blocking) of everything; raises CommandError / DataplaneParseError."""

    def parts(self, ports: Collection[ServicePort]) -> Callable[[], Install] | None:
        """The read (blocking) of just these service ports' rules; None when the dataplane
        has none of them."""

    def knows(self, port: ServicePort) -> bool:
        """Whether the last full read found rules for the service port (a read by parts
        finds only rules a full read found first)."""

    def close(self) -> None:
        """Let go of what reads keep open (the source stops)."""


@dataclass
class _FullReads:
    """The run loop's full reads: the one under way, when the next is due (monotonic), when
    the last started, whether the last succeeded (reads by parts go on only then), and whether
    one was installed yet."""

    due: float
    task: asyncio.Task[tuple[Install, float, float, float] | None] | None = None
    started: float = -math.inf
    healthy: bool = False
    installed: bool = False


class DeltaPollingSource(ReadingSource):
    """Polling for a large dataplane that can be read by parts (Cilium's maps, which send no
    notification of changes): the service ports the tracker waits to see change
    (``expect``: the slices now route to an endpoint, or no longer) are read every ``interval``
    seconds until their dataplane agrees or ``expect_for`` seconds have passed; everything is
    read at most every ``full_interval`` seconds (new frontends, changes no slice announced).
    Full reads run in a worker thread of their own while the parts go on being read. Full
    reads may take an eighth of ``max_cpu`` of one core on average (under heavy churn, when
    much has changed since the last, they come less often: ``ReadBudget``), reads by parts
    what full reads leave of it (``CpuAllowance``: after a stall they catch up at once).

    A change is stamped with the start of the read that shows it, its precision the larger
    distance to this read's end and to the later of: the last read of its service port that
    did not show it (a read by parts, else the last full read), and — for a change a slice
    update announced — the moment that update was received. Cilium programs an endpoint's
    change only in answer to that update, which the API server sends to it and to this agent
    at once (the time the update took to reach this agent is not counted, as for every time
    the agent takes from its watches). So an expected change is bounded by about one
    interval, with no read needed before it. While a port expected has no rules any full read
    found (a new Service; or one Cilium does not program, such as a headless one), full
    reads come every ``interval``, as the budget allows."""

    def __init__(self, *, changes: PartsReader, clock: Clock, metrics: DataplaneMetrics,
                 interval: float, full_interval: float = 30.0, expect_for: float = 30.0,
                 max_cpu: float = 0.1,
                 thread_cpu: Callable[[], float] = time.thread_time) -> None:
        super().__init__(mode=changes.mode, clock=clock, metrics=metrics)
        self.thread_cpu = thread_cpu  # CPU seconds of the calling thread (a read's cost)
        self.changes = changes
        self.interval = interval
        self.full_interval = full_interval
        self.expect_for = expect_for
        # Full reads keep to an eighth of the share at most, reads by parts to what full reads
        # leave, each measured by the CPU time of the thread that read (and of the event loop
        # installing it).
        self.max_cpu = max_cpu
        self.full_budget = ReadBudget(max_cpu / 8)
        self.parts_budget = CpuAllowance(max_cpu * 7 / 8)
        # Per service port, the endpoints expected to turn (un)selected: how, since when (the
        # slice update that says so was received) and until when.
        self.expected: dict[ServicePort, dict[EndpointKey, tuple[bool, float, float]]] = {}
        self._expiry = math.inf  # the earliest end of an expectation (monotonic)
        self._unknown = False  # a port expected that no full read found rules for
        self._wake = asyncio.Event()

    def expect(self, key: EndpointKey, selected: bool) -> None:
        keys = self.expected.get(key.service_port)
        if bool(self._selection.selected(key)) == selected:
            if keys is not None:
                keys.pop(key, None)
                if not keys:
                    del self.expected[key.service_port]
            return
        if keys is None:
            if not self.expected:  # the loop may wait for nothing but a full read
                self._wake.set()
            keys = self.expected[key.service_port] = {}
            if not self._unknown and not self.changes.knows(key.service_port):
                self._unknown = True
                self._wake.set()
        now = self.clock.monotonic()
        keys[key] = (selected, now, now + self.expect_for)
        self._expiry = min(self._expiry, now + self.expect_for)

    def _met(self, ports: Iterable[ServicePort]) -> None:
        """Forget what the dataplane of these service ports now agrees with (a read installed
        them: only that changes what it shows); note whether a port still expected has no
        rules any full read found."""
        for port in ports:
            keys = self.expected.get(port)
            if keys is None:
                continue
            for key, (selected, _, _) in list(keys.items()):
                if bool(self._selection.selected(key)) == selected:
                    del keys[key]
            if not keys:
                del self.expected[port]
        self._unknown = not all(map(self.changes.knows, self.expected))

    def _watched(self, now: float) -> list[ServicePort]:
        """The service ports still expected to change, forgetting the expectations that
        ran out."""
        if now >= self._expiry:
            self._expiry = math.inf
            for port, keys in list(self.expected.items()):
                for key, (_, _, until) in list(keys.items()):
                    if until <= now:
                        del keys[key]
                    else:
                        self._expiry = min(self._expiry, until)
                if not keys:
                    del self.expected[port]
            self._unknown = not all(map(self.changes.knows, self.expected))
        return list(self.expected)

    async def run(self, sink: ChangeSink) -> None:
        full = _FullReads(due=self.clock.monotonic())
        parts_started = -math.inf
        try:
            while True:
                self._wake.clear()
                now = self.clock.monotonic()
                if full.task is not None and full.task.done():
                    self._full_read_done(full, now, sink)
                if full.task is None:
                    if full.healthy and self._unknown:
                        full.due = min(full.due, full.started + self.full_budget.period(
                            self.interval))
                    if now >= full.due:
                        full.started = now
                        full.task = asyncio.create_task(
                            self._read(self.changes.full(), full=True),
                            name="dataplane: full read")
                        full.task.add_done_callback(lambda _: self._wake.set())
                parts_due = max(parts_started + self.interval, self.parts_budget.due(now))
                if full.healthy and self.expected and now >= parts_due:
                    ports = self._watched(now)
                    parts_started = now
                    if ports:
                        full.healthy = await self._read_parts(ports, sink)
                        if not full.healthy:
                            full.due = min(full.due, now + max(1.0, self.interval))
                    continue
                deadlines = [full.due] if full.task is None else []
                if full.healthy and self.expected:
                    deadlines.append(parts_due)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(deadlines) - now)
                                               if deadlines else None):
                        await self._wake.wait()
        finally:
            if full.task is not None:
                await cancel_and_wait(full.task)
            self.changes.close()

    def _full_read_done(self, full: _FullReads, now: float, sink: ChangeSink) -> None:
        """Install the full read that ended (or, when it failed, try again in a second) and
        set when the next is due."""
        task, full.task = full.task, None
        assert task is not None
        done = task.result()
        del task  # the task holds the read's result: it goes with it
        full.healthy = done is not None
        if done is None:  # counted and logged
            full.due = now + max(1.0, self.interval)
            return
        install, started, ended, used = done
        cost = self._install(install, started, ended, sink, used)
        del install, done  # the read's transient peak, given back:
        give_back()
        if full.installed:  # the first decodes everything: not what the next ones cost
            self.full_budget.record(cost)
        self._selection.primed = full.installed = True
        period = self.full_budget.period(self.full_interval)
        full.due = started + period
        self.parts_budget.max_cpu = self.max_cpu - (self.full_budget.cost or 0.0) / period

    async def _read(self, work: Callable[[], Install], *, full: bool, inline: bool = False
                    ) -> tuple[Install, float, float, float] | None:
        """A read in a worker thread (or ``inline``, in the event loop): what it found, its
        start and end (monotonic), and the thread's CPU seconds; None when it failed (counted
        and logged)."""
        def timed() -> tuple[Install, float]:
            cpu = self.thread_cpu()
            return work(), self.thread_cpu() - cpu

        async def at_once() -> tuple[Install, float]:
            return timed()

        started = self.clock.monotonic()
        done = await self._scan(at_once() if inline else asyncio.to_thread(timed), full=full)
        if done is None:
            return None
        return done[0], started, self.clock.monotonic(), done[1]

    async def _read_parts(self, ports: list[ServicePort], sink: ChangeSink) -> bool:
        """Read these service ports; whether the read succeeded. In the event loop unless
        there are many: a read by parts holds the GIL from start to end (its lookups are
        GIL-holding calls, then it decodes), so a worker thread would run it no sooner, and
        handing it over costs more CPU than the read (docs/benchmarks.md); one of many ports
        (a rollout of many Services at once) goes to a worker thread, not to hold the event
        loop for long."""
        work = self.changes.parts(ports)
        if work is None:
            return True
        done = await self._read(work, full=False, inline=len(ports) <= _INLINE_PORTS)
        if done is None:
            return False
        install, started, ended, used = done
        self.parts_budget.spend(self.clock.monotonic(),
                                self._install(install, started, ended, sink, used))
        return True

    def _stamp(self, key: EndpointKey, *, selection: dict[EndpointKey, bool], since: float,
               read: tuple[float, float]) -> Timestamp:
        """A change the read (start, end) found: it came after the last read of its port that
        did not show it (``since``) and, if a slice update announced it, after that update
        was received."""
        expected = self.expected.get(key.service_port, {}).get(key)
        if expected is not None and expected[0] == selection.get(key, False):
            since = max(since, expected[1])
        started, ended = read
        return self._at(started, max(started - since, ended - started))

    def _install(self, install: Install, started: float, ended: float, sink: ChangeSink,
                 used: float) -> float:
        """Install what a read found; the CPU seconds of the read (``used``) and of this."""
        cpu = self.thread_cpu()
        changes = install(started)
        for port, (selection, since) in changes.items():
            self._selection.update((port,), {port: selection}, functools.partial(
                self._stamp, selection=selection, since=since, read=(started, ended)), sink)
        self._met(changes)
        return used + self.thread_cpu() - cpu
