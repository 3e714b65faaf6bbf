"""The agent, built in one place (``build_agent``) from its settings: watches, the merged slice
view, the tracker, the dataplane source, metrics, HTTP. ``observer run``, the lab, the
benchmarks and the tests all build it there; what differs (the lab's in-memory dataplane, a
test's stand-in for a kernel without IPVS) is handed in as the way the dataplane is opened."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes_asyncio import client
from prometheus_client import CollectorRegistry

from observer.clock import Clock
from observer.config import AgentConfig, DataplaneSettings
from observer.dataplane.commands import CommandRunner
from observer.dataplane.mode import Wiring
from observer.dataplane.model import DataplaneSource
from observer.dataplane.modes import open_source
from observer.episodes.observers import EpisodeObserver, Observers
from observer.episodes.sinks import PodSink, SliceSink, TerminalPodSink
from observer.episodes.slices import SliceView
from observer.episodes.tracker import EpisodeTracker
from observer.episodes.traffic import TrafficBook
from observer.export.events import EventRecorder, KubernetesEvents
from observer.export.log import EpisodeLog
from observer.export.metrics import AgentMetrics, DataplaneHealth, StateCollector, TrafficHealth
from observer.export.server import AgentHttp
from observer.export.workloads import WorkloadMetrics
from observer.kube.watch import Requester, ResourceWatch
from observer.tasks import cancel_and_wait
from observer.traffic.source import ConntrackSource, TrafficError, open_conntrack
from observer.values import ProxyMode

log = structlog.get_logger("observer.agent")

# kube-proxy ignores these slices (cmd/kube-proxy/app/server.go builds the same selector), so
# the agent does too: no dataplane would ever drop their endpoints.
PROXYABLE_SLICES = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"
# Pods whose containers have all exited (pkg/registry/core/pod/strategy.go makes status.phase
# selectable; a pod entering the selection arrives as ADDED) — of the pods that only end when
# deleted: restartPolicy Always, which Deployments, StatefulSets, DaemonSets and ReplicaSets
# require. Jobs' pods (Never/OnFailure) end on their own, thousands a minute in a busy cluster,
# and rarely back a Service; without this term they were most of what this watch carried
# (bench/apiserver_load.py, docs/benchmarks.md). A Never/OnFailure pod behind a Service is
# still measured; other nodes learn its stop from the slice instead.
TERMINAL_PODS = ("spec.restartPolicy=Always,"
                 "status.phase!=Pending,status.phase!=Running,status.phase!=Unknown")


@dataclass(frozen=True)
class WatchRequest:
    """What one of the agent's watches asks of the API server: the list function (a
    kubernetes_asyncio one) and its selectors."""

    request: Requester
    field_selector: str = ""
    label_selector: str = ""


def watch_requests(api: client.ApiClient, node_name: str, *,
                   terminal_pods: bool) -> dict[str, WatchRequest]:
    """The agent's watches, by the resource name their sinks and metrics use. Also what
    ``bench/apiserver_load.py`` opens, so its load is the agent's."""
    list_pods = client.CoreV1Api(api).list_pod_for_all_namespaces
    requests = {
        "endpointslices": WatchRequest(
            client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces,
            label_selector=PROXYABLE_SLICES),
        "pods": WatchRequest(list_pods, field_selector=f"spec.nodeName={node_name}"),
    }
    if terminal_pods:
        requests["terminal_pods"] = WatchRequest(list_pods, field_selector=TERMINAL_PODS)
    return requests


@dataclass(frozen=True)
class DataplaneWiring:
    """What a dataplane source is opened with: its settings, the clock, the metrics of its
    reads, and the catalog of services the slices name (to name what the rules do not)."""

    settings: DataplaneSettings
    clock: Clock
    health: DataplaneHealth
    catalog: SliceView


OpenDataplane = Callable[[DataplaneWiring], Awaitable[DataplaneSource | None]]


async def open_dataplane(wiring: DataplaneWiring) -> DataplaneSource | None:
    """The source the settings ask for (None for ``none``); ``CommandError`` when this node's
    dataplane cannot be read."""
    settings = wiring.settings
    if settings.mode == "none":
        return None
    return await open_source(settings.mode, Wiring(
        runner=CommandRunner(netns=settings.netns), options=settings.options,
        clock=wiring.clock, metrics=wiring.health, poll_interval=settings.poll_interval,
        poll_max_cpu=settings.poll_max_cpu, known_services=wiring.catalog.service_port_names,
        candidates=wiring.catalog.service_ports_of))


def given(source: DataplaneSource) -> OpenDataplane:
    """A dataplane source made elsewhere (the lab's in-memory dataplane, a test's stand-in)."""
    async def open_given(wiring: DataplaneWiring) -> DataplaneSource:
        return source
    return open_given


