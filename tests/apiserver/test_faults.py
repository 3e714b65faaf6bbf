"""Fault injection: each fault does what it says, and the server recovers when it is cleared."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from observer.lab.apiserver.registry import WriteOptions
from observer.lab.apiserver.server import ApiServer
from tests.agent.harness import until
from tests.apiserver.rawhttp import raw_session, read_events
from tests.conftest import ManualClock

PODS = "/api/v1/namespaces/default/pods"


def pod(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i"}]}}


@pytest.fixture
async def http(apiserver: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with raw_session(apiserver) as session:
        yield session


async def wait_for_streams(apiserver: ApiServer, count: int) -> None:
    await until(lambda: len(apiserver.faults.streams) >= count, f"{count} watch streams open")


@pytest.mark.parametrize(("code", "reason"), [(429, "TooManyRequests"), (503, "ServiceUnavailable"),
                                              (500, "InternalError")])
async def test_fail_next_with_retry_after(http: aiohttp.ClientSession, apiserver: ApiServer,
                                          code: int, reason: str) -> None:
    apiserver.faults.fail_next(2, code=code, retry_after=3, method="GET", path="/pods")
    for _ in range(2):
        response = await http.get(PODS)
        assert response.status == code
        assert response.headers["Retry-After"] == "3"
        body = await response.json()
        assert body["reason"] == reason
        assert body["details"]["retryAfterSeconds"] == 3
    assert (await http.get(PODS)).status == 200


async def test_fault_matches_only_its_requests(http: aiohttp.ClientSession,
                                               apiserver: ApiServer) -> None:
    apiserver.faults.fail_next(1, code=503, method="POST")
    assert (await http.get(PODS)).status == 200
    assert (await http.post(PODS, json=pod("a"))).status == 503
    assert (await http.post(PODS, json=pod("a"))).status == 201


async def test_slow_responses(http: aiohttp.ClientSession, apiserver: ApiServer) -> None:
    apiserver.faults.slow(0.3, count=1)
    started = time.monotonic()
    assert (await http.get(PODS)).status == 200
    assert time.monotonic() - started >= 0.3  # a sleep never ends early
    assert apiserver.faults.requests == []


async def test_drop_cuts_the_stream_without_a_clean_end(http: aiohttp.ClientSession,
                                                        apiserver: ApiServer) -> None:
    await http.post(PODS, json=pod("a"))
    response = await http.get(PODS, params={"watch": "true"})
    assert [e["type"] for e in await read_events(response, 1)] == ["ADDED"]
    await wait_for_streams(apiserver, 1)
    assert apiserver.faults.drop_streams("pods") == 1
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.content.read()
    assert apiserver.store.watchers() == []


async def test_stall_sends_nothing_until_unstalled(http: aiohttp.ClientSession,
                                                   apiserver: ApiServer) -> None:
    listed = await (await http.get(PODS)).json()
    response = await http.get(PODS, params={"watch": "1", "allowWatchBookmarks": "true",
                                            "resourceVersion": listed["metadata"][
                                                "resourceVersion"]})
    await wait_for_streams(apiserver, 1)
    apiserver.faults.stall_streams()
    await http.post(PODS, json=pod("a"))
    with pytest.raises(TimeoutError):  # no event and no bookmark (interval 0.2 s) for 0.6 s
        await asyncio.wait_for(response.content.readline(), 0.6)
    apiserver.faults.unstall()
    events = await read_events(response, 1)
    assert (events[0]["type"], events[0]["object"]["metadata"]["name"]) == ("ADDED", "a")
    response.close()


async def test_expire_sends_410_and_refuses_the_old_version(http: aiohttp.ClientSession,
                                                            apiserver: ApiServer) -> None:
    await http.post(PODS, json=pod("a"))
    version = (await (await http.get(PODS)).json())["metadata"]["resourceVersion"]
    await http.post(PODS, json=pod("b"))
    response = await http.get(PODS, params={"watch": "true", "resourceVersion": version})
    assert [e["type"] for e in await read_events(response, 1)] == ["ADDED"]
    await wait_for_streams(apiserver, 1)
    apiserver.faults.expire_streams()
    (event,) = await read_events(response, 1)
    assert event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")
    assert await response.content.read() == b""  # and the stream ends cleanly
    again = await http.get(PODS, params={"watch": "true", "resourceVersion": version})
    (event,) = await read_events(again, 1)
    assert event["object"]["code"] == 410
    assert event["object"]["message"].startswith(f"too old resource version: {version}")


async def test_inject_malformed_line(http: aiohttp.ClientSession, apiserver: ApiServer) -> None:
    response = await http.get(PODS, params={"watch": "true"})
    await wait_for_streams(apiserver, 1)
    apiserver.faults.inject_line(b'{"type":"ADDED","object":{"kind":\n')
    assert await response.content.readline() == b'{"type":"ADDED","object":{"kind":\n'
    await http.post(PODS, json=pod("a"))
    (event,) = await read_events(response, 1)
    assert event["object"]["metadata"]["name"] == "a"  # the stream goes on after it
    response.close()


async def test_slow_watcher_is_closed(clock: ManualClock) -> None:
    server = ApiServer(clock=clock, watcher_capacity=3)
    await server.start()
    try:
        async with raw_session(server) as session:
            response = await session.get(PODS, params={"watch": "true"})
            await wait_for_streams(server, 1)
            registry = server.registries["pods"]
            for i in range(5):  # committed synchronously: the stream cannot drain in between
                registry.create("default", pod(f"p{i}"), WriteOptions())
            events = [e async for e in _lines(response)]
            assert [e["object"]["metadata"]["name"] for e in events] == ["p0", "p1", "p2"]
    finally:
        await server.stop()


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    async for line in response.content:
        yield json.loads(line)


async def test_stop_ends_open_watches(apiserver: ApiServer) -> None:
    async with raw_session(apiserver) as session:
        response = await session.get(PODS, params={"watch": "true"})
        await wait_for_streams(apiserver, 1)
        await asyncio.wait_for(apiserver.stop(), 5)
        assert await response.content.read() == b""
