"""kube-proxy's iptables mode, as ``iptables-save -t nat`` prints it (either backend).

Layout (``pkg/proxy/iptables/proxier.go``; real rule sets in ``TestOverallIPTablesRules``):
``KUBE-SERVICES`` jumps to ``KUBE-SVC-<h>`` (Cluster policy) or ``KUBE-SVL-<h>`` (Local policy)
for a cluster IP, to ``KUBE-EXT-<h>``/``KUBE-FW-<h>`` for external IPs; SVC/SVL chains jump
(with ``-m statistic`` probabilities, and ``-m recent`` rules for session affinity) to
``KUBE-SEP-<e>`` chains that DNAT to ``ip:port``. An endpoint is selected while an SVC/SVL
chain jumps to its SEP chain.

Names: ``<h> = base32(sha256(svcPortName + protocol))[:16]`` and
``<e> = base32(sha256(svcPortName + protocol + "ip:port"))[:16]``. In "large cluster mode"
(> 1000 endpoints) kube-proxy drops the comments on SVC and SEP rules; the service's name is
still in the ``KUBE-SERVICES`` comment, and an unreferenced SEP chain is matched to its service
by recomputing the hash over candidate names (the agent's EndpointSlices supply them).

This module holds the whole mode: the parse, one full read (``read_saves``: both families'
dumps, used by ``IptablesReader`` for a snapshot and by ``IptablesNftTables`` for the state its
change events keep), and, for the nf_tables backend, that state: SVC/SVL jumps by rule handle,
kept from the kernel's nf_tables events (``iptables_nft_events``). The legacy backend has no
events: it is polled (``sources.PollingSource``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import structlog

from observer.dataplane.commands import CommandError, CommandRunner
from observer.dataplane.iptables_nft_events import JumpEvent, NftEvents, nft_events
from observer.dataplane.mode import DataplaneMode, Detected, KnownServices, Probe, Wiring
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
from observer.dataplane.netlink import in_namespace
from observer.dataplane.nftables import CHAIN_LINE, JUMP_TARGET, RULE_HANDLE, nft_lines
from observer.dataplane.sources import DataplaneMetrics, GlancingSource, MonitorSource
from observer.dataplane.xtables import (
    ENTRIES_HEADER,
    FAMILIES,
    DecodedTable,
    Decoder,
    TableGone,
    TableInfo,
    TableReader,
    XtTable,
    open_table,
)
from observer.tasks import finish_in_thread
from observer.values import EndpointKey, Mode, ServicePort, join_host_port, split_host_port

log = structlog.get_logger("observer.dataplane")

_JUMP = re.compile(r" (?:-j|--jump) (\S+)")
_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')
_DEST = re.compile(r" -d (\S+)")
_PROTO = re.compile(r" -p (\w+)")
_PROTOCOLS = ("tcp", "udp", "sctp")
_PATHS = {"C": "cluster", "L": "local"}  # KUBE-SVC- / KUBE-SVL- chains
# Scans of a whole piece of output, every line preceded by a newline; each starts with a
# literal, which the regex engine finds fast (any other start is tried at every character).
_MARKER = re.compile(r"\n(\*\S*|COMMIT)(?=\n|\Z)")  # a table starts / ends
_BAD_LINE = re.compile(r"\n(?![:#\n]|-A \S|\Z)")  # not a chain, comment, rule, or empty
_SERVICES_RULE = re.compile(r"\n-A KUBE-SERVICES( .*)")
_SVC_CHAIN = re.compile(r"\n-A KUBE-SV([CL])-(\S+) ")
_SVC_JUMP = re.compile(r"\n-A KUBE-SV([CL])-(\S+)( .*(?:-j|--jump) (KUBE-SEP-\S+).*)")
_SEP_DNAT = re.compile(r"\n-A (KUBE-SEP-\S+)( .*-j DNAT .*)--to-destination (\S+)")


def chain_hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def service_hash(service: str, protocol: str) -> str:
    return chain_hash(service + protocol)


def endpoint_hash(service: str, protocol: str, ip: str, port: int) -> str:
    return chain_hash(f"{service}{protocol}{join_host_port(ip, port)}")


@dataclass
class ParsedSave:
    names: dict[str, str] = field(default_factory=dict)  # service hash -> name
    protocols: dict[str, str] = field(default_factory=dict)
    cluster_ips: dict[str, str] = field(default_factory=dict)
    targets: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (path, h) -> SEPs
    seps: dict[str, ProgrammedEndpoint] = field(default_factory=dict)  # SEP -> its DNAT's
    # Each SEP chain's DNAT rule, read further only when asked (a stale chain's owner, a
    # service without a protocol of its own): its text, or its entry in ``table``'s blob.
    sep_rules: dict[str, str | int] = field(default_factory=dict)
    table: TableReader | None = None

    def sep_protocol(self, sep: str) -> str:
        rule = self.sep_rules[sep]
        if isinstance(rule, int):
            assert self.table is not None
            return self.table.protocol(rule) or "tcp"
        proto = _PROTO.search(rule)
        return proto.group(1) if proto else "tcp"

    def sep_service(self, sep: str) -> str | None:
        rule = self.sep_rules[sep]
        if isinstance(rule, int):
            assert self.table is not None
            return self.table.comment(rule)
        return _comment(rule)


def _comment(rule: str) -> str | None:
    m = _COMMENT.search(rule)
    if m is None:
        return None
    return m.group(1).replace('\\"', '"') if m.group(1) is not None else m.group(2)


class SaveParser:
    """``iptables-save -t nat`` output, fed in pieces of whole lines (a large dump streams
    through and is never held whole). A piece is scanned by a few regular expressions over its
    whole text, each starting with a literal the regex engine finds at C speed, rather than line
    by line in Python (250,000 lines at 10,000 services); every line is still checked: one
    that is neither a rule (``-A`` and a chain name), a chain, a comment nor a table marker is
    an error naming its line."""

    def __init__(self) -> None:
        self.parsed = ParsedSave()
        self._in_nat = self._committed = False
        self._lines = 0  # lines fed before the current piece

    def feed(self, text: str) -> None:
        """Whole lines (each ending in a newline, except perhaps the last of the output)."""
        text = "\n" + text  # every line now follows a newline, which the scans start from
        start = 0
        for marker in _MARKER.finditer(text):
            self._scan(text, start, marker.start())
            if marker.group(1) == "COMMIT":
                if self._in_nat:
                    self._committed, self._in_nat = True, False
            else:
                self._in_nat, self._committed = marker.group(1) == "*nat", False
            start = marker.end()
        self._scan(text, start, len(text))
        self._lines += text.count("\n") - 1

    def _scan(self, text: str, start: int, end: int) -> None:
        """The lines of ``text[start:end]`` (which starts with a newline) inside ``*nat``."""
        if not self._in_nat:
            return
        if bad := _BAD_LINE.search(text, start, end):
            number = self._lines + text.count("\n", 0, bad.start()) + 1
            line = text[bad.start() + 1:min(end, bad.start() + 200)].split("\n", 1)[0]
            raise DataplaneParseError(f"line {number}: unexpected {line[:80]!r}")
        parsed = self.parsed
        for rule in _SERVICES_RULE.findall(text, start, end):
            _service_rule(parsed, rule)
        jumps = _SVC_JUMP.findall(text, start, end)
        if text.count("\n-A KUBE-SV", start, end) > len(jumps):
            # Rules other than jumps (masquerading): a chain without endpoints still counts.
            for path, h in set(_SVC_CHAIN.findall(text, start, end)):
                parsed.targets.setdefault((_PATHS[path], h), [])
        for path, h, rule, sep in jumps:
            seps = parsed.targets.setdefault((_PATHS[path], h), [])
            if sep not in seps:
                seps.append(sep)
            if h not in parsed.names:
                _name_from_jump(parsed, h, _comment(rule))
        for chain, rule, destination in _SEP_DNAT.findall(text, start, end):
            try:
                ip, port = split_host_port(destination)
            except ValueError as error:
                raise DataplaneParseError(str(error)) from None
            parsed.seps[chain] = ProgrammedEndpoint(ip, port, True)
            parsed.sep_rules[chain] = rule

    def finish(self) -> ParsedSave:
        if self._in_nat and not self._committed:
            raise DataplaneParseError("the nat table has no COMMIT: the output is truncated")
        return self.parsed


def parsed_table(table: DecodedTable) -> ParsedSave:
    """What ``SaveParser`` makes of ``iptables-save``'s text, made of the kernel's blob: the
    same rules applied to the same rules (KUBE-SERVICES first, as its chain comes first)."""
    parsed, read = ParsedSave(), table.reader
    for target, entry in table.services:
        _service_target(parsed, target, read.comment(entry), read.protocol(entry),
                        read.destination(entry))
    for chain in table.chains:
        parsed.targets.setdefault((_PATHS[chain[7]], chain[9:]), [])
    for chain, jumps in table.jumps.items():
        if not jumps:
            continue
        h = chain[9:]
        seps = parsed.targets.setdefault((_PATHS[chain[7]], h), [])
        for sep, _ in jumps:
            if sep not in seps:
                seps.append(sep)
        for _, entry in jumps:  # the first jump whose comment names the service
            if h in parsed.names:
                break
            _name_from_jump(parsed, h, read.comment(entry))
    parsed.seps = {chain: endpoint for chain, (endpoint, _) in table.seps.items()}
    parsed.sep_rules = {chain: entry for chain, (_, entry) in table.seps.items()}
    parsed.table = read
    return parsed


def _name_from_jump(parsed: ParsedSave, h: str, comment: str | None) -> None:
    """A SVC/SVL jump's comment, ``ns/svc:port -> ip:port``, names its service."""
    if comment and " -> " in comment:
        parsed.names[h] = comment.split(" -> ", 1)[0]


