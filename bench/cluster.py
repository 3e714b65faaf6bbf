"""A large cluster's objects as a real control plane writes them, and the writes its controllers
and kubelets make during a churn, for bench/apiserver_load.py (run in its server child).

Shapes follow what ``kubectl get -o json`` shows on a v1.34 cluster: a Deployment's pod with
one container (probes, env, resources, a preStop, the projected service-account volume), its
``managedFields`` (kube-controller-manager for the spec, the kubelet for the status); a Job's
pod with the job-tracking finalizer; EndpointSlices as the EndpointSlice controller writes them
(labels, owner, trigger-time annotation, ≤ 100 endpoints); Services as Helm installs them; a
Node with its images, conditions and capacity. Sizes are what matter to the benchmark; every
size is measured and printed, not assumed.

The writes of a rolling update and of a Job's pod follow the components that make them:
the ReplicaSet/Job controller creates, the scheduler binds, the kubelet reports status (Running,
Ready, not Ready while stopping, then the terminal phase: pod-lifecycle docs, Kubernetes >=
1.27), the EndpointSlice controller follows each pod change (not ready → ready; terminating;
removed when the pod is terminal), the kubelet's grace-0 delete removes the object; a Job pod's
finalizer is removed by the Job controller and the TTL-after-finished controller deletes it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from observer.kube.apitime import format_time
from observer.lab.apiserver.store import Store

Obj = dict[str, Any]
ZONES = ("zone-a", "zone-b", "zone-c")
NAMESPACES = 200


def fields_v1(value: Any) -> Any:
    """The ``fieldsV1`` set a manager owning every field of ``value`` gets: maps become
    ``f:`` keys, lists of named items ``k:{"name":…}`` keys, anything else a leaf."""
    if isinstance(value, dict):
        return {f"f:{k}": fields_v1(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(i, dict) and "name" in i
                                                 for i in value):
        return {f'k:{{"name":"{i["name"]}"}}': {".": {}, **fields_v1(i)} for i in value}
    return {}


def _managed(manager: str, api_version: str, when: str, owned: Obj,
             subresource: str | None = None) -> Obj:
    entry = {"manager": manager, "operation": "Update", "apiVersion": api_version,
             "time": when, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(owned)}
    if subresource:
        entry["subresource"] = subresource
    return entry


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _suffix(rng: random.Random, n: int = 5) -> str:
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(n))


def _uid(rng: random.Random) -> str:
    h = _hex(rng, 32)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class App:
    """A Deployment (or a Job's template) and what its pods share."""

    namespace: str
    name: str
    template_hash: str
    owner: Obj
    spec: Obj  # without nodeName
    labels: dict[str, str]
    annotations: dict[str, str]
    image: str
    managed_spec: Obj  # kube-controller-manager's managedFields entry


@dataclass
class Endpoint:
    pod: Obj  # the pod as stored (its metadata carries the current resourceVersion)
    ip: str
    node: str


@dataclass
class Service:
    app: App
    slices: list[list[Endpoint]]  # one list per EndpointSlice, ≤ 100 each
    slice_names: list[str]
    obj: Obj


@dataclass
class Cluster:
    """Builds and mutates the objects in a lab API server's store directly (the load
    generator's own speed is not what is measured)."""

    store: Store
    nodes: int
    seed: int = 1
    rng: random.Random = field(init=False)
    services: list[Service] = field(default_factory=list)
    now: float = 1_790_000_000.0
    _ips: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # names and addresses ------------------------------------------------------------------

    def node_name(self, i: int) -> str:
        return f"node-{i:05d}"

    def _pod_ip(self) -> str:
        n = next(self._ips)
        return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"

    def _host_ip(self, node: str) -> str:
        n = int(node.rsplit("-", 1)[1])
        return f"172.16.{n >> 8 & 255}.{n & 255}"

    def _time(self) -> str:
        return format_time(self.now)

    # objects --------------------------------------------------------------------------------

    def app(self, namespace: str, name: str, *, job: bool = False) -> App:
        rng = self.rng
        template_hash = _suffix(rng, 10) if not job else ""
        image = f"registry.example.com/{namespace}/{name}:1.{rng.randrange(90)}.{rng.randrange(9)}"
        labels = ({"batch.kubernetes.io/job-name": name, "job-name": name,
                   "batch.kubernetes.io/controller-uid": _uid(rng)} if job else
                  {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": name,
                   "app.kubernetes.io/part-of": namespace, "pod-template-hash": template_hash})
        annotations = ({} if job else {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                                       "kubectl.kubernetes.io/restartedAt": self._time()})
        container: Obj = {
            "name": "app" if not job else "job", "image": image,
            "args": ["--port=8080", "--log-format=json"] if not job else ["--batch", "--once"],
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                                "fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {
                    "apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
                {"name": "LOG_LEVEL", "value": "info"},
                {"name": "GOMAXPROCS", "valueFrom": {"resourceFieldRef": {
                    "containerName": "app", "divisor": "0", "resource": "limits.cpu"}}}],
            "resources": {"limits": {"cpu": "1", "memory": "512Mi"},
                          "requests": {"cpu": "250m", "memory": "256Mi"}},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app", "readOnly": True},
                             {"name": f"kube-api-access-{_suffix(rng)}",
                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                              "readOnly": True}],
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        }
        if not job:
            probe: Obj = {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                     "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1,
                     "failureThreshold": 3}
            container |= {
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
                "livenessProbe": probe,
                "readinessProbe": {**probe, "httpGet": {**probe["httpGet"], "path": "/ready"},
                                   "periodSeconds": 5},
                "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}}}
        spec: Obj = {
            "volumes": [
                {"name": "config", "configMap": {"name": f"{name}-config", "defaultMode": 420}},
                {"name": container["volumeMounts"][1]["name"], "projected": {
                    "defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt",
                                       "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                            "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}],
            "containers": [container],
            "restartPolicy": "Never" if job else "Always",
            "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default",
            "securityContext": {"fsGroup": 1000}, "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                 "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0, "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority"}
        owner = {"apiVersion": "batch/v1" if job else "apps/v1",
                 "kind": "Job" if job else "ReplicaSet",
                 "name": name if job else f"{name}-{template_hash}", "uid": _uid(rng),
                 "controller": True, "blockOwnerDeletion": True}
        managed_spec = _managed(
            "kube-controller-manager", "v1", self._time(),
            {"metadata": {"generateName": "", "labels": labels, "annotations": annotations,
                          "ownerReferences": {}}, "spec": spec})
        return App(namespace, name, template_hash, owner, spec, labels, annotations, image,
                   managed_spec)

    def pod(self, app: App, node: str | None, ip: str | None, *, phase: str = "Running",
            ready: bool = True) -> Obj:
        rng = self.rng
        when = self._time()
        generate = f"{app.name}-{app.template_hash}-" if app.template_hash else f"{app.name}-"
        meta: Obj = {"name": generate + _suffix(rng), "generateName": generate,
                     "namespace": app.namespace, "uid": _uid(rng), "creationTimestamp": when,
                     "labels": app.labels, "ownerReferences": [app.owner]}
        if app.annotations:
            meta["annotations"] = app.annotations
        if app.owner["kind"] == "Job":
            meta["finalizers"] = ["batch.kubernetes.io/job-tracking"]
        spec = dict(app.spec)
        if node is not None:
            spec["nodeName"] = node
        pod = {"metadata": meta, "spec": spec}
        pod["status"] = self.pod_status(app, node, ip, phase=phase, ready=ready)
        meta["managedFields"] = [app.managed_spec] + (
            [_managed("kubelet", "v1", when, {"status": pod["status"]}, "status")]
            if node is not None else [])
        return pod

    def pod_status(self, app: App, node: str | None, ip: str | None, *,
                   phase: str, ready: bool) -> Obj:
        when = self._time()
        if node is None:
            return {"phase": "Pending", "qosClass": "Burstable"}
        scheduled = {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                     "lastTransitionTime": when}
        if phase == "Pending":
            return {"phase": "Pending", "conditions": [scheduled], "qosClass": "Burstable"}
        terminal = phase in ("Succeeded", "Failed")
        is_ready = "True" if ready and not terminal else "False"
        conditions = [
            {"type": "PodReadyToStartContainers", "status": "False" if terminal else "True",
             "lastProbeTime": None, "lastTransitionTime": when},
            {"type": "Initialized", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": when},
            {"type": "Ready", "status": is_ready, "lastProbeTime": None,
             "lastTransitionTime": when,
             **({} if is_ready == "True" else {"reason": "PodCompleted" if terminal else
                                               "ContainersNotReady"})},
            {"type": "ContainersReady", "status": is_ready, "lastProbeTime": None,
             "lastTransitionTime": when},
            scheduled]
        container = app.spec["containers"][0]
        state: Obj = ({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": when,
                                      "finishedAt": when,
                                      "containerID": f"containerd://{_hex(self.rng, 64)}"}}
                      if terminal else {"running": {"startedAt": when}})
        status = {
            "phase": phase, "conditions": conditions,
            "hostIP": self._host_ip(node), "hostIPs": [{"ip": self._host_ip(node)}],
            "startTime": when,
            "containerStatuses": [{
                "name": container["name"], "state": state, "lastState": {},
                "ready": is_ready == "True", "restartCount": 0, "image": app.image,
                "imageID": f"{app.image.rsplit(':', 1)[0]}@sha256:{_hex(self.rng, 64)}",
                "containerID": f"containerd://{_hex(self.rng, 64)}",
                "started": not terminal}],
            "qosClass": "Burstable"}
        if ip is not None:
            status |= {"podIP": ip, "podIPs": [{"ip": ip}]}
        return status

    def _endpoint(self, endpoint: Endpoint, *, ready: bool = True, serving: bool = True,
                  terminating: bool = False) -> Obj:
        meta = endpoint.pod["metadata"]
        return {"addresses": [endpoint.ip],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "nodeName": endpoint.node,
                "targetRef": {"kind": "Pod", "namespace": meta["namespace"],
                              "name": meta["name"], "uid": meta["uid"]},
                "zone": ZONES[int(endpoint.node.rsplit("-", 1)[1]) % len(ZONES)]}

    def slice_obj(self, service: Service, index: int,
                  conditions: dict[str, dict[str, bool]] | None = None) -> Obj:
        """The slice as the EndpointSlice controller writes it; ``conditions`` by pod name
        for endpoints that are not plain ready."""
        app, conditions = service.app, conditions or {}
        labels = {"app.kubernetes.io/name": app.name,
                  "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                  "kubernetes.io/service-name": app.name}
        annotations = {"endpoints.kubernetes.io/last-change-trigger-time": self._time()}
        owner = {"apiVersion": "v1", "kind": "Service", "name": app.name,
                 "uid": service.obj["metadata"]["uid"], "controller": True,
                 "blockOwnerDeletion": True}
        meta = {"name": service.slice_names[index], "generateName": f"{app.name}-",
                "namespace": app.namespace, "uid": f"slice-{app.namespace}-{app.name}-{index}",
                "creationTimestamp": self._time(), "generation": 1, "labels": labels,
                "annotations": annotations, "ownerReferences": [owner]}
        meta["managedFields"] = [_managed(
            "kube-controller-manager", "discovery.k8s.io/v1", self._time(),
            {"addressType": "", "endpoints": "", "ports": "",
             "metadata": {"annotations": annotations, "generateName": "", "labels": labels,
                          "ownerReferences": {}}})]
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta,
                "addressType": "IPv4",
                "endpoints": [self._endpoint(e, **conditions.get(e.pod["metadata"]["name"], {}))
                              for e in service.slices[index]],
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}

    def service_obj(self, app: App, cluster_ip: str) -> Obj:
        labels = {"app.kubernetes.io/name": app.name, "app.kubernetes.io/instance": app.name,
                  "app.kubernetes.io/managed-by": "Helm", "helm.sh/chart": f"{app.name}-1.4.2"}
        annotations = {"meta.helm.sh/release-name": app.name,
                       "meta.helm.sh/release-namespace": app.namespace}
        spec = {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                "selector": {"app.kubernetes.io/name": app.name,
                             "app.kubernetes.io/instance": app.name},
                "ports": [{"name": "http", "protocol": "TCP", "port": 80,
                           "targetPort": "http"}]}
        meta: Obj = {"name": app.name, "namespace": app.namespace, "uid": _uid(self.rng),
                "creationTimestamp": self._time(), "labels": labels,
                "annotations": annotations}
        meta["managedFields"] = [_managed("helm", "v1", self._time(),
                                          {"metadata": {"annotations": annotations,
                                                        "labels": labels}, "spec": spec})]
        return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec,
                "status": {"loadBalancer": {}}}

    def node_obj(self, name: str, heartbeat: float) -> Obj:
        rng = random.Random(name)
        when, beat = self._time(), format_time(heartbeat)
        labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                  "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                  "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "m6i.2xlarge",
                  "topology.kubernetes.io/region": "eu-west-1",
                  "topology.kubernetes.io/zone": ZONES[int(name.rsplit("-", 1)[1]) % 3],
                  "node-role.kubernetes.io/worker": "", "pool": "general"}
        instance = f"i-{_hex(rng, 17)}"
        annotations = {"node.alpha.kubernetes.io/ttl": "0",
                       "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                       "csi.volume.kubernetes.io/nodeid": f'{{"ebs.csi.aws.com":"{instance}"}}'}
        resources = {"cpu": "8", "ephemeral-storage": "104845292Ki", "hugepages-1Gi": "0",
                     "hugepages-2Mi": "0", "memory": "32386544Ki", "pods": "110"}
        conditions = [{"type": t, "status": "False", "lastHeartbeatTime": beat,
                       "lastTransitionTime": when, "reason": f"KubeletHas{r}",
                       "message": f"kubelet has {m}"}
                      for t, r, m in (("MemoryPressure", "SufficientMemory",
                                       "sufficient memory available"),
                                      ("DiskPressure", "NoDiskPressure", "no disk pressure"),
                                      ("PIDPressure", "SufficientPID", "sufficient PID available"))]
        conditions.append({"type": "Ready", "status": "True", "lastHeartbeatTime": beat,
                           "lastTransitionTime": when, "reason": "KubeletReady",
                           "message": "kubelet is posting ready status"})
        images = [{"names": [f"registry.example.com/team-{i}/image-{i}@sha256:{_hex(rng, 64)}",
                             f"registry.example.com/team-{i}/image-{i}:1.{i}.0"],
                   "sizeBytes": rng.randrange(10_000_000, 900_000_000)} for i in range(40)]
        status = {"capacity": resources, "allocatable": resources, "conditions": conditions,
                  "addresses": [{"type": "InternalIP", "address": self._host_ip(name)},
                                {"type": "Hostname", "address": name},
                                {"type": "InternalDNS", "address": f"{name}.eu-west-1.internal"}],
                  "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                  "nodeInfo": {"machineID": _hex(rng, 32), "systemUUID": _uid(rng),
                               "bootID": _uid(rng), "kernelVersion": "6.1.0-28-cloud-amd64",
                               "osImage": "Debian GNU/Linux 12 (bookworm)",
                               "containerRuntimeVersion": "containerd://1.7.24",
                               "kubeletVersion": "v1.34.1", "kubeProxyVersion": "",
                               "operatingSystem": "linux", "architecture": "amd64"},
                  "images": images}
        spec = {"providerID": f"aws:///eu-west-1a/{instance}"}
        meta: Obj = {"name": name, "uid": _uid(rng), "creationTimestamp": when, "labels": labels,
                "annotations": annotations}
        meta["managedFields"] = [
            _managed("kubelet", "v1", when, {"metadata": {"annotations": annotations,
                                                          "labels": labels}}),
            _managed("kube-controller-manager", "v1", when,
                     {"metadata": {"annotations": {"node.alpha.kubernetes.io/ttl": ""}},
                      "spec": spec}),
            _managed("kubelet", "v1", beat, {"status": status}, "status")]
        return {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec,
                "status": status}

    # the cluster ----------------------------------------------------------------------------

    def build(self, *, services: int, endpoints: int, pods: int) -> None:
        """``services`` Services whose Deployments have ``endpoints`` pods in all (1 % of the
        services hold half of them, in several slices of 100; the rest share the other
        half), plus ``pods - endpoints`` pods behind no Service: nine in ten running, one in
        ten a finished Job's pod still kept (Succeeded, ``restartPolicy: Never``)."""
        put = self.store.put
        for i in range(self.nodes):
            put("nodes", self.node_obj(self.node_name(i), self.now))
        large = max(1, services // 100)
        sizes = [endpoints // 2 // large] * large
        small = services - large
        rest = endpoints - sum(sizes)
        sizes += [rest // small + (1 if i < rest % small else 0) for i in range(small)]
        node = itertools.cycle(range(self.nodes))
        for s, size in enumerate(sizes):
            app = self.app(f"team-{s % NAMESPACES}", f"svc-{s}")
            svc_obj = put("services", self.service_obj(app, f"10.96.{s >> 8 & 255}.{s & 255}"))
            service = Service(app, [], [], svc_obj)
            for first in range(0, size, 100):
                members = []
                for _ in range(min(100, size - first)):
                    name, ip = self.node_name(next(node)), self._pod_ip()
                    members.append(Endpoint(put("pods", self.pod(app, name, ip)), ip, name))
                service.slices.append(members)
                service.slice_names.append(f"{app.name}-{_suffix(self.rng)}")
            for index in range(len(service.slices)):
                put("endpointslices", self.slice_obj(service, index))
            self.services.append(service)
        others = pods - endpoints
        workers = [self.app(f"team-{w % NAMESPACES}", f"worker-{w}") for w in range(100)]
        for i in range(others):
            name = self.node_name(next(node))
            if i % 10 == 9:
                job = self.app(f"team-{i % NAMESPACES}", f"batch-{i}", job=True)
                put("pods", self.pod(job, name, self._pod_ip(), phase="Succeeded"))
            else:
                put("pods", self.pod(workers[i % len(workers)], name, self._pod_ip()))

    # churn ----------------------------------------------------------------------------------

    def _status(self, pod: Obj, app: App, node: str, ip: str, *, phase: str,
                ready: bool) -> Obj:
        """The kubelet's status write: only the status changes."""
        status = self.pod_status(app, node, ip, phase=phase, ready=ready)
        return self.store.put("pods", {**pod, "status": status})

    def replace(self, s: int) -> None:
        """One step of a rolling update of service ``s``'s Deployment: a new pod comes up in
        the place of an old one, which then goes, with every write the components make."""
        self.now += 1
        service = self.services[s % len(self.services)]
        index = self.rng.randrange(len(service.slices))
        members = service.slices[index]
        position = self.rng.randrange(len(members))
        old = members[position]
        app = service.app
        put = self.store.put
        node = self.node_name(self.rng.randrange(self.nodes))
        ip = self._pod_ip()
        new = self.pod(app, None, None)  # created by the ReplicaSet controller
        new = put("pods", new)
        new = put("pods", {**new, "spec": {**new["spec"], "nodeName": node}})  # bound
        fresh = Endpoint(self._status(new, app, node, ip, phase="Running", ready=False), ip,
                         node)
        members.append(fresh)
        name = fresh.pod["metadata"]["name"]
        put("endpointslices", self.slice_obj(service, index, {name: {"ready": False,
                                                                     "serving": False}}))
        fresh.pod = self._status(fresh.pod, app, node, ip, phase="Running", ready=True)
        put("endpointslices", self.slice_obj(service, index))
        # The old pod: deleted (graceful), terminating, not ready, terminal, gone.
        gone = old.pod["metadata"]["name"]
        old.pod = put("pods", {**old.pod, "metadata": {
            **old.pod["metadata"], "deletionTimestamp": format_time(self.now + 30),
            "deletionGracePeriodSeconds": 30}})
        put("endpointslices", self.slice_obj(service, index, {gone: {
            "ready": False, "serving": True, "terminating": True}}))
        old.pod = self._status(old.pod, app, old.node, old.ip, phase="Running", ready=False)
        put("endpointslices", self.slice_obj(service, index, {gone: {
            "ready": False, "serving": False, "terminating": True}}))
        old.pod = self._status(old.pod, app, old.node, old.ip, phase="Succeeded", ready=False)
        members.remove(old)
        put("endpointslices", self.slice_obj(service, index))
        self.store.delete("pods", (app.namespace, gone))

    def job_pod(self, j: int) -> None:
        """One Job pod's life: created, bound, running, Succeeded, its tracking finalizer
        removed, deleted after its TTL."""
        self.now += 1
        app = self.app(f"team-{j % NAMESPACES}", f"churn-{j}", job=True)
        node = self.node_name(self.rng.randrange(self.nodes))
        ip = self._pod_ip()
        put = self.store.put
        pod = put("pods", self.pod(app, None, None))
        pod = put("pods", {**pod, "spec": {**pod["spec"], "nodeName": node}})
        pod = self._status(pod, app, node, ip, phase="Running", ready=True)
        pod = self._status(pod, app, node, ip, phase="Succeeded", ready=False)
        meta = {k: v for k, v in pod["metadata"].items() if k != "finalizers"}
        pod = put("pods", {**pod, "metadata": meta})
        self.store.delete("pods", (app.namespace, meta["name"]))

    def node_heartbeat(self, i: int) -> None:
        """The kubelet's periodic Node status update (``nodeStatusReportFrequency``, 5 min
        when nothing changes)."""
        self.now += 1
        self.store.put("nodes", self.node_obj(self.node_name(i), self.now))
