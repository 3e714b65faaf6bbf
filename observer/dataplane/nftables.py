"""kube-proxy's nftables mode, from ``nft -a list table ip|ip6 kube-proxy`` (full reads, parsed
line by line as the text streams in) and ``nft -j monitor`` events (JSON, one change a line).

Layout (``pkg/proxy/nftables/proxier.go``; real rule sets in ``TestOverallNFTablesRules``):
the ``service-ips`` map sends ``clusterIP . proto . port`` to the chain
``service-<h8>-<ns>/<name>/<proto>/<port>`` (Cluster policy) or ``local-...`` (Local policy);
that chain picks an endpoint with ``numgen random mod N vmap { 0 : goto endpoint-..., ... }``
(plus ``ip saddr @affinity-... goto endpoint-...`` rules for session affinity). An endpoint
chain ``endpoint-<h8>-<ns>/<name>/<proto>/<port>__<ip>/<port>`` DNATs to the pod.

A removed endpoint leaves the vmap at once, but its chain is only flushed and deleted on a later
sync: selection is membership of the vmap (or an affinity goto), never the chain's existence.

This module holds the whole mode: the parse, one full read (``read_tables``, used by
``NftablesReader`` for a snapshot and by ``KubeProxyTables`` for the state ``nft -j monitor``'s
events keep), and the monitor's output cut into bursts (``NftMonitor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.mode import DataplaneMode, Detected, Probe, Wiring
from observer.dataplane.model import (
    Backend,
    DataplaneParseError,
    DataplaneSnapshot,
    DataplaneSource,
    ProgrammedEndpoint,
    ProgrammedService,
    decode_output,
    either_family,
    merge_snapshots,
)
from observer.dataplane.sources import MonitorSource
from observer.values import EndpointKey, Mode, ServicePort

POLICY_PREFIXES = {"service-": "cluster", "local-": "local"}
ENDPOINT_PREFIX = "endpoint-"


def service_from_chain(chain: str) -> tuple[str, str] | None:
    """``service-ULMVA6XW-ns1/svc1/tcp/p80`` -> (``ns1/svc1:p80``, ``tcp``)."""
    _, _, rest = chain.partition("-")
    _, _, base = rest.partition("-")
    base = base.split("__", 1)[0]
    parts = base.split("/")
    if len(parts) != 4 or not parts[0] or not parts[1]:
        return None
    namespace, name, protocol, port = parts
    return (f"{namespace}/{name}:{port}" if port else f"{namespace}/{name}", protocol)


def endpoint_from_chain(chain: str) -> tuple[str, int] | None:
    """``endpoint-...__10.180.0.1/80`` -> (``10.180.0.1``, 80); IPv6 colons are dots there."""
    _, sep, endpoint = chain.rpartition("__")
    host, slash, port = endpoint.rpartition("/")
    if not sep or not slash or not port.isdigit():
        return None
    for candidate in (host, host.replace(".", ":")):
        try:
            return str(ipaddress.ip_address(candidate)), int(port)
        except ValueError:
            continue
    return None


def targets(node: Any) -> Iterator[str]:
    """Every goto/jump target inside a rule's expression list, vmaps included."""
    if isinstance(node, dict):
        for verb in ("goto", "jump"):
            inner = node.get(verb)
            if isinstance(inner, dict) and isinstance(inner.get("target"), str):
                yield inner["target"]
        for value in node.values():
            yield from targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from targets(value)


def _dnat(expr: Any) -> tuple[str, int] | None:
    for item in expr if isinstance(expr, list) else []:
        dnat = item.get("dnat") if isinstance(item, dict) else None
        if isinstance(dnat, dict) and isinstance(dnat.get("addr"), str) and isinstance(
                dnat.get("port"), int):
            return dnat["addr"], dnat["port"]
    return None


