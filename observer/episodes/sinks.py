"""Where watch events enter the tracker: raw API objects are parsed into typed views, stamped
with their receipt time, and handed over. A malformed object is logged and counted; the
tracker keeps the last good version of it, so no other episode is affected."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, Protocol, TypeVar

import structlog

from observer.episodes.tracker import EpisodeTracker
from observer.kube.objects import (
    EndpointSlice,
    MalformedObject,
    Pod,
    parse_endpoint_slice,
    parse_pod,
)
from observer.values import Source, Timestamp

log = structlog.get_logger("observer.sinks")
T = TypeVar("T")


class InputMetrics(Protocol):
    def invalid_input(self, resource: str, reason: str) -> None: ...


def _name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        return f"{meta.get('namespace')}/{meta.get('name')}"
    return "<unknown>"


class _Sink(ABC, Generic[T]):
    """A watch's sink: parse, stamp the receipt time, hand over; list pages are parsed as
    they arrive and handed over together once the list is complete."""

    resource: str
    source: Source

    def __init__(self, tracker: EpisodeTracker, metrics: InputMetrics) -> None:
        self.tracker = tracker
        self.metrics = metrics
        self._pending: list[T] = []

    def _parse(self, obj: dict[str, Any]) -> T | None:
        try:
            return self._read(obj)
        except MalformedObject as error:
            self.metrics.invalid_input(self.resource, error.reason)
            log.warning("object skipped", resource=self.resource, object=_name(obj),
                        error=str(error))
            return None

    def list_page(self, items: list[dict[str, Any]], *, first: bool) -> None:
        if first:
            self._pending = []
        self._pending.extend(item for item in map(self._parse, items) if item is not None)

    def listed(self, *, relist: bool) -> None:
        pending, self._pending = self._pending, []
        self._listed(pending, self.tracker.now(self.source), relist)

    def event(self, event_type: str, obj: dict[str, Any], *, precision: float) -> None:
        at = self.tracker.now(self.source, precision)
        item = self._parse(obj)
        if item is not None:
            (self._deleted if event_type == "DELETED" else self._changed)(item, at)

    @abstractmethod
    def _read(self, obj: dict[str, Any]) -> T:
        """Per resource."""

    @abstractmethod
    def _listed(self, items: list[T], at: Timestamp, relist: bool) -> None:
        """Per resource."""

    @abstractmethod
    def _changed(self, item: T, at: Timestamp) -> None:
        """Per resource."""

    @abstractmethod
    def _deleted(self, item: T, at: Timestamp) -> None:
        """Per resource."""


class SliceSink(_Sink[EndpointSlice]):
    """The EndpointSlice watch's sink."""

    resource, source = "endpointslices", "slice_watch"

    def _read(self, obj: dict[str, Any]) -> EndpointSlice:
        eps = parse_endpoint_slice(obj)
        if any(not e.pod_uid and not e.pod_name for e in eps.endpoints):
            # Still measured on every node; only the link to a local pod needs the targetRef.
            self.metrics.invalid_input(self.resource, "no_target_ref")
        return eps

    def _listed(self, items: list[EndpointSlice], at: Timestamp, relist: bool) -> None:
        self.tracker.slices_listed(items, at, relist=relist)

    def _changed(self, item: EndpointSlice, at: Timestamp) -> None:
        self.tracker.slice_changed(item, at)

    def _deleted(self, item: EndpointSlice, at: Timestamp) -> None:
        self.tracker.slice_deleted(item.namespace, item.name, at)


class PodSink(_Sink[Pod]):
    """The sink of the watch on this node's pods."""

    resource, source = "pods", "pod_watch"

    def __init__(self, tracker: EpisodeTracker, metrics: InputMetrics) -> None:
        super().__init__(tracker, metrics)
        self._owner_problem_logged = False

    def _read(self, obj: dict[str, Any]) -> Pod:
        pod = parse_pod(obj)
        if pod.owner_problem is not None:
            # Still measured, as its own workload; said once (a bad controller writes every
            # pod alike), counted every time.
            self.metrics.invalid_input(self.resource, "owner_references")
            if not self._owner_problem_logged:
                self._owner_problem_logged = True
                log.warning("owner references not followed: the pod is its own workload "
                            "(said once)", object=_name(obj), error=pod.owner_problem)
        return pod

    def _listed(self, items: list[Pod], at: Timestamp, relist: bool) -> None:
        self.tracker.pods_listed(items, at, relist=relist)

    def _changed(self, item: Pod, at: Timestamp) -> None:
        self.tracker.pod_changed(item, at)

    def _deleted(self, item: Pod, at: Timestamp) -> None:
        self.tracker.pod_deleted(item, at)


class TerminalPodSink(PodSink):
    """The sink of the watch on terminal pods of every node (``status.phase`` Succeeded or
    Failed): how other nodes learn that a pod stopped without waiting for the slice."""

    resource = "terminal_pods"

    def _listed(self, items: list[Pod], at: Timestamp, relist: bool) -> None:
        self.tracker.terminal_pods_listed(items, at, relist=relist)

    def _changed(self, item: Pod, at: Timestamp) -> None:
        self.tracker.pod_terminal(item, at)

    def _deleted(self, item: Pod, at: Timestamp) -> None:
        """Gone after it was terminal, or deleted while it was: either way it had stopped."""
        self.tracker.pod_terminal(item, at)
