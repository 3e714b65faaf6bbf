"""Per-workload metrics (observer/export/workloads.py) on a manual clock: the tracker tells
them of its episodes, each of a pod of this node with its workload; their series, their cap
and their expiry, read from a registry of their own."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry

from observer.config import WorkloadSettings
from observer.dataplane.model import DataplaneChange
from observer.episodes.tracker import EpisodeTracker
from observer.episodes.traffic import TrafficBook
from observer.export.workloads import WorkloadMetrics
from observer.kube.objects import ContainerState, Endpoint, EndpointSlice, Pod, PortRef
from observer.kube.owners import Workload
from observer.values import Connection, EndpointKey, ServicePort
from tests.conftest import ManualClock
from tests.test_traffic_book import Source

P = "endpoint_propagation_workload_"


class Node:
    """This node's tracker, the metrics under test, and pods of workloads to delete."""

    def __init__(self, clock: ManualClock, settings: WorkloadSettings | None = None,
                 *, traffic: bool = False, dataplane: bool = False) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        self.metrics = WorkloadMetrics(self.registry, settings=settings or WorkloadSettings(),
                                       now=clock.monotonic)
        observers: list[object] = [self.metrics]
        self.book: TrafficBook | None = None
        if traffic:
            self.book = TrafficBook(window=10.0, observers=self.metrics, listener=Source())
            observers.append(self.book)
        self.tracker = EpisodeTracker(node_name="node-a", clock=clock,
                                      observers=observers,  # type: ignore[arg-type]
                                      measure_dataplane=dataplane)

    def value(self, name: str, workload: str, namespace: str = "shop", **labels: str
              ) -> float | None:
        return self.registry.get_sample_value(
            f"{P}{name}", {"namespace": namespace, "workload": workload, **labels})

    def delete(self, name: str, *, node: str = "node-a", ip: str = "10.0.0.1",
               connect_after_stop: int = 0) -> None:
        """A pod of workload ``deployment/<name>`` (``statefulset/<name>`` for "db") deleted
        and stopped, ``connect_after_stop`` connections reaching it after its stop."""
        kind = "statefulset" if name == "db" else "deployment"
        uid = f"uid-{name}-{self.clock.monotonic()}"
        pod = Pod("shop", f"{name}-x", uid, node, (ip,), "Running", True, None, None,
                  (ContainerState("app", True, False, False),), "1", 0.0,
                  workload=Workload("shop", kind, name))

        def slice_(ready: bool) -> EndpointSlice:
            endpoints = (Endpoint(ip, ready, True, not ready, node, "shop", f"{name}-x", uid),
                         Endpoint("10.9.9.9", True, True, False, "node-b", "shop", "o", "o"))
            return EndpointSlice("shop", f"{name}-1", name, "IPv4", (PortRef("http", 80, "TCP"),),
                                 endpoints, "1")

        t = self.tracker
        t.pods_listed([pod], t.now("pod_watch"), relist=False)
        t.slice_changed(slice_(True), t.now("slice_watch"))
        deleting = dataclasses.replace(pod, ready=False, deletion_timestamp=1_800_000_030.0,
                                       deletion_grace_seconds=30)
        t.pod_changed(deleting, t.now("pod_watch"))
        t.slice_changed(slice_(False), t.now("slice_watch"))
        self.clock.advance(1.5)
        t.pod_changed(dataclasses.replace(deleting, containers=(
            ContainerState("app", False, True, False),)), t.now("pod_watch"))
        for _ in range(connect_after_stop):
            self.clock.advance(0.5)
            assert self.book is not None
            self.book.connection(Connection(ip, 80, "TCP", False, t.now("conntrack")))
        t.slice_changed(EndpointSlice("shop", f"{name}-1", name, "IPv4",
                                      (PortRef("http", 80, "TCP"),), slice_(True).endpoints[1:],
                                      "2"), t.now("slice_watch"))


