"""The lab's report for people: an aligned text summary and an SVG timeline of a few episodes."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from observer.lab.results import STAGES, Pair


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_text(result: dict[str, Any]) -> str:
    lab = result["lab"]
    lines = [f"observer lab: {lab['nodes']} nodes, {lab['deletions']} deletions, dataplane "
             f"{lab['dataplane']}, {lab['elapsed_seconds']:.1f} s"]
    if lab.get("note"):
        lines.append(f"note: {lab['note']}")
    lines.append("")
    header = ("stage", "measured p50", "p90", "p99", "max", "truth p50", "truth p99",
              "|error| p50", "|error| p99", "n")
    rows = [header]
    for stage in STAGES:
        m = result["measured"]["stages"][stage]
        t = result["truth"]["stages"][stage]
        e = result["errors"][stage]
        rows.append((stage, _seconds(m["p50"]), _seconds(m["p90"]), _seconds(m["p99"]),
                     _seconds(m["max"]), _seconds(t["p50"]), _seconds(t["p99"]),
                     _seconds(e["p50_abs_error"]), _seconds(e["p99_abs_error"]),
                     str(m["count"])))
    lines += _table(rows, indent="")
    lines.append("(seconds; measured by the agents, truth recorded by the emulated components)")
    unsafe = result["unsafe"]
    lines.append("")
    lines.append(f"unsafe terminations: {unsafe['true']} true, {unsafe['detected']} detected "
                 f"({unsafe['false_positive']} false positive, {unsafe['missed']} missed; "
                 f"{unsafe['undecidable']} undecidable: stopped while the rules were written, or "
                 "within the agent's stated precision)")
    for view, label in (("on_pods_node", "on the pod's node"),
                        ("on_other_nodes", "on other nodes")):
        v = unsafe[view]
        lines.append(f"  {label}: {v['true']} true, {v['detected']} detected "
                     f"({v['false_positive']} false positive, {v['missed']} missed)")
    abandoned = result["measured"]["abandoned"]
    lines.append("abandoned episodes: " + (", ".join(f"{k} {v}" for k, v in
                                                    sorted(abandoned.items())) or "none"))
    if result.get("traffic"):
        lines += ["", *_traffic_lines(result["traffic"])]
    rec = result["recommendation"]
    if rec["prestop_seconds"] is None:
        lines.append(f"recommendation: none — {rec['basis']}")
    else:
        path = {"ingress": "the ingress' last connections",
                "kube-proxy": "kube-proxy's rules"}[rec["set_by"]]
        lines.append(f"recommendation: preStop sleep of {rec['prestop_seconds']} s, set by "
                     f"{path}; kube-proxy's rules alone: {rec['rules_only_prestop_seconds']} s "
                     f"({rec['basis']})")
    if result.get("timeline"):
        lines.append(f"timeline: {result['timeline']}")
    return "\n".join(lines)


def _table(rows: Sequence[tuple[str, ...]], indent: str = "  ") -> list[str]:
    """Aligned columns: the first to the left, the others to the right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.rjust(w) if i else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
            for row in rows]


