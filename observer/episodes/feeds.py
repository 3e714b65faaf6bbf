"""Where watch events enter the tracker: raw API objects are parsed into typed views, stamped
with their receipt time, and handed over. A malformed object is logged and counted; the
tracker keeps the last good version of it, so no other episode is affected."""

from __future__ import annotations

from typing import Any, Protocol

import structlog

from observer.episodes.tracker import EpisodeTracker
from observer.kube.objects import (
    EndpointSlice,
    MalformedObject,
    Pod,
    parse_endpoint_slice,
    parse_pod,
)

log = structlog.get_logger("observer.feeds")


class InputMetrics(Protocol):
    def invalid_input(self, resource: str, reason: str) -> None: ...


def _name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        return f"{meta.get('namespace')}/{meta.get('name')}"
    return "<unknown>"


class SliceFeed:
    """The EndpointSlice watch's sink."""

    resource = "endpointslices"

    def __init__(self, tracker: EpisodeTracker, metrics: InputMetrics) -> None:
        self.tracker = tracker
        self.metrics = metrics
        self._pending: list[EndpointSlice] = []

    def _parse(self, obj: dict[str, Any]) -> EndpointSlice | None:
        try:
            eps = parse_endpoint_slice(obj)
        except MalformedObject as error:
            self.metrics.invalid_input(self.resource, error.reason)
            log.warning("endpointslice skipped", slice=_name(obj), error=str(error))
            return None
        if any(not e.pod_uid and not e.pod_name for e in eps.endpoints):
            # Still measured on every node; only the link to a local pod needs the targetRef.
            self.metrics.invalid_input(self.resource, "no_target_ref")
        return eps

    def list_page(self, items: list[dict[str, Any]], *, first: bool) -> None:
        if first:
            self._pending = []
        self._pending.extend(eps for eps in map(self._parse, items) if eps is not None)

    def listed(self, *, relist: bool) -> None:
        pending, self._pending = self._pending, []
        self.tracker.slices_listed(pending, self.tracker.now("slice_watch"), relist=relist)

    def event(self, event_type: str, obj: dict[str, Any]) -> None:
        at = self.tracker.now("slice_watch")
        eps = self._parse(obj)
        if eps is None:
            return
        if event_type == "DELETED":
            self.tracker.slice_deleted(eps.namespace, eps.name, at)
        else:
            self.tracker.slice_changed(eps, at)


class PodFeed:
    """The sink of the watch on this node's pods."""

    resource = "pods"

    def __init__(self, tracker: EpisodeTracker, metrics: InputMetrics) -> None:
        self.tracker = tracker
        self.metrics = metrics
        self._pending: list[Pod] = []

    def _parse(self, obj: dict[str, Any]) -> Pod | None:
        try:
            return parse_pod(obj)
        except MalformedObject as error:
            self.metrics.invalid_input(self.resource, error.reason)
            log.warning("pod skipped", pod=_name(obj), error=str(error))
            return None

    def list_page(self, items: list[dict[str, Any]], *, first: bool) -> None:
        if first:
            self._pending = []
        self._pending.extend(pod for pod in map(self._parse, items) if pod is not None)

    def listed(self, *, relist: bool) -> None:
        pending, self._pending = self._pending, []
        self.tracker.pods_listed(pending, self.tracker.now("pod_watch"), relist=relist)

    def event(self, event_type: str, obj: dict[str, Any]) -> None:
        at = self.tracker.now("pod_watch")
        pod = self._parse(obj)
        if pod is None:
            return
        if event_type == "DELETED":
            self.tracker.pod_deleted(pod, at)
        else:
            self.tracker.pod_changed(pod, at)
