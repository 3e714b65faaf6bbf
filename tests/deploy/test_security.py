"""Least privilege, checked on what is really rendered and on the code itself."""

from __future__ import annotations

import ast
from typing import Any

import pytest

from tests.conftest import REPO
from tests.deploy.test_deploy import HELM_SETTINGS, helm_template, kustomize, only

READ_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
              {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
               "verbs": ["get", "list", "watch"]}]
# Exactly create and patch (a series) on events: no get, list, update or delete.
EVENT_RULE = {"apiGroups": ["events.k8s.io"], "resources": ["events"],
              "verbs": ["create", "patch"]}


def agent_objects() -> dict[str, list[dict[str, Any]]]:
    return {"kustomize": kustomize("deploy/overlays/prometheus-operator"),
            **{f"helm {name}": helm_template(*flags) for name, flags in HELM_SETTINGS.items()}}


@pytest.mark.parametrize(("source", "rules"), [
    ("kustomize", [*READ_RULES, EVENT_RULE]), ("helm default", [*READ_RULES, EVENT_RULE]),
    ("helm no-dataplane", [*READ_RULES, EVENT_RULE]), ("helm no-events", READ_RULES)])
def test_cluster_role_reads_pods_and_slices_and_writes_only_events(
        source: str, rules: list[dict[str, Any]]) -> None:
    objects = agent_objects()[source]
    role = only(objects, "ClusterRole")
    assert role["rules"] == rules
    events = {e["name"]: e.get("value") for e in container(objects)[1]["env"]}["OBSERVER_EVENTS"]
    assert events == ("on" if EVENT_RULE in rules else "off")
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    binding = only(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    daemonset = only(objects, "DaemonSet")
    assert binding["subjects"] == [{
        "kind": "ServiceAccount", "namespace": daemonset["metadata"]["namespace"],
        "name": daemonset["spec"]["template"]["spec"]["serviceAccountName"]}]


def container(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = only(objects, "DaemonSet")["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    return pod, agent


@pytest.mark.parametrize("source", ["kustomize", "helm default"])
def test_security_context_reading_the_dataplane(source: str) -> None:
    pod, agent = container(agent_objects()[source])
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = agent["securityContext"]
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert context["runAsUser"] == 0  # capabilities reach only root's effective set
    assert not pod.get("hostPID")
    assert not pod.get("hostIPC")
    assert all("hostPath" not in volume for volume in pod["volumes"])


def test_security_context_without_a_dataplane_is_non_root_with_nothing() -> None:
    _, agent = container(agent_objects()["helm no-dataplane"])
    context = agent["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 65532
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False


def calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            out.append((name, node))
    return out


def test_subprocesses_only_through_the_bounded_runner() -> None:
    """The package starts processes in exactly one place, CommandRunner._spawn: no shell,
    and every caller's read is under its timeout and output bound."""
    found = []
    for path in (REPO / "observer").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imports_subprocess = any(
            isinstance(n, ast.Import | ast.ImportFrom) and "subprocess" in ast.dump(n)
            for n in ast.walk(tree))
        for name, call in calls(tree):
            if name in {"create_subprocess_exec", "create_subprocess_shell", "system", "popen"}:
                found.append((path.relative_to(REPO).as_posix(), name))
            if name == "shell" or any(k.arg == "shell" for k in call.keywords):
                found.append((path.relative_to(REPO).as_posix(), "shell="))
        if imports_subprocess and path.name != "commands.py":
            found.append((path.relative_to(REPO).as_posix(), "imports subprocess"))
    assert found == [("observer/dataplane/commands.py", "create_subprocess_exec")], found
    source = (REPO / "observer" / "dataplane" / "commands.py").read_text()
    assert "timeout: float = 10.0" in source
    assert "max_output: int" in source