def _read(text: str) -> ParsedSave:
    parser = SaveParser()
    parser.feed(text)
    return parser.finish()


def _service_rule(parsed: ParsedSave, rule: str) -> None:
    jump = _JUMP.search(rule)
    if jump is None:
        return
    target = jump.group(1)
    if not target.startswith(("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-")):
        return
    proto, dest = _PROTO.search(rule), _DEST.search(rule)
    _service_target(parsed, target, _comment(rule), proto.group(1) if proto else None,
                    dest.group(1).split("/")[0] if dest else None)


def _service_target(parsed: ParsedSave, target: str, comment: str | None,
                    protocol: str | None, destination: str | None) -> None:
    """A KUBE-SERVICES rule jumping to service chain ``target``: what it says of the
    service (its name in the comment, its protocol, its cluster IP)."""
    h = target.split("-", 2)[2]
    if comment:
        for suffix in (" cluster IP", " external IP", " loadbalancer IP"):
            if comment.endswith(suffix):
                parsed.names.setdefault(h, comment[: -len(suffix)])
    if protocol:
        parsed.protocols.setdefault(h, protocol)
    if destination and target.startswith(("KUBE-SVC-", "KUBE-SVL-")):
        parsed.cluster_ips.setdefault(h, destination)


def _resolve_names(parsed: ParsedSave, candidates: set[str]) -> None:
    """Name the service chains no comment names, by hashing candidate names."""
    unresolved = {h for _, h in parsed.targets} - set(parsed.names)
    if not unresolved or not candidates:
        return
    for name in candidates:
        for proto in _PROTOCOLS:
            h = service_hash(name, proto)
            if h in unresolved:
                parsed.names[h] = name
                parsed.protocols.setdefault(h, proto)


