"""`observer report` against real agent expositions (the agent's own AgentMetrics served over
HTTP) and the lab API server: the recommendation, the findings per workload shape, and every
way the inputs can fail — a message and a documented exit code, never a traceback."""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from observer import cli
from observer.config import WorkloadSettings
from observer.episodes.pods import Shutdown
from observer.export.metrics import AgentMetrics
from observer.export.workloads import WorkloadMetrics
from observer.lab.apiserver.registry import WriteOptions
from observer.lab.apiserver.server import ApiServer
from observer.report.command import report
from observer.report.histograms import Histogram
from observer.report.options import ReportOptions
from tests import noisy
from tests.cli_options import actions, commands
from tests.report.test_prometheus import free_port

Observe = Callable[[AgentMetrics, WorkloadMetrics], None]


class Agents:
    """Real agent expositions over HTTP, one server per emulated node."""

    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []

    async def add(self, observe: Observe) -> str:
        registry = CollectorRegistry()
        observe(AgentMetrics(registry, proxy_mode="nftables"),
                WorkloadMetrics(registry, settings=WorkloadSettings(), now=lambda: 0.0))

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(registry),
                                content_type="text/plain", charset="utf-8")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{port}"


def observations(controller: list[float] = (), dataplane: list[float] = (),  # type: ignore[assignment]
                 app_shutdown: list[float] = (),  # type: ignore[assignment]
                 outcomes: dict[str, int] | None = None,
                 last_connection: dict[str, list[float]] | None = None,
                 failed: int = 0, cut: int = 0,
                 workloads: dict[tuple[str, str], Own] | None = None) -> Observe:
    def observe(metrics: AgentMetrics, per_workload: WorkloadMetrics) -> None:
        for (namespace, name), own in (workloads or {}).items():
            own.observe(per_workload, namespace, name)
        for source, seconds_list in (last_connection or {}).items():
            for seconds in seconds_list:
                metrics.last_connection.labels(source).observe(seconds)
        for _ in range(failed):
            metrics.connection("forwarded", "stopped")
        metrics.connections_cut(cut)
        for outcome, count in (outcomes or {}).items():
            metrics.episodes_total.labels(outcome).inc(count)
        for seconds in controller:
            metrics.duration.labels("controller", "deletion", "nftables").observe(seconds)
        for seconds in dataplane:
            metrics.duration.labels("dataplane", "deletion", "nftables").observe(seconds)
        for seconds in app_shutdown:
            metrics.pod_shutdown(Shutdown(seconds, 0, 0.0))
    return observe


@dataclass
class Own:
    """One workload's own measurements, as its pods' node exports them."""

    episodes: int = 0
    last_connection: dict[str, list[float]] = field(default_factory=dict)
    app_shutdown: list[float] = field(default_factory=list)
    failed: int = 0
    cut: int = 0

    def observe(self, metrics: WorkloadMetrics, namespace: str, name: str) -> None:
        labels = (namespace, name)
        metrics.episodes.labels(*labels).inc(self.episodes)
        for source, seconds_list in self.last_connection.items():
            for seconds in seconds_list:
                metrics.last_connection.labels(*labels, source).observe(seconds)
        for seconds in self.app_shutdown:
            metrics.app_shutdown.labels(*labels).observe(seconds)
        if self.failed:
            metrics.connections.labels(*labels, "stopped").inc(self.failed)
        if self.cut:
            metrics.cut.labels(*labels).inc(self.cut)


def options(**changes: Any) -> ReportOptions:
    base = {"prometheus": None, "agents": (), "kubeconfig": None, "namespace": None,
            "quantile": 0.99, "margin": 1.0, "window": "6h", "min_episodes": 20,
            "node_label": "node", "as_json": True}
    return ReportOptions(**{**base, **changes})


async def run(opts: ReportOptions) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await report(opts, out=out, err=err)
    assert "Traceback" not in err.getvalue()
    return code, out.getvalue(), err.getvalue()


def container(name: str, prestop: dict[str, Any] | None = None, *, ports: bool = True,
              **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "image": f"{name}:1", **extra}
    if ports:
        out["ports"] = [{"containerPort": 8080}]
    if prestop is not None:
        out["lifecycle"] = {"preStop": prestop}
    return out


def workload(name: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}}}


OWNER = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u-1",
         "controller": True}


