"""What the lab found: each agent's measured episodes next to the truth, as numbers (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from observer.episodes.model import Episode
from observer.lab.truth import TrueEpisode
from observer.report.advice import Recommendation
from observer.report.options import DEFAULT_MARGIN

STAGES = ("controller", "dataplane", "total")


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (the smallest value with at least q of the values at or below)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    return {"count": len(values), "p50": round(quantile(values, 0.5), 4),
            "p90": round(quantile(values, 0.9), 4), "p99": round(quantile(values, 0.99), 4),
            "max": round(max(values), 4)}


@dataclass(frozen=True)
class Pair:
    node: str
    measured: Episode
    true: TrueEpisode

    def true_stages(self) -> dict[str, tuple[float, float]]:
        """Each stage's true value as an interval: the rules were committed at some moment
        while their writer ran (``dataplane_precision`` is its run time), so a dataplane time
        is known to lie between the writer's start and its end."""
        t, out = self.true, {}
        dataplane = t.dataplane.get(self.node)
        spread = t.dataplane_precision.get(self.node, 0.0)
        if t.not_ready is not None and self.node == t.node:
            out["controller"] = (t.not_ready - t.deleted,) * 2
        if t.not_ready is not None and dataplane is not None:
            out["dataplane"] = (dataplane - spread - t.not_ready, dataplane - t.not_ready)
        if dataplane is not None and self.node == t.node:
            out["total"] = (dataplane - spread - t.deleted, dataplane - t.deleted)
        return out

    def truly_unsafe(self) -> bool:
        dataplane = self.true.dataplane.get(self.node)
        return (self.node not in self.true.fallback_nodes and dataplane is not None
                and self.true.stopped is not None and self.true.stopped < dataplane)

    def undecidable(self) -> bool:
        """Which came first cannot be said: the pod stopped while this node's rules were being
        written (the commit is somewhere inside the writer's run), or inside the window the
        agent's own dataplane reading states as its precision (a poll places a change within
        about an interval: the agent cannot order a stop inside that window, and says so)."""
        dataplane = self.true.dataplane.get(self.node)
        stopped = self.true.stopped
        if dataplane is None or stopped is None:
            return False
        if dataplane - self.true.dataplane_precision.get(self.node, 0.0) <= stopped <= \
                dataplane:
            return True
        seen = self.measured.dataplane
        return seen is not None and abs(stopped - seen.mono) <= seen.precision


def pair(measured: Iterable[tuple[str, Episode]],
         truth: dict[tuple[str, str], TrueEpisode]) -> tuple[list[Pair], int]:
    """Match each measured episode to its true one; also how many measured had no truth."""
    pairs, unmatched = [], 0
    for node, episode in measured:
        true = truth.get((str(episode.key.service_port), episode.key.ip))
        if true is None or episode.abandoned:
            unmatched += true is None
            continue
        pairs.append(Pair(node, episode, true))
    return pairs, unmatched


def compare(measured: list[tuple[str, Episode]], truth: dict[tuple[str, str], TrueEpisode],
            nodes: list[str]) -> dict[str, Any]:
    pairs, unmatched = pair(measured, truth)
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    true_stages: dict[str, list[float]] = {s: [] for s in STAGES}
    errors: dict[str, list[float]] = {s: [] for s in STAGES}
    per_node: dict[str, dict[str, list[float]]] = {n: {s: [] for s in STAGES} for n in nodes}
    for p in pairs:
        truths = p.true_stages()
        for stage, value in p.measured.stages.items():
            stages[stage].append(value)
            per_node[p.node][stage].append(value)
            if stage in truths:
                low, high = truths[stage]
                true_stages[stage].append(high)
                # Distance from the true interval: 0 when the measurement lies within it.
                errors[stage].append(value - min(max(value, low), high))
    decidable = [p for p in pairs if not p.undecidable()]
    unsafe_true, detected, both = _confusion(decidable)
    local = [p for p in decidable if p.node == p.true.node]
    remote = [p for p in decidable if p.node != p.true.node]
    abandoned: dict[str, int] = {}
    unmeasured: dict[str, int] = {}  # "stage/reason": stages due but not timed
    for _, episode in measured:
        if episode.abandoned:
            abandoned[episode.abandoned] = abandoned.get(episode.abandoned, 0) + 1
        for stage, why in episode.unmeasured.items():
            unmeasured[f"{stage}/{why}"] = unmeasured.get(f"{stage}/{why}", 0) + 1
    return {
        "measured": {"stages": {s: summary(v) for s, v in stages.items()},
                     "unsafe_terminations": detected, "abandoned": abandoned,
                     "unmeasured": unmeasured,
                     "per_node": {n: {s: summary(v) for s, v in st.items()}
                                  for n, st in per_node.items()}},
        "truth": {"episodes": len(truth), "stages": {s: summary(v)
                                                     for s, v in true_stages.items()},
                  "unsafe_terminations": unsafe_true},
        "errors": {s: {"pairs": len(v),
                       "p50_abs_error": round(quantile([abs(e) for e in v], 0.5), 4) if v
                       else None,
                       "p99_abs_error": round(quantile([abs(e) for e in v], 0.99), 4) if v
                       else None,
                       "mean_error": round(sum(v) / len(v), 4) if v else None}
                   for s, v in errors.items()},
        "unsafe": {"true": unsafe_true, "detected": detected, "false_positive": detected - both,
                   "missed": unsafe_true - both,
                   # Left out of the counts above: stopped while the rules were being written.
                   "undecidable": len(pairs) - len(decidable),
                   # The pod's node sees the pod stop (its status); other nodes only through
                   # the slice, which the controller updates later.
                   "on_pods_node": _confusion_dict(local),
                   "on_other_nodes": _confusion_dict(remote)},
        "unmatched_measurements": unmatched,
        "recommendation": recommend(stages["controller"], per_node,
                                    last_connections(measured)),
    }


