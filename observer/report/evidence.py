"""The measurements a recommendation rests on, read either from the agents' own ``/metrics``
(merged here) or from Prometheus (merged by PromQL ``sum``).

What is read (metric names from docs/metrics.md):

- ``controller``: ``endpoint_propagation_duration_seconds{stage="controller"}``, cluster-wide
  (each deletion is measured once, on the pod's node);
- ``dataplane``: ``…{stage="dataplane"}`` per node (every node measures every episode);
- ``app_shutdown``: ``endpoint_propagation_app_shutdown_seconds``, cluster-wide;
- ``outcomes``: ``endpoint_propagation_episodes_total`` by outcome, every node: how many of
  the episodes that ended were measured in full — the sample the quantiles come from. When
  that share is low the report says so (``LOW_MEASURED_SHARE``).
- ``last_connection``: ``endpoint_propagation_last_connection_seconds`` by source, cluster-wide
  (pod's node: deletion seen → the last new connection from any consumer, kube-proxy's or not);
- ``failed_connections``: ``endpoint_propagation_connections_after_removal_total
  {after="stopped"}`` and ``cut``: ``endpoint_propagation_connections_cut_total``, summed:
  connections that reached pods that had stopped, or were open when they did — the failures
  clients saw.
- ``workloads``: the ``endpoint_propagation_workload_*`` families by (``namespace``,
  ``workload``), summed over nodes (each deletion counts on its pod's node only): each
  workload's episodes, unsafe terminations, last connection by source, connections after
  removal by what they came after, connections cut, and its app's exit after SIGTERM.

Both causes (deletion, readiness lost) count: propagation does not depend on why an endpoint
stopped being ready. Agents' counters run from each agent's start; Prometheus reads the
increase over ``--window``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from observer.report.histograms import Histogram

DURATION = "endpoint_propagation_duration_seconds"
APP_SHUTDOWN = "endpoint_propagation_app_shutdown_seconds"
EPISODES = "endpoint_propagation_episodes"
LAST_CONNECTION = "endpoint_propagation_last_connection_seconds"
AFTER_REMOVAL = "endpoint_propagation_connections_after_removal"
CUT = "endpoint_propagation_connections_cut"
_W = "endpoint_propagation_workload_"
W_EPISODES, W_UNSAFE = f"{_W}episodes", f"{_W}unsafe_terminations"
W_LAST_CONNECTION, W_APP_SHUTDOWN = f"{_W}last_connection_seconds", f"{_W}app_shutdown_seconds"
W_AFTER_REMOVAL, W_CUT = f"{_W}connections_after_removal", f"{_W}connections_cut"
WORKLOAD_FAMILIES = (W_EPISODES, W_UNSAFE, W_LAST_CONNECTION, W_APP_SHUTDOWN, W_AFTER_REMOVAL,
                     W_CUT)
# Below this share of ended episodes measured in full, the report warns: the quantiles then come
# from a sample that may not be like the rest (e.g. deletions during API server trouble).
LOW_MEASURED_SHARE = 0.8
_TIMEOUT = aiohttp.ClientTimeout(total=30)


class EvidenceError(Exception):
    """The measurements could not be read at all (nothing answered, or answered nonsense)."""


@dataclass
class WorkloadEvidence:
    """One workload's own measurements, from its pods' nodes."""

    episodes: float = 0.0  # its deletions whose episode ended
    unsafe: float = 0.0  # of those, unsafe terminations
    last_connection: dict[str, Histogram] = field(default_factory=dict)  # by source
    app_shutdown: Histogram = field(default_factory=Histogram)
    after: dict[str, float] = field(default_factory=dict)  # connections after removal, by after
    cut: float = 0.0  # connections open when its pods stopped

    def add(self, sample: str, labels: Mapping[str, str], value: float) -> None:
        """One sample of a ``endpoint_propagation_workload_*`` family (its full sample name:
        ``…_total``, ``…_bucket``); others (``_created``, ``_sum``, ``_count``) are ignored."""
        if math.isnan(value):
            return
        if sample.endswith("_bucket"):
            if "le" not in labels:
                return
            le = _le(labels["le"])
            if sample == f"{W_LAST_CONNECTION}_bucket":
                self.last_connection.setdefault(labels.get("source", ""), Histogram()).add(
                    le, value)
            elif sample == f"{W_APP_SHUTDOWN}_bucket":
                self.app_shutdown.add(le, value)
        elif sample == f"{W_EPISODES}_total":
            self.episodes += value
        elif sample == f"{W_UNSAFE}_total":
            self.unsafe += value
        elif sample == f"{W_CUT}_total":
            self.cut += value
        elif sample == f"{W_AFTER_REMOVAL}_total":
            after = labels.get("after", "")
            self.after[after] = self.after.get(after, 0.0) + value

    @property
    def failed(self) -> float:
        """New connections that reached its pods after they had stopped."""
        return self.after.get("stopped", 0.0)


@dataclass
class Evidence:
    controller: Histogram = field(default_factory=Histogram)
    dataplane: dict[str, Histogram] = field(default_factory=dict)  # by node
    app_shutdown: Histogram = field(default_factory=Histogram)
    outcomes: dict[str, float] = field(default_factory=dict)  # ended episodes by outcome
    last_connection: dict[str, Histogram] = field(default_factory=dict)  # by source
    failed_connections: float = 0.0  # new connections after the pod stopped
    cut_connections: float = 0.0
    workloads: dict[tuple[str, str], WorkloadEvidence] = field(default_factory=dict)
    source: str = ""
    warnings: list[str] = field(default_factory=list)  # partial data, said out loud

    @property
    def measured_share(self) -> float | None:
        """Of the episodes that ended, the share measured in full (None: none ended)."""
        ended = sum(self.outcomes.values())
        return self.outcomes.get("measured", 0.0) / ended if ended else None

    def add_workload_sample(self, sample: str, labels: Mapping[str, str],
                            value: float) -> None:
        namespace, workload = labels.get("namespace"), labels.get("workload")
        if namespace is not None and workload is not None:
            self.workloads.setdefault((namespace, workload), WorkloadEvidence()).add(
                sample, labels, value)

    def check_measured_share(self) -> None:
        """Warn, with the counts, when too few episodes were measured in full."""
        share = self.measured_share
        if share is not None and share < LOW_MEASURED_SHARE:
            others = ", ".join(f"{outcome} {round(n)}" for outcome, n in
                               sorted(self.outcomes.items()) if outcome != "measured" and n)
            self.warnings.append(
                f"only {share:.0%} of the {round(sum(self.outcomes.values()))} episodes that "
                f"ended were measured in full ({others}): the quantiles rest on the rest; "
                "see stage_unmeasured_total and abandoned_total (Agent health dashboard)")


def _le(value: str) -> float:
    return math.inf if value == "+Inf" else float(value)


def parse_agent_metrics(text: str, node: str, into: Evidence) -> None:
    """Add one agent's exposition to ``into``; its dataplane stage is node ``node``'s."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as error:
        raise EvidenceError(f"not Prometheus text exposition: {error}") from None
    for family in families:
        if family.name in WORKLOAD_FAMILIES:
            for sample in family.samples:
                into.add_workload_sample(sample.name, sample.labels, sample.value)
            continue
        if family.name == EPISODES:
            for sample in family.samples:
                if sample.name == f"{EPISODES}_total" and "outcome" in sample.labels:
                    outcome = sample.labels["outcome"]
                    into.outcomes[outcome] = into.outcomes.get(outcome, 0.0) + sample.value
            continue
        if family.name in (AFTER_REMOVAL, CUT):
            for sample in family.samples:
                if sample.name == f"{AFTER_REMOVAL}_total" and sample.labels.get(
                        "after") == "stopped":
                    into.failed_connections += sample.value
                elif sample.name == f"{CUT}_total":
                    into.cut_connections += sample.value
            continue
        if family.name not in (DURATION, APP_SHUTDOWN, LAST_CONNECTION):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_bucket") or "le" not in sample.labels:
                continue
            le = _le(sample.labels["le"])
            if family.name == APP_SHUTDOWN:
                into.app_shutdown.add(le, sample.value)
            elif family.name == LAST_CONNECTION:
                source = sample.labels.get("source", "")
                into.last_connection.setdefault(source, Histogram()).add(le, sample.value)
            elif sample.labels.get("stage") == "controller":
                into.controller.add(le, sample.value)
            elif sample.labels.get("stage") == "dataplane":
                into.dataplane.setdefault(node, Histogram()).add(le, sample.value)


