"""The Grafana dashboards, as data: `scripts/sync-deploy.py` writes them to dashboards/*.json
(and the copies deploy/ ships as ConfigMaps). Classic dashboard JSON model, schemaVersion 41;
the data source is the `${datasource}` variable. Every query is evaluated against a real
Prometheus that scraped the lab (tests/report/test_prometheus.py)."""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 41
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'node=~"$node"'
STAGE_SEL = f'{SEL}, proxy_mode=~"$proxy_mode", cause=~"$cause"'


def _datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "refresh": 1}


def _query_variable(name: str, label: str, query: str, *, multi: bool = True
                    ) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "definition": query, "query": {"query": query, "refId": f"{name}-values"},
            "refresh": 2, "sort": 1, "multi": multi, "includeAll": multi,
            **({"allValue": ".*"} if multi else {}), "current": {}, "hide": 0}


def _cause_variable() -> dict[str, Any]:
    return {"name": "cause", "label": "Cause", "type": "custom",
            "query": "deletion,not_ready", "multi": True, "includeAll": True,
            "allValue": ".*", "current": {}, "hide": 0,
            "options": [{"text": v, "value": v, "selected": False}
                        for v in ("deletion", "not_ready")]}


def _target(expr: str, legend: str = "", ref: str = "A", fmt: str = "time_series"
            ) -> dict[str, Any]:
    return {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend,
            "format": fmt, "range": True, "instant": False}


def _panel(title: str, description: str, targets: list[dict[str, Any]], *,
           kind: str = "timeseries", unit: str = "s", **options: Any) -> dict[str, Any]:
    return {"type": kind, "title": title, "description": description, "datasource": DS,
            "targets": targets, "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": options}


def _quantiles(metric: str, selector: str, by: str, title: str, description: str,
               quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, Any]:
    prefix = f"{{{{{by}}}}} " if by else ""
    group = f"{by}, le" if by else "le"
    targets = [_target(f"histogram_quantile({q}, sum by ({group}) "
                       f"(rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
                       f"{prefix}p{q * 100:g}", chr(ord("A") + i))
               for i, q in enumerate(quantiles)]
    return _panel(title, description, targets,
                  legend={"displayMode": "table", "placement": "right",
                          "calcs": ["mean", "max"]})


def _heatmap(selector: str, title: str, description: str) -> dict[str, Any]:
    return _panel(title, description, [_target(
        "sum by (le) (increase(endpoint_propagation_duration_seconds_bucket"
        f"{{{selector}}}[$__rate_interval]))", "{{le}}", fmt="heatmap")],
        kind="heatmap", calculate=False, cellGap=1, yAxis={"unit": "s"},
        color={"mode": "scheme", "scheme": "Oranges", "steps": 64})


def _counter(expr: str, legend: str, title: str, description: str) -> dict[str, Any]:
    return _panel(title, description, [_target(expr, legend)], unit="short",
                  drawStyle="bars")


def _stat(expr: str, title: str, description: str, unit: str = "s") -> dict[str, Any]:
    return _panel(title, description, [_target(expr, "", fmt="time_series")], kind="stat",
                  unit=unit, reduceOptions={"calcs": ["lastNotNull"], "values": False},
                  colorMode="value", graphMode="none")


def _layout(panels: list[dict[str, Any]], widths: list[int], height: int = 8
            ) -> list[dict[str, Any]]:
    """Left to right, wrapping at Grafana's 24 columns; stats and text are short."""
    x = y = row_height = 0
    for number, (panel, width) in enumerate(zip(panels, widths, strict=True), start=1):
        panel_height = {"stat": 4, "text": 4, "row": 1, "table": 10}.get(panel["type"], height)
        if x + width > 24:
            x, y, row_height = 0, y + row_height, 0
        panel["id"] = number
        panel["gridPos"] = {"h": panel_height, "w": width, "x": x, "y": y}
        x += width
        row_height = max(row_height, panel_height)
    return panels


