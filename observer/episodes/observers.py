"""What happens to episodes, told to whoever observes them.

The tracker (``observer.episodes.tracker``) tells the observers it was built with of each
episode's life, in this order: ``started`` (before anything else happens to it), then as they
come ``stopped`` and ``fallback``, and at its end ``finished`` or ``abandoned``, then
``ended``; a finished episode is ``final`` once its record is (at once when its connections
are not followed, when its traffic window closes when they are: the unsafe verdict and the
episode's log line wait for it). Around episodes it tells ``address_ready``, ``pod_ending``,
``pod_shutdown``, ``invalid_input``, and ``expire`` at each housekeeping.

The traffic book (``observer.episodes.traffic``) is one such observer; what connections did it
tells ``TrafficObserver``s of its own: ``connection``, ``connections_cut``, and
``traffic_closed`` once an episode's record is final. The metrics (``observer.export.metrics``)
and the episode log (``observer.export.log``) observe both.

Every method here does nothing: an observer overrides what it cares about. ``now`` arguments
are readings of the tracker's monotonic clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from observer.episodes.model import AbandonReason, After, Episode, Origin
from observer.episodes.pods import Shutdown

Address = tuple[str, int, str]  # endpoint address, port, protocol


class EpisodeObserver:
    """What the tracker tells."""

    def started(self, episode: Episode, now: float) -> None:
        """A new episode (what the pod records say of it — deleted, stopped — comes next)."""

    def stopped(self, episode: Episode) -> None:
        """The episode's pod stopped (``episode.stopped``); once per episode."""

    def fallback(self, episode: Episode) -> None:
        """kube-proxy keeps the endpoint: its service port has no Ready endpoint left."""

    def finished(self, episode: Episode) -> None:
        """The episode has what it waited for; its stages are timed."""

    def final(self, episode: Episode) -> None:
        """A finished episode's record is final (its connections counted, if followed): told
        once, after ``finished``, and after ``traffic_closed`` when its traffic is followed."""

    def abandoned(self, reason: AbandonReason, episode: Episode | None) -> None:
        """It ended without an answer (``episode`` None: abandoned before it started)."""

    def ended(self, episode: Episode, now: float) -> None:
        """After ``finished`` or ``abandoned`` of a started episode."""

    def address_ready(self, address: Address) -> None:
        """The address is Ready again, for a new endpoint."""

    def pod_ending(self, ips: tuple[str, ...], now: float) -> None:
        """A pod's end is near or here (its deletion seen, or its stop), before any episode
        of it may have started."""

    def pod_shutdown(self, shutdown: Shutdown) -> None:
        """A deleted pod on this node has shut down (``Shutdown``: how long after its deletion
        was seen, how many containers were killed, its preStop, its workload)."""

    def invalid_input(self, resource: str, reason: str) -> None:
        """An object of ``resource`` could not be used (``reason``)."""

    def expire(self, now: float) -> None:
        """Housekeeping: whatever is kept for a while is due now or never."""


class TrafficObserver:
    """What the traffic book tells."""

    def connection(self, origin: Origin, after: After) -> None:
        """A new connection reached endpoints in episodes (counted once, however many)."""

    def connections_cut(self, count: int) -> None:
        """Connections still open when the pod stopped (on the pod's node)."""

    def traffic_closed(self, episode: Episode) -> None:
        """The episode's traffic window closed: its record is final."""


class Observers(EpisodeObserver, TrafficObserver):
    """Several observers as one: each is told, in the order given."""

    def __init__(self, observers: Iterable[EpisodeObserver | TrafficObserver]) -> None:
        observers = tuple(observers)
        self.of_episodes = tuple(o for o in observers if isinstance(o, EpisodeObserver))
        self.of_traffic = tuple(o for o in observers if isinstance(o, TrafficObserver))

    def started(self, episode: Episode, now: float) -> None:
        for observer in self.of_episodes:
            observer.started(episode, now)

    def stopped(self, episode: Episode) -> None:
        for observer in self.of_episodes:
            observer.stopped(episode)

    def fallback(self, episode: Episode) -> None:
        for observer in self.of_episodes:
            observer.fallback(episode)

    def finished(self, episode: Episode) -> None:
        for observer in self.of_episodes:
            observer.finished(episode)
        if episode.traffic is None:
            self.final(episode)

    def final(self, episode: Episode) -> None:
        for observer in self.of_episodes:
            observer.final(episode)

    def abandoned(self, reason: AbandonReason, episode: Episode | None) -> None:
        for observer in self.of_episodes:
            observer.abandoned(reason, episode)

    def ended(self, episode: Episode, now: float) -> None:
        for observer in self.of_episodes:
            observer.ended(episode, now)

    def address_ready(self, address: Address) -> None:
        for observer in self.of_episodes:
            observer.address_ready(address)

    def pod_ending(self, ips: tuple[str, ...], now: float) -> None:
        for observer in self.of_episodes:
            observer.pod_ending(ips, now)

    def pod_shutdown(self, shutdown: Shutdown) -> None:
        for observer in self.of_episodes:
            observer.pod_shutdown(shutdown)

    def invalid_input(self, resource: str, reason: str) -> None:
        for observer in self.of_episodes:
            observer.invalid_input(resource, reason)

    def expire(self, now: float) -> None:
        for observer in self.of_episodes:
            observer.expire(now)

    def connection(self, origin: Origin, after: After) -> None:
        for observer in self.of_traffic:
            observer.connection(origin, after)

    def connections_cut(self, count: int) -> None:
        for observer in self.of_traffic:
            observer.connections_cut(count)

    def traffic_closed(self, episode: Episode) -> None:
        for observer in self.of_traffic:
            observer.traffic_closed(episode)
        if episode.abandoned is None:
            self.final(episode)
