"""The legacy backend read from the kernel (``observer.dataplane.xtables``): on kube-proxy's own
rule sets and on generated ones, loaded with the real ``iptables-legacy-restore`` into a
network namespace, the kernel's table blob decodes to exactly what the text path makes of
``iptables-legacy-save`` — before and after removals — and a blob that is not whole, or holds
what the decoder does not know, is refused (``DataplaneParseError``), never misread."""

from __future__ import annotations

import asyncio
import random
import struct
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from observer.clock import SystemClock
from observer.dataplane.commands import CommandRunner
from observer.dataplane.iptables import (
    LegacyTables,
    parse_iptables_save,
    parsed_table,
    snapshot_of,
)
from observer.dataplane.mode import Wiring
from observer.dataplane.model import DataplaneParseError, DataplaneSnapshot, merge_snapshots
from observer.dataplane.modes import open_source
from observer.dataplane.netlink import enter_namespace
from observer.dataplane.sources import GlancingSource
from observer.dataplane.xtables import (
    ENTRIES_HEADER,
    FAMILIES,
    IP,
    Decoder,
    Family,
    TableGone,
    TableInfo,
    XtTable,
    open_table,
)
from observer.lab.rules import ServicePortRules, iptables_sync
from tests.agent.harness import until
from tests.dataplane.edits import (
    IPTABLES_ADD_SVC1_EP9,
    IPTABLES_DROP_SVC4_EP4,
    IPTABLES_DROP_SVC5,
    IPTABLES_RULES,
    IPTABLES_SVC2_LOCAL,
    without_endpoint_comments,
)
from tests.dataplane.test_netns import Health, Recorder, key
from tests.netns import Netns


def tables_in(netns: Netns, families: tuple[Family, ...] = FAMILIES) -> list[XtTable]:
    """Raw sockets in the test's namespace (made by a thread that entered it, as the agent's
    are)."""
    made: list[XtTable] = []

    def make() -> None:
        enter_namespace(netns.name)
        made.extend(open_table(f) for f in families)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    assert len(made) == len(families)
    return made


def kernel_snapshot(netns: Netns, known: tuple[str, ...] = ()) -> DataplaneSnapshot:
    """Both families' tables as the kernel hands them out, decoded."""
    parts = []
    for table in tables_in(netns):
        try:
            info = table.info()
            if info is None:
                continue
            blob = table.entries(info)
            decoded = Decoder(table.family).decode(blob, ENTRIES_HEADER, info)
            parts.append(snapshot_of(parsed_table(decoded), backend="legacy",
                                     known_services=known))
        finally:
            table.close()
    return merge_snapshots("iptables", "legacy", parts)


def text_snapshot(netns: Netns, known: tuple[str, ...] = ()) -> DataplaneSnapshot:
    return merge_snapshots("iptables", "legacy", (
        parse_iptables_save(netns.run(tool, "-t", "nat"), backend="legacy",
                            known_services=known)
        for tool in ("iptables-legacy-save", "ip6tables-legacy-save")))


def assert_same(netns: Netns, known: tuple[str, ...] = ()) -> dict[str, Any]:
    kernel, text = kernel_snapshot(netns, known), text_snapshot(netns, known)
    assert kernel.to_json() == text.to_json()
    assert kernel.selection() == text.selection()
    return kernel.to_json()


@pytest.mark.parametrize("large_cluster", [False, True])
def test_kube_proxys_rule_sets_read_as_the_text_path_reads_them(
        netns: Netns, large_cluster: bool) -> None:
    rules = without_endpoint_comments(IPTABLES_RULES) if large_cluster else IPTABLES_RULES
    netns.restore("legacy", rules)
    known = ("ns1/svc1:p80", "ns2/svc2:p80", "ns3/svc3:p80", "ns4/svc4:p80", "ns5/svc5:p80")
    first = assert_same(netns, known)
    assert len(first["services"]) == 5
    for edit in (IPTABLES_DROP_SVC4_EP4, IPTABLES_DROP_SVC5, IPTABLES_SVC2_LOCAL,
                 IPTABLES_ADD_SVC1_EP9):
        netns.restore("legacy", edit, noflush=True)
        assert_same(netns, known)


