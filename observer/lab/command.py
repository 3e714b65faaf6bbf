"""``observer lab``: one run of the scenario, or two with ``--verify`` (measure; apply the
patches `observer report --patches` wrote — each workload's own preStop, and grace period where
raised — to the next run's Deployments; run again), with the text or JSON result and progress
while it runs."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog

from observer.clock import SystemClock
from observer.dataplane.commands import ERROR_REASONS
from observer.kube.lifecycle import containers_of, known_prestop_seconds
from observer.lab.apiserver.server import ApiServer
from observer.lab.config import LabConfig
from observer.lab.controller import NAMESPACE
from observer.lab.report import render_svg, render_text, render_verify
from observer.lab.results import compare, pair
from observer.lab.scenario import Lab, LabRun
from observer.report.command import report
from observer.report.options import DEFAULT_MIN_EPISODES, ReportOptions
from observer.report.patches import read as read_patches
from observer.tasks import cancel_and_wait, stop_on_signals
from observer.traffic.source import ERROR_REASONS as TRAFFIC_ERROR_REASONS

log = structlog.get_logger("observer.lab")


@dataclass(frozen=True)
class LabOptions:
    config: LabConfig
    as_json: bool = False
    svg: Path = Path(".lab/timeline.svg")
    serve: bool = False
    verify: bool = False


class Progress:
    """What the lab is doing, on ``err``: one line rewritten in place on a terminal; plain
    lines otherwise — a new phase at once, the same phase again (deleting 10/60, …) at most
    every ``PLAIN_EVERY`` seconds."""

    PLAIN_EVERY = 5.0

    def __init__(self, err: TextIO, prefix: str = "") -> None:
        self.err = err
        self.live = err.isatty()
        self.prefix = prefix
        self._last = ""
        self._phase, self._printed = "", 0.0

    def __call__(self, text: str) -> None:
        line = f"observer lab: {self.prefix}{text}"
        self._last = line
        if self.live:
            self.err.write(f"\r\033[K{line}")
            self.err.flush()
            return
        phase, now = text.split(" ")[0], time.monotonic()
        if phase != self._phase or now - self._printed >= self.PLAIN_EVERY:
            self._phase, self._printed = phase, now
            self.err.write(line + "\n")
            self.err.flush()

    def done(self) -> None:
        if self.live and self._last:
            self.err.write("\r\033[K")
            self.err.flush()


async def run_lab(options: LabOptions) -> int:
    """``observer lab``: the scenario (twice with --verify), until its end or a signal."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    return await lab_command(options, stop=stop)


async def serve_apiserver(*, listen: tuple[str, int], kubeconfig: Path, bookmark_interval: float,
                          history: int) -> int:
    """``observer lab apiserver``: the lab's API server alone, until a signal; the path of its
    kubeconfig on stdout once it serves."""
    server = ApiServer(clock=SystemClock(), bookmark_interval=bookmark_interval,
                       history_limit=history)
    url = await server.start(*listen)
    server.write_kubeconfig(kubeconfig)
    log.info("apiserver serving", url=url, kubeconfig=str(kubeconfig))
    print(kubeconfig, flush=True)
    stop = asyncio.Event()
    stop_on_signals(stop)
    try:
        await stop.wait()
    finally:
        await server.stop()
        await asyncio.to_thread(kubeconfig.unlink, missing_ok=True)
    log.info("apiserver stopped")
    return 0


async def lab_command(options: LabOptions, *, stop: asyncio.Event, out: TextIO = sys.stdout,
                      err: TextIO = sys.stderr) -> int:
    runs = 2 if options.verify else 1
    results: list[dict[str, Any]] = []
    config = options.config
    patches: list[dict[str, Any]] = []
    applied: dict[str, str] = {}  # workload -> what set the preStop its patch gave it
    with tempfile.TemporaryDirectory(prefix="observer-lab-") as scratch:
        for number in range(1, runs + 1):
            progress = Progress(err, f"run {number} of {runs}: " if runs > 1 else "")
            patch_dir = Path(scratch) / f"patches-{number}"
            try:
                code, result, advice = await _one(
                    options, config, stop=stop, out=out, err=err, progress=progress,
                    patches=patches, applied=applied, patch_dir=patch_dir)
            finally:
                progress.done()
            if code:
                return code
            results.append(result)
            if number < runs:
                if result.get("cluster_wide") is None:
                    err.write("observer lab: --verify: `observer report` recommended nothing "
                              f"(too few measured episodes): {advice.strip()}\n")
                    return 1
                patches = read_patches(patch_dir)
                applied = {w: row["recommendation"]["set_by"]
                           for w, row in result["workloads"].items()
                           if any(p["metadata"]["name"] == w for p in patches)}
    if options.as_json:
        out.write(json.dumps({"runs": results} if options.verify else results[0], indent=2)
                  + "\n")
        return 0
    if options.verify:
        out.write(render_verify(results) + "\n")
        return 0
    out.write(render_text(results[0]) + "\n")
    out.write("\n`observer report` on the lab (the agents' histograms, the lab's workloads):\n")
    out.write(textwrap.indent(advice, "  "))
    return 0


