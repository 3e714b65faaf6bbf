"""preStop and grace shapes as people write them (observer/kube/lifecycle.py)."""

from __future__ import annotations

from typing import Any

import pytest

from observer.kube.lifecycle import (
    ContainerLifecycle,
    PreStop,
    containers_of,
    grace_seconds,
    known_prestop_seconds,
    prestop_of,
)


def hook(prestop: dict[str, Any]) -> dict[str, Any]:
    return {"name": "app", "image": "app:1", "lifecycle": {"preStop": prestop}}


@pytest.mark.parametrize(("prestop", "expected"), [
    ({"exec": {"command": ["sleep", "15"]}}, PreStop("exec-sleep", 15.0)),
    ({"exec": {"command": ["/bin/sleep", "1m", "5s"]}}, PreStop("exec-sleep", 65.0)),
    ({"exec": {"command": ["sleep", "0.5"]}}, PreStop("exec-sleep", 0.5)),
    ({"exec": {"command": ["/bin/busybox", "sleep", "3"]}}, PreStop("exec-sleep", 3.0)),
    ({"exec": {"command": ["sh", "-c", "sleep 15"]}}, PreStop("exec-sleep", 15.0)),
    ({"exec": {"command": ["/bin/sh", "-c", "sleep 15 && nginx -s quit"]}},
     PreStop("exec-sleep", 15.0, runs_more=True)),
    ({"exec": {"command": ["/bin/bash", "-ec", "echo draining\nsleep 5; sleep '10'"]}},
     PreStop("exec-sleep", 15.0, runs_more=True)),
    # -c takes one string: `15` becomes $0 and sleep fails at once for want of an operand.
    ({"exec": {"command": ["/bin/sh", "-c", "sleep", "15"]}}, PreStop("exec-sleep", 0.0)),
    ({"exec": {"command": ["sleep", 20]}}, PreStop("exec-sleep", 20.0)),  # number, not string
    ({"exec": {"command": ["sh", "-c", "sleep $DRAIN_SECONDS"]}}, PreStop("exec", None)),
    ({"exec": {"command": ["/usr/sbin/nginx", "-s", "quit"]}}, PreStop("exec", None)),
    ({"exec": {"command": ["sh", "-c", "nginx -s quit"]}}, PreStop("exec", None)),
    ({"exec": {"command": ["sh", "-c", "sleep 'unterminated"]}}, PreStop("exec", None)),
    ({"exec": {}}, PreStop("exec", None)),
    ({"sleep": {"seconds": 10}}, PreStop("sleep-action", 10.0)),
    ({"sleep": {"seconds": "10"}}, PreStop("sleep-action", 10.0)),  # number as a string
    ({"httpGet": {"path": "/drain", "port": 8080}}, PreStop("http", None)),
    ({"tcpSocket": {"port": 8080}}, PreStop("none", None)),  # never run for hooks
])
def test_prestop_shapes(prestop: dict[str, Any], expected: PreStop) -> None:
    found = prestop_of(hook(prestop))
    assert found == expected
    # A patch may replace a hook that only waits; never one that runs something else.
    assert found.replaceable == (expected.kind in ("none", "sleep-action") or (
        expected.kind == "exec-sleep" and not expected.runs_more))


def test_no_lifecycle_is_no_prestop() -> None:
    assert prestop_of({"name": "app"}) == PreStop("none", None)
    assert prestop_of({"name": "app", "lifecycle": {"postStart": {}}}) == PreStop("none", None)
    assert prestop_of({"name": "app", "lifecycle": "garbage"}) == PreStop("none", None)


def test_containers_sidecars_and_init_containers() -> None:
    spec = {
        "initContainers": [
            {"name": "migrate", "image": "m:1", "command": ["migrate"]},  # ran and exited
            {"name": "mesh", "image": "proxy:1", "restartPolicy": "Always",  # a sidecar
             "ports": [{"containerPort": 15001}],
             "lifecycle": {"preStop": {"sleep": {"seconds": 20}}}},
        ],
        "containers": [
            {"name": "web", "image": "web:1", "args": ["--port", "8080"],
             "ports": [{"containerPort": 8080}],
             "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}}},
            {"name": "logs", "image": "fluent-bit:3", "command": ["fluent-bit"]},
        ],
    }
    assert containers_of(spec) == [
        ContainerLifecycle("web", PreStop("exec-sleep", 5.0), serves=True),
        ContainerLifecycle("logs", PreStop("none", None), serves=False),
        ContainerLifecycle("mesh", PreStop("sleep-action", 20.0), serves=True, sidecar=True),
    ]
    # The hooks run in parallel: the pod is held for the longest.
    assert known_prestop_seconds(containers_of(spec)) == 20.0


def test_without_ports_every_container_serves() -> None:
    spec = {"containers": [{"name": "a"}, {"name": "b"}]}
    assert [c.serves for c in containers_of(spec)] == [True, True]


def test_an_unknown_hook_makes_the_pods_prestop_unknown() -> None:
    spec = {"containers": [hook({"sleep": {"seconds": 5}}),
                           {**hook({"httpGet": {"port": 80}}), "name": "b"}]}
    assert known_prestop_seconds(containers_of(spec)) is None
    assert known_prestop_seconds(containers_of({"containers": [{"name": "a"}]})) == 0.0


@pytest.mark.parametrize(("spec", "expected"), [
    ({}, 30.0), ({"terminationGracePeriodSeconds": 60}, 60.0),
    ({"terminationGracePeriodSeconds": "45"}, 45.0),
    ({"terminationGracePeriodSeconds": "soon"}, 30.0),
])
def test_grace(spec: dict[str, Any], expected: float) -> None:
    assert grace_seconds(spec) == expected
