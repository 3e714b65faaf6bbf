"""The preStop recommendation and the per-container findings (docs/report.md).

The formula, shared by ``observer report``, the lab and the recording rules in
``deploy/prometheus/rules.yaml``:

    rules   = Q(controller) + max over nodes of Q(dataplane on that node)
    traffic = max over sources of Q(last connection from that source)
    preStop = ceil( max(rules, traffic) + margin )

``Q`` is the ``--quantile`` (default 0.99) of the measured distribution. A preStop must
cover the time until the EndpointSlice says "not ready" *and* the time until the slowest
consumer has stopped choosing the pod: kube-proxy on the slowest node (``rules``), or any
consumer that still sent it new connections (``traffic``: deletion seen → the last connection
that reached the pod, on its node; ingress controllers and load balancers included). The
traffic path counts only with at least ``--min-episodes`` observations of a source; it is a
low bound of that consumer's propagation (an idle endpoint shows nothing). The margin covers
what neither sees (whole-second API timestamps, the kubelet's own reaction). Rounded up to
whole seconds: what a preStop sleep is written in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from observer.kube import lifecycle
from observer.report.evidence import Evidence
from observer.report.histograms import Histogram
from observer.report.options import DEFAULT_MARGIN, DEFAULT_MIN_EPISODES, DEFAULT_QUANTILE
from observer.report.workloads import WorkloadContainer

# over-provisioned: more than this many times the recommendation and at least this much above.
OVER_FACTOR = 2.0
OVER_SECONDS = 10.0

FINDINGS = ("at-risk", "no-prestop", "grace-too-short", "unknown", "over-provisioned")


class NotEnoughData(Exception):
    """Too few episodes to say anything; the report refuses instead of guessing."""


@dataclass(frozen=True)
class Recommendation:
    quantile: float
    margin: float
    controller: float  # Q(controller), seconds
    controller_episodes: float
    dataplane: float  # Q(dataplane) on the slowest node, seconds
    dataplane_episodes: float  # on that node
    slowest_node: str
    nodes: dict[str, float]  # Q(dataplane) per node with data
    app_shutdown: float | None  # Q(app shutdown after SIGTERM); None without data
    app_shutdown_pods: float
    # Q(last connection) per source with enough observations, and how many each had.
    last_connection: dict[str, float] = field(default_factory=dict)
    last_connection_episodes: dict[str, float] = field(default_factory=dict)
    failed_connections: float = 0.0  # reached pods that had stopped: failures clients saw
    cut_connections: float = 0.0

    @property
    def rules(self) -> float:
        return self.controller + self.dataplane

    @property
    def traffic(self) -> float | None:
        return max(self.last_connection.values()) if self.last_connection else None

    @property
    def set_by(self) -> str:
        """``kube-proxy`` (its rules on the slowest node) or ``connections`` (the last
        connection a consumer sent)."""
        traffic = self.traffic
        return "connections" if traffic is not None and traffic > self.rules else "kube-proxy"

    @property
    def prestop_seconds(self) -> int:
        """The formula; rounded up to whole seconds, what a preStop sleep is written in."""
        traffic = self.traffic
        return math.ceil(max(self.rules, traffic if traffic is not None else 0.0) + self.margin)

    @property
    def rules_only_prestop_seconds(self) -> int:
        """What kube-proxy's rules alone would have recommended."""
        return math.ceil(self.rules + self.margin)

    @property
    def episodes(self) -> int:
        return round(self.controller_episodes)

    @property
    def basis(self) -> str:
        q = f"p{self.quantile * 100:g}"
        rules = (f"{q} controller {self.controller:.3f} s ({self.episodes} episodes) + {q} "
                 f"dataplane on the slowest node, {self.slowest_node}, {self.dataplane:.3f} s "
                 f"({round(self.dataplane_episodes)} episodes)")
        traffic = self.traffic
        if traffic is None:
            return (f"{rules} + margin {self.margin:g} s = {self.rules + self.margin:.3f} s, "
                    "rounded up")
        source = max(self.last_connection, key=lambda s: self.last_connection[s])
        connections = (f"{q} last connection ({source}) {traffic:.3f} s after deletion "
                       f"({round(self.last_connection_episodes[source])} episodes)")
        slower, faster = ((connections, rules) if self.set_by == "connections"
                          else (rules, connections))
        return (f"{slower} + margin {self.margin:g} s = "
                f"{max(self.rules, traffic) + self.margin:.3f} s, rounded up; "
                f"faster path: {faster}")


