"""The tracker on its own: orderings the end-to-end tests cannot force."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from observer.dataplane.model import DataplaneChange
from observer.episodes.model import AbandonReason, Episode
from observer.episodes.observers import EpisodeObserver
from observer.episodes.pods import Shutdown
from observer.episodes.tracker import EpisodeTracker
from observer.kube.objects import ContainerState, Endpoint, EndpointSlice, Pod, PortRef
from observer.values import EndpointKey, ServicePort
from tests.conftest import ManualClock

SP = ServicePort("ns", "web", "http", "TCP")
KEY = EndpointKey(SP, "10.0.0.1", 80)


@dataclass
class Recorder(EpisodeObserver):
    finished_episodes: list[Episode] = field(default_factory=list)
    abandoned_reasons: list[AbandonReason] = field(default_factory=list)
    shutdowns: list[tuple[float, int]] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    fallbacks: int = 0

    def finished(self, episode: Episode) -> None:
        self.finished_episodes.append(episode)

    def abandoned(self, reason: AbandonReason, episode: Episode | None) -> None:
        self.abandoned_reasons.append(reason)

    def fallback(self, episode: Episode) -> None:
        self.fallbacks += 1

    def pod_shutdown(self, shutdown: Shutdown) -> None:
        self.shutdowns.append((shutdown.seconds, shutdown.killed))

    def invalid_input(self, resource: str, reason: str) -> None:
        self.invalid.append(reason)


def eps(*, ready: bool = True, serving: bool = True, terminating: bool = False,
        node: str = "node-a", others: int = 1) -> EndpointSlice:
    endpoints = [Endpoint("10.0.0.1", ready, serving, terminating, node, "ns", "p", "uid-1")]
    endpoints += [Endpoint(f"10.0.1.{i}", True, True, False, "node-b", "ns", f"o{i}", f"u{i}")
                  for i in range(others)]
    return EndpointSlice("ns", "web-1", "web", "IPv4", (PortRef("http", 80, "TCP"),),
                         tuple(endpoints), "1")


def pod(*, deleting: bool = False, terminated: bool = False, node: str = "node-a",
        uid: str = "uid-1") -> Pod:
    return Pod("ns", "p", uid, node, ("10.0.0.1",), "Running", not deleting,
               1_800_000_030.0 if deleting else None, 30 if deleting else None,
               (ContainerState("app", not terminated, terminated, False),), "1", 0.0)


def tracker(clock: ManualClock, recorder: Recorder, *, dataplane: bool = True) -> EpisodeTracker:
    return EpisodeTracker(node_name="node-a", clock=clock, observers=[recorder],
                          measure_dataplane=dataplane)


def test_slice_update_before_pod_event_clamps_controller_to_zero(clock: ManualClock) -> None:
    rec = Recorder()
    t = tracker(clock, rec, dataplane=False)
    t.slices_listed([eps()], t.now("slice_watch"), relist=False)
    t.pods_listed([pod()], t.now("pod_watch"), relist=False)
    clock.advance(1)
    t.slice_changed(eps(ready=False, terminating=True), t.now("slice_watch"))
    clock.advance(0.5)  # our pod watch lags the slice watch
    t.pod_changed(pod(deleting=True), t.now("pod_watch"))
    clock.advance(2)
    t.pod_changed(pod(deleting=True, terminated=True), t.now("pod_watch"))
    (episode,) = rec.finished_episodes
    assert episode.stages == {"controller": 0.0}
    assert episode.api_delete_requested == 1_800_000_000.0
    assert rec.shutdowns == [(2.0, 0)]


def test_a_deletion_received_on_catch_up_times_no_stage_from_it(clock: ManualClock) -> None:
    """The pod watch was away: the deletion arrives 0.5 s late, after the slice update, and
    says so (its precision is the gap). Its controller stage would have come out 0 s; it is
    not timed but counted; the dataplane stage, on live readings, is."""
    rec = Recorder()
    t = tracker(clock, rec)
    t.slices_listed([eps()], t.now("slice_watch"), relist=False)
    t.pods_listed([pod()], t.now("pod_watch"), relist=False)
    clock.advance(1)
    t.slice_changed(eps(ready=False, terminating=True), t.now("slice_watch"))
    clock.advance(0.5)
    t.pod_changed(pod(deleting=True), t.now("pod_watch", precision=1.5))
    t.dataplane_changed(DataplaneChange(KEY, False, t.now("dataplane", 0.001)))
    clock.advance(1)
    t.pod_changed(pod(deleting=True, terminated=True), t.now("pod_watch"))
    (episode,) = rec.finished_episodes
    assert episode.stages == {"dataplane": 0.5}
    assert episode.unmeasured == {"controller": "uncertain", "total": "uncertain"}
    assert episode.headroom == 1.0
    assert episode.outcome == "partial"


def test_a_deletion_never_seen_on_the_pods_node_is_partial(clock: ManualClock) -> None:
    """The endpoint went and the pod stopped while this node's pod watch saw nothing of it."""
    rec = Recorder()
    t = tracker(clock, rec)
    t.slices_listed([eps()], t.now("slice_watch"), relist=False)
    clock.advance(1)
    t.slice_changed(eps(ready=False, terminating=True), t.now("slice_watch"))
    clock.advance(0.25)
    t.dataplane_changed(DataplaneChange(KEY, False, t.now("dataplane", 0.001)))
    t.slice_changed(EndpointSlice("ns", "web-1", "web", "IPv4", (PortRef("http", 80, "TCP"),),
                                  (), "2"), t.now("slice_watch"))  # the endpoint is gone
    (episode,) = rec.finished_episodes
    assert episode.stages == {"dataplane": 0.25}
    assert episode.unmeasured == {"controller": "not_seen", "total": "not_seen"}
    assert episode.outcome == "partial"


