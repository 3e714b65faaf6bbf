"""deploy/prometheus/rules.yaml: valid for the real promtool, computing what its unit tests
say, and built only on metrics docs/metrics.md lists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.agent.test_metrics_doc import documented
from tests.conftest import REPO, require_tool

RULES = REPO / "deploy" / "prometheus" / "rules.yaml"
HERE = Path(__file__).resolve().parent
SUFFIXES = ("_bucket", "_count", "_sum")


def promtool(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run([require_tool("promtool"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_are_valid() -> None:
    assert "SUCCESS" in promtool("check", "rules", str(RULES))


def test_rules_compute_the_recommendation() -> None:
    assert "SUCCESS" in promtool("test", "rules", "recommendation_test.yaml", cwd=HERE)


def metric_names(expr: str) -> set[str]:
    """The agent metrics an expression reads (recording-rule names contain a colon)."""
    names = set()
    for name in re.findall(r"(?<![:\w])(endpoint_propagation_\w+)(?![:\w])", expr):
        for suffix in SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in documented():
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_rules_use_only_documented_metrics() -> None:
    used = {name for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"] for name in metric_names(rule["expr"])}
    assert used, "the expressions name no metric at all?"
    assert used <= set(documented()), used - set(documented())