def parse_iptables_save(text: str, *, backend: Backend,
                        known_services: Iterable[str] = ()) -> DataplaneSnapshot:
    """Parse ``iptables-save -t nat`` output into the common model."""
    return snapshot_of(_read(text), backend=backend, known_services=known_services)


def snapshot_of(parsed: ParsedSave, *, backend: Backend,
                known_services: Iterable[str] = ()) -> DataplaneSnapshot:
    candidates = set(known_services)
    _resolve_names(parsed, candidates)
    hashes = {h for _, h in parsed.targets} | set(parsed.names)
    referenced = {sep for seps in parsed.targets.values() for sep in seps}
    stale: dict[str, list[ProgrammedEndpoint]] = {}
    for sep_name, endpoint in parsed.seps.items():
        if sep_name in referenced:
            continue
        owner = _stale_owner(sep_name, endpoint, parsed, candidates)
        if owner is not None:
            stale.setdefault(owner, []).append(endpoint._replace(selected=False))
            hashes.add(owner)
    services = []
    for h in sorted(hashes):
        cluster, local = parsed.targets.get(("cluster", h)), parsed.targets.get(("local", h))
        if cluster is None and local is None and h not in stale:
            continue  # named only by an external rule, with no chain of its own
        protocol = parsed.protocols.get(h)
        if protocol is None:
            protocol = next((parsed.sep_protocol(s) for s in (*(cluster or ()), *(local or ()))
                             if s in parsed.seps), "tcp")
        services.append(ProgrammedService(
            service=parsed.names.get(h, f"KUBE-SVC-{h}"), protocol=protocol,
            cluster_ip=parsed.cluster_ips.get(h),
            cluster=(*_selected(parsed, cluster), *stale.get(h, ())),
            local=_selected(parsed, local)))
    return DataplaneSnapshot("iptables", backend, tuple(services))