def test_a_stage_within_the_uncertainty_is_timed(clock: ManualClock) -> None:
    rec = Recorder()
    t = EpisodeTracker(node_name="node-a", clock=clock, observers=[rec], measure_dataplane=True,
                       max_stage_uncertainty=0.05)
    t.slices_listed([eps(node="node-b")], t.now("slice_watch"), relist=False)
    clock.advance(1)
    t.slice_changed(eps(ready=False, terminating=True, node="node-b"),
                    t.now("slice_watch", precision=0.05))
    clock.advance(0.5)
    t.dataplane_changed(DataplaneChange(KEY, False, t.now("dataplane", 2.0)))  # a poll's
    t.slice_changed(EndpointSlice("ns", "web-1", "web", "IPv4", (PortRef("http", 80, "TCP"),),
                                  (), "2"), t.now("slice_watch"))
    (episode,) = rec.finished_episodes
    assert episode.stages == {"dataplane": 0.5}
    assert episode.outcome == "measured"


def test_pod_relist_that_missed_a_deletion_is_a_gap(clock: ManualClock) -> None:
    rec = Recorder()
    t = tracker(clock, rec)
    t.slices_listed([eps()], t.now("slice_watch"), relist=False)
    t.pods_listed([pod()], t.now("pod_watch"), relist=False)
    t.pods_listed([pod(deleting=True)], t.now("pod_watch"), relist=True)  # seen only on re-list
    t.slice_changed(eps(ready=False, terminating=True, serving=False), t.now("slice_watch"))
    t.dataplane_changed(DataplaneChange(KEY, False, t.now("dataplane")))
    assert rec.abandoned_reasons == []  # its pod has not stopped yet
    t.pod_changed(pod(deleting=True, terminated=True), t.now("pod_watch"))
    assert rec.abandoned_reasons == ["watch_gap"]
    assert rec.finished_episodes == []


def test_nothing_to_time_without_dataplane_off_the_pods_node(clock: ManualClock) -> None:
    rec = Recorder()
    t = tracker(clock, rec, dataplane=False)
    t.slices_listed([eps(node="node-b")], t.now("slice_watch"), relist=False)
    t.slice_changed(eps(node="node-b", ready=False, terminating=True), t.now("slice_watch"))
    assert t.episodes == {}
    assert rec.abandoned_reasons == []


def test_service_becoming_empty_turns_on_fallback(clock: ManualClock) -> None:
    rec = Recorder()
    t = tracker(clock, rec)
    t.slices_listed([eps(others=0)], t.now("slice_watch"), relist=False)
    t.slice_changed(eps(others=0, ready=False, terminating=True), t.now("slice_watch"))
    assert t.episodes[KEY].fallback
    assert rec.fallbacks == 1
    t.slice_changed(eps(others=0, ready=False, terminating=True, serving=False),
                    t.now("slice_watch"))
    assert rec.finished_episodes == []  # a failed readiness probe is not a stop
    t.slice_deleted("ns", "web-1", t.now("slice_watch"))  # the pod went: its slice with it
    (episode,) = rec.finished_episodes
    assert "dataplane" not in episode.stages
    assert not episode.unsafe