def _traffic_lines(traffic: dict[str, Any]) -> list[str]:
    lines = [f"requests (real clients; their outcomes are the truth): {traffic['requests']} "
             f"sent, {traffic['failed']} failed"]
    rows: list[tuple[str, ...]] = [("client", "requests", "failed", "refused", "reset",
                                    "timeout")]
    for client, sent in sorted(traffic["requests_by_client"].items()):
        failed = traffic["failed_by_client"].get(client, {})
        rows.append((client, str(sent), str(sum(failed.values())),
                     *(str(failed.get(k, 0)) for k in ("refused", "reset", "timeout"))))
    lines += _table(rows)
    by_workload = traffic["failed_by_workload"]
    lines.append("  failed by workload: " + (", ".join(f"{w} {n}" for w, n in
                                                       sorted(by_workload.items())) or "none"))
    lines.append("connections the pods cut under their clients, by workload: what the clients "
                 "found / what the agents counted (conntrack): " + (", ".join(
                     f"{w} {n['clients']} / {n['agents']}"
                     for w, n in traffic["cut_by_workload"].items()) or "none"))
    lines.append("connections that reached stopped pods, per node: the clients' failed "
                 "connection attempts through the node / what its agent counted (conntrack)")
    rows = [("node", "local", "forwarded", "differences")]
    for node, n in sorted(traffic["nodes"].items()):
        c, a = n["clients_failed_connections"], n["agents_connections_after_stop"]
        early, unexplained = n["before_stop_seen"], n["unexplained"]
        notes = [f"{early[k]} {k} before the stop was seen" for k in early
                 if early[k]] + [f"{unexplained[k]:+d} {k} UNEXPLAINED" for k in unexplained
                                 if unexplained[k]]
        rows.append((node, f"{c['local']} / {a['local']}",
                     f"{c['forwarded']} / {a['forwarded']}", "; ".join(notes) or "exact"))
    lines += _table(rows)
    if any(n["before_stop_seen"][k] for n in traffic["nodes"].values()
           for k in n["before_stop_seen"]):
        lines.append("  (before the stop was seen: an attempt that failed before the agent "
                     "learned from the kubelet that the pod had stopped; it counts those "
                     "after=not_ready)")
    if traffic.get("ingress_delay_p99_seconds") is not None:
        lines.append("the ingress followed the EndpointSlices "
                     f"{traffic['ingress_delay_p99_seconds']} s late (p99)")
    return lines


def render_verify(results: list[dict[str, Any]]) -> str:
    """Both runs of ``--verify`` per workload: what each one's own recommendation changed, and
    what one cluster-wide preStop would have cost instead."""
    first, second = results
    lab = first["lab"]

    def failed(result: dict[str, Any], client: str | None = None) -> str:
        t = result.get("traffic")
        if not t:
            return "-"
        if client is None:
            return f"{t['failed']} of {t['requests']}"
        return str(sum(t["failed_by_client"].get(client, {}).values()))

    def seconds(value: float) -> str:
        return f"{value:g} s" if value else "none"

    rows = [("workload", "consumers", "run 1: preStop, failed", "recommended (set by)",
             "run 2: preStop, failed", "preStop spent 1 → 2", "cut 1, 2")]
    for name, one in first["workloads"].items():
        two = second["workloads"][name]
        rec = one["recommendation"]
        rows.append((name, ",".join(one["consumers"]),
                     f"{seconds(one['prestop_seconds'])}, {one['failed']} of {one['requests']}",
                     f"{rec['prestop_seconds']} s ({rec['set_by']})" if rec else "-",
                     f"{seconds(two['prestop_seconds'])}, {two['failed']} of {two['requests']}",
                     f"{one['prestop_seconds_spent']:g} → {two['prestop_seconds_spent']:g} s",
                     f"{one['cut']['clients']}, {two['cut']['clients']}"))
    wide = first["cluster_wide"]
    spent = sum(w["prestop_seconds_spent"] for w in second["workloads"].values())
    lines = [f"observer lab --verify: {lab['nodes']} nodes, {lab['deletions']} deletions per "
             f"run, dataplane {lab['dataplane']}, ingress delay {lab['ingress_delay']} s "
             f"(fronting {','.join(lab['ingress_workloads'])})", "", *_table(rows), "",
             f"failed requests: run 1 {failed(first)}, run 2 {failed(second)} "
             + "(" + ", ".join(f"{c} {failed(first, c)} → {failed(second, c)}"
                               for c in ("service", "keepalive", "ingress")) + ")",
             f"preStop seconds spent in run 2, each workload on its own: {spent:g} s; with the "
             f"one cluster-wide recommendation ({wide['prestop_seconds']} s, set by "
             f"{wide['set_by']}) on every deletion: {wide['prestop_seconds_spent']:g} s"]
    drain = [name for name, one in first["workloads"].items() if one["recommendation"]
             and "drain" in one["recommendation"]["findings"]]
    if drain:
        counted = ", ".join(f"{name} {one['cut']['agents']}, {two['cut']['agents']}"
                            for (name, one), two in zip(first["workloads"].items(),
                                                        second["workloads"].values(),
                                                        strict=True))
        lines.append(f"connections cut when their pods stopped (cut: as the clients found them; "
                     f"the agents counted {counted}): no preStop helps them, the report says "
                     f"to drain them: {', '.join(drain)}")
    traffic = second.get("traffic")
    if traffic is None:
        lines.append("\n(no real traffic: the in-memory dataplane has no pods to send to)")
    elif traffic["failed"] == 0:
        lines.append("\nwith each workload's own preStop, no client saw a single failed "
                     "request.")
    else:
        lines.append(f"\nstill {traffic['failed']} failed requests with the recommendations "
                     "applied: see the second run's traffic below.")
        lines += ["", *_traffic_lines(traffic)]
    return "\n".join(lines)


