"""Structural checks of request bodies against the typed Kubernetes API.

The real server decodes a body into Go structs: unknown fields are dropped (and, under
``fieldValidation=Strict``, rejected; under ``Warn``, reported in a ``Warning`` header), duplicate
fields are reported the same way, and a value of the wrong JSON type fails the request with 400
(``json: cannot unmarshal ...``). See the "Field validation" section of the API concepts page and
KEP-2885.

We need the same structure without shipping an OpenAPI document: ``kubernetes_asyncio``'s
generated models carry every type's fields (``attribute_map``: Python name -> JSON name) and
their types (``openapi_types``: ``str``, ``int``, ``list[V1Container]``, ``dict(str, str)`` ...).
They are generated from the upstream OpenAPI spec, so they are the schema of the client version
we depend on. ``IntOrString`` is typed ``object`` there and is accepted as either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from kubernetes_asyncio.client import models

# resource.Quantity is a string in the OpenAPI spec, but the real decoder also accepts a JSON
# number (``cpu: 1`` in YAML); these are the map fields whose values are quantities.
_QUANTITY_MAPS = frozenset({"limits", "requests", "overhead", "capacity", "allocatable"})
_GO_TYPES = {"str": "string", "int": "int64", "float": "float64", "bool": "bool",
             "datetime": "Time"}


@dataclass
class Findings:
    unknown: list[str] = field(default_factory=list)
    type_errors: list[str] = field(default_factory=list)


@cache
def _fields(model: str) -> dict[str, str]:
    """JSON field name -> type name for one generated model."""
    cls = getattr(models, model)
    return {cls.attribute_map[attr]: typ for attr, typ in cls.openapi_types.items()}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def conform(value: Any, type_name: str) -> tuple[Any, Findings]:
    """Return ``value`` with unknown fields and nulls dropped, and what was found on the way."""
    findings = Findings()
    return _conform(value, type_name, "", findings, False), findings


def _mismatch(value: Any, type_name: str, path: str, findings: Findings) -> None:
    go_type = _GO_TYPES.get(type_name, type_name.removeprefix("V1").removeprefix("Discovery"))
    findings.type_errors.append(
        f"json: cannot unmarshal {_json_type(value)} into Go struct field "
        f"{path or '<root>'} of type {go_type}"
    )


def _conform(value: Any, type_name: str, path: str, findings: Findings, quantity: bool) -> Any:
    if value is None or type_name == "object":
        return value
    if type_name == "str":
        if isinstance(value, str) or (quantity and isinstance(value, int | float)
                                      and not isinstance(value, bool)):
            return value
        _mismatch(value, type_name, path, findings)
        return None
    if type_name == "datetime":
        if isinstance(value, str):
            return value
        _mismatch(value, type_name, path, findings)
        return None
    if type_name in ("int", "float"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if type_name == "float":
            ok = ok or isinstance(value, float)
        if ok:
            return value
        _mismatch(value, type_name, path, findings)
        return None
    if type_name == "bool":
        if isinstance(value, bool):
            return value
        _mismatch(value, type_name, path, findings)
        return None
    if m := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(value, list):
            _mismatch(value, "array", path, findings)
            return None
        return [_conform(v, m.group(1), f"{path}[{i}]", findings, False)
                for i, v in enumerate(value)]
    if m := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        if not isinstance(value, dict):
            _mismatch(value, "map", path, findings)
            return None
        is_quantity = path.rsplit(".", 1)[-1] in _QUANTITY_MAPS
        return {k: _conform(v, m.group(1), f"{path}[{k}]", findings, is_quantity)
                for k, v in value.items()}
    if not isinstance(value, dict):
        _mismatch(value, type_name, path, findings)
        return None
    known = _fields(type_name)
    out: dict[str, Any] = {}
    for key, item in value.items():
        child = f"{path}.{key}" if path else key
        if key not in known:
            findings.unknown.append(child)
            continue
        conformed = _conform(item, known[key], child, findings, False)
        if conformed is not None:
            out[key] = conformed
    return out
