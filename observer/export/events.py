"""Kubernetes Events where a user looks first (``kubectl get events``, event exporters): on an
unsafe termination, on the pod's node, an ``events.k8s.io/v1`` Event regarding the Pod, reason
``UnsafeTermination``, type ``Warning``, its note saying what happened — how many new
connections reached the pod after it stopped, from which source, how late, how long this node's
kube-proxy kept selecting it, and the preStop it had (docs/agent.md, "Events").

- **One per pod deletion.** A pod in several Services ends several episodes; the first unsafe
  one creates the Event, the others are counted in its ``series`` (count, lastObservedTime).
- **Rate-limited per agent**: ``burst`` Events at once, then one per ``refill`` seconds (a
  token bucket, on the agent's monotonic clock). Past it, an unsafe termination of a workload
  with an Event recorded here in the last ``series_window`` seconds is counted in that
  Event's ``series`` (its note then speaks for the first; the count for all), otherwise
  dropped. Each outcome is counted: ``endpoint_propagation_events_total{result}``.
- **Written in the background**, one request at a time, in order; repeated series updates of
  one Event collapse into one request with the latest count. A refusal (no RBAC for events,
  ``--events off`` to disable) or an unreachable API server is counted, logged once per
  reason, and the agent goes on measuring.

Needs ``create`` and ``patch`` on ``events.k8s.io`` ``events`` (deploy/'s ClusterRole).
``eventTime`` and ``series.lastObservedTime`` are this agent's wall clock (``MicroTime``,
microseconds); the durations in the note come from its monotonic clock.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter

from observer.clock import Clock
from observer.config import EventSettings
from observer.episodes.model import ORIGINS, Episode
from observer.episodes.observers import EpisodeObserver
from observer.kube.apitime import format_micro_time
from observer.kube.owners import Workload

log = structlog.get_logger("observer.export")

REASON = "UnsafeTermination"
ACTION = "Stop"
REPORTING_CONTROLLER = "observer/agent"
RESULTS = ("created", "aggregated", "rate_limited", "failed")
_NOTE_LIMIT = 1024  # bytes: validation of events.k8s.io/v1 Event.note
_SOURCES = {"local": "through this node's kube-proxy",
            "forwarded": "sent to the pod's address (an ingress, a load balancer, another node)"}


class EventWriteError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # forbidden, rejected, unreachable: what is logged once


class EventApi(Protocol):
    async def create(self, namespace: str, body: dict[str, Any]) -> None: ...

    async def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None: ...


class KubernetesEvents:
    """``events.k8s.io/v1`` through kubernetes_asyncio: POST, and for a series the strategic
    merge patch kubernetes_asyncio sends for a dict body. Bodies are plain dicts, serialised as
    they are (the agent builds no models)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.events = client.EventsV1Api(api)

    async def create(self, namespace: str, body: dict[str, Any]) -> None:
        await self._call(self.events.create_namespaced_event(
            namespace, body, _preload_content=False))  # type: ignore[arg-type]

    async def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        await self._call(self.events.patch_namespaced_event(
            name, namespace, body, _preload_content=False))

    @staticmethod
    async def _call(request: Any) -> None:
        try:
            response = await request
            status = response.status
            response.release()
        except ApiException as error:
            status = error.status
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise EventWriteError("unreachable", str(error) or type(error).__name__) from None
        if status in (401, 403):
            raise EventWriteError("forbidden", f"HTTP {status}")
        if not 200 <= status < 300:
            raise EventWriteError("rejected", f"HTTP {status}")


@dataclass
class _Recorded:
    """An Event this agent created (or is creating), and what it stands for."""

    namespace: str
    name: str
    body: dict[str, Any]
    at: float  # monotonic: when it was last added to
    count: int = 1
    created: bool = False  # its create was sent
    lost: bool = False  # its create failed: its series has nothing to go to
    sent_count: int = 1  # the count the API server has
    queued: bool = False