def _dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]],
               panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["observer", "kubernetes", "kube-proxy"], "editable": True,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "graphTooltip": 1,
        "refresh": "30s", "time": {"from": "now-6h", "to": "now"}, "timezone": "browser",
        "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "annotations": {"list": []},
        "links": [{"title": "observer dashboards", "type": "dashboards", "tags": ["observer"],
                   "asDropdown": True, "includeVars": True, "keepTime": True}],
        "templating": {"list": [_datasource_variable(), *variables]},
        "panels": panels,
    }


# Each workload's recommendation; below 20 of its deletions, the cluster-wide one (as
# `observer report` falls back).
_RECOMMENDED = (
    "(namespace_workload:endpoint_propagation_prestop_recommendation_seconds"
    " or on (namespace, workload)"
    " (0 * namespace_workload:endpoint_propagation_workload_episodes:increase6h"
    " + on () group_left endpoint_propagation:prestop_recommendation_seconds))")
_CONFIGURED = "max by (namespace, workload) (endpoint_propagation_workload_prestop_seconds)"
_WORKLOAD_COLUMNS = (
    ("recommended preStop", _RECOMMENDED, "s"),
    ("configured preStop", _CONFIGURED, "s"),
    ("deletions (6h)", "namespace_workload:endpoint_propagation_workload_episodes:increase6h",
     "short"),
    ("unsafe terminations (6h)", "sum by (namespace, workload) (increase("
     "endpoint_propagation_workload_unsafe_terminations_total[6h]))", "short"),
    ("failed connections (6h)",
     "namespace_workload:endpoint_propagation_workload_failed_connections:increase6h"
     " or on (namespace, workload)"
     " 0 * namespace_workload:endpoint_propagation_workload_episodes:increase6h", "short"),
    ("waste per pod", f"clamp_min({_CONFIGURED} - on (namespace, workload) {_RECOMMENDED}, 0)",
     "s"),
)


def _workloads_table() -> dict[str, Any]:
    """One row per workload: its recommendation against what its pods had, what failed."""
    targets = [{**_target(expr, "", chr(ord("A") + i), fmt="table"), "range": False,
                "instant": True} for i, (_, expr, _) in enumerate(_WORKLOAD_COLUMNS)]
    rename = {f"Value #{chr(ord('A') + i)}": name
              for i, (name, _, _) in enumerate(_WORKLOAD_COLUMNS)}
    panel = _panel(
        "Workloads: recommended vs configured preStop",
        "Per workload, across the nodes its pods ran on: its own recommendation (its "
        "consumers' p99 last connection or the rules path, + 1 s; the cluster-wide number "
        "below 20 of its deletions), the preStop its last deleted pod had, its deletions, "
        "unsafe terminations and failed connections over 6h, and the preStop time each of "
        "its pods spends beyond what it needs (waste). `observer report` says the same per "
        "workload, with patches.", targets, kind="table", unit="short",
        showHeader=True, sortBy=[{"displayName": "unsafe terminations (6h)", "desc": True}])
    panel["transformations"] = [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True},
                                       "renameByName": rename}}]
    panel["fieldConfig"]["overrides"] = [
        {"matcher": {"id": "byName", "options": name},
         "properties": [{"id": "unit", "value": unit}]}
        for name, _, unit in _WORKLOAD_COLUMNS]
    return panel