async def test_the_sources_reads_select_what_the_text_path_selects(netns: Netns) -> None:
    netns.restore("legacy", IPTABLES_RULES)
    netns.restore("legacy", IPTABLES_DROP_SVC4_EP4, noflush=True)
    health = Health()
    tables = LegacyTables(CommandRunner(netns=netns.name), lambda: (), health)
    await tables.open()
    try:
        read = await tables.read()
        assert read.selection == text_snapshot(netns).selection()
        assert read.shape == tables.glance()
        assert read.cpu > 0
    finally:
        tables.close()
    assert health.errors == []


async def test_a_table_the_decoder_refuses_is_read_as_text(netns: Netns) -> None:
    """A DNAT to a range of addresses (no kube-proxy writes one): the blob is refused,
    counted as garbage, and that read is made by iptables-legacy-save."""
    netns.restore("legacy", IPTABLES_RULES)
    netns.restore("legacy", IPTABLES_ADD_SVC1_EP9.replace(
        "--to-destination 10.180.0.9:80", "--to-destination 10.180.0.9-10.180.0.10:80"),
        noflush=True)
    health = Health()
    tables = LegacyTables(CommandRunner(netns=netns.name), lambda: (), health)
    await tables.open()
    try:
        read = await tables.read()
        assert read.shape == tables.glance()
    finally:
        tables.close()
    assert health.errors == ["garbage"]
    assert read.selection == text_snapshot(netns).selection()
    assert read.cpu == 0.0  # the text path's CPU is its commands', counted by the source


async def test_a_removal_is_stamped_within_its_stated_precision(netns: Netns) -> None:
    """The source on the real kernel: the change it reports happened, by its own stamp and
    precision, at a moment that overlaps the writer's run (the commit is somewhere inside)."""
    netns.restore("legacy", IPTABLES_RULES)
    health, changes = Health(), Recorder()
    clock = SystemClock()
    source = await open_source("iptables", Wiring(
        runner=CommandRunner(netns=netns.name), options={}, clock=clock, metrics=health,
        poll_interval=0.05, poll_max_cpu=0.5))
    assert isinstance(source, GlancingSource)
    task = asyncio.create_task(source.run(changes))
    try:
        await until(lambda: source.selected(key(4, "10.180.0.4")) is True, "first read")
        started = clock.monotonic()
        await asyncio.to_thread(netns.restore, "legacy", IPTABLES_DROP_SVC4_EP4, noflush=True)
        returned = clock.monotonic()
        await changes.arrived.wait()
        (change,) = changes.changes
        assert (change.key, change.selected) == (key(4, "10.180.0.4"), False)
        assert change.at.mono - change.at.precision <= returned
        assert change.at.mono + change.at.precision >= started
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert health.errors == []


# --- generated rule sets ---------------------------------------------------------------------

NAMES = st.builds(lambda first, rest: first + rest, st.sampled_from("abcdefgh"),
                  st.text("abcdefgh0123456789", max_size=7))


@st.composite
def service_sets(draw: st.DrawFn) -> tuple[list[ServicePortRules], list[ServicePortRules],
                                           bool, bool]:
    """Services of one family as kube-proxy's iptables mode writes them, the same services
    after some lost endpoints (and gained others), whether comments are left out (large
    cluster mode), and whether stale SEP chains are kept (a sync that has not deleted them)."""
    six = draw(st.booleans())
    count = draw(st.integers(1, 6))
    services, later = [], []
    for n in range(count):
        namespace, name = draw(NAMES), draw(NAMES)
        port_name = draw(st.sampled_from(["", "http", "p80"]))
        addresses = st.ip_addresses(v=6 if six else 4).map(str)
        endpoints = draw(st.lists(st.tuples(addresses, st.integers(1, 65535)), max_size=5,
                                  unique_by=lambda e: e[0]))
        common = {"namespace": namespace, "name": f"{name}{n}", "port_name": port_name,
                  "cluster_ip": draw(addresses), "port": draw(st.integers(1, 65535)),
                  "protocol": draw(st.sampled_from(["tcp", "udp"]))}
        services.append(ServicePortRules(endpoints=tuple(endpoints), **common))
        kept = [e for e in endpoints if draw(st.booleans())]
        added = draw(st.lists(st.tuples(addresses, st.integers(1, 65535)), max_size=2))
        fresh = tuple(dict.fromkeys(kept + added))
        unique = tuple({ip: (ip, port) for ip, port in fresh}.values())
        later.append(ServicePortRules(endpoints=unique, **common))
    return services, later, draw(st.booleans()), draw(st.booleans())


