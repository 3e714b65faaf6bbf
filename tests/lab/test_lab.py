"""The lab, small: every truth is measured on every node, close to the truth; bad flags are
refused plainly; an interrupted lab leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from observer.clock import SystemClock
from observer.lab.config import Delay, LabConfig
from observer.lab.results import compare
from observer.lab.scenario import Lab
from tests.conftest import require_root

SMALL = LabConfig(nodes=2, deletions=8, prestop=1.0, app_exit=Delay(0.1, 0.3), spacing=0.3,
                  grace=10)


async def run_lab(settings: LabConfig) -> tuple[dict[str, Any], str]:
    lab = Lab(settings, clock=SystemClock())
    run = await lab.run()
    measured = [(n.name, e) for n in run.nodes if n.agent for e in n.agent.tracker.finished]
    return compare(measured, run.truth.episodes, [n.name for n in run.nodes]), \
        lab.namespaces.prefix


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout


def check(result: dict[str, Any], settings: LabConfig) -> None:
    assert result["truth"]["episodes"] == settings.deletions
    assert result["measured"]["stages"]["controller"]["count"] == settings.deletions
    assert result["measured"]["stages"]["dataplane"]["count"] == (settings.deletions
                                                                   * settings.nodes)
    assert result["measured"]["abandoned"] == {}
    assert result["unmatched_measurements"] == 0
    for stage in ("controller", "dataplane", "total"):
        # A correctness bound, not a speed target: the benchmark records the real accuracy.
        assert result["errors"][stage]["p99_abs_error"] < 0.25, (stage, result["errors"])
    # Every node, the pod's own and the others (which learn the stop from the terminal pods).
    assert result["unsafe"]["false_positive"] == 0, result["unsafe"]
    assert result["unsafe"]["missed"] == 0, result["unsafe"]
    assert result["unsafe"]["on_other_nodes"]["true"] > 0
    assert result["truth"]["unsafe_terminations"] > 0  # the hasty workload has no preStop
    assert result["recommendation"]["prestop_seconds"] is not None


async def test_lab_in_memory() -> None:
    settings = LabConfig(**{**SMALL.__dict__, "dataplane": "memory"})
    check((await run_lab(settings))[0], settings)


@pytest.mark.parametrize("dataplane", ["nftables", "iptables", "iptables-legacy"])
async def test_lab_with_real_rules(dataplane: str) -> None:
    require_root()
    settings = LabConfig(**{**SMALL.__dict__, "dataplane": dataplane})
    result, prefix = await run_lab(settings)
    check(result, settings)
    assert prefix not in await asyncio.to_thread(namespaces)


def observer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "observer.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize(("flags", "message"), [
    (["--nodes", "0"], "--nodes must be at least 1"),
    (["--prestop", "40"], "must end before the grace period"),
    (["--controller-delay", "-1"], "non-negative"),
    (["--proxy-delay", "2..1"], "ranges go up"),
    (["--app-exit", "soon"], "is not seconds"),
    (["--deletions", "0"], "--deletions must be at least 1"),
])
def test_bad_flags_are_refused_plainly(flags: list[str], message: str) -> None:
    result = observer("lab", *flags)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_json_report(tmp_path: Any) -> None:
    result = observer("--log-format", "json", "lab", "--dataplane", "memory", "--nodes", "2",
                      "--deletions", "4", "--prestop", "1", "--json",
                      "--svg", str(tmp_path / "t.svg"))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout[result.stdout.index("{\n"):])
    assert set(document) >= {"truth", "measured", "errors", "unsafe", "recommendation"}
    assert set(document["measured"]["stages"]) == {"controller", "dataplane", "total"}
    assert document["timeline"] == str(tmp_path / "t.svg")
    assert (tmp_path / "t.svg").read_text().startswith("<svg")


async def test_interrupted_serve_cleans_up() -> None:
    require_root()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "observer.cli", "--log-format", "json", "lab", "--serve",
        "--dataplane", "nftables", "--nodes", "2", "--deletions", "200",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ})
    try:
        assert proc.stdout is not None
        announced: list[str] = []
        while len(announced) < 3:  # the kubeconfig, then one URL per agent
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
            assert line, "the lab ended before announcing itself"
            if not line.startswith("{"):
                announced.append(line)
        assert announced[0].endswith("kubeconfig")
        assert all(url.startswith("http://127.0.0.1:") for url in announced[1:])
        drain = asyncio.create_task(proc.stdout.read())  # the log lines keep coming
        proc.send_signal(signal.SIGINT)  # in the middle of the deletions
        assert await asyncio.wait_for(proc.wait(), 60) == 130
        await drain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    prefix = announced[0].split("/")[-2]  # .../observer-lab-XXXX/kubeconfig
    assert prefix.startswith("observer-lab-")
    assert not await asyncio.to_thread(os.path.exists, announced[0])
    assert "obs-lab-" not in await asyncio.to_thread(namespaces)


async def test_ctrl_c_while_serving_ends_normally() -> None:
    require_root()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "observer.cli", "lab", "--serve", "--dataplane", "nftables",
        "--nodes", "2", "--deletions", "4", "--prestop", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        drain = asyncio.create_task(proc.stdout.read())  # type: ignore[union-attr]
        while b"serving until Ctrl-C" not in await asyncio.wait_for(proc.stderr.readline(), 90):
            pass
        assert "obs-lab-" in await asyncio.to_thread(namespaces)
        proc.send_signal(signal.SIGTERM)
        errors = await asyncio.wait_for(proc.stderr.read(), 60)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, errors.decode()
        out = (await drain).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "recommendation: preStop sleep of" in out  # the report, as without --serve
    # observer report, run on the lab: four deletions are too few for it to recommend.
    assert "`observer report` on the lab" in out
    assert "not recommending anything: only 4 deletions measured" in out
    assert "obs-lab-" not in await asyncio.to_thread(namespaces)
