"""docs/metrics.md is the contract: it lists exactly the metric families a live agent serves."""

from __future__ import annotations

import re

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.harness import AgentEnv
from tests.conftest import REPO

FORBIDDEN_LABELS = {"pod", "ip", "uid", "endpoint", "service", "namespace", "error", "message"}


def documented() -> dict[str, str]:
    rows = re.findall(r"^\| `(endpoint_propagation_[a-z_]+)` \| (\w+) \|",
                      (REPO / "docs" / "metrics.md").read_text(), re.MULTILINE)
    return dict(rows)


async def live_families(env: AgentEnv) -> dict[str, tuple[str, set[str]]]:
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"{env.agent.http.url}/metrics")
        text = await response.text()
    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        out[name + suffix] = ("gauge" if family.type == "info" else family.type, labels)
    return out


async def test_docs_list_exactly_the_live_metrics(env: AgentEnv) -> None:
    live = await live_families(env)
    agent_metrics = {name: kind for name, (kind, _) in live.items()
                     if name.startswith("endpoint_propagation_")}
    assert agent_metrics == documented()


async def test_no_unbounded_labels(env: AgentEnv) -> None:
    for name, (_, labels) in (await live_families(env)).items():
        if name.startswith("endpoint_propagation_workload_"):
            # namespace and workload, bounded by --max-workloads (tests/test_workload_metrics.py)
            assert labels <= {"namespace", "workload", "source", "after"}, name
        else:
            assert not labels & FORBIDDEN_LABELS, name