def rules_text(lines: list[str], *, large_cluster: bool, keep_stale: bool) -> str:
    if keep_stale:
        lines = [line for line in lines if not line.startswith("-X ")]
    text = "\n".join(lines) + "\n"
    return without_endpoint_comments(text) if large_cluster else text


@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sets=service_sets())
def test_generated_rule_sets_read_as_the_text_path_reads_them(
        netns: Netns, sets: tuple[list[ServicePortRules], list[ServicePortRules], bool, bool]
        ) -> None:
    services, later, large_cluster, keep_stale = sets
    six = ":" in services[0].cluster_ip
    backend_tool = "ip6tables-legacy-restore" if six else "iptables-legacy-restore"
    other_tool = "iptables-legacy-restore" if six else "ip6tables-legacy-restore"
    netns.run(other_tool, stdin="*nat\nCOMMIT\n")  # the other family: empty
    previous: dict[str, set[str]] = {}
    known = tuple(s.port_name_string for s in services)
    first = iptables_sync(services, previous=previous, first=True)
    netns.run(backend_tool, stdin=rules_text(first, large_cluster=large_cluster,
                                             keep_stale=False))
    assert_same(netns, known)
    second = iptables_sync(later, previous=previous)
    netns.run(backend_tool, "--noflush", stdin=rules_text(
        second, large_cluster=large_cluster, keep_stale=keep_stale))
    assert_same(netns, known)


# --- what the kernel says, and blobs that are not whole --------------------------------------

def loaded_blob(netns: Netns) -> tuple[XtTable, TableInfo, bytearray]:
    """kube-proxy's rule set loaded, and its table as the kernel hands it out."""
    netns.restore("legacy", IPTABLES_RULES)
    (table,) = tables_in(netns, (IP,))
    info = table.info()
    assert info is not None
    blob = table.entries(info)
    return table, info, blob


async def test_a_table_replaced_after_its_size_was_read_is_asked_for_again(
        netns: Netns) -> None:
    table, info, _ = loaded_blob(netns)
    try:
        netns.restore("legacy", IPTABLES_DROP_SVC4_EP4, noflush=True)
        with pytest.raises(TableGone):  # the kernel's EAGAIN: the size asked for is stale
            table.entries(info)
        health = Health()
        tables = LegacyTables(CommandRunner(netns=netns.name), lambda: (), health)
        await tables.open()
        try:
            (ip_table, _), _ = tables.tables
            fresh = ip_table.info
            stale = iter([info])  # the first read's GET_INFO answered before the replacement
            ip_table.info = lambda: next(stale, None) or fresh()  # type: ignore[method-assign]
            read = await tables.read()
            tables_shape = tables.glance()
        finally:
            tables.close()
        assert health.errors == []  # asked for again: not an error
        assert read.shape == tables_shape
        assert read.selection == text_snapshot(netns).selection()
    finally:
        table.close()


def entries(blob: bytearray, info: TableInfo) -> list[tuple[int, int, int, str]]:
    """(offset, target offset, next offset, chain) of each entry, walked as the kernel lays
    them out."""
    out, at, chain = [], ENTRIES_HEADER, ""
    while at < ENTRIES_HEADER + info.size:
        target, following = struct.unpack_from("=HH", blob, at + IP.offsets)
        if blob[at + target + 2:at + target + 8] == b"ERROR\0":
            chain = bytes(blob[at + target + 32:at + following]).split(b"\0")[0].decode()
        out.append((at, target, following, chain))
        at += following
    return out


