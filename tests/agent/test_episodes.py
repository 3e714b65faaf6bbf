"""The agent's measurements, end to end: the lab API server, real HTTP watches, the tracker,
the metrics. The clock is injected and moved only while the agent is idle, so every stage has
an exact expected value."""

from __future__ import annotations

from typing import Any

import pytest

from tests.agent.harness import AgentEnv, Endpoint, key, until
from tests.conftest import ManualClock


async def ready_service(env: AgentEnv, *, node: str = "node-a", pods: int = 2,
                        prestop: dict[str, Any] | None = None) -> list[str]:
    uids = []
    endpoints = []
    for i in range(pods):
        uid = env.cluster.create_pod(f"web-{i}", node, f"10.0.0.{i + 1}", prestop)
        uids.append(uid)
        endpoints.append(Endpoint(f"10.0.0.{i + 1}", node, f"web-{i}", uid))
        env.dataplane.set(key("web", f"10.0.0.{i + 1}"), True)
    env.cluster.put_slice("web-abc", "web", *endpoints)
    await env.seen("endpointslices")
    return uids


async def safe_deletion(env: AgentEnv, clock: ManualClock, pod: str, ip: str,
                        finished: int) -> None:
    """Controller 0.25 s, dataplane 0.5 s, then the pod keeps serving 2 s: headroom."""
    env.cluster.delete_pod(pod, grace=30)
    await env.seen("pods")  # deleted = t0
    clock.advance(0.25)
    env.cluster.set_endpoint("web-abc", ip, ready=False, terminating=True)
    await env.settle_episode(key("web", ip))  # not_ready = t0 + 0.25
    clock.advance(0.5)
    env.dataplane.set(key("web", ip), False)  # dataplane = t0 + 0.75
    clock.advance(2.0)
    env.cluster.pod_terminated(pod)  # stopped = t0 + 2.75
    await env.settle_finished(finished)


async def unsafe_deletion(env: AgentEnv, clock: ManualClock, pod: str, ip: str,
                          finished: int) -> None:
    """The pod is killed 1 s after it is taken out of the slice; the dataplane drops it
    0.375 s later: an unsafe termination."""
    env.cluster.delete_pod(pod, grace=1)
    await env.seen("pods")
    clock.advance(0.125)
    env.cluster.set_endpoint("web-abc", ip, ready=False, terminating=True)
    await env.settle_episode(key("web", ip))
    clock.advance(1.0)
    env.cluster.pod_terminated(pod, killed=True)
    await env.seen("pods")
    clock.advance(0.375)
    env.dataplane.set(key("web", ip), False)
    await env.settle_finished(finished)


async def test_deletion_on_the_pods_node_times_every_stage(env: AgentEnv,
                                                           clock: ManualClock) -> None:
    await ready_service(env)
    await safe_deletion(env, clock, "web-0", "10.0.0.1", 1)

    assert env.stage_sum("controller") == 0.25
    assert env.stage_sum("dataplane") == 0.5
    assert env.stage_sum("total") == 0.75
    assert env.stage_count("total") == 1
    assert env.sample("endpoint_propagation_headroom_seconds_sum") == 2.0
    assert env.sample("endpoint_propagation_unsafe_terminations_total") == 0
    assert env.sample("endpoint_propagation_pod_shutdown_seconds_sum") == 2.75
    assert env.sample("endpoint_propagation_app_shutdown_seconds_sum") == 2.75  # no preStop
    assert env.sample("endpoint_propagation_pod_killed_total") == 0
    assert env.sample("endpoint_propagation_in_flight") == 0
    (episode,) = env.agent.tracker.finished
    assert (episode.cause, episode.local, episode.pod) == ("deletion", True, "default/web-0")
    assert episode.deleted is not None
    assert episode.deleted.source == "pod_watch"
    # deletionTimestamp - grace: the API server's request time, whole seconds.
    assert episode.api_delete_requested == int(clock.wall_time - 2.75)