def test_on_the_pods_node_readiness_failure_is_not_the_stop(clock: ManualClock) -> None:
    # serving=false only says the readiness probe failed; the pod's status says when the
    # containers really stopped, and this node watches it.
    rec = Recorder()
    t = tracker(clock, rec)
    t.slices_listed([eps()], t.now("slice_watch"), relist=False)
    t.pods_listed([pod()], t.now("pod_watch"), relist=False)
    t.pod_changed(pod(deleting=True), t.now("pod_watch"))
    t.slice_changed(eps(ready=False, terminating=True, serving=False), t.now("slice_watch"))
    clock.advance(1)
    t.dataplane_changed(DataplaneChange(KEY, False, t.now("dataplane")))
    clock.advance(1)
    t.pod_changed(pod(deleting=True, terminated=True), t.now("pod_watch"))
    (episode,) = rec.finished_episodes
    assert not episode.unsafe
    assert episode.headroom == 1.0


def test_old_records_are_forgotten(clock: ManualClock) -> None:
    rec = Recorder()
    t = tracker(clock, rec)
    t.pods_listed([pod()], t.now("pod_watch"), relist=False)
    t.pod_deleted(pod(), t.now("pod_watch"))
    assert t.pods.record("uid-1") is not None
    clock.advance(t.ttl + 1)
    t.expire()
    assert t.pods.record("uid-1") is None


# Pods of other nodes: their stop comes from the watch on terminal pods -----------------------

def remote_episode(t: EpisodeTracker) -> None:
    t.slices_listed([eps(node="node-b")], t.now("slice_watch"), relist=False)
    t.slice_changed(eps(node="node-b", ready=False, terminating=True), t.now("slice_watch"))


def test_a_remote_readiness_failure_is_not_a_stop(clock: ManualClock) -> None:
    # A well-behaved app fails readiness on SIGTERM and keeps serving until it exits: this
    # node dropping it after serving=false but before the exit was safe.
    rec = Recorder()
    t = tracker(clock, rec)
    remote_episode(t)
    clock.advance(0.5)
    t.slice_changed(eps(node="node-b", ready=False, terminating=True, serving=False),
                    t.now("slice_watch"))
    clock.advance(0.5)
    t.dataplane_changed(DataplaneChange(KEY, False, t.now("dataplane")))
    assert rec.finished_episodes == []
    clock.advance(0.25)
    t.pod_terminal(pod(node="node-b", terminated=True), t.now("pod_watch"))
    (episode,) = rec.finished_episodes
    assert not episode.unsafe
    assert episode.headroom == 0.25


def test_a_remote_pod_stopping_first_is_unsafe(clock: ManualClock) -> None:
    rec = Recorder()
    t = tracker(clock, rec)
    remote_episode(t)
    clock.advance(0.5)
    t.pod_terminal(pod(node="node-b", terminated=True), t.now("pod_watch"))
    clock.advance(0.125)
    t.dataplane_changed(DataplaneChange(KEY, False, t.now("dataplane")))
    (episode,) = rec.finished_episodes
    assert episode.unsafe_window == 0.125


def test_a_stop_seen_before_the_slice_update_is_kept(clock: ManualClock) -> None:
    rec = Recorder()
    t = tracker(clock, rec)
    t.slices_listed([eps(node="node-b")], t.now("slice_watch"), relist=False)
    t.pod_terminal(pod(node="node-b", terminated=True), t.now("pod_watch"))
    clock.advance(0.25)  # the controller is slow: the pod stopped before it was marked
    t.slice_changed(eps(node="node-b", ready=False, terminating=True), t.now("slice_watch"))
    clock.advance(0.25)
    t.dataplane_changed(DataplaneChange(KEY, False, t.now("dataplane")))
    (episode,) = rec.finished_episodes
    assert episode.unsafe_window == 0.5


def test_a_stop_seen_only_on_a_relist_is_a_gap(clock: ManualClock) -> None:
    rec = Recorder()
    t = tracker(clock, rec)
    remote_episode(t)
    t.terminal_pods_listed([pod(node="node-b", terminated=True)], t.now("pod_watch"),
                           relist=True)
    t.dataplane_changed(DataplaneChange(KEY, False, t.now("dataplane")))
    assert rec.abandoned_reasons == ["watch_gap"]
    assert rec.finished_episodes == []


def test_own_pods_are_left_to_the_pod_watch(clock: ManualClock) -> None:
    rec = Recorder()
    t = tracker(clock, rec)
    t.slices_listed([eps()], t.now("slice_watch"), relist=False)
    t.pods_listed([pod()], t.now("pod_watch"), relist=False)
    t.pod_changed(pod(deleting=True), t.now("pod_watch"))
    t.slice_changed(eps(ready=False, terminating=True), t.now("slice_watch"))
    t.pod_terminal(pod(deleting=True, terminated=True), t.now("pod_watch"))
    t.dataplane_changed(DataplaneChange(KEY, False, t.now("dataplane")))
    assert rec.finished_episodes == []  # container states come from its own watch
    clock.advance(1)
    t.pod_changed(pod(deleting=True, terminated=True), t.now("pod_watch"))
    (episode,) = rec.finished_episodes
    assert episode.headroom == 1.0


