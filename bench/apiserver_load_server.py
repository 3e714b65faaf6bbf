"""The child process of bench/apiserver_load.py: the lab API server with a large cluster in
it, and the churn's writes. Kept apart so the watchers' process never imports it."""

from __future__ import annotations

import asyncio
import json
import multiprocessing.connection
import random
from pathlib import Path
from typing import Any

from bench.cluster import Cluster
from observer.clock import SystemClock
from observer.lab.apiserver.server import ApiServer


def _sizes(server: ApiServer) -> dict[str, dict[str, int]]:
    """Mean and largest JSON size of each resource's objects, as the server writes them."""
    out = {}
    for resource in ("pods", "endpointslices", "services", "nodes"):
        sizes = [len(json.dumps(o, separators=(",", ":")))
                 for o in server.store.items(resource).values()]
        out[resource] = {"count": len(sizes), "mean_bytes": sum(sizes) // max(1, len(sizes)),
                         "max_bytes": max(sizes, default=0)}
    return out


async def _drained(server: ApiServer) -> None:
    """Until the server has written out everything it queued for its watchers."""
    while any(w.queue for w in server.store.watchers()):  # noqa: ASYNC110 - bench pacing
        await asyncio.sleep(0.002)


async def _churn(server: ApiServer, cluster: Cluster, kind: str, count: int,
                 watched: list[str], rates: dict[str, float]) -> Any:
    small = [s for s, svc in enumerate(cluster.services) if len(svc.slices[0]) < 20]
    large = [s for s, svc in enumerate(cluster.services) if len(svc.slices[0]) == 100]
    rng = random.Random(kind)
    if kind == "heartbeat":
        for name in watched:
            cluster.node_heartbeat(int(name.rsplit("-", 1)[1]))
            await _drained(server)
        return 1
    mixed = {k: r for k, r in rates.items() if k != "heartbeat"}
    done: dict[str, int] = {}
    for i in range(count):
        step = kind if kind != "mixed" else rng.choices(list(mixed), list(mixed.values()))[0]
        if step == "replace-small":
            cluster.replace(rng.choice(small))
        elif step == "replace-large":
            cluster.replace(rng.choice(large))
        else:
            cluster.job_pod(i)
        done[step] = done.get(step, 0) + 1
        await _drained(server)
    return done if kind == "mixed" else count


async def _serve(conn: multiprocessing.connection.Connection, shape: dict[str, int],
                 kubeconfig: Path) -> None:
    # Bookmarks every second: how the watchers learn that a phase's last revision reached
    # them even when none of its events did (the real server sends them about once a minute).
    server = ApiServer(clock=SystemClock(), history_limit=200_000, watcher_capacity=1_000_000,
                       bookmark_interval=1.0)
    cluster = Cluster(server.store, nodes=shape["nodes"])
    cluster.build(services=shape["services"], endpoints=shape["endpoints"], pods=shape["pods"])
    await server.start()
    server.write_kubeconfig(kubeconfig)
    conn.send(("ready", _sizes(server)))
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command[0] == "stop":
            break
        _, kind, count, watched, rates = command
        done = await _churn(server, cluster, kind, count, watched, rates)
        conn.send((server.store.revision, done))
    await server.stop()


def serve(conn: multiprocessing.connection.Connection, shape: dict[str, int],
          kubeconfig: str) -> None:
    asyncio.run(_serve(conn, shape, Path(kubeconfig)))
