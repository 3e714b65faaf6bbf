"""The soak's short profile (the full one is `python -m bench.soak`, numbers in
docs/reliability.md): churn through the lab, and nothing grows, leaks or goes missing."""

from __future__ import annotations

import asyncio
import json

from observer.testing.soak import soak

NODES = 2


async def test_short_soak() -> None:
    tasks_before = len(asyncio.all_tasks())
    result = await soak(5000, NODES, episode_ttl=5.0)
    assert result.pods_deleted > 3000
    # Every deletion is an episode on every node: measured, fallback or abandoned.
    assert result.episodes == NODES * result.pods_deleted, result.to_dict()
    # Memory: flat once the API server's history, the truth and the agents' records
    # (kept for --episode-ttl, 5 s here) have filled, i.e. after the first 40 % of the run.
    assert result.growth_after_warmup(0.4) <= 10.0, result.to_dict()["rss_mib"]
    assert max(s.in_flight for s in result.samples) <= 200
    assert result.fds_after == result.fds_before
    assert result.tasks_after == tasks_before - 1  # all but this test's own task: none left
    json.dumps(result.to_dict())  # what `python -m bench.soak` prints