@dataclass
class ChainState:
    """Rules of the chains that matter, by handle: what the event stream updates."""

    policy_rules: dict[str, dict[int, list[str]]] = field(default_factory=dict)
    endpoint_chains: dict[str, tuple[str, int] | None] = field(default_factory=dict)
    cluster_ips: dict[str, str] = field(default_factory=dict)  # policy chain -> cluster IP
    touched: set[str] = field(default_factory=set)  # policy chains changed since last delta
    by_service: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def _index(self, chain: str) -> None:
        identity = service_from_chain(chain)
        if identity is not None:
            self.by_service.setdefault(identity, set()).add(chain)

    def take_touched(self) -> set[tuple[str, str]]:
        """The service ports whose policy chains changed since the last call."""
        touched = {i for i in map(service_from_chain, self.touched) if i is not None}
        self.touched.clear()
        return touched

    def selected_by_service(self, identity: tuple[str, str]) -> set[tuple[str, int]]:
        """The endpoints a service port's policy chains (both paths) select now."""
        chosen: set[tuple[str, int]] = set()
        for chain in self.by_service.get(identity, ()):
            for target in self.selected_chains(chain):
                endpoint = self.endpoint_chains.get(target) or endpoint_from_chain(target)
                if endpoint is not None:
                    chosen.add(endpoint)
        return chosen

    def add_chain(self, name: str) -> None:
        if name.startswith(tuple(POLICY_PREFIXES)) and "/" in name:
            self.policy_rules.setdefault(name, {})
            self._index(name)
        elif name.startswith(ENDPOINT_PREFIX) and "/" in name:
            self.endpoint_chains.setdefault(name, endpoint_from_chain(name))

    def delete_chain(self, name: str) -> None:
        if self.policy_rules.pop(name, None) is not None:
            self.touched.add(name)
            identity = service_from_chain(name)
            if identity is not None:
                self.by_service.get(identity, set()).discard(name)
        self.endpoint_chains.pop(name, None)

    def add_rule(self, chain: str, handle: int, expr: Any) -> None:
        """A rule as nft's JSON (monitor events) gives it."""
        self.add_parsed_rule(chain, handle, list(targets(expr)), _dnat(expr))

    def add_parsed_rule(self, chain: str, handle: int, goto: list[str],
                        dnat: tuple[str, int] | None) -> None:
        if chain in self.policy_rules or (chain.startswith(tuple(POLICY_PREFIXES))
                                          and "/" in chain):
            self.touched.add(chain)
            if chain not in self.policy_rules:
                self._index(chain)
            self.policy_rules.setdefault(chain, {})[handle] = [
                t for t in goto if t.startswith(ENDPOINT_PREFIX)]
        elif chain.startswith(ENDPOINT_PREFIX) and "/" in chain:
            if dnat is not None:
                self.endpoint_chains[chain] = dnat
            else:
                self.endpoint_chains.setdefault(chain, endpoint_from_chain(chain))

    def delete_rule(self, chain: str, handle: int) -> None:
        rules = self.policy_rules.get(chain)
        if rules is not None:
            rules.pop(handle, None)
            self.touched.add(chain)

    def selected_chains(self, policy_chain: str) -> set[str]:
        return {t for targets in self.policy_rules.get(policy_chain, {}).values()
                for t in targets}

    def snapshot(self) -> DataplaneSnapshot:
        services: dict[tuple[str, str], dict[str, dict[tuple[str, int], bool]]] = {}
        cluster_ips: dict[tuple[str, str], str] = {}
        for chain in self.policy_rules:
            identity = service_from_chain(chain)
            if identity is None:
                continue
            path = POLICY_PREFIXES[chain.split("-", 1)[0] + "-"]
            paths = services.setdefault(identity, {"cluster": {}, "local": {}})
            for target in self.selected_chains(chain):
                endpoint = self.endpoint_chains.get(target) or endpoint_from_chain(target)
                if endpoint is not None:
                    paths[path][endpoint] = True
            if chain in self.cluster_ips:
                cluster_ips[identity] = self.cluster_ips[chain]
        for chain, endpoint in self.endpoint_chains.items():
            identity = service_from_chain(chain)
            if identity is None or endpoint is None:
                continue
            paths = services.setdefault(identity, {"cluster": {}, "local": {}})
            if not any(endpoint in p for p in paths.values()):
                paths["cluster"][endpoint] = False  # a chain no vmap points to any more
        result = []
        for (service, protocol), paths in services.items():
            result.append(ProgrammedService(
                service=service, protocol=protocol,
                cluster_ip=cluster_ips.get((service, protocol)),
                cluster=tuple(ProgrammedEndpoint(ip, port, sel)
                              for (ip, port), sel in paths["cluster"].items()),
                local=tuple(ProgrammedEndpoint(ip, port, sel)
                            for (ip, port), sel in paths["local"].items())))
        return DataplaneSnapshot("nftables", None, tuple(result))


