"""The resources the server serves, and what is particular to each.

Behaviour follows the upstream registry code named at each piece:
``pkg/registry/core/pod/strategy.go`` (create/update/status strategies, selectable fields),
``pkg/apis/core/v1/defaults.go`` (defaults), ``pkg/apis/core/validation`` and
``pkg/apis/discovery/validation`` (the subset of validation implemented here), and
``pkg/printers/internalversion/printers.go`` (the table columns ``kubectl get`` shows).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from observer.kube.apitime import parse_time
from observer.lab.apiserver.errors import Cause
from observer.lab.apiserver.store import Obj

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _quote(value: object) -> str:
    """Values in validation messages are quoted as Go's %q does."""
    return json.dumps(value)


def name_causes(name: str, *, subdomain: bool = True) -> list[Cause]:
    limit = 253 if subdomain else 63
    pattern = _DNS1123_SUBDOMAIN if subdomain else _DNS1123_LABEL
    if len(name) > limit:
        return [Cause("FieldValueInvalid", f"Invalid value: {_quote(name)}: must be no more than "
                      f"{limit} characters", "metadata.name")]
    if not pattern.match(name):
        return [Cause("FieldValueInvalid",
                      f"Invalid value: {_quote(name)}: a lowercase RFC 1123 "
                      f"{'subdomain' if subdomain else 'label'} must consist of lower case "
                      "alphanumeric characters, '-' or '.', and must start and end with an "
                      "alphanumeric character", "metadata.name")]
    return []


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    format: str
    description: str
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "format": self.format,
                "description": self.description, "priority": self.priority}


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    resource: str
    kind: str
    model: str  # kubernetes_asyncio model that is this kind's schema
    short_names: tuple[str, ...]
    has_status: bool
    initial_status: Callable[[Obj], Obj]  # a new object's status (create ignores the client's)
    graceful_delete: bool  # pods: DELETE sets deletionTimestamp and keeps the object
    selectable: dict[str, Callable[[Obj], str]]
    default: Callable[[Obj], Obj]
    validate: Callable[[Obj], list[Cause]]
    validate_update: Callable[[Obj, Obj], list[Cause]]
    columns: tuple[Column, ...]
    row: Callable[[Obj, float], list[Any]]
    namespaced: bool = True  # False: cluster-scoped (nodes), no namespace in paths or objects

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"


def human_duration(seconds: float) -> str:
    """``k8s.io/apimachinery/pkg/util/duration.HumanDuration``, as kubectl's AGE column shows."""
    s = int(seconds)
    if s < 0:
        return "<invalid>"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // 24 // 365}y"


def _age(obj: Obj, now: float) -> str:
    created = obj["metadata"].get("creationTimestamp")
    return human_duration(now - parse_time(created)) if created else "<unknown>"


_NAME_COLUMN = Column("Name", "string", "name",
                      "Name must be unique within a namespace. Is required when creating "
                      "resources, although some resources may allow a client to request the "
                      "generation of an appropriate name automatically.")
_AGE_COLUMN = Column("Age", "string", "",
                     "CreationTimestamp is a timestamp representing the server time when this "
                     "object was created.")


# --- pods -------------------------------------------------------------------------------------

def _pod_default(pod: Obj) -> Obj:
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for group in ("initContainers", "containers"):
        for container in spec.get(group, []) or []:
            if not isinstance(container, dict):
                continue
            container.setdefault("terminationMessagePath", "/dev/termination-log")
            container.setdefault("terminationMessagePolicy", "File")
            image = str(container.get("image", ""))
            tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
            latest = image.endswith(":latest") or not tagged
            container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
            for port in container.get("ports", []) or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
    return pod