@pytest.mark.parametrize(("prestop", "app_shutdown"), [
    ({"exec": {"command": ["/bin/sh", "-c", "sleep 2 && nginx -s quit"]}}, 1.5),
    ({"sleep": {"seconds": 4}}, 0.0),  # ended by the grace period: never negative
    ({"httpGet": {"path": "/drain", "port": 8080}}, None),  # how long it took is unknown
])
async def test_app_shutdown_is_pod_shutdown_after_the_prestop(
        env: AgentEnv, clock: ManualClock, prestop: dict[str, Any],
        app_shutdown: float | None) -> None:
    await ready_service(env, prestop=prestop)
    env.cluster.delete_pod("web-0", grace=30)
    await env.seen("pods")
    clock.advance(3.5)
    env.cluster.pod_terminated("web-0")
    await env.seen("pods")
    assert env.sample("endpoint_propagation_pod_shutdown_seconds_sum") == 3.5
    assert env.sample("endpoint_propagation_app_shutdown_seconds_sum") == (app_shutdown or 0.0)
    assert env.sample("endpoint_propagation_app_shutdown_seconds_count") == (
        0 if app_shutdown is None else 1)


async def test_pod_stopping_before_the_dataplane_is_unsafe(env: AgentEnv,
                                                           clock: ManualClock) -> None:
    await ready_service(env)
    await unsafe_deletion(env, clock, "web-0", "10.0.0.1", 1)

    assert env.sample("endpoint_propagation_unsafe_terminations_total") == 1
    assert env.sample("endpoint_propagation_unsafe_window_seconds_sum") == 0.375
    assert env.sample("endpoint_propagation_headroom_seconds_count") == 0
    assert env.sample("endpoint_propagation_pod_killed_total") == 1
    assert env.stage_sum("dataplane") == 1.375


async def test_other_nodes_measure_the_dataplane_stage(env: AgentEnv,
                                                       clock: ManualClock) -> None:
    await ready_service(env, node="node-b")
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
    await env.settle_episode(key("web", "10.0.0.1"))
    clock.advance(0.75)
    env.dataplane.set(key("web", "10.0.0.1"), False)
    await until(lambda: env.agent.tracker.episodes[key("web", "10.0.0.1")].dataplane is not None,
                "dataplane seen")
    clock.advance(5.0)
    env.cluster.pod_terminated("web-0")  # seen from here through the watch on terminal pods
    await env.settle_finished(1)

    assert env.stage_sum("dataplane") == 0.75
    assert env.stage_count("controller") == 0  # not measurable off the pod's node
    assert env.stage_count("total") == 0
    assert env.sample("endpoint_propagation_headroom_seconds_sum") == 5.0
    assert not env.agent.tracker.finished[0].local


async def test_readiness_loss_without_deletion(env: AgentEnv, clock: ManualClock) -> None:
    await ready_service(env, node="node-b")
    env.cluster.set_endpoint("web-abc", "10.0.0.2", ready=False, serving=False)
    await env.settle_episode(key("web", "10.0.0.2"))
    clock.advance(0.375)
    env.dataplane.set(key("web", "10.0.0.2"), False)
    await env.settle_finished(1)
    assert env.stage_sum("dataplane", cause="not_ready") == 0.375
    assert env.agent.tracker.finished[0].cause == "not_ready"
    assert env.sample("endpoint_propagation_unsafe_terminations_total") == 0


async def test_ready_again_before_the_dataplane_is_abandoned(env: AgentEnv) -> None:
    await ready_service(env, node="node-b")
    env.cluster.set_endpoint("web-abc", "10.0.0.2", ready=False, serving=False)
    await env.settle_episode(key("web", "10.0.0.2"))
    env.cluster.set_endpoint("web-abc", "10.0.0.2", ready=True, serving=True)
    await env.settle_finished(1)
    assert env.abandoned("ready_again") == 1
    assert env.stage_count("dataplane", cause="not_ready") == 0


