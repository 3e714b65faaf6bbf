"""The lab's settings: what `observer lab` flags set, checked before anything starts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

LabDataplane = Literal["nftables", "iptables", "iptables-legacy", "cilium", "memory"]
# Each of the agent's dataplane modes (observer.dataplane.modes) the lab's kube-proxy emulation
# programs, by the lab's name for it: the mode, and the iptables backend. ("memory" stands in
# where network namespaces cannot be made: no mode's reader runs then.)
MODES: dict[str, tuple[str, Literal["nft", "legacy"] | None]] = {
    "nftables": ("nftables", None),
    "iptables": ("iptables", "nft"),
    "iptables-legacy": ("iptables", "legacy"),
    "cilium": ("cilium", None),
}
# The modes the lab cannot run here, and why (tests/test_modes.py keeps both lists whole).
NOT_IN_THE_LAB = {
    "ipvs": "the kernel here has no IPVS module (the agent's IPVS source runs against a "
            "generic netlink stand-in in tests/agent/test_ipvs.py)",
}
# careful: a preStop sleep (--prestop), then exits at once; hasty: no preStop, exits at once;
# draining: no preStop, stops accepting at SIGTERM and finishes the request it serves;
# streaming: as hasty, and its clients hold long-lived streams (observer/lab/clients.py).
WORKLOADS = ("careful", "hasty", "draining", "streaming")


class LabConfigError(ValueError):
    """A flag value or combination the lab cannot run; the message says which and why."""


@dataclass(frozen=True)
class Delay:
    """Seconds, fixed (``0.8``) or drawn uniformly from a range (``0.2..1.5``)."""

    low: float
    high: float

    @classmethod
    def parse(cls, text: str) -> Delay:
        low_text, sep, high_text = text.partition("..")
        try:
            low = float(low_text)
            high = float(high_text) if sep else low
        except ValueError:
            raise LabConfigError(f"{text!r} is not seconds (0.8) or a range (0.2..1.5)") from None
        if low < 0 or high < low:
            raise LabConfigError(f"{text!r}: delays are non-negative and ranges go up")
        return cls(low, high)

    def sample(self, rng: random.Random) -> float:
        return self.low if self.high == self.low else rng.uniform(self.low, self.high)

    def __str__(self) -> str:
        return f"{self.low:g}" if self.low == self.high else f"{self.low:g}..{self.high:g}"


@dataclass(frozen=True)
class LabConfig:
    nodes: int = 3
    deletions: int = 60
    controller_delay: Delay = Delay(0.05, 0.3)  # EndpointSlice controller's reaction
    proxy_delay: Delay = Delay(0.05, 0.4)  # kube-proxy's programming delay per sync
    min_sync_period: float = 1.0  # kube-proxy's minSyncPeriod (iptables default)
    prestop: float = 3.0  # the "careful" workload's preStop sleep
    workloads: tuple[str, ...] = ("careful", "hasty")
    app_exit: Delay = Delay(0.1, 0.5)  # SIGTERM to the app having stopped serving
    readiness_failure: float = 0.2  # SIGTERM to the readiness probe failing
    grace: int = 30  # terminationGracePeriodSeconds
    spacing: float = 0.4  # seconds between the starts of two deletions
    replicas: int = 2  # pods per workload per node
    episode_ttl: float = 600.0  # the agents' --episode-ttl (also how long pod records stay)
    watch_inactivity_timeout: float = 30.0  # the agents' --watch-inactivity-timeout
    terminal_pod_watch: bool = True  # the agents' --terminal-pod-watch
    dataplane: LabDataplane = "nftables"
    poll_interval: float = 0.05  # the agents' polling interval (iptables-legacy)
    # The agents' CPU cap for polling. They share one process here, so a read's CPU counts what
    # the other agents and the API server did meanwhile: a generous cap keeps the interval.
    poll_max_cpu: float = 0.5
    seed: int = 1
    # Real traffic (with network namespaces): requests a second per client and service, and
    # the ingress-like client's delay in following the EndpointSlices.
    request_rate: float = 10.0
    ingress_delay: Delay = Delay(1.0, 2.0)
    # The workloads the ingress-like client fronts (None: all of them); the others are reached
    # through their Service addresses only.
    ingress_workloads: tuple[str, ...] | None = None
    # The agents' --histogram-buckets (observer.export.buckets): other buckets than the
    # defaults, for the tests of what reads them (recording rules, dashboards, the report).
    histogram_buckets: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def fronted(self) -> tuple[str, ...]:
        """The workloads behind the ingress-like client."""
        return self.workloads if self.ingress_workloads is None else self.ingress_workloads

    def check(self) -> None:
        if self.nodes < 1:
            raise LabConfigError("--nodes must be at least 1")
        if self.nodes > 20:
            raise LabConfigError("--nodes is at most 20 (each node runs an agent here)")
        if self.deletions < 1:
            raise LabConfigError("--deletions must be at least 1")
        if self.min_sync_period < 0:
            raise LabConfigError("--min-sync-period cannot be negative")
        if not 0 < self.request_rate <= 100:
            raise LabConfigError("--request-rate is between 0 and 100 requests a second")
        if self.prestop < 0:
            raise LabConfigError("--prestop cannot be negative")
        distinct = set(self.workloads)
        if not distinct or len(distinct) != len(self.workloads) or not distinct <= set(WORKLOADS):
            raise LabConfigError("--workloads is a list of distinct ones of "
                                 + ", ".join(WORKLOADS))
        if self.ingress_workloads is not None and not set(self.ingress_workloads) <= distinct:
            raise LabConfigError("--ingress-workloads names workloads of --workloads ("
                                 + ",".join(self.workloads) + ")")
        if self.prestop + self.app_exit.high >= self.grace:
            raise LabConfigError(
                f"the preStop ({self.prestop:g} s) plus the longest --app-exit "
                f"({self.app_exit.high:g} s) must end before the grace period ({self.grace} s)"
                ": the kubelet would kill every pod")
