"""What ``observer report`` is asked (its flags), each default in one place. Imports nothing
heavy: the CLI builds its parser from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_QUANTILE = 0.99
DEFAULT_MARGIN = 1.0
DEFAULT_MIN_EPISODES = 20
DEFAULT_WINDOW = "6h"  # with --prometheus; the recording rules' window
DEFAULT_NODE_LABEL = "node"  # what deploy/'s scrape configuration names each agent's node


@dataclass(frozen=True)
class ReportOptions:
    prometheus: str | None  # read the histograms through this Prometheus
    agents: Sequence[str]  # or scrape these agents
    kubeconfig: str | None  # for reading the workloads
    namespace: str | None  # only this namespace's workloads (None: all)
    quantile: float = DEFAULT_QUANTILE  # of each stage the preStop must cover
    margin: float = DEFAULT_MARGIN  # seconds added for what the stages do not see
    window: str = DEFAULT_WINDOW  # with --prometheus: how far back
    min_episodes: int = DEFAULT_MIN_EPISODES  # fewer measured deletions: no recommendation
    node_label: str = DEFAULT_NODE_LABEL  # with --prometheus: the label naming each node
    as_json: bool = False
    patches: str | None = None  # write patches into this directory; "-": print kubectl patch
