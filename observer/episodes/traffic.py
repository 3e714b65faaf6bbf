"""Which endpoints' connections are followed, for which episodes, and until when.

An episode's endpoint is followed from the episode's start (``not_ready``) until its traffic
window closes: ``window`` seconds after the episode ended (finished: connections that still
arrive after the pod stopped are the failures the preStop exists to prevent, and a slow
consumer may keep sending for a while), at once when it was abandoned, or earlier when the
address becomes Ready again for a new endpoint (a reused pod IP: what reaches it then is the
new pod's). The traffic source (``observer.traffic``) is told whenever the set changes (its
kernel filter follows it) and, on the pod's node, when the pod stopped (it then counts the
connections still open to it: cut).

One connection is counted once in the metrics, whatever the number of episodes at its address
(one pod port behind two service ports); each of those episodes records it.
"""

from __future__ import annotations

from typing import Protocol

from observer.episodes.model import After, Episode, Origin, Traffic
from observer.values import Connection

Address = tuple[str, int, str]  # endpoint address, port, protocol


def address_of(episode: Episode) -> Address:
    return episode.key.ip, episode.key.port, episode.key.service_port.protocol


class TrafficListener(Protocol):
    """The traffic source, as the tracker sees it."""

    def endpoints_changed(self) -> None:
        """The followed endpoints changed (``TrafficBook.endpoints``)."""

    def count_open(self, address: Address) -> None:
        """The pod at ``address`` stopped: count the connections still open to it, and hand
        the count to ``TrafficBook.cut_counted``."""


class TrafficSink(Protocol):
    def connection(self, origin: Origin, after: After) -> None: ...

    def connections_cut(self, count: int) -> None: ...

    def traffic_closed(self, episode: Episode) -> None:
        """The episode's traffic window closed: its record is final."""


class TrafficBook:
    def __init__(self, *, window: float, sink: TrafficSink, listener: TrafficListener) -> None:
        self.window = window
        self.sink = sink
        self.listener = listener
        self.following: dict[Address, list[Episode]] = {}

    def endpoints(self) -> list[tuple[str, int]]:
        return [(ip, port) for ip, port, _ in self.following]

    def start(self, episode: Episode) -> None:
        episode.traffic = Traffic()
        address = address_of(episode)
        followed = address in self.following
        self.following.setdefault(address, []).append(episode)
        if not followed:
            self.listener.endpoints_changed()

    def stopped(self, episode: Episode) -> None:
        """The tracker saw the pod stop; on the pod's node, the TCP connections still open are
        counted (once per address)."""
        if episode.traffic is None or not episode.local or address_of(episode)[2] != "TCP":
            return
        address = address_of(episode)
        if all(e is episode or e.stopped is None or not e.local
               for e in self.following.get(address, ())):
            self.listener.count_open(address)

    def cut_counted(self, address: Address, count: int) -> None:
        counted = False
        for episode in self.following.get(address, ()):
            if episode.traffic is not None and episode.local and episode.traffic.cut is None:
                episode.traffic.cut = count
                counted = True
        if counted and count:
            self.sink.connections_cut(count)

    def ended(self, episode: Episode, now: float) -> None:
        if episode.traffic is None:
            return
        if episode.abandoned is not None:
            self._close(episode)
        else:
            episode.traffic.closes_at = now + self.window

    def ready(self, address: Address) -> None:
        """The address is Ready again, for a new endpoint: the windows of ended episodes at it
        close now (in-flight ones are abandoned by the tracker as ``ready_again``)."""
        for episode in list(self.following.get(address, ())):
            if episode.ended:
                self._close(episode)

    def connection(self, connection: Connection) -> None:
        episodes = self.following.get((connection.ip, connection.port, connection.protocol))
        if not episodes:
            return  # let through by a coarse kernel filter, or its window just closed
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
            self.sink.connection(origin, counted)

    def lost(self) -> None:
        """Events were lost: every followed episode's counts are low bounds from now on."""
        for episodes in self.following.values():
            for episode in episodes:
                assert episode.traffic is not None
                episode.traffic.lost = True

    def expire(self, now: float) -> None:
        due = [e for episodes in self.following.values() for e in episodes
               if e.traffic is not None and e.traffic.closes_at is not None
               and e.traffic.closes_at <= now]
        for episode in due:
            self._close(episode)

    def _close(self, episode: Episode) -> None:
        address = address_of(episode)
        episodes = self.following.get(address, [])
        if episode not in episodes:
            return
        episodes.remove(episode)
        if not episodes:
            del self.following[address]
            self.listener.endpoints_changed()
        assert episode.traffic is not None
        episode.traffic.closed = True
        self.sink.traffic_closed(episode)
