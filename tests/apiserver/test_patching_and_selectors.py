"""The pure pieces: patch formats and selector parsing."""

from __future__ import annotations

from typing import Any

import pytest

from observer.lab.apiserver.errors import ApiError
from observer.lab.apiserver.patching import json_patch, merge_patch, strategic_merge_patch
from observer.lab.apiserver.selectors import parse_field_selector, parse_label_selector

POD: dict[str, Any] = {"metadata": {"finalizers": ["a"], "labels": {"x": "1", "y": "2"}},
       "spec": {"containers": [{"name": "app", "image": "app:1", "env": [{"name": "A",
                                                                          "value": "1"}]},
                               {"name": "side", "image": "side:1"}],
                "tolerations": [{"key": "k"}]}}


def test_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": "b", "c": {"d": "e", "f": "g"}},
                       {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert merge_patch({"a": 1}, ["x"]) == ["x"]


def test_strategic_merge_by_key_and_directives() -> None:
    patched = strategic_merge_patch(POD, {
        "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
        "metadata": {"finalizers": ["b"], "labels": {"y": None}},
        "spec": {"containers": [{"name": "app", "image": "app:2",
                                 "env": [{"name": "B", "value": "2"}]},
                                {"name": "side", "$patch": "delete"}],
                 "tolerations": [{"key": "new"}]}})
    assert patched["metadata"] == {"finalizers": ["a", "b"], "labels": {"x": "1"}}
    (app,) = patched["spec"]["containers"]
    assert app["image"] == "app:2"
    assert app["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert patched["spec"]["tolerations"] == [{"key": "new"}]  # no merge key: replaced
    replaced = strategic_merge_patch(POD, {"spec": {"$patch": "replace", "containers": []}})
    assert replaced["spec"] == {"containers": []}
    removed = strategic_merge_patch(POD, {"$deleteFromPrimitiveList/finalizers": ["a"]}
                                    | {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert removed["metadata"]["finalizers"] == []
    assert POD["spec"]["containers"][0]["image"] == "app:1"  # the input is never mutated
    with pytest.raises(ApiError):
        strategic_merge_patch(POD, {"spec": {"containers": [{"image": "no-name"}]}})


def test_json_patch_rfc6902() -> None:
    doc = {"a": {"b": [1, 2]}}
    assert json_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 3},
                            {"op": "add", "path": "/a/b/0", "value": 0},
                            {"op": "add", "path": "/a/c", "value": "x"},
                            {"op": "replace", "path": "/a/c", "value": "x"},
                            {"op": "move", "from": "/a/c", "path": "/d"},
                            {"op": "copy", "from": "/d", "path": "/e"},
                            {"op": "test", "path": "/e", "value": "x"},
                            {"op": "remove", "path": "/a/b/1"},
                            {"op": "add", "path": "/k~1v", "value": 1}]) == {
        "a": {"b": [0, 2, 3]}, "d": "x", "e": "x", "k/v": 1}
    assert doc == {"a": {"b": [1, 2]}}
    for bad in ([{"op": "replace", "path": "/missing", "value": 1}],
                [{"op": "test", "path": "/a", "value": 1}],
                [{"op": "remove", "path": "/a/b/9"}],
                [{"op": "frobnicate", "path": "/a"}],
                {"op": "add"}):
        with pytest.raises(ApiError):
            json_patch(doc, bad)


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("", {"a": "1"}, True),
    ("a=1", {"a": "1"}, True),
    ("a==1,b!=2", {"a": "1", "b": "3"}, True),
    ("a!=1", {}, True),
    ("a in (1, 2),!c", {"a": "2"}, True),
    ("a notin (1,2)", {"a": "2"}, False),
    ("a", {"b": "1"}, False),
    ("!a", {"b": "1"}, True),
    ("n>3", {"n": "5"}, True),
    ("n<3", {"n": "5"}, False),
    ("app.kubernetes.io/name=web", {"app.kubernetes.io/name": "web"}, True),
])
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector).matches(labels) is expected


@pytest.mark.parametrize("selector", ["a in (b", "a=b c", "=x", "a,,b", "n>x", "a=" + "v" * 64])
def test_bad_label_selectors(selector: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_label_selector(selector)
    assert raised.value.code == 400


def test_field_selectors() -> None:
    supported = frozenset({"spec.nodeName", "metadata.name"})
    selector = parse_field_selector("spec.nodeName=node-a,metadata.name!=x",
                                    supported=supported, resource="pods")
    assert selector.matches({"spec.nodeName": "node-a", "metadata.name": "y"}.__getitem__)
    assert not selector.matches({"spec.nodeName": "node-a", "metadata.name": "x"}.__getitem__)
    escaped = parse_field_selector(r"metadata.name=a\,b", supported=supported, resource="pods")
    assert escaped.matches({"metadata.name": "a,b"}.__getitem__)
    with pytest.raises(ApiError):
        parse_field_selector("spec.other=1", supported=supported, resource="pods")
