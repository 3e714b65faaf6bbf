"""What traffic did in a lab run: the clients' requests (the truth) beside the agents' counts of
connections that reached stopped pods, node by node.

A failed connection attempt is one conntrack flow on every node it crosses: on the client's
node (``local``: its kube-proxy translated the service address), and on the pod's node when that
is another one (``forwarded``); the ingress-like client's attempts are ``forwarded`` on the
pod's node. Which pod an attempt through a service address reached, its client cannot know
(kube-proxy chose); every pod's namespace notes the source address and port of each SYN that
reached it (``LabNetwork.attempts``), and each attempt's client its source port: so each failed
attempt is matched to its pod, and to the nodes it crossed.

An agent counts a connection ``after="stopped"`` when it arrived after the agent learned the
pod had stopped (the kubelet's status, a watch event away); an attempt that failed in between
is counted ``after="not_ready"``. Each such difference is named (``before_stop_seen``), from the
agent's own stop reading for that pod and the attempt's time: the rest must be zero.

Cut connections — those a pod closed under their clients — are compared per workload: what the
clients found when they closed their connections (``observer/lab/clients.py``) against what
the agents on the pods' nodes counted (``workload_connections_cut_total``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from observer.lab.clients import CLIENTS, Backends, ClientKind, Request
from observer.lab.results import quantile

_AFTER_REMOVAL = "endpoint_propagation_connections_after_removal_total"
_WORKLOAD_CUT = "endpoint_propagation_workload_connections_cut_total"


@dataclass(frozen=True)
class NodeView:
    """One node as the comparison needs it: its agent's counters, and when its agent saw each
    pod (by address) stop, on the lab's monotonic clock."""

    address: str  # the node's address, the source of its clients' attempts
    registry: CollectorRegistry
    stops: dict[str, float]


def _agents(registry: CollectorRegistry) -> dict[str, int]:
    """A node's agent: connections after removal, keyed ``source/after``."""
    out: dict[str, int] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == _AFTER_REMOVAL:
                key = f"{sample.labels['source']}/{sample.labels['after']}"
                out[key] = out.get(key, 0) + int(sample.value)
    return out


def _cuts(registries: Iterable[CollectorRegistry]) -> Counter[str]:
    """The agents' cut connections by workload name (of the ``deployment/<name>`` label)."""
    out: Counter[str] = Counter()
    for registry in registries:
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == _WORKLOAD_CUT:
                    out[sample.labels["workload"].partition("/")[2]] += int(sample.value)
    return out


def traffic_result(requests: list[Request], attempts: dict[str, set[tuple[str, int]]],
                   pod_nodes: dict[str, str], nodes: dict[str, NodeView], fabric: str,
                   backends: Iterable[Backends], cuts: Mapping[tuple[ClientKind, str], int]
                   ) -> dict[str, Any]:
    """``attempts``: pod address → the (source address, port) of every SYN that reached it;
    ``pod_nodes``: pod address → its node; ``cuts``: (client, workload) → connections the
    clients found cut."""
    failed = [r for r in requests if r.outcome != "ok"]
    by_client: dict[str, Counter[str]] = {c: Counter() for c in CLIENTS}
    for r in failed:
        by_client[r.client][r.outcome] += 1
    reached = {(source, port): pod for pod, seen in attempts.items() for source, port in seen}
    clients: dict[str, Counter[str]] = {n: Counter() for n in nodes}
    early: dict[str, Counter[str]] = {n: Counter() for n in nodes}
    unmatched = 0
    no_pod: list[dict[str, Any]] = []  # what the attempts that reached no pod were (at most 20)
    for r in requests:
        if r.attempt is None or r.connected:
            continue
        source = nodes[r.node].address if r.node else fabric
        pod = reached.get((source, r.attempt.port)) if r.node else r.target
        if pod is None or pod not in pod_nodes:
            unmatched += 1  # reached no pod (timed out on the way): crossed only its node
            if len(no_pod) < 20:
                no_pod.append({"client": r.client, "node": r.node, "workload": r.workload,
                               "target": r.target, "outcome": r.outcome,
                               "sent": round(r.attempt.sent, 3)})
            if r.node:
                clients[r.node]["local"] += 1
            continue
        crossed = [(r.node, "local")] if r.node else []
        if pod_nodes[pod] != r.node:
            crossed.append((pod_nodes[pod], "forwarded"))
        for node, source_kind in crossed:
            clients[node][source_kind] += 1
            seen = nodes[node].stops.get(pod)
            if seen is None or r.attempt.sent < seen:
                early[node][source_kind] += 1
    out_nodes = {}
    for node, view in sorted(nodes.items()):
        agents = _agents(view.registry)
        counted = {k: agents.get(f"{k}/stopped", 0) for k in ("local", "forwarded")}
        wanted = {k: clients[node][k] for k in counted}
        out_nodes[node] = {
            "clients_failed_connections": wanted,
            "agents_connections_after_stop": counted,
            "agents_connections_after_not_ready": {
                k: agents.get(f"{k}/not_ready", 0) for k in counted},
            "before_stop_seen": {k: early[node][k] for k in counted},
            "unexplained": {k: counted[k] - (wanted[k] - early[node][k]) for k in counted}}
    delays = [d for b in backends for d in b.delays]
    counted = _cuts(view.registry for view in nodes.values())
    by_workload: Counter[str] = Counter()
    cut_by_client: Counter[str] = Counter()
    for (client, workload), n in cuts.items():
        by_workload[workload] += n
        cut_by_client[client] += n
    return {
        "requests": len(requests), "failed": len(failed),
        "requests_by_client": dict(Counter(r.client for r in requests)),
        "failed_by_client": {c: dict(v) for c, v in by_client.items()},
        "requests_by_workload": dict(Counter(r.workload for r in requests)),
        "failed_by_workload": dict(Counter(r.workload for r in failed)),
        "agents_connections_after_stop": sum(
            sum(n["agents_connections_after_stop"].values()) for n in out_nodes.values()),
        "clients_failed_connections": sum(
            sum(n["clients_failed_connections"].values()) for n in out_nodes.values()),
        "unexplained": sum(abs(v) for n in out_nodes.values()
                           for v in n["unexplained"].values()),
        "cut_by_workload": {w: {"clients": by_workload[w], "agents": counted[w]}
                            for w in sorted({*by_workload, *counted})},
        "cut_by_client": dict(sorted(cut_by_client.items())),
        "attempts_reaching_no_pod": unmatched,
        "attempts_reaching_no_pod_detail": no_pod,
        "nodes": out_nodes,
        "ingress_delay_p99_seconds": round(quantile(delays, 0.99), 3) if delays else None,
    }