async def test_fallback_is_counted_not_reported_as_slowness(env: AgentEnv,
                                                            clock: ManualClock) -> None:
    await ready_service(env, pods=1)
    env.cluster.delete_pod("web-0")
    await env.seen("pods")
    clock.advance(0.25)
    # The only endpoint: kube-proxy keeps routing to it while it is serving and terminating.
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True)
    await env.settle_episode(key("web", "10.0.0.1"))
    clock.advance(20)
    env.cluster.pod_terminated("web-0")
    await env.settle_finished(1)
    assert env.sample("endpoint_propagation_fallback_total") == 1
    assert env.stage_sum("controller") == 0.25
    assert env.stage_count("dataplane") == 0
    assert env.sample("endpoint_propagation_unsafe_terminations_total") == 0
    assert env.agent.tracker.finished[0].fallback


async def test_endpoint_removed_outright(env: AgentEnv, clock: ManualClock) -> None:
    await ready_service(env)
    env.cluster.remove_pod("web-1")  # grace 0: the object is gone at once
    await env.seen("pods")
    clock.advance(0.125)
    env.cluster.drop_endpoint("web-abc", "10.0.0.2")
    await env.settle_episode(key("web", "10.0.0.2"))
    clock.advance(0.25)
    env.dataplane.set(key("web", "10.0.0.2"), False)
    await env.settle_finished(1)
    assert env.stage_sum("controller") == 0.125
    assert env.stage_sum("dataplane") == 0.25
    # stopped (gone) came first: the pod was already gone while this node still routed to it.
    assert env.sample("endpoint_propagation_unsafe_terminations_total") == 1


async def test_dataplane_before_slice_update_is_kept(env: AgentEnv, clock: ManualClock) -> None:
    await ready_service(env, node="node-b")
    env.dataplane.set(key("web", "10.0.0.1"), False)  # kube-proxy's watch was faster than ours
    clock.advance(0.0625)
    env.cluster.set_endpoint("web-abc", "10.0.0.1", ready=False, terminating=True,
                             serving=False)
    await env.settle_episode(key("web", "10.0.0.1"))
    env.cluster.pod_terminated("web-0")
    await env.settle_finished(1)
    assert env.stage_sum("dataplane") == 0.0  # never negative
    assert env.sample("endpoint_propagation_unsafe_terminations_total") == 0
    assert env.sample("endpoint_propagation_headroom_seconds_sum") == 0.0625


async def test_a_deployments_pod_is_measured_under_its_workload(env: AgentEnv,
                                                                clock: ManualClock) -> None:
    """Owned as a Deployment's pods are (a ReplicaSet named after the template hash the pod
    carries), its deletion counts under deployment/web, on the pod's node."""
    owner = {"labels": {"app": "web", "pod-template-hash": "5d8f7c"},
             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                  "name": "web-5d8f7c", "uid": "uid-rs", "controller": True,
                                  "blockOwnerDeletion": True}]}
    uids = [env.cluster.create_pod(f"web-{i}", "node-a", f"10.0.0.{i + 1}", metadata=owner)
            for i in range(2)]
    for i in range(2):
        env.dataplane.set(key("web", f"10.0.0.{i + 1}"), True)
    env.cluster.put_slice("web-abc", "web", *(Endpoint(f"10.0.0.{i + 1}", "node-a", f"web-{i}",
                                                       uid) for i, uid in enumerate(uids)))
    await env.seen("endpointslices")
    await safe_deletion(env, clock, "web-0", "10.0.0.1", 1)
    workload = {"namespace": "default", "workload": "deployment/web"}
    assert env.sample("endpoint_propagation_workload_episodes_total", **workload) == 1
    assert env.sample("endpoint_propagation_workload_app_shutdown_seconds_sum", **workload) \
        == 2.75
    assert env.sample("endpoint_propagation_workloads") == 1
    (episode,) = env.agent.tracker.finished
    assert (episode.to_dict()["namespace"], episode.to_dict()["workload"]) == (
        "default", "deployment/web")
