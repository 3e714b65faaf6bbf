"""Benchmark (issue 3): the agent's initial list of a large cluster, then EndpointSlice churn.

The lab API server and the load generator run in a child process; this process runs the real
agent (watches over HTTP, parsing, tracker, metrics, one log line per episode, to /dev/null).
Reported: list time, RSS after the list and after the churn, and churn throughput as slice
events per second of *agent CPU time* (``time.process_time``, so a busy machine or a slow
load generator does not change it) and per wall second.

    .venv/bin/python -m bench.agent_churn [--services 10000] [--per-service 10] [--churn 20000]
                                          [--page-size 500] [--local-workloads N
                                          [--no-workload-metrics]]

Each churn event rewrites one slice, flipping one endpoint between Ready and terminating:
half the events start an episode, half abandon one (ready_again).

With ``--local-workloads N`` every pod runs on the agent's node, owned by one of N Deployments,
and the dataplane selects nothing: each flip to terminating is a local episode of a workload
that ends at once (nothing to wait for on this node), so every other event goes through the
per-workload metrics — the worst case for what ``--workload-metrics`` costs; run it with and
without (``--no-workload-metrics``) and compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from observer import logs
from observer.agent import build_agent, given
from observer.clock import SystemClock
from observer.config import (
    AgentConfig,
    EventSettings,
    TrafficSettings,
    WatchSettings,
    WorkloadSettings,
)
from observer.dataplane.memory import MemoryDataplane
from observer.export.metrics import configure_exposition
from observer.kube.connect import load_api_config
from observer.testing.rss import rss_mib


def serve_in_child(*args: Any) -> None:
    from bench.churn_server import serve  # imported in the child only

    serve(*args)



async def run(args: argparse.Namespace) -> dict[str, Any]:
    from kubernetes_asyncio import client  # its parts, as bench/__init__.py says

    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        # spawn, not fork: the agent process must not carry the lab server's imports.
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        proc = context.Process(target=serve_in_child, args=(child, args.services,
                                                           args.per_service, args.churn,
                                                           str(kubeconfig),
                                                           args.local_workloads))
        proc.start()
        try:
            assert parent.recv() == "ready"
            configuration = await load_api_config(str(kubeconfig))
            clock = SystemClock()
            async with client.ApiClient(configuration) as api:
                agent = await build_agent(
                    AgentConfig(node_name="node-0", listen=("127.0.0.1", 0),
                                traffic=TrafficSettings(mode="off"),
                                watch=WatchSettings(page_size=args.page_size),
                                workloads=WorkloadSettings(enabled=args.workload_metrics),
                                events=EventSettings(enabled=False)), api=api,
                    clock=clock, dataplane=given(MemoryDataplane(clock=clock, mode="nftables")))
                rss_before = rss_mib()
                stop = asyncio.Event()
                wall, cpu = time.monotonic(), time.process_time()
                task = asyncio.create_task(agent.run(stop))
                await agent.slices.synced.wait()
                await agent.pods.synced.wait()
                list_wall, list_cpu = time.monotonic() - wall, time.process_time() - cpu
                rss_listed = rss_mib()
                loop = asyncio.get_running_loop()
                wall, cpu = time.monotonic(), time.process_time()
                parent.send("churn")
                revision, generated = await loop.run_in_executor(None, parent.recv)
                while agent.slices.version != str(revision):  # noqa: ASYNC110 - polled
                    await asyncio.sleep(0.005)
                churn_wall, churn_cpu = time.monotonic() - wall, time.process_time() - cpu
                rss_churned = rss_mib()
                finished = len(agent.tracker.finished)
                in_flight = len(agent.tracker.episodes)
                series = sum(1 for family in agent.registry.collect()
                             if family.name.startswith("endpoint_propagation_workload_")
                             for sample in family.samples)
                stop.set()
                await task
            parent.send("stop")
        finally:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    return {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "python": platform.python_version()},
        "services": args.services, "endpoints": args.services * args.per_service,
        "page_size": args.page_size, "local_workloads": args.local_workloads,
        "workload_metrics": args.workload_metrics, "workload_series": series,
        "list": {"wall_seconds": round(list_wall, 2), "agent_cpu_seconds": round(list_cpu, 2)},
        "churn": {"events": args.churn, "wall_seconds": round(churn_wall, 2),
                  "agent_cpu_seconds": round(churn_cpu, 2),
                  "events_per_agent_cpu_second": round(args.churn / churn_cpu),
                  "events_per_wall_second": round(args.churn / churn_wall),
                  "generator_seconds": round(generated, 2),
                  "in_flight_after": in_flight, "episodes_kept": finished},
        "rss_mib": {"before_start": round(rss_before, 1), "after_list": round(rss_listed, 1),
                    "after_churn": round(rss_churned, 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--per-service", type=int, default=10)
    parser.add_argument("--churn", type=int, default=20_000)
    parser.add_argument("--page-size", type=int, default=500,
                        help="--watch-page-size (0: the list in one response)")
    parser.add_argument("--local-workloads", type=int, default=0,
                        help="every pod on the agent's node, owned by this many Deployments")
    parser.add_argument("--workload-metrics", action=argparse.BooleanOptionalAction,
                        default=True, help="the agent's --workload-metrics")
    args = parser.parse_args()
    with open(os.devnull, "w") as devnull:
        logs.configure("json", stream=devnull)
        configure_exposition()
        print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
