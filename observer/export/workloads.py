"""Per-workload metrics: what each workload's own pods went through, on the pod's node.

The slowest consumer of a Service belongs to its workload — a public one behind a cloud load
balancer needs tens of seconds, an internal one a second or two — so the evidence that sizes a
workload's preStop is kept per workload (``namespace``, ``workload`` = ``<kind>/<name>``,
``observer.kube.owners``): the last new connection its terminating pods saw, by source; the
connections after removal, by what they came after; those cut at the stop; its unsafe
terminations; how long its app took to exit after SIGTERM; the preStop its last deleted pod
had; how many of its deletions ended here. Only on the pod's node: only there does the agent
see the pod (and every connection to it crosses that node's netfilter).

Cardinality is bounded on each node (docs/agent.md, "Per-workload metrics"): at most
``max_workloads`` workloads have series at once; an episode of one more is counted under
``namespace="_other", workload="_other"`` and in ``workloads_folded_total``; a workload with no
episode for ``idle`` seconds loses its series (the next one brings them back). A switch turns
them off. Times come from the tracker's monotonic clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from observer.config import WorkloadSettings
from observer.episodes.model import AFTERS, ORIGINS, Episode
from observer.episodes.observers import EpisodeObserver, TrafficObserver
from observer.episodes.pods import Shutdown
from observer.export.buckets import buckets
from observer.kube.owners import Workload

OTHER = ("_other", "_other")
_P = "endpoint_propagation_workload_"


class WorkloadMetrics(EpisodeObserver, TrafficObserver):
    def __init__(self, registry: CollectorRegistry, *, settings: WorkloadSettings,
                 now: Callable[[], float],
                 overrides: Mapping[str, tuple[float, ...]] | None = None) -> None:
        """``overrides``: histogram families' buckets (``observer.export.buckets``)."""
        self.settings = settings
        self.now = now
        labels = ["namespace", "workload"]
        self.episodes = Counter(
            f"{_P}episodes",
            "On the pod's node: deletions of the workload's pods whose episode ended here.",
            labels, registry=registry)
        self.unsafe = Counter(
            f"{_P}unsafe_terminations",
            "On the pod's node: the workload's pods that stopped before this node's dataplane "
            "stopped selecting them, or that new connections reached after they stopped.",
            labels, registry=registry)
        self.last_connection = Histogram(
            f"{_P}last_connection_seconds",
            "On the pod's node: pod deletion seen to the last new connection that reached the "
            "workload's endpoint, by source (local, forwarded), when its traffic window closed.",
            [*labels, "source"], buckets=buckets(overrides or {}, f"{_P}last_connection_seconds"),
            registry=registry)
        self.connections = Counter(
            f"{_P}connections_after_removal",
            "On the pod's node: new connections to the workload's endpoints after they left "
            "Ready, by what they came after (not_ready, stopped: failed for the client).",
            [*labels, "after"], registry=registry)
        self.cut = Counter(
            f"{_P}connections_cut",
            "On the pod's node: TCP connections the workload's pods cut when they stopped "
            "(still open, or closed by the pod since its end began).", labels,
            registry=registry)
        self.app_shutdown = Histogram(
            f"{_P}app_shutdown_seconds",
            "On the pod's node: how long the workload's app took to exit after SIGTERM (pod "
            "shutdown minus its preStop, when that is known).", labels,
            buckets=buckets(overrides or {}, f"{_P}app_shutdown_seconds"), registry=registry)
        self.prestop = Gauge(
            f"{_P}prestop_seconds",
            "On the pod's node: the longest preStop hook of the workload's last pod deleted "
            "here, as its spec says (absent while unknown: an httpGet or another exec).",
            labels, registry=registry)
        self.folded = Counter(
            "endpoint_propagation_workloads_folded",
            "Episodes of workloads past --max-workloads, counted under workload=\"_other\".",
            registry=registry)
        self.tracked = Gauge(
            "endpoint_propagation_workloads",
            "Workloads with per-workload series on this node now (at most --max-workloads, "
            "and _other).", registry=registry)
        self._seen: dict[tuple[str, str], float] = {}  # label values -> last episode (mono)

    def _labels(self, workload: Workload | None, *, fold: bool = True
                ) -> tuple[str, str] | None:
        """The label values an event of ``workload`` goes under (None: not counted). Past the
        cap a new workload's events go under ``_other`` (counted as folded), or, without
        ``fold``, nowhere."""
        if workload is None or not self.settings.enabled:
            return None
        key = (workload.namespace, workload.label)
        if key not in self._seen and \
                len(self._seen) - (OTHER in self._seen) >= self.settings.max_workloads:
            if not fold:
                return None
            self.folded.inc()
            key = OTHER
        self._seen[key] = self.now()
        self.tracked.set(len(self._seen))
        return key

    # EpisodeObserver -------------------------------------------------------------------------

    def started(self, episode: Episode, now: float) -> None:
        """The workload's counters exist, at 0, from its deletion on: Prometheus' increase()
        does not count a series' first sample, so a counter born at 1 when the episode ends
        would lose that episode (when a scrape falls between the two)."""
        key = self._labels(episode.workload if episode.local else None, fold=False)
        if key is not None:
            self.episodes.labels(*key)
            self.unsafe.labels(*key)

    def finished(self, episode: Episode) -> None:
        key = self._labels(episode.workload if episode.local else None)
        if key is None:
            return
        self.episodes.labels(*key).inc()

    def final(self, episode: Episode) -> None:
        if not episode.unsafe:
            return
        key = self._labels(episode.workload if episode.local else None)
        if key is not None:
            self.unsafe.labels(*key).inc()

    def pod_shutdown(self, shutdown: Shutdown) -> None:
        if shutdown.prestop is None:
            return
        key = self._labels(shutdown.workload)
        if key is not None:
            self.prestop.labels(*key).set(shutdown.prestop)
            self.app_shutdown.labels(*key).observe(max(0.0, shutdown.seconds - shutdown.prestop))

    def expire(self, now: float) -> None:
        """Series of workloads with no episode for ``idle`` seconds go."""
        for key in [k for k, at in self._seen.items() if now - at > self.settings.idle]:
            del self._seen[key]
            for family in (self.episodes, self.unsafe, self.cut, self.app_shutdown,
                           self.prestop):
                _remove(family, key)
            for origin in ORIGINS:
                _remove(self.last_connection, (*key, origin))
            for after in AFTERS:
                _remove(self.connections, (*key, after))
        self.tracked.set(len(self._seen))

    # TrafficObserver -------------------------------------------------------------------------

    def traffic_closed(self, episode: Episode) -> None:
        traffic = episode.traffic
        if episode.abandoned is not None or not episode.local or traffic is None:
            return
        key = self._labels(episode.workload)
        if key is None:
            return
        if episode.deleted is not None:
            for origin, at in traffic.last.items():
                self.last_connection.labels(*key, origin).observe(
                    max(0.0, at.mono - episode.deleted.mono))
        for after in AFTERS:
            count = traffic.count(after)
            if count:
                self.connections.labels(*key, after).inc(count)
        if traffic.cut:
            self.cut.labels(*key).inc(traffic.cut)


def _remove(family: Counter | Gauge | Histogram, values: tuple[str, ...]) -> None:
    """A series gone, if it was there (a no-op otherwise in prometheus_client 0.26, which its
    documentation does not promise)."""
    with contextlib.suppress(KeyError):
        family.remove(*values)