def _qos_class(pod: Obj) -> str:
    containers = pod.get("spec", {}).get("containers", []) or []
    requests = [c.get("resources", {}).get("requests", {}) for c in containers]
    limits = [c.get("resources", {}).get("limits", {}) for c in containers]
    if not any(requests) and not any(limits):
        return "BestEffort"
    guaranteed = all(
        lim.get(r) is not None and (req.get(r, lim.get(r)) == lim.get(r))
        for req, lim in zip(requests, limits, strict=True) for r in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


def pod_initial_status(pod: Obj) -> Obj:
    """``podStrategy.PrepareForCreate``: a new pod's status is discarded and set to Pending."""
    return {"phase": "Pending", "qosClass": _qos_class(pod)}


def _pod_validate(pod: Obj) -> list[Cause]:
    causes: list[Cause] = []
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        causes.append(Cause("FieldValueRequired", "Required value", "spec.containers"))
    for group in ("initContainers", "containers"):
        seen: set[str] = set()
        for i, container in enumerate(spec.get(group) or []):
            where = f"spec.{group}[{i}]"
            name = container.get("name", "")
            if not name:
                causes.append(Cause("FieldValueRequired", "Required value", f"{where}.name"))
            elif not _DNS1123_LABEL.match(name):
                causes.append(Cause("FieldValueInvalid",
                                    f"Invalid value: {_quote(name)}: a lowercase RFC 1123 "
                                    "label must consist of lower case alphanumeric "
                                    "characters or '-'", f"{where}.name"))
            elif name in seen:
                causes.append(Cause("FieldValueDuplicate", f"Duplicate value: {_quote(name)}",
                                    f"{where}.name"))
            seen.add(name)
            if not container.get("image"):
                causes.append(Cause("FieldValueRequired", "Required value", f"{where}.image"))
    grace = spec.get("terminationGracePeriodSeconds")
    if isinstance(grace, int) and grace < 0:
        causes.append(Cause("FieldValueInvalid", f"Invalid value: {grace}: must be greater than "
                            "or equal to 0", "spec.terminationGracePeriodSeconds"))
    return causes


# pkg/apis/core/validation ValidatePodUpdate: only these spec fields may change on a running pod.
_POD_MUTABLE_SPEC = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds",
                     "schedulingGates")


def _pod_validate_update(new: Obj, old: Obj) -> list[Cause]:
    def frozen(pod: Obj) -> Obj:
        spec = {k: v for k, v in (pod.get("spec") or {}).items() if k not in _POD_MUTABLE_SPEC}
        for group in ("initContainers", "containers"):
            if group in spec:
                spec[group] = [{k: v for k, v in c.items() if k != "image"} for c in spec[group]]
        return spec

    old_spec = old.get("spec") or {}
    if not old_spec.get("nodeName") and (new.get("spec") or {}).get("nodeName"):
        # binding: the scheduler's job; allowed here so the lab can place pods on nodes.
        old_spec = {**old_spec, "nodeName": new["spec"]["nodeName"]}
    if frozen(new) != frozen({"spec": old_spec}):
        return [Cause("FieldValueForbidden", "Forbidden: pod updates may not change fields "
                      "other than `spec.containers[*].image`, `spec.initContainers[*].image`, "
                      "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to "
                      "existing tolerations), `spec.terminationGracePeriodSeconds` (allow it to "
                      "be set to 1 if it was previously negative)", "spec")]
    return []


def _pod_status_reason(pod: Obj) -> str:
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated"):
            term = state["terminated"]
            reason = term.get("reason") or (f"Signal:{term['signal']}" if term.get("signal")
                                            else f"ExitCode:{term.get('exitCode', 0)}")
    if pod["metadata"].get("deletionTimestamp") and status.get("reason") != "NodeLost":
        reason = "Terminating"
    return str(reason)


def _pod_row(pod: Obj, now: float) -> list[Any]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for cs in statuses if cs.get("ready"))
    restarts = sum(int(cs.get("restartCount", 0)) for cs in statuses)
    gates = spec.get("readinessGates") or []
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    gates_cell = (f"{sum(1 for g in gates if conditions.get(g.get('conditionType')) == 'True')}"
                  f"/{len(gates)}") if gates else "<none>"
    return [pod["metadata"]["name"], f"{ready}/{len(spec.get('containers') or [])}",
            _pod_status_reason(pod), str(restarts), _age(pod, now),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", gates_cell]


PODS = ResourceType(
    group="", version="v1", resource="pods", kind="Pod", model="V1Pod", short_names=("po",),
    has_status=True, initial_status=pod_initial_status, graceful_delete=True,
    selectable={
        "metadata.name": lambda o: o["metadata"]["name"],
        "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
        "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName", ""),
        "spec.restartPolicy": lambda o: (o.get("spec") or {}).get("restartPolicy", ""),
        "spec.schedulerName": lambda o: (o.get("spec") or {}).get("schedulerName", ""),
        "spec.serviceAccountName": lambda o: (o.get("spec") or {}).get("serviceAccountName", ""),
        "spec.hostNetwork": lambda o: str(bool((o.get("spec") or {}).get("hostNetwork"))).lower(),
        "status.phase": lambda o: (o.get("status") or {}).get("phase", ""),
        "status.podIP": lambda o: (o.get("status") or {}).get("podIP", ""),
        "status.nominatedNodeName": lambda o: (o.get("status") or {}).get("nominatedNodeName",
                                                                         ""),
    },
    default=_pod_default, validate=_pod_validate, validate_update=_pod_validate_update,
    columns=(
        _NAME_COLUMN,
        Column("Ready", "string", "", "The aggregate readiness state of this pod for accepting "
               "traffic."),
        Column("Status", "string", "", "The aggregate status of the containers in this pod."),
        Column("Restarts", "string", "", "The number of times the containers in this pod have "
               "been restarted and when the last container in this pod has restarted."),
        _AGE_COLUMN,
        Column("IP", "string", "", "IP address allocated to the pod. Routable at least within "
               "the cluster. Empty if not yet allocated.", 1),
        Column("Node", "string", "", "NodeName indicates in which node this pod is scheduled.",
               1),
        Column("Nominated Node", "string", "", "nominatedNodeName is set only when this pod "
               "preempts other pods on the node.", 1),
        Column("Readiness Gates", "string", "", "If specified, all readiness gates will be "
               "evaluated for pod readiness.", 1),
    ),
    row=_pod_row,
)


