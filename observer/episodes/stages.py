"""Where a stage is timed: an ended episode's readings turned into stage durations, the
termination verdict (unsafe window or headroom), and, for each stage that should have been
timed and was not, why.

Stages (docs/agent.md, "Episodes"), each the difference of two monotonic readings:
``controller = not_ready - deleted`` (pod's node), ``dataplane = dataplane - not_ready`` (every
node), ``total = dataplane - deleted`` (pod's node); and the termination verdict, ``stopped``
against ``dataplane``: unsafe when the pod stopped first, else headroom.

A reading is only as good as its precision. A watch event received on catch-up after a gap in
its stream happened at some moment in that gap; a stage built on it is not observed when its
bound — the sum of its watch readings' precisions — is wider than ``max_uncertainty``: counted
as unmeasured (``uncertain``) instead of dragging the quantiles with a number that may be off by
the gap (a deletion seen late made a 0 s controller stage once). The dataplane reading's
precision is the mode's resolution (for iptables-legacy the time since its previous read, a
millisecond for the event-driven modes), stated per mode in docs/dataplane.md; it does not
disqualify a stage.

A stage whose two readings come from different watches can come out negative when one stream
lags the other; it is recorded as 0 (the true value cannot be negative).
"""

from __future__ import annotations

from observer.episodes.model import Episode, Stage, UnmeasuredReason
from observer.values import Timestamp


def time_stages(episode: Episode, *, measure_dataplane: bool, max_uncertainty: float) -> None:
    """Fill in ``episode.stages``, its verdict and ``episode.unmeasured``. ``measure_dataplane``:
    this node reads a dataplane, so the dataplane stage is due (unless kube-proxy's fallback
    kept the endpoint, which is not slowness)."""
    dataplane_due = measure_dataplane and not episode.fallback
    deletion = episode.cause == "deletion"
    # The deletion is seen by the pod's own node only (its pod watch): a reading of it says
    # this node is the pod's, whatever the slice said of its node.
    on_pods_node = deletion and (episode.local or episode.deleted is not None)
    due: dict[Stage, tuple[Timestamp | None, Timestamp | None]] = {}
    if on_pods_node:
        due["controller"] = (episode.deleted, episode.not_ready)
    if dataplane_due:
        due["dataplane"] = (episode.not_ready, episode.dataplane)
        if on_pods_node:
            due["total"] = (episode.deleted, episode.dataplane)
        if deletion:
            due["termination"] = (episode.dataplane, episode.stopped)
    for stage, (start, end) in due.items():
        seconds = _seconds(start, end, max_uncertainty, untracked=episode.dataplane_untracked
                           and stage != "controller")
        if isinstance(seconds, str):
            episode.unmeasured[stage] = seconds
        elif stage != "termination":
            episode.stages[stage] = max(0.0, seconds)
        elif seconds < 0:
            episode.unsafe_window = -seconds
        else:
            episode.headroom = seconds


def _seconds(start: Timestamp | None, end: Timestamp | None, max_uncertainty: float, *,
             untracked: bool) -> float | UnmeasuredReason:
    """``end - start``, or why it cannot be told."""
    if untracked:
        return "untracked"  # this node never selected the endpoint: no removal to time
    if start is None or end is None:
        return "not_seen"  # e.g. the deletion happened while the pod watch was away
    if sum(t.precision for t in (start, end) if t.source != "dataplane") > max_uncertainty:
        return "uncertain"
    return end.mono - start.mono
