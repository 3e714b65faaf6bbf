"""Each workload's own preStop and grace period (docs/report.md, "Per workload").

The slowest consumer belongs to the workload: kube-proxy's rules reach every Service's pods on
the same schedule, but an ingress or a cloud load balancer sending to pod addresses fronts only
some workloads. So, per workload (``namespace``, ``<kind>/<name>``), from the per-workload
families its pods' nodes export:

    own     = max over sources of Q(this workload's last connection from that source)
    preStop = ceil( max(rules, own) + margin )                          set_by
              rules: the cluster-wide rules path (controller + slowest node's dataplane)
                                                                         "kube-proxy"
              own, when slower                                           "connections"
    fewer than --min-episodes of its deletions measured: the cluster-wide
    recommendation, said so                                              "cluster-wide"

    grace   = ceil( preStop + Q(its app's exit after SIGTERM) + margin )

A source counts with at least ``--min-episodes`` observations, as cluster-wide. The app's exit
is the workload's own when any of its pods' shutdowns was measured, the cluster's otherwise.
Connections its pods' termination closed under their clients are a finding of their own
(``drain``): no preStop length helps a connection the app closes at SIGTERM; the app must
drain it (and the grace period cover that).

The same preStop formula is the recording rule
``namespace_workload:endpoint_propagation_prestop_recommendation_seconds``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from observer.report.advice import FINDINGS, ContainerAdvice, Recommendation, advise
from observer.report.evidence import WorkloadEvidence
from observer.report.workloads import WorkloadContainer

RULES, CONNECTIONS, CLUSTER_WIDE = "kube-proxy", "connections", "cluster-wide"
DRAIN = "drain"  # its pods' termination closed connections under their clients
WORKLOAD_FINDINGS = (*FINDINGS[:3], DRAIN, *FINDINGS[3:])  # worst first
FOLDED = ("_other", "_other")  # what agents past --max-workloads count under


@dataclass(frozen=True)
class Sizing:
    """One workload's preStop and what set it."""

    prestop_seconds: int
    set_by: str  # RULES, CONNECTIONS or CLUSTER_WIDE
    episodes: int  # its deletions measured (on its pods' nodes)
    last_connection: dict[str, float]  # its own Q(last connection), sources with enough data
    app_shutdown: float | None  # Q(app exit after SIGTERM): its own, else the cluster's
    app_shutdown_own: bool


def size(own: WorkloadEvidence | None, rec: Recommendation, min_episodes: int) -> Sizing:
    own = own or WorkloadEvidence()
    q = rec.quantile
    app_own = own.app_shutdown.count > 0
    app = own.app_shutdown.quantile(q) if app_own else rec.app_shutdown
    last = {source: h.quantile(q) for source, h in sorted(own.last_connection.items())
            if h.count >= min_episodes}
    episodes = round(own.episodes)
    if own.episodes < min_episodes:
        return Sizing(rec.prestop_seconds, CLUSTER_WIDE, episodes, last, app, app_own)
    slowest = max(last.values(), default=0.0)
    set_by = CONNECTIONS if slowest > rec.rules else RULES
    seconds = math.ceil(max(rec.rules, slowest) + rec.margin)
    return Sizing(seconds, set_by, episodes, last, app, app_own)


@dataclass(frozen=True)
class WorkloadAdvice:
    namespace: str
    kind: str  # as the API names it: Deployment, StatefulSet, DaemonSet, ReplicaSet, Pod
    name: str
    sizing: Sizing
    recommended_grace_seconds: int | None  # None: no app exit measured, grace not judged
    containers: tuple[ContainerAdvice, ...]
    evidence: WorkloadEvidence

    @property
    def workload(self) -> str:
        """``<kind>/<name>``, as the agents' ``workload`` label says it."""
        return f"{self.kind.lower()}/{self.name}"

    @property
    def grace_seconds(self) -> float:
        return self.containers[0].workload.grace_seconds

    @property
    def configured_prestop_seconds(self) -> float | None:
        """What its pods wait before SIGTERM today: the shortest of its serving containers'
        preStops (0 without one; None when one cannot be read)."""
        seconds: list[float] = []
        for container in self.containers:
            prestop = container.workload.prestop
            if prestop.kind != "none" and prestop.seconds is None:
                return None
            seconds.append(prestop.seconds or 0.0)
        return min(seconds)

    @property
    def findings(self) -> tuple[str, ...]:
        found = {f for c in self.containers for f in c.findings}
        if self.evidence.cut:
            found.add(DRAIN)
        return tuple(sorted(found, key=WORKLOAD_FINDINGS.index))

    @property
    def finding(self) -> str:
        """The worst finding, or ``ok``."""
        return self.findings[0] if self.findings else "ok"

    def to_dict(self) -> dict[str, object]:
        s, e = self.sizing, self.evidence
        return {
            "namespace": self.namespace, "workload": self.workload, "kind": self.kind,
            "name": self.name, "recommended_prestop_seconds": s.prestop_seconds,
            "set_by": s.set_by, "episodes": s.episodes,
            "configured_prestop_seconds": self.configured_prestop_seconds,
            "configured_grace_seconds": self.grace_seconds,
            "recommended_grace_seconds": self.recommended_grace_seconds,
            "finding": self.finding, "findings": list(self.findings),
            "last_connection_seconds_by_source": s.last_connection,
            "app_shutdown_seconds": s.app_shutdown,
            "app_shutdown_measured_here": s.app_shutdown_own,
            "unsafe_terminations": round(e.unsafe), "failed_connections": round(e.failed),
            "cut_connections": round(e.cut),
            "containers": [c.to_dict() for c in self.containers],
        }


def advise_workloads(found: Sequence[WorkloadContainer], rec: Recommendation,
                     evidence: Mapping[tuple[str, str], WorkloadEvidence],
                     min_episodes: int) -> list[WorkloadAdvice]:
    """Each workload's sizing and its serving containers' findings against it, worst first."""
    by_workload: dict[tuple[str, str, str], list[WorkloadContainer]] = {}
    for container in found:
        by_workload.setdefault((container.namespace, container.kind, container.name),
                               []).append(container)
    out = []
    for (namespace, kind, name), containers in by_workload.items():
        own = evidence.get((namespace, f"{kind.lower()}/{name}"))
        sizing = size(own, rec, min_episodes)
        advice = tuple(sorted((advise(c, sizing.prestop_seconds, sizing.app_shutdown,
                                      rec.margin) for c in containers),
                              key=lambda a: a.workload.container))
        grace = None if sizing.app_shutdown is None else math.ceil(
            max(a.suggested_prestop_seconds for a in advice) + sizing.app_shutdown + rec.margin)
        out.append(WorkloadAdvice(namespace, kind, name, sizing, grace, advice,
                                  own or WorkloadEvidence()))
    return sorted(out, key=_worst_first)


def _worst_first(advice: WorkloadAdvice) -> tuple[int, str, str, str]:
    return (WORKLOAD_FINDINGS.index(advice.finding) if advice.findings
            else len(WORKLOAD_FINDINGS), advice.namespace, advice.kind, advice.name)


def folded_warning(evidence: Mapping[tuple[str, str], WorkloadEvidence]) -> str | None:
    """Said when agents folded workloads past their cap: those have no evidence of their own."""
    folded = evidence.get(FOLDED)
    if folded is None or not folded.episodes:
        return None
    return (f"{round(folded.episodes)} deletions were counted under workload=\"_other\" by "
            "agents past --max-workloads: those workloads fall back to the cluster-wide "
            "number (raise --max-workloads, docs/agent.md)")