def dnat_targets(blob: bytearray, info: TableInfo) -> list[int]:
    return [at + target for at, target, _, _ in entries(blob, info)
            if blob[at + target + 2:at + target + 7] == b"DNAT\0"]


def test_blobs_that_are_not_whole_are_refused(netns: Netns) -> None:
    table, info, blob = loaded_blob(netns)
    table.close()
    decoder = Decoder(IP)
    decoder.decode(blob, ENTRIES_HEADER, info)  # whole: read

    def refused(mutated: bytearray, shape: TableInfo = info) -> None:
        with pytest.raises(DataplaneParseError):
            Decoder(IP).decode(mutated, ENTRIES_HEADER, shape)

    refused(blob[:len(blob) // 2])  # truncated
    refused(blob[:-8], TableInfo(info.valid_hooks, info.hook_entry, info.underflow,
                                 info.num_entries, info.size - 8))  # its end cut off
    refused(blob, TableInfo(info.valid_hooks, info.hook_entry, info.underflow,
                            info.num_entries + 1, info.size))  # an entry missing
    walked = entries(blob, info)
    at, _, following, _ = next(e for e in walked if e[3].startswith("KUBE-SVC-")
                               and blob[e[0] + e[1] + 2] == 0)
    for bad in (following + 4, 8, 0xFFF8):  # a next offset off the grid, too small, too far
        mutated = bytearray(blob)
        struct.pack_into("=H", mutated, at + IP.offsets + 2, bad)
        refused(mutated)
    (dnat, *_) = dnat_targets(blob, info)
    for revision in (3, 7):  # a DNAT of a revision this reader does not know
        mutated = bytearray(blob)
        mutated[dnat + 31] = revision
        refused(mutated)
    mutated = bytearray(blob)  # a DNAT to a range of addresses: not one endpoint
    struct.pack_into("=B", mutated, dnat + 32 + 4 + 16 + 3, 99)
    refused(mutated)
    # a chain without its foot: the RETURN turned into an ACCEPT
    foot = next(at for at, target, following, _ in walked
                if target == IP.entry_size and following == IP.entry_size + 40
                and struct.unpack_from("=i", blob, at + target + 32)[0] == -5)
    mutated = bytearray(blob)
    struct.pack_into("=i", mutated, foot + IP.entry_size + 32, -2)
    refused(mutated)
    # a jump into the middle of a chain (the last jump: a service chain's, to an endpoint's)
    verdict = [at + target + 32 for at, target, _, _ in walked
               if blob[at + target + 2] == 0 and struct.unpack_from("=i", blob,
                                                                    at + target + 32)[0] > 0][-1]
    mutated = bytearray(blob)
    struct.pack_into("=i", mutated, verdict, struct.unpack_from("=i", blob, verdict)[0] + 8)
    refused(mutated)


def test_any_damage_is_refused_or_read_never_crashes_the_reader(netns: Netns) -> None:
    """Bytes flipped anywhere: the decoder reads a table (a changed address is still a
    table) or refuses it — never another exception, never a hang."""
    table, info, whole = loaded_blob(netns)
    table.close()

    @settings(max_examples=500, deadline=None)
    @given(seed=st.integers(0, 2**32 - 1), flips=st.integers(1, 8))
    def damaged(seed: int, flips: int) -> None:
        blob = bytearray(whole)
        rng = random.Random(seed)
        for _ in range(flips):
            at = rng.randrange(ENTRIES_HEADER, len(blob))
            blob[at] ^= 1 << rng.randrange(8)
        try:
            decoded = Decoder(IP).decode(blob, ENTRIES_HEADER, info)
            snapshot_of(parsed_table(decoded), backend="legacy").selection()
        except DataplaneParseError:
            pass

    damaged()
