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


def slice_body(service: int, per_service: int, flipped: int | None = None, *,
               local: bool = False) -> dict[str, Any]:
    """``local``: every endpoint's pod on node-0, the measured agent's node."""
    endpoints = []
    for e in range(per_service):
        terminating = e == flipped
        endpoints.append({
            "addresses": [address(service, e)],
            "conditions": {"ready": not terminating, "serving": True,
                           "terminating": terminating},
            "nodeName": "node-0" if local else f"node-{e % 50}",
            # Local pods are the API server's (their uids its own): the agent finds them by
            # address.
            "targetRef": {"kind": "Pod", "namespace": "bench", "name": f"s{service}-{e}",
                          **({} if local else {"uid": f"uid-{service}-{e}"})}})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc{service}-abcde", "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": f"svc{service}"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}


def address(service: int, endpoint: int) -> str:
    return f"10.{service // 256 % 256}.{service % 256}.{endpoint + 1}"


def pod_body(service: int, endpoint: int, workloads: int) -> dict[str, Any]:
    """A running pod on node-0 owned as a Deployment's pods are (one of ``workloads``)."""
    deployment = f"app{service % workloads}"
    ip = address(service, endpoint)
    return {"metadata": {"name": f"s{service}-{endpoint}",
                         "labels": {"app": deployment, "pod-template-hash": "5d8f7c"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": f"{deployment}-5d8f7c",
                                              "uid": f"uid-rs-{deployment}",
                                              "controller": True}]},
            "spec": {"nodeName": "node-0", "containers": [{"name": "app", "image": "app:1"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


async def _serve(conn: multiprocessing.connection.Connection, services: int, per_service: int,
                 churn: int, kubeconfig: Path, workloads: int = 0) -> None:
    """``workloads`` > 0: every pod on node-0 (each churn event a local episode) and owned by
    one of that many Deployments."""
    server = ApiServer(clock=SystemClock(), history_limit=churn + 1000,
                       watcher_capacity=churn + 1000)
    registry, pods = server.registries["endpointslices"], server.registries["pods"]
    local = workloads > 0
    for s in range(services):
        registry.create("bench", slice_body(s, per_service, local=local), WriteOptions())
        for e in range(per_service if local else 0):
            body = pod_body(s, e, workloads)
            created = pods.create("bench", body, WriteOptions())
            pods.patch("bench", created["metadata"]["name"], {**created,
                                                              "status": body["status"]},
                       WriteOptions(), status=True)
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
            body = slice_body(service, per_service, flipped, local=local)
            current = server.store.get("endpointslices", ("bench", f"svc{service}-abcde"))
            assert current is not None
            server.store.put("endpointslices", {**body, "metadata": current["metadata"]})
            if i % 200 == 0:
                await asyncio.sleep(0)  # let the server stream what it has
        conn.send((server.store.revision, time.monotonic() - started))
    await server.stop()


def serve(conn: multiprocessing.connection.Connection, services: int, per_service: int,
          churn: int, kubeconfig: str, workloads: int = 0) -> None:
    asyncio.run(_serve(conn, services, per_service, churn, Path(kubeconfig), workloads))


