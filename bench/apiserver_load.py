"""Benchmark (issue 19): what the agents of a large cluster cost its API server, beside what
kube-proxy's own watches cost it.

A child process runs the lab API server preloaded with a large cluster (bench/cluster.py: by
default 10,000 Services, 100,000 endpoints in slices of up to 100, 150,000 pods, 5,000 Node
objects) and makes the writes of a churn. This process runs N agent-like watchers — the
agent's own watch code (``ResourceWatch``) with the agent's own requests and selectors
(``observer.agent.watch_requests``), each simulated node with its own client — and K
kube-proxy-like watchers (EndpointSlices and Services with kube-proxy's label selector, its own
Node by name: ``cmd/kube-proxy/app/server.go``). Every byte each watch receives is counted:
list responses as read, watch streams line by line (bookmarks apart).

The churn runs in phases, one kind of operation each, so that each kind's cost per node is
measured on its own:

- ``replace-small`` / ``replace-large``: one step of a rolling update (a new pod up, an old
  one gone, with every write of the ReplicaSet controller, scheduler, kubelet and
  EndpointSlice controller) in a Service of a few endpoints / in one whose slices hold 100;
- ``job``: one Job pod's life (created, bound, running, Succeeded, finalizer removed, deleted);
- ``heartbeat``: one Node status update by its kubelet, for each simulated node.

A phase ends when every watch has caught up with the server's last revision (bookmarks every
second carry it to watches that saw no event). Bytes per operation and per node then give the
steady state of any churn profile: bytes/s per node = Σ_kind rate_kind * bytes_kind; the
printed extrapolation uses the profile given on the command line (defaults: a busy 5,000-node
cluster, see ``--profile-*``). A last ``mixed`` phase interleaves the kinds in the profile's
proportions and checks that its measured bytes match what the per-kind figures predict.

    .venv/bin/python -m bench.apiserver_load [--agents 200] [--kube-proxies 10] [--small]

Bytes are JSON as the lab server writes it, for both sides. kube-proxy itself asks for
protobuf (its default ``clientConnection.contentType``), which is smaller on the wire; the
agent (kubernetes_asyncio) speaks JSON. The comparison here is like for like (same encoding,
same objects), not the two processes' real wire bytes.
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
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config

from observer.agent import PROXYABLE_SLICES, TERMINAL_PODS, WatchRequest, watch_requests
from observer.clock import SystemClock
from observer.config import WatchSettings
from observer.kube.watch import ResourceWatch
from observer.testing.rss import rss_mib

PARTIAL = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


def serve_in_child(*args: Any) -> None:
    from bench.apiserver_load_server import serve  # imported in the child only

    serve(*args)


@dataclass
class Tally:
    """What one watch received."""

    list_bytes: int = 0
    list_requests: int = 0
    list_items: int = 0
    watch_bytes: int = 0
    bookmark_bytes: int = 0
    events: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, int]:
        return {"list_bytes": self.list_bytes, "list_requests": self.list_requests,
                "list_items": self.list_items, "watch_bytes": self.watch_bytes,
                "bookmark_bytes": self.bookmark_bytes, "events": sum(self.events.values())}


class CountingSink:
    """A watch sink that only counts (the agent's parsing is measured in bench/agent_churn)."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def list_page(self, items: list[dict[str, Any]], *, first: bool) -> None:
        self.tally.list_items += len(items)

    def listed(self, *, relist: bool) -> None:
        pass

    def event(self, event_type: str, obj: dict[str, Any], *, precision: float) -> None:
        self.tally.events[event_type] += 1


class CountedResponse:
    """A list response whose body is counted as it is read."""

    def __init__(self, response: Any, tally: Tally) -> None:
        self._response, self._tally = response, tally
        self.status, self.headers = response.status, response.headers
        self.content = response.content

    async def read(self) -> bytes:
        body: bytes = await self._response.read()
        self._tally.list_bytes += len(body)
        self._tally.list_requests += 1
        return body

    def release(self) -> Any:
        return self._response.release()


class CountingWatch(ResourceWatch):
    """The agent's watch loop, with every line of every stream counted."""

    tally: Tally

    def _handle(self, line: bytes) -> None:
        if line.startswith(b'{"type":"BOOKMARK"'):
            self.tally.bookmark_bytes += len(line) + 1
        else:
            self.tally.watch_bytes += len(line) + 1
        super()._handle(line)


def counted(request: Callable[..., Awaitable[Any]], tally: Tally) -> Callable[..., Awaitable[Any]]:
    async def wrapped(**params: Any) -> Any:
        return CountedResponse(await request(**params), tally)
    return wrapped


def metadata_only(api: client.ApiClient, path: str) -> Callable[..., Awaitable[Any]]:
    """A list/watch of ``path`` asking for ``PartialObjectMetadata`` (the generated functions
    overwrite the Accept header, hence the direct call): an alternative measured here, not
    what the agent does."""
    names = {"field_selector": "fieldSelector", "label_selector": "labelSelector",
             "limit": "limit", "_continue": "continue", "watch": "watch",
             "resource_version": "resourceVersion", "timeout_seconds": "timeoutSeconds",
             "allow_watch_bookmarks": "allowWatchBookmarks"}

    async def request(**params: Any) -> Any:
        query = [(names[k], str(v).lower() if isinstance(v, bool) else v)
                 for k, v in params.items() if k in names]
        return await api.call_api(path, "GET", {}, query, {"Accept": PARTIAL},
                                  auth_settings=["BearerToken"], response_types_map={},
                                  _preload_content=False,
                                  _request_timeout=params.get("_request_timeout"))
    return request


def kube_proxy_requests(api: client.ApiClient, node: str) -> dict[str, WatchRequest]:
    """kube-proxy's informers (cmd/kube-proxy/app/server.go): Services and EndpointSlices
    with the no-proxy-name, not-headless label selector; its own Node by field selector."""
    return {
        "endpointslices": WatchRequest(
            client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces,
            label_selector=PROXYABLE_SLICES),
        "services": WatchRequest(client.CoreV1Api(api).list_service_for_all_namespaces,
                                 label_selector=PROXYABLE_SLICES),
        "node": WatchRequest(client.CoreV1Api(api).list_node,
                             field_selector=f"metadata.name={node}"),
    }


def alternative_requests(api: client.ApiClient) -> dict[str, WatchRequest]:
    """Other shapes of the terminal-pod watch, measured for docs/deploy.md's trade-offs."""
    list_pods = client.CoreV1Api(api).list_pod_for_all_namespaces
    any_policy = "status.phase!=Pending,status.phase!=Running,status.phase!=Unknown"
    return {
        "terminal_pods_any_restart_policy": WatchRequest(list_pods, field_selector=any_policy),
        "terminal_pods_metadata_only": WatchRequest(metadata_only(api, "/api/v1/pods"),
                                                    field_selector=TERMINAL_PODS),
    }


@dataclass
class Node:
    role: str  # "agent", "kube-proxy" or "alternative"
    name: str
    api: client.ApiClient
    tallies: dict[str, Tally]
    watches: list[ResourceWatch]


SETTINGS = WatchSettings(server_timeout=3600, inactivity_timeout=600, request_timeout=600)


def make_node(role: str, name: str, configuration: Any, clock: SystemClock) -> Node:
    api = client.ApiClient(configuration)
    requests = {"agent": lambda: watch_requests(api, name, terminal_pods=True),
                "kube-proxy": lambda: kube_proxy_requests(api, name),
                "alternative": lambda: alternative_requests(api)}[role]()
    tallies: dict[str, Tally] = {}
    watches: list[ResourceWatch] = []
    for resource, wanted in requests.items():
        tally = tallies[resource] = Tally()
        watch = CountingWatch(resource=resource, request=counted(wanted.request, tally),
                              sink=CountingSink(tally), metrics=_NoMetrics(), clock=clock,
                              settings=SETTINGS, field_selector=wanted.field_selector,
                              label_selector=wanted.label_selector)
        watch.tally = tally
        watches.append(watch)
    return Node(role, name, api, tallies, watches)


class _NoMetrics:
    def event(self, resource: str) -> None:
        pass

    def restart(self, resource: str, reason: str) -> None:
        raise AssertionError(f"{resource} watch restarted ({reason}): the numbers would be off")

    def malformed(self, resource: str) -> None:
        raise AssertionError(f"{resource}: malformed line")

    def invalid_input(self, resource: str, reason: str) -> None:
        raise AssertionError(f"{resource}: {reason}")


def per_node(nodes: list[Node], before: dict[tuple[str, str], dict[str, int]]
             ) -> dict[str, dict[str, dict[str, float]]]:
    """Mean received per node of each role, per resource, since ``before``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    counts = Counter(n.role for n in nodes)
    for node in nodes:
        role = out.setdefault(node.role, {})
        for resource, tally in node.tallies.items():
            now, then = tally.snapshot(), before.get((node.name + node.role, resource), {})
            sums = role.setdefault(resource, {})
            for key, value in now.items():
                sums[key] = sums.get(key, 0) + (value - then.get(key, 0)) / counts[node.role]
    return out


def snapshot(nodes: list[Node]) -> dict[tuple[str, str], dict[str, int]]:
    return {(n.name + n.role, r): t.snapshot() for n in nodes for r, t in n.tallies.items()}


async def caught_up(nodes: list[Node], revision: int) -> float:
    """Wait until every watch has seen ``revision`` (bookmarks carry it); seconds waited."""
    started = time.monotonic()
    while any(int(w.version or 0) < revision for n in nodes for w in n.watches):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        cluster = {"nodes": args.nodes, "services": args.services,
                   "endpoints": args.endpoints, "pods": args.pods}
        proc = context.Process(target=serve_in_child, args=(child, cluster, str(kubeconfig)))
        proc.start()
        nodes: list[Node] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            loop = asyncio.get_running_loop()
            started = time.monotonic()
            ready, sizes = await loop.run_in_executor(None, parent.recv)
            assert ready == "ready"
            build_seconds = time.monotonic() - started
            configuration = client.Configuration()
            await config.load_kube_config(config_file=str(kubeconfig),
                                          client_configuration=configuration)
            clock = SystemClock()
            roles = ([("agent", i) for i in range(args.agents)]
                     + [("kube-proxy", i) for i in range(args.kube_proxies)]
                     + [("alternative", args.agents)])
            for role, i in roles:
                nodes.append(make_node(role, f"node-{i:05d}", configuration, clock))
            started, cpu = time.monotonic(), time.process_time()
            for node in nodes:  # started one after another, as a rollout would
                tasks += [asyncio.create_task(w.run()) for w in node.watches]
                await asyncio.gather(*(w.synced.wait() for w in node.watches))
            list_seconds, list_cpu = time.monotonic() - started, time.process_time() - cpu
            initial = per_node(nodes, {})
            phases: dict[str, Any] = {}
            watched = sorted({n.name for n in nodes})  # agents' and kube-proxies' share names
            for kind, count in (("replace-small", args.replacements),
                                ("replace-large", args.replacements), ("job", args.jobs),
                                ("heartbeat", 1), ("mixed", args.mixed)):
                before = snapshot(nodes)
                started = time.monotonic()
                parent.send(("churn", kind, count, watched, profile(args)))
                revision, operations = await loop.run_in_executor(None, parent.recv)
                lag = await caught_up(nodes, revision)
                phases[kind] = {"operations": operations,
                                "seconds": round(time.monotonic() - started, 1),
                                "catch_up_seconds": round(lag, 2),
                                "per_node": per_node(nodes, before)}
            parent.send(("stop",))
            report = {
                "machine": {"cpu": platform.processor() or platform.machine(),
                            "cores": os.cpu_count(), "python": platform.python_version()},
                "cluster": cluster, "object_sizes": sizes,
                "agents": args.agents, "kube_proxies": args.kube_proxies,
                "build_seconds": round(build_seconds, 1),
                "initial_lists": {"seconds": round(list_seconds, 1),
                                  "client_cpu_seconds": round(list_cpu, 1),
                                  "per_node": initial},
                "phases": phases, "client_rss_mib": round(rss_mib(), 1)}
            report["profile"] = extrapolate(report, args)
            report["mixed_check"] = mixed_check(phases)
            return report
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for node in nodes:
                await node.api.close()
            proc.join(60)
            if proc.is_alive():
                proc.kill()


def profile(args: argparse.Namespace) -> dict[str, float]:
    """Operations per second, cluster-wide."""
    return {"replace-small": args.profile_replacements * args.profile_small_share,
            "replace-large": args.profile_replacements * (1 - args.profile_small_share),
            "job": args.profile_jobs,
            "heartbeat": 1 / 300}  # per node: nodeStatusReportFrequency, 5 min


def extrapolate(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Steady-state bytes/s and events/s per node, per resource, for the profile: Σ over
    kinds of rate * per-operation cost (a heartbeat's rate is per node); then * nodes."""
    rates = profile(args)
    phases = report["phases"]
    out: dict[str, Any] = {"rates_per_second": rates, "nodes": args.profile_nodes,
                           "formula": "bytes/s per node = Σ_kind rate_kind * "
                                      "(bytes per node in phase kind / operations in it); "
                                      "cluster = nodes * that"}
    for role in ("agent", "kube-proxy", "alternative"):
        resources: dict[str, dict[str, float]] = {}
        for kind, rate in rates.items():
            phase = phases[kind]
            for resource, got in phase["per_node"].get(role, {}).items():
                entry = resources.setdefault(resource, {"bytes_per_s": 0.0,
                                                        "events_per_s": 0.0})
                entry["bytes_per_s"] += rate * got["watch_bytes"] / phase["operations"]
                entry["events_per_s"] += rate * got["events"] / phase["operations"]
        out[role] = {r: {k: round(v, 2) for k, v in e.items()} for r, e in resources.items()}
    return out


def mixed_check(phases: dict[str, Any]) -> dict[str, Any]:
    """The mixed phase's measured watch bytes per node beside the sum of its operations'
    per-kind costs: the linear model the extrapolation rests on, checked."""
    done = phases["mixed"]["operations"]
    out: dict[str, Any] = {"operations": done}
    for role, resources in phases["mixed"]["per_node"].items():
        for resource, got in resources.items():
            predicted = sum(
                n * phases[kind]["per_node"][role][resource]["watch_bytes"]
                / phases[kind]["operations"] for kind, n in done.items())
            out[f"{role}/{resource}"] = {"measured_bytes": round(got["watch_bytes"]),
                                         "predicted_bytes": round(predicted)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--kube-proxies", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=5000, help="Node objects in the cluster")
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=100_000)
    parser.add_argument("--pods", type=int, default=150_000)
    parser.add_argument("--replacements", type=int, default=200,
                        help="operations in each replace phase")
    parser.add_argument("--jobs", type=int, default=200, help="operations in the job phase")
    parser.add_argument("--mixed", type=int, default=300, help="operations in the mixed phase")
    parser.add_argument("--profile-nodes", type=int, default=5000)
    parser.add_argument("--profile-replacements", type=float, default=20.0,
                        help="pods replaced by rolling updates per second, cluster-wide")
    parser.add_argument("--profile-small-share", type=float, default=0.5,
                        help="share of those in Services of a few endpoints")
    parser.add_argument("--profile-jobs", type=float, default=50.0,
                        help="Job pods finishing per second, cluster-wide")
    parser.add_argument("--small", action="store_true",
                        help="a quick run: 20 agents on a 1/10 cluster")
    args = parser.parse_args()
    if args.small:
        args.agents, args.kube_proxies, args.nodes = 20, 3, 500
        args.services, args.endpoints, args.pods = 1000, 10_000, 15_000
        args.replacements = args.jobs = 50
        args.mixed = 100
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