def overview() -> dict[str, Any]:
    panels = [
        _stat("endpoint_propagation:prestop_recommendation_seconds", "Recommended preStop",
              "The slower of two paths, + 1 s, rounded up, over 6h: p99 controller + the "
              "slowest node's p99 dataplane (kube-proxy's rules), or the p99 of the last "
              "connection any consumer sent after a deletion (conntrack, Traffic row). "
              "Recording rule; absent below 20 measured deletions. `observer report` "
              "compares it with each workload's configured preStop."),
        _stat("endpoint_propagation:controller_seconds:p99_6h", "p99 controller (6h)",
              "Pod deletion seen to the not-ready EndpointSlice update, cluster-wide."),
        _stat("max(node:endpoint_propagation_dataplane_seconds:p99_6h)",
              "p99 dataplane, slowest node (6h)",
              "Not-ready update to this node's kube-proxy rules no longer choosing the pod."),
        _stat("endpoint_propagation:app_shutdown_seconds:p99_6h",
              "p99 app exit after SIGTERM (6h)",
              "Pod shutdown minus its preStop: what the grace period must cover beyond the "
              "preStop."),
        _stat(f'sum(increase(endpoint_propagation_episodes_total{{outcome="measured", {SEL}}}'
              f"[6h])) / sum(increase(endpoint_propagation_episodes_total{{{SEL}}}[6h]))",
              "Episodes measured in full (6h)",
              "Share of ended episodes with every stage timed. The rest: partial (a stage "
              "not seen, or seen only on a watch's catch-up after a gap), abandoned, or kept "
              "by kube-proxy's fallback (Agent health dashboard). Below 80 % the "
              "recommendation rests on a biased sample: `observer report` warns.",
              unit="percentunit"),
        {"type": "text", "title": "Per workload",
         "description": "Each workload's own preStop: the Per workload row below.",
         "options": {"mode": "markdown", "content":
                     "The slowest consumer belongs to the workload: the **Per workload** row "
                     "below sizes each one by its own. `observer report --prometheus <this "
                     "Prometheus> --patches -` turns the findings into `kubectl patch` "
                     "commands."}},
        _quantiles("endpoint_propagation_duration_seconds", STAGE_SEL, "stage",
                   "Propagation by stage (p50, p90, p99)",
                   "controller: deletion → not-ready update (pod's node); dataplane: update → "
                   "rules dropped (every node); total: both, on the pod's node."),
        _heatmap(f'stage="dataplane", {STAGE_SEL}', "Dataplane stage distribution",
                 "How long each node's kube-proxy took to stop choosing a removed endpoint."),
        _counter(f"sum by (node) (increase(endpoint_propagation_unsafe_terminations_total"
                 f"{{{SEL}}}[$__rate_interval]))", "{{node}}", "Unsafe terminations",
                 "Pods that stopped while this node still routed new connections to them."),
        _quantiles("endpoint_propagation_unsafe_window_seconds", SEL, "",
                   "Unsafe window (p50, p99)",
                   "How long a stopped pod kept being chosen.", (0.5, 0.99)),
        _quantiles("endpoint_propagation_headroom_seconds", SEL, "",
                   "Headroom (p50, p99)",
                   "How long pods kept serving after the dataplane dropped them: preStop "
                   "time that was not needed.", (0.5, 0.99)),
        _counter(f"sum by (stage) (increase(endpoint_propagation_duration_seconds_count"
                 f"{{{STAGE_SEL}}}[$__rate_interval]))", "{{stage}}", "Episodes measured",
                 "Endpoint removals measured, by stage."),
        {"type": "row", "title": "Traffic: what connections did (conntrack)", "collapsed": False,
         "panels": []},
        _counter(f"sum by (node, source) (increase(endpoint_propagation_connections_after_"
                 f'removal_total{{after="stopped", {SEL}}}[$__rate_interval]))',
                 "{{node}} {{source}}", "Connections to stopped pods (failed for clients)",
                 "New connections that reached pods that had already stopped: each failed for "
                 "its client (refused, reset, timed out). local: this node's kube-proxy chose "
                 "the pod; forwarded: sent straight to the pod's address (ingress controllers, "
                 "load balancers, other nodes). Alert: EndpointConnectionsToStoppedPods."),
        _counter(f"sum by (source, after) (increase(endpoint_propagation_connections_after_"
                 f"removal_total{{{SEL}}}[$__rate_interval]))", "{{source}} after {{after}}",
                 "Connections after removal",
                 "New connections to endpoints already out of Ready: after not_ready the pod "
                 "still served them (a consumer not caught up yet), after stopped they failed."),
        _quantiles("endpoint_propagation_last_connection_seconds", SEL, "source",
                   "Last connection after deletion (p50, p99)",
                   "Pod's node: deletion seen → the last new connection from each source. The "
                   "slowest consumer's p99 is what the recommendation must cover; compare with "
                   "the rules' total stage. A low bound: an idle endpoint shows nothing.",
                   (0.5, 0.99)),
        _counter(f"sum by (node) (increase(endpoint_propagation_connections_cut_total{{{SEL}}}"
                 "[$__rate_interval]))", "{{node}}", "Connections cut at pod stop",
                 "Pod's node: TCP connections still open when the pod stopped; their clients' "
                 "next request on them fails. Apps that drain before they exit cut none."),
        {"type": "row", "title": "Per workload: each workload's own preStop", "collapsed": False,
         "panels": []},
        _workloads_table(),
    ]
    return _dashboard(
        "observer-overview", "observer / Endpoint propagation",
        "How long endpoint removal takes to reach every node's kube-proxy, and what it costs.",
        [_query_variable("proxy_mode", "Proxy mode",
                         "label_values(endpoint_propagation_build_info, proxy_mode)"),
         _query_variable("node", "Node", 'label_values(endpoint_propagation_build_info'
                                         '{proxy_mode=~"$proxy_mode"}, node)'),
         _cause_variable()],
        _layout(panels, [4, 4, 4, 4, 4, 4, 12, 12, 12, 12, 12, 12, 24, 12, 12, 12, 12, 24, 24]))


