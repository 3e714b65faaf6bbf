"""The agent's Prometheus metrics. Names are an API: docs/metrics.md lists every one, and a
test compares that list with a live ``/metrics``.

Conventions: base units (seconds), ``_total`` only on counters, bounded label values (no pod
names, IPs, UIDs or free text). Node identity is not a label: Prometheus adds it from service
discovery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from observer import __version__
from observer.dataplane.commands import ERROR_REASONS
from observer.episodes.model import (
    ABANDON_REASONS,
    AFTERS,
    ORIGINS,
    OUTCOMES,
    STAGES,
    UNMEASURED_REASONS,
    AbandonReason,
    After,
    Episode,
    Origin,
)
from observer.episodes.observers import EpisodeObserver, TrafficObserver
from observer.episodes.pods import Shutdown
from observer.export.buckets import buckets
from observer.kube.watch import RESTART_REASONS
from observer.traffic.source import ERROR_REASONS as TRAFFIC_ERROR_REASONS

log = structlog.get_logger("observer.export")
# The stages each cause of episode times (observer.episodes.stages): a deletion, on the pod's
# node, all three; an endpoint only going not-ready, the dataplane stage.
_TIMED = (("controller", "deletion"), ("dataplane", "deletion"), ("total", "deletion"),
          ("dataplane", "not_ready"))

RESOURCES = ("pods", "terminal_pods", "endpointslices")
INVALID_INPUT_REASONS = ("malformed", "malformed_event", "no_service_label",
                         "unsupported_address_type", "duplicate_endpoint", "no_target_ref",
                         "owner_references", "unhandled")


def configure_exposition() -> None:
    """Process-wide, once, where the program starts (as logging is): no ``*_created`` series.
    They double the series count and carry nothing the agent's users need; prometheus_client
    has only a process-wide switch for them."""
    disable_created_metrics()  # type: ignore[no-untyped-call]


class AgentMetrics(EpisodeObserver, TrafficObserver):
    """Counters and histograms the agent updates as things happen."""

    def __init__(self, registry: CollectorRegistry, *, proxy_mode: str,
                 buckets: Mapping[str, tuple[float, ...]] | None = None) -> None:
        """``buckets``: histogram families' buckets overriding the defaults
        (``observer.export.buckets``)."""
        self.proxy_mode = proxy_mode
        self._buckets = buckets or {}
        # Every bounded label value exists from the start: dashboards see zeros, not gaps.
        self._episode_families(registry)
        self._pod_families(registry)
        self._watch_families(registry)
        self._traffic_families(registry)

    def _family(self, name: str) -> tuple[float, ...]:
        return buckets(self._buckets, f"endpoint_propagation_{name}")

    def _episode_families(self, registry: CollectorRegistry) -> None:
        p = "endpoint_propagation_"
        self.duration = Histogram(
            f"{p}duration_seconds",
            "Time an endpoint removal took to propagate, by stage: controller (pod deletion "
            "seen to not-ready slice update received), dataplane (not-ready update received to "
            "this node's dataplane no longer selecting the endpoint) and total.",
            ["stage", "cause", "proxy_mode"], buckets=self._family("duration_seconds"),
            registry=registry)
        self.unsafe_total = Counter(
            f"{p}unsafe_terminations",
            "Endpoint removals in which the pod stopped serving before this node's dataplane "
            "stopped selecting it, or new connections reached it after it stopped.",
            registry=registry)
        self.unsafe_window = Histogram(
            f"{p}unsafe_window_seconds",
            "How long this node's dataplane kept selecting an endpoint whose pod had already "
            "stopped serving.", buckets=self._family("unsafe_window_seconds"), registry=registry)
        self.headroom = Histogram(
            f"{p}headroom_seconds",
            "How long a pod kept serving after this node's dataplane stopped selecting it: "
            "preStop delay that was not needed.", buckets=self._family("headroom_seconds"),
            registry=registry)
        self.episodes_total = Counter(
            f"{p}episodes",
            "Episodes that ended, by outcome: measured (every stage due was timed), partial "
            "(ended, but a stage could not be timed: see stage_unmeasured_total), abandoned, "
            "fallback (kept by kube-proxy's fallback). Deletions seen = their sum + in_flight.",
            ["outcome"], registry=registry)
        self.stage_unmeasured_total = Counter(
            f"{p}stage_unmeasured",
            "Stages of ended episodes that could not be timed, by stage (controller, dataplane, "
            "total, termination: the unsafe/headroom verdict) and reason (not_seen: a reading "
            "never arrived; uncertain: a watch reading was received on catch-up after a gap, "
            "its bound wider than --max-stage-uncertainty; untracked: this node's dataplane "
            "never selected the endpoint).", ["stage", "reason"], registry=registry)
        self.abandoned_total = Counter(
            f"{p}abandoned",
            "Episodes that ended without a measurement, by reason (ready_again, watch_gap, ttl, "
            "in_flight_cap).", ["reason"], registry=registry)
        self.fallback_total = Counter(
            f"{p}fallback",
            "Episodes in which kube-proxy kept a terminating endpoint because its service port "
            "had no Ready endpoint left; their dataplane stage is not reported.",
            registry=registry)
        # Each stage a cause times, at 0 from the start: Prometheus' increase() and rate()
        # take a series' first sample as its start, so a series born at its first observation
        # loses that one from every window (an agent's first episodes, on a slow scrape).
        for stage, cause in _TIMED:
            self.duration.labels(stage, cause, self.proxy_mode)
        # Every episode ends through one of these: the children are looked up once, here.
        self._outcomes = {outcome: self.episodes_total.labels(outcome) for outcome in OUTCOMES}
        for stage in STAGES:
            for why in UNMEASURED_REASONS:
                self.stage_unmeasured_total.labels(stage, why)
        for abandon in ABANDON_REASONS:
            self.abandoned_total.labels(abandon)

    def _pod_families(self, registry: CollectorRegistry) -> None:
        p = "endpoint_propagation_"
        self.pod_shutdown_seconds = Histogram(
            f"{p}pod_shutdown_seconds",
            "On the pod's node: pod deletion seen to all of its containers terminated.",
            buckets=self._family("pod_shutdown_seconds"), registry=registry)
        self.app_shutdown_seconds = Histogram(
            f"{p}app_shutdown_seconds",
            "On the pod's node, for deleted pods whose preStop time is known (a sleep, or "
            "none): pod shutdown minus the longest preStop, i.e. how long the app took to exit "
            "after SIGTERM.", buckets=self._family("app_shutdown_seconds"), registry=registry)
        self.pod_killed_total = Counter(
            f"{p}pod_killed",
            "On the pod's node: containers of deleted pods that ended by SIGKILL, i.e. were "
            "still running at the end of the grace period.", registry=registry)

    def _watch_families(self, registry: CollectorRegistry) -> None:
        p = "endpoint_propagation_"
        self.watch_events = Counter(
            f"{p}watch_events", "Watch events received, by resource.", ["resource"],
            registry=registry)
        self.watch_restarts = Counter(
            f"{p}watch_restarts",
            "Watch streams that ended and were restarted, by resource and reason (expired, "
            "stalled, closed, connection, http_error).", ["resource", "reason"],
            registry=registry)
        self.invalid_input_total = Counter(
            f"{p}invalid_input",
            "Objects or parts of objects the agent could not use, by resource and reason.",
            ["resource", "reason"], registry=registry)
        for resource in RESOURCES:
            self.watch_events.labels(resource)
            for restart in RESTART_REASONS:
                self.watch_restarts.labels(resource, restart)
            for invalid in INVALID_INPUT_REASONS:
                self.invalid_input_total.labels(resource, invalid)

    def _traffic_families(self, registry: CollectorRegistry) -> None:
        p = "endpoint_propagation_"
        self.last_connection = Histogram(
            f"{p}last_connection_seconds",
            "On the pod's node: pod deletion seen to the last new connection that reached the "
            "endpoint, by source (local: this node's kube-proxy translated a service address to "
            "it; forwarded: it arrived addressed to the pod — other nodes, ingress controllers, "
            "load balancers, meshes). Observed when the episode's traffic window closes; a low "
            "bound of that consumer's propagation (an idle endpoint shows nothing).",
            ["source"], buckets=self._family("last_connection_seconds"), registry=registry)
        self.connections_after_removal = Counter(
            f"{p}connections_after_removal",
            "New connections that reached an endpoint after it was taken out of Ready, by "
            "source (local, forwarded) and what they came after: not_ready (the pod still "
            "ran) or stopped (the pod had stopped: the connection failed for its client).",
            ["source", "after"], registry=registry)
        self.connections_cut_total = Counter(
            f"{p}connections_cut",
            "On the pod's node: TCP connections an endpoint's pod cut when it stopped: still "
            "open when the stop was seen, or closed by the pod since its end began.",
            registry=registry)
        for origin in ORIGINS:
            self.last_connection.labels(origin)
        # Looked up once: one is incremented per connection followed.
        self._connections = {(origin, after): self.connections_after_removal.labels(origin, after)
                             for origin in ORIGINS for after in AFTERS}

    # EpisodeObserver -------------------------------------------------------------------------

    def finished(self, episode: Episode) -> None:
        for stage, seconds in episode.stages.items():
            self.duration.labels(stage, episode.cause, self.proxy_mode).observe(seconds)
        if episode.unsafe_window is not None:
            self.unsafe_window.observe(episode.unsafe_window)
        if episode.headroom is not None:
            self.headroom.observe(episode.headroom)
        for stage, why in episode.unmeasured.items():
            self.stage_unmeasured_total.labels(stage, why).inc()
        outcome = episode.outcome
        assert outcome is not None, "a finished episode has ended"
        self._outcomes[outcome].inc()

    # TrafficObserver ---------------------------------------------------------------------------

    def connection(self, origin: Origin, after: After) -> None:
        self._connections[origin, after].inc()

    def connections_cut(self, count: int) -> None:
        self.connections_cut_total.inc(count)

    def traffic_closed(self, episode: Episode) -> None:
        if episode.abandoned is not None:
            return  # nothing of it is measured
        traffic = episode.traffic
        assert traffic is not None
        if episode.local and episode.deleted is not None:
            for origin, at in traffic.last.items():
                self.last_connection.labels(origin).observe(
                    max(0.0, at.mono - episode.deleted.mono))

    def final(self, episode: Episode) -> None:
        if episode.unsafe:
            self.unsafe_total.inc()

    def abandoned(self, reason: AbandonReason, episode: Episode | None) -> None:
        self.abandoned_total.labels(reason).inc()
        self._outcomes["abandoned"].inc()

    def fallback(self, episode: Episode) -> None:
        self.fallback_total.inc()

    def pod_shutdown(self, shutdown: Shutdown) -> None:
        self.pod_shutdown_seconds.observe(shutdown.seconds)
        if shutdown.prestop is not None:
            self.app_shutdown_seconds.observe(max(0.0, shutdown.seconds - shutdown.prestop))
        if shutdown.killed:
            self.pod_killed_total.inc(shutdown.killed)

    def invalid_input(self, resource: str, reason: str) -> None:
        self.invalid_input_total.labels(resource, reason).inc()

    # WatchMetrics ----------------------------------------------------------------------------

    def event(self, resource: str) -> None:
        self.watch_events.labels(resource).inc()

    def restart(self, resource: str, reason: str) -> None:
        self.watch_restarts.labels(resource, reason).inc()

    def malformed(self, resource: str) -> None:
        self.invalid_input_total.labels(resource, "malformed_event").inc()


class DataplaneHealth:
    """How the dataplane reads go; made before the reader, which it is handed to."""

    def __init__(self, registry: CollectorRegistry,
                 overrides: Mapping[str, tuple[float, ...]] | None = None) -> None:
        p = "endpoint_propagation_"
        self.dataplane_scan = Histogram(
            f"{p}dataplane_scan_duration_seconds",
            "How long one full read of this node's dataplane took (dump command and parse).",
            buckets=buckets(overrides or {}, f"{p}dataplane_scan_duration_seconds"),
            registry=registry)
        self.dataplane_errors_total = Counter(
            f"{p}dataplane_errors",
            "Failed dataplane reads, and lost change events, by reason (missing_tool, "
            "unavailable, permission, timeout, failed, too_large, garbage, events_lost, "
            "replaced).",
            ["reason"], registry=registry)
        self.dataplane_drift_total = Counter(
            f"{p}dataplane_resync_drift",
            "Endpoints whose selection a periodic full read found different from the state "
            "kept up to date from change events.", registry=registry)
        for reason in ERROR_REASONS:
            self.dataplane_errors_total.labels(reason)

    def scan(self, seconds: float) -> None:
        self.dataplane_scan.observe(seconds)

    def error(self, reason: str) -> None:
        self.dataplane_errors_total.labels(reason).inc()

    def drift(self, count: int) -> None:
        self.dataplane_drift_total.inc(count)


class TrafficHealth:
    """How following connections goes; made before the traffic source, which reports to it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.traffic_errors_total = Counter(
            "endpoint_propagation_traffic_errors",
            "Why connections could not be followed, or not all: conntrack_missing (not "
            "loaded), events_disabled (net.netfilter.nf_conntrack_events=0), permission (no "
            "CAP_NET_ADMIN), events_lost (the kernel's queue overflowed), garbage (an "
            "unreadable event), failed (any other failure of the sockets or of a count).",
            ["reason"], registry=registry)
        for reason in TRAFFIC_ERROR_REASONS:
            self.traffic_errors_total.labels(reason)

    def traffic_error(self, reason: str) -> None:
        self.traffic_errors_total.labels(reason).inc()


class StateCollector(Collector):
    """Gauges read from the agent's state at scrape time (memory only, no I/O)."""

    def __init__(self, *, in_flight: Callable[[], int],
                 last_events: Callable[[], Iterable[tuple[str, float | None]]],
                 proxy_mode: str) -> None:
        self._in_flight = in_flight
        self._last_events = last_events
        self._proxy_mode = proxy_mode

    def collect(self) -> Iterable[GaugeMetricFamily | InfoMetricFamily]:
        p = "endpoint_propagation_"
        yield GaugeMetricFamily(f"{p}in_flight",
                                "Episodes started and not yet finished or abandoned.",
                                value=self._in_flight())
        last = GaugeMetricFamily(f"{p}last_event_timestamp_seconds",
                                 "Wall-clock time (Unix seconds) the last watch event, bookmark "
                                 "or list was received, by resource.", labels=["resource"])
        for resource, when in self._last_events():
            if when is not None:
                last.add_metric([resource], when)
        yield last
        info = InfoMetricFamily(f"{p}build", "The agent's version and the kube-proxy mode it "
                                             "reads.", labels=["version", "proxy_mode"])
        info.add_metric([__version__, self._proxy_mode], {})
        yield info
