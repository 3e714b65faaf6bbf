"""deploy/ and the Dockerfile, checked with the real tools: kubectl kustomize, helm lint and
template, offline schema validation (kubernetes-validate for Kubernetes' own kinds, the
prometheus-operator CRD schemas for its custom resources), hadolint. Plus: the chart and the
kustomize base describe the same DaemonSet, the chart's values are the agent's flags, and the
copies of the rules are up to date."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_options import actions, commands
from tests.conftest import REPO, missing, require_tool

CHART = REPO / "deploy" / "helm" / "observer"
OVERLAYS = ("deploy/base", "deploy/overlays/prometheus-operator", "deploy/report-reader")
KUBERNETES_VERSION = "1.34.0"  # the kubectl the project tests with
MODELS = REPO / ".tools" / "npm" / "node_modules" / "@kubernetes-models" / "prometheus-operator"
HELM_SETTINGS = {
    "default": [],
    "everything": ["--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
                   "--set", "dashboards.enabled=true"],
    "no-dataplane": ["--set", "agent.dataplane=none", "--set", "agent.traffic=off"],
    "no-events": ["--set", "agent.events=false"],
}


def run(*argv: str, cwd: Path = REPO) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def kustomize(path: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(run(require_tool("kubectl"), "kustomize", path)) if d]


def helm_template(*flags: str) -> list[dict[str, Any]]:
    out = run(require_tool("helm"), "template", "observer", str(CHART), "--namespace",
              "observer", *flags)
    return [d for d in yaml.safe_load_all(out) if d]


def rendered() -> dict[str, list[dict[str, Any]]]:
    out = {path: kustomize(path) for path in OVERLAYS}
    out.update({f"helm {name}": helm_template(*flags) for name, flags in HELM_SETTINGS.items()})
    return out


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


@pytest.mark.parametrize("path", OVERLAYS)
def test_every_overlay_renders(path: str) -> None:
    assert kustomize(path)


def test_helm_lint() -> None:
    out = run(require_tool("helm"), "lint", "--strict", str(CHART),
              "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true")
    assert "0 chart(s) failed" in out


def test_everything_validates_offline(tmp_path: Path) -> None:
    builtin: list[dict[str, Any]] = []
    custom: list[dict[str, Any]] = []
    for objects in rendered().values():
        for obj in objects:
            (custom if obj["apiVersion"].startswith("monitoring.coreos.com/") else
             builtin).append(obj)
    assert {o["kind"] for o in custom} == {"ServiceMonitor", "PrometheusRule"}
    builtin_file = tmp_path / "builtin.yaml"
    builtin_file.write_text(yaml.safe_dump_all(builtin))
    out = run(require_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION,
              str(builtin_file))
    assert "WARN" not in out, out
    assert out.count("passed for resource") == len(builtin)
    if not (MODELS / "package.json").exists():
        missing("the prometheus-operator CRD schemas are not installed (scripts/setup.sh)")
    custom_file = tmp_path / "custom.json"
    custom_file.write_text(json.dumps(custom))
    run(require_tool("node"), str(REPO / "tests" / "deploy" / "validate_crs.mjs"), str(MODELS),
        str(custom_file))


def test_validation_would_catch_a_mistake(tmp_path: Path) -> None:
    """Both validators really check: a wrong field type fails each of them."""
    daemonset = only(kustomize("deploy/base"), "DaemonSet")
    daemonset["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(daemonset))
    done = subprocess.run([require_tool("kubernetes-validate"), "--strict", "-k",
                           KUBERNETES_VERSION, str(wrong)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode != 0
    monitor = only(kustomize("deploy/overlays/prometheus-operator"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["port"] = 9809  # must be a port name
    (tmp_path / "wrong.json").write_text(json.dumps([monitor]))
    done = subprocess.run([require_tool("node"), str(REPO / "tests" / "deploy" /
                                                    "validate_crs.mjs"),
                           str(MODELS), str(tmp_path / "wrong.json")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert "port must be string" in done.stdout


def test_chart_and_kustomize_render_the_same_daemonset() -> None:
    base = only(kustomize("deploy/base"), "DaemonSet")
    chart = only(helm_template(), "DaemonSet")
    assert chart["spec"] == base["spec"]
    assert (chart["metadata"]["name"], chart["metadata"]["namespace"]) == (
        base["metadata"]["name"], base["metadata"]["namespace"])


def run_flags() -> dict[str, str]:
    """`observer run`'s flags, as ``--flag`` → OBSERVER_* variable."""
    run_parser = dict(commands())["run"]
    flags = [s for a in actions(run_parser) for s in a.option_strings
             if s.startswith("--") and not s.startswith("--no-") and s != "--help"]
    return {f: "OBSERVER_" + f[2:].upper().replace("-", "_") for f in [*flags, "--log-format"]}


