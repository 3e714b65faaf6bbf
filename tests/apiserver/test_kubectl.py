"""The real kubectl binary against the lab API server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from observer.kube.apitime import format_time
from observer.lab.apiserver.server import ApiServer
from tests.conftest import ManualClock, require_tool
from tests.kubectl import Kubectl

POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web-1", "labels": {"app": "web"}},
    "spec": {"nodeName": "node-a", "terminationGracePeriodSeconds": 20,
             "containers": [{"name": "web", "image": "nginx:1.27",
                             "ports": [{"containerPort": 80}]}]},
}
SLICE = {
    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
    "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
    "addressType": "IPv4",
    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "node-a",
                   "conditions": {"ready": True, "serving": True, "terminating": False},
                   "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "default"}}],
}


@pytest.fixture
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(require_tool("kubectl"), kubeconfig)


async def test_version_and_api_resources(kubectl: Kubectl) -> None:
    _, out, _ = await kubectl("version")
    assert "Server Version: v1.34" in out
    _, out, _ = await kubectl("api-resources")
    assert "pods" in out
    assert "endpointslices" in out
    assert "discovery.k8s.io/v1" in out


async def test_create_get_and_table_columns(kubectl: Kubectl) -> None:
    _, out, _ = await kubectl("create", "-f", "-", stdin=json.dumps(POD))
    assert out.strip() == "pod/web-1 created"
    _, out, _ = await kubectl("get", "pods", "-o", "wide")
    header, row = out.splitlines()
    assert header.split()[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert row.split()[:3] == ["web-1", "0/1", "Pending"]
    assert "node-a" in row
    pod = await kubectl.json("get", "pod", "web-1")
    assert pod["spec"]["terminationGracePeriodSeconds"] == 20
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"  # defaulted
    assert pod["status"] == {"phase": "Pending", "qosClass": "BestEffort"}


async def test_apply_creates_then_configures(kubectl: Kubectl) -> None:
    _, out, _ = await kubectl("apply", "-f", "-", stdin=json.dumps(SLICE))
    assert "created" in out
    changed = json.loads(json.dumps(SLICE))
    changed["endpoints"][0]["addresses"] = ["10.0.0.2"]
    _, out, _ = await kubectl("apply", "-f", "-", stdin=json.dumps(changed))
    assert "configured" in out
    _, out, _ = await kubectl("apply", "-f", "-", stdin=json.dumps(changed))
    assert "unchanged" in out
    eps = await kubectl.json("get", "endpointslice", "web-abc")
    assert eps["endpoints"][0]["addresses"] == ["10.0.0.2"]
    assert "kubectl.kubernetes.io/last-applied-configuration" in eps["metadata"]["annotations"]
    _, out, _ = await kubectl("get", "endpointslices")
    assert out.splitlines()[1].split()[:4] == ["web-abc", "IPv4", "80", "10.0.0.2"]


async def test_patch_all_three_formats(kubectl: Kubectl) -> None:
    await kubectl("create", "-f", "-", stdin=json.dumps(POD))
    await kubectl("create", "-f", "-", stdin=json.dumps(SLICE))
    await kubectl("patch", "pod", "web-1", "-p",
                  '{"spec":{"containers":[{"name":"web","image":"nginx:1.28"}]}}')
    await kubectl("patch", "endpointslice", "web-abc", "--type=merge", "-p",
                  '{"metadata":{"labels":{"extra":"yes"}}}')
    await kubectl("patch", "endpointslice", "web-abc", "--type=json", "-p",
                  '[{"op":"replace","path":"/endpoints/0/conditions/ready","value":false}]')
    pod = await kubectl.json("get", "pod", "web-1")
    assert [c["image"] for c in pod["spec"]["containers"]] == ["nginx:1.28"]
    assert pod["spec"]["containers"][0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    eps = await kubectl.json("get", "endpointslice", "web-abc")
    assert eps["metadata"]["labels"]["extra"] == "yes"
    assert eps["endpoints"][0]["conditions"]["ready"] is False
    code, _, err = await kubectl("patch", "pod", "web-1", "-p", '{"spec":{"nodeName":"other"}}',
                                 ok=False)
    assert code != 0
    assert "Forbidden: pod updates may not change fields" in err


async def test_graceful_delete_shows_terminating_pod(kubectl: Kubectl, clock: ManualClock,
                                                     apiserver: ApiServer) -> None:
    await kubectl("create", "-f", "-", stdin=json.dumps(POD))
    _, out, _ = await kubectl("delete", "pod", "web-1", "--grace-period=7", "--wait=false")
    assert 'pod "web-1" deleted' in out
    pod = await kubectl.json("get", "pod", "web-1")
    # deletionTimestamp = request time + grace, whole seconds (apiserver rest/delete.go).
    assert pod["metadata"]["deletionTimestamp"] == format_time(int(clock.wall_time) + 7)
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 7
    _, out, _ = await kubectl("get", "pods")
    assert out.splitlines()[1].split()[:3] == ["web-1", "0/1", "Terminating"]
    # A longer grace period on a second delete changes nothing; a shorter one shortens it.
    await kubectl("delete", "pod", "web-1", "--grace-period=30", "--wait=false")
    assert (await kubectl.json("get", "pod", "web-1"))["metadata"][
        "deletionGracePeriodSeconds"] == 7
    await kubectl("delete", "pod", "web-1", "--grace-period=3", "--wait=false")
    assert (await kubectl.json("get", "pod", "web-1"))["metadata"][
        "deletionGracePeriodSeconds"] == 3
    # The kubelet's confirmation: grace 0 removes the object.
    _, out, _err = await kubectl("delete", "pod", "web-1", "--grace-period=0", "--force")
    assert "force deleted" in out
    assert apiserver.store.get("pods", ("default", "web-1")) is None


async def test_get_pods_watch_streams_changes(kubectl: Kubectl) -> None:
    await kubectl("create", "-f", "-", stdin=json.dumps(POD))
    proc = await asyncio.create_subprocess_exec(
        kubectl.binary, "get", "pods", "-w", env=kubectl.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 30)).decode() for _ in range(2)]
        assert lines[0].split()[:3] == ["NAME", "READY", "STATUS"]
        assert lines[1].split()[:3] == ["web-1", "0/1", "Pending"]
        await kubectl("delete", "pod", "web-1", "--grace-period=5", "--wait=false")
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.split()[:3] == ["web-1", "0/1", "Terminating"]
        await kubectl("delete", "pod", "web-1", "--grace-period=0", "--force")
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.split()[0] == "web-1"  # the DELETED event
    finally:
        proc.terminate()
        await proc.wait()


async def test_selectors_and_errors_through_kubectl(kubectl: Kubectl) -> None:
    await kubectl("create", "-f", "-", stdin=json.dumps(POD))
    other = json.loads(json.dumps(POD))
    other["metadata"] = {"name": "db-1", "labels": {"app": "db"}}
    other["spec"]["nodeName"] = "node-b"
    await kubectl("create", "-f", "-", stdin=json.dumps(other))
    _, out, _ = await kubectl("get", "pods", "--field-selector", "spec.nodeName=node-b",
                              "-o", "name")
    assert out.split() == ["pod/db-1"]
    _, out, _ = await kubectl("get", "pods", "-l", "app in (web,cache)", "-o", "name")
    assert out.split() == ["pod/web-1"]
    code, _, err = await kubectl("get", "pods", "--field-selector", "spec.bogus=1", ok=False)
    assert code != 0
    assert "field label not supported: spec.bogus" in err
    code, _, err = await kubectl("create", "-f", "-", stdin=json.dumps(POD), ok=False)
    assert code != 0
    assert 'pods "web-1" already exists' in err
    code, _, err = await kubectl("get", "pod", "nope", ok=False)
    assert code != 0
    assert 'pods "nope" not found' in err


async def test_strict_field_validation(kubectl: Kubectl) -> None:
    bad = json.loads(json.dumps(POD))
    bad["spec"]["bogus"] = 1
    code, _, err = await kubectl("create", "-f", "-", stdin=json.dumps(bad), ok=False)
    assert code != 0
    assert 'strict decoding error: unknown field "spec.bogus"' in err
    _, out, err = await kubectl("create", "--validate=warn", "-f", "-", stdin=json.dumps(bad))
    assert 'unknown field "spec.bogus"' in err
    assert "created" in out


DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
    "spec": {"selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [{
                              "name": "web", "image": "nginx:1.27",
                              "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}}]}}},
}


async def test_workloads_apply_get_and_validation(kubectl: Kubectl) -> None:
    await kubectl("apply", "-f", "-", stdin=json.dumps(DEPLOYMENT))
    got = await kubectl.json("get", "deploy", "web")
    assert got["spec"]["strategy"]["type"] == "RollingUpdate"  # defaulted like apps/v1
    assert got["spec"]["template"]["spec"]["containers"][0]["lifecycle"] == {
        "preStop": {"sleep": {"seconds": 5}}}
    _, out, _ = await kubectl("get", "deployments,statefulsets,daemonsets,replicasets")
    assert "deployment.apps/web" in out
    assert "0/1" in out
    wrong = json.loads(json.dumps(DEPLOYMENT))
    wrong["metadata"]["name"] = "wrong"
    wrong["spec"]["selector"]["matchLabels"]["app"] = "other"
    code, _, err = await kubectl("apply", "-f", "-", stdin=json.dumps(wrong), ok=False)
    assert code == 1
    assert "`selector` does not match template `labels`" in err


NODE = {
    "apiVersion": "v1", "kind": "Node",
    "metadata": {"name": "node-a", "labels": {"node-role.kubernetes.io/worker": ""}},
    "status": {"conditions": [{"type": "Ready", "status": "True"}],
               "nodeInfo": {"kubeletVersion": "v1.34.0"}},
}
SERVICE = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
    "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
}


async def test_services_and_cluster_scoped_nodes(kubectl: Kubectl) -> None:
    """kube-proxy's other two watches (Services, its own Node) are servable: a cluster-scoped
    resource has no namespace in its paths or its objects."""
    await kubectl("create", "-f", "-", stdin=json.dumps(NODE))
    await kubectl("create", "-f", "-", stdin=json.dumps({**NODE, "metadata": {"name": "node-b"}}))
    node = await kubectl.json("get", "node", "node-a")
    assert "namespace" not in node["metadata"]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.0"  # kept, as registered
    _, out, _ = await kubectl("get", "nodes")
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert rows[0].split()[:3] == ["node-a", "Ready", "worker"]
    _, out, _ = await kubectl("get", "nodes", "--field-selector", "metadata.name=node-b",
                              "-o", "name")
    assert out.split() == ["node/node-b"]
    _, out, _ = await kubectl("api-resources", "--namespaced=false")
    assert "nodes" in out
    await kubectl("create", "-f", "-", stdin=json.dumps(SERVICE))
    headless = {**SERVICE, "metadata": {"name": "db", "labels": {
        "service.kubernetes.io/headless": ""}}}
    await kubectl("create", "-f", "-", stdin=json.dumps(headless))
    # kube-proxy's Services watch (its label selector), as bench/apiserver_load.py opens it.
    _, out, _ = await kubectl("get", "services", "-A", "-o", "name", "-l",
                              "!service.kubernetes.io/headless,"
                              "!service.kubernetes.io/service-proxy-name")
    assert out.split() == ["service/web"]
    svc = await kubectl.json("get", "svc", "web")
    assert svc["spec"]["ports"][0] == {"name": "http", "port": 80, "protocol": "TCP",
                                       "targetPort": 80}
    assert svc["metadata"]["namespace"] == "default"
    _, out, _ = await kubectl("get", "services", "-A", "-o", "name", "--chunk-size=0")
    assert out.split() == ["service/db", "service/web"]  # one response: no limit asked
    await kubectl("delete", "node", "node-a")
    _, out, _ = await kubectl("get", "nodes", "-o", "name")
    assert out.split() == ["node/node-b"]
