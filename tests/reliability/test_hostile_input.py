"""Property-based tests (hypothesis) for every parser: whatever comes in — random text,
real dumps with lines mangled, random JSON, real objects with a value swapped — only the
parser's own error type comes out (DataplaneParseError, MalformedObject), or nothing at all
for the event appliers, which skip what they cannot use; and never a hang (a deadline per
example)."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from observer.dataplane.iptables import IptablesNftTables, parse_iptables_save
from observer.dataplane.iptables_nft_events import JumpEvent, decode
from observer.dataplane.ipvs import Virtual, dest_attrs, parse_ipvs, service_attrs, service_identity
from observer.dataplane.model import DataplaneParseError
from observer.dataplane.nftables import KubeProxyTables, parse_nft_text
from observer.kube.lifecycle import containers_of, grace_seconds, prestop_of
from observer.kube.objects import MalformedObject, parse_endpoint_slice, parse_pod
from observer.testing.ipvs_netlink import (
    KUBE_DNS,
    dest_message,
    payload,
    service_message,
    virtuals,
)
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "dataplane"
IPTABLES = (FIXTURES / "iptables-nat.rules").read_text().splitlines()
NFT = (FIXTURES / "nft-a-list-table.txt").read_text().splitlines()
IPVS = virtuals()
NFT_EVENTS = [bytes.fromhex(line) for line in (FIXTURES / "nft-events.hex").read_text().split()]
CHECKS = settings(max_examples=300, deadline=5000,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Text that looks like the tools' output: their own tokens, digits, punctuation.
TOKENS = st.sampled_from(["-A", "-j", "KUBE-SVC-", "KUBE-SEP-", "KUBE-SERVICES", ":", "[0:0]",
                          "--to-destination", "10.0.0.1:80", "-m", "comment", "--comment",
                          '"', "statistic", "--probability", "0.5", "*nat", "COMMIT",
                          "chain", "{", "}", "map", "vmap", "numgen", "random", "mod",
                          "dnat", "to", "goto", "jump", "# handle",
                          "table", "ip", "kube-proxy", "service-", "endpoint-", "\t", " "])
LINE = st.one_of(st.text(max_size=80), st.lists(TOKENS, max_size=12).map(" ".join))


def mangled(lines: list[str]) -> st.SearchStrategy[str]:
    """A real dump with lines dropped, duplicated, cut short or replaced."""
    @st.composite
    def build(draw: st.DrawFn) -> str:
        out = list(lines)
        for _ in range(draw(st.integers(0, 8))):
            if not out:
                break
            i = draw(st.integers(0, len(out) - 1))
            action = draw(st.sampled_from(["drop", "dup", "cut", "replace", "insert"]))
            if action == "drop":
                del out[i]
            elif action == "dup":
                out.insert(i, out[i])
            elif action == "cut":
                out[i] = out[i][:draw(st.integers(0, len(out[i])))]
            elif action == "replace":
                out[i] = draw(LINE)
            else:
                out.insert(i, draw(LINE))
        return "\n".join(out) + "\n"
    return build()


def dump_text(lines: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(mangled(lines), st.lists(LINE, max_size=30).map("\n".join))


@CHECKS
@given(dump_text(IPTABLES), st.sampled_from(["legacy", "nft"]))
def test_iptables_save(text: str, backend: str) -> None:
    with contextlib.suppress(DataplaneParseError):
        parse_iptables_save(text, backend=backend)  # type: ignore[arg-type]


@CHECKS
@given(dump_text(NFT))
def test_nft_list_table(text: str) -> None:
    with contextlib.suppress(DataplaneParseError):
        parse_nft_text(text)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=20)


@st.composite
def ipvs_dump(draw: st.DrawFn) -> list[Virtual]:
    """The kernel-layout fixture's decoded attributes with values swapped or dropped."""
    dump = [(dict(service), [dict(d) for d in dests]) for service, dests in IPVS]
    for _ in range(draw(st.integers(1, 6))):
        service, dests = dump[draw(st.integers(0, len(dump) - 1))]
        attrs = draw(st.sampled_from([service, *dests]))
        key = draw(st.sampled_from([*attrs, "IPVS_SVC_ATTR_FWMARK"]))
        if draw(st.booleans()):
            attrs.pop(key, None)
        else:
            attrs[key] = draw(st.one_of(JSON, st.binary(max_size=20),
                                        st.integers(-2**40, 2**40)))
    return list(dump)


@CHECKS
@given(ipvs_dump())
def test_ipvs_attributes(dump: list[Virtual]) -> None:
    with contextlib.suppress(DataplaneParseError):
        parse_ipvs(dump)


@st.composite
def mangled_bytes(draw: st.DrawFn, originals: list[bytes]) -> bytes:
    """Real bytes with some overwritten, cut or inserted; or plain garbage."""
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["overwrite", "cut", "insert"]))
        if edit == "overwrite":
            piece = draw(st.binary(min_size=1, max_size=4))
            data[at:at + len(piece)] = piece
        elif edit == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return draw(st.sampled_from([bytes(data), draw(st.binary(max_size=200))]))