def camel(flag: str) -> str:
    head, *rest = flag[2:].split("-")
    return head + "".join(word.title() for word in rest)


def test_values_map_one_to_one_to_the_agents_flags() -> None:
    agent_values = yaml.safe_load((CHART / "values.yaml").read_text())["agent"]
    set_by_the_chart = {"--kubeconfig", "--node-name"}  # service account; downward API
    expected = {camel(f) for f in run_flags() if f not in set_by_the_chart} - {"listen"}
    assert set(agent_values) == expected | {"listenPort"}
    env = {e["name"] for e in only(helm_template("--set", "agent.netns=n1"), "DaemonSet")
           ["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {v for f, v in run_flags().items() if f not in set_by_the_chart} <= env


def test_generated_copies_are_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("sync_deploy", REPO / "scripts" /
                                                  "sync-deploy.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path, text in module.wanted().items():
        assert path.read_text() == text, f"{path} is stale: run scripts/sync-deploy.py"


def test_prometheus_rule_has_the_rules_and_alerts() -> None:
    rule = only(helm_template(*HELM_SETTINGS["everything"]), "PrometheusRule")
    overlay = only(kustomize("deploy/overlays/prometheus-operator"), "PrometheusRule")
    assert rule["spec"] == overlay["spec"]
    names = {r.get("alert") or r.get("record") for g in rule["spec"]["groups"]
             for r in g["rules"]}
    assert "endpoint_propagation:prestop_recommendation_seconds" in names
    assert "EndpointPropagationUnsafeTerminations" in names


def test_dockerfile_is_hadolint_clean() -> None:
    run(require_tool("hadolint"), "--config", str(REPO / ".hadolint.yaml"),
        str(REPO / "Dockerfile"))


def test_dockerfile_installs_the_dataplane_tools() -> None:
    """In the runtime stage (the last): the interpreter and the dataplane tools, from Debian.
    (scripts/image.sh builds the image and runs it; .ci/run runs that.)"""
    text = (REPO / "Dockerfile").read_text()
    runtime = text[text.rindex("\nFROM "):]
    # Both stages on the same base: Debian's bookworm unless the build says otherwise
    # (scripts/image.sh names its own per architecture).
    assert re.search(r"^ARG BASE=debian:bookworm-slim$", text, re.MULTILINE)
    assert runtime.startswith("\nFROM ${BASE}\n")
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${BASE}", "${BASE}"]
    install = re.search(r"apt-get install[^\n]*", runtime)
    assert install is not None
    for package in ("python3", "iptables", "nftables", "iproute2"):
        assert package in install.group(0).split()
    assert re.search(r"^USER 65532", runtime, re.MULTILINE)


def test_cilium_mode_mounts_bpffs_read_only_and_adds_cap_bpf_only_then() -> None:
    for dataplane, wanted in (("cilium", True), ("auto", False)):
        spec = only(helm_template("--set", f"agent.dataplane={dataplane}"),
                    "DaemonSet")["spec"]["template"]["spec"]
        container = spec["containers"][0]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert ("BPF" in container["securityContext"]["capabilities"]["add"]) is wanted
        assert ("bpffs" in mounts) is wanted
        if wanted:
            assert mounts["bpffs"]["readOnly"] is True
            volume = next(v for v in spec["volumes"] if v["name"] == "bpffs")
            assert volume["hostPath"]["path"] == "/sys/fs/bpf"