def render_svg(pairs: list[Pair], *, limit: int = 12,
               workloads: dict[str, dict[str, Any]] | None = None) -> str:
    """Horizontal bars per episode on the pod's node: deleted -> not_ready -> dataplane, and
    the moment the pod stopped; unsafe ones in red. With ``workloads`` (``--verify``), a line
    per workload below: the preStop it ran with and what set it, its failed requests, the
    connections its pods cut, the preStop seconds its deletions spent."""
    chosen = [p for p in pairs if p.node == p.true.node and p.measured.deleted is not None
              and p.measured.dataplane is not None][:limit]
    width, left, row, scale = 900, 260, 30, 120.0
    height = 85 + row * len(chosen) + (30 + 18 * len(workloads) if workloads else 0)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             '<text x="10" y="20" font-size="14">Endpoint removals on the pod\'s node '
             '(seconds after the deletion was seen)</text>',
             '<text x="10" y="40" fill="#555">blue: controller, orange: dataplane, '
             'black tick: pod stopped; red outline: unsafe</text>']
    for i, p in enumerate(chosen):
        m = p.measured
        assert m.deleted is not None
        assert m.dataplane is not None
        zero = m.deleted.mono
        y = 55 + i * row

        def x(t: float, zero: float = zero) -> float:
            return left + max(0.0, t - zero) * scale

        parts.append(f'<text x="10" y="{y + 14}">{escape(p.true.pod)} ({escape(p.node)})'
                     f'</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{x(m.not_ready.mono) - left:.1f}" '
                     f'height="18" fill="#4c78a8"><title>controller '
                     f'{m.stages.get("controller", 0):.3f} s</title></rect>')
        parts.append(f'<rect x="{x(m.not_ready.mono):.1f}" y="{y}" '
                     f'width="{x(m.dataplane.mono) - x(m.not_ready.mono):.1f}" height="18" '
                     f'fill="#f58518"><title>dataplane {m.stages.get("dataplane", 0):.3f} s'
                     '</title></rect>')
        if m.stopped is not None:
            parts.append(f'<line x1="{x(m.stopped.mono):.1f}" x2="{x(m.stopped.mono):.1f}" '
                         f'y1="{y - 3}" y2="{y + 21}" stroke="black" stroke-width="2"/>')
        if m.unsafe:
            parts.append(f'<rect x="{left - 2}" y="{y - 2}" '
                         f'width="{x(m.dataplane.mono) - left + 4:.1f}" height="22" '
                         'fill="none" stroke="red" stroke-width="2"/>')
    axis = 60 + row * len(chosen)
    parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{axis}" y2="{axis}" stroke="#999"/>')
    for second in range(int((width - 10 - left) / scale) + 1):
        tick = left + second * scale
        parts.append(f'<line x1="{tick}" x2="{tick}" y1="{axis}" y2="{axis + 5}" '
                     'stroke="#999"/>')
        parts.append(f'<text x="{tick - 4}" y="{axis + 18}" fill="#555">{second} s</text>')
    for i, (name, w) in enumerate((workloads or {}).items()):
        prestop = f"{w['prestop_seconds']:g} s" if w["prestop_seconds"] else "none"
        parts.append(f'<text x="10" y="{axis + 45 + 18 * i}">{escape(name)}: preStop {prestop} '
                     f'({escape(w["set_by"])}), failed {w["failed"]} of {w["requests"]} '
                     f'requests, {w["cut"]["clients"]} connections cut, preStop spent '
                     f'{w["prestop_seconds_spent"]:g} s over {w["deletions"]} deletions</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
