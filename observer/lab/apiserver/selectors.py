"""Label and field selectors, parsed the way ``k8s.io/apimachinery/pkg/labels`` and
``pkg/fields`` parse them.

Label selector grammar (``labels/selector.go``): comma-separated requirements, each one of
``key``, ``!key``, ``key=v``, ``key==v``, ``key!=v``, ``key in (a,b)``, ``key notin (a,b)``,
``key>n``, ``key<n``. Field selectors (``fields/selector.go``) accept ``f=v``, ``f==v`` and
``f!=v`` with backslash escapes; which fields are selectable is per resource.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from observer.lab.apiserver.errors import ApiError, bad_request

_KEY = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_KEY_RE = re.compile(f"^{_KEY}$")
_VALUE_RE = re.compile(f"^{_VALUE}$")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # one of = != in notin exists !exists gt lt
    values: tuple[str, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        match self.operator:
            case "exists":
                return present
            case "!exists":
                return not present
            case "=" | "in":
                return present and value in self.values
            case "!=" | "notin":
                return not present or value not in self.values
            case "gt" | "lt":
                if not present:
                    return False
                try:
                    have, want = int(value), int(self.values[0])
                except ValueError:
                    return False
                return have > want if self.operator == "gt" else have < want
        raise AssertionError(self.operator)


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _check_key(key: str, selector: str) -> str:
    if not _KEY_RE.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
        raise bad_request(f"unable to parse requirement: invalid label key {key!r} in {selector!r}")
    return key


def _check_values(values: list[str], selector: str) -> tuple[str, ...]:
    for value in values:
        if len(value) > 63 or not _VALUE_RE.match(value):
            raise bad_request(
                f"unable to parse requirement: invalid label value {value!r} in {selector!r}"
            )
    return tuple(values)


_SET_RE = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\((.*)\)\s*$")
_BINARY_RE = re.compile(r"^\s*([^=!<>\s]+)\s*(==|=|!=|>|<)\s*(.*?)\s*$")


def parse_label_selector(text: str) -> LabelSelector:
    if not text.strip():
        return LabelSelector()
    requirements: list[Requirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise bad_request(
                f"unable to parse requirement: found '', expected: identifier in {text!r}")
        if m := _SET_RE.match(part):
            values = [v.strip() for v in m.group(3).split(",")] if m.group(3).strip() else []
            requirements.append(Requirement(_check_key(m.group(1), text), m.group(2),
                                            _check_values(values, text)))
        elif m := _BINARY_RE.match(part):
            op = {"==": "=", "=": "=", "!=": "!=", ">": "gt", "<": "lt"}[m.group(2)]
            value = m.group(3)
            if op in ("gt", "lt") and not re.fullmatch(r"-?\d+", value):
                raise bad_request(f"unable to parse requirement: for 'gt', 'lt' operators, the "
                                  f"value must be an integer in {text!r}")
            requirements.append(Requirement(_check_key(m.group(1), text), op,
                                            _check_values([value], text)))
        elif part.startswith("!"):
            requirements.append(Requirement(_check_key(part[1:].strip(), text), "!exists", ()))
        else:
            requirements.append(Requirement(_check_key(part, text), "exists", ()))
    return LabelSelector(tuple(requirements))


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    equal: bool


@dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, field: Callable[[str], str]) -> bool:
        """``field`` gives an object's value of a selectable field, by name."""
        return all((field(r.field) == r.value) == r.equal for r in self.requirements)


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def parse_field_selector(text: str, *, supported: frozenset[str], resource: str) -> FieldSelector:
    if not text.strip():
        return FieldSelector()
    requirements: list[FieldRequirement] = []
    for part in re.split(r"(?<!\\),", text):
        m = re.match(r"^\s*([^=!]+?)\s*(==|=|!=)(.*)$", part)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        name = m.group(1)
        if name not in supported:
            raise ApiError(400, "BadRequest",
                           f'field label not supported: {name}',
                           {"kind": resource})
        requirements.append(FieldRequirement(name, _unescape(m.group(3)), m.group(2) != "!="))
    return FieldSelector(tuple(requirements))
