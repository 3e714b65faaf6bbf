"""Which workload a pod belongs to, read from the pod's own object: no other watch.

kube-state-metrics' convention: a pod's owner is its *controller* owner reference
(``metadata.ownerReferences[]`` with ``controller: true``: ``kube_pod_owner``); a ReplicaSet's
own owner, its Deployment, comes from the ReplicaSet object (``kube_replicaset_owner``). The
agent runs on every node and watches only its own node's pods, so it does not watch
ReplicaSets cluster-wide for that one hop. A Deployment names the ReplicaSets it makes
``<deployment>-<pod-template-hash>`` and labels their pods ``pod-template-hash=<hash>``
(``pkg/controller/deployment/sync.go``, ``getNewReplicaSet``; the label is
``DefaultDeploymentUniqueLabelKey``): a pod whose controller is a ReplicaSet so named, with that
label, is its Deployment's. A ReplicaSet made otherwise (by hand, or by another controller
that names or labels differently, such as Argo Rollouts' ``rollouts-pod-template-hash``) is
its own workload, ``replicaset/<name>``. StatefulSets, DaemonSets, Jobs and any other
controller are the workload themselves (``statefulset/web``, ``job/backup-28350000``); a pod
with no controller is its own (``pod/<name>``).

Odd owner references (not a list, a controller reference without a kind or name, two
controllers) do not make the pod unusable: it is its own workload, and the oddity is said
(``Owner.problem``) for the caller to count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

TEMPLATE_HASH_LABEL = "pod-template-hash"  # DefaultDeploymentUniqueLabelKey


class Workload(NamedTuple):
    namespace: str
    kind: str  # lower case: deployment, replicaset, statefulset, daemonset, job, pod, ...
    name: str

    @property
    def label(self) -> str:
        """``<kind>/<name>``, the ``workload`` label's value (``deployment/web``)."""
        return f"{self.kind}/{self.name}"


class Owner(NamedTuple):
    workload: Workload
    problem: str | None  # why the owner references could not be followed (None: they could)


def owner_of(namespace: str, name: str, meta: Mapping[str, Any]) -> Owner:
    """The workload of the pod ``namespace/name`` whose ``metadata`` is ``meta``."""
    itself = Workload(namespace, "pod", name)
    references = meta.get("ownerReferences")
    if references is None:
        return Owner(itself, None)
    if not isinstance(references, list):
        return Owner(itself, "metadata.ownerReferences is not a list")
    controllers = [r for r in references if isinstance(r, Mapping) and r.get("controller") is True]
    if not controllers:
        return Owner(itself, None)
    if len(controllers) > 1:
        return Owner(itself, f"{len(controllers)} controller owner references")
    kind, owner = controllers[0].get("kind"), controllers[0].get("name")
    if not isinstance(kind, str) or not kind or not isinstance(owner, str) or not owner:
        return Owner(itself, "a controller owner reference without a kind or a name")
    if kind == "ReplicaSet":
        return Owner(_replica_set_owner(namespace, owner, meta.get("labels")), None)
    return Owner(Workload(namespace, kind.lower(), owner), None)


def _replica_set_owner(namespace: str, replica_set: str, labels: Any) -> Workload:
    suffix = labels.get(TEMPLATE_HASH_LABEL) if isinstance(labels, Mapping) else None
    if isinstance(suffix, str) and suffix and replica_set.endswith(f"-{suffix}") \
            and len(replica_set) > len(suffix) + 1:
        return Workload(namespace, "deployment", replica_set[:-len(suffix) - 1])
    return Workload(namespace, "replicaset", replica_set)
