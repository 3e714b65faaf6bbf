"""A real Prometheus (Debian package) scrapes the lab's agents and evaluates
deploy/prometheus/rules.yaml; `observer report --prometheus`, `observer report --agent` and the
recording rule must give the same recommendation, and every dashboard panel's query must parse
and return data — with the default buckets, and with coarser ones of the agents' own
(``--histogram-buckets``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from observer.clock import SystemClock
from observer.export.buckets import DURATION
from observer.lab.config import Delay, LabConfig
from observer.lab.scenario import Lab, LabRun
from observer.report.histograms import Histogram
from tests.conftest import require_tool

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yaml"
DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
# Other buckets than the defaults, for every family the rules, dashboards and report read.
COARSE = {"endpoint_propagation_duration_seconds": (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 30.0, 300.0),
          "endpoint_propagation_app_shutdown_seconds": (0.5, 1.0, 5.0, 60.0),
          "endpoint_propagation_last_connection_seconds": (1.0, 5.0, 60.0),
          "endpoint_propagation_workload_last_connection_seconds": (1.0, 3.0, 10.0, 60.0),
          "endpoint_propagation_workload_app_shutdown_seconds": (1.0, 10.0)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, targets: dict[str, str]) -> None:
        """Scrape ``targets`` (node → host:port) every second; the rules evaluated every
        second too (the same rules, only their group interval changed)."""
        rules = yaml.safe_load(RULES.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
        (self.workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{"job_name": "observer", "static_configs": [
                {"targets": [address], "labels": {"node": node}}
                for node, address in targets.items()]}]}))
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.url.removeprefix('http://')}",
            stdout=log, stderr=log)
        log.close()
        await self.until(lambda up: len(up) == len(targets) and all(v == 1 for v in up),
                         "up")

    async def query(self, promql: str) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.get(
                f"{self.url}/api/v1/query", params={"query": promql}) as response:
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]  # type: ignore[no-any-return]

    async def until(self, check: Any, promql: str, within: float = 60) -> None:
        async with asyncio.timeout(within):
            while True:
                with contextlib.suppress(aiohttp.ClientError, AssertionError):
                    if check([float(r["value"][1]) for r in await self.query(promql)]):
                        return
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[Prometheus]:
    server = Prometheus(require_tool("prometheus"), tmp_path)
    try:
        yield server
    finally:
        await server.stop()


async def observer_report(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "observer.cli", "report", "--json", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)  # type: ignore[no-any-return]


def bucket(value: float, bounds: tuple[float, ...]) -> int:
    return Histogram(dict.fromkeys((*bounds, float("inf")), 0.0)).bucket_of(value)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel, PromQL) for every panel target, Grafana's variables filled in: all
    nodes, modes and causes; a rate window covering the whole lab run."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in (("$__rate_interval", "5m"), ("$node", ".*"),
                                        ("$proxy_mode", ".*"), ("$cause", ".*")):
                    expr = expr.replace(variable, value)
                out.append((path.name, panel["title"], expr))
    return out


async def evaluate_dashboards(prometheus: Prometheus) -> dict[tuple[str, str, str], int]:
    """How many series each panel query returns (Prometheus refuses unparsable ones)."""
    return {key: len(await prometheus.query(key[2])) for key in dashboard_queries()}


@pytest.mark.parametrize("buckets", [{}, COARSE], ids=["default-buckets", "coarse-buckets"])
async def test_prometheus_agents_and_recording_rules_agree(
        prometheus: Prometheus, buckets: dict[str, tuple[float, ...]]) -> None:
    config = LabConfig(nodes=3, deletions=30, dataplane="memory", prestop=2.0,
                       app_exit=Delay(0.1, 0.5), spacing=0.2, histogram_buckets=buckets)
    stage_buckets = buckets.get("endpoint_propagation_duration_seconds", DURATION)
    lab = Lab(config, clock=SystemClock())
    found: dict[str, Any] = {}

    async def ready(run: LabRun) -> None:
        await prometheus.start({n.name: n.agent.http.url.removeprefix("http://")
                                for n in run.nodes if n.agent is not None})

    async def serve(run: LabRun) -> None:
        await prometheus.until(lambda v: v == [30.0], 'sum(endpoint_propagation_duration_seconds'
                                                      '_count{stage="controller"})')
        await prometheus.until(lambda v: len(v) == 1,
                               "endpoint_propagation:prestop_recommendation_seconds")
        found["rule"] = await prometheus.query(
            "endpoint_propagation:prestop_recommendation_seconds")
        found["prometheus"] = await observer_report(
            "--prometheus", prometheus.url, "--window", "1h", "--kubeconfig", str(run.kubeconfig))
        found["agents"] = await observer_report(
            "--agent", *(n.agent.http.url for n in run.nodes if n.agent is not None),
            "--kubeconfig", str(run.kubeconfig))
        found["panels"] = await evaluate_dashboards(prometheus)
        found["le"] = {r["metric"]["le"] for r in await prometheus.query(
            "endpoint_propagation_duration_seconds_bucket")}

    await lab.run(ready=ready, serve=serve)

    via_prometheus = found["prometheus"]["recommendation"]
    via_agents = found["agents"]["recommendation"]
    assert via_agents["episodes"] == 30
    # increase() extrapolates towards the window's edges, up to about a scrape interval on
    # each side of the ~15-20 s the counters moved in; the quantiles do not depend on it.
    assert 30 <= via_prometheus["episodes"] <= 36
    for stage in ("controller_seconds", "dataplane_seconds"):
        assert abs(bucket(via_prometheus[stage], stage_buckets)
                   - bucket(via_agents[stage], stage_buckets)) <= 1, stage
    assert abs(via_prometheus["prestop_seconds"] - via_agents["prestop_seconds"]) <= 1
    rule = float(found["rule"][0]["value"][1])
    assert abs(rule - via_prometheus["prestop_seconds"]) <= 1
    assert sorted(via_prometheus["dataplane_seconds_by_node"]) == ["node-1", "node-2", "node-3"]

    for output in (found["prometheus"], found["agents"]):
        rows = {w["workload"]: w for w in output["workloads"]}
        assert set(rows) == {"deployment/careful", "deployment/hasty"}
        assert rows["deployment/hasty"]["findings"] == ["no-prestop"]
        assert rows["deployment/hasty"]["configured_prestop_seconds"] == 0
        careful = rows["deployment/careful"]
        assert (careful["containers"][0]["prestop_kind"], careful["configured_prestop_seconds"]
                ) == ("exec-sleep", 2.0)
        assert "no-prestop" not in careful["findings"]
        # Each workload's own deletions, from its pods' nodes: ~15 each, below
        # --min-episodes, so each falls back to the cluster-wide number.
        assert {w["set_by"] for w in rows.values()} == {"cluster-wide"}
        assert {w["recommended_prestop_seconds"] for w in rows.values()} == {
            output["recommendation"]["prestop_seconds"]}
    assert sum(w["episodes"] for w in found["agents"]["workloads"]) == 30
    # A workload's counters appear with its first deletion on a node (at 0; increase() does
    # not count a series' first sample): a scrape that missed the 0 loses part of that one.
    assert 24 <= sum(w["episodes"] for w in found["prometheus"]["workloads"]) <= 36

    # The agents really exported the buckets asked for.
    assert {float(le) for le in found["le"]} == {*stage_buckets, float("inf")}
    panels = found["panels"]
    assert len(panels) == len(dashboard_queries()) > 20
    empty = [key for key, series in panels.items() if series == 0]
    assert not empty, empty