CHAIN_LINE = re.compile(r"^\tchain (\S+) \{")
RULE_HANDLE = re.compile(r" # handle (\d+)$")
JUMP_TARGET = re.compile(r"\b(?:goto|jump) ([^\s,}]+)")
_DNAT = re.compile(r"\bdnat (?:ip6? )?to (\[[^\]]+\]|[0-9.]+):(\d+)")
_ELEMENT = re.compile(r"([0-9a-fA-F.:]+) \. \w+ \. \d+ : goto ([^\s,}]+)")


class NftTextParser:
    """``nft -a list table`` output, fed one line at a time into a ``ChainState``."""

    def __init__(self) -> None:
        self.state = ChainState()
        self._chain: str | None = None
        self._in_service_ips = False
        self._opened = self._closed = False

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        if not self._opened:
            if not line.startswith("table "):
                raise DataplaneParseError(f"not nft list output: {line[:80]!r}")
            self._opened = True
            return
        if line == "}":
            self._closed = True
            return
        if self._closed and line.strip():
            raise DataplaneParseError("output continues after the table ended")
        if m := CHAIN_LINE.match(line):
            self._chain, self._in_service_ips = m.group(1), False
            self.state.add_chain(self._chain)
        elif line.startswith("\tmap service-ips "):
            self._chain, self._in_service_ips = None, True
        elif line.startswith("\t}"):
            self._chain, self._in_service_ips = None, False
        elif self._in_service_ips:
            for ip, target in _ELEMENT.findall(line):
                if target.startswith(tuple(POLICY_PREFIXES)):
                    self.state.cluster_ips[target] = ip
        elif self._chain is not None and line.startswith("\t\t"):
            handle = RULE_HANDLE.search(line)
            if handle is None:
                return  # a chain's own properties (type, hook, policy, comment), not a rule
            dnat = _DNAT.search(line)
            self.state.add_parsed_rule(
                self._chain, int(handle.group(1)), JUMP_TARGET.findall(line),
                (dnat.group(1).strip("[]"), int(dnat.group(2))) if dnat else None)

    def finish(self) -> ChainState:
        if self._opened and not self._closed:
            raise DataplaneParseError("the table never closed: the output is truncated")
        self.state.take_touched()
        return self.state


def parse_nft_text(text: str) -> DataplaneSnapshot:
    """Parse ``nft -a list table <family> kube-proxy`` output into the common model."""
    parser = NftTextParser()
    for line in text.splitlines():
        parser.feed(line)
    return parser.finish().snapshot()


# --- reading: one full read, and the state nft monitor's events keep --------------------

async def nft_lines(runner: CommandRunner, family: str, table: str) -> AsyncGenerator[str, None]:
    """``nft -a list table`` line by line; nothing when this family has no such table."""
    try:
        async with contextlib.aclosing(
                runner.lines(["nft", "-a", "list", "table", family, table])) as lines:
            async for line in lines:
                yield decode_output(line)
    except CommandError as error:
        if "No such file or directory" not in str(error):
            raise


async def nft_table_state(runner: CommandRunner, family: str) -> ChainState | None:
    """kube-proxy's nftables table of one family, parsed as it streams; None if absent."""
    parser = NftTextParser()
    seen = False
    async with contextlib.aclosing(nft_lines(runner, family, "kube-proxy")) as lines:
        async for line in lines:
            seen = True
            parser.feed(line)
    return parser.finish() if seen else None


@dataclass
class NftablesReader:
    runner: CommandRunner
    mode: Mode = "nftables"
    backend: Backend | None = None

    async def read(self) -> DataplaneSnapshot:
        states = await read_tables(self.runner)
        return merge_snapshots("nftables", None, (s.snapshot() for s in states.values()))


async def read_tables(runner: CommandRunner) -> dict[str, ChainState]:
    """One full read: kube-proxy's table in each IP family that has one (``ip``, ``ip6``)."""
    states = {}
    for family in ("ip", "ip6"):
        state = await nft_table_state(runner, family)
        if state is not None:
            states[family] = state
    return states


BURST_QUIET_SECONDS = 0.002


