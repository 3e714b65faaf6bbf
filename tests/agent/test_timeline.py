"""The /timeline page in real headless Chromium: the episodes of /debug/episodes are drawn,
unsafe ones marked; a screenshot is kept as a test artifact (test-artifacts/timeline.png, or
$OBSERVER_TEST_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path

import aiohttp
import pytest

from observer.config import AgentConfig, TrafficSettings
from observer.values import Connection, Timestamp
from tests.agent.harness import AgentEnv
from tests.agent.test_episodes import ready_service, safe_deletion, unsafe_deletion
from tests.conftest import REPO, ManualClock, require_tool


@pytest.fixture
def agent_config(agent_config: AgentConfig) -> AgentConfig:
    """The page draws connections: they are followed (root: the test suite runs as root)."""
    return dataclasses.replace(agent_config, traffic=TrafficSettings(mode="on"))

ARTIFACTS = Path(os.environ.get("OBSERVER_TEST_ARTIFACTS", REPO / "test-artifacts"))


async def chromium(url: str, *flags: str) -> str:
    """Headless, a fresh profile, and none of Chromium's own network traffic (the machine's
    network is closed; only the agent on 127.0.0.1 is reached)."""
    with tempfile.TemporaryDirectory(prefix="observer-chromium-") as profile:
        return await _chromium(url, profile, *flags)


async def _chromium(url: str, profile: str, *flags: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        require_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic",
        f"--user-data-dir={profile}", "--virtual-time-budget=3000",
        "--window-size=1200,700", *flags, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


async def two_episodes(env: AgentEnv, clock: ManualClock) -> None:
    """One safe deletion (web-0), one unsafe (web-1: stopped before the dataplane dropped);
    web-2 stays Ready, so kube-proxy's fallback never applies."""
    await ready_service(env, pods=3)
    await safe_deletion(env, clock, "web-0", "10.0.0.1", 1)
    await unsafe_deletion(env, clock, "web-1", "10.0.0.2", 2)


async def test_timeline_draws_the_episodes(env: AgentEnv, clock: ManualClock) -> None:
    await two_episodes(env, clock)
    url = env.agent.http.url
    async with aiohttp.ClientSession() as session, session.get(f"{url}/debug/episodes") as r:
        episodes = json.loads(await r.text())["finished"]
    assert len(episodes) == 2

    dom = await chromium(f"{url}/timeline", "--dump-dom")
    drawn = re.findall(r'<g class="episode( unsafe)?" data-endpoint="([^"]+)" '
                       r'data-service="([^"]+)" data-unsafe="(true|false)"', dom)
    assert sorted((endpoint, service, unsafe) for _, endpoint, service, unsafe in drawn) == \
        sorted((f"{e['endpoint']['ip']}:{e['endpoint']['port']}", e["service"],
                str(e["unsafe"]).lower()) for e in episodes)
    assert 'data-episodes="2"' in dom
    # The stages as bars: the safe one ends in headroom, the unsafe one in its unsafe window.
    assert dom.count('<rect class="controller"') == 2
    assert dom.count('<rect class="dataplane"') == 2
    assert dom.count('<rect class="headroom"') == 1
    assert dom.count('<rect class="unsafe-window"') == 1
    assert "unsafe: 0.375 s" not in dom  # durations live in the hover titles and the table:
    assert "unsafe-window: 0.375 s" in dom
    assert "0.375" in re.sub(r"<title>.*?</title>", "", dom)  # the table's unsafe window

    shot = fresh_artifact("timeline.png")
    await chromium(f"{url}/timeline", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a drawn page, not a blank one


async def test_timeline_shows_the_connections(env: AgentEnv, clock: ManualClock) -> None:
    """The connections an episode's traffic record holds (what conntrack events put there:
    tests/traffic run them on the real kernel) are drawn and counted in the table."""
    book = env.agent.book
    assert book is not None, "traffic is followed wherever the agent runs as root"
    await two_episodes(env, clock)

    def connect(ip: str, *, local: bool) -> None:
        book.connection(Connection(ip, 8080, "TCP", local, Timestamp(
            clock.monotonic(), clock.wall(), "conntrack", 0.0)))

    clock.advance(0.5)
    connect("10.0.0.1", local=True)  # after its pod stopped
    connect("10.0.0.2", local=False)
    connect("10.0.0.2", local=False)
    dom = await chromium(f"{env.agent.http.url}/timeline", "--dump-dom")
    ticks = re.findall(r'<rect class="last-connection( failed)?" data-source="(\w+)"', dom)
    assert sorted(ticks) == [(" failed", "forwarded"), (" failed", "local")]
    cells = re.findall(r'<td class="num">(\d*)</td><td class="num">(\d*)</td>'
                       r'<td class="num">(\d*)</td></tr>', dom)
    # Both pods ran on this node: at their stop the kernel held no open flow to them.
    assert sorted(cells) == [("0", "1", "0"), ("0", "2", "0")]


def fresh_artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    return path