def min_episodes(config: LabConfig) -> int:
    """What the lab asks of `observer report`: its default, or half of each workload's
    deletions when a run is shorter (tests run a dozen deletions)."""
    per_workload = config.deletions // len(config.workloads)
    return max(2, min(DEFAULT_MIN_EPISODES, per_workload // 2))


def _agent_errors(run: LabRun) -> dict[str, dict[str, int]]:
    """The agents' own error counters, summed over the nodes, by reason: a run without
    injected faults has none (a failed read or a lost event would show here first)."""
    totals: dict[str, dict[str, int]] = {}
    for family, reasons in (("dataplane", ERROR_REASONS), ("traffic", TRAFFIC_ERROR_REASONS)):
        name = f"endpoint_propagation_{family}_errors_total"
        totals[family] = {reason: int(sum(
            n.agent.registry.get_sample_value(name, {"reason": reason}) or 0
            for n in run.nodes if n.agent)) for reason in reasons}
    return totals


def _announcer(options: LabOptions, out: TextIO, err: TextIO) -> Callable[[str], None]:
    """Where --serve says where the lab is (its kubeconfig, each agent's URL): stdout, but
    stderr when stdout is for the JSON result alone."""
    if not options.serve:
        return lambda _: None
    stream = err if options.as_json else out
    return lambda line: print(line, file=stream, flush=True)


async def _one(options: LabOptions, config: LabConfig, *, stop: asyncio.Event, out: TextIO,
               err: TextIO, progress: Progress, patches: list[dict[str, Any]],
               applied: dict[str, str], patch_dir: Path) -> tuple[int, dict[str, Any], str]:
    lab = Lab(config, clock=SystemClock(), progress=progress,
              announce=_announcer(options, out, err), patches=patches)
    serving = asyncio.Event()
    advice, advice_problems = io.StringIO(), io.StringIO()
    found: dict[str, Any] = {}

    async def serve(run: LabRun) -> None:
        # What `observer report` makes of the lab: the agents' histograms over HTTP, the
        # workloads from the lab's API server — the production path. With --verify, as JSON,
        # with the patches the next run applies.
        agents = [n.agent.http.url for n in run.nodes if n.agent]
        if options.verify:
            code = await report(ReportOptions(
                prometheus=None, agents=agents, kubeconfig=str(run.kubeconfig), namespace=None,
                min_episodes=min_episodes(config), as_json=True, patches=str(patch_dir)),
                out=advice, err=advice_problems)
            if code == 0:
                found["report"] = json.loads(advice.getvalue())
        elif not options.as_json:
            await report(ReportOptions(prometheus=None, agents=agents,
                                       kubeconfig=str(run.kubeconfig), namespace=None),
                         out=advice, err=advice_problems)
        found["prestop"] = {w: _prestop(lab, w) for w in config.workloads}
        if not options.serve:
            return
        serving.set()
        progress.done()
        timelines = " ".join(f"{n.agent.http.url}/timeline" for n in run.nodes if n.agent)
        err.write(f"observer lab: deletions done; serving until Ctrl-C. Episode timelines: "
                  f"{timelines}\n")
        err.flush()
        await stop.wait()

    scenario = asyncio.create_task(lab.run(serve=serve))
    interrupted = asyncio.create_task(stop.wait())
    await asyncio.wait([scenario, interrupted], return_when=asyncio.FIRST_COMPLETED)
    if not scenario.done() and serving.is_set():
        await asyncio.wait([scenario])  # Ctrl-C while serving is the normal end: it cleans up
    if not scenario.done():
        await cancel_and_wait(scenario, interrupted)
        progress.done()
        err.write("observer lab: interrupted; everything it started is stopped\n")
        return 130, {}, ""
    await cancel_and_wait(interrupted)
    try:
        run = scenario.result()
    except TimeoutError as error:
        err.write(f"observer lab: {error}\n")
        return 1, {}, ""
    measured = [(n.name, e) for n in run.nodes if n.agent for e in n.agent.tracker.finished]
    result = compare(measured, run.truth.episodes, [n.name for n in run.nodes])
    result["lab"] = {"nodes": config.nodes, "deletions": config.deletions,
                     "dataplane": run.dataplane, "note": run.note,
                     "elapsed_seconds": round(run.elapsed, 2), "seed": config.seed,
                     "prestop_seconds": found["prestop"],
                     "ingress_delay": str(config.ingress_delay),
                     "ingress_workloads": list(config.fronted),
                     "terminal_pod_watch": config.terminal_pod_watch}
    result["traffic"] = run.traffic
    result["agent_errors"] = _agent_errors(run)
    if options.verify:
        result["workloads"] = per_workload(config, run, found["prestop"], found.get("report"),
                                           applied)
        result["cluster_wide"] = cluster_wide(run, found.get("report"))
    options.svg.parent.mkdir(parents=True, exist_ok=True)
    options.svg.write_text(render_svg(pair(measured, run.truth.episodes)[0],
                                      workloads=result.get("workloads")))
    result["timeline"] = str(options.svg.resolve())
    return 0, result, advice.getvalue() or advice_problems.getvalue()


def _prestop(lab: Lab, workload: str) -> float:
    """The preStop the workload's Deployment gives its pods now (0: none)."""
    template = lab.server.registries["deployments"].get(NAMESPACE, workload)["spec"]["template"]
    return known_prestop_seconds(containers_of(template.get("spec") or {})) or 0.0


def per_workload(config: LabConfig, run: LabRun, prestop: dict[str, float],
                 advised: dict[str, Any] | None, applied: dict[str, str]
                 ) -> dict[str, dict[str, Any]]:
    """``runs[i].workloads[<name>]`` (docs/lab.md): the preStop the workload ran with and what
    set it (``configured``, or the set_by of the report whose patch gave it), its consumers,
    its clients' requests and failures, the connections its pods cut, its deletions and the
    preStop seconds they spent; and what this run's `observer report` recommends for it."""
    rows = {r["workload"]: r for r in (advised or {}).get("workloads", [])}
    traffic = run.traffic or {}
    out = {}
    for w in config.workloads:
        row = rows.get(f"deployment/{w}")
        consumers = ["ingress"] if w in config.fronted else []
        if run.dataplane != "cilium":
            consumers = ["service", "keepalive", *(["stream"] if w == "streaming" else []),
                         *consumers]
        out[w] = {
            "prestop_seconds": prestop[w], "set_by": applied.get(w, "configured"),
            "consumers": consumers,
            "requests": traffic.get("requests_by_workload", {}).get(w, 0),
            "failed": traffic.get("failed_by_workload", {}).get(w, 0),
            # Connections its pods closed under their clients: as the clients found them, as
            # the agents counted them.
            "cut": traffic.get("cut_by_workload", {}).get(w, {"clients": 0, "agents": 0}),
            "deletions": run.deletions.get(w, 0),
            "prestop_seconds_spent": round(run.prestop_spent.get(w, 0.0), 3),
            "recommendation": None if row is None else {
                "prestop_seconds": row["recommended_prestop_seconds"], "set_by": row["set_by"],
                "episodes": row["episodes"], "findings": row["findings"],
                "cut_connections": row["cut_connections"],
                "last_connection_seconds_by_source": row["last_connection_seconds_by_source"]},
        }
    return out


def cluster_wide(run: LabRun, advised: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run costed with the one cluster-wide recommendation on every workload."""
    if advised is None:
        return None
    seconds = advised["recommendation"]["prestop_seconds"]
    return {"prestop_seconds": seconds, "set_by": advised["recommendation"]["set_by"],
            "prestop_seconds_spent": seconds * sum(run.deletions.values())}
