"""Pod Security Admission: the namespace labels in what kustomize and Helm really render, the
chart's refusal of a namespace that enforces less than "privileged" (real helm reading the lab
API server, real kubectl labelling it), and every privilege the DaemonSet asks for named in
docs/deploy.md, "Pod Security"."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from observer.lab.apiserver.registry import WriteOptions
from observer.lab.apiserver.server import ApiServer
from tests.conftest import REPO, require_tool
from tests.deploy.test_deploy import CHART, helm_template, kustomize, only
from tests.kubectl import Kubectl

LABELS = {f"pod-security.kubernetes.io/{mode}{suffix}": value
          for mode in ("enforce", "audit", "warn")
          for suffix, value in (("", "privileged"), ("-version", "v1.34"))}
# Every way the chart can render the DaemonSet's privileges.
CHART_SETTINGS = {"default": [], "cilium": ["--set", "agent.dataplane=cilium"],
                  "netns": ["--set", "agent.netns=n1"]}


@pytest.mark.parametrize("path", ["deploy/base", "deploy/overlays/prometheus-operator"])
def test_the_kustomize_namespace_is_labelled_privileged(path: str) -> None:
    objects = kustomize(path)
    namespace = only(objects, "Namespace")
    assert namespace["metadata"]["labels"].items() >= LABELS.items()
    assert only(objects, "DaemonSet")["metadata"]["namespace"] == namespace["metadata"]["name"]


def test_the_chart_makes_a_labelled_namespace_of_its_own_when_asked() -> None:
    objects = helm_template("--set", "namespace.create=true", "--set", "namespace.name=agents")
    namespace = only(objects, "Namespace")
    assert namespace["metadata"]["name"] == "agents"
    assert namespace["metadata"]["labels"].items() >= LABELS.items()
    namespaced = [o for o in objects if o["kind"] not in (
        "Namespace", "ClusterRole", "ClusterRoleBinding")]
    assert namespaced
    assert {o["metadata"]["namespace"] for o in namespaced} == {"agents"}
    binding = only(objects, "ClusterRoleBinding")
    assert binding["subjects"][0]["namespace"] == "agents"
    # By default it installs into the release's namespace and makes none (helm template cannot
    # read the cluster, so nothing is checked there either).
    assert not [o for o in helm_template() if o["kind"] == "Namespace"]


def helm_dry_run(kubeconfig: Path, *flags: str) -> tuple[int, str]:
    """Real helm rendering against the lab API server: its templates' ``lookup`` reads it.
    (The lab API server serves no OpenAPI documents: the schemas are checked offline, in
    test_deploy.py.)"""
    done = subprocess.run([require_tool("helm"), "template", "observer", str(CHART),
                           "--namespace", "observer", "--dry-run=server",
                           "--disable-openapi-validation", "--kubeconfig",
                           str(kubeconfig), *flags], capture_output=True, text=True,
                          timeout=120, check=False, env={"HOME": str(kubeconfig.parent),
                                                         "PATH": "/usr/bin:/bin"})
    return done.returncode, done.stderr


async def test_the_chart_refuses_a_namespace_enforcing_less_than_privileged(
        apiserver: ApiServer, kubeconfig: Path) -> None:
    apiserver.registries["namespaces"].create("", {"metadata": {
        "name": "observer", "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}},
        WriteOptions())
    code, err = await asyncio.to_thread(helm_dry_run, kubeconfig)
    assert code != 0
    assert 'namespace observer enforces the "baseline" Pod Security level' in err
    assert "kubectl label namespace observer pod-security.kubernetes.io/enforce=privileged" in err
    # Skipping the check, or a namespace labelled as the message says, gets past the templates:
    # helm goes on to map the rendered objects to the server's resources (the lab API server
    # serves no ServiceAccounts or RBAC, so it stops there, at the objects, not the namespace).
    code, err = await asyncio.to_thread(helm_dry_run, kubeconfig, "--set",
                                        "namespace.check=false")
    assert past_the_templates(code, err), err
    kubectl = Kubectl(require_tool("kubectl"), kubeconfig)
    await kubectl("label", "namespace", "observer",
                  "pod-security.kubernetes.io/enforce=privileged", "--overwrite")
    code, err = await asyncio.to_thread(helm_dry_run, kubeconfig)
    assert past_the_templates(code, err), err


def past_the_templates(code: int, err: str) -> bool:
    return code == 0 or ("Pod Security" not in err and "unable to build kubernetes objects from "
                         "release manifest" in err and 'kind "ServiceAccount"' in err)


def privileges(daemonset: dict[str, Any]) -> set[str]:
    """What the DaemonSet asks of Pod Security: host namespaces, capabilities, host paths,
    privileged containers, root."""
    pod = daemonset["spec"]["template"]["spec"]
    out = {f"{key}: true" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)}
    out |= {f"hostPath {v['hostPath']['path']}" for v in pod.get("volumes", [])
            if "hostPath" in v}
    for container in (*pod.get("initContainers", []), *pod["containers"]):
        context = container.get("securityContext") or {}
        out |= set(context.get("capabilities", {}).get("add", []))
        if context.get("privileged"):
            out.add("privileged: true")
        if context.get("runAsUser") == 0:
            out.add("runAsUser: 0")
    return out


def test_every_privilege_the_daemonset_asks_for_is_named_in_the_docs() -> None:
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text.split("## Pod Security", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `([^`]+)`", section, re.MULTILINE))
    asked = privileges(only(kustomize("deploy/base"), "DaemonSet"))
    for flags in CHART_SETTINGS.values():
        asked |= privileges(only(helm_template(*flags), "DaemonSet"))
    assert {"hostNetwork: true", "NET_ADMIN", "NET_RAW", "BPF", "SYS_ADMIN",
            "hostPath /sys/fs/bpf", "runAsUser: 0"} <= asked  # what the settings above reach
    assert asked <= named, f"privileges not in docs/deploy.md's Pod Security table: " \
                           f"{sorted(asked - named)}"
