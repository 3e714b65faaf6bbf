"""``observer report --patches``: advice as patches, applied with the real kubectl to the lab API
server's objects (and built with real ``kubectl kustomize``); a second report then finds the
patched workloads fine."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from observer.lab.apiserver.server import ApiServer
from observer.report.patches import has_sleep_action
from tests.conftest import require_tool
from tests.kubectl import Kubectl
from tests.report.test_report import Agents, Own, create_workloads, observations, options, run

PATCHABLE = ("at-risk", "no-prestop", "over-provisioned", "grace-too-short")


@pytest.fixture
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(require_tool("kubectl"), kubeconfig)


async def evidence(agents: Agents, slow: str = "statefulset/db") -> tuple[str, ...]:
    """Rules path 2 s (as in test_report); the ``slow`` workload's consumer needs 11 s; the
    other of web and db has its own 25 deletions and no late connection: 2 s; apps exit
    within (1, 2] s; the rest fall back to the cluster-wide number."""
    fast = "deployment/web" if slow == "statefulset/db" else "statefulset/db"
    return (await agents.add(observations(
        controller=[0.2] * 50, dataplane=[0.3] * 50, app_shutdown=[2.0] * 25, workloads={
            ("shop", slow): Own(episodes=25, last_connection={"forwarded": [9.0] * 25}),
            ("shop", fast): Own(episodes=25)})),)


def prestop(obj: dict[str, Any], container: str) -> dict[str, Any]:
    spec = obj["spec"]["template"]["spec"]
    found = [c for c in spec.get("containers", []) + spec.get("initContainers", [])
             if c["name"] == container]
    return found[0].get("lifecycle", {}).get("preStop", {})  # type: ignore[no-any-return]


async def test_printed_commands_applied_with_kubectl_fix_the_workloads(
        agents: Agents, apiserver: ApiServer, kubeconfig: Path, kubectl: Kubectl) -> None:
    create_workloads(apiserver)
    urls = await evidence(agents)
    base = options(agents=urls, kubeconfig=str(kubeconfig), namespace="shop")
    code, before, _ = await run(base)
    assert code == 0
    found = {w["workload"]: w for w in json.loads(before)["workloads"]}

    code, printed, err = await run(options(agents=urls, kubeconfig=str(kubeconfig),
                                           namespace="shop", patches="-"))
    assert (code, err) == (0, "")
    commands = [shlex.split(line) for line in printed.splitlines()
                if not line.startswith("#")]
    targets = {(c[2], c[3]) for c in commands}
    # Those with a finding a patch fixes; a bare pod's hooks cannot change in place, and an
    # httpGet hook (edge: unknown) is not replaced.
    assert targets == {("deployment", "web"), ("statefulset", "db"),
                       ("replicaset", "orphan")}
    assert "# note: a bare pod cannot change its hooks in place" in printed
    for command in commands:
        assert command[:2] == ["kubectl", "patch"]
        await kubectl(*command[1:])

    web = await kubectl.json("get", "deployment", "web", "--namespace", "shop")
    db = await kubectl.json("get", "statefulset", "db", "--namespace", "shop")
    orphan = await kubectl.json("get", "replicaset", "orphan", "--namespace", "shop")
    # What the report said, with the sleep action (the lab API server says v1.34): db its
    # consumer's 11 s; web kube-proxy's 2 s, for its over-provisioned mesh sidecar (20 s, in
    # initContainers); web's own hook (sleep 5, then nginx -s quit: fine) untouched; orphan
    # the cluster-wide number.
    assert found["statefulset/db"]["recommended_prestop_seconds"] == 11
    assert prestop(db, "db") == {"sleep": {"seconds": 11}}
    assert found["deployment/web"]["recommended_prestop_seconds"] == 2
    assert prestop(web, "mesh") == {"sleep": {"seconds": 2}}
    assert prestop(web, "web")["exec"]["command"][2] == "sleep 5 && nginx -s quit"
    assert [c["name"] for c in web["spec"]["template"]["spec"]["containers"]] == ["web", "logs"]
    assert prestop(orphan, "app") == {"sleep": {"seconds": found["replicaset/orphan"][
        "recommended_prestop_seconds"]}}

    code, after, _ = await run(base)
    assert code == 0
    for workload in json.loads(after)["workloads"]:
        if workload["workload"] in ("deployment/web", "statefulset/db", "replicaset/orphan"):
            assert not set(workload["findings"]) & set(PATCHABLE), workload


async def test_patch_files_build_with_kustomize(
        agents: Agents, apiserver: ApiServer, kubeconfig: Path, kubectl: Kubectl,
        tmp_path: Path) -> None:
    create_workloads(apiserver)
    urls = await evidence(agents)
    patches = tmp_path / "patches"
    code, _, err = await run(options(agents=urls, kubeconfig=str(kubeconfig), namespace="shop",
                                     patches=str(patches)))
    assert code == 0
    assert "3 patch(es) written" in err
    files = sorted(p.name for p in patches.iterdir())
    assert files == ["shop.deployment.web.yaml", "shop.replicaset.orphan.yaml",
                     "shop.statefulset.db.yaml"]

    # A kustomization of the workloads as the cluster has them, with the patches.
    base = tmp_path / "base"
    base.mkdir()
    for kind, name in (("deployment", "web"), ("statefulset", "db"), ("replicaset", "orphan")):
        obj = await kubectl.json("get", kind, name, "--namespace", "shop")
        (base / f"{name}.json").write_text(json.dumps(obj))
    (base / "kustomization.yaml").write_text(json.dumps({
        "resources": ["web.json", "db.json", "orphan.json"],
        "patches": [{"path": f"../patches/{name}"} for name in files]}))
    _, built, _ = await kubectl("kustomize", "--load-restrictor", "LoadRestrictionsNone",
                                str(base))
    assert "seconds: 11" in built  # db's new hook
    assert "- sleep\n" not in built  # orphan's old exec hook replaced, not merged with it

    # And the server takes them as they are (dry run: nothing changes).
    for name in files:
        _, kind, target, _ = name.split(".")
        await kubectl("patch", kind, target, "--namespace", "shop", "--type", "strategic",
                      "--patch-file", str(patches / name), "--dry-run=server")
    assert prestop(await kubectl.json("get", "statefulset", "db", "--namespace", "shop"),
                   "db") == {}  # db had no preStop, and still has none


async def test_a_cluster_without_the_sleep_action_gets_exec_sleep_and_a_warning(
        agents: Agents, apiserver: ApiServer, kubeconfig: Path, kubectl: Kubectl) -> None:
    create_workloads(apiserver)
    apiserver.kube_version.update(major="1", minor="29", gitVersion="v1.29.4")
    urls = await evidence(agents, slow="deployment/web")
    code, printed, err = await run(options(agents=urls, kubeconfig=str(kubeconfig),
                                           namespace="shop", patches="-"))
    assert code == 0
    assert "warning: the cluster's version is v1.29" in err
    assert "needs a sleep binary in the image" in err
    # web's own hook runs more than a sleep: said, not replaced.
    assert ("# note: container web: its preStop (exec-sleep) does more than wait; make it "
            "wait 11 s by hand") in printed
    for line in printed.splitlines():
        if not line.startswith("#"):
            await kubectl(*shlex.split(line)[1:])
    db = await kubectl.json("get", "statefulset", "db", "--namespace", "shop")
    assert prestop(db, "db") == {"exec": {"command": ["sleep", "2"]}}
    web = await kubectl.json("get", "deployment", "web", "--namespace", "shop")
    assert prestop(web, "web")["exec"]["command"][2] == "sleep 5 && nginx -s quit"


@pytest.mark.parametrize(("major", "minor", "expected"), [
    ("1", "29", False), ("1", "30", True), ("1", "34", True), ("1", "31+", True),
    ("2", "0", True), ("1", "", None), ("one", "30", None),
])
def test_sleep_action_by_version(major: str, minor: str, expected: bool | None) -> None:
    assert has_sleep_action(major, minor) is expected