# --- endpointslices ---------------------------------------------------------------------------

_ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


def _slice_default(eps: Obj) -> Obj:
    for port in eps.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    return eps


def _address_ok(address: str, address_type: str) -> bool:
    if address_type == "FQDN":
        return bool(_DNS1123_SUBDOMAIN.match(address))
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return parsed.version == (4 if address_type == "IPv4" else 6)


def _slice_validate(eps: Obj) -> list[Cause]:
    """A subset of ``pkg/apis/discovery/validation.ValidateEndpointSlice``."""
    causes: list[Cause] = []
    address_type = eps.get("addressType")
    if not address_type:
        causes.append(Cause("FieldValueRequired", "Required value", "addressType"))
    elif address_type not in _ADDRESS_TYPES:
        causes.append(Cause("FieldValueNotSupported", f"Unsupported value: {_quote(address_type)}: "
                            'supported values: "FQDN", "IPv4", "IPv6"', "addressType"))
    endpoints = eps.get("endpoints") or []
    if len(endpoints) > 1000:
        causes.append(Cause("FieldValueTooMany", f"Too many: {len(endpoints)}: must have at most "
                            "1000 items", "endpoints"))
    for i, endpoint in enumerate(endpoints):
        addresses = endpoint.get("addresses") or []
        if not addresses:
            causes.append(Cause("FieldValueRequired", "Required value",
                                f"endpoints[{i}].addresses"))
        elif len(addresses) > 100:
            causes.append(Cause("FieldValueTooMany", f"Too many: {len(addresses)}: must have at "
                                "most 100 items", f"endpoints[{i}].addresses"))
        for j, address in enumerate(addresses):
            if address_type in _ADDRESS_TYPES and not _address_ok(address, address_type):
                causes.append(Cause("FieldValueInvalid",
                                    f"Invalid value: {_quote(address)}: must be a valid "
                                    f"{address_type} address",
                                    f"endpoints[{i}].addresses[{j}]"))
    ports = eps.get("ports") or []
    if len(ports) > 100:
        causes.append(Cause("FieldValueTooMany", f"Too many: {len(ports)}: must have at most 100 "
                            "items", "ports"))
    for i, port in enumerate(ports):
        number = port.get("port")
        if number is not None and not 0 <= number <= 65535:
            causes.append(Cause("FieldValueInvalid", f"Invalid value: {number}: must be between "
                                "0 and 65535, inclusive", f"ports[{i}].port"))
        if port.get("protocol") not in ("TCP", "UDP", "SCTP"):
            causes.append(Cause("FieldValueNotSupported",
                                f"Unsupported value: {_quote(port.get('protocol'))}: "
                                'supported values: "SCTP", "TCP", "UDP"', f"ports[{i}].protocol"))
    return causes


def _slice_validate_update(new: Obj, old: Obj) -> list[Cause]:
    if new.get("addressType") != old.get("addressType"):
        return [Cause("FieldValueInvalid", "Invalid value: field is immutable", "addressType")]
    return []


def _slice_row(eps: Obj, now: float) -> list[Any]:
    ports = [str(p["port"]) for p in eps.get("ports") or [] if p.get("port") is not None]
    addresses = [a for e in eps.get("endpoints") or [] for a in e.get("addresses") or []]
    shown = ",".join(addresses[:3])
    if len(addresses) > 3:
        shown += f" + {len(addresses) - 3} more..."
    return [eps["metadata"]["name"], eps.get("addressType", ""),
            ",".join(ports) if ports else "<unset>", shown or "<unset>", _age(eps, now)]


