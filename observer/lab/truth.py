"""Ground truth: when each emulated component really acted, on the lab's monotonic clock —
the same clock the agents (in the same process) stamp their measurements with."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrueEpisode:
    service: str  # "ns/name:port"
    ip: str
    port: int
    pod: str
    node: str  # the pod's node
    deleted: float  # the DELETE returned (API server accepted it)
    not_ready: float | None = None  # the controller's slice write that took it out of Ready
    dataplane: dict[str, float] = field(default_factory=dict)  # node -> rules committed
    dataplane_precision: dict[str, float] = field(default_factory=dict)  # writer's runtime
    stopped: float | None = None  # the app stopped serving
    killed: bool = False
    fallback_nodes: set[str] = field(default_factory=set)  # kept by kube-proxy's fallback


class Truth:
    def __init__(self) -> None:
        self.episodes: dict[tuple[str, str], TrueEpisode] = {}  # (service, ip)

    def deleted(self, *, service: str, ip: str, port: int, pod: str, node: str,
                at: float) -> None:
        self.episodes[(service, ip)] = TrueEpisode(service, ip, port, pod, node, at)

    def get(self, service: str, ip: str) -> TrueEpisode | None:
        return self.episodes.get((service, ip))
