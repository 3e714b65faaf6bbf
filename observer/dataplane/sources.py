"""Change detection: turning dataplane reads into ``DataplaneChange`` records for the tracker.

* ``PollingSource`` re-reads every ``interval`` seconds (iptables-legacy has no change
  notification; IPVS here neither). A change is stamped with the start of the read that shows
  it; it happened between the previous read's start and this read's end, which is its stated
  precision (about one interval).
* ``observer.dataplane.cilium.source.DeltaPollingSource``, on the ``ReadingSource`` here,
  reads Cilium's maps by parts: the service ports the tracker expects to change, every
  ``interval``; everything, rarely.
* ``MonitorSource`` follows the kernel's nf_tables change events — announced over netlink for
  every change, including those iptables-nft makes — and re-derives selection right after each
  burst of events (one kube-proxy transaction arrives as one burst, so a flushed-and-refilled
  chain is never seen half-way). Events are applied incrementally to the mode's state, rules by
  handle (``nftables.KubeProxyTables``: kube-proxy's table as ``nft -j monitor`` prints it, a
  2 ms quiet gap ending a burst; ``iptables.IptablesNftTables``: iptables-nft's jumps as the
  kernel sends them, a transaction's end ending a burst). A periodic full read checks the
  state and counts any drift it finds.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar

import structlog

from observer.clock import Clock
from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.model import (
    ChangeSink,
    DataplaneChange,
    DataplaneParseError,
    EventsLost,
    Reader,
)
from observer.memory import give_back
from observer.tasks import cancel_and_wait
from observer.values import EndpointKey, Mode, ProxyMode, ServicePort, Timestamp

log = structlog.get_logger("observer.dataplane")
T = TypeVar("T")
E = TypeVar("E")
_COST_WEIGHT = 0.25  # of the newest full read in the moving average of their CPU cost


class DataplaneMetrics(Protocol):
    def scan(self, seconds: float) -> None: ...

    def error(self, reason: str) -> None: ...

    def drift(self, count: int) -> None: ...


class _Selection:
    """The last known selection, by service port, and the diffs against new ones."""

    def __init__(self) -> None:
        self.by_port: dict[ServicePort, dict[EndpointKey, bool]] = {}
        self.primed = False

    def selected(self, key: EndpointKey) -> bool | None:
        keys = self.by_port.get(key.service_port)
        return None if keys is None else keys.get(key, False)

    def replace(self, new: dict[EndpointKey, bool], at: Timestamp, sink: ChangeSink) -> int:
        """Install a whole new selection (a full read); report what changed, except on the
        first read, which is the baseline. Returns how many endpoints changed."""
        grouped: dict[ServicePort, dict[EndpointKey, bool]] = {}
        for key, selected in new.items():
            grouped.setdefault(key.service_port, {})[key] = selected
        changed = self.update(self.by_port.keys() | grouped.keys(), grouped, lambda _: at, sink)
        self.primed = True
        return changed

    def update(self, ports: Iterable[ServicePort],
               fresh: dict[ServicePort, dict[EndpointKey, bool]],
               at: Callable[[EndpointKey], Timestamp], sink: ChangeSink) -> int:
        """Install the selection of just these service ports (an event burst's delta), each
        endpoint's change stamped ``at(key)``. Returns how many endpoints changed (reported
        to ``sink`` once primed)."""
        changed = 0
        for port in ports:
            old, new = self.by_port.get(port, {}), fresh.get(port, {})
            for key in old.keys() | new.keys():
                if old.get(key, False) != new.get(key, False):
                    changed += 1
                    if self.primed:
                        sink(DataplaneChange(key, new.get(key, False), at(key)))
            if new:
                self.by_port[port] = new
            else:
                self.by_port.pop(port, None)
        return changed


class ReadingSource:
    """What every reading source shares: the selection last read, reads timed and their
    failures counted, timestamps of the reads."""

    def __init__(self, *, mode: Mode, clock: Clock, metrics: DataplaneMetrics) -> None:
        self._mode = mode
        self.clock = clock
        self.metrics = metrics
        self._selection = _Selection()

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    def selected(self, key: EndpointKey) -> bool | None:
        return self._selection.selected(key)

    def primed(self) -> bool:
        return self._selection.primed

    def expect(self, key: EndpointKey, selected: bool) -> None:
        """Nothing to do: every read of these sources reads everything."""

    async def _scan(self, reading: Awaitable[T], *, full: bool = True) -> T | None:
        """One read, timed if ``full``; a failure is counted and logged, and gives None."""
        started = self.clock.monotonic()
        try:
            result = await reading
        except CommandError as error:
            self.metrics.error(error.reason)
            log.warning("dataplane read failed", reason=error.reason, error=str(error))
            return None
        except DataplaneParseError as error:
            self.metrics.error("garbage")
            log.warning("dataplane output unreadable", error=str(error))
            return None
        if full:
            self.metrics.scan(self.clock.monotonic() - started)
        return result

    def _now(self, precision: float) -> Timestamp:
        return self._at(self.clock.monotonic(), precision)

    def _at(self, mono: float, precision: float) -> Timestamp:
        """A timestamp for an earlier monotonic reading, its wall time derived from now's."""
        now = self.clock.monotonic()
        return Timestamp(mono, self.clock.wall() - (now - mono), "dataplane", precision)


