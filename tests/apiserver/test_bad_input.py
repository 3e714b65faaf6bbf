"""Bad requests get the Status a real server would send, and never change stored state."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from observer.lab.apiserver.server import ApiServer
from tests.apiserver.rawhttp import raw_session

PODS = "/api/v1/namespaces/default/pods"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
GOOD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "keep"},
        "spec": {"nodeName": "n", "containers": [{"name": "c", "image": "i"}]}}


@pytest.fixture
async def http(apiserver: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with raw_session(apiserver) as session:
        response = await session.post(PODS, json=GOOD)
        assert response.status == 201
        yield session


def with_changes(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.dumps(GOOD))
    body["metadata"]["name"] = "new"
    for dotted, value in changes.items():
        node = body
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return body


CASES = [
    ("invalid json", b'{"apiVersion": "v1", "kind": ', "application/json", 400, "BadRequest",
     "json parse error"),
    ("duplicate field", b'{"kind":"Pod","kind":"Pod","metadata":{"name":"x"}}',
     "application/json", 400, "BadRequest", 'duplicate field "kind"'),
    ("not an object", b"[1, 2]", "application/json", 400, "BadRequest", "cannot be handled"),
    ("wrong apiVersion", json.dumps(with_changes(apiVersion="v2")).encode(), "application/json",
     400, "BadRequest", "the API version in the data (v2) does not match"),
    ("wrong kind", json.dumps(with_changes(kind="Service")).encode(), "application/json", 400,
     "BadRequest", "the kind in the data (Service) does not match"),
    ("missing name", json.dumps(with_changes(metadata__name=None)).encode(), "application/json",
     422, "Invalid", "metadata.name: Required value: name or generateName is required"),
    ("bad name", json.dumps(with_changes(metadata__name="Not_OK")).encode(), "application/json",
     422, "Invalid", "RFC 1123"),
    ("no containers", json.dumps(with_changes(spec__containers=[])).encode(), "application/json",
     422, "Invalid", "spec.containers: Required value"),
    ("wrong type", json.dumps(with_changes(spec__terminationGracePeriodSeconds="30")).encode(),
     "application/json", 400, "BadRequest", "cannot unmarshal string"),
    ("resourceVersion on create", json.dumps(with_changes(metadata__resourceVersion="5")).encode(),
     "application/json", 400, "BadRequest", "resourceVersion should not be set"),
    ("protobuf body", b"\x6b\x38\x73\x00", "application/vnd.kubernetes.protobuf", 415,
     "UnsupportedMediaType", "unknown format"),
    ("empty body", b"", "application/json", 400, "BadRequest", "empty"),
]


@pytest.mark.parametrize(("body", "content_type", "code", "reason", "message"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_create_is_a_status_and_changes_nothing(
        http: aiohttp.ClientSession, apiserver: ApiServer, body: bytes, content_type: str,
        code: int, reason: str, message: str) -> None:
    revision = apiserver.store.revision
    response = await http.post(PODS, data=body, headers={"Content-Type": content_type})
    status = await response.json()
    assert response.status == code
    assert status["kind"] == "Status"
    assert status["status"] == "Failure"
    assert status["reason"] == reason
    assert status["code"] == code
    assert message in status["message"]
    assert apiserver.store.revision == revision
    assert apiserver.store.get("pods", ("default", "keep")) is not None


async def test_huge_body_is_413(http: aiohttp.ClientSession, apiserver: ApiServer) -> None:
    body = with_changes(metadata__annotations={"big": "x" * (4 * 1024 * 1024)})
    revision = apiserver.store.revision
    response = await http.post(PODS, json=body)
    assert response.status == 413
    assert (await response.json())["reason"] == "RequestEntityTooLarge"
    assert apiserver.store.revision == revision


@pytest.mark.parametrize(("mode", "code", "warned"), [("Strict", 400, False), ("Warn", 201, True),
                                                      ("Ignore", 201, False)])
async def test_unknown_fields_by_validation_mode(http: aiohttp.ClientSession, mode: str,
                                                 code: int, warned: bool) -> None:
    body = with_changes(spec__bogus=1)
    response = await http.post(f"{PODS}?fieldValidation={mode}", json=body)
    assert response.status == code
    assert ("Warning" in response.headers) is warned
    if code == 201:
        assert "bogus" not in (await response.json())["spec"]  # dropped, never stored


async def test_bad_slices_are_invalid(http: aiohttp.ClientSession, apiserver: ApiServer) -> None:
    base = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "s"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"port": 80}]}
    for change, field in (({"addressType": "IPv5"}, "addressType"),
                          ({"endpoints": [{"addresses": ["fe80::1"]}]},
                           "endpoints[0].addresses[0]"),
                          ({"endpoints": [{"addresses": []}]}, "endpoints[0].addresses"),
                          ({"ports": [{"port": 70000}]}, "ports[0].port")):
        response = await http.post(SLICES, json={**base, **change})
        status = await response.json()
        assert response.status == 422, status
        assert [c["field"] for c in status["details"]["causes"]] == [field]
    assert apiserver.store.items("endpointslices") == {}
    assert (await http.post(SLICES, json=base)).status == 201
    changed = {**base, "addressType": "IPv6", "endpoints": [{"addresses": ["fe80::1"]}]}
    response = await http.put(f"{SLICES}/s", json=changed)
    assert response.status == 422
    assert "immutable" in (await response.json())["message"]


async def test_request_errors(http: aiohttp.ClientSession, apiserver: ApiServer) -> None:
    checks = [
        (http.get(f"{PODS}?labelSelector=a%20in%20(b"), 400),
        (http.get(f"{PODS}?continue=garbage"), 400),
        (http.get(f"{PODS}?resourceVersion=abc"), 400),
        (http.get(f"{PODS}?resourceVersionMatch=Exact"), 400),
        (http.get(f"{PODS}?watch=maybe"), 400),
        (http.get("/api/v1/namespaces/default/configmaps"), 404),
        (http.put(PODS, json=GOOD), 405),
        (http.get(f"{PODS}/missing"), 404),
        (http.patch(f"{PODS}/keep", data=b"{}",
                    headers={"Content-Type": "application/apply-patch+yaml"}), 415),
        (http.patch(f"{PODS}/keep", data=b'[{"op":"remove","path":"/nope"}]',
                    headers={"Content-Type": "application/json-patch+json"}), 422),
        (http.get(PODS, headers={"Accept": "application/vnd.kubernetes.protobuf"}), 406),
    ]
    revision = apiserver.store.revision
    for request, code in checks:
        response = await request
        body = await response.json()
        assert (response.status, body["kind"], body["code"]) == (code, "Status", code), body
    assert apiserver.store.revision == revision


async def test_wrong_token_is_401(apiserver: ApiServer) -> None:
    async with raw_session(apiserver, token="wrong") as session:
        response = await session.get(PODS)
        assert response.status == 401
        assert (await response.json())["reason"] == "Unauthorized"
