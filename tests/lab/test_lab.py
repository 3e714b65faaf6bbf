"""The lab, small: every truth is measured on every node, close to the truth; bad flags are
refused plainly; an interrupted lab leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from observer.clock import SystemClock
from observer.lab.config import Delay, LabConfig
from observer.lab.results import compare
from observer.lab.scenario import Lab
from tests import noisy
from tests.conftest import require_root

SMALL = LabConfig(nodes=2, deletions=8, prestop=1.0, app_exit=Delay(0.1, 0.3), spacing=0.3,
                  grace=10)


async def run_lab(settings: LabConfig) -> tuple[dict[str, Any], str]:
    lab = Lab(settings, clock=SystemClock())
    run = await lab.run()
    measured = [(n.name, e) for n in run.nodes if n.agent for e in n.agent.tracker.finished]
    result = compare(measured, run.truth.episodes, [n.name for n in run.nodes])
    result["traffic"] = run.traffic
    return result, lab.namespaces.prefix


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout


def check(result: dict[str, Any], settings: LabConfig) -> None:
    assert result["truth"]["episodes"] == settings.deletions
    assert result["measured"]["stages"]["controller"]["count"] == settings.deletions
    assert result["measured"]["stages"]["dataplane"]["count"] == (
        settings.deletions * settings.nodes), result["measured"]["unmeasured"]
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


@pytest.mark.parametrize("dataplane", ["nftables", "iptables", "iptables-legacy", "cilium"])
async def test_lab_with_real_rules(dataplane: str) -> None:
    require_root()
    settings = LabConfig(**{**SMALL.__dict__, "dataplane": dataplane})
    result, prefix = await run_lab(settings)
    check(result, settings)
    assert prefix not in await asyncio.to_thread(namespaces)
    mounts = await asyncio.to_thread(Path("/proc/mounts").read_text)
    assert "observer-lab-" not in mounts  # the cilium lab's BPF filesystem
    # Real pods, real clients: the hasty workload's deletions failed real requests, and each
    # node's agent counted the failed connection attempts through it, every difference named.
    traffic = result["traffic"]
    assert traffic["failed_by_workload"].get("hasty", 0) > 0
    assert traffic["attempts_reaching_no_pod"] == 0, traffic["attempts_reaching_no_pod_detail"]
    assert traffic["unexplained"] == 0, traffic["nodes"]
    for node in traffic["nodes"].values():
        for source in ("local", "forwarded"):
            assert node["agents_connections_after_stop"][source] == (
                node["clients_failed_connections"][source] - node["before_stop_seen"][source])
    assert traffic["agents_connections_after_stop"] > 0
    # The connections the pods closed under their clients, as the agents counted them: of
    # request/response clients, now and then one more counted than the clients found (a race
    # not yet pinned down; streams are exact: the verify test).
    for workload, cut in traffic["cut_by_workload"].items():
        assert 0 <= cut["agents"] - cut["clients"] <= 1, (workload, traffic["cut_by_client"])
    assert result["recommendation"]["set_by"] in ("kube-proxy", "ingress")


def observer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "observer.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(("flags", "message"), [
    (["--nodes", "0"], "--nodes must be at least 1"),
    (["--prestop", "40"], "must end before the grace period"),
    (["--controller-delay", "-1"], "non-negative"),
    (["--proxy-delay", "2..1"], "ranges go up"),
    (["--app-exit", "soon"], "is not seconds"),
    (["--deletions", "0"], "--deletions must be at least 1"),
    (["--workloads", "careful,lazy"], "distinct ones of careful, hasty, draining"),
    (["--workloads", "hasty,hasty"], "distinct ones of"),
    (["--request-rate", "0"], "between 0 and 100"),
    (["--verify", "--serve"], "do not go together"),
    (["--ingress-workloads", "draining"], "--ingress-workloads names workloads of --workloads"),
])
def test_bad_flags_are_refused_plainly(flags: list[str], message: str) -> None:
    result = observer("lab", *flags)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_json_report(tmp_path: Any) -> None:
    # With the libraries warning as it runs: stdout is the JSON document and nothing else.
    result = noisy.observer("--log-format", "json", "lab", "--dataplane", "memory", "--nodes",
                            "2", "--deletions", "4", "--prestop", "1", "--json",
                            "--svg", str(tmp_path / "t.svg"))
    assert result.returncode == 0, result.stderr
    assert all(mark in result.stderr for mark in noisy.MARKS), result.stderr
    document = json.loads(result.stdout)
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
    assert proc.stdout is not None
    assert proc.stderr is not None
    logged = asyncio.create_task(proc.stderr.read())  # the log lines keep coming
    try:
        announced: list[str] = []
        while len(announced) < 3:  # the kubeconfig, then one URL per agent
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
            assert line, "the lab ended before announcing itself"
            announced.append(line)  # stdout carries these alone: the log is on stderr
        assert announced[0].endswith("kubeconfig")
        assert all(url.startswith("http://127.0.0.1:") for url in announced[1:])
        drain = asyncio.create_task(proc.stdout.read())
        proc.send_signal(signal.SIGINT)  # in the middle of the deletions
        assert await asyncio.wait_for(proc.wait(), 60) == 130
        await drain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await logged
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


@pytest.mark.parametrize(("dataplane", "workloads", "fronted"), [
    ("nftables", "hasty,draining,streaming", "hasty"),
    ("iptables", "careful,hasty,draining", "hasty"),
    ("iptables-legacy", "hasty,streaming", "hasty"), ("cilium", "hasty,draining", "hasty")])
def test_verify_each_workloads_own_preStop_leaves_no_failed_request(
        dataplane: str, workloads: str, fronted: str) -> None:
    """The ingress (2-3 s behind the EndpointSlices) fronts hasty only: run 1 fails hasty's
    requests, its own recommendation covers the ingress, the others' come from kube-proxy's
    pace; run 2, with the report's patches applied to the Deployments, fails none and spends
    less preStop time than the one cluster-wide number would have. The connections the pods
    cut are what their clients found cut, workload by workload; the streaming workload's are
    the report's "drain" finding, to the connection. (Cilium's maps carry no service traffic
    here: no streams.)"""
    require_root()
    done = observer("lab", "--verify", "--json", "--nodes", "2", "--deletions", "12",
                    "--dataplane", dataplane, "--ingress-delay", "2..3", "--prestop", "1",
                    "--workloads", workloads, "--ingress-workloads", fronted, timeout=300)
    assert done.returncode == 0, done.stderr
    first, second = json.loads(done.stdout)["runs"]  # stdout: the JSON alone
    assert "observer lab: run 2 of 2: deleting" in done.stderr  # progress, plain lines
    hasty = first["workloads"]["hasty"]
    assert hasty["failed"] > 0  # no preStop, and the slow ingress
    assert "ingress" in hasty["consumers"]
    rec = hasty["recommendation"]
    assert rec["prestop_seconds"] >= 3  # covers the ingress' delay
    for name, one in first["workloads"].items():
        two = second["workloads"][name]
        if name not in fronted.split(","):
            assert "ingress" not in one["consumers"]
            assert one["recommendation"]["prestop_seconds"] <= 3  # kube-proxy's pace
            assert one["recommendation"]["prestop_seconds"] < rec["prestop_seconds"]
        # Run 2 ran with the report's patches: each its own number, or what it had if that
        # was enough already.
        assert two["prestop_seconds"] == max(one["recommendation"]["prestop_seconds"],
                                             one["prestop_seconds"]) or (
            two["prestop_seconds"] == one["prestop_seconds"]
            and not set(one["recommendation"]["findings"]) & {"at-risk", "no-prestop"})
        assert two["failed"] == 0, (name, second["traffic"]["failed_by_client"])
        assert set(one) >= {"prestop_seconds", "set_by", "requests", "failed",
                            "prestop_seconds_spent"}
    assert second["workloads"]["hasty"]["set_by"] == rec["set_by"]
    assert second["traffic"]["requests"] > 0
    assert second["traffic"]["failed"] == 0, second["traffic"]["failed_by_client"]
    spent = sum(w["prestop_seconds_spent"] for w in second["workloads"].values())
    wide = first["cluster_wide"]
    assert wide["prestop_seconds"] >= rec["prestop_seconds"]
    assert spent < wide["prestop_seconds_spent"]
    for run in (first, second):
        assert run["traffic"]["unexplained"] == 0, run["traffic"]["nodes"]
        for name, w in run["workloads"].items():
            # Streams exactly; request/response clients' connections now and then one more
            # counted than found (a race not yet pinned down).
            difference = w["cut"]["agents"] - w["cut"]["clients"]
            assert difference == 0 if name == "streaming" else 0 <= difference <= 1, (
                name, run["traffic"])
    if "streaming" in workloads:
        streaming = first["workloads"]["streaming"]
        assert "stream" in streaming["consumers"]
        # Its 4 first pods are deleted in turn (the oldest first): each of the 2 nodes' 2
        # streams is cut at least once.
        assert streaming["cut"]["clients"] >= 2 * 2
        assert "drain" in streaming["recommendation"]["findings"]
        assert streaming["recommendation"]["cut_connections"] == streaming["cut"]["clients"]
    # The picture says it per workload too (run 2's, the last written).
    picture = Path(second["timeline"]).read_text()
    two = second["workloads"]["hasty"]
    assert f"hasty: preStop {two['prestop_seconds']:g} s ({rec['set_by']}), failed 0" in picture
