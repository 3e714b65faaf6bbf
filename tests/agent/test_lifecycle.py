"""Readiness, shutdown, stalled streams, clock steps and the real ``observer run`` command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from kubernetes_asyncio import client

from observer.agent import build_agent
from observer.config import AgentConfig, DataplaneSettings, WatchSettings
from observer.lab.apiserver.server import ApiServer
from tests.agent.harness import AgentEnv, Cluster, Endpoint, key, until
from tests.agent.test_episodes import ready_service
from tests.conftest import ManualClock
from tests.dataplane.edits import load
from tests.netns import Netns


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_ready_only_after_both_lists_then_clean_stop(
        apiserver: ApiServer, api: client.ApiClient, clock: ManualClock) -> None:
    apiserver.faults.fail_next(10_000, code=503, method="GET", path="/pods")
    agent = await build_agent(AgentConfig(node_name="node-a", listen=("127.0.0.1", 0),
                                          watch=WatchSettings(backoff_initial=0.01,
                                                              backoff_max=0.02),
                                          dataplane=DataplaneSettings(mode="none")),
                              api=api, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await until(lambda: bool(agent.http.url) and agent.slices.synced.is_set(), "slices synced")
    assert await get(f"{agent.http.url}/healthz") == (200, "ok\n")
    assert (await get(f"{agent.http.url}/readyz"))[0] == 503
    apiserver.faults.clear()
    await until(agent.ready, "ready")
    assert (await get(f"{agent.http.url}/readyz"))[0] == 200
    url = agent.http.url
    stop.set()
    await asyncio.wait_for(task, 5)
    assert not agent.ready()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(f"{url}/healthz")


@pytest.fixture
def agent_config() -> AgentConfig:
    return AgentConfig(node_name="node-a", listen=("127.0.0.1", 0), housekeeping_interval=0.01,
                       watch=WatchSettings(inactivity_timeout=0.3, backoff_initial=0.01,
                                           backoff_max=0.05))


async def test_stalled_stream_is_noticed_and_resumed(env: AgentEnv) -> None:
    await ready_service(env, node="node-b")
    await env.watching("endpointslices")
    env.cluster.server.faults.stall_streams("endpointslices")
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
    # Nothing arrives on the stalled stream (bookmarks neither); after 0.3 s of silence the
    # agent resumes from its last version and gets the change from the replayed history.
    await env.settle_episode(key("web", "10.0.0.1"))
    assert env.restarts("endpointslices", "stalled") >= 1
    assert env.abandoned("watch_gap") == 0


async def test_wall_clock_steps_do_not_change_durations(env: AgentEnv,
                                                        clock: ManualClock) -> None:
    await ready_service(env)
    env.cluster.delete_pod("web-0")
    await env.seen("pods")
    clock.advance(0.25)
    clock.step_wall(-3600)  # NTP or an operator steps the wall clock back an hour
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
    await env.settle_episode(key("web", "10.0.0.1"))
    clock.advance(0.5)
    clock.step_wall(7200)
    env.dataplane.set(key("web", "10.0.0.1"), False)
    clock.advance(1)
    env.cluster.pod_terminated("web-0")
    await env.settle_finished(1)
    assert env.stage_sum("controller") == 0.25
    assert env.stage_sum("dataplane") == 0.5
    assert env.stage_sum("total") == 0.75


async def read_json_line(stream: asyncio.StreamReader, event: str) -> dict[str, object]:
    while True:
        line = await asyncio.wait_for(stream.readline(), 30)
        assert line, f"process ended before logging {event!r}"
        record = json.loads(line)
        if record.get("event") == event:
            return record  # type: ignore[no-any-return]


async def terminate(proc: asyncio.subprocess.Process) -> str:
    """SIGTERM, then the rest of the output (read to its end: an unread pipe can block the
    agent's logging); fails with that output unless the agent exits 0 within 10 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        raise AssertionError(f"agent still running 10 s after SIGTERM:\n{out.decode()}"
                             ) from None
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def start_agent(kubeconfig: Path, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "OBSERVER_NODE_NAME": "node-a"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "observer.cli", "--log-format", "json", "run",
        "--kubeconfig", str(kubeconfig), "--listen", "127.0.0.1:0", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


@pytest.mark.parametrize("debug", [True, False])
async def test_observer_run_command(apiserver: ApiServer, kubeconfig: Path,
                                    debug: bool) -> None:
    proc = await start_agent(kubeconfig, "--dataplane", "none",
                             "--debug-endpoints" if debug else "--no-debug-endpoints")
    try:
        assert proc.stdout is not None
        started = await read_json_line(proc.stdout, "agent started")
        url = str(started["url"])
        assert started["node"] == "node-a"
        await until_ready(url)
        status, body = await get(f"{url}/debug/episodes")
        timeline_status, page = await get(f"{url}/timeline")
        if debug:
            assert status == 200
            assert json.loads(body)["node"] == "node-a"
            assert timeline_status == 200
            assert 'fetch("debug/episodes"' in page
        else:
            assert (status, timeline_status) == (404, 404)
        status, body = await get(f"{url}/metrics")
        assert 'endpoint_propagation_build_info{proxy_mode="none"' in body
        assert '"event": "agent stopped"' in await terminate(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_observer_run_imports_only_the_parts_of_kubernetes_asyncio_it_calls(
        apiserver: ApiServer, kubeconfig: Path) -> None:
    """The agent's process, listing and watching: no model and no API class it does not call
    imported (observer/kube/imports.py; -X importtime names every module imported)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "importtime", "-m", "observer.cli", "--log-format", "json", "run",
        "--kubeconfig", str(kubeconfig), "--listen", "127.0.0.1:0", "--dataplane", "none",
        env={**os.environ, "OBSERVER_NODE_NAME": "node-a"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stderr is not None
    imported = asyncio.create_task(proc.stderr.read())  # drained: a full pipe would block it
    try:
        started = await read_json_line(proc.stdout, "agent started")
        url = str(started["url"])
        await until_ready(url)
        cluster = Cluster(apiserver)
        uid = cluster.create_pod("web-0", "node-a", "10.0.0.1")
        cluster.put_slice("web-abc", "web", Endpoint("10.0.0.1", "node-a", "web-0", uid))
        await until_seen(url, 'watch_events_total{resource="pods"}',
                         'watch_events_total{resource="endpointslices"}')
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        modules = {line.rpartition("|")[2].strip()
                   for line in (await imported).decode().splitlines()}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await imported
    assert proc.returncode == 0
    assert "kubernetes_asyncio.config.kube_config" in modules
    assert not {name for name in modules if name.startswith(
        ("kubernetes_asyncio.client.models.", "kubernetes_asyncio.client.api.apps"))}


async def until_seen(url: str, *series: str) -> None:
    """Until the agent's metrics have every one of ``series``; no deadline of its own."""
    while True:
        _, body = await get(f"{url}/metrics")
        if all(name in body for name in series):
            return
        await asyncio.sleep(0.02)


async def until_ready(url: str) -> None:
    """No deadline of its own (a busy machine starts a process slowly): the test's timeout is
    the bound, and its dump names this wait."""
    while (await get(f"{url}/readyz"))[0] != 200:  # noqa: ASYNC110 (another process)
        await asyncio.sleep(0.02)


async def test_observer_run_reads_a_namespaces_dataplane(apiserver: ApiServer,
                                                         kubeconfig: Path,
                                                         netns: Netns) -> None:
    load(netns, "nftables")
    proc = await start_agent(kubeconfig, "--dataplane", "auto", "--netns", netns.name)
    try:
        assert proc.stdout is not None
        started = await read_json_line(proc.stdout, "agent started")
        assert started["proxy_mode"] == "nftables"
        _, body = await get(f"{started['url']}/metrics")
        assert 'endpoint_propagation_build_info{proxy_mode="nftables"' in body
        assert '"event": "agent stopped"' in await terminate(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_observer_run_without_kube_proxy_rules_says_so(apiserver: ApiServer,
                                                             kubeconfig: Path,
                                                             netns: Netns) -> None:
    proc = await start_agent(kubeconfig, "--dataplane", "auto", "--netns", netns.name)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"no dataplane mode found" in out
    assert b"no KUBE- rules in either iptables backend" in out
    assert b"--dataplane none" in out
    assert b"Traceback" not in out


async def test_observer_run_without_node_name_fails_clearly(kubeconfig: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_NAME", "OBSERVER_NODE_NAME")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "observer.cli", "--log-format", "json", "run",
        "--kubeconfig", str(kubeconfig), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"no node name" in out
    assert b"Traceback" not in out