def test_remote_stops_are_bounded(clock: ManualClock) -> None:
    rec = Recorder()
    t = EpisodeTracker(node_name="node-a", clock=clock, observers=[rec], measure_dataplane=True,
                       max_in_flight=3, ttl=10)
    for i in range(5):
        t.pod_terminal(pod(node="node-b", uid=f"u{i}"), t.now("pod_watch"))
    kept = [f"u{i}" for i in range(5) if t.pods.remote_stop(f"u{i}") is not None]
    assert kept == ["u2", "u3", "u4"]  # the oldest went first
    clock.advance(11)
    t.expire()
    assert [u for u in kept if t.pods.remote_stop(u) is not None] == []


def test_the_dataplane_is_told_what_the_slices_expect_of_it(clock: ManualClock) -> None:
    """Every endpoint the slices now say should be selected or not (what a source that reads
    by parts reads closely): Ready, or serving and terminating in a port with none Ready."""
    expected: list[tuple[EndpointKey, bool]] = []
    t = EpisodeTracker(node_name="node-a", clock=clock, observers=[Recorder()],
                       measure_dataplane=True,
                       dataplane_expect=lambda key, selected: expected.append((key, selected)))
    other = EndpointKey(SP, "10.0.1.0", 80)
    t.slices_listed([eps()], t.now("slice_watch"), relist=False)
    assert set(expected) == {(KEY, True), (other, True)}
    expected.clear()
    t.slice_changed(eps(ready=False, terminating=True), t.now("slice_watch"))
    assert expected == [(KEY, False)]
    t.slice_changed(eps(ready=False, serving=False, terminating=True), t.now("slice_watch"))
    assert expected == [(KEY, False)]
    expected.clear()
    t.slice_changed(eps(others=0), t.now("slice_watch"))
    assert set(expected) == {(KEY, True), (other, False)}
    expected.clear()  # the only endpoint terminates: the fallback keeps it while it serves
    t.slice_changed(eps(ready=False, terminating=True, others=0), t.now("slice_watch"))
    assert expected == []
    t.slice_changed(eps(ready=False, serving=False, terminating=True, others=0),
                    t.now("slice_watch"))
    assert expected == [(KEY, False)]



@pytest.mark.parametrize("in_the_first_read", [True, False])
def test_an_episode_before_the_dataplanes_first_read_is_not_taken_for_never_selected(
        clock: ManualClock, in_the_first_read: bool) -> None:
    """An agent just started: its dataplane's first read is not in yet, so it knows no service
    port. An episode starting then is timed from the removal reported after that read, or, if
    that read does not select it, counted as never selected here — not before."""
    rules: dict[EndpointKey, bool] = {}
    primed = False
    rec = Recorder()
    t = EpisodeTracker(node_name="node-a", clock=clock, observers=[rec], measure_dataplane=True,
                       dataplane_selected=lambda key: rules.get(key, False) if primed else None,
                       dataplane_primed=lambda: primed)
    t.slices_listed([eps()], t.now("slice_watch"), relist=False)
    t.pods_listed([pod()], t.now("pod_watch"), relist=False)
    t.pod_changed(pod(deleting=True), t.now("pod_watch"))
    t.slice_changed(eps(ready=False, terminating=True), t.now("slice_watch"))
    clock.advance(0.2)
    t.expire()  # housekeeping before the first read: nothing decided
    (episode,) = t.episodes.values()
    assert not episode.dataplane_untracked
    primed, rules = True, {KEY: in_the_first_read}  # the first read: the baseline
    clock.advance(0.3)
    t.pod_changed(pod(deleting=True, terminated=True), t.now("pod_watch"))
    if in_the_first_read:  # its removal, reported after the baseline, times it
        assert not rec.finished_episodes
        t.dataplane_changed(DataplaneChange(KEY, False, t.now("dataplane")))
        (done,) = rec.finished_episodes
        assert done.stages["dataplane"] == pytest.approx(0.5)
        assert not done.dataplane_untracked
    else:  # not in the baseline: never selected here, decided at the next housekeeping
        assert not rec.finished_episodes
        t.expire()
        (done,) = rec.finished_episodes
        assert done.dataplane_untracked
        assert done.unmeasured["dataplane"] == "untracked"