def create_workloads(server: ApiServer) -> None:
    def create(resource: str, obj: dict[str, Any], namespace: str = "shop") -> None:
        server.registries[resource].create(namespace, obj, WriteOptions())

    create("deployments", workload("web", {
        "initContainers": [
            container("migrate", ports=False, command=["migrate", "--up"]),
            container("mesh", {"sleep": {"seconds": 20}}, restartPolicy="Always")],
        "containers": [
            container("web", {"exec": {"command": ["/bin/sh", "-c",
                                                   "sleep 5 && nginx -s quit"]}},
                      args=["--port", "8080"]),
            container("logs", ports=False, command=["fluent-bit"])]}))
    create("statefulsets", workload("db", {"containers": [container("db")]}))
    create("daemonsets", workload("edge", {"containers": [
        container("edge", {"httpGet": {"path": "/drain", "port": 8080}})]}))
    create("replicasets", workload("orphan", {"containers": [
        container("app", {"exec": {"command": ["sleep", "1"]}})]}))
    owned = workload("web-5d8f7c9b6", {"containers": [container("web")]})
    owned["metadata"]["ownerReferences"] = [OWNER]
    create("replicasets", owned)
    create("pods", {"metadata": {"name": "debug"}, "spec": {
        "terminationGracePeriodSeconds": 4,
        "containers": [container("shell", {"exec": {"command": ["sleep", "3"]}})]}})
    create("pods", {"metadata": {"name": "web-abc", "ownerReferences": [
        {**OWNER, "kind": "ReplicaSet", "name": "web-5d8f7c9b6"}]},
        "spec": {"containers": [container("web")]}})
    create("pods", {"metadata": {"name": "elsewhere"},
                    "spec": {"containers": [container("app")]}}, namespace="other")


async def test_recommendation_and_findings(agents: Agents, apiserver: ApiServer,
                                           kubeconfig: Path) -> None:
    first = await agents.add(observations(controller=[0.2] * 25, dataplane=[0.3] * 25,
                                          app_shutdown=[2.0] * 25))
    second = await agents.add(observations(dataplane=[0.8] * 25))
    create_workloads(apiserver)

    code, out, err = await run(options(agents=(first, second), kubeconfig=str(kubeconfig),
                                       namespace="shop"))
    assert (code, err) == (0, "")
    result = json.loads(out)
    rec = result["recommendation"]
    # All in one bucket each, so PromQL's interpolation is easy to do by hand:
    # controller (0.15, 0.2] → 0.15 + 0.05 * 0.99; node 2's dataplane (0.75, 0.9] → 0.75 +
    # 0.15 * 0.99; app shutdown (1, 2] → 1 + 1 * 0.99.
    assert math.isclose(rec["controller_seconds"], 0.1995)
    assert math.isclose(rec["dataplane_seconds"], 0.8985)
    assert rec["slowest_node"] == second.removeprefix("http://")
    assert rec["prestop_seconds"] == 3  # ceil(0.1995 + 0.8985 + 1)
    assert rec["episodes"] == 25
    assert math.isclose(rec["app_shutdown_seconds"], 1.99)

    workloads = {w["workload"]: w for w in result["workloads"]}
    rows = {(w["kind"], w["name"], c["container"]): c for w in result["workloads"]
            for c in w["containers"]}
    assert set(rows) == {("Deployment", "web", "web"), ("Deployment", "web", "mesh"),
                         ("StatefulSet", "db", "db"), ("DaemonSet", "edge", "edge"),
                         ("ReplicaSet", "orphan", "app"), ("Pod", "debug", "shell")}
    expect = {
        ("Deployment", "web", "web"): ("exec-sleep", 5.0, [], 5.0),
        ("Deployment", "web", "mesh"): ("sleep-action", 20.0, ["over-provisioned"], 3),
        ("StatefulSet", "db", "db"): ("none", None, ["no-prestop"], 3),
        ("DaemonSet", "edge", "edge"): ("http", None, ["unknown"], 3),
        ("ReplicaSet", "orphan", "app"): ("exec-sleep", 1.0, ["at-risk"], 3),
        # grace 4 s is below preStop 3 s + apps' p99 exit time 1.99 s + margin 1 s.
        ("Pod", "debug", "shell"): ("exec-sleep", 3.0, ["grace-too-short"], 3.0),
    }
    for key, (kind, seconds, findings, suggested) in expect.items():
        row = rows[key]
        assert (row["prestop_kind"], row["prestop_seconds"], row["findings"],
                row["suggested_prestop_seconds"]) == (kind, seconds, findings, suggested), key
    assert rows[("Pod", "debug", "shell")]["grace_seconds"] == 4
    # No workload has its own evidence: each falls back to the cluster-wide number.
    assert {(w["set_by"], w["recommended_prestop_seconds"], w["episodes"])
            for w in workloads.values()} == {("cluster-wide", 3, 0)}
    assert [w["finding"] for w in result["workloads"]] == [
        "at-risk", "no-prestop", "grace-too-short", "unknown", "over-provisioned"]  # worst first
    assert workloads["deployment/web"]["findings"] == ["over-provisioned"]
    assert workloads["deployment/web"]["configured_prestop_seconds"] == 5.0  # the shorter
    assert workloads["daemonset/edge"]["configured_prestop_seconds"] is None  # unknown
    assert workloads["pod/debug"]["recommended_grace_seconds"] == 6  # ceil(3 + 1.99 + 1)

    code, out, _ = await run(options(agents=(first, second), kubeconfig=str(kubeconfig),
                                     namespace="shop", as_json=False))
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == ("preStop of 3 s recommended cluster-wide from 25 episodes; 5 of 5 "
                        "workloads need attention (1 at-risk, 1 no-prestop, 1 grace-too-short, "
                        "1 unknown, 1 over-provisioned)")
    assert lines[1] == ("  per workload: 0 sized by their own consumers' connections, 0 by "
                        "kube-proxy's rules, 5 on the cluster-wide number (fewer deletions "
                        "measured than --min-episodes)")
    header = next(i for i, line in enumerate(lines) if line.startswith("NAMESPACE"))
    assert lines[header].split() == ["NAMESPACE", "WORKLOAD", "CONTAINER", "PRESTOP", "GRACE",
                                     "RECOMMENDED", "SET-BY", "EPISODES", "FINDINGS"]
    assert lines[header + 1].split() == ["shop", "replicaset/orphan", "app", "exec-sleep",
                                         "1s", "30s", "3s", "cluster-wide", "0", "at-risk"]
    assert "\033[" not in out  # no colour when not a terminal