def _selected(parsed: ParsedSave, seps: list[str] | None) -> tuple[ProgrammedEndpoint, ...]:
    """The endpoints a service chain's jumps select."""
    try:
        return tuple([parsed.seps[sep] for sep in seps or ()])
    except KeyError as missing:
        raise DataplaneParseError(f"{missing.args[0]} is jumped to but has no DNAT rule"
                                  ) from None


def _stale_owner(sep_name: str, endpoint: ProgrammedEndpoint, parsed: ParsedSave,
                 candidates: set[str]) -> str | None:
    """The service hash an unreferenced SEP chain belongs to, from its comment or its name."""
    protocol, service = parsed.sep_protocol(sep_name), parsed.sep_service(sep_name)
    if service:
        return service_hash(service, protocol)
    ip, port, _ = endpoint
    for name in set(parsed.names.values()) | candidates:
        if f"KUBE-SEP-{endpoint_hash(name, protocol, ip, port)}" == sep_name:
            parsed.names.setdefault(service_hash(name, protocol), name)
            return service_hash(name, protocol)
    return None


@dataclass
class JumpState:
    """iptables-nft's SVC/SVL chains as nf_tables events show them: each rule (by handle) and
    the SEP chain it jumps to. Jumps are native nft expressions even for iptables-nft rules
    (comments and DNAT are opaque ``xt`` there), so removals can be followed from the event
    stream alone; which endpoint a SEP chain is comes from the last full read."""

    jumps: dict[str, dict[int, str]] = field(default_factory=dict)  # chain -> handle -> SEP
    endpoints: dict[str, tuple[ServicePort, str, int]] = field(default_factory=dict)
    ports: dict[str, ServicePort] = field(default_factory=dict)  # service hash -> port
    touched: set[str] = field(default_factory=set)  # service hashes changed since last delta

    def add_rule(self, chain: str, handle: int, targets: Iterable[str]) -> None:
        if chain.startswith(("KUBE-SVC-", "KUBE-SVL-")):
            seps = [t for t in targets if t.startswith("KUBE-SEP-")]
            if seps:
                self.jumps.setdefault(chain, {})[handle] = seps[0]
                self.touched.add(chain[9:])

    def delete_rule(self, chain: str, handle: int) -> None:
        if self.jumps.get(chain, {}).pop(handle, None) is not None:
            self.touched.add(chain[9:])

    def delete_chain(self, chain: str) -> None:
        if self.jumps.pop(chain, None) is not None:
            self.touched.add(chain[9:])

    def take_touched(self) -> set[str]:
        touched, self.touched = self.touched, set()
        return touched

    def _known(self, seps: list[str]) -> tuple[list[EndpointKey], bool]:
        """The endpoints of these SEP chains, as far as known; and whether all are (False: a
        jump goes to a SEP chain no full read has shown yet — a new endpoint)."""
        keys = [EndpointKey(*self.endpoints[sep]) for sep in seps if sep in self.endpoints]
        return keys, len(keys) == len(seps)

    def selected_by_hash(self, h: str) -> tuple[set[EndpointKey], bool]:
        """What a service port's SVC and SVL chains select, as far as known; and whether all
        is known."""
        keys, complete = self._known([sep for chain in (f"KUBE-SVC-{h}", f"KUBE-SVL-{h}")
                                      for sep in self.jumps.get(chain, {}).values()])
        return set(keys), complete

    def learn(self, parsed: ParsedSave, known_services: Iterable[str] = ()) -> None:
        """Which endpoint each SEP chain is, from a full ``iptables-save -t nat``."""
        _resolve_names(parsed, set(known_services))
        for (_, h), seps in parsed.targets.items():
            name = parsed.names.get(h)
            for sep_name in seps:
                endpoint = parsed.seps.get(sep_name)
                if name is None or endpoint is None:
                    continue
                protocol = parsed.protocols.get(h) or parsed.sep_protocol(sep_name)
                port = ProgrammedService(name, protocol, None, (), ()).service_port()
                if port is not None:
                    self.endpoints[sep_name] = (port, endpoint.ip, endpoint.port)
                    self.ports[h] = port

    def selection(self) -> tuple[dict[EndpointKey, bool], bool]:
        """Every known endpoint and whether a jump selects it; and whether all is known."""
        out = {EndpointKey(*identity): False for identity in self.endpoints.values()}
        chosen, complete = self._known([sep for rules in self.jumps.values()
                                        for sep in rules.values()])
        out.update(dict.fromkeys(chosen, True))
        return out, complete


