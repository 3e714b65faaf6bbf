"""Which workload a pod belongs to (observer/kube/owners.py), from the pod's object alone, for
every kind of owner and for owner references that cannot be followed."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from observer.episodes.sinks import PodSink
from observer.episodes.tracker import EpisodeTracker
from observer.kube.objects import parse_pod
from observer.kube.owners import Owner, Workload, owner_of
from tests.conftest import ManualClock


def controller(kind: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": f"uid-{name}",
            "controller": True, "blockOwnerDeletion": True, **extra}


def meta(*references: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"namespace": "shop", "name": "web-7d4b9c-x2x9q"}
    if references:
        out["ownerReferences"] = list(references)
    if labels is not None:
        out["labels"] = labels
    return out


@pytest.mark.parametrize(("metadata", "workload"), [
    # A Deployment's ReplicaSet: "<deployment>-<pod-template-hash>", the hash on the pod.
    (meta(controller("ReplicaSet", "web-7d4b9c"), labels={"pod-template-hash": "7d4b9c"}),
     Workload("shop", "deployment", "web")),
    (meta(controller("ReplicaSet", "api-v2-5f6c8d9b7"),
          labels={"app": "api", "pod-template-hash": "5f6c8d9b7"}),
     Workload("shop", "deployment", "api-v2")),
    # A ReplicaSet of its own: no hash label, or one its name does not end with.
    (meta(controller("ReplicaSet", "legacy")), Workload("shop", "replicaset", "legacy")),
    (meta(controller("ReplicaSet", "web-7d4b9c"), labels={"pod-template-hash": "abc"}),
     Workload("shop", "replicaset", "web-7d4b9c")),
    (meta(controller("ReplicaSet", "7d4b9c"), labels={"pod-template-hash": "7d4b9c"}),
     Workload("shop", "replicaset", "7d4b9c")),
    (meta(controller("ReplicaSet", "ro-5d8f"), labels={"rollouts-pod-template-hash": "5d8f"}),
     Workload("shop", "replicaset", "ro-5d8f")),
    (meta(controller("StatefulSet", "db")), Workload("shop", "statefulset", "db")),
    (meta(controller("DaemonSet", "node-agent")), Workload("shop", "daemonset", "node-agent")),
    (meta(controller("Job", "backup-28350000", apiVersion="batch/v1")),
     Workload("shop", "job", "backup-28350000")),
    (meta(controller("ReplicationController", "old")),
     Workload("shop", "replicationcontroller", "old")),
    # A bare pod, or one with owners none of which is its controller.
    (meta(), Workload("shop", "pod", "web-7d4b9c-x2x9q")),
    (meta({"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "u"}),
     Workload("shop", "pod", "web-7d4b9c-x2x9q")),
])
def test_the_workload_of_each_kind_of_owner(metadata: dict[str, Any], workload: Workload
                                            ) -> None:
    assert owner_of("shop", "web-7d4b9c-x2x9q", metadata) == Owner(workload, None)


@pytest.mark.parametrize(("references", "problem"), [
    ("not a list", "metadata.ownerReferences is not a list"),
    ([controller("ReplicaSet", "a"), controller("StatefulSet", "b")],
     "2 controller owner references"),
    ([{"kind": "ReplicaSet", "controller": True}], "without a kind or a name"),
    ([{"name": "x", "kind": "", "controller": True}], "without a kind or a name"),
])
def test_owner_references_that_cannot_be_followed_leave_the_pod_its_own(
        references: Any, problem: str) -> None:
    owner = owner_of("shop", "p", {"ownerReferences": references})
    assert owner.workload == Workload("shop", "pod", "p")
    assert owner.problem is not None
    assert problem in owner.problem


def test_a_parsed_pod_carries_its_workload_and_the_label_value() -> None:
    pod = parse_pod({"metadata": {**meta(controller("ReplicaSet", "web-7d4b9c"),
                                         labels={"pod-template-hash": "7d4b9c"}),
                                  "uid": "u1", "resourceVersion": "3"},
                     "spec": {"nodeName": "node-a"}, "status": {"phase": "Running"}})
    assert pod.workload == Workload("shop", "deployment", "web")
    assert pod.workload.label == "deployment/web"
    assert pod.owner_problem is None
    odd = parse_pod({"metadata": {"namespace": "shop", "name": "p", "uid": "u2",
                                  "ownerReferences": {"kind": "ReplicaSet"}},
                     "spec": {}, "status": {}})
    assert odd.workload == Workload("shop", "pod", "p")
    assert odd.owner_problem == "metadata.ownerReferences is not a list"


class Counted:
    def __init__(self) -> None:
        self.reasons: list[tuple[str, str]] = []

    def invalid_input(self, resource: str, reason: str) -> None:
        self.reasons.append((resource, reason))


def test_a_pod_whose_owners_cannot_be_followed_is_counted_logged_once_and_kept(
        clock: ManualClock) -> None:
    tracker = EpisodeTracker(node_name="node-a", clock=clock, observers=[],
                             measure_dataplane=True)
    counted = Counted()
    sink = PodSink(tracker, counted)
    raw = {"metadata": {"namespace": "shop", "name": "odd", "uid": "u-odd",
                        "resourceVersion": "7", "ownerReferences": {"kind": "ReplicaSet"}},
           "spec": {"nodeName": "node-a"}, "status": {"phase": "Running"}}
    with capture_logs() as logs:
        sink.event("ADDED", raw, precision=0.0)
        sink.event("MODIFIED", raw, precision=0.0)
    assert counted.reasons == [("pods", "owner_references")] * 2
    said = [e for e in logs if e["event"].startswith("owner references not followed")]
    assert len(said) == 1
    assert said[0]["object"] == "shop/odd"
    assert tracker.pods.workload_of("u-odd") == Workload("shop", "pod", "odd")