def test_a_deletion_on_this_node_counts_under_its_workload(clock: ManualClock) -> None:
    node = Node(clock)
    node.delete("web")
    node.delete("db", ip="10.0.0.2")
    assert node.value("episodes_total", "deployment/web") == 1
    assert node.value("episodes_total", "statefulset/db") == 1
    # The app exited 1.5 s after SIGTERM (no preStop: its exit is the whole shutdown).
    assert node.value("app_shutdown_seconds_count", "deployment/web") == 1
    assert node.value("app_shutdown_seconds_sum", "deployment/web") == 1.5
    assert node.value("prestop_seconds", "deployment/web") == 0  # none: known, 0 s
    assert node.registry.get_sample_value("endpoint_propagation_workloads") == 2


def test_another_nodes_pods_have_no_series_here(clock: ManualClock) -> None:
    node = Node(clock, dataplane=True)
    t = node.tracker
    gone = Endpoint("10.0.5.1", True, True, False, "node-b", "shop", "web-y", "uid-y")
    slice_ = EndpointSlice("shop", "web-1", "web", "IPv4", (PortRef("http", 80, "TCP"),), (
        gone, Endpoint("10.9.9.9", True, True, False, "node-b", "shop", "o", "o")), "1")
    t.slices_listed([slice_], t.now("slice_watch"), relist=False)
    t.slice_changed(dataclasses.replace(slice_, endpoints=slice_.endpoints[1:]),
                    t.now("slice_watch"))
    key = EndpointKey(ServicePort("shop", "web", "http", "TCP"), "10.0.5.1", 80)
    t.dataplane_changed(DataplaneChange(key, False, t.now("dataplane")))
    (episode,) = t.finished
    assert not episode.local
    assert node.registry.get_sample_value("endpoint_propagation_workloads") == 0


def test_past_the_cap_episodes_fold_into_other(clock: ManualClock) -> None:
    node = Node(clock, WorkloadSettings(max_workloads=2))
    for name in ("web", "api", "cart", "search"):
        node.delete(name)
    assert node.value("episodes_total", "deployment/web") == 1
    assert node.value("episodes_total", "deployment/api") == 1
    assert node.value("episodes_total", "deployment/cart") is None
    # Each of the two workloads folded counted its episode and its shutdown there.
    assert node.value("episodes_total", "_other", namespace="_other") == 2
    assert node.registry.get_sample_value(
        "endpoint_propagation_workloads_folded_total") == 4
    assert node.registry.get_sample_value("endpoint_propagation_workloads") == 3
    node.delete("web")  # a workload with series keeps them
    assert node.value("episodes_total", "deployment/web") == 2


def test_a_workload_idle_for_long_loses_its_series_until_its_next_episode(
        clock: ManualClock) -> None:
    node = Node(clock, WorkloadSettings(idle=60.0))
    node.delete("web")
    clock.advance(30)
    node.delete("api")
    clock.advance(31)
    node.tracker.expire()
    assert node.value("episodes_total", "deployment/web") is None
    assert node.value("app_shutdown_seconds_count", "deployment/web") is None
    assert node.value("prestop_seconds", "deployment/web") is None
    assert node.value("episodes_total", "deployment/api") == 1
    assert node.registry.get_sample_value("endpoint_propagation_workloads") == 1
    node.delete("web")
    assert node.value("episodes_total", "deployment/web") == 1  # counted afresh


def test_switched_off_there_are_no_series(clock: ManualClock) -> None:
    node = Node(clock, WorkloadSettings(enabled=False))
    node.delete("web")
    assert node.value("episodes_total", "deployment/web") is None
    assert node.registry.get_sample_value("endpoint_propagation_workloads") == 0


def test_connections_after_the_stop_count_under_the_workload(clock: ManualClock) -> None:
    node = Node(clock, traffic=True)
    node.delete("web", connect_after_stop=3)
    node.delete("db", ip="10.0.0.2")
    clock.advance(11)
    node.tracker.expire()  # the traffic windows close
    assert node.value("connections_after_removal_total", "deployment/web", after="stopped") == 3
    assert node.value("connections_after_removal_total", "statefulset/db",
                      after="stopped") is None
    # Deletion seen, then 1.5 s to the stop and three connections 0.5 s apart: 3 s.
    assert node.value("last_connection_seconds_sum", "deployment/web", source="forwarded") == 3.0
    assert node.value("last_connection_seconds_count", "deployment/web",
                      source="forwarded") == 1
