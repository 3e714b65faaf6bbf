"""``observer lab``: one run of the scenario, or two with ``--verify`` (measure, apply the
recommended preStop to the workloads that lack one or have a shorter one, run again), with the
text or JSON result and progress while it runs."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog

from observer.clock import SystemClock
from observer.dataplane.commands import ERROR_REASONS
from observer.lab.apiserver.server import ApiServer
from observer.lab.config import LabConfig
from observer.lab.report import render_svg, render_text, render_verify
from observer.lab.results import compare, pair
from observer.lab.scenario import Lab, LabRun
from observer.report.command import report
from observer.report.options import ReportOptions
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
    for number in range(1, runs + 1):
        progress = Progress(err, f"run {number} of {runs}: " if runs > 1 else "")
        try:
            code, result, advice = await _one(options, config, stop=stop, out=out, err=err,
                                               progress=progress)
        finally:
            progress.done()
        if code:
            return code
        results.append(result)
        if number < runs:
            applied = _applied(config, result)
            if applied is None:
                err.write("observer lab: --verify: no recommendation to apply (too few "
                          "measured episodes)\n")
                return 1
            config = applied
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


def _applied(config: LabConfig, result: dict[str, Any]) -> LabConfig | None:
    """The next run's settings: every workload's preStop at least the recommendation."""
    seconds = result["recommendation"]["prestop_seconds"]
    if seconds is None:
        return None
    return dataclasses.replace(config, prestop=max(config.prestop, float(seconds)),
                               added_prestop=max(config.added_prestop, float(seconds)))


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
               err: TextIO, progress: Progress) -> tuple[int, dict[str, Any], str]:
    lab = Lab(config, clock=SystemClock(), progress=progress,
              announce=_announcer(options, out, err))
    serving = asyncio.Event()
    advice, advice_problems = io.StringIO(), io.StringIO()

    async def serve(run: LabRun) -> None:
        # What `observer report` makes of the lab (text report only): the agents' histograms
        # over HTTP, the workloads from the lab's API server — the production path.
        if not options.as_json and not options.verify:
            await report(ReportOptions(
                prometheus=None, agents=[n.agent.http.url for n in run.nodes if n.agent],
                kubeconfig=str(run.kubeconfig), namespace=None),
                out=advice, err=advice_problems)
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
                     "prestop_seconds": {w: config.prestop if w == "careful"
                                         else config.added_prestop for w in config.workloads},
                     "ingress_delay": str(config.ingress_delay),
                     "terminal_pod_watch": config.terminal_pod_watch}
    result["traffic"] = run.traffic
    result["agent_errors"] = _agent_errors(run)
    options.svg.parent.mkdir(parents=True, exist_ok=True)
    options.svg.write_text(render_svg(pair(measured, run.truth.episodes)[0]))
    result["timeline"] = str(options.svg.resolve())
    return 0, result, advice.getvalue() or advice_problems.getvalue()
