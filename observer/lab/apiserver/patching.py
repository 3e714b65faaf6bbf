"""The three patch formats the server accepts on PATCH.

* JSON merge patch, RFC 7386 (``application/merge-patch+json``).
* Strategic merge patch (``application/strategic-merge-patch+json``), the format ``kubectl apply``
  and ``kubectl patch`` send for built-in types. Behaviour follows
  ``k8s.io/apimachinery/pkg/util/strategicpatch/patch.go`` and
  ``community/contributors/devel/sig-api-machinery/strategic-merge-patch.md``: maps merge
  recursively, ``null`` deletes, lists with a ``patchMergeKey`` merge item by item, primitive lists
  with ``patchStrategy: merge`` are unions, every other list is replaced; directives ``$patch``
  (``replace``, ``delete``, ``merge``), ``$retainKeys``, ``$deleteFromPrimitiveList/<f>`` and
  ``$setElementOrder/<f>`` are honoured.
* JSON patch, RFC 6902 (``application/json-patch+json``).

Server-side apply (``application/apply-patch+yaml``) is not implemented; see docs/apiserver.md.
"""

from __future__ import annotations

import copy
from typing import Any

from observer.lab.apiserver.errors import ApiError, bad_request

# patchMergeKey of the lists that merge, by path of field names ("[]" enters a list item).
# Taken from the ``patchStrategy``/``patchMergeKey`` struct tags in k8s.io/api core/v1, apps/v1
# and meta/v1 types.go; "" marks a primitive list whose strategy is merge (a set union). A pod
# spec's lists merge the same way in a pod (``spec``) and in a workload's pod template
# (``spec.template.spec``: Deployments, StatefulSets, DaemonSets, ReplicaSets).
_POD_SPEC_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
_CONTAINER_KEYS = {"ports": "containerPort", "env": "name", "volumeMounts": "mountPath",
                   "volumeDevices": "devicePath"}
MERGE_KEYS: dict[str, str] = {
    "metadata.finalizers": "",
    "metadata.ownerReferences": "uid",
    "spec.template.metadata.finalizers": "",
    "spec.template.metadata.ownerReferences": "uid",
    "status.conditions": "type",
    "status.podIPs": "ip",
    "status.hostIPs": "ip",
    "status.resourceClaimStatuses": "name",
}
for _spec in ("spec", "spec.template.spec"):
    MERGE_KEYS.update({f"{_spec}.{field}": key for field, key in _POD_SPEC_KEYS.items()})
    for _list in ("containers", "initContainers", "ephemeralContainers"):
        MERGE_KEYS.update({f"{_spec}.{_list}[].{field}": key
                           for field, key in _CONTAINER_KEYS.items()})


def _invalid_patch(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        raise bad_request("strategic merge patch must be a JSON object")
    return _smp_map(target if isinstance(target, dict) else {}, patch, "")


def _smp_map(target: dict[str, Any], patch: dict[str, Any], path: str) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    if directive not in (None, "merge"):
        raise _invalid_patch(f"Unknown patch type: {directive} in map: {patch}")
    result = dict(target)
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(result.get(name), list) and isinstance(value, list):
                result[name] = [v for v in result[name] if v not in value]
            continue
        child = f"{path}.{key}" if path else key
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            result[key] = _smp_map(current if isinstance(current, dict) else {}, value, child)
        elif isinstance(value, list) and child in MERGE_KEYS:
            current = result.get(key)
            result[key] = _smp_list(current if isinstance(current, list) else [], value, child,
                                    MERGE_KEYS[child])
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(target: list[Any], patch: list[Any], path: str, key: str) -> list[Any]:
    if not key:  # primitive list, merge strategy: ordered union
        return list(target) + [v for v in patch if v not in target]
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    result = list(target)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise _invalid_patch(f"map: {item} does not contain declared merge key: {key}")
        index = next((i for i, t in enumerate(result)
                      if isinstance(t, dict) and t.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_smp_map({}, item, f"{path}[]"))
        else:
            result[index] = _smp_map(result[index], item, f"{path}[]")
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"json patch: invalid path {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise _invalid_patch(f"jsonpatch: path {path!r} does not exist")
    return node, tokens[-1]


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent, last = _parent(doc, tokens, path)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _invalid_patch(f"jsonpatch: path {path!r} does not exist")


def _remove(doc: Any, path: str) -> Any:
    parent, last = _parent(doc, _pointer(path), path)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise _invalid_patch(f"jsonpatch remove operation does not apply: doc is missing path: {path}")


def _add(doc: Any, path: str, value: Any, *, replace: bool) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _parent(doc, tokens, path)
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise _invalid_patch(
                f"jsonpatch replace operation does not apply: doc is missing key: {path}")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise _invalid_patch(f"jsonpatch: index out of range in path {path!r}")
    else:
        raise _invalid_patch(f"jsonpatch: path {path!r} does not exist")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a JSON array of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise bad_request(f"json patch: invalid operation {op!r}")
        kind, path = op.get("op"), op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise bad_request(f"json patch: operation {kind!r} needs a value")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=False)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise bad_request(f"json patch: operation {kind!r} needs 'from'")
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value, replace=False)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise _invalid_patch(f"testing value {path} failed")
        else:
            raise bad_request(f"json patch: unknown operation {kind!r}")
    return doc