# --- reading: one full read, and the state iptables-nft's change events keep ------------

@dataclass
class IptablesReader:
    runner: CommandRunner
    backend: Backend
    known_services: KnownServices = lambda: ()
    mode: Mode = "iptables"

    async def read(self) -> DataplaneSnapshot:
        saves = await read_saves(self.runner, self.backend)
        known = self.known_services()
        return merge_snapshots("iptables", self.backend, (
            snapshot_of(parsed, backend=self.backend, known_services=known)
            for parsed in saves.values()))


async def read_saves(runner: CommandRunner, backend: Backend) -> dict[str, ParsedSave]:
    """One full read: both IP families' nat tables (by family, ``ip`` and ``ip6``), dumped at
    once: a read is as long as the longer dump, not their sum (for polling, the snapshot
    moments stay close to the read's start)."""
    results = await asyncio.gather(*(
        save_parsed(runner, [f"{tool}-{backend}-save", "-t", "nat"])
        for tool in ("iptables", "ip6tables")), return_exceptions=True)
    saves = {}
    for family, result in zip(("ip", "ip6"), results, strict=True):
        if isinstance(result, BaseException):  # both ran to their end: then judge
            raise result
        saves[family] = result
    return saves


async def save_parsed(runner: CommandRunner, command: list[str]) -> ParsedSave:
    """``iptables-save`` output, parsed as it streams."""
    parser = SaveParser()
    async with contextlib.aclosing(runner.chunks(command)) as pieces:
        async for piece in pieces:
            parser.feed(decode_output(piece))
    return parser.finish()