def node() -> dict[str, Any]:
    one = 'node=~"$node"'
    panels = [
        _quantiles("endpoint_propagation_duration_seconds",
                   f'stage="dataplane", {one}, cause=~"$cause"', "proxy_mode",
                   "Dataplane stage on $node (p50, p90, p99)",
                   "Not-ready update received → this node's rules no longer choose the pod."),
        _heatmap(f'stage="dataplane", {one}, cause=~"$cause"', "Dataplane stage on $node",
                 "Distribution of the dataplane stage on this node."),
        _quantiles("endpoint_propagation_duration_seconds", f'stage="controller", {one}',
                   "", "Controller stage for pods on $node (p50, p99)",
                   "Deletion of a pod on this node → its not-ready EndpointSlice update.",
                   (0.5, 0.99)),
        _counter(f"sum(increase(endpoint_propagation_unsafe_terminations_total{{{one}}}"
                 "[$__rate_interval]))", "unsafe", "Unsafe terminations on $node",
                 "Pods stopped while this node still routed to them."),
        _quantiles("endpoint_propagation_headroom_seconds", one, "", "Headroom on $node",
                   "Unneeded preStop time, as seen from this node.", (0.5, 0.99)),
        _counter(f"sum by (reason) (increase(endpoint_propagation_abandoned_total{{{one}}}"
                 "[$__rate_interval]))", "{{reason}}", "Abandoned episodes on $node",
                 "Episodes that ended without a measurement, by reason."),
        _counter(f"sum(increase(endpoint_propagation_fallback_total{{{one}}}"
                 "[$__rate_interval]))", "fallback", "kube-proxy fallback on $node",
                 "Terminating endpoints kept because no Ready one was left (not slowness)."),
        _quantiles("endpoint_propagation_app_shutdown_seconds", one, "",
                   "App exit after SIGTERM, pods on $node",
                   "Pod shutdown minus its preStop.", (0.5, 0.99)),
    ]
    return _dashboard(
        "observer-node", "observer / Node", "One node's dataplane and terminations.",
        [_query_variable("node", "Node", "label_values(endpoint_propagation_build_info, node)",
                         multi=False), _cause_variable()],
        _layout(panels, [12] * 8))


