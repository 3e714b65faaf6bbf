"""The traffic book as an observer of the tracker's episodes, without root: a manual clock, the
tracker telling it what happens, connections handed in as the traffic source would, and what
it tells its own observers and its source recorded. (tests/traffic runs it on the real
kernel.)"""

from __future__ import annotations

from dataclasses import dataclass, field

from observer.episodes.model import After, Episode, Origin
from observer.episodes.observers import Address, TrafficObserver
from observer.episodes.tracker import EpisodeTracker
from observer.episodes.traffic import HOLD, TrafficBook
from observer.values import Connection
from tests.conftest import ManualClock
from tests.test_tracker import eps, pod

WINDOW = 10.0
ADDRESS: Address = ("10.0.0.1", 80, "TCP")


@dataclass
class Told(TrafficObserver):
    connections: list[tuple[Origin, After]] = field(default_factory=list)
    cut: list[int] = field(default_factory=list)
    closed: list[Episode] = field(default_factory=list)

    def connection(self, origin: Origin, after: After) -> None:
        self.connections.append((origin, after))

    def connections_cut(self, count: int) -> None:
        self.cut.append(count)

    def traffic_closed(self, episode: Episode) -> None:
        self.closed.append(episode)


@dataclass
class Source:
    """The traffic source, as the book sees it: what it was asked."""

    changes: int = 0
    counts: list[Address] = field(default_factory=list)
    since: list[float] = field(default_factory=list)

    def endpoints_changed(self) -> None:
        self.changes += 1

    def count_open(self, address: Address, since: float) -> None:
        self.counts.append(address)
        self.since.append(since)


@dataclass
class World:
    clock: ManualClock
    told: Told
    source: Source
    book: TrafficBook
    tracker: EpisodeTracker

    def connect(self, ip: str = "10.0.0.1", port: int = 80, *, local: bool = False) -> None:
        self.book.connection(Connection(ip, port, "TCP", local, self.tracker.now("conntrack")))

    def listed(self) -> None:
        self.tracker.slices_listed([eps()], self.tracker.now("slice_watch"), relist=False)
        self.tracker.pods_listed([pod()], self.tracker.now("pod_watch"), relist=False)

    def removed(self) -> None:
        self.tracker.pod_changed(pod(deleting=True), self.tracker.now("pod_watch"))
        self.tracker.slice_changed(eps(ready=False, terminating=True),
                                   self.tracker.now("slice_watch"))

    def stopped(self) -> None:
        self.tracker.pod_changed(pod(deleting=True, terminated=True),
                                 self.tracker.now("pod_watch"))

    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.tracker.expire()


def world(clock: ManualClock) -> World:
    told, source = Told(), Source()
    book = TrafficBook(window=WINDOW, observers=told, listener=source)
    tracker = EpisodeTracker(node_name="node-a", clock=clock, observers=[book],
                             measure_dataplane=False)
    return World(clock, told, source, book, tracker)


def test_connections_count_by_the_moment_they_came_after(clock: ManualClock) -> None:
    w = world(clock)
    w.listed()
    w.removed()
    (episode,) = w.tracker.episodes.values()
    assert w.book.endpoints() == [("10.0.0.1", 80), ("10.0.0.1", None)]  # and its pod, early
    clock.advance(0.1)
    w.connect()  # the pod still runs: held until its stop is known, or HOLD passes
    w.tick(HOLD + 0.1)
    assert w.told.connections == [("forwarded", "not_ready")]
    w.connect()
    clock.advance(0.1)
    w.stopped()  # decides the held one: it came before the stop
    w.connect(local=True)
    assert w.told.connections == [("forwarded", "not_ready"), ("forwarded", "not_ready"),
                                  ("local", "stopped")]
    assert episode.traffic is not None
    assert episode.traffic.connections == {("forwarded", "not_ready"): 2,
                                           ("local", "stopped"): 1}
    assert episode.traffic.last["local"].mono == clock.monotonic()


def test_connections_before_the_episode_started_count_if_they_came_after_the_stop(
        clock: ManualClock) -> None:
    """The pod stopped before its endpoint left Ready: the failures came first."""
    w = world(clock)
    w.listed()
    w.tracker.pod_changed(pod(deleting=True), w.tracker.now("pod_watch"))
    assert w.book.endpoints() == [("10.0.0.1", None)]  # every port of the pod, early
    w.connect()  # before the stop: it still served
    clock.advance(0.1)
    w.stopped()
    clock.advance(0.1)
    w.connect()
    w.connect(port=81)  # another port: not this episode's
    assert w.told.connections == []  # no episode yet
    w.tracker.slice_changed(eps(ready=False, terminating=True), w.tracker.now("slice_watch"))
    assert w.told.connections == [("forwarded", "stopped")]
    (episode,) = w.tracker.finished
    assert episode.traffic is not None
    assert episode.traffic.connections == {("forwarded", "stopped"): 1}


def test_the_open_connections_are_counted_once_when_the_pod_stops(clock: ManualClock) -> None:
    w = world(clock)
    w.listed()
    clock.advance(1.0)
    deletion_seen = clock.monotonic()
    w.removed()
    clock.advance(2.0)
    w.stopped()
    # Cut: open now, or closed by the pod since its end was first seen (the deletion).
    assert (w.source.counts, w.source.since) == ([ADDRESS], [deletion_seen])
    w.book.cut_counted(ADDRESS, 3)
    (episode,) = w.tracker.finished
    assert episode.traffic is not None
    assert episode.traffic.cut == 3
    assert w.told.cut == [3]


def test_the_window_closes_after_the_episode_ends(clock: ManualClock) -> None:
    w = world(clock)
    w.listed()
    w.removed()
    w.stopped()
    (episode,) = w.tracker.finished
    changes = w.source.changes
    w.tick(WINDOW - 1)
    w.connect()  # a slow consumer, still sending to the stopped pod
    assert w.told.closed == []
    w.tick(1)
    assert w.told.closed == [episode]
    assert episode.traffic is not None
    assert episode.traffic.closed
    assert episode.traffic.connections == {("forwarded", "stopped"): 1}
    assert ("10.0.0.1", 80) not in w.book.endpoints()
    assert w.source.changes > changes  # the kernel filter follows the set


def test_an_abandoned_episode_closes_at_once_and_a_reused_address_closes_the_ended(
        clock: ManualClock) -> None:
    w = world(clock)
    w.listed()
    w.removed()
    w.tracker.slice_changed(eps(), w.tracker.now("slice_watch"))  # Ready again: abandoned
    (abandoned,) = w.tracker.finished
    assert abandoned.abandoned == "ready_again"
    assert w.told.closed == [abandoned]
    w.removed()
    w.stopped()
    ended = w.tracker.finished[-1]
    assert w.told.closed == [abandoned]  # its window is open
    w.tracker.slice_changed(eps(), w.tracker.now("slice_watch"))  # a new pod at the address
    assert w.told.closed == [abandoned, ended]


def test_lost_events_make_every_followed_record_a_low_bound(clock: ManualClock) -> None:
    w = world(clock)
    w.listed()
    w.removed()
    w.book.lost()
    (episode,) = w.tracker.episodes.values()
    assert episode.traffic is not None
    assert episode.traffic.lost