async def test_a_consumer_slower_than_kube_proxy_sets_the_recommendation(
        agents: Agents, kubeconfig: Path) -> None:
    # kube-proxy's path: ceil(0.1995 + 0.2985 + 1) = 2. An ingress kept sending new
    # connections until (2.5, 3] after the deletion: p99 2.995, so ceil(2.995 + 1) = 4. Local
    # connections below the minimum of observations do not count.
    urls = (await agents.add(observations(
        controller=[0.2] * 25, dataplane=[0.3] * 25,
        last_connection={"forwarded": [3.0] * 25, "local": [9.0] * 5}, failed=7, cut=2)),)
    code, out, err = await run(options(agents=urls, kubeconfig=str(kubeconfig)))
    assert (code, err) == (0, "")
    rec = json.loads(out)["recommendation"]
    assert rec["prestop_seconds"] == 4
    assert rec["set_by"] == "connections"
    assert rec["rules_only_prestop_seconds"] == 2
    assert rec["last_connection_seconds_by_source"] == {"forwarded": pytest.approx(2.995)}
    assert (rec["failed_connections"], rec["cut_connections"]) == (7, 2)
    assert "last connection (forwarded) 2.995 s after deletion (25 episodes)" in rec["basis"]

    code, out, _ = await run(options(agents=urls, kubeconfig=str(kubeconfig), as_json=False))
    assert "kube-proxy's rules alone would have said 2 s" in out
    assert "7 new connections reached pods that had stopped, 2 open ones were cut" in out

    # Without connections seen, kube-proxy's path sets it, as before.
    quiet = (await agents.add(observations(controller=[0.2] * 25, dataplane=[0.3] * 25)),)
    code, out, _ = await run(options(agents=quiet, kubeconfig=str(kubeconfig)))
    rec = json.loads(out)["recommendation"]
    assert (rec["prestop_seconds"], rec["set_by"], rec["rules_only_prestop_seconds"]) == (
        2, "kube-proxy", 2)


