"""The child process of bench/agent_churn.py: the lab API server preloaded with a large
cluster, and the churn generator. Kept apart so the measured agent process never imports it."""

from __future__ import annotations

import asyncio
import multiprocessing.connection
import time
from pathlib import Path
from typing import Any

from observer.clock import SystemClock
from observer.lab.apiserver.registry import WriteOptions
from observer.lab.apiserver.server import ApiServer


def slice_body(service: int, per_service: int, flipped: int | None = None) -> dict[str, Any]:
    endpoints = []
    for e in range(per_service):
        terminating = e == flipped
        endpoints.append({
            "addresses": [f"10.{service // 256 % 256}.{service % 256}.{e + 1}"],
            "conditions": {"ready": not terminating, "serving": True,
                           "terminating": terminating},
            "nodeName": f"node-{e % 50}",
            "targetRef": {"kind": "Pod", "namespace": "bench", "name": f"s{service}-{e}",
                          "uid": f"uid-{service}-{e}"}})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc{service}-abcde", "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": f"svc{service}"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}


async def _serve(conn: multiprocessing.connection.Connection, services: int, per_service: int,
                 churn: int, kubeconfig: Path) -> None:
    server = ApiServer(clock=SystemClock(), history_limit=churn + 1000,
                       watcher_capacity=churn + 1000)
    registry = server.registries["endpointslices"]
    for s in range(services):
        registry.create("bench", slice_body(s, per_service), WriteOptions())
    await server.start()
    server.write_kubeconfig(kubeconfig)
    conn.send("ready")
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "stop":
            break
        started = time.monotonic()
        for i in range(churn):
            service, round_ = i % services, i // services
            # Store writes directly: the generator's speed is not what is measured.
            flipped = round_ % per_service if round_ % 2 == 0 else None
            body = slice_body(service, per_service, flipped)
            current = server.store.get("endpointslices", ("bench", f"svc{service}-abcde"))
            assert current is not None
            server.store.put("endpointslices", {**body, "metadata": current["metadata"]})
            if i % 200 == 0:
                await asyncio.sleep(0)  # let the server stream what it has
        conn.send((server.store.revision, time.monotonic() - started))
    await server.stop()


def serve(conn: multiprocessing.connection.Connection, services: int, per_service: int,
          churn: int, kubeconfig: str) -> None:
    asyncio.run(_serve(conn, services, per_service, churn, Path(kubeconfig)))


