"""A dataplane that breaks while an endpoint is being removed: the tool is missing, hangs,
fails or prints garbage for a while. The agent (real, polling, reading through real
processes: stand-ins for iptables-legacy-save put first on PATH, printing kube-proxy's layout
from observer/lab/rules.py when healthy) keeps /metrics answering, counts each failed read
with its reason, and once the tool works again measures the episode — it does not lose it."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import aiohttp
import pytest
from kubernetes_asyncio import client

from observer.agent import Agent, DataplaneWiring, build_agent
from observer.clock import SystemClock
from observer.config import AgentConfig, WatchSettings
from observer.dataplane.commands import CommandRunner
from observer.dataplane.iptables import IptablesReader
from observer.dataplane.sources import PollingSource
from observer.lab.apiserver.server import ApiServer
from observer.lab.rules import ServicePortRules, iptables_sync
from tests.agent.harness import Cluster, Endpoint, key, until

TOOLS = ("iptables-legacy-save", "ip6tables-legacy-save")
SCRIPT = """#!/bin/sh
case "$(/bin/cat {dir}/mode)" in
  good) exec /bin/cat {dir}/rules.${{0##*/}} ;;
  fail) echo 'iptables v1.8.9 (legacy): cannot initialize table' >&2; exit 4 ;;
  hang) exec /bin/sleep 30 ;;
  garbage) echo '*nat'; echo ':KUBE-SERVICES - [0:0]'; echo '-A KUBE-SVC- -j'; echo 'junk' ;;
  *) echo "${{0##*/}}: not found" >&2; exit 127 ;;
esac
"""
# The last branch: a run started just before the tools were hidden ("missing") finds that
# mode. It fails, as running a tool that is not there would; printing nothing and exiting 0
# instead read as an empty ruleset: the endpoint's drop, seen while the tool was "missing".
REASONS = {"missing": "missing_tool", "fail": "failed", "hang": "timeout", "garbage": "garbage"}


def rules(*ips: str) -> str:
    web = ServicePortRules(namespace="default", name="web", port_name="http",
                           cluster_ip="10.96.0.10", port=80,
                           endpoints=tuple((ip, 8080) for ip in ips))
    return "\n".join(iptables_sync([web], previous={}, first=True)) + "\n"


class Tools:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        for tool in TOOLS:
            path = directory / tool
            path.write_text(SCRIPT.format(dir=directory))
            path.chmod(path.stat().st_mode | stat.S_IEXEC)
        (directory / "rules.ip6tables-legacy-save").write_text("*nat\n:KUBE-SERVICES - [0:0]\n"
                                                              "COMMIT\n")
        self.mode("good")

    def mode(self, mode: str) -> None:
        hidden = self.dir / "hidden"
        hidden.mkdir(exist_ok=True)
        for tool in TOOLS:  # "missing": the executables are not on PATH at all
            here, away = self.dir / tool, hidden / tool
            if mode == "missing" and here.exists():
                here.rename(away)
            elif mode != "missing" and away.exists():
                away.rename(here)
        (self.dir / "mode").write_text(mode)

    def programmed(self, *ips: str) -> None:
        (self.dir / "rules.iptables-legacy-save").write_text(rules(*ips))


def errors(agent: Agent, reason: str) -> float:
    value = agent.registry.get_sample_value("endpoint_propagation_dataplane_errors_total",
                                            {"reason": reason})
    return value or 0.0


def measured(agent: Agent) -> float:
    return agent.registry.get_sample_value("endpoint_propagation_duration_seconds_count", {
        "stage": "dataplane", "cause": "deletion", "proxy_mode": "iptables"}) or 0.0


@pytest.mark.parametrize("fault", sorted(REASONS))
async def test_episode_survives_a_broken_dataplane(fault: str, apiserver: ApiServer,
                                                   api: client.ApiClient, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tools = Tools(tmp_path)
    tools.programmed("10.0.0.1", "10.0.0.2")
    monkeypatch.setenv("PATH", str(tmp_path))  # only the stand-ins: never the real tools

    async def polling_legacy(wiring: DataplaneWiring) -> PollingSource:
        """What the settings would open, with a runner timeout short enough for the hang."""
        return PollingSource(reader=IptablesReader(CommandRunner(timeout=0.3), "legacy",
                                                   wiring.catalog.service_port_names),
                             clock=wiring.clock, metrics=wiring.health, interval=0.05)

    agent = await build_agent(AgentConfig(node_name="node-a", listen=("127.0.0.1", 0),
                                          watch=WatchSettings(backoff_initial=0.01)),
                              api=api, clock=SystemClock(), dataplane=polling_legacy)
    cluster = Cluster(apiserver)
    cluster.put_slice("web-abc", "web", Endpoint("10.0.0.1", "node-b"),
                      Endpoint("10.0.0.2", "node-b"))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await until(lambda: agent.ready() and bool(agent.catalog.service_port_names()), "ready")
        await asyncio.sleep(0.2)  # a few good reads: both endpoints selected

        cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
        await until(lambda: key("web", "10.0.0.1") in agent.tracker.episodes, "episode")
        tools.mode(fault)
        await until(lambda: errors(agent, REASONS[fault]) >= 1, "a failed read")
        tools.programmed("10.0.0.2")  # kube-proxy drops it while the agent cannot read
        async with aiohttp.ClientSession() as session, asyncio.timeout(30):
            while errors(agent, REASONS[fault]) < 3:
                async with session.get(f"{agent.http.url}/metrics") as response:
                    assert response.status == 200  # still answering
                await asyncio.sleep(0.05)
        assert agent.tracker.episodes[key("web", "10.0.0.1")].dataplane is None

        tools.mode("good")
        await until(lambda: agent.tracker.episodes[key("web", "10.0.0.1")].dataplane
                    is not None, "drop seen after recovery")
        cluster.drop_endpoint("web-abc", "10.0.0.1")  # the pod went
        await until(lambda: measured(agent) == 1, "measured")
        # When the drop happened is known only to lie after the last good read: the
        # timestamp's precision bound says so (docs/dataplane.md).
        (episode,) = agent.tracker.finished
        assert episode.dataplane is not None
        assert episode.dataplane.precision >= 0.15
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
