"""kubernetes_asyncio, unmodified, against the lab API server: the client the agent uses."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from observer.lab.apiserver.server import ApiServer

POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "p", "labels": {"app": "web"}},
    "spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "app:1"}]},
}


# Bodies are plain dicts: kubernetes_asyncio sends them as JSON as they are (its annotations
# name only its model classes), so the helpers say Any.
def pod(name: str, node: str = "node-a", **labels: str) -> Any:
    body = copy.deepcopy(POD)
    body["metadata"] = {"name": name, "labels": labels or {"app": "web"}}
    body["spec"]["nodeName"] = node
    return body


def endpoint_slice(name: str, *addresses: str) -> Any:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"port": 80}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}


async def test_create_list_get_typed(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    created = await core.create_namespaced_pod("default", pod("a"))
    assert created.metadata.uid
    assert created.status.phase == "Pending"
    listed = await core.list_namespaced_pod("default")
    assert [p.metadata.name for p in listed.items] == ["a"]
    assert listed.metadata.resource_version == created.metadata.resource_version
    disc = client.DiscoveryV1Api(api)
    eps = await disc.create_namespaced_endpoint_slice("default", endpoint_slice("s", "10.0.0.1"))
    assert eps.endpoints[0].addresses == ["10.0.0.1"]
    assert eps.ports[0].protocol == "TCP"  # defaulted


async def test_field_selector_by_node(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for name, node in (("a", "node-a"), ("b", "node-b"), ("c", "node-a")):
        await core.create_namespaced_pod("default", pod(name, node))
    listed = await core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a")
    assert sorted(p.metadata.name for p in listed.items) == ["a", "c"]
    listed = await core.list_pod_for_all_namespaces(field_selector="spec.nodeName!=node-a")
    assert [p.metadata.name for p in listed.items] == ["b"]


async def test_pagination_is_a_consistent_snapshot(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for i in range(5):
        await core.create_namespaced_pod("default", pod(f"p{i}"))
    first = await core.list_namespaced_pod("default", limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3
    # Changes after the first page do not show up in later pages of the same list.
    await core.delete_namespaced_pod("p3", "default", grace_period_seconds=0)
    await core.create_namespaced_pod("default", pod("p5"))
    # kubernetes_asyncio names the API's `continue` field `_continue` (a Python keyword).
    second = await core.list_namespaced_pod(
        "default", limit=2, _continue=first.metadata._continue)  # noqa: SLF001
    third = await core.list_namespaced_pod(
        "default", limit=2, _continue=second.metadata._continue)  # noqa: SLF001
    assert [p.metadata.name for p in second.items + third.items] == ["p2", "p3", "p4"]
    assert not third.metadata._continue  # noqa: SLF001
    assert second.metadata.resource_version == first.metadata.resource_version


async def test_watch_from_list_version_sees_every_change(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod("default", pod("a"))
    listed = await core.list_namespaced_pod("default")
    await core.create_namespaced_pod("default", pod("b"))
    await core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "1"}}})
    await core.delete_namespaced_pod("b", "default", grace_period_seconds=0)
    seen = []
    async with watch.Watch() as w:
        async for event in w.stream(core.list_namespaced_pod, "default",
                                    resource_version=listed.metadata.resource_version,
                                    timeout_seconds=1):
            seen.append((event["type"], event["object"].metadata.name))
    assert seen == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]


async def test_watch_without_version_starts_with_synthetic_adds(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod("default", pod("a"))
    async with watch.Watch() as w:
        events = [(e["type"], e["object"].metadata.name) async for e in w.stream(
            core.list_namespaced_pod, "default", timeout_seconds=1)]
    assert events == [("ADDED", "a")]


async def test_bookmarks_carry_the_current_version(api: client.ApiClient,
                                                   apiserver: ApiServer) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod("default", pod("a"))
    listed = await core.list_namespaced_pod("default")
    bookmarks = []
    async with watch.Watch() as w:
        async for event in w.stream(core.list_namespaced_pod, "default",
                                    resource_version=listed.metadata.resource_version,
                                    allow_watch_bookmarks=True, timeout_seconds=1):
            if event["type"] == "BOOKMARK":
                bookmarks.append(event["raw_object"]["metadata"]["resourceVersion"])
    assert bookmarks  # bookmark_interval is 0.2 s in tests
    assert bookmarks[-1] == str(apiserver.store.revision)


async def test_selector_transitions_are_added_and_deleted(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod("default", pod("a", app="web"))
    listed = await core.list_namespaced_pod("default", label_selector="app=web")
    await core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"app": "db"}}})
    await core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"app": "web"}}})
    async with watch.Watch() as w:
        events = [e["type"] async for e in w.stream(
            core.list_namespaced_pod, "default", label_selector="app=web",
            resource_version=listed.metadata.resource_version, timeout_seconds=1)]
    assert events == ["DELETED", "ADDED"]


async def test_too_old_version_is_410(api: client.ApiClient, apiserver: ApiServer) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod("default", pod("a"))
    old = (await core.list_namespaced_pod("default")).metadata.resource_version
    await core.create_namespaced_pod("default", pod("b"))
    apiserver.store.compact()

    async def drain() -> None:
        async with watch.Watch() as w:
            async for _ in w.stream(core.list_namespaced_pod, "default", resource_version=old,
                                    timeout_seconds=1):
                pass

    with pytest.raises(ApiException) as raised:
        await drain()
    assert raised.value.status == 410
    with pytest.raises(ApiException) as raised:
        await core.list_namespaced_pod("default", resource_version=old,
                                       resource_version_match="Exact")
    assert raised.value.status == 410


async def test_optimistic_concurrency(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    created = await core.create_namespaced_pod("default", pod("a"))
    created.metadata.labels = {"app": "changed"}
    await core.replace_namespaced_pod("a", "default", created)
    created.metadata.labels = {"app": "stale"}
    with pytest.raises(ApiException) as raised:
        await core.replace_namespaced_pod("a", "default", created)
    assert raised.value.status == 409
    assert "the object has been modified" in str(raised.value.body)


async def test_noop_update_keeps_resource_version(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    created = await core.create_namespaced_pod("default", pod("a"))
    same = {"metadata": {"labels": {"app": "web"}}}
    again = await core.patch_namespaced_pod("a", "default", same)
    assert again.metadata.resource_version == created.metadata.resource_version


async def test_status_subresource_only_changes_status(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod("default", pod("a"))
    patched = await core.patch_namespaced_pod_status("a", "default", {
        "metadata": {"labels": {"ignored": "yes"}},
        "status": {"phase": "Running", "podIP": "10.0.0.9",
                   "conditions": [{"type": "Ready", "status": "True"}]}})
    assert patched.status.phase == "Running"
    assert patched.status.pod_ip == "10.0.0.9"
    assert "ignored" not in patched.metadata.labels
    # ... and the main resource ignores status.
    replaced = await core.patch_namespaced_pod("a", "default", {"status": {"phase": "Failed"}})
    assert replaced.status.phase == "Running"
    listed = await core.list_pod_for_all_namespaces(field_selector="status.podIP=10.0.0.9")
    assert [p.metadata.name for p in listed.items] == ["a"]


async def test_graceful_delete_and_kubelet_confirmation(api: client.ApiClient,
                                                        apiserver: ApiServer) -> None:
    core = client.CoreV1Api(api)
    created = await core.create_namespaced_pod("default", pod("a"))
    deleting = await core.delete_namespaced_pod("a", "default", grace_period_seconds=10)
    assert deleting.metadata.deletion_grace_period_seconds == 10
    assert apiserver.store.get("pods", ("default", "a")) is not None
    with pytest.raises(ApiException) as raised:
        await core.delete_namespaced_pod("a", "default", body=client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=client.V1Preconditions(uid="other")))
    assert raised.value.status == 409
    await core.delete_namespaced_pod("a", "default", body=client.V1DeleteOptions(
        grace_period_seconds=0, preconditions=client.V1Preconditions(uid=created.metadata.uid)))
    assert apiserver.store.get("pods", ("default", "a")) is None


async def test_unscheduled_and_terminal_pods_go_at_once(api: client.ApiClient,
                                                        apiserver: ApiServer) -> None:
    core = client.CoreV1Api(api)
    unscheduled = pod("a")
    del unscheduled["spec"]["nodeName"]
    await core.create_namespaced_pod("default", unscheduled)
    await core.delete_namespaced_pod("a", "default")
    assert apiserver.store.get("pods", ("default", "a")) is None
    await core.create_namespaced_pod("default", pod("b"))
    await core.patch_namespaced_pod_status("b", "default", {"status": {"phase": "Succeeded"}})
    await core.delete_namespaced_pod("b", "default")
    assert apiserver.store.get("pods", ("default", "b")) is None


async def test_finalizers_hold_a_slice_until_removed(api: client.ApiClient,
                                                     apiserver: ApiServer) -> None:
    disc = client.DiscoveryV1Api(api)
    body = endpoint_slice("s", "10.0.0.1")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    await disc.create_namespaced_endpoint_slice("default", body)
    await disc.delete_namespaced_endpoint_slice("s", "default")
    held = await disc.read_namespaced_endpoint_slice("s", "default")
    assert held.metadata.deletion_timestamp is not None
    await disc.patch_namespaced_endpoint_slice("s", "default",
                                               [{"op": "remove", "path": "/metadata/finalizers"}])
    assert apiserver.store.get("endpointslices", ("default", "s")) is None


async def test_dry_run_persists_nothing(api: client.ApiClient, apiserver: ApiServer) -> None:
    core = client.CoreV1Api(api)
    revision = apiserver.store.revision
    result = await core.create_namespaced_pod("default", pod("a"), dry_run="All")
    assert result.metadata.name == "a"
    assert apiserver.store.revision == revision
    assert apiserver.store.get("pods", ("default", "a")) is None