ENDPOINT_SLICES = ResourceType(
    group="discovery.k8s.io", version="v1", resource="endpointslices", kind="EndpointSlice",
    model="V1EndpointSlice", short_names=(), has_status=False, initial_status=dict,
    graceful_delete=False,
    selectable={
        "metadata.name": lambda o: o["metadata"]["name"],
        "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
    },
    default=_slice_default, validate=_slice_validate, validate_update=_slice_validate_update,
    columns=(
        _NAME_COLUMN,
        Column("AddressType", "string", "", "The IP protocol for this slice."),
        Column("Ports", "string", "", "The ports contained in this slice."),
        Column("Endpoints", "string", "", "The addresses contained in this slice."),
        _AGE_COLUMN,
    ),
    row=_slice_row,
)


# --- services and nodes -----------------------------------------------------------------------
# Served so that kube-proxy's own watches (Services, its Node) can be measured against the
# agent's (bench/apiserver_load.py); stored with the defaults that matter to their size and
# shape, validated only as far as names and service ports go.

def _service_default(svc: Obj) -> Obj:
    """``pkg/apis/core/v1/defaults.go`` SetDefaults_Service, the parts that do not allocate:
    type, session affinity, port protocol and targetPort (no cluster IP is allocated here)."""
    spec = svc.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    return svc


def _service_validate(svc: Obj) -> list[Cause]:
    causes = []
    for i, port in enumerate((svc.get("spec") or {}).get("ports") or []):
        number = port.get("port") if isinstance(port, dict) else None
        if not isinstance(number, int) or not 1 <= number <= 65535:
            causes.append(Cause("FieldValueInvalid", f"Invalid value: {_quote(number)}: must be "
                                "between 1 and 65535, inclusive", f"spec.ports[{i}].port"))
    return causes


def _service_row(svc: Obj, now: float) -> list[Any]:
    spec = svc.get("spec") or {}
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}"
                     for p in spec.get("ports") or [])
    return [svc["metadata"]["name"], spec.get("type", "ClusterIP"),
            spec.get("clusterIP") or "<none>", "<none>", ports or "<none>", _age(svc, now)]


def _no_update_rules(new: Obj, old: Obj) -> list[Cause]:
    return []


SERVICES = ResourceType(
    group="", version="v1", resource="services", kind="Service", model="V1Service",
    short_names=("svc",), has_status=True, initial_status=lambda _: {"loadBalancer": {}},
    graceful_delete=False,
    selectable={"metadata.name": lambda o: o["metadata"]["name"],
                "metadata.namespace": lambda o: o["metadata"].get("namespace", "")},
    default=_service_default, validate=_service_validate, validate_update=_no_update_rules,
    columns=(_NAME_COLUMN,
             Column("Type", "string", "", "The type of service."),
             Column("Cluster-IP", "string", "", "The cluster IP of the service."),
             Column("External-IP", "string", "", "The external IPs of the service."),
             Column("Port(s)", "string", "", "The ports of the service."),
             _AGE_COLUMN),
    row=_service_row)


def _node_row(node: Obj, now: float) -> list[Any]:
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c.get("status") for c in conditions if c.get("type") == "Ready"), None)
    labels = node["metadata"].get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels
                   if k.startswith("node-role.kubernetes.io/"))
    info = (node.get("status") or {}).get("nodeInfo") or {}
    return [node["metadata"]["name"], "Ready" if ready == "True" else "NotReady",
            ",".join(roles) or "<none>", _age(node, now), info.get("kubeletVersion", "")]


NODES = ResourceType(
    group="", version="v1", resource="nodes", kind="Node", model="V1Node", short_names=("no",),
    # nodeStrategy.PrepareForCreate keeps the status the kubelet registers the node with.
    has_status=True, initial_status=lambda node: node.get("status") or {},
    graceful_delete=False,
    selectable={"metadata.name": lambda o: o["metadata"]["name"],
                "spec.unschedulable": lambda o: str(bool((o.get("spec") or {}).get(
                    "unschedulable"))).lower()},
    default=lambda node: node, validate=lambda node: [], validate_update=_no_update_rules,
    columns=(_NAME_COLUMN,
             Column("Status", "string", "", "The status of the node."),
             Column("Roles", "string", "", "The roles of the node."),
             _AGE_COLUMN,
             Column("Version", "string", "", "Kubelet Version reported by the node.")),
    row=_node_row, namespaced=False)


# --- apps/v1 workloads ------------------------------------------------------------------------
# Stored, validated and served so that `observer report` and kubectl can read them; no
# controller acts on them (the lab creates the ReplicaSets' pods itself).

