"""Benchmark (issue 17): Cilium's service maps at 10,000 services / 50,000 backends.

Real BPF maps in a BPF filesystem of the benchmark's own, filled as Cilium's agent does
(``observer.lab.cilium.CiliumAgent``) by a separate process, which then churns them: every
0.1 s it flips 1/1000 of the backends between active and terminating (1% of the backends a
second), one frontend update per backend as Cilium's reconciler writes it. This process runs
the agent's source (``DeltaPollingSource`` over ``CiliumChanges``, frontends named from an
index of every endpoint as the slices would give) and reports:

(a) one full read (both maps, the kernel's batch copy) and one full decode (``CiliumReader``,
    named), and the kernel's part alone;
(b) the agent's CPU during the churn (this process's, threads included; not the writer's),
    target <= 10% of one core, and the precision its stamps state (the polling period the
    CPU budget allows), target <= 100 ms;
(c) this process's RSS after the first read, target <= 150 MiB.

    sudo .venv/bin/python -m bench.cilium [--services 10000] [--per-service 5]
        [--churn-seconds 20] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Collection
from typing import Any

from bench import rss_mib
from observer.clock import SystemClock
from observer.dataplane.cilium import CiliumChanges, CiliumMaps, CiliumReader
from observer.dataplane.model import DataplaneChange
from observer.dataplane.names import FrontendNames
from observer.dataplane.sources import DeltaPollingSource
from observer.lab.cilium import ACTIVE, TERMINATING, CiliumAgent
from observer.tasks import cancel_and_wait
from observer.values import ServicePort


def vip(s: int) -> str:
    return f"10.96.{s // 250}.{s % 250 + 1}"


def backend(s: int, b: int) -> str:
    n = s * 8 + b
    return f"10.{64 + n // 65536}.{n // 256 % 256}.{n % 256}"


def writer(root: str, services: int, per: int, ready: Any, go: Any, stop: Any) -> None:
    """The Cilium agent: fill, then churn until told to stop."""
    agent = CiliumAgent(root, max_entries=max(65536, services * (per + 1) + 1024))
    states = {s: [ACTIVE] * per for s in range(services)}
    for s in range(services):
        agent.upsert(vip(s), 80, [(backend(s, b), 8080, ACTIVE) for b in range(per)])
    ready.set()
    go.wait()
    flips = max(1, services * per // 1000)  # per 0.1 s: 1% of the backends a second
    tick, turn = time.monotonic(), 0
    while not stop.is_set():
        for i in range(flips):
            s, b = (turn * flips + i) * 7919 % services, (turn + i) % per
            states[s][b] = TERMINATING if states[s][b] == ACTIVE else ACTIVE
            agent.upsert(vip(s), 80, [(backend(s, j), 8080, states[s][j]) for j in range(per)])
        turn += 1
        tick += 0.1
        time.sleep(max(0.0, tick - time.monotonic()))
    agent.close()


class Metrics:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.scans: list[float] = []

    def scan(self, seconds: float) -> None:
        self.scans.append(seconds)

    def error(self, reason: str) -> None:
        self.errors.append(reason)

    def drift(self, count: int) -> None:
        pass


async def measure(root: str, args: argparse.Namespace, go: Any) -> dict[str, Any]:
    index = {(backend(s, b), 8080, "TCP"): (ServicePort("bench", f"svc-{s}", "http", "TCP"),)
             for s in range(args.services) for b in range(args.per_service)}

    def candidates(ip: str, port: int, protocol: str) -> Collection[ServicePort]:
        return index.get((ip, port, protocol), ())

    maps = CiliumMaps.open(root)
    kernel = []
    for _ in range(5):
        started = time.perf_counter()
        maps.read()
        kernel.append(time.perf_counter() - started)
    maps.close()
    full = []
    for _ in range(3):
        started = time.perf_counter()
        snapshot = await CiliumReader(root, FrontendNames(candidates)).read()
        full.append(time.perf_counter() - started)
    entries = sum(len(s.cluster) for s in snapshot.services)
    del snapshot

    metrics = Metrics()
    source = DeltaPollingSource(changes=CiliumChanges(root, FrontendNames(candidates)),
                                clock=SystemClock(), metrics=metrics, interval=args.interval,
                                cpu=time.process_time)  # as the agent's (detect.open_source)
    seen: list[DataplaneChange] = []
    task = asyncio.create_task(source.run(seen.append))
    while not metrics.scans:  # noqa: ASYNC110 (the source reports reads as calls, no event)
        await asyncio.sleep(0.01)
    rss = rss_mib()
    first_read = metrics.scans[0]
    go.set()
    await asyncio.sleep(2.0)  # the writer gets going; the budget's average settles
    seen.clear()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0, scans0 = usage.ru_utime + usage.ru_stime, time.monotonic(), len(metrics.scans)
    await asyncio.sleep(args.churn_seconds)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage.ru_utime + usage.ru_stime - cpu0) / (time.monotonic() - wall0)
    reads = metrics.scans[scans0:]
    await cancel_and_wait(task)
    precisions = sorted(c.at.precision for c in seen)
    return {
        "services": args.services, "backends": args.services * args.per_service,
        "endpoints_decoded": entries,
        "full_read_kernel_ms_median": round(statistics.median(kernel) * 1e3, 1),
        "full_read_and_decode_ms_median": round(statistics.median(full) * 1e3, 1),
        "agent_first_read_ms": round(first_read * 1e3, 1),
        "rss_mib_after_first_read": round(rss, 1),
        "churn_backends_per_second": args.services * args.per_service // 100,
        "agent_cpu_share_of_one_core": round(cpu, 3),
        "reads_per_second": round(len(reads) / args.churn_seconds, 1),
        "read_ms_median_under_churn": round(statistics.median(reads) * 1e3, 1) if reads else None,
        "changes_seen": len(seen),
        "stated_precision_ms_p50": round(precisions[len(precisions) // 2] * 1e3, 1)
        if precisions else None,
        "stated_precision_ms_p99": round(precisions[int(len(precisions) * 0.99)] * 1e3, 1)
        if precisions else None,
        "errors": metrics.errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--per-service", type=int, default=5)
    parser.add_argument("--churn-seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="obs-bench-bpffs-")
    subprocess.run(["mount", "-t", "bpf", "bpf", root], check=True)
    context = multiprocessing.get_context("fork")
    ready, go, stop = context.Event(), context.Event(), context.Event()
    child = context.Process(target=writer, args=(root, args.services, args.per_service, ready,
                                                 go, stop))
    try:
        child.start()
        ready.wait()
        result = asyncio.run(measure(root, args, go))
        result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, " \
                            f"Linux {platform.release()}"
        print(json.dumps(result, indent=2))
    finally:
        stop.set()
        go.set()
        child.join(30)
        subprocess.run(["umount", root], check=False)
        os.rmdir(root)


if __name__ == "__main__":
    main()
