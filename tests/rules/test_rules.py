"""deploy/prometheus/{rules,alerts}.yaml: valid for the real promtool, computing and firing
as their unit tests say; every alert complete, with a runbook section; rules and dashboards
built only on metrics docs/metrics.md lists."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.agent.test_metrics_doc import documented
from tests.conftest import REPO, require_tool

RULES = REPO / "deploy" / "prometheus" / "rules.yaml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
HERE = Path(__file__).resolve().parent
SUFFIXES = ("_bucket", "_count", "_sum")


def promtool(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run([require_tool("promtool"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_are_valid() -> None:
    out = promtool("check", "rules", str(RULES), str(ALERTS))
    assert out.count("SUCCESS") == 2


def test_rules_compute_the_recommendation() -> None:
    assert "SUCCESS" in promtool("test", "rules", "recommendation_test.yaml", cwd=HERE)


def test_rules_compute_each_workloads_recommendation() -> None:
    assert "SUCCESS" in promtool("test", "rules", "workloads_test.yaml", cwd=HERE)


def metric_names(expr: str) -> set[str]:
    """The agent metrics an expression reads (recording-rule names contain a colon)."""
    names = set()
    for name in re.findall(r"(?<![:\w])(endpoint_propagation_\w+)(?![:\w])", expr):
        for suffix in SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in documented():
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def expressions() -> dict[str, list[str]]:
    """Every PromQL expression deploy/ and dashboards/ ship, by file."""
    out: dict[str, list[str]] = {}
    for path in (RULES, ALERTS):
        out[path.name] = [rule["expr"] for group in yaml.safe_load(path.read_text())["groups"]
                          for rule in group["rules"]]
    for path in sorted((REPO / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        out[path.name] = [target["expr"] for panel in dashboard["panels"]
                          for target in panel.get("targets", [])]
        out[path.name] += [v["definition"] for v in dashboard["templating"]["list"]
                           if v["type"] == "query"]
    return out


def test_rules_and_dashboards_use_only_documented_metrics() -> None:
    for name, exprs in expressions().items():
        used = {metric for expr in exprs for metric in metric_names(expr)}
        assert used, f"{name}: the expressions name no metric at all?"
        assert used <= set(documented()), (name, used - set(documented()))


def test_alerts_are_complete_and_tested() -> None:
    runbooks = (REPO / "docs" / "runbooks.md").read_text()
    anchors = {re.sub(r"[^a-z0-9-]", "", h.lower().replace(" ", "-"))
               for h in re.findall(r"^## (.+)$", runbooks, re.MULTILINE)}
    tests = yaml.safe_load((HERE / "alerts_test.yaml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    alerts = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
              for rule in group["rules"]]
    assert len(alerts) == 7
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description", "runbook_url"} <= set(alert["annotations"]), name
        anchor = alert["annotations"]["runbook_url"].split("#")[1]
        assert anchor == name.lower(), name
        assert anchor in anchors, name
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name} never tested firing"
        assert any(not case["exp_alerts"] for case in mine), f"{name} never tested silent"


def test_alert_rules_fire_and_stay_silent_as_tested() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yaml", cwd=HERE)