class IptablesNftTables:
    """iptables-nft's ``nat`` tables: SVC/SVL jumps by handle, SEP identities from the last
    full ``iptables-nft-save``."""

    table = "nat"

    def __init__(self, known_services: KnownServices) -> None:
        self.known_services = known_services
        self.states: dict[str, JumpState] = {}

    def events(self, runner: CommandRunner) -> contextlib.AbstractAsyncContextManager[NftEvents]:
        return nft_events(runner.netns)

    def apply(self, burst: list[JumpEvent]) -> bool:
        for event in burst:
            state = self.states.setdefault(event.family, JumpState())
            if event.handle is None:
                state.delete_chain(event.chain)  # a new chain matters once a rule jumps to it
            elif event.verb == "add":
                state.add_rule(event.chain, event.handle, event.targets)
            else:
                state.delete_rule(event.chain, event.handle)
        return bool(burst)

    async def load(self, runner: CommandRunner) -> None:
        """The full read (``read_saves``: SEP identities), and the rule handles the events name,
        from ``nft -a list table <family> nat``."""
        states = {}
        known = self.known_services()
        saves = await read_saves(runner, "nft")
        for family in ("ip", "ip6"):
            state = JumpState()
            # Popped: each family's parsed dump is let go before the next dump is parsed (at
            # 50,000 endpoints it is tens of MiB, and RSS keeps its peak).
            state.learn(saves.pop(family), known)
            chain = None
            async with contextlib.aclosing(nft_lines(runner, family, self.table)) as lines:
                async for line in lines:
                    if m := CHAIN_LINE.match(line):
                        chain = m.group(1)
                    elif line.startswith("\t}"):
                        chain = None
                    elif chain is not None and (handle := RULE_HANDLE.search(line)):
                        state.add_rule(chain, int(handle.group(1)), JUMP_TARGET.findall(line))
            states[family] = state
        self.states = states

    def selection(self) -> tuple[dict[EndpointKey, bool], bool]:
        parts, complete = [], True
        for state in self.states.values():
            state.take_touched()
            part, known = state.selection()
            parts.append(part)
            complete &= known
        return either_family(parts), complete

    def delta(self) -> tuple[dict[ServicePort, dict[EndpointKey, bool]], bool]:
        touched = set().union(*(s.take_touched() for s in self.states.values()))
        out: dict[ServicePort, dict[EndpointKey, bool]] = {}
        complete = True
        for h in touched:
            ports = {s.ports[h] for s in self.states.values() if h in s.ports}
            if not ports:
                complete = False  # a service chain no full read has named yet
                continue
            for state in self.states.values():  # both IP families
                chosen, known = state.selected_by_hash(h)
                complete &= known
                for key in chosen:
                    out.setdefault(key.service_port, {})[key] = True
            for port in ports:
                out.setdefault(port, {})
        return out, complete


@dataclass(frozen=True)
class TablesRead:
    """One read of the legacy tables: the selection, the tables' shapes it was read at (what
    ``glance`` compares with), and the CPU seconds it cost the worker thread."""

    selection: dict[EndpointKey, bool]
    shape: tuple[TableInfo | None, ...]
    cpu: float


