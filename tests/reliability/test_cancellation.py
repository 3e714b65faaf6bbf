"""Every long-running task ends promptly when cancelled, whatever it is doing at that moment,
on a busy machine: each change source (on real rules in a network namespace), the watch, the
agent, the lab API server with watches open, and the whole lab (its controller, kubelets,
kube-proxies and agents). Each is started, cancelled after a random delay, and must have ended
within ``BOUND`` seconds, every time, while two processes keep both cores busy.

A cancellation that is swallowed (taken for a child's own and suppressed) leaves the task
running for ever: the way the agent once failed to stop on SIGTERM (docs/reliability.md)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from observer.agent import build_agent, given
from observer.clock import SystemClock
from observer.config import AgentConfig, WatchSettings
from observer.dataplane.commands import CommandRunner
from observer.dataplane.memory import MemoryDataplane
from observer.dataplane.mode import Wiring
from observer.dataplane.modes import open_source
from observer.dataplane.sources import MonitorSource
from observer.kube.watch import ResourceWatch
from observer.lab.apiserver.server import ApiServer
from observer.lab.config import Delay, LabConfig
from observer.lab.scenario import Lab
from tests.conftest import client_configuration, dump_tasks
from tests.dataplane.edits import load
from tests.netns import Netns

BOUND = 1.0  # seconds from cancel() to the task's end
WATCH = WatchSettings(inactivity_timeout=5.0, backoff_initial=0.01, backoff_max=0.05)


@pytest.fixture(scope="module", autouse=True)
def busy_cores() -> Iterator[None]:
    """Two processes spinning for the whole module: the scheduler gives the test less."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


class _Nothing:
    """Metrics nobody reads (the dataplane's and the watch's protocols both)."""

    def scan(self, seconds: float) -> None: ...

    def error(self, reason: str) -> None: ...

    def drift(self, count: int) -> None: ...

    def event(self, resource: str) -> None: ...

    def restart(self, resource: str, reason: str) -> None: ...

    def malformed(self, resource: str) -> None: ...

    def invalid_input(self, resource: str, reason: str) -> None: ...


class _Discard:
    """A watch sink that keeps nothing."""

    def list_page(self, items: list[dict[str, object]], *, first: bool) -> None: ...

    def listed(self, *, relist: bool) -> None: ...

    def event(self, event_type: str, obj: dict[str, object], *, precision: float) -> None: ...


async def cancelled_at_random(run: Callable[[], Coroutine[Any, Any, None]], *, trials: int,
                              within: float, seed: int) -> list[float]:
    """Start ``run()``, cancel it after a random delay in [0, within), ``trials`` times; how
    long each took to end once cancelled. Fails at the first that takes longer than BOUND."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    took = []
    for trial in range(trials):
        task = asyncio.create_task(run())
        delay = rng.uniform(0.0, within)
        await asyncio.wait({task}, timeout=delay)
        if task.done():  # it may not end by itself: that is a failure, shown as it is
            task.result()
            raise AssertionError(f"trial {trial}: ended by itself after {delay:.3f} s")
        cancelled = loop.time()
        task.cancel()
        await asyncio.wait({task}, timeout=BOUND)
        if not task.done():
            dump_tasks(sys.__stderr__)
            task.cancel()  # so the module's other tests still run; the verdict stands
            await asyncio.wait({task}, timeout=30)
            raise AssertionError(f"trial {trial} (cancelled {delay:.3f} s after the start) "
                                 f"was still running {BOUND} s later; tasks printed above")
        took.append(loop.time() - cancelled)
        assert task.cancelled(), f"trial {trial}: the cancellation was swallowed ({task!r})"
    return took


@pytest.mark.parametrize("mode", ["iptables-legacy", "iptables-nft", "nftables"])
async def test_a_change_source(netns: Netns, mode: str) -> None:
    load(netns, mode)

    async def run() -> None:
        source = await open_source("auto", Wiring(
            runner=CommandRunner(netns=netns.name), options={}, clock=SystemClock(),
            metrics=_Nothing(), poll_interval=0.05, poll_max_cpu=0.5))
        if isinstance(source, MonitorSource):
            source.schedule.resync_interval = 0.1  # full reads often: more moments inside one
        await source.run(lambda change: None)

    await cancelled_at_random(run, trials=30, within=0.6, seed=len(mode))


async def test_the_watch(apiserver: ApiServer, kubeconfig: Path) -> None:
    async with client.ApiClient(await client_configuration(kubeconfig)) as api:
        request = client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces

        async def run() -> None:
            await ResourceWatch(resource="endpointslices", request=request, sink=_Discard(),
                                metrics=_Nothing(), clock=SystemClock(), settings=WATCH).run()

        await cancelled_at_random(run, trials=30, within=0.3, seed=2)


async def test_the_agent(apiserver: ApiServer, kubeconfig: Path) -> None:
    clock = SystemClock()
    async with client.ApiClient(await client_configuration(kubeconfig)) as api:

        async def run() -> None:
            agent = await build_agent(
                AgentConfig(node_name="node-a", listen=("127.0.0.1", 0),
                            housekeeping_interval=0.01, watch=WATCH),
                api=api, clock=clock, dataplane=given(MemoryDataplane(clock=clock)))
            await agent.run(asyncio.Event())

        await cancelled_at_random(run, trials=30, within=0.4, seed=3)


async def test_the_lab_api_server_with_watches_open(tmp_path: Path) -> None:
    async def run() -> None:
        server = ApiServer(clock=SystemClock(), bookmark_interval=0.05)
        await server.start("127.0.0.1", 0)
        try:
            server.write_kubeconfig(tmp_path / "kubeconfig")
            async with client.ApiClient(await client_configuration(
                    tmp_path / "kubeconfig")) as api:
                watches = [ResourceWatch(resource=r, request=request, sink=_Discard(),
                                         metrics=_Nothing(), clock=SystemClock(),
                                         settings=WATCH).run()
                           for r, request in (
                               ("pods", client.CoreV1Api(api).list_pod_for_all_namespaces),
                               ("endpointslices", client.DiscoveryV1Api(
                                   api).list_endpoint_slice_for_all_namespaces))]
                await asyncio.gather(*watches)
        finally:
            await server.stop()

    await cancelled_at_random(run, trials=20, within=0.5, seed=4)


async def test_the_lab() -> None:
    config = LabConfig(nodes=2, deletions=200, dataplane="memory", replicas=2, spacing=0.05,
                       prestop=0.2, app_exit=Delay(0.02, 0.05), min_sync_period=0.05,
                       controller_delay=Delay(0.005, 0.02), proxy_delay=Delay(0.005, 0.02))

    async def run() -> None:
        await Lab(config, clock=SystemClock()).run()

    await cancelled_at_random(run, trials=8, within=2.5, seed=5)
