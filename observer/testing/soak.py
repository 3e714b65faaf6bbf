"""The soak: sustained churn through the lab (in-memory dataplane), sampled as it goes — does
anything grow? ``python -m bench.soak`` runs the full profile (docs/reliability.md),
tests/reliability/test_soak.py a short one.

The lab runs with short delays so deletions follow each other quickly (the API server, the
EndpointSlice controller, kubelets and kube-proxies with the in-memory dataplane, a real agent
per node, all in this process); every ``interval``: the process's RSS, the episodes in flight
across the agents, open file descriptors and asyncio tasks. Episodes are counted from the
agents' own metrics: ``episodes_total{outcome}`` (measured, partial, abandoned, fallback) and
those in flight.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from observer.clock import SystemClock
from observer.lab.config import Delay, LabConfig
from observer.lab.results import Accounting, accounting
from observer.lab.scenario import Lab, LabRun
from observer.testing.rss import rss_mib


@dataclass
class Sample:
    seconds: float
    rss_mib: float
    in_flight: int
    fds: int
    tasks: int
    episodes: int


@dataclass
class SoakResult:
    deletions: int
    nodes: int
    elapsed_seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    accounting: Accounting = field(default_factory=Accounting)
    pods_deleted: int = 0
    fds_before: int = 0
    fds_after: int = 0
    tasks_after: int = 0

    @property
    def episodes(self) -> int:
        return self.accounting.episodes

    def growth_after_warmup(self, warmup: float = 0.25) -> float:
        """RSS growth (MiB) from the end of warm-up (the first ``warmup`` of the samples,
        while the API server's history, the truth and the finished-episode buffers fill) to
        the largest later sample."""
        if len(self.samples) < 4:
            return 0.0
        start = int(len(self.samples) * warmup)
        return max(s.rss_mib for s in self.samples[start:]) - self.samples[start].rss_mib

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "samples"},
                "episodes": self.episodes, "growth_after_warmup_mib":
                round(self.growth_after_warmup(), 2),
                "max_in_flight": max((s.in_flight for s in self.samples), default=0),
                "rss_mib": [s.rss_mib for s in self.samples]}



def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def soak_config(deletions: int, nodes: int, episode_ttl: float = 20.0) -> LabConfig:
    """A deletion every 5 ms, each pod gone within about 100 ms; ten pods per workload and
    node, so a victim is always there: steady churn. The agents keep what they know about
    deleted pods for --episode-ttl; 20 s instead of 600 s lets the run reach that steady
    state within minutes."""
    return LabConfig(nodes=nodes, deletions=deletions, dataplane="memory",
                     controller_delay=Delay(0.001, 0.01), proxy_delay=Delay(0.001, 0.01),
                     min_sync_period=0.01, prestop=0.05, app_exit=Delay(0.005, 0.02),
                     readiness_failure=0.01, spacing=0.005, replicas=10,
                     episode_ttl=episode_ttl, seed=7)


def counted(run: LabRun, result: SoakResult) -> None:
    result.accounting = accounting(n.agent.registry for n in run.nodes if n.agent)


async def soak(deletions: int, nodes: int, *, episode_ttl: float = 20.0,
               interval: float = 1.0) -> SoakResult:
    result = SoakResult(deletions=deletions, nodes=nodes, fds_before=open_fds())
    lab = Lab(soak_config(deletions, nodes, episode_ttl), clock=SystemClock())
    started = time.monotonic()
    sampler: asyncio.Task[None] | None = None

    async def sample(run: LabRun) -> None:
        while True:
            counted(run, result)
            result.samples.append(Sample(
                round(time.monotonic() - started, 1), rss_mib(),
                sum(len(n.agent.tracker.episodes) for n in run.nodes if n.agent),
                open_fds(), len(asyncio.all_tasks()), result.episodes))
            await asyncio.sleep(interval)

    async def ready(run: LabRun) -> None:
        nonlocal sampler
        sampler = asyncio.create_task(sample(run))

    async def finish(run: LabRun) -> None:
        counted(run, result)
        if sampler is not None:
            sampler.cancel()

    try:
        await lab.run(ready=ready, serve=finish)
    finally:
        if sampler is not None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
    result.elapsed_seconds = round(time.monotonic() - started, 1)
    result.pods_deleted = lab.deletions_done
    result.fds_after = open_fds()
    result.tasks_after = len(asyncio.all_tasks()) - 1  # this one
    return result
