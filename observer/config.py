"""The agent's settings: one dataclass per part, each field's default the one place that
default lives (``observer run``'s flags, the chart's values and docs/agent.md take it from
here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class WatchSettings:
    """How each watch lists, streams and reconnects (``--watch-*``)."""

    inactivity_timeout: float = 90.0  # no line (event or bookmark) for this long: reconnect
    server_timeout: int = 300  # timeoutSeconds asked of the server for each watch request
    request_timeout: float = 60.0  # connecting, and a whole list response
    page_size: int = 500  # list in chunks of this many items (limit/continue); 0: one response
    # The first list waits a random share of this many seconds: a fleet of agents started at
    # once (an install, a rollout of many nodes) spreads its initial lists over this window.
    start_jitter: float = 0.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


@dataclass(frozen=True)
class DataplaneSettings:
    """Which dataplane to read and how (``--dataplane``, ``--netns``, ``--dataplane-poll-*``,
    and each mode's own options, such as Cilium's ``--bpf-root``)."""

    mode: str = "auto"  # a mode's name (observer.dataplane.modes.NAMES), auto, or none
    netns: str | None = None
    poll_interval: float = 0.1
    poll_max_cpu: float = 0.1
    # The modes' own settings by Option.name; a mode takes its default for any left out.
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrafficSettings:
    """Whether to follow connections to terminating endpoints (``--traffic``): ``auto`` does
    when this node allows it and says why not otherwise; ``on`` refuses to start without it.
    ``window``: seconds an ended episode's endpoint is still followed (``--traffic-window``)."""

    mode: Literal["auto", "on", "off"] = "auto"
    window: float = 60.0


@dataclass(frozen=True)
class WorkloadSettings:
    """Per-workload metrics (``--workload-metrics``, ``--max-workloads``,
    ``--workload-idle``): on the pod's node, at most ``max_workloads`` workloads with series
    at once (the rest under ``_other``), a workload's series gone ``idle`` seconds after its
    last episode."""

    enabled: bool = True
    max_workloads: int = 50
    idle: float = 3600.0


@dataclass(frozen=True)
class EventSettings:
    """Kubernetes Events on unsafe terminations (``--events``): at most ``burst`` created at
    once, then one more each ``refill`` seconds; past that, an unsafe termination of a
    workload with an Event recorded here in the last ``series_window`` seconds is counted in
    that Event's ``series``, otherwise dropped (counted)."""

    enabled: bool = True
    burst: int = 10
    refill: float = 60.0
    series_window: float = 600.0


@dataclass(frozen=True)
class AgentConfig:
    """``observer run``: the whole agent."""

    node_name: str
    listen: tuple[str, int] = ("127.0.0.1", 9809)
    episode_ttl: float = 600.0
    max_in_flight: int = 10_000
    # Seconds: a stage whose watch readings are less precise than this is not observed.
    max_stage_uncertainty: float = 0.05
    keep_finished: int = 500
    debug_endpoints: bool = True
    housekeeping_interval: float = 1.0
    shutdown_timeout: float = 5.0
    # Watch terminal pods of every node, so this node learns when a remote pod stopped (else
    # only from the slice, a controller reaction later: more missed unsafe terminations).
    terminal_pod_watch: bool = True
    watch: WatchSettings = field(default_factory=WatchSettings)
    dataplane: DataplaneSettings = field(default_factory=DataplaneSettings)
    traffic: TrafficSettings = field(default_factory=TrafficSettings)
    workloads: WorkloadSettings = field(default_factory=WorkloadSettings)
    events: EventSettings = field(default_factory=EventSettings)
    # Histogram families' buckets overriding the defaults (--histogram-buckets; checked by
    # observer.export.buckets.parse), by the family's full name.
    histogram_buckets: dict[str, tuple[float, ...]] = field(default_factory=dict)
