"""The records the tracker produces: episodes, each with its timestamps (``observer.values``)
and, once ended, its stages and outcome. API timestamps (``metav1.Time``) are wall-clock times
from the API server with whole-second precision; they are kept apart (``api_*`` fields) and
never subtracted from monotonic readings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from observer.kube.owners import Workload
from observer.values import EndpointKey, Timestamp

Cause = Literal["deletion", "not_ready"]
# Why an episode ended without an answer. A small closed set: it is a metric label.
AbandonReason = Literal["ready_again", "watch_gap", "ttl", "in_flight_cap"]
ABANDON_REASONS: tuple[AbandonReason, ...] = ("ready_again", "watch_gap", "ttl", "in_flight_cap")

# The stages of an episode (observer/episodes/stages.py), the reasons one can go unmeasured,
# and how an episode ended. Closed sets: they are metric labels.
Stage = Literal["controller", "dataplane", "total", "termination"]
STAGES: tuple[Stage, ...] = ("controller", "dataplane", "total", "termination")
UnmeasuredReason = Literal["not_seen", "uncertain", "untracked"]
UNMEASURED_REASONS: tuple[UnmeasuredReason, ...] = ("not_seen", "uncertain", "untracked")
Outcome = Literal["measured", "partial", "abandoned", "fallback"]
OUTCOMES: tuple[Outcome, ...] = ("measured", "partial", "abandoned", "fallback")
# Where a connection came from (``observer.values.Connection``), and which moment of the
# episode it came after: ``not_ready`` (the endpoint was out of Ready, the pod still running)
# or ``stopped`` (the pod had stopped: the connection failed for its client). Metric labels.
Origin = Literal["local", "forwarded"]
ORIGINS: tuple[Origin, ...] = ("local", "forwarded")
After = Literal["not_ready", "stopped"]
AFTERS: tuple[After, ...] = ("not_ready", "stopped")


@dataclass(slots=True)
class Traffic:
    """What connection tracking showed reach an episode's endpoint, until its traffic window
    closed (``--traffic-window`` after the episode ended, or earlier when the address went to a
    new endpoint): from its ``not_ready`` on, and before it those that came after the pod's
    stop (its addresses are followed from the first sign of the pod's end this node has: its
    deletion or its stop; ``observer.episodes.traffic``)."""

    connections: dict[tuple[Origin, After], int] = field(default_factory=dict)
    last: dict[Origin, Timestamp] = field(default_factory=dict)  # the last new connection
    # On the pod's node: TCP connections still open when the pod was seen stopped. None: not
    # counted (another node, no stop seen, or the count failed).
    cut: int | None = None
    closes_at: float | None = None  # monotonic; set when the episode ends
    closed: bool = False
    lost: bool = False  # events were lost while it was followed: the counts are low bounds

    def count(self, after: After) -> int:
        return sum(n for (_, when), n in self.connections.items() if when == after)

    def to_dict(self) -> dict[str, Any]:
        return {
            "connections": {f"{origin}/{after}": n
                            for (origin, after), n in sorted(self.connections.items())},
            "last_connection": {origin: t.to_dict() for origin, t in self.last.items()},
            "cut": self.cut, "window_closed": self.closed, "events_lost": self.lost,
        }


@dataclass(slots=True)
class Episode:
    key: EndpointKey
    cause: Cause
    local: bool  # the pod runs on this node
    pod: str  # "namespace/name", "" when the endpoint names no pod
    pod_uid: str
    not_ready: Timestamp
    deleted: Timestamp | None = None
    dataplane: Timestamp | None = None
    stopped: Timestamp | None = None
    # When the API server received the DELETE: deletionTimestamp - grace, whole seconds, wall
    # clock of the API server. Informational; never mixed with monotonic readings.
    api_delete_requested: float | None = None
    fallback: bool = False  # kube-proxy kept it because no Ready endpoint was left
    dataplane_untracked: bool = False  # not selected here when it started: nothing to time
    gap: bool = False  # a watch gap hid part of its history; it will be abandoned
    abandoned: AbandonReason | None = None
    ended: bool = False  # finished or abandoned
    stages: dict[Stage, float] = field(default_factory=dict)
    unsafe_window: float | None = None
    headroom: float | None = None
    unmeasured: dict[Stage, UnmeasuredReason] = field(default_factory=dict)
    traffic: Traffic | None = None  # None: connections not followed (--traffic off, or failed)
    # The pod's workload (observer.kube.owners), on the pod's node: only there is the pod seen.
    workload: Workload | None = None
    prestop: float | None = None  # the pod's longest preStop, on its node, once it is deleted

    @property
    def failed_connections(self) -> int:
        """New connections that reached the pod after it stopped: failed for their clients
        (0 when connections are not followed)."""
        return self.traffic.count("stopped") if self.traffic is not None else 0

    @property
    def unsafe(self) -> bool:
        """Unsafe means failed connections, whatever the rules say: the pod stopped before
        this node's dataplane stopped selecting it (``unsafe_window``, the rules' verdict, all a
        node without traffic evidence has), or new connections reached it after it stopped —
        kept by kube-proxy's fallback, or sent by a consumer kube-proxy knows nothing of.
        Final once the record is (``EpisodeObserver.final``)."""
        return self.unsafe_window is not None or self.failed_connections > 0

    @property
    def outcome(self) -> Outcome | None:
        """How it ended (None while in flight): every stage due was timed (``measured``), some
        could not be (``partial``: ``unmeasured`` says which and why), ``abandoned``, or kept by
        kube-proxy's ``fallback``."""
        if self.abandoned is not None:
            return "abandoned"
        if not self.ended:
            return None
        if self.fallback:
            return "fallback"
        return "partial" if self.unmeasured else "measured"

    def to_dict(self) -> dict[str, Any]:
        stamps = {name: getattr(self, name) for name in ("deleted", "not_ready", "dataplane",
                                                          "stopped")}
        return {
            "service": str(self.key.service_port), "protocol": self.key.service_port.protocol,
            "endpoint": {"ip": self.key.ip, "port": self.key.port},
            "pod": self.pod, "local": self.local, "cause": self.cause,
            **({"namespace": self.workload.namespace, "workload": self.workload.label}
               if self.workload is not None else {}),
            "timestamps": {k: v.to_dict() for k, v in stamps.items() if v is not None},
            "api_delete_requested": self.api_delete_requested,
            "fallback": self.fallback,
            "outcome": f"abandoned:{self.abandoned}" if self.abandoned else (
                self.outcome or "in_flight"),
            "stages_seconds": {k: round(v, 6) for k, v in self.stages.items()},
            "unmeasured": dict(self.unmeasured),
            "unsafe": self.unsafe,
            "unsafe_window_seconds": self.unsafe_window,
            "failed_connections": self.failed_connections,
            "headroom_seconds": self.headroom,
            "traffic": self.traffic.to_dict() if self.traffic is not None else None,
        }
