"""``observer report``: read the evidence, recommend a preStop, judge every workload.

Exit codes (docs/report.md): 0 report written; 2 bad flags; 3 not enough data to recommend;
4 the measurements could not be read (Prometheus or every agent unreachable or nonsense);
5 the workloads could not be read (Kubernetes API unreachable, access denied).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from observer.kube.connect import load_api_config
from observer.report.advice import NotEnoughData, Recommendation, recommend
from observer.report.evidence import Evidence, EvidenceError, from_agents, from_prometheus
from observer.report.options import ReportOptions
from observer.report.patches import has_sleep_action, plan, script, write
from observer.report.per_workload import (
    CLUSTER_WIDE,
    CONNECTIONS,
    DRAIN,
    RULES,
    WORKLOAD_FINDINGS,
    WorkloadAdvice,
    advise_workloads,
    folded_warning,
)
from observer.report.workloads import WorkloadError, read_workloads

EXIT_NOT_ENOUGH_DATA = 3
EXIT_NO_EVIDENCE = 4
EXIT_NO_WORKLOADS = 5


async def _evidence(options: ReportOptions) -> Evidence:
    async with aiohttp.ClientSession() as session:
        if options.prometheus:
            return await from_prometheus(options.prometheus, options.window, options.node_label,
                                         session)
        return await from_agents(options.agents, session)


async def _workloads(options: ReportOptions, rec: Recommendation,
                     evidence: Evidence) -> tuple[list[WorkloadAdvice], str | None]:
    """Each workload's advice; and, with --patches, why the cluster's preStop sleep action
    cannot be used (None: it can, or no patches asked for)."""
    try:
        configuration = await load_api_config(options.kubeconfig)
    except (config.ConfigException, OSError) as error:
        raise WorkloadError(f"cannot load a Kubernetes client configuration: {error}"
                            ) from None
    no_sleep_action = None
    async with client.ApiClient(configuration) as api:
        found = await read_workloads(api, options.namespace)
        if options.patches is not None:
            no_sleep_action = await _no_sleep_action(api)
    return (advise_workloads(found, rec, evidence.workloads, options.min_episodes),
            no_sleep_action)


async def _no_sleep_action(api: client.ApiClient) -> str | None:
    """Why the preStop sleep action cannot be used, read from ``/version`` (None: it can)."""
    try:
        version = await client.VersionApi(api).get_code()
        found = has_sleep_action(str(version.major), str(version.minor))
        served = f"v{version.major}.{version.minor}"
    except ApiException as error:
        found, served = None, f"unknown (/version answered HTTP {error.status})"
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
        found, served = None, f"unknown ({error or type(error).__name__})"
    if found:
        return None
    return (f"the cluster's version is {served}: patches use an exec hook running `sleep`, "
            "which needs a sleep binary in the image (distroless images have none); the "
            "preStop sleep action needs Kubernetes 1.30 or later")


def _patches(options: ReportOptions, advice: Sequence[WorkloadAdvice],
             no_sleep_action: str | None, out: TextIO, err: TextIO) -> None:
    if no_sleep_action is not None:
        print(f"observer report: warning: {no_sleep_action}", file=err)
    planned = [p for a in advice if (p := plan(a, sleep_action=no_sleep_action is None,
                                                margin=options.margin))]
    if options.patches == "-":
        out.write(script(planned))
        return
    assert options.patches is not None
    written = write(planned, Path(options.patches))
    print(f"observer report: {len(written)} patch(es) written to {options.patches}", file=err)
    for patch in planned:
        for note in patch.notes:
            print(f"observer report: {patch.advice.namespace} {patch.advice.workload}: {note}",
                  file=err)


async def report(options: ReportOptions, out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr) -> int:
    try:
        evidence = await _evidence(options)
    except EvidenceError as error:
        print(f"observer report: cannot read the measurements: {error}", file=err)
        return EXIT_NO_EVIDENCE
    if (folded := folded_warning(evidence.workloads)) is not None:
        evidence.warnings.append(folded)
    for warning in evidence.warnings:
        print(f"observer report: warning: {warning}", file=err)
    try:
        rec = recommend(evidence, quantile=options.quantile, margin=options.margin,
                        min_episodes=options.min_episodes)
    except NotEnoughData as error:
        print(f"observer report: not recommending anything: {error}", file=err)
        return EXIT_NOT_ENOUGH_DATA
    try:
        advice, no_sleep_action = await _workloads(options, rec, evidence)
    except WorkloadError as error:
        print(f"observer report: cannot read the workloads: {error}", file=err)
        return EXIT_NO_WORKLOADS
    if options.patches is not None:
        _patches(options, advice, no_sleep_action, out, err)
        if options.patches == "-":
            return 0
    if options.as_json:
        json.dump(to_json(rec, advice, evidence), out, indent=2)
        out.write("\n")
    else:
        out.write(to_text(rec, advice, evidence, colour=_colour(out)))
    return 0


def to_json(rec: Recommendation, advice: Sequence[WorkloadAdvice],
            evidence: Evidence) -> dict[str, Any]:
    return {
        "recommendation": {
            "prestop_seconds": rec.prestop_seconds, "quantile": rec.quantile,
            "episodes": rec.episodes, "basis": rec.basis, "margin_seconds": rec.margin,
            "controller_seconds": rec.controller, "dataplane_seconds": rec.dataplane,
            "slowest_node": rec.slowest_node, "dataplane_seconds_by_node": rec.nodes,
            "app_shutdown_seconds": rec.app_shutdown,
            "app_shutdown_pods": round(rec.app_shutdown_pods),
            "set_by": rec.set_by, "rules_only_prestop_seconds": rec.rules_only_prestop_seconds,
            "last_connection_seconds_by_source": rec.last_connection,
            "failed_connections": round(rec.failed_connections),
            "cut_connections": round(rec.cut_connections),
            "episodes_by_outcome": {k: round(v) for k, v in sorted(evidence.outcomes.items())},
            "measured_share": evidence.measured_share,
            "source": evidence.source, "warnings": evidence.warnings,
        },
        "workloads": [a.to_dict() for a in advice],
    }


def _colour(out: TextIO) -> bool:
    return out.isatty() and "NO_COLOR" not in os.environ


_PAINT = {"at-risk": "31", "no-prestop": "31", "grace-too-short": "31", "drain": "33",
          "unknown": "33", "over-provisioned": "33", "ok": "32"}


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:g}s"


def summary(rec: Recommendation, advice: Sequence[WorkloadAdvice]) -> str:
    flagged = [a for a in advice if a.findings]
    counts: dict[str, int] = {}
    for item in flagged:
        for finding in item.findings:
            counts[finding] = counts.get(finding, 0) + 1
    detail = ", ".join(f"{counts[f]} {f}" for f in WORKLOAD_FINDINGS if f in counts)
    set_by = {how: sum(a.sizing.set_by == how for a in advice)
              for how in (CONNECTIONS, RULES, CLUSTER_WIDE)}
    return (f"preStop of {rec.prestop_seconds} s recommended cluster-wide from {rec.episodes} "
            f"episodes; {len(flagged)} of {len(advice)} workloads need attention"
            + (f" ({detail})" if detail else "")
            + f"\n  per workload: {set_by[CONNECTIONS]} sized by their own consumers' "
            f"connections, {set_by[RULES]} by kube-proxy's rules, "
            f"{set_by[CLUSTER_WIDE]} on the cluster-wide number (fewer deletions measured than "
            "--min-episodes)")


def to_text(rec: Recommendation, advice: Sequence[WorkloadAdvice], evidence: Evidence, *,
            colour: bool = False) -> str:
    lines = [summary(rec, advice), f"  basis: {rec.basis}", f"  source: {evidence.source}"]
    if (share := evidence.measured_share) is not None:
        counts = ", ".join(f"{outcome} {round(n)}" for outcome, n in
                           sorted(evidence.outcomes.items()) if n)
        lines.append(f"  episodes: {share:.0%} measured in full ({counts})")
    if rec.app_shutdown is not None:
        lines.append(f"  apps exit p{rec.quantile * 100:g} {rec.app_shutdown:.2f} s after "
                     f"SIGTERM ({round(rec.app_shutdown_pods)} pods): grace periods are "
                     "checked against preStop + that + margin")
    else:
        lines.append("  no app shutdown measured yet: grace periods not checked")
    if rec.set_by == "connections":
        lines.append(f"  set by the connections consumers still sent: kube-proxy's rules alone "
                     f"would have said {rec.rules_only_prestop_seconds} s")
    if rec.failed_connections or rec.cut_connections:
        lines.append(f"  failures clients saw: {round(rec.failed_connections)} new connections "
                     f"reached pods that had stopped, {round(rec.cut_connections)} open ones "
                     "were cut")
    rows = [("NAMESPACE", "WORKLOAD", "CONTAINER", "PRESTOP", "GRACE", "RECOMMENDED", "SET-BY",
             "EPISODES", "FINDINGS")]
    for a in advice:
        for c in a.containers:
            w = c.workload
            prestop = "none" if w.prestop.kind == "none" else (
                f"{w.prestop.kind} {_seconds(w.prestop.seconds)}")
            findings = [f for f in a.findings if f in c.findings or f == DRAIN]
            rows.append((a.namespace, a.workload, w.container, prestop,
                         _seconds(w.grace_seconds), _seconds(c.suggested_prestop_seconds),
                         a.sizing.set_by, str(a.sizing.episodes), ",".join(findings) or "ok"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        if colour and index > 0:
            code = _PAINT[row[8].split(",")[0]]
            cells[8] = f"\033[{code}m{cells[8]}\033[0m"
        lines.append("  ".join(cells).rstrip())
    if len(rows) == 1:
        lines.append("(no workloads with serving containers found)")
    drain = [a for a in advice if a.evidence.cut]
    if drain:
        lines.append("")
        lines.append("drain these: their pods' termination closed connections under their "
                     "clients (keep-alive or streaming); no preStop helps them — close them "
                     "gracefully after SIGTERM (Connection: close, GOAWAY), within the grace "
                     "period, and let the clients reconnect:")
        lines += [f"  {a.namespace} {a.workload}: {round(a.evidence.cut)} connections cut"
                  for a in drain]
    return "\n".join(lines) + "\n"
