"""The episode state machine: slice, pod and dataplane changes in, timed episodes out.

Model (docs/agent.md, "Episodes"): an episode starts when an endpoint of a service port that was
Ready stops being Ready (or leaves every slice). Then, each from this process's monotonic clock:

* ``deleted``   — this node's pod watch first saw the pod with a deletionTimestamp (pod's node);
* ``not_ready`` — the slice update that took the endpoint out of Ready arrived (every node);
* ``dataplane`` — this node's dataplane stopped selecting the endpoint (every node);
* ``stopped``   — first proof the pod stopped: all its containers terminated (pod's node, from
  its pod watch), the pod turned terminal (other nodes, from the watch on terminal pods), the
  pod or the endpoint gone. ``serving=false`` is not a stop: it says the readiness probe
  failed, which a well-behaved app does on SIGTERM while it still serves (counting it made
  other nodes report unsafe terminations that did not happen; docs/lab.md).

Once an episode has what it waits for, its stages are timed in ``observer.episodes.stages``.

kube-proxy falls back to serving-and-terminating endpoints when a service port has no Ready
endpoint left (``pkg/proxy/topology.go`` CategorizeEndpoints, KEP-1669). Such an endpoint
legitimately stays in the dataplane until the pod stops; the episode is marked ``fallback``
and its dataplane stage is not reported as slowness.

Slice events enter through the merged view of the slices (``observer.episodes.slices``), which
is also the service catalog the dataplane readers are handed. What happens to episodes is told
to the observers the tracker is built with (``observer.episodes.observers``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

from observer.clock import Clock
from observer.dataplane.model import DataplaneChange
from observer.episodes.model import AbandonReason, Episode
from observer.episodes.observers import EpisodeObserver, Observers
from observer.episodes.pods import PodNews, PodRecord, PodRecords, RemoteStop
from observer.episodes.slices import Merged, SliceView, Update, routed
from observer.episodes.stages import time_stages
from observer.kube.objects import Endpoint, EndpointSlice, Pod
from observer.values import EndpointKey, Source, Timestamp

_RECENT_DROP_SECONDS = 30.0  # how long a dataplane removal waits for its slice update


class EpisodeTracker:
    def __init__(self, *, node_name: str, clock: Clock,
                 observers: Sequence[EpisodeObserver], measure_dataplane: bool,
                 dataplane_selected: Callable[[EndpointKey], bool | None] | None = None,
                 dataplane_expect: Callable[[EndpointKey, bool], None] | None = None,
                 dataplane_primed: Callable[[], bool] | None = None,
                 ttl: float = 600.0, max_in_flight: int = 10_000,
                 keep_finished: int = 500, max_stage_uncertainty: float = 0.05,
                 slices: SliceView | None = None) -> None:
        self.node_name = node_name
        self.max_stage_uncertainty = max_stage_uncertainty
        self.clock = clock
        # Told of every episode's life (observer.episodes.observers): the metrics, the log,
        # the traffic book when connections are followed.
        self.observers = Observers(observers)
        self.measure_dataplane = measure_dataplane
        self.dataplane_selected = dataplane_selected
        # Whether the dataplane's first read is in: before it, ``dataplane_selected`` knows
        # nothing (None: no service port read yet), which must not be taken for "never
        # selected here". (None: always.)
        self.dataplane_primed = dataplane_primed or (lambda: True)
        # Episodes that started before that first read, their "ever selected here?" still to
        # be asked once it is in (``_check_unknown``).
        self._unknown: set[EndpointKey] = set()
        # Told of every endpoint the slices now say should be (or no longer be) selected (a
        # source that reads by parts reads those service ports closely).
        self.dataplane_expect = dataplane_expect
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self.episodes: dict[EndpointKey, Episode] = {}
        self.finished: deque[Episode] = deque(maxlen=keep_finished)
        self.slices = slices if slices is not None else SliceView()
        self.pods = PodRecords(node_name=node_name, ttl=ttl, max_remote=max_in_flight)
        self._episodes_by_pod: dict[str, set[EndpointKey]] = {}
        self._recent_drops: dict[EndpointKey, Timestamp] = {}

    # timestamps ----------------------------------------------------------------------------

    def now(self, source: Source, precision: float = 0.0) -> Timestamp:
        return Timestamp(self.clock.monotonic(), self.clock.wall(), source, precision)

    # slices --------------------------------------------------------------------------------

    def slices_listed(self, slices: Iterable[EndpointSlice], at: Timestamp, *,
                      relist: bool) -> None:
        """A complete list. After a watch gap (``relist``) changes that happened unseen cannot
        be timed: episodes they would start or touch are abandoned as ``watch_gap``."""
        self._apply(self.slices.listed(slices), at, relist=relist)

    def slice_changed(self, eps: EndpointSlice, at: Timestamp) -> None:
        self._apply(self.slices.changed(eps), at, relist=False)

    def slice_deleted(self, namespace: str, name: str, at: Timestamp) -> None:
        self._apply(self.slices.deleted(namespace, name), at, relist=False)

    def _apply(self, update: Update, at: Timestamp, *, relist: bool) -> None:
        for reason in update.invalid:
            self.observers.invalid_input("endpointslices", reason)
        for change in update.changes:
            now = routed(change.after)
            if self.dataplane_expect is not None:
                was = routed(change.before)
                for key in was.keys() | now.keys():
                    if was.get(key, False) != now.get(key, False):
                        self.dataplane_expect(key, now.get(key, False))
            for key in change.before.keys() | change.after.keys():
                before, after = change.before.get(key), change.after.get(key)
                if before != after:
                    self._transition(key, before, after, at, relist=relist)
            self._check_fallback(change.after, now)

    def _transition(self, key: EndpointKey, before: Endpoint | None, after: Endpoint | None,
                    at: Timestamp, *, relist: bool) -> None:
        if after is not None and after.ready:
            self.observers.address_ready((key.ip, key.port, key.service_port.protocol))
        episode = self.episodes.get(key)
        if episode is None:
            if before is not None and before.ready and (after is None or not after.ready):
                if relist:
                    self.observers.abandoned("watch_gap", None)
                else:
                    self._start(key, before, after, at)
            return
        if relist:
            episode.gap = True
        if after is None:
            self._stop(episode, at)
        elif after.ready:
            self._abandon(episode, "ready_again")

    def _check_fallback(self, merged: Merged, routed: dict[EndpointKey, bool]) -> None:
        """``routed``: the merged endpoints' ``slices.routed``."""
        for key, selected in routed.items():
            episode = self.episodes.get(key)
            if (episode is not None and not episode.fallback and episode.dataplane is None
                    and selected and not merged[key].ready):
                episode.fallback = True
                self.observers.fallback(episode)
                self._maybe_finish(episode)

    # episodes --------------------------------------------------------------------------------

    def _start(self, key: EndpointKey, before: Endpoint, after: Endpoint | None,
               at: Timestamp) -> None:
        ref = after or before
        uid = ref.pod_uid or self.pods.uid_of(key.ip)
        local = ref.node_name == self.node_name or self.pods.is_local(uid)
        record = self.pods.record(uid) if uid else None
        deleting = after is None or after.terminating or (record is not None
                                                          and record.deleted is not None)
        if not self.measure_dataplane and not (local and deleting):
            return  # nothing this node can time for it
        if len(self.episodes) >= self.max_in_flight:
            self.observers.abandoned("in_flight_cap", None)
            return
        pod = f"{ref.pod_namespace}/{ref.pod_name}" if ref.pod_name else ""
        episode = Episode(key=key, cause="deletion" if deleting else "not_ready", local=local,
                          pod=pod, pod_uid=uid, not_ready=at,
                          workload=self.pods.workload_of(uid) if local and uid else None)
        self.episodes[key] = episode
        if uid:
            self._episodes_by_pod.setdefault(uid, set()).add(key)
        self.observers.started(episode, self.clock.monotonic())
        if record is not None:
            self._apply_record(episode, record)
        remote = self.pods.remote_stop(uid) if uid else None
        if remote is not None:
            self._apply_remote_stop(episode, remote)
        if after is None:
            self._stop(episode, at)
        dropped = self._recent_drops.pop(key, None)
        if dropped is not None:
            episode.dataplane = dropped
        elif self.dataplane_selected is not None:
            if not self.dataplane_primed():
                self._unknown.add(key)  # an agent just started: asked once it has read
            elif not self.dataplane_selected(key):
                # This node's dataplane does not select it now and no removal is on record: it
                # was never programmed here (ready and gone within one kube-proxy sync, or a
                # service port kube-proxy ignores). There is no removal to wait for.
                episode.dataplane_untracked = True
        self._maybe_finish(episode)

    def _check_unknown(self) -> None:
        """Once the dataplane's first read is in, the episodes that started before it and have
        seen no removal since: not selected now means never selected here (that read is the
        baseline; a removal after it is reported as a change)."""
        if not self._unknown or not self.dataplane_primed():
            return
        keys, self._unknown = self._unknown, set()
        assert self.dataplane_selected is not None
        for key in keys:
            episode = self.episodes.get(key)
            if episode is not None and episode.dataplane is None \
                    and not self.dataplane_selected(key):
                episode.dataplane_untracked = True
                self._maybe_finish(episode)

    def _needs_dataplane(self, episode: Episode) -> bool:
        return (self.measure_dataplane and not episode.fallback
                and not episode.dataplane_untracked)

    def _apply_record(self, episode: Episode, record: PodRecord) -> None:
        if episode.local and episode.workload is None:
            episode.workload = record.workload
        if episode.local and episode.prestop is None:
            episode.prestop = record.prestop
        if record.deleted is not None and episode.deleted is None:
            episode.deleted = record.deleted
            episode.api_delete_requested = record.api_delete_requested
            episode.cause = "deletion"
        if record.stopped is not None:
            self._stop(episode, record.stopped)
        if record.gap:
            episode.gap = True

    def _stop(self, episode: Episode, at: Timestamp) -> None:
        if episode.stopped is None:
            episode.stopped = at
            self.observers.stopped(episode)
            self._maybe_finish(episode)

    def _maybe_finish(self, episode: Episode) -> None:
        if self.episodes.get(episode.key) is not episode:
            return
        if self._needs_dataplane(episode) and episode.dataplane is None:
            return
        if episode.cause == "deletion" and episode.stopped is None:
            return
        self._finish(episode)

    def _finish(self, episode: Episode) -> None:
        if episode.gap:
            self._abandon(episode, "watch_gap")
            return
        time_stages(episode, measure_dataplane=self.measure_dataplane,
                    max_uncertainty=self.max_stage_uncertainty)
        episode.ended = True
        self._forget(episode)
        self.finished.append(episode)
        self.observers.finished(episode)
        self.observers.ended(episode, self.clock.monotonic())

    def _abandon(self, episode: Episode, reason: AbandonReason) -> None:
        episode.abandoned, episode.ended = reason, True
        self._forget(episode)
        self.finished.append(episode)
        self.observers.abandoned(reason, episode)
        self.observers.ended(episode, self.clock.monotonic())

    def _forget(self, episode: Episode) -> None:
        self.episodes.pop(episode.key, None)
        self._unknown.discard(episode.key)
        keys = self._episodes_by_pod.get(episode.pod_uid)
        if keys is not None:
            keys.discard(episode.key)
            if not keys:
                del self._episodes_by_pod[episode.pod_uid]

    # pods ------------------------------------------------------------------------------------

    def pods_listed(self, pods: Iterable[Pod], at: Timestamp, *, relist: bool) -> None:
        self._apply_pods(self.pods.listed(pods, at, relist=relist))

    def pod_changed(self, pod: Pod, at: Timestamp) -> None:
        if pod.deletion_timestamp is not None:
            self.observers.pod_ending(pod.ips, at.mono)
        self._apply_pods(self.pods.changed(pod, at))

    def pod_deleted(self, pod: Pod, at: Timestamp) -> None:
        self._apply_pods(self.pods.deleted(pod, at))

    def _apply_pods(self, news: list[PodNews]) -> None:
        for uid, record, shutdown in news:
            if shutdown is not None:
                self.observers.pod_shutdown(shutdown)
            for key in list(self._episodes_by_pod.get(uid, ())):
                episode = self.episodes.get(key)
                if episode is not None:
                    self._apply_record(episode, record)
                    self._maybe_finish(episode)

    def terminal_pods_listed(self, pods: Iterable[Pod], at: Timestamp, *, relist: bool) -> None:
        """A complete list of terminal pods: each stopped before ``at``. On a re-list, when
        exactly is unknown (it may have stopped during the gap): its episodes are gaps."""
        for pod in pods:
            self._remote_stopped(pod, at, gap=relist)

    def pod_terminal(self, pod: Pod, at: Timestamp) -> None:
        """A pod turned terminal (Succeeded/Failed: every container has exited; the kubelet
        does this to a deleted pod before it goes, pod-lifecycle docs, Kubernetes >= 1.27)."""
        self._remote_stopped(pod, at, gap=False)

    def _remote_stopped(self, pod: Pod, at: Timestamp, *, gap: bool) -> None:
        stop = self.pods.remote_stopped(pod, at, gap=gap)
        if stop is None:
            return
        if not gap:
            self.observers.pod_ending(pod.ips, at.mono)
        for key in list(self._episodes_by_pod.get(pod.uid, ())):
            episode = self.episodes.get(key)
            if episode is not None:
                self._apply_remote_stop(episode, stop)

    def _apply_remote_stop(self, episode: Episode, stop: RemoteStop) -> None:
        if stop.gap and episode.stopped is None:
            episode.gap = True
        self._stop(episode, stop.at)

    # dataplane -----------------------------------------------------------------------------

    def dataplane_changed(self, change: DataplaneChange) -> None:
        if change.selected:
            self._recent_drops.pop(change.key, None)
            return
        episode = self.episodes.get(change.key)
        if episode is None:
            self._recent_drops[change.key] = change.at
        elif episode.dataplane is None:
            episode.dataplane = change.at
            self._maybe_finish(episode)
        self._check_unknown()

    # housekeeping ----------------------------------------------------------------------------

    def expire(self) -> None:
        """Abandon episodes past their TTL and forget old records; bounded memory."""
        self._check_unknown()
        now = self.clock.monotonic()
        for episode in [e for e in self.episodes.values() if now - e.not_ready.mono > self.ttl]:
            self._abandon(episode, "ttl")
        self._recent_drops = {k: t for k, t in self._recent_drops.items()
                              if now - t.mono <= _RECENT_DROP_SECONDS}
        self.pods.expire(now)
        self.observers.expire(now)
