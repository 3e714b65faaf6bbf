"""Slices as real clusters produce them, odd ones included: none may crash the agent or cost
another episode its measurement."""

from __future__ import annotations

from observer.lab.apiserver.registry import WriteOptions
from observer.values import EndpointKey
from tests.agent.harness import NS, AgentEnv, Endpoint, key
from tests.conftest import ManualClock


async def finish(env: AgentEnv, clock: ManualClock, k: EndpointKey, slice_name: str,
                 count: int) -> None:
    env.dataplane.set(k, True)  # kube-proxy programmed it
    env.cluster.set_endpoint(slice_name, k.ip, ready=False, terminating=True, serving=False)
    await env.settle_episode(k)
    clock.advance(0.25)
    env.dataplane.set(k, False)
    env.cluster.drop_endpoint(slice_name, k.ip)  # the pod went (serving=false is no stop)
    await env.settle_finished(count)


async def test_endpoint_without_target_ref_is_still_measured(env: AgentEnv,
                                                             clock: ManualClock) -> None:
    env.cluster.put_slice("ext-1", "ext", Endpoint("192.0.2.10", "node-b"))
    await env.seen("endpointslices")
    assert env.invalid("endpointslices", "no_target_ref") == 1
    await finish(env, clock, key("ext", "192.0.2.10"), "ext-1", 1)
    assert env.stage_sum("dataplane") == 0.25
    assert env.agent.tracker.finished[0].pod == ""


async def test_ipv6_and_dual_stack(env: AgentEnv, clock: ManualClock) -> None:
    uid = env.cluster.create_pod("dual-0", "node-a", "10.0.0.5")
    env.cluster.put_slice("dual-v4", "dual", Endpoint("10.0.0.5", "node-a", "dual-0", uid),
                          Endpoint("10.0.0.6", "node-b", "dual-1", "uid-1"))
    env.cluster.put_slice("dual-v6", "dual", Endpoint("fd00::5", "node-a", "dual-0", uid),
                          Endpoint("fd00::6", "node-b", "dual-1", "uid-1"), address_type="IPv6")
    await env.seen("endpointslices")
    v4, v6 = key("dual", "10.0.0.5"), key("dual", "fd00::5")
    env.dataplane.set(v4, True)
    env.dataplane.set(v6, True)
    assert str(v6) == "default/dual:http -> [fd00::5]:8080"
    env.cluster.delete_pod("dual-0")
    await env.seen("pods")
    clock.advance(0.125)
    env.cluster.set_endpoint("dual-v4", "10.0.0.5", ready=False, terminating=True)
    env.cluster.set_endpoint("dual-v6", "fd00::5", ready=False, terminating=True)
    await env.settle_episode(v6)
    clock.advance(0.25)
    env.dataplane.set(v4, False)
    env.dataplane.set(v6, False)
    clock.advance(1)
    env.cluster.pod_terminated("dual-0")
    await env.settle_finished(2)
    assert env.stage_count("controller") == 2
    assert env.stage_sum("dataplane") == 0.5
    assert {e.key for e in env.agent.tracker.finished} == {v4, v6}
    assert env.sample("endpoint_propagation_fallback_total") == 0


async def test_fallback_is_per_ip_family(env: AgentEnv) -> None:
    # IPv4 has another Ready endpoint; IPv6 does not: only the IPv6 one falls back.
    env.cluster.put_slice("fam-v4", "fam", Endpoint("10.0.3.1", "node-b", "fam-0", "u0"),
                          Endpoint("10.0.3.2", "node-b", "fam-1", "u1"))
    env.cluster.put_slice("fam-v6", "fam", Endpoint("fd00::31", "node-b", "fam-0", "u0"),
                          address_type="IPv6")
    for k in (key("fam", "10.0.3.1"), key("fam", "10.0.3.2"), key("fam", "fd00::31")):
        env.dataplane.set(k, True)
    env.cluster.set_endpoint("fam-v4", "10.0.3.1", ready=False, terminating=True)
    env.cluster.set_endpoint("fam-v6", "fd00::31", ready=False, terminating=True)
    await env.seen("endpointslices")
    assert not env.agent.tracker.episodes[key("fam", "10.0.3.1")].fallback
    assert env.agent.tracker.episodes[key("fam", "fd00::31")].fallback