async def test_each_workload_is_sized_by_its_own_consumers(
        agents: Agents, apiserver: ApiServer, kubeconfig: Path) -> None:
    """Rules path 2 s (as above). ``web`` sits behind a consumer that kept sending new
    connections (8, 10] s after its deletions: its own p99 9.98 s sets 11 s. ``db`` had as many
    deletions and no late connection: kube-proxy's 2 s. ``edge`` had 5 deletions, below
    --min-episodes: the cluster-wide number, which web's consumer drove up. Deletions folded
    under ``_other`` by an agent past its cap are warned about."""
    create_workloads(apiserver)
    node_1 = await agents.add(observations(
        controller=[0.2] * 55, dataplane=[0.3] * 55,
        last_connection={"forwarded": [9.0] * 25}, failed=4, cut=3, workloads={
            ("shop", "deployment/web"): Own(episodes=25, last_connection={
                "forwarded": [9.0] * 25, "local": [0.1] * 25}, app_shutdown=[4.0] * 25,
                failed=4, cut=3),
            ("shop", "daemonset/edge"): Own(episodes=5),
            ("_other", "_other"): Own(episodes=2)}))
    node_2 = await agents.add(observations(dataplane=[0.3] * 55, workloads={
        ("shop", "statefulset/db"): Own(episodes=25)}))

    code, out, err = await run(options(agents=(node_1, node_2), kubeconfig=str(kubeconfig),
                                       namespace="shop"))
    assert code == 0
    assert 'warning: 2 deletions were counted under workload="_other"' in err
    result = json.loads(out)
    cluster_wide = result["recommendation"]["prestop_seconds"]
    assert cluster_wide > 2  # the forwarded connections of web's consumer, cluster-wide
    rows = {w["workload"]: w for w in result["workloads"]}
    web, db, edge = rows["deployment/web"], rows["statefulset/db"], rows["daemonset/edge"]
    assert (web["recommended_prestop_seconds"], web["set_by"], web["episodes"]) == (
        11, "connections", 25)
    assert web["last_connection_seconds_by_source"] == {
        "forwarded": pytest.approx(9.98), "local": pytest.approx(0.495)}
    assert (db["recommended_prestop_seconds"], db["set_by"], db["episodes"]) == (
        2, "kube-proxy", 25)
    assert (edge["recommended_prestop_seconds"], edge["set_by"], edge["episodes"]) == (
        cluster_wide, "cluster-wide", 5)
    # web: its own app exit p99 3.99 s; grace covers its longest preStop, the mesh sidecar's
    # 20 s: ceil(20 + 3.99 + 1) = 25 s, 30 s configured.
    assert (web["app_shutdown_seconds"], web["app_shutdown_measured_here"]) == (
        pytest.approx(3.99), True)
    assert web["recommended_grace_seconds"] == 25
    assert "grace-too-short" not in web["findings"]
    # web's own preStop (exec sleep 5) no longer covers its consumer; its mesh sidecar's 20 s
    # does; the 3 connections cut at the stop are for the app to drain.
    assert web["findings"] == ["at-risk", "drain"]
    assert (web["failed_connections"], web["cut_connections"]) == (4, 3)
    assert [c["findings"] for c in web["containers"]] == [[], ["at-risk"]]  # mesh, web
    assert db["findings"] == ["no-prestop"]

    code, out, _ = await run(options(agents=(node_1, node_2), kubeconfig=str(kubeconfig),
                                     namespace="shop", as_json=False))
    assert code == 0
    assert ("per workload: 1 sized by their own consumers' connections, 1 by kube-proxy's "
            "rules, 3 on the cluster-wide number") in out
    assert "drain these:" in out
    assert "  shop deployment/web: 3 connections cut" in out


async def test_all_namespaces_by_default(agents: Agents, apiserver: ApiServer,
                                         kubeconfig: Path) -> None:
    url = await agents.add(observations(controller=[0.1] * 20, dataplane=[0.1] * 20))
    create_workloads(apiserver)
    code, out, _ = await run(options(agents=(url,), kubeconfig=str(kubeconfig)))
    assert code == 0
    assert {w["namespace"] for w in json.loads(out)["workloads"]} == {"shop", "other"}
    # No app shutdown measured: grace periods are not judged.
    assert json.loads(out)["recommendation"]["app_shutdown_seconds"] is None
    assert not any("grace-too-short" in w["findings"] for w in json.loads(out)["workloads"])
    assert {w["recommended_grace_seconds"] for w in json.loads(out)["workloads"]} == {None}