async def build_agent(config: AgentConfig, *, api: client.ApiClient, clock: Clock,
                      registry: CollectorRegistry | None = None,
                      dataplane: OpenDataplane = open_dataplane,
                      sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Agent:
    """An agent, ready to ``run``. ``dataplane`` opens its dataplane source (by default as the
    settings say); ``CommandError`` if it cannot, ``TrafficError`` if ``--traffic on`` cannot
    be honoured."""
    registry = registry if registry is not None else CollectorRegistry()
    # exported whatever the mode: zeros, not gaps
    health = DataplaneHealth(registry, config.histogram_buckets)
    traffic_health = TrafficHealth(registry)
    catalog = SliceView()
    source = await dataplane(DataplaneWiring(config.dataplane, clock, health, catalog))
    traffic = None
    if config.traffic.mode != "off":
        try:
            traffic = await open_conntrack(config.dataplane.netns, clock=clock,
                                           errors=traffic_health)
        except TrafficError as error:
            if config.traffic.mode == "on":
                raise
            log.warning("not following connections (--traffic auto): the dataplane stage is "
                        "still measured", reason=error.reason, error=str(error))
    return Agent(config=config, api=api, clock=clock, dataplane=source, traffic=traffic,
                 slices=catalog, registry=registry, sleep=sleep)


class Agent:
    """Made by ``build_agent``."""

    def __init__(self, *, config: AgentConfig, api: client.ApiClient, clock: Clock,
                 dataplane: DataplaneSource | None, slices: SliceView,
                 registry: CollectorRegistry, traffic: ConntrackSource | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.config = config
        self.clock = clock
        self.dataplane = dataplane
        self.proxy_mode: ProxyMode = dataplane.mode if dataplane is not None else "none"
        self.registry = registry
        self.metrics = AgentMetrics(self.registry, proxy_mode=self.proxy_mode,
                                    buckets=config.histogram_buckets)
        self.catalog = slices  # the merged slice view, as the dataplane readers see it
        self.traffic = traffic
        observers: list[EpisodeObserver] = [
            self.metrics, WorkloadMetrics(registry, settings=config.workloads,
                                          now=clock.monotonic,
                                          overrides=config.histogram_buckets), EpisodeLog()]
        # Unsafe terminations as Kubernetes Events on their pods (--events).
        self.events: EventRecorder | None = None
        if config.events.enabled:
            self.events = EventRecorder(settings=config.events, node_name=config.node_name,
                                        api=KubernetesEvents(api), registry=registry,
                                        clock=clock)
            observers.append(self.events)
        # What connections did to the episodes' endpoints, when a traffic source follows them.
        self.book: TrafficBook | None = None
        if traffic is not None:
            self.book = TrafficBook(window=config.traffic.window, listener=traffic,
                                    observers=Observers(observers))
            observers.append(self.book)
        self.tracker = EpisodeTracker(
            node_name=config.node_name, clock=clock, observers=observers, slices=slices,
            measure_dataplane=dataplane is not None,
            dataplane_selected=dataplane.selected if dataplane is not None else None,
            dataplane_expect=dataplane.expect if dataplane is not None else None,
            dataplane_primed=dataplane.primed if dataplane is not None else None,
            ttl=config.episode_ttl, max_in_flight=config.max_in_flight,
            keep_finished=config.keep_finished,
            max_stage_uncertainty=config.max_stage_uncertainty)
        sinks: dict[str, SliceSink | PodSink] = {sink.resource: sink for sink in (
            SliceSink(self.tracker, self.metrics), PodSink(self.tracker, self.metrics),
            TerminalPodSink(self.tracker, self.metrics))}
        self.watches = [
            ResourceWatch(resource=resource, request=wanted.request, sink=sinks[resource],
                          metrics=self.metrics, clock=clock, settings=config.watch,
                          field_selector=wanted.field_selector,
                          label_selector=wanted.label_selector, sleep=sleep)
            for resource, wanted in watch_requests(
                api, config.node_name, terminal_pods=config.terminal_pod_watch).items()]
        by_resource = {w.resource: w for w in self.watches}
        self.slices, self.pods = by_resource["endpointslices"], by_resource["pods"]
        self.registry.register(StateCollector(
            in_flight=lambda: len(self.tracker.episodes),
            last_events=lambda: ((w.resource, w.last_event_wall) for w in self.watches),
            proxy_mode=self.proxy_mode))
        self.http = AgentHttp(registry=self.registry, ready=self.ready,
                              episodes=self.episodes_view, debug=config.debug_endpoints,
                              shutdown_timeout=config.shutdown_timeout)
        self._stopping = False

    def ready(self) -> bool:
        return not self._stopping and all(w.synced.is_set() for w in self.watches)

    def episodes_view(self) -> dict[str, Any]:
        return {
            "node": self.config.node_name, "proxy_mode": self.proxy_mode,
            "clock": "timestamps: 'wall' is this agent's wall clock at the monotonic reading "
                     "the stages are computed from; api_delete_requested is the API server's "
                     "clock, whole seconds",
            "in_flight": [e.to_dict() for e in self.tracker.episodes.values()],
            "finished": [e.to_dict() for e in reversed(self.tracker.finished)],
        }

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.housekeeping_interval)
            self.tracker.expire()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (or a background task fails), then shut down in order:
        /readyz fails first, background work stops, in-progress HTTP requests finish."""
        url = await self.http.start(*self.config.listen)
        log.info("agent started", node=self.config.node_name, proxy_mode=self.proxy_mode,
                 traffic=self.traffic is not None, url=url)
        jobs = [*(w.run() for w in self.watches), self._housekeeping()]
        if self.dataplane is not None:
            jobs.append(self.dataplane.run(self.tracker.dataplane_changed))
        if self.traffic is not None and self.book is not None:
            jobs.append(self.traffic.run(self.book))
        if self.events is not None:
            jobs.append(self.events.run())
        tasks = [asyncio.create_task(job) for job in jobs]
        stopper = asyncio.create_task(stop.wait())
        failed: BaseException | None = None
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and not task.cancelled():
                    failed = task.exception() or RuntimeError(f"{task!r} ended")
        finally:
            self._stopping = True
            try:
                await cancel_and_wait(*tasks, stopper)
            finally:
                if self.traffic is not None:
                    self.traffic.close()
                await self.http.stop()
        if failed is not None:
            log.error("agent stopping: a background task failed", error=repr(failed))
            raise failed
        log.info("agent stopped")