async def test_duplicate_endpoint_across_slices_prefers_ready(env: AgentEnv,
                                                              clock: ManualClock) -> None:
    env.cluster.put_slice("dup-a", "dup", Endpoint("10.0.0.7", "node-b", "dup-0", "uid-dup"),
                          Endpoint("10.0.0.70", "node-b", "dup-1", "uid-dup1"))
    env.cluster.put_slice("dup-b", "dup", Endpoint("10.0.0.7", "node-b", "dup-0", "uid-dup"))
    await env.seen("endpointslices")
    assert env.invalid("endpointslices", "duplicate_endpoint") >= 1
    # One copy going not-ready changes nothing: the other is still Ready.
    env.cluster.set_endpoint("dup-a", "10.0.0.7", ready=False, terminating=True)
    await env.seen("endpointslices")
    assert key("dup", "10.0.0.7") not in env.agent.tracker.episodes
    env.cluster.drop_endpoint("dup-a", "10.0.0.7")  # the controller resolves the duplicate
    await finish(env, clock, key("dup", "10.0.0.7"), "dup-b", 1)
    assert env.stage_sum("dataplane") == 0.25


async def test_endpoint_moving_between_slices_is_not_an_episode(env: AgentEnv) -> None:
    env.cluster.put_slice("mv-a", "mv", Endpoint("10.0.0.8", "node-b", "mv-0", "uid-mv"),
                          Endpoint("10.0.0.9", "node-b", "mv-1", "uid-mv1"))
    await env.seen("endpointslices")
    env.cluster.put_slice("mv-b", "mv", Endpoint("10.0.0.8", "node-b", "mv-0", "uid-mv"))
    env.cluster.drop_endpoint("mv-a", "10.0.0.8")
    await env.seen("endpointslices")
    assert env.agent.tracker.episodes == {}
    assert list(env.agent.tracker.finished) == []


async def test_fqdn_and_unlabelled_slices_are_skipped(env: AgentEnv, clock: ManualClock) -> None:
    registry = env.cluster.server.registries["endpointslices"]
    registry.create(NS, {"metadata": {"name": "fqdn", "labels": {
        "kubernetes.io/service-name": "f"}}, "addressType": "FQDN",
        "endpoints": [{"addresses": ["db.example.com"]}]}, WriteOptions())
    registry.create(NS, {"metadata": {"name": "orphan"}, "addressType": "IPv4",
                         "endpoints": [{"addresses": ["10.9.9.9"]}]}, WriteOptions())
    await env.seen("endpointslices")
    assert env.invalid("endpointslices", "unsupported_address_type") == 1
    assert env.invalid("endpointslices", "no_service_label") == 1
    env.cluster.put_slice("ok-1", "ok", Endpoint("10.0.1.1", "node-b"))
    await env.seen("endpointslices")
    await finish(env, clock, key("ok", "10.0.1.1"), "ok-1", 1)


async def test_headless_slices_are_not_watched(env: AgentEnv) -> None:
    registry = env.cluster.server.registries["endpointslices"]
    registry.create(NS, {"metadata": {"name": "hl", "labels": {
        "kubernetes.io/service-name": "hl", "service.kubernetes.io/headless": ""}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.2.1"]}],
        "ports": [{"port": 80}]}, WriteOptions())
    env.cluster.put_slice("marker", "marker", Endpoint("10.0.2.2", "node-b"))
    await env.seen("endpointslices")  # the marker arrived, so the headless one was filtered
    registry.update(NS, "hl", {**registry.get(NS, "hl"), "endpoints": [
        {"addresses": ["10.0.2.1"], "conditions": {"ready": False}}]}, WriteOptions())
    env.cluster.drop_endpoint("marker", "10.0.2.2")
    await env.seen("endpointslices")
    assert env.agent.tracker.episodes == {}
    assert env.agent.slices.version == str(env.cluster.server.store.revision)
