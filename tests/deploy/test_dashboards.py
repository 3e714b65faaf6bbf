"""dashboards/: Grafana's classic JSON model as Grafana 12 writes it, the data source a
variable, every panel placed and queried through it. (That every query parses and returns
data is checked against a real Prometheus in tests/report/test_prometheus.py.)"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import REPO

DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))


def load(name: str) -> dict[str, Any]:
    return json.loads((REPO / "dashboards" / name).read_text())  # type: ignore[no-any-return]


def test_the_three_dashboards() -> None:
    assert [p.name for p in DASHBOARDS] == ["observer-health.json", "observer-node.json",
                                            "observer-overview.json"]
    assert len({load(p.name)["uid"] for p in DASHBOARDS}) == 3


@pytest.mark.parametrize("name", [p.name for p in DASHBOARDS])
def test_dashboard_model(name: str) -> None:
    dashboard = load(name)
    assert dashboard["schemaVersion"] == 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "node" in variables
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["expr"].strip()
        if panel.get("targets"):
            assert panel["datasource"]["uid"] == "${datasource}"


def test_overview_filters_by_node_mode_and_cause() -> None:
    overview = load("observer-overview.json")
    assert {"node", "proxy_mode", "cause"} <= {v["name"] for v in
                                               overview["templating"]["list"]}
    exprs = " ".join(t["expr"] for p in overview["panels"] for t in p.get("targets", []))
    for variable in ("$node", "$proxy_mode", "$cause"):
        assert variable in exprs
    types = {p["type"] for p in overview["panels"]}
    assert {"heatmap", "stat", "timeseries"} <= types
    titles = {p["title"] for p in overview["panels"]}
    assert "Recommended preStop" in titles