def health() -> dict[str, Any]:
    panels = [
        _counter(f"sum by (node, resource, reason) (increase("
                 f"endpoint_propagation_watch_restarts_total{{{SEL}}}[$__rate_interval]))",
                 "{{node}} {{resource}} {{reason}}", "Watch restarts",
                 "Streams restarted: expired (410, re-list), stalled, closed, connection, "
                 "http_error."),
        _panel("Last event age", "Seconds since the last watch event, bookmark or list.",
               [_target(f"time() - endpoint_propagation_last_event_timestamp_seconds{{{SEL}}}",
                        "{{node}} {{resource}}")]),
        _quantiles("endpoint_propagation_dataplane_scan_duration_seconds", SEL, "node",
                   "Dataplane full read duration (p50, p99)",
                   "One full read of the node's rules: dump plus parse.", (0.5, 0.99)),
        _counter(f"sum by (node, reason) (increase(endpoint_propagation_dataplane_errors_total"
                 f"{{{SEL}}}[$__rate_interval]))", "{{node}} {{reason}}", "Dataplane errors",
                 "Failed reads of the node's rules, by reason."),
        _panel("Episodes in flight", "Started and not yet finished or abandoned.",
               [_target(f"endpoint_propagation_in_flight{{{SEL}}}", "{{node}}")],
               unit="short"),
        _counter(f"sum by (reason) (increase(endpoint_propagation_abandoned_total{{{SEL}}}"
                 "[$__rate_interval]))", "{{reason}}", "Abandoned episodes",
                 "ready_again, watch_gap, ttl, in_flight_cap."),
        _counter(f"sum by (outcome) (increase(endpoint_propagation_episodes_total{{{SEL}}}"
                 "[$__rate_interval]))", "{{outcome}}", "Episodes by outcome",
                 "Every ended episode once: measured, partial, abandoned, fallback."),
        _counter(f"sum by (stage, reason) (increase("
                 f"endpoint_propagation_stage_unmeasured_total{{{SEL}}}[$__rate_interval]))",
                 "{{stage}} {{reason}}", "Stages not timed",
                 "Stages of partial episodes: not_seen (a reading never came), uncertain (a "
                 "watch reading came on catch-up after a gap wider than "
                 "--max-stage-uncertainty), untracked (never selected here)."),
        _counter(f"sum by (resource, reason) (increase("
                 f"endpoint_propagation_invalid_input_total{{{SEL}}}[$__rate_interval]))",
                 "{{resource}} {{reason}}", "Invalid input",
                 "Objects the agent could not (fully) use."),
        _counter(f"sum by (node) (increase(endpoint_propagation_dataplane_resync_drift_total"
                 f"{{{SEL}}}[$__rate_interval]))", "{{node}}", "Resync drift",
                 "Endpoints a periodic full read found different from the event-kept state "
                 "(should stay 0)."),
        _counter(f"sum by (resource) (rate(endpoint_propagation_watch_events_total{{{SEL}}}"
                 "[$__rate_interval]))", "{{resource}}", "Watch events per second",
                 "ADDED, MODIFIED, DELETED events received."),
        _counter(f"sum by (node, reason) (increase(endpoint_propagation_traffic_errors_total"
                 f"{{{SEL}}}[$__rate_interval]))", "{{node}} {{reason}}", "Traffic errors",
                 "Connections not followed, or not all: conntrack_missing, events_disabled, "
                 "permission (at start: --traffic auto runs on without), events_lost (counts "
                 "are low bounds), garbage, failed."),
        _panel("Agents", "Version and kube-proxy mode of every agent.",
               [_target(f"endpoint_propagation_build_info{{{SEL}}}", "", fmt="table")],
               kind="table", unit="short"),
    ]
    return _dashboard(
        "observer-health", "observer / Agent health",
        "Is every agent watching, reading its dataplane, and keeping up?",
        [_query_variable("node", "Node", "label_values(endpoint_propagation_build_info, node)")],
        _layout(panels, [12] * 13))


DASHBOARDS = {"observer-overview.json": overview, "observer-node.json": node,
              "observer-health.json": health}