def recommend(evidence: Evidence, *, quantile: float = DEFAULT_QUANTILE,
              margin: float = DEFAULT_MARGIN,
              min_episodes: int = DEFAULT_MIN_EPISODES) -> Recommendation:
    controller = evidence.controller
    if controller.count < min_episodes:
        raise NotEnoughData(
            f"only {round(controller.count)} deletions measured (controller stage) in "
            f"{evidence.source}; at least {min_episodes} are needed (--min-episodes)")
    nodes = {node: h for node, h in evidence.dataplane.items() if h.count > 0}
    measured = sum(h.count for h in nodes.values())
    if measured < min_episodes:
        raise NotEnoughData(
            f"only {round(measured)} dataplane-stage measurements in {evidence.source}; at "
            f"least {min_episodes} are needed (are the agents running with --dataplane none?)")
    per_node = {node: h.quantile(quantile) for node, h in sorted(nodes.items())}
    slowest = max(per_node, key=lambda n: per_node[n])
    app: Histogram = evidence.app_shutdown
    last = {source: h for source, h in sorted(evidence.last_connection.items())
            if h.count >= min_episodes}
    return Recommendation(
        quantile=quantile, margin=margin,
        controller=controller.quantile(quantile), controller_episodes=controller.count,
        dataplane=per_node[slowest], dataplane_episodes=nodes[slowest].count,
        slowest_node=slowest, nodes=per_node,
        app_shutdown=app.quantile(quantile) if app.count > 0 else None,
        app_shutdown_pods=app.count,
        last_connection={source: h.quantile(quantile) for source, h in last.items()},
        last_connection_episodes={source: h.count for source, h in last.items()},
        failed_connections=evidence.failed_connections,
        cut_connections=evidence.cut_connections)


@dataclass(frozen=True)
class ContainerAdvice:
    workload: WorkloadContainer
    findings: tuple[str, ...]
    suggested_prestop_seconds: float

    def to_dict(self) -> dict[str, object]:
        w = self.workload
        return {"namespace": w.namespace, "kind": w.kind, "name": w.name,
                "container": w.container, "prestop_kind": w.prestop.kind,
                "prestop_seconds": w.prestop.seconds, "grace_seconds": w.grace_seconds,
                "findings": list(self.findings),
                "suggested_prestop_seconds": self.suggested_prestop_seconds}


def advise(workload: WorkloadContainer, needed: int, app_shutdown: float | None,
           margin: float) -> ContainerAdvice:
    """Findings for one serving container against its workload's preStop ``needed`` and its
    app's exit after SIGTERM (docs/report.md, "Findings")."""
    findings: list[str] = []
    prestop, grace = workload.prestop, workload.grace_seconds
    seconds = prestop.seconds
    if prestop.kind == lifecycle.NONE:
        findings.append("no-prestop")
        suggested: float = needed
    elif seconds is None:
        findings.append("unknown")
        suggested = needed
    elif seconds < needed:
        findings.append("at-risk")
        suggested = needed
    elif seconds > OVER_FACTOR * needed and seconds - needed >= OVER_SECONDS:
        findings.append("over-provisioned")
        suggested = needed
    else:
        suggested = seconds
    if app_shutdown is not None and grace < math.ceil(suggested + app_shutdown + margin):
        findings.append("grace-too-short")
    return ContainerAdvice(workload, tuple(sorted(findings, key=FINDINGS.index)), suggested)