@dataclass
class _Bucket:
    tokens: float
    at: float

    def take(self, now: float, burst: int, refill: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.at) / refill)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class _Pending:
    items: deque[_Recorded] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class EventRecorder(EpisodeObserver):
    def __init__(self, *, settings: EventSettings, node_name: str, api: EventApi,
                 registry: CollectorRegistry, clock: Clock) -> None:
        self.settings = settings
        self.node_name = node_name
        self.api = api
        self.clock = clock
        self.results = Counter(
            "endpoint_propagation_events",
            "Unsafe terminations as Kubernetes Events, by result: created, aggregated (counted "
            "in an Event's series), rate_limited (dropped), failed (the API refused or was "
            "unreachable).", ["result"], registry=registry)
        for result in RESULTS:
            self.results.labels(result)
        self._bucket = _Bucket(float(settings.burst), clock.monotonic())
        self._by_pod: dict[str, _Recorded] = {}
        self._by_workload: dict[Workload, _Recorded] = {}
        self._pending = _Pending()
        self._said: set[str] = set()

    # EpisodeObserver -------------------------------------------------------------------------

    def final(self, episode: Episode) -> None:
        if not (episode.local and episode.unsafe and episode.cause == "deletion"
                and episode.pod):
            return
        now = self.clock.monotonic()
        pod = episode.pod_uid or episode.pod
        recorded = self._by_pod.get(pod)
        if recorded is None and self._bucket.take(now, self.settings.burst,
                                                  self.settings.refill):
            recorded = self._new(episode, pod, now)
            self.results.labels("created").inc()
            self._queue(recorded)
            return
        if recorded is None and episode.workload is not None:
            recorded = self._by_workload.get(episode.workload)
        if recorded is None:
            self.results.labels("rate_limited").inc()
            return
        recorded.count += 1
        recorded.at = now
        self.results.labels("aggregated").inc()
        self._queue(recorded)

    def expire(self, now: float) -> None:
        window = self.settings.series_window
        for uid in [k for k, r in self._by_pod.items() if now - r.at > window]:
            del self._by_pod[uid]
        for workload in [k for k, r in self._by_workload.items() if now - r.at > window]:
            del self._by_workload[workload]

    # the writer ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Write what is queued, one request at a time, until cancelled."""
        pending = self._pending
        while True:
            await pending.wake.wait()
            pending.wake.clear()
            while pending.items:
                recorded = pending.items.popleft()
                recorded.queued = False
                await self._write(recorded)

    async def _write(self, recorded: _Recorded) -> None:
        if recorded.lost:
            return
        try:
            if not recorded.created:
                recorded.created = True  # once: a failed create is not retried
                try:
                    await self.api.create(recorded.namespace, recorded.body)
                except EventWriteError:
                    recorded.lost = True
                    raise
            if recorded.count != recorded.sent_count:
                count = recorded.count
                await self.api.patch(recorded.namespace, recorded.name, {"series": {
                    "count": count, "lastObservedTime": format_micro_time(self.clock.wall())}})
                recorded.sent_count = count
        except EventWriteError as error:
            self.results.labels("failed").inc()
            if error.reason not in self._said:
                self._said.add(error.reason)
                log.warning("cannot record an Event of an unsafe termination; counted in "
                            "endpoint_propagation_events_total{result=\"failed\"}, measuring "
                            "goes on" + (": grant create and patch on events.k8s.io events, "
                                         "or run with --events off"
                                         if error.reason == "forbidden" else ""),
                            reason=error.reason, error=str(error),
                            name=f"{recorded.namespace}/{recorded.name}")

    def _queue(self, recorded: _Recorded) -> None:
        if not recorded.queued:
            recorded.queued = True
            self._pending.items.append(recorded)
            self._pending.wake.set()

    # the Event -------------------------------------------------------------------------------

    def _new(self, episode: Episode, key: str, now: float) -> _Recorded:
        namespace, _, pod = episode.pod.partition("/")
        wall = self.clock.wall()
        name = f"{pod}.{math.floor(wall * 1e9):x}"  # as client-go names Events
        body = {
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "eventTime": format_micro_time(wall),
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": f"observer-agent-{self.node_name}"[:128],
            "action": ACTION, "reason": REASON, "type": "Warning",
            "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace,
                          "name": pod, "uid": episode.pod_uid},
            "note": note(episode),
        }
        recorded = _Recorded(namespace, name, body, now)
        self._by_pod[key] = recorded
        if episode.workload is not None:
            self._by_workload[episode.workload] = recorded
        return recorded


def note(episode: Episode) -> str:
    """What happened, for a person reading ``kubectl get events``."""
    parts = ["The pod stopped while traffic could still reach it"]
    traffic, stopped = episode.traffic, episode.stopped
    if traffic is not None and episode.failed_connections:
        by_source = [f"{n} {_SOURCES[origin]}" for origin in ORIGINS
                     if (n := traffic.connections.get((origin, "stopped"), 0))]
        line = (f"{episode.failed_connections} new connections reached it after it stopped "
                f"({'; '.join(by_source)})")
        if stopped is not None and traffic.last:
            late = max(t.mono for t in traffic.last.values()) - stopped.mono
            line += f", the last {late:.1f} s after it stopped"
        parts.append(line)
    if episode.unsafe_window is not None:
        parts.append(f"this node's kube-proxy kept selecting it {episode.unsafe_window:.2f} s "
                     "after it stopped")
    prestop = episode.prestop
    parts.append("its preStop: " + ("unknown" if prestop is None else
                                    "none" if prestop == 0 else f"{prestop:g} s"))
    parts.append("size it with `observer report` (per workload)")
    text = f"{parts[0]}: {'; '.join(parts[1:])}."
    return text.encode()[:_NOTE_LIMIT].decode(errors="ignore")