async def from_agents(urls: Sequence[str], session: aiohttp.ClientSession) -> Evidence:
    """Scrape every agent; those that fail are warned about, the rest still count. Each
    agent is a node, named by its address (what ``--agent`` was given)."""
    evidence = Evidence(source=f"{len(urls)} agent(s), counters since each agent started")
    answered = 0
    for url in urls:
        node = urlsplit(url).netloc or url
        target = url.rstrip("/") + "/metrics"
        try:
            async with session.get(target, timeout=_TIMEOUT) as response:
                if response.status != 200:
                    raise EvidenceError(f"HTTP {response.status}")
                text = await response.text()
            parse_agent_metrics(text, node, evidence)
        except (aiohttp.ClientError, TimeoutError, EvidenceError, UnicodeDecodeError) as error:
            evidence.warnings.append(f"agent {url}: {_describe(error)}")
            continue
        answered += 1
    if not answered:
        raise EvidenceError("no agent answered: " + "; ".join(evidence.warnings))
    if evidence.warnings:
        evidence.source += f" ({answered} of {len(urls)} answered)"
    evidence.check_measured_share()
    return evidence


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


class Prometheus:
    """The instant-query HTTP API (``GET /api/v1/query``), documented at
    https://prometheus.io/docs/prometheus/latest/querying/api/."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.warnings: list[str] = []

    async def query(self, promql: str) -> list[tuple[Mapping[str, str], float]]:
        try:
            async with self.session.get(f"{self.url}/api/v1/query", params={"query": promql},
                                        timeout=_TIMEOUT) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    raise EvidenceError(f"Prometheus at {self.url} answered HTTP "
                                        f"{response.status} without JSON") from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise EvidenceError(f"cannot reach Prometheus at {self.url}: "
                                f"{_describe(error)}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error") if isinstance(body, dict) else None
            raise EvidenceError(f"Prometheus at {self.url} refused {promql!r}: "
                                f"{detail or 'unexpected answer'}")
        self.warnings += [str(w) for w in body.get("warnings") or []]
        data = body.get("data") or {}
        if data.get("resultType") != "vector":
            raise EvidenceError(f"Prometheus answered a {data.get('resultType')}, not a vector")
        try:
            return [(item["metric"], float(item["value"][1])) for item in data["result"]]
        except (KeyError, IndexError, TypeError, ValueError):
            raise EvidenceError("Prometheus answered a malformed vector") from None


def _buckets(rows: list[tuple[Mapping[str, str], float]], by: str | None
             ) -> dict[str, Histogram]:
    out: dict[str, Histogram] = {}
    for labels, value in rows:
        if "le" not in labels or math.isnan(value):
            continue
        key = labels.get(by, "") if by else ""
        out.setdefault(key, Histogram()).add(_le(labels["le"]), value)
    return out


async def from_prometheus(url: str, window: str, node_label: str,
                          session: aiohttp.ClientSession) -> Evidence:
    prometheus = Prometheus(url, session)

    def increase(metric: str, selector: str, by: str) -> str:
        return f"sum by ({by}) (increase({metric}_bucket{{{selector}}}[{window}]))"

    controller = await prometheus.query(increase(DURATION, 'stage="controller"', "le"))
    dataplane = await prometheus.query(
        increase(DURATION, 'stage="dataplane"', f"{node_label}, le"))
    app = await prometheus.query(increase(APP_SHUTDOWN, "", "le"))
    outcomes = await prometheus.query(
        f"sum by (outcome) (increase({EPISODES}_total[{window}]))")
    last = await prometheus.query(increase(LAST_CONNECTION, "", "source, le"))

    async def total(metric: str, selector: str = "") -> float:
        rows = await prometheus.query(f"sum(increase({metric}_total{{{selector}}}[{window}]))")
        return sum(value for _, value in rows if not math.isnan(value))

    workloads: list[tuple[str, list[tuple[Mapping[str, str], float]]]] = []
    for family, by in ((W_EPISODES, ""), (W_UNSAFE, ""), (W_CUT, ""),
                       (W_AFTER_REMOVAL, ", after")):
        workloads.append((f"{family}_total", await prometheus.query(
            f"sum by (namespace, workload{by}) (increase({family}_total[{window}]))")))
    for family, by in ((W_LAST_CONNECTION, ", source"), (W_APP_SHUTDOWN, "")):
        workloads.append((f"{family}_bucket", await prometheus.query(
            increase(family, "", f"namespace, workload{by}, le"))))

    evidence = Evidence(
        controller=_buckets(controller, None).get("", Histogram()),
        dataplane={node or f"(no {node_label} label)": h
                   for node, h in _buckets(dataplane, node_label).items()},
        app_shutdown=_buckets(app, None).get("", Histogram()),
        outcomes={labels.get("outcome", ""): value for labels, value in outcomes
                  if not math.isnan(value)},
        last_connection=_buckets(last, "source"),
        failed_connections=await total(AFTER_REMOVAL, 'after="stopped"'),
        cut_connections=await total(CUT),
        source=f"Prometheus {prometheus.url}, increase over {window}",
        warnings=[f"Prometheus: {w}" for w in prometheus.warnings])
    for sample, rows in workloads:
        for labels, value in rows:
            evidence.add_workload_sample(sample, labels, value)
    evidence.check_measured_share()
    return evidence
