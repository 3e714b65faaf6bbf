"""Histogram buckets: ``--histogram-buckets`` checked (observer.export.buckets), every
histogram family the agent exports configurable, the buckets asked for the ones exported, and
the chart's value reaching the agent as the flag reads it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping

import pytest
import yaml
from prometheus_client import CollectorRegistry

from observer.config import WorkloadSettings
from observer.export.buckets import DEFAULTS, MAX_BUCKETS, BucketsError, buckets, parse
from observer.export.metrics import AgentMetrics, DataplaneHealth
from observer.export.workloads import WorkloadMetrics
from tests.conftest import REPO, require_tool
from tests.deploy.test_deploy import CHART, only

DURATION = "endpoint_propagation_duration_seconds"
WORKLOAD = "endpoint_propagation_workload_last_connection_seconds"


def test_a_valid_value_overrides_the_families_it_names() -> None:
    parsed = parse(f" {DURATION}=0.5,1,2.5 ; {WORKLOAD}=1,10;")
    assert parsed == {DURATION: (0.5, 1.0, 2.5), WORKLOAD: (1.0, 10.0)}
    assert buckets(parsed, DURATION) == (0.5, 1.0, 2.5)
    assert buckets(parsed, "endpoint_propagation_headroom_seconds") == DEFAULTS[
        "endpoint_propagation_headroom_seconds"]
    assert parse("") == {}


@pytest.mark.parametrize(("text", "message"), [
    ("endpoint_propagation_nope=1", "is not a histogram family"),
    (f"{DURATION}", "expected FAMILY=B1,B2"),
    (f"{DURATION}=1;{DURATION}=2", "given twice"),
    (f"{DURATION}=1,1", "increase strictly"),
    (f"{DURATION}=2,1", "increase strictly"),
    (f"{DURATION}=0,1", "positive, finite"),
    (f"{DURATION}=-1", "positive, finite"),
    (f"{DURATION}=1,inf", "positive, finite"),
    (f"{DURATION}=nan", "positive, finite"),
    (f"{DURATION}=1,,2", "comma-separated"),
    (f"{DURATION}=fast", "comma-separated"),
    (f"{DURATION}=" + ",".join(str(i) for i in range(1, MAX_BUCKETS + 2)), "1 to 60 buckets"),
])
def test_a_bad_value_is_refused_saying_why(text: str, message: str) -> None:
    with pytest.raises(BucketsError, match=message):
        parse(text)


def histograms(registry: CollectorRegistry) -> dict[str, set[float]]:
    """Each histogram family's upper bounds, as exported."""
    out: dict[str, set[float]] = {}
    for family in registry.collect():
        if family.type == "histogram":
            out[family.name] = {float(s.labels["le"]) for s in family.samples
                                if s.name.endswith("_bucket")}
    return out


def agent_registry(overrides: Mapping[str, tuple[float, ...]]) -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry, proxy_mode="nftables", buckets=overrides)
    metrics.duration.labels("total", "deletion", "nftables").observe(1.0)  # labelled: a child
    DataplaneHealth(registry, overrides)
    workloads = WorkloadMetrics(registry, settings=WorkloadSettings(), now=lambda: 0.0,
                                overrides=overrides)
    # A workload's series exist once it has an episode: give the per-workload families one.
    workloads.last_connection.labels("ns", "deployment/web", "local").observe(1.0)
    workloads.app_shutdown.labels("ns", "deployment/web").observe(1.0)
    return registry


def test_every_histogram_the_agent_exports_is_configurable() -> None:
    exported = histograms(agent_registry({}))
    assert set(exported) == set(DEFAULTS)
    for family, bounds in exported.items():
        assert bounds == {*DEFAULTS[family], float("inf")}, family
    other = dict.fromkeys(DEFAULTS, (0.25, 7.0))
    assert all(bounds == {0.25, 7.0, float("inf")}
               for bounds in histograms(agent_registry(other)).values())


def observer_run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "observer.cli", "run", *args],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **env})


def test_the_agent_refuses_bad_buckets_from_its_flag_or_environment() -> None:
    for args, env in (([f"--histogram-buckets={DURATION}=2,1"], {}),
                      ([], {"OBSERVER_HISTOGRAM_BUCKETS": f"{DURATION}=2,1"})):
        done = observer_run(*args, env=env)
        assert done.returncode == 2
        assert "increase strictly" in done.stderr
        assert "Traceback" not in done.stderr


def test_the_charts_value_reaches_the_agent_as_its_flag_reads_it() -> None:
    values: dict[str, list[float]] = {DURATION: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600],
                                      WORKLOAD: [1, 3, 10, 60]}
    out = subprocess.run(
        [require_tool("helm"), "template", "observer", str(CHART), "--namespace", "observer",
         "--set-json", "agent.histogramBuckets=" + json.dumps(values)],
        capture_output=True, text=True, timeout=60, check=True).stdout
    daemonset = only([d for d in yaml.safe_load_all(out) if d], "DaemonSet")
    env = {e["name"]: e.get("value") for e in
           daemonset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert parse(env["OBSERVER_HISTOGRAM_BUCKETS"]) == {
        family: tuple(float(b) for b in bounds) for family, bounds in values.items()}
    defaults = yaml.safe_load((REPO / "deploy" / "base" / "daemonset.yaml").read_text())
    base_env = {e["name"]: e.get("value") for e in
                defaults["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert parse(base_env["OBSERVER_HISTOGRAM_BUCKETS"]) == {}


def test_docs_list_each_familys_defaults() -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    listed = dict(re.findall(r"^- `(endpoint_propagation_[a-z_]+)`: ([0-9., ]+)$", text,
                             re.MULTILINE))
    assert {family: tuple(float(b) for b in bounds.split(", "))
            for family, bounds in listed.items()} == DEFAULTS