def last_connections(measured: list[tuple[str, Episode]]) -> dict[str, list[float]]:
    """On each pod's node: deletion seen → the last new connection from each source, as the
    agents recorded it (what ``endpoint_propagation_last_connection_seconds`` observes)."""
    out: dict[str, list[float]] = {}
    for _, episode in measured:
        traffic, deleted = episode.traffic, episode.deleted
        if (traffic is None or deleted is None or not episode.local
                or episode.abandoned is not None):
            continue
        for source, at in traffic.last.items():
            out.setdefault(source, []).append(max(0.0, at.mono - deleted.mono))
    return out


def _confusion(pairs: list[Pair]) -> tuple[int, int, int]:
    """The rules' verdict against the rules' truth (which of the stop and this node's rules
    came first): ``unsafe_window``, not ``unsafe``, which also counts connections after the
    stop — evidence of another kind, checked against the clients' own failures."""
    true = sum(1 for p in pairs if p.truly_unsafe())
    detected = sum(1 for p in pairs if p.measured.unsafe_window is not None)
    both = sum(1 for p in pairs if p.truly_unsafe() and p.measured.unsafe_window is not None)
    return true, detected, both


def _confusion_dict(pairs: list[Pair]) -> dict[str, int]:
    true, detected, both = _confusion(pairs)
    return {"true": true, "detected": detected, "false_positive": detected - both,
            "missed": true - both}


def recommend(controller: list[float], per_node: dict[str, dict[str, list[float]]],
              last: dict[str, list[float]] | None = None) -> dict[str, Any]:
    """The formula of ``observer report`` (observer/report/advice.py) on the lab's exact
    measurements instead of histogram buckets. In the lab the only consumer slower than
    kube-proxy is the ingress-like client: when the connections set it, ``set_by`` says so."""
    node_p99 = {n: quantile(s["dataplane"], 0.99) for n, s in per_node.items()
                if s["dataplane"]}
    if not controller or not node_p99:
        return {"prestop_seconds": None,
                "basis": "not enough measured episodes to recommend anything"}
    slowest = max(node_p99, key=lambda n: node_p99[n])
    rec = Recommendation(
        quantile=0.99, margin=DEFAULT_MARGIN, controller=quantile(controller, 0.99),
        controller_episodes=len(controller), dataplane=node_p99[slowest],
        dataplane_episodes=len(per_node[slowest]["dataplane"]), slowest_node=slowest,
        nodes=node_p99, app_shutdown=None, app_shutdown_pods=0,
        last_connection={s: quantile(v, 0.99) for s, v in (last or {}).items() if v},
        last_connection_episodes={s: len(v) for s, v in (last or {}).items() if v})
    return {"prestop_seconds": rec.prestop_seconds, "basis": rec.basis,
            "set_by": "ingress" if rec.set_by == "connections" else "kube-proxy",
            "rules_only_prestop_seconds": rec.rules_only_prestop_seconds}


@dataclass
class Accounting:
    """What the agents did with the episodes they saw, from their own metrics
    (``episodes_total{outcome}``, ``abandoned_total{reason}``, ``stage_unmeasured_total``,
    ``in_flight``) — the accounting identity of docs/reliability.md: episodes seen = the sum of
    the outcomes + those in flight."""

    outcomes: dict[str, int] = field(default_factory=dict)
    abandoned: dict[str, int] = field(default_factory=dict)
    unmeasured: dict[str, int] = field(default_factory=dict)  # by "stage/reason"
    in_flight: int = 0

    @property
    def measured(self) -> int:
        return self.outcomes.get("measured", 0)

    @property
    def episodes(self) -> int:
        return sum(self.outcomes.values()) + self.in_flight


def accounting(registries: Iterable[CollectorRegistry]) -> Accounting:
    out = Accounting()
    for registry in registries:
        for family in registry.collect():
            for sample in family.samples:
                value = int(sample.value)
                if sample.name == "endpoint_propagation_episodes_total":
                    outcome = sample.labels["outcome"]
                    out.outcomes[outcome] = out.outcomes.get(outcome, 0) + value
                elif sample.name == "endpoint_propagation_abandoned_total":
                    reason = sample.labels["reason"]
                    out.abandoned[reason] = out.abandoned.get(reason, 0) + value
                elif sample.name == "endpoint_propagation_stage_unmeasured_total" and value:
                    which = f"{sample.labels['stage']}/{sample.labels['reason']}"
                    out.unmeasured[which] = out.unmeasured.get(which, 0) + value
                elif sample.name == "endpoint_propagation_in_flight":
                    out.in_flight += value
    return out
