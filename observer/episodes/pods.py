"""What this node knows of pods: where a pod event enters the tracker.

Its own pods come from its pod watch (``spec.nodeName=<node>``): their addresses (to link an
endpoint without a ``targetRef`` to its pod), and per pod a record of when its deletion was
first seen and when it was first seen stopped (all containers terminated, or the object gone).
Other nodes' pods come from the watch on terminal pods: only when each was first seen stopped.

Records outlive their pods for ``ttl`` seconds (an episode may start after its pod is gone:
the slice update can lag), and the other nodes' stops are also bounded in number: memory stays
bounded under any churn. Every change says which pod's record moved, and, when a deleted pod's
containers have all ended, how long its shutdown took: the tracker applies both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from observer.kube.objects import Pod
from observer.kube.owners import Workload
from observer.values import Timestamp


@dataclass(slots=True)
class PodRecord:
    workload: Workload | None = None  # the pod's (observer.kube.owners), once it is known
    prestop: float | None = None  # its longest preStop hook, seconds (None: unknown)
    deleted: Timestamp | None = None
    api_delete_requested: float | None = None  # the API server's clock, whole seconds
    stopped: Timestamp | None = None
    gap: bool = False  # its deletion or stop happened while the pod watch was re-listing
    gone_at: float | None = None  # monotonic time the object left the watch


class Shutdown(NamedTuple):
    """A deleted pod's containers all ended ``seconds`` after its deletion was seen."""

    seconds: float
    killed: int  # containers that ended by SIGKILL
    prestop: float | None  # its longest preStop hook, when known
    workload: Workload | None = None  # the pod's


class PodNews(NamedTuple):
    uid: str
    record: PodRecord
    shutdown: Shutdown | None


class RemoteStop(NamedTuple):
    at: Timestamp
    gap: bool  # seen only on a re-list: when exactly is unknown


class PodRecords:
    def __init__(self, *, node_name: str, ttl: float, max_remote: int) -> None:
        self.node_name = node_name
        self.ttl = ttl
        self.max_remote = max_remote
        self._pods: dict[str, Pod] = {}  # this node's, by uid
        self._uid_by_ip: dict[str, str] = {}
        self._records: dict[str, PodRecord] = {}
        self._remote: dict[str, RemoteStop] = {}  # oldest first

    # questions --------------------------------------------------------------------------------

    def uid_of(self, ip: str) -> str:
        """The uid of this node's pod with that address ("" if none)."""
        return self._uid_by_ip.get(ip, "")

    def is_local(self, uid: str) -> bool:
        return uid in self._pods

    def record(self, uid: str) -> PodRecord | None:
        return self._records.get(uid)

    def workload_of(self, uid: str) -> Workload | None:
        """The workload of this node's pod ``uid``, while it is here or its record kept."""
        pod = self._pods.get(uid)
        if pod is not None:
            return pod.workload
        record = self._records.get(uid)
        return record.workload if record is not None else None

    def remote_stop(self, uid: str) -> RemoteStop | None:
        return self._remote.get(uid)

    # this node's pods -------------------------------------------------------------------------

    def listed(self, pods: Iterable[Pod], at: Timestamp, *, relist: bool) -> list[PodNews]:
        listed = {pod.uid: pod for pod in pods}
        news = []
        for uid in [uid for uid in self._pods if uid not in listed]:
            news += self.deleted(self._pods[uid], at, gap=relist)
        for pod in listed.values():
            news += self.changed(pod, at, gap=relist)
        return news

    def changed(self, pod: Pod, at: Timestamp, *, gap: bool = False) -> list[PodNews]:
        previous = self._pods.get(pod.uid)
        if previous is not None:
            for ip in previous.ips:
                self._uid_by_ip.pop(ip, None)
        self._pods[pod.uid] = pod
        for ip in pod.ips:
            self._uid_by_ip[ip] = pod.uid
        news = []
        if pod.deletion_timestamp is not None:
            news += self._mark_deleted(pod, at, gap=gap)
        if pod.all_terminated:
            news += self._mark_stopped(pod, at, gap=gap)
        return news

    def deleted(self, pod: Pod, at: Timestamp, *, gap: bool = False) -> list[PodNews]:
        """The object is gone: whatever its last status said, it no longer serves. Gone without
        a deletionTimestamp ever seen (a force deletion, grace 0) means deleted now too."""
        known = self._pods.get(pod.uid, pod)
        news = self._mark_deleted(known, at, gap=gap) + self._mark_stopped(known, at, gap=gap)
        self._pods.pop(pod.uid, None)
        for ip in known.ips:
            if self._uid_by_ip.get(ip) == pod.uid:
                del self._uid_by_ip[ip]
        self._records.setdefault(pod.uid, PodRecord()).gone_at = at.mono
        return news

    def _record(self, pod: Pod) -> PodRecord:
        record = self._records.setdefault(pod.uid, PodRecord())
        record.workload = record.workload or pod.workload
        if record.prestop is None:
            record.prestop = pod.prestop_seconds
        return record

    def _mark_deleted(self, pod: Pod, at: Timestamp, *, gap: bool) -> list[PodNews]:
        record = self._record(pod)
        if record.deleted is not None:
            return []
        record.deleted = at
        record.api_delete_requested = pod.deletion_requested_at
        record.gap = record.gap or gap
        return [PodNews(pod.uid, record, None)]

    def _mark_stopped(self, pod: Pod, at: Timestamp, *, gap: bool) -> list[PodNews]:
        record = self._record(pod)
        if record.stopped is not None:
            return []
        record.stopped = at
        record.gap = record.gap or gap
        shutdown = None
        if record.deleted is not None and not record.gap:
            shutdown = Shutdown(max(0.0, at.mono - record.deleted.mono),
                                sum(1 for c in pod.containers if c.killed), pod.prestop_seconds,
                                record.workload)
        return [PodNews(pod.uid, record, shutdown)]

    # other nodes' pods ------------------------------------------------------------------------

    def remote_stopped(self, pod: Pod, at: Timestamp, *, gap: bool) -> RemoteStop | None:
        """A pod of another node seen terminal; the stop, if it is news. This node's own pods
        are left to their pod watch, which says more (container states)."""
        if pod.node_name == self.node_name or pod.uid in self._remote:
            return None
        stop = self._remote[pod.uid] = RemoteStop(at, gap)
        if len(self._remote) > self.max_remote:
            del self._remote[next(iter(self._remote))]
        return stop

    # housekeeping -----------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Forget the records of pods gone, and the stops seen, more than ``ttl`` ago."""
        for uid in [u for u, r in self._records.items()
                    if r.gone_at is not None and now - r.gone_at > self.ttl]:
            del self._records[uid]
        for uid in [u for u, stop in self._remote.items() if now - stop.at.mono > self.ttl]:
            del self._remote[uid]
