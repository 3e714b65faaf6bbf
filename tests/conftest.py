"""Fixtures shared by the whole suite."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import pytest
from kubernetes_asyncio import client, config

from observer.export.metrics import configure_exposition
from observer.lab.apiserver.server import ApiServer
from tests.netns import Netns

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def pytest_configure(config: pytest.Config) -> None:
    """Process-wide settings, as `observer` makes them at its start. And: SIGTERM (what
    `timeout`, CI runners and the kubelet send) ends the run as Ctrl-C does: pytest then tears
    down every fixture still set up, so network namespaces, servers and child processes are
    removed rather than left behind by a process that just died."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    configure_exposition()  # as `observer` does at its start


def dump_tasks(out: Any) -> None:
    """Every thread's stack and every asyncio task's (where each ``await`` waits): the state of
    a test that hangs."""
    out.write("\n+++ threads +++\n")
    out.flush()
    faulthandler.dump_traceback(file=out, all_threads=True)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for task in asyncio.all_tasks(loop):
        out.write(f"\n+++ {task!r}\n")
        task.print_stack(file=out)
    out.flush()


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's signal method, dumping asyncio tasks as well as threads when it fires
    (a thread dump alone shows only the event loop waiting in ``select``)."""
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own handling (the thread method)

    def fire(signum: int, frame: FrameType | None) -> None:
        dump_tasks(sys.__stderr__)
        pytest.fail(f"Timeout: the test ran for more than {settings.timeout} s (its threads "
                    f"and tasks are printed above)", pytrace=False)

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout calls it
    signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


@dataclass
class ManualClock:
    """A clock the test moves by hand: ``advance`` moves both clocks, ``step_wall`` only the
    wall clock (as NTP or an operator would)."""

    mono: float = 1000.0
    wall_time: float = 1_800_000_000.25

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall_time

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_time += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall_time += seconds


def require_tool(name: str) -> str:
    """Path of a binary the test needs. Missing: skip on a developer machine, fail in CI
    (where .ci/run installs everything, so a missing tool is a broken set-up)."""
    candidates = (REPO / ".tools" / "bin" / name, Path(sys.executable).parent / name)
    found = next((str(c) for c in candidates if c.exists()), None) or shutil.which(name)
    if found is None:
        missing(f"{name} is not installed (scripts/setup.sh installs it)")
    return found


def without_capabilities() -> list[str]:
    """A command prefix that runs the rest as root with no capability at all (``setpriv``
    empties the bounding and inheritable sets, so ``execve`` grants root none; no new
    privileges after). The user stays root: the checkout and its ``.venv`` stay readable
    whatever their mode, as they must for a root user's clone in ``/root`` (mode 0700, which
    ``nobody`` could not enter); what is missing is exactly the capabilities."""
    require_root()
    return [require_tool("setpriv"), "--inh-caps=-all", "--bounding-set=-all",
            "--no-new-privs"]


def missing(message: str) -> NoReturn:
    """Something the test needs is absent: skip on a developer machine, fail in CI."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_root() -> None:
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root; this test needs it")
        pytest.skip("needs root")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def apiserver(clock: ManualClock) -> AsyncIterator[ApiServer]:
    server = ApiServer(clock=clock, bookmark_interval=0.2)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def kubeconfig(apiserver: ApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    apiserver.write_kubeconfig(path)
    return path


async def client_configuration(kubeconfig: Path) -> client.Configuration:
    """kubernetes_asyncio's configuration for the lab API server, from its kubeconfig."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig),
                                  client_configuration=configuration)
    return configuration


@pytest.fixture
async def api(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    async with client.ApiClient(await client_configuration(kubeconfig)) as api_client:
        yield api_client


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Every test leaves no asyncio task behind (checked after all its other fixtures end)."""
    yield
    current = asyncio.current_task()
    for _ in range(3):  # let tasks that were cancelled a moment ago finish unwinding
        await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not leaked, f"leaked asyncio tasks: {leaked}"


@pytest.fixture
def netns() -> Iterator[Netns]:
    require_root()
    for tool in ("ip", "nft", "iptables-legacy-restore", "iptables-nft-restore"):
        require_tool(tool)
    name = f"obs-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