class LegacyTables:
    """The legacy backend's ``nat`` tables, both families, from the kernel (``xtables``):
    ``glance`` (GET_INFO, microseconds) tells a replacement that changed the table's shape;
    ``read`` copies and decodes the tables on a worker thread (a quarter of a second of kernel
    time at 10,000 services: the event loop keeps timing watch events meanwhile). A blob the
    decoder cannot read is counted (``garbage``) and that read is made by the text path
    (``iptables-legacy-save``); a table replaced between its GET_INFO and its GET_ENTRIES is
    asked for again, and a read that finds it replaced every time fails (``replaced``)."""

    def __init__(self, runner: CommandRunner, known_services: KnownServices,
                 metrics: DataplaneMetrics) -> None:
        self.runner = runner
        self.known_services = known_services
        self.metrics = metrics
        self.tables: list[tuple[XtTable, Decoder]] = []

    async def open(self) -> None:
        def make() -> list[XtTable]:
            tables: list[XtTable] = []
            try:
                for family in FAMILIES:
                    tables.append(open_table(family))
            except BaseException:
                for table in tables:
                    table.close()
                raise
            return tables

        netns = self.runner.netns
        tables = make() if netns is None else await in_namespace(netns, make)
        self.tables = [(table, Decoder(table.family)) for table in tables]

    def close(self) -> None:
        for table, _ in self.tables:
            table.close()
        self.tables = []

    def glance(self) -> tuple[TableInfo | None, ...] | None:
        """Each family's table shape; None until the sockets are open (the first read opens
        them) or when the kernel refuses (the next read will fail and be counted)."""
        if not self.tables:
            return None
        try:
            return tuple(table.info() for table, _ in self.tables)
        except CommandError:
            return None

    async def read(self) -> TablesRead:
        if not self.tables:
            await self.open()  # raises as the kernel answered: this read fails, counted
        known = set(self.known_services())
        try:
            return await finish_in_thread(self._read, known)
        except DataplaneParseError as error:
            self.metrics.error("garbage")
            log.warning("legacy table blob unreadable: read as text this time", error=str(error))
        shape = tuple(table.info() for table, _ in self.tables)  # a later one is seen again
        text = IptablesReader(self.runner, "legacy", lambda: known)
        return TablesRead((await text.read()).selection(), shape, 0.0)

    def _read(self, known: set[str]) -> TablesRead:
        """On a worker thread: each family's table copied and decoded."""
        started = time.thread_time()
        shape, parts = [], []
        for table, decoder in self.tables:
            for _ in range(_ATTEMPTS):
                info = table.info()
                if info is None:
                    break
                try:
                    blob = table.entries(info)
                except TableGone:  # replaced since its GET_INFO: not an error, yet
                    log.debug("legacy table replaced while read: reading it again",
                              family=table.family.name)
                    continue
                parsed = parsed_table(decoder.decode(blob, ENTRIES_HEADER, info))
                parts.append(snapshot_of(parsed, backend="legacy", known_services=known
                                         ).selection())
                del blob, parsed
                break
            else:
                raise CommandError("replaced", f"the {table.family.name} nat table was "
                                   f"replaced under each of {_ATTEMPTS} reads")
            shape.append(info)
        return TablesRead(either_family(parts), tuple(shape), time.thread_time() - started)


_ATTEMPTS = 5  # reads of a table replaced under each, before this read gives up


async def _detect(probe: Probe) -> Detected:
    backend, rules, ipvs = await probe.iptables_backend()
    if rules and not ipvs:
        return Detected(found=True, backend=backend)
    return Detected(found=False, backend=backend, why=(
        "kube-proxy's rules are IPVS mode's" if rules
        else "no KUBE- rules in either iptables backend"))


def _reader(wiring: Wiring) -> IptablesReader:
    return IptablesReader(wiring.runner, wiring.backend or "nft", wiring.known_services)


async def _source(wiring: Wiring) -> DataplaneSource:
    """The nf_tables backend announces its changes; the legacy one is polled."""
    clock, metrics = wiring.source_parts()
    if wiring.backend == "legacy":
        return GlancingSource(mode="iptables", clock=clock, metrics=metrics,
                              tables=LegacyTables(wiring.runner, wiring.known_services, metrics),
                              interval=wiring.poll_interval, max_cpu=wiring.poll_max_cpu)
    return MonitorSource(mode="iptables", runner=wiring.runner, clock=clock, metrics=metrics,
                         tables=IptablesNftTables(wiring.known_services),
                         max_cpu=wiring.poll_max_cpu)


MODE = DataplaneMode(
    name="iptables",
    about="kube-proxy's iptables mode, in the backend holding its rules: nf_tables (changes "
          "announced by netlink events) or legacy (polled)",
    detect=_detect, reader=_reader, source=_source, picks_backend=True)
