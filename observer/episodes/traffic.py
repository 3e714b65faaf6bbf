"""Which endpoints' connections are followed, for which episodes, and until when.

An episode's endpoint is followed from the episode's start (``not_ready``) until its traffic
window closes: ``window`` seconds after the episode ended (finished: connections that still
arrive after the pod stopped are the failures the preStop exists to prevent, and a slow
consumer may keep sending for a while), at once when it was abandoned, or earlier when the
address becomes Ready again for a new endpoint (a reused pod IP: what reaches it then is the
new pod's). The book observes the tracker's episodes (``observer.episodes.observers``); the
traffic source (``observer.traffic``) is told whenever the set changes (its kernel filter
follows it) and, on the pod's node, when the pod stopped (it then counts the connections the
stop cut: still open, or closed by the pod since its end was first seen); what the connections
did goes to the book's own observers.

One connection is counted once in the metrics, whatever the number of episodes at its address
(one pod port behind two service ports); each of those episodes records it.

A pod can stop before its endpoint leaves Ready (an app that exits at once, a slow
EndpointSlice controller): the connections that fail then come before the episode starts. So
a pod's addresses are followed from the first sign of its end this node has — its deletion
seen (pod's node), its stop (any node: the pod watch, the watch on terminal pods) — and what
arrives before an episode starts is held (``_Early``, at most ``EARLY_HOLD`` seconds and
``EARLY_LIMIT`` connections an address); when the episode's pod is seen stopped, the held
connections that came after the stop are its connections ``after="stopped"`` (the others came
while it still ran, before its removal: not counted).

Which moment a connection came after is decided against the stop reading, and that reading can
be applied a little after a connection it precedes (a watch event read, then handled after a
conntrack event read later): a connection to an endpoint whose pod is not known to have
stopped is held up to ``HOLD`` seconds (``expire``) before it counts as ``after="not_ready"``;
the stop, when it comes meanwhile, decides it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from observer.episodes.model import After, Episode, Origin, Traffic
from observer.episodes.observers import Address, EpisodeObserver, TrafficObserver
from observer.values import Connection

EARLY_HOLD = 60.0
EARLY_LIMIT = 10_000
HOLD = 0.5


@dataclass
class _Early:
    """A pod address followed before any of its episodes started."""

    since: float  # monotonic: when the address began to be followed
    expires: float
    held: list[Connection] = field(default_factory=list)


def address_of(episode: Episode) -> Address:
    return episode.key.ip, episode.key.port, episode.key.service_port.protocol


class TrafficListener(Protocol):
    """The traffic source, as the book sees it."""

    def endpoints_changed(self) -> None:
        """The followed endpoints changed (``TrafficBook.endpoints``)."""

    def count_open(self, address: Address, since: float) -> None:
        """The pod at ``address`` stopped: count the connections it cut — still open, or
        closed by the pod after ``since`` (monotonic: when its end was first seen) — and hand
        the count to ``TrafficBook.cut_counted``."""


class TrafficBook(EpisodeObserver):
    """Observes the episodes, is told of connections by the traffic source (``connection``,
    ``lost``, ``cut_counted``), tells ``observers`` what they did."""

    def __init__(self, *, window: float, observers: TrafficObserver,
                 listener: TrafficListener) -> None:
        self.window = window
        self.observers = observers
        self.listener = listener
        self.following: dict[Address, list[Episode]] = {}
        self.early: dict[str, _Early] = {}  # pod address -> what came before its episodes
        # Connections waiting for their episodes' stop (at most HOLD seconds), oldest first.
        self._held: deque[tuple[Connection, list[Episode]]] = deque()

    def endpoints(self) -> list[tuple[str, int | None]]:
        """What the kernel filter lets through: followed endpoints, and every port of the pod
        addresses followed early (None)."""
        return [*((ip, port) for ip, port, _ in self.following),
                *((ip, None) for ip in self.early)]

    # EpisodeObserver ---------------------------------------------------------------------

    def pod_ending(self, ips: tuple[str, ...], now: float) -> None:
        """Follow the pod's addresses from now."""
        added = False
        for ip in ips:
            if ip not in self.early:
                self.early[ip] = _Early(since=now, expires=now + EARLY_HOLD)
                added = True
        if added:
            self.listener.endpoints_changed()

    def started(self, episode: Episode, now: float) -> None:
        """Follow the episode's endpoint."""
        episode.traffic = Traffic()
        address = address_of(episode)
        followed = address in self.following
        self.following.setdefault(address, []).append(episode)
        if not followed:
            self.listener.endpoints_changed()

    def stopped(self, episode: Episode) -> None:
        """Connections held for its address since before the episode started that came after
        the stop are its first failures; those held for its stop count now; on the pod's
        node, the TCP connections it cut are counted (once per address): still open, or
        closed by the pod since its end was first seen here."""
        if episode.traffic is None or episode.stopped is None:
            return
        address = address_of(episode)
        early = self.early.get(address[0])
        if early is not None:
            stop = episode.stopped.mono
            for connection in early.held:
                if connection.at.mono >= stop and (connection.port, connection.protocol) == \
                        address[1:]:
                    self._count(connection, [episode])
        self._release(lambda _, episodes: episode in episodes)
        if not episode.local or address[2] != "TCP":
            return
        followed = self.following.get(address, ())
        if all(e is episode or e.stopped is None or not e.local for e in followed):
            since = min(stamp.mono for e in (episode, *followed)
                        for stamp in (e.deleted, e.not_ready) if stamp is not None)
            self.listener.count_open(address, since if early is None else
                                     min(since, early.since))

    def ended(self, episode: Episode, now: float) -> None:
        if episode.traffic is None:
            return
        if episode.abandoned is not None:
            self._close(episode)  # at once: nothing of it is measured
        else:
            episode.traffic.closes_at = now + self.window

    def address_ready(self, address: Address) -> None:
        """The windows of ended episodes at the address close now (in-flight ones are
        abandoned by the tracker as ``ready_again``)."""
        for episode in list(self.following.get(address, ())):
            if episode.ended:
                self._close(episode)

    def expire(self, now: float) -> None:
        self._release(lambda connection, _: connection.at.mono <= now - HOLD)
        due = [e for episodes in self.following.values() for e in episodes
               if e.traffic is not None and e.traffic.closes_at is not None
               and e.traffic.closes_at <= now]
        for episode in due:
            self._close(episode)
        gone = [ip for ip, early in self.early.items() if early.expires <= now]
        for ip in gone:
            del self.early[ip]
        if gone:
            self.listener.endpoints_changed()

    # From the traffic source (observer.traffic.source.Connections) ------------------------

    def cut_counted(self, address: Address, count: int) -> None:
        counted = False
        for episode in self.following.get(address, ()):
            if episode.traffic is not None and episode.local and episode.traffic.cut is None:
                episode.traffic.cut = count
                counted = True
        if counted and count:
            self.observers.connections_cut(count)

    def connection(self, connection: Connection) -> None:
        episodes = self.following.get((connection.ip, connection.port, connection.protocol))
        if episodes:
            if all(e.stopped is not None for e in episodes):
                self._count(connection, episodes)
            else:
                self._held.append((connection, list(episodes)))
            return
        early = self.early.get(connection.ip)
        if early is not None and len(early.held) < EARLY_LIMIT:
            early.held.append(connection)
        # else: let through by a coarse kernel filter, or its window just closed

    def _count(self, connection: Connection, episodes: list[Episode]) -> None:
        origin: Origin = "local" if connection.local else "forwarded"
        counted: After | None = None
        for episode in episodes:
            traffic = episode.traffic
            assert traffic is not None, "followed episodes have a traffic record"
            stopped = episode.stopped
            after: After = ("stopped" if stopped is not None and connection.at.mono >= stopped.mono
                            else "not_ready")
            traffic.connections[origin, after] = traffic.connections.get((origin, after), 0) + 1
            traffic.last[origin] = connection.at
            counted = counted or after
        if counted is not None:
            self.observers.connection(origin, counted)

    def lost(self) -> None:
        """Events were lost: every followed episode's counts are low bounds from now on."""
        for episodes in self.following.values():
            for episode in episodes:
                assert episode.traffic is not None
                episode.traffic.lost = True

    def _release(self, which: Callable[[Connection, list[Episode]], bool]) -> None:
        """Count the held connections ``which`` picks, in the order they came."""
        kept: deque[tuple[Connection, list[Episode]]] = deque()
        for connection, episodes in self._held:
            if which(connection, episodes):
                self._count(connection, episodes)
            else:
                kept.append((connection, episodes))
        self._held = kept

    def _close(self, episode: Episode) -> None:
        address = address_of(episode)
        episodes = self.following.get(address, [])
        if episode not in episodes:
            return
        self._release(lambda _, held_for: episode in held_for)
        episodes.remove(episode)
        if not episodes:
            del self.following[address]
            self.listener.endpoints_changed()
        assert episode.traffic is not None
        episode.traffic.closed = True
        self.observers.traffic_closed(episode)