IPVS_REPLIES = [payload(service_message(s)) for s in KUBE_DNS]
IPVS_DEST_REPLIES = [payload(dest_message(r)) for s in KUBE_DNS for r in s.reals]


@CHECKS
@given(mangled_bytes(IPVS_REPLIES), st.lists(mangled_bytes(IPVS_DEST_REPLIES), max_size=3))
def test_ipvs_netlink_replies(service: bytes, dests: list[bytes]) -> None:
    with contextlib.suppress(DataplaneParseError):
        service_identity(service)
    with contextlib.suppress(DataplaneParseError):
        parse_ipvs([(service_attrs(service), [dest_attrs(d) for d in dests])])


NFT_KEYS = st.sampled_from(["add", "delete", "rule", "chain", "table", "family", "chain",
                            "handle", "expr", "name", "vmap", "jump", "goto", "dnat",
                            "numgen", "map", "data", "key", "addr", "port", "concat"])


@st.composite
def nft_event(draw: st.DrawFn) -> bytes:
    """`nft -j monitor` lines: plausible ones with random parts, and plain garbage."""
    expr = draw(st.lists(st.dictionaries(NFT_KEYS, JSON, max_size=3), max_size=4))
    body = {"family": draw(st.sampled_from(["ip", "ip6", "inet", 7])),
            "table": draw(st.sampled_from(["kube-proxy", "nat", None])),
            "chain": draw(st.sampled_from(["services", "service-ABCD-ns/web/tcp/http",
                                           "endpoint-1234-ns/web/tcp/http__10.0.0.1/80",
                                           "KUBE-SERVICES", "KUBE-SVC-AAAA", 3])),
            "handle": draw(st.one_of(st.integers(-5, 50), st.text(max_size=3))),
            "name": draw(st.sampled_from(["service-x", "KUBE-SEP-X", "", None])),
            "expr": expr}
    event = {draw(st.sampled_from(["add", "delete", "replace"])): {
        draw(st.sampled_from(["rule", "chain", "set", "element"])): body}}
    return draw(st.sampled_from([json.dumps(event).encode(), json.dumps(
        draw(JSON)).encode(), draw(st.binary(max_size=40))]))


@CHECKS
@given(st.lists(nft_event(), max_size=20))
def test_nft_monitor_events(lines: list[bytes]) -> None:
    tables = KubeProxyTables()
    tables.apply(lines)
    tables.delta()
    tables.selection()


@CHECKS
@given(st.lists(mangled_bytes(NFT_EVENTS), max_size=6))
def test_nf_tables_netlink_events(datagrams: list[bytes]) -> None:
    tables = IptablesNftTables(lambda: ())
    for datagram in datagrams:
        events: list[JumpEvent | None] = []
        with contextlib.suppress(DataplaneParseError):
            decode(datagram, events)
        tables.apply([e for e in events if e is not None])
    tables.delta()
    tables.selection()


def real_pod() -> dict[str, Any]:
    return {"metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1",
                         "resourceVersion": "5", "deletionTimestamp": "2026-01-01T00:00:30Z",
                         "deletionGracePeriodSeconds": 30},
            "spec": {"nodeName": "node-a", "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "web", "image": "web:1",
                                     "ports": [{"containerPort": 80}],
                                     "lifecycle": {"preStop": {"exec": {
                                         "command": ["sh", "-c", "sleep 5"]}}}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "web", "state": {
                           "terminated": {"exitCode": 137}}}]}}


def real_slice() -> dict[str, Any]:
    return {"metadata": {"name": "web-abc", "namespace": "shop", "resourceVersion": "7",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "node-a",
                           "conditions": {"ready": True, "serving": True, "terminating": False},
                           "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "shop",
                                         "uid": "u-1"}}]}


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            out += paths(value, (*prefix, index))
    return out


@st.composite
def swapped(draw: st.DrawFn, real: dict[str, Any]) -> Any:
    """A real object with a few values (anywhere, the root included) replaced."""
    obj: Any = copy.deepcopy(real)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(obj)))
        value = draw(JSON)
        if not where:
            obj = value
            continue
        parent = obj
        for step in where[:-1]:
            parent = parent[step]
        parent[where[-1]] = value
    return obj


@CHECKS
@given(st.one_of(swapped(real_pod()), JSON))
def test_pod_objects(obj: Any) -> None:
    with contextlib.suppress(MalformedObject):
        parse_pod(obj)
    if isinstance(obj, dict) and isinstance(obj.get("spec"), dict):
        spec = obj["spec"]
        containers_of(spec)  # the lifecycle readers skip what they cannot use
        grace_seconds(spec)
        containers = spec.get("containers")
        for container in containers if isinstance(containers, list) else []:
            if isinstance(container, dict):
                prestop_of(container)


@CHECKS
@given(st.one_of(swapped(real_slice()), JSON))
def test_endpoint_slice_objects(obj: Any) -> None:
    with contextlib.suppress(MalformedObject):
        parse_endpoint_slice(obj)