_WORKLOAD_DEFAULTS: dict[str, dict[str, Any]] = {  # pkg/apis/apps/v1/defaults.go
    "deployments": {"replicas": 1, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {
                        "maxUnavailable": "25%", "maxSurge": "25%"}}},
    "statefulsets": {"replicas": 1, "revisionHistoryLimit": 10,
                     "podManagementPolicy": "OrderedReady",
                     "updateStrategy": {"type": "RollingUpdate",
                                        "rollingUpdate": {"partition": 0}}},
    "daemonsets": {"revisionHistoryLimit": 10,
                   "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {
                       "maxUnavailable": 1, "maxSurge": 0}}},
    "replicasets": {"replicas": 1},
}


def _workload_default(resource: str) -> Callable[[Obj], Obj]:
    def default(obj: Obj) -> Obj:
        spec = obj.setdefault("spec", {})
        for key, value in _WORKLOAD_DEFAULTS[resource].items():
            spec.setdefault(key, json.loads(json.dumps(value)))
        template = spec.setdefault("template", {})
        if isinstance(template, dict):
            _pod_default(template)
        return obj
    return default


def _workload_validate(obj: Obj) -> list[Cause]:
    """The part of ``pkg/apis/apps/validation`` that matters here: a selector that selects
    the template's labels, and a valid pod template."""
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    causes = [Cause(c.reason, c.message, f"spec.template.{c.field}")
              for c in _pod_validate(template)]
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not spec.get("selector"):
        causes.append(Cause("FieldValueRequired", "Required value", "spec.selector"))
    elif any(labels.get(k) != v for k, v in selector.items()):
        causes.append(Cause("FieldValueInvalid", "Invalid value: map[string]string"
                            f"{_quote(labels)}: `selector` does not match template `labels`",
                            "spec.template.metadata.labels"))
    return causes


def _workload_validate_update(new: Obj, old: Obj) -> list[Cause]:
    if (new.get("spec") or {}).get("selector") != (old.get("spec") or {}).get("selector"):
        return [Cause("FieldValueInvalid", "Invalid value: field is immutable",
                      "spec.selector")]
    return []


def _workload_row(obj: Obj, now: float) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    wanted = spec.get("replicas", status.get("desiredNumberScheduled", 0))
    ready = status.get("readyReplicas", status.get("numberReady", 0))
    return [obj["metadata"]["name"], f"{ready}/{wanted}", _age(obj, now)]


def _workload(resource: str, kind: str, short: str) -> ResourceType:
    return ResourceType(
        group="apps", version="v1", resource=resource, kind=kind, model=f"V1{kind}",
        short_names=(short,), has_status=True, initial_status=lambda _: {},
        graceful_delete=False,
        selectable={"metadata.name": lambda o: o["metadata"]["name"],
                    "metadata.namespace": lambda o: o["metadata"].get("namespace", "")},
        default=_workload_default(resource), validate=_workload_validate,
        validate_update=_workload_validate_update,
        columns=(_NAME_COLUMN,
                 Column("Ready", "string", "", "Ready replicas of the wanted replicas."),
                 _AGE_COLUMN),
        row=_workload_row)


def _namespace_row(namespace: Obj, now: float) -> list[Any]:
    return [namespace["metadata"]["name"], (namespace.get("status") or {}).get("phase", ""),
            _age(namespace, now)]


# What the chart's Pod Security check reads (its labels). Nothing here makes objects live in
# one: the lab's namespaced objects need none, as before.
NAMESPACES = ResourceType(
    group="", version="v1", resource="namespaces", kind="Namespace", model="V1Namespace",
    short_names=("ns",),
    # namespaceStrategy.PrepareForCreate: status.phase Active.
    has_status=True, initial_status=lambda _: {"phase": "Active"}, graceful_delete=False,
    selectable={"metadata.name": lambda o: o["metadata"]["name"],
                "status.phase": lambda o: (o.get("status") or {}).get("phase", "")},
    default=lambda namespace: namespace, validate=lambda namespace: [],
    validate_update=_no_update_rules,
    columns=(_NAME_COLUMN,
             Column("Status", "string", "", "The status of the namespace"), _AGE_COLUMN),
    row=_namespace_row, namespaced=False)

CORE_AND_APPS: tuple[ResourceType, ...] = (
    PODS, ENDPOINT_SLICES, SERVICES, NODES, NAMESPACES,
    _workload("deployments", "Deployment", "deploy"),
    _workload("statefulsets", "StatefulSet", "sts"), _workload("daemonsets", "DaemonSet", "ds"),
    _workload("replicasets", "ReplicaSet", "rs"))