@pytest.mark.parametrize(("observe", "message"), [
    (observations(controller=[0.1] * 5, dataplane=[0.1] * 5),
     "only 5 deletions measured (controller stage)"),
    (observations(controller=[0.1] * 30),
     "only 0 dataplane-stage measurements"),
    (observations(), "only 0 deletions measured"),
])
async def test_too_little_data_is_refused(agents: Agents, kubeconfig: Path, observe: Observe,
                                          message: str) -> None:
    url = await agents.add(observe)
    code, out, err = await run(options(agents=(url,), kubeconfig=str(kubeconfig)))
    assert (code, out) == (3, "")
    assert message in err
    assert "--min-episodes" in err or "--dataplane none" in err


async def test_some_agents_unreachable_is_a_warning(agents: Agents, kubeconfig: Path) -> None:
    url = await agents.add(observations(controller=[0.1] * 20, dataplane=[0.1] * 20))
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run(options(agents=(url, dead), kubeconfig=str(kubeconfig)))
    assert code == 0
    assert f"warning: agent {dead}:" in err
    assert "(1 of 2 answered)" in json.loads(out)["recommendation"]["source"]


async def test_no_agent_reachable(kubeconfig: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run(options(agents=(dead,), kubeconfig=str(kubeconfig)))
    assert (code, out) == (4, "")
    assert "cannot read the measurements: no agent answered" in err


async def test_prometheus_unreachable_or_not_prometheus(agents: Agents,
                                                        kubeconfig: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code, _, err = await run(options(prometheus=dead, kubeconfig=str(kubeconfig)))
    assert code == 4
    assert f"cannot reach Prometheus at {dead}" in err
    not_prometheus = await agents.add(observations())
    code, _, err = await run(options(prometheus=not_prometheus, kubeconfig=str(kubeconfig)))
    assert code == 4
    assert "answered HTTP 404 without JSON" in err


async def test_access_denied_names_what_is_missing(agents: Agents, apiserver: ApiServer,
                                                   kubeconfig: Path) -> None:
    url = await agents.add(observations(controller=[0.1] * 20, dataplane=[0.1] * 20))
    apiserver.faults.fail_next(1, code=403, retry_after=None, path="/statefulsets")
    code, out, err = await run(options(agents=(url,), kubeconfig=str(kubeconfig)))
    assert (code, out) == (5, "")
    assert "denied listing statefulsets (HTTP 403)" in err
    assert "get/list on deployments, statefulsets" in err


def elsewhere(kubeconfig: Path, moved: Path) -> Path:
    """The kubeconfig, pointing at a port nothing listens on."""
    moved.write_text(re.sub(r"server: https://127\.0\.0\.1:\d+",
                            f"server: https://127.0.0.1:{free_port()}", kubeconfig.read_text()))
    return moved


async def test_kubernetes_api_unreachable(agents: Agents, tmp_path: Path,
                                          kubeconfig: Path) -> None:
    url = await agents.add(observations(controller=[0.1] * 20, dataplane=[0.1] * 20))
    moved = elsewhere(kubeconfig, tmp_path / "moved")
    code, _, err = await run(options(agents=(url,), kubeconfig=str(moved)))
    assert code == 5
    assert "cannot read the workloads: cannot reach the Kubernetes API" in err
    code, _, err = await run(options(agents=(url,), kubeconfig=str(tmp_path / "missing")))
    assert code == 5
    assert "cannot load a Kubernetes client configuration" in err


@pytest.mark.parametrize("argv", [
    ["report"], ["report", "--agent", "http://x", "--window", "1h"],
    ["report", "--agent", "http://x", "--quantile", "1.5"],
    ["report", "--prometheus", "http://x", "--window", "six hours"],
])
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(("outcomes", "share", "warned"), [
    ({"measured": 19, "partial": 1}, 0.95, False),
    ({"measured": 12, "partial": 6, "abandoned": 2}, 0.6, True),
])
async def test_the_share_of_episodes_measured_in_full_is_shown_and_warned_when_low(
        agents: Agents, kubeconfig: Path, outcomes: dict[str, int], share: float,
        warned: bool) -> None:
    url = await agents.add(observations(controller=[0.1] * 20, dataplane=[0.1] * 20,
                                        outcomes=outcomes))
    code, out, err = await run(options(agents=(url,), kubeconfig=str(kubeconfig)))
    assert code == 0
    rec = json.loads(out)["recommendation"]
    assert rec["measured_share"] == share
    outcome_names = ("abandoned", "fallback", "measured", "partial")
    assert rec["episodes_by_outcome"] == {**dict.fromkeys(outcome_names, 0), **outcomes}
    warning = "only 60% of the 20 episodes that ended were measured in full (abandoned 2, " \
              "partial 6)"
    assert (warning in err) is warned, err
    assert any(warning in w for w in rec["warnings"]) is warned
    _, text, _ = await run(options(agents=(url,), kubeconfig=str(kubeconfig), as_json=False))
    assert f"episodes: {share:.0%} measured in full" in text


@pytest.mark.parametrize("form", ["repeated", "listed"])
async def test_every_agent_is_read_however_they_are_given(
        agents: Agents, apiserver: ApiServer, kubeconfig: Path, form: str) -> None:
    """``--agent A --agent B`` once kept only B (15 deletions: refused below the minimum of
    20); ``--agent A B`` always worked. The console command itself, both ways."""
    urls = [await agents.add(observations(controller=[0.1] * 15, dataplane=[0.2] * 15))
            for _ in range(2)]
    given = (["--agent", urls[0], "--agent", urls[1]] if form == "repeated"
             else ["--agent", *urls])
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "observer"), "report", *given, "--kubeconfig",
        str(kubeconfig), "--json", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["recommendation"]["source"].startswith("2 agent(s),")


async def test_json_is_the_whole_stdout_whatever_the_libraries_log(
        agents: Agents, apiserver: ApiServer, kubeconfig: Path) -> None:
    url = await agents.add(observations(controller=[0.1] * 30, dataplane=[0.2] * 30))
    proc = await asyncio.create_subprocess_exec(
        *noisy.argv("--log-format", "json", "report", "--agent", url, "--kubeconfig",
                    str(kubeconfig), "--json"),
        cwd=noisy.REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert all(mark in err.decode() for mark in noisy.MARKS), err.decode()
    assert json.loads(out)["recommendation"]["source"].startswith("1 agent(s),")


def test_no_option_that_takes_several_values_keeps_only_the_last_use() -> None:
    """Every option of every command that takes a list adds to it when repeated."""
    listed = [(command, action.option_strings, type(action).__name__)
              for command, parser in commands() for action in actions(parser)
              if action.option_strings and action.nargs in ("+", "*")]
    assert [(c, o) for c, o, _ in listed] == [("report", ["--agent"])]
    assert all(kind == "_ExtendAction" for _, _, kind in listed), listed


def test_quantile_is_promqls() -> None:
    # Values checked by hand against promql/quantile.go bucketQuantile.
    h = Histogram({0.1: 10.0, 0.5: 30.0, 1.0: 40.0, math.inf: 40.0})
    assert math.isclose(h.quantile(0.5), 0.1 + 0.4 * (20 - 10) / 20)
    assert math.isclose(h.quantile(0.25), 0.1)  # rank 10: the top of the first bucket
    assert math.isclose(h.quantile(0.1), 0.04)  # the first bucket starts at 0
    assert h.quantile(1.0) == 1.0
    overflow = Histogram({0.1: 1.0, 1.0: 1.0, math.inf: 10.0})
    assert overflow.quantile(0.99) == 1.0  # in +Inf: the highest finite bound
    assert math.isnan(Histogram({0.1: 0.0, math.inf: 0.0}).quantile(0.5))
    assert math.isnan(Histogram({0.1: 3.0}).quantile(0.5))  # no +Inf bucket
    skewed = Histogram({0.1: 5.0, 0.5: 4.0, math.inf: 10.0})  # scrape skew: kept monotonic
    assert math.isclose(skewed.quantile(0.5), 0.1)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_findings_are_coloured_on_a_terminal(agents: Agents, apiserver: ApiServer,
                                                   kubeconfig: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = await agents.add(observations(controller=[0.1] * 20, dataplane=[0.1] * 20))
    create_workloads(apiserver)
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Terminal()
    assert await report(options(agents=(url,), kubeconfig=str(kubeconfig), as_json=False),
                        out=out, err=io.StringIO()) == 0
    assert "\033[31mat-risk" in out.getvalue()  # red: at risk
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Terminal()
    await report(options(agents=(url,), kubeconfig=str(kubeconfig), as_json=False),
                 out=plain, err=io.StringIO())
    assert "\033[" not in plain.getvalue()