class NftMonitor:
    """``nft -j monitor``'s lines, cut into bursts at a quiet gap of ``BURST_QUIET_SECONDS``:
    read as whatever has arrived (one timer per read, not per line: at thousands of lines a
    second a timer each was most of the agent's CPU). A line half-written is waited for."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream
        self._pieces: list[bytes] = []  # of the burst being read

    async def burst(self) -> list[bytes]:
        if not self._pieces:
            line = await self.stream.readline()
            if not line:
                raise CommandError("failed", "nft monitor ended")
            self._pieces.append(line)
        while True:
            try:
                async with asyncio.timeout(BURST_QUIET_SECONDS):
                    piece = await self.stream.read(1024 * 1024)
            except TimeoutError:
                if self._pieces[-1].endswith(b"\n"):
                    break
                continue
            if not piece:
                break  # the end: the next call tells it
            self._pieces.append(piece)
        burst, self._pieces = b"".join(self._pieces).split(b"\n"), []
        return burst


class KubeProxyTables:
    """kube-proxy's own ``kube-proxy`` tables (nftables mode), rules by handle."""

    table = "kube-proxy"

    def __init__(self) -> None:
        self.states: dict[str, ChainState] = {}

    @contextlib.asynccontextmanager
    async def events(self, runner: CommandRunner) -> AsyncIterator[NftMonitor]:
        async with runner.stream(["nft", "-j", "monitor"]) as stream:
            yield NftMonitor(stream)

    def apply(self, burst: list[bytes]) -> bool:
        relevant = False
        for line in burst:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # nft prints the odd non-JSON warning line; and the empty last
            if not isinstance(event, dict) or len(event) != 1:
                continue
            (verb, body), = event.items()
            if verb not in ("add", "delete") or not isinstance(body, dict) or len(body) != 1:
                continue
            (kind, obj), = body.items()
            if not isinstance(obj, dict) or obj.get("table") != self.table:
                continue
            relevant = True
            family = str(obj.get("family"))
            chain, handle, name = obj.get("chain"), obj.get("handle"), obj.get("name")
            if kind == "rule" and isinstance(chain, str) and isinstance(handle, int):
                self.rule(verb, family, chain, handle, obj.get("expr"))
            elif kind == "chain" and isinstance(name, str):
                self.chain(verb, family, name)
        return relevant

    async def load(self, runner: CommandRunner) -> None:
        self.states = await read_tables(runner)  # a family without the table: none yet

    def rule(self, verb: str, family: str, chain: str, handle: int, expr: Any) -> None:
        state = self.states.setdefault(family, ChainState())
        if verb == "add":
            state.add_rule(chain, handle, expr)
        else:
            state.delete_rule(chain, handle)

    def chain(self, verb: str, family: str, name: str) -> None:
        state = self.states.setdefault(family, ChainState())
        if verb == "add":
            state.add_chain(name)
        else:
            state.delete_chain(name)

    def selection(self) -> tuple[dict[EndpointKey, bool], bool]:
        parts = []
        for state in self.states.values():
            state.take_touched()
            parts.append(state.snapshot().selection())
        return either_family(parts), True  # nft rules name their endpoints: nothing unknown

    def delta(self) -> tuple[dict[ServicePort, dict[EndpointKey, bool]], bool]:
        touched = set().union(*(s.take_touched() for s in self.states.values()))
        out: dict[ServicePort, dict[EndpointKey, bool]] = {}
        for identity in touched:
            port = ProgrammedService(identity[0], identity[1], None, (), ()).service_port()
            if port is None:
                continue
            keys = out.setdefault(port, {})
            for state in self.states.values():  # both IP families
                for ip, number in state.selected_by_service(identity):
                    keys[EndpointKey(port, ip, number)] = True
        return out, True


async def _detect(probe: Probe) -> Detected:
    if {"ip kube-proxy", "ip6 kube-proxy"} & await probe.nft_tables():
        return Detected(found=True)
    return Detected(found=False, why="no nftables table kube-proxy")


async def _source(wiring: Wiring) -> DataplaneSource:
    clock, metrics = wiring.source_parts()
    return MonitorSource(mode="nftables", runner=wiring.runner, clock=clock, metrics=metrics,
                         tables=KubeProxyTables(), max_cpu=wiring.poll_max_cpu)


MODE = DataplaneMode(
    name="nftables",
    about="kube-proxy's nftables mode: its kube-proxy tables, changes announced by nf_tables "
          "netlink events",
    detect=_detect, reader=lambda wiring: NftablesReader(wiring.runner), source=_source)