def reading_cpu() -> float:
    """CPU seconds of this thread (the event loop's: the parse) and of this process's finished
    child processes (the dump commands; ``getrusage(RUSAGE_CHILDREN)``, microseconds). The
    thread's share also holds whatever else the event loop ran during the read (watch events),
    so the cap errs towards reading less often; the agent runs no other commands. Where
    several agents share a process (the lab) each also counts the others' work."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.thread_time() + children.ru_utime + children.ru_stime


class ReadBudget:
    """Full reads may take ``max_cpu`` of one core, on average: the period between their
    starts is at least a moving average of one read's CPU seconds (``cpu``: ``reading_cpu``)
    over that share — so one read slowed by the scheduler does not stretch the next period
    tenfold, and a ruleset that grows makes reads rarer instead of the agent busier."""

    def __init__(self, max_cpu: float, cpu: Callable[[], float] = reading_cpu) -> None:
        self.max_cpu = max_cpu
        self.cpu = cpu
        self.cost: float | None = None  # CPU seconds of one full read, moving average

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        started = self.cpu()
        try:
            yield
        finally:
            self.record(self.cpu() - started)

    def record(self, used: float) -> None:
        """A read took ``used`` CPU seconds."""
        self.cost = used if self.cost is None else self.cost + _COST_WEIGHT * (used - self.cost)

    def period(self, minimum: float) -> float:
        return max(minimum, (self.cost or 0.0) / self.max_cpu)


class CpuAllowance:
    """Small, frequent reads (Cilium's reads by parts) may take ``max_cpu`` of one core: CPU
    seconds accrue at that rate, up to what ``window`` seconds bring, and each read spends
    what it used. After a stall (a long garbage collection, a busy machine) the reads due
    catch up at once on what accrued — a moving average of each read's cost (``ReadBudget``)
    would space them out further just as the backlog makes each read cost more. Times are
    the source's monotonic clock, seconds."""

    def __init__(self, max_cpu: float, window: float = 1.0) -> None:
        self.max_cpu = max_cpu
        self.window = window
        self.balance = 0.0  # CPU seconds that may be spent now (below zero: owed)
        self._at: float | None = None

    def _accrue(self, now: float) -> None:
        if self._at is not None:
            self.balance = min(self.max_cpu * self.window,
                               self.balance + (now - self._at) * self.max_cpu)
        self._at = now

    def spend(self, now: float, used: float) -> None:
        """A read that ended at ``now`` took ``used`` CPU seconds."""
        self._accrue(now)
        self.balance -= used

    def due(self, now: float) -> float:
        """When the next read may start."""
        self._accrue(now)
        return now if self.balance >= 0 else now - self.balance / self.max_cpu


class PollingSource(ReadingSource):
    """Polling by full reads (iptables-legacy has no change notification; IPVS here neither):
    starts a read every ``interval`` seconds — but spends no more than ``max_cpu`` of one core
    (10%) on reading, on average: on a large node a full read costs much (at 10,000 services
    about a second of CPU for ``iptables-save`` and the parse together), and the period grows
    to match, a bound on CPU that costs detection latency (docs/dataplane.md). ``cpu`` tells
    the CPU seconds spent so far by what a read runs (``reading_cpu``); the period follows a
    moving average of each read's share, so one read slowed by the scheduler does not stretch
    the next period tenfold. Each read's whole selection replaces the last.

    A change a read shows happened after the previous read started and before this one ended
    (``iptables-save`` copies the whole table in one ``getsockopt`` as it starts). It is
    stamped with this read's start, its precision the larger distance to either end: with
    reads short against the interval, about one interval."""

    def __init__(self, *, reader: Reader, clock: Clock, metrics: DataplaneMetrics,
                 interval: float, max_cpu: float = 0.1,
                 cpu: Callable[[], float] = reading_cpu,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        super().__init__(mode=reader.mode, clock=clock, metrics=metrics)
        self.reader = reader
        self.interval = interval
        self.budget = ReadBudget(max_cpu, cpu)
        self.sleep = sleep

    async def run(self, sink: ChangeSink) -> None:
        previous = self.clock.monotonic()
        while True:
            started = self.clock.monotonic()
            # The budget counts what a read causes: installing it (a diff, the sink) too.
            with self.budget.measure():
                read = await self._scan(self.reader.read())
                now = self.clock.monotonic()
                if read is not None:
                    precision = max(started - previous, now - started)
                    self._selection.replace(read.selection(), self._at(started, precision),
                                            sink)
                    previous = started
                del read  # the dump's parse, given back:
                give_back()
            await self.sleep(max(0.0, self.budget.period(self.interval) - (now - started)))


class _Read(Protocol):
    @property
    def selection(self) -> dict[EndpointKey, bool]: ...

    @property
    def shape(self) -> object:
        """What ``glance`` said of the tables as they were read."""

    @property
    def cpu(self) -> float:
        """CPU seconds the read cost threads other than the event loop's."""


class _Glanced(Protocol):
    """Tables whose replacement can be told cheaply, though not always (iptables-legacy's
    GET_INFO: a replacement of another size)."""

    def close(self) -> None: ...

    def glance(self) -> object:
        """The tables' shape, in microseconds; a change of content may leave it as it was.
        None when it cannot be told (a read will say why)."""

    async def read(self) -> _Read:
        """The whole selection (raises CommandError / DataplaneParseError)."""


class GlancingSource(ReadingSource):
    """Polling, where the tables' shape can be glanced at for next to nothing (iptables-legacy:
    ``IPT_SO_GET_INFO``, ``observer.dataplane.iptables.LegacyTables``): a glance every
    ``glance_interval`` (10 ms), and a full read as soon as the shape differs from the last
    read's — or every ``interval`` when it does not, since a replacement of the same shape
    (one endpoint swapped for another in one sync) changes no shape; every other glance while
    the slices say an endpoint is changing (``expect``). Full reads spend at most
    ``max_cpu`` of one core on average (``CpuAllowance``: after a quiet spell a change is read
    at once; under steady churn reads wait their turn), the reads made only for same-shape
    replacements at most half of it.

    Stamps. A change a read shows happened after the previous read copied the tables and
    before this one did. It is stamped halfway between the glance that first saw the shape
    differ from the previous read's and the glance before it (within half a glance of the
    replacement, when it was that replacement), or, when no glance saw a change, halfway
    through that whole interval; its precision is the distance from the stamp to the farther
    end of the interval — the time since the previous read, about: a replacement of the same
    shape may have come first, and replacements may come faster than reads."""

    def __init__(self, *, mode: Mode, clock: Clock, metrics: DataplaneMetrics,
                 tables: _Glanced, interval: float, max_cpu: float = 0.1,
                 glance_interval: float = 0.01, window: float = 10.0,
                 expect_for: float = 10.0, cpu: Callable[[], float] = reading_cpu,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        super().__init__(mode=mode, clock=clock, metrics=metrics)
        self.tables = tables
        self.interval = interval
        self.glance_interval = glance_interval
        self.allowance = CpuAllowance(max_cpu, window)
        self.budget = ReadBudget(max_cpu / 2, cpu)  # the same-shape reads' share
        self.expect_for = expect_for
        self.expected: dict[EndpointKey, tuple[bool, float]] = {}  # -> selected, until when
        self.sleep = sleep

    def expect(self, key: EndpointKey, selected: bool) -> None:
        """The slices say ``key`` is changing: until a read shows it (or ``expect_for``
        seconds pass), a read is due every other glance — kube-proxy may make the change in
        a replacement of the same shape (an endpoint swapped for another in one sync), which
        no glance sees."""
        if bool(self._selection.selected(key)) == selected:
            self.expected.pop(key, None)
        else:
            self.expected[key] = (selected, self.clock.monotonic() + self.expect_for)

    def _expecting(self, now: float) -> bool:
        """Whether a change the slices announced is still to be seen (those seen, or waited
        for too long, are forgotten)."""
        for key, (selected, until) in list(self.expected.items()):
            if until <= now or bool(self._selection.selected(key)) == selected:
                del self.expected[key]
        return bool(self.expected)

    async def run(self, sink: ChangeSink) -> None:
        try:
            await self._poll(sink)
        finally:
            self.tables.close()

    async def _poll(self, sink: ChangeSink) -> None:
        shape: object = None  # as the last read found the tables
        read_at: float | None = None  # when the last read started
        # The glances before and at the first one that saw the shape differ.
        previous = noticed = None
        glanced_at = self.clock.monotonic()
        while True:
            now = self.clock.monotonic()
            glanced = self.tables.glance()
            if noticed is None and read_at is not None and glanced not in (shape, None):
                previous, noticed = glanced_at, now
            glanced_at = now
            due = read_at is None or noticed is not None or \
                now - read_at >= self.budget.period(self.interval) or \
                (now - read_at >= 2 * self.glance_interval and self._expecting(now))
            if due and self.allowance.due(now) <= now:
                cpu = self.budget.cpu()
                read = await self._scan(self.tables.read())
                ended = self.clock.monotonic()
                used = self.budget.cpu() - cpu + (read.cpu if read is not None else 0.0)
                self.allowance.spend(ended, used)
                if noticed is None:
                    self.budget.record(used)
                if read is not None:
                    since = read_at if read_at is not None else now
                    # The middle of where the change lies: between the two glances around
                    # it, or, when no glance saw it, since the previous read.
                    stamp = (since + ended) / 2 if noticed is None or previous is None \
                        else (previous + noticed) / 2
                    precision = max(stamp - since, ended - stamp)
                    self._selection.replace(read.selection, self._at(stamp, precision), sink)
                    shape, read_at, noticed = read.shape, now, None
                del read
                give_back()
            await self.sleep(self.glance_interval)


class _Events(Protocol[E]):
    async def burst(self) -> list[E]:
        """The events of the next burst (one transaction); cancelling loses nothing. Raises
        ``CommandError`` when events can no longer come, ``EventsLost`` when some were lost."""


class _Tables(Protocol[E]):
    """The nf_tables state a MonitorSource keeps up to date from events."""

    def events(self, runner: CommandRunner) -> contextlib.AbstractAsyncContextManager[
            _Events[E]]:
        """The change events, from the moment the block is entered."""

    def apply(self, burst: list[E]) -> bool:
        """Fold a burst of events in; whether any concerned kube-proxy's tables."""

    async def load(self, runner: CommandRunner) -> None:
        """Rebuild from a full read (raises CommandError / DataplaneParseError)."""

    def selection(self) -> tuple[dict[EndpointKey, bool], bool]:
        """The whole selection, as far as known; and whether all is known (False: a rule
        names something only a full read can explain — a new endpoint chain)."""

    def delta(self) -> tuple[dict[ServicePort, dict[EndpointKey, bool]], bool]:
        """The selection of the service ports events touched since the last call, as far as
        known; and whether all is known."""


class ReadSchedule:
    """When the event-driven source's next full read is due. Pure: it is told what happened
    and when (monotonic seconds) and answers; no clock, no I/O.

    A resync is due ``resync_interval`` seconds after the last full read started; a read is
    due sooner — a second after the last, or as soon as the budget allows — while something is
    unknown that only a full read can tell (a rule naming a new endpoint chain in iptables-nft,
    lost events, the start). Full reads keep to the CPU budget (``ReadBudget``). A read
    abandoned because a burst of events came while it ran is tried again later, twice as late
    each time in a row (up to 64 times). The first read starts at once."""

    def __init__(self, *, resync_interval: float, budget: ReadBudget) -> None:
        self.resync_interval = resync_interval
        self.budget = budget
        self.begin(0.0)

    def begin(self, now: float) -> None:
        """The source starts: nothing known, nothing read yet."""
        self.started = now  # when the last full read started
        self.unknown_since: float | None = now
        self.tried = False  # no read yet: the first starts at once
        self.primed = False  # a full read has been installed
        self.abandoned = 0  # reads abandoned in a row

    def due_in(self, now: float) -> float:
        """Seconds until the next full read is due (0 or less: now)."""
        if not self.tried:
            return 0.0
        # At least a second between reads for what is unknown: a read that keeps failing at
        # once (no nft) must not spin.
        wait = self.budget.period(self.resync_interval if self.unknown_since is None else 1.0)
        return self.started + wait * 2.0 ** min(self.abandoned, 6) - now

    def start(self, now: float) -> tuple[bool, float]:
        """A full read starts: whether it is a regular resync (nothing was unknown), and since
        when what it finds may have changed (the stamp's precision)."""
        regular = self.unknown_since is None
        since = self.started if self.unknown_since is None else self.unknown_since
        self.started, self.tried = now, True
        return regular, since

    def ended(self) -> None:
        """The read ran to its end (whether or not it succeeded)."""
        self.abandoned = 0

    def gave_way(self) -> None:
        """A burst of events came while the read ran: abandoned."""
        self.abandoned += 1

    def installed(self, now: float, *, complete: bool) -> None:
        """What the read found is in; ``complete``: it explained everything."""
        self.unknown_since = None if complete else now
        self.primed = True

    def unknown(self, now: float) -> None:
        """Something only a full read can tell: one is due soon, and what it finds is stamped
        with the time since this was first noticed."""
        if self.unknown_since is None:
            self.unknown_since = now


class MonitorSource(ReadingSource, Generic[E]):
    """Event-driven, for the nf_tables-based modes (``nftables``, and ``iptables`` with the
    nft backend): state kept from the kernel's change events, checked by periodic full reads.

    A dump of an nf_tables ruleset starts over whenever the ruleset changes under it (the
    kernel's generation id moves), so under kube-proxy's steady partial syncs a dump costs
    several times its quiet price, and one slower than the syncs' pace never finishes. A full
    read therefore starts right after a burst of events (just after a kube-proxy sync: the
    likeliest quiet moment) or when its time comes (``ReadSchedule``) with no events at all,
    and is abandoned when a burst of events arrives while it runs — the dump would only start
    over."""

    def __init__(self, *, mode: Mode, runner: CommandRunner, clock: Clock,
                 metrics: DataplaneMetrics, tables: _Tables[E], resync_interval: float = 60.0,
                 max_cpu: float = 0.1, cpu: Callable[[], float] = reading_cpu) -> None:
        super().__init__(mode=mode, clock=clock, metrics=metrics)
        self.runner = runner
        self.tables = tables
        self.schedule = ReadSchedule(resync_interval=resync_interval,
                                     budget=ReadBudget(max_cpu, cpu))
        self.monitor_latency = 0.001  # netlink to our process, the bound stated on changes

    async def run(self, sink: ChangeSink) -> None:
        schedule = self.schedule
        async with self.tables.events(self.runner) as events:
            schedule.begin(self.clock.monotonic())
            while True:
                burst: list[E] | None
                remaining = schedule.due_in(self.clock.monotonic())
                if remaining <= 0:
                    regular, since = schedule.start(self.clock.monotonic())
                    loaded, burst = await self._watched_load(events)
                    if loaded:
                        self._install(sink, resync=schedule.primed and regular, since=since)
                else:
                    try:
                        async with asyncio.timeout(remaining):
                            burst = await self._burst(events)
                    except TimeoutError:
                        continue
                if burst is not None and self.tables.apply(burst):
                    await self._update(sink)

    async def _burst(self, events: _Events[E]) -> list[E]:
        """The next burst; if events were lost, what arrived of it (perhaps nothing), the loss
        counted and a full read made due."""
        try:
            return await events.burst()
        except EventsLost as lost:
            self.metrics.error(lost.reason)
            log.warning("dataplane events lost: a full read will tell", reason=lost.reason,
                        error=str(lost))
            self._full_read_due()
            return []

    async def _watched_load(self, events: _Events[E]) -> tuple[bool, list[E] | None]:
        """A full read that gives way to the first burst of events (the dump would only
        start over): whether it ran to its end, and the burst that stopped it."""
        load = asyncio.ensure_future(self._load())
        burst = asyncio.ensure_future(self._burst(events))
        try:
            await asyncio.wait({load, burst}, return_when=asyncio.FIRST_COMPLETED)
            if load.done():  # a burst that came just as well is applied on top
                self.schedule.ended()
                return load.result(), burst.result() if burst.done() else None
            self.schedule.gave_way()
            log.debug("dataplane full read abandoned: the ruleset changed under it",
                      in_a_row=self.schedule.abandoned)
            return False, burst.result()
        finally:  # a burst cancelled while waiting has lost nothing
            await cancel_and_wait(*(task for task in (load, burst) if not task.done()))

    async def _update(self, sink: ChangeSink) -> None:
        delta, complete = self.tables.delta()
        at = self._now(self.monitor_latency)
        self._selection.update(delta.keys(), delta, lambda _: at, sink)
        if not complete:
            self._full_read_due()

    def _full_read_due(self) -> None:
        self.schedule.unknown(self.clock.monotonic())

    async def _load(self) -> bool:
        with self.schedule.budget.measure():
            return await self._scan(self._loaded()) is not None

    async def _loaded(self) -> bool:
        await self.tables.load(self.runner)
        return True

    def _install(self, sink: ChangeSink, *, resync: bool, since: float) -> None:
        """Take what a full read found; a resync counts what differs as drift."""
        selection, complete = self.tables.selection()
        # Not complete: a chain made between the read's two dumps; the next read will tell.
        self.schedule.installed(self.clock.monotonic(), complete=complete)
        drift = self._selection.replace(
            selection, self._now(self.clock.monotonic() - since), sink)
        if resync and drift:
            self.metrics.drift(drift)
            log.warning("dataplane resync found drift", endpoints=drift)
