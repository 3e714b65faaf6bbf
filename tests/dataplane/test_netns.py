"""Real rules in real network namespaces: kube-proxy's own test rule sets loaded with the
real iptables-restore (legacy and nf_tables) and nft, read back by the readers, edited the way
kube-proxy edits them, and the change seen by the change sources."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from observer.clock import SystemClock
from observer.dataplane import iptables_nft_events
from observer.dataplane.commands import CommandRunner
from observer.dataplane.iptables import IptablesNftTables, service_hash
from observer.dataplane.iptables_nft_events import JumpEvent
from observer.dataplane.mode import Wiring
from observer.dataplane.model import DataplaneChange
from observer.dataplane.modes import open_source, reader
from observer.dataplane.nftables import KubeProxyTables
from observer.dataplane.sources import MonitorSource
from observer.values import EndpointKey, ServicePort
from tests.agent.harness import until
from tests.dataplane.edits import (
    IPTABLES_ADD_SVC1_EP9,
    IPTABLES_DROP_SVC4_EP4,
    IPTABLES_DROP_SVC5,
    IPTABLES_SVC2_LOCAL,
    NFT_ADD_SVC1_EP9,
    NFT_DROP_SVC4_EP4,
    NFT_DROP_SVC5,
    NFT_SVC2_LOCAL,
    apply,
    load,
)
from tests.netns import Netns

MODES = ["iptables-legacy", "iptables-nft", "nftables"]


def ep(ip: str, port: int = 80, selected: bool = True) -> dict[str, Any]:
    return {"ip": ip, "port": port, "selected": selected}


def svc(n: int, ip: str, *cluster: dict[str, Any], local: tuple[dict[str, Any], ...] = ()
        ) -> dict[str, Any]:
    return {"service": f"ns{n}/svc{n}:p80", "protocol": "tcp", "cluster_ip": ip,
            "paths": {"cluster": list(cluster), "local": list(local)}}


EXPECTED = [
    svc(1, "172.30.0.41", ep("10.180.0.1")),
    svc(2, "172.30.0.42", ep("10.180.0.2")),
    svc(3, "172.30.0.43", ep("10.180.0.3")),
    svc(4, "172.30.0.44", ep("10.180.0.4"), ep("10.180.0.5")),
    svc(5, "172.30.0.45", ep("10.180.0.3")),
]


def key(n: int, ip: str) -> EndpointKey:
    return EndpointKey(ServicePort(f"ns{n}", f"svc{n}", "p80", "TCP"), ip, 80)


async def dump(netns: Netns, mode: str = "auto") -> dict[str, Any]:
    runner = CommandRunner(netns=netns.name)
    return (await (await reader(mode, runner, {})).read()).to_json()


@pytest.mark.parametrize("mode", MODES)
async def test_detect_and_dump_kube_proxys_rule_sets(netns: Netns, mode: str) -> None:
    load(netns, mode)
    document = await dump(netns)
    assert document["mode"] == mode.split("-")[0]
    assert document["backend"] == (mode.split("-")[1] if "-" in mode else None)
    assert document["services"] == EXPECTED


@pytest.mark.parametrize("mode", ["iptables-legacy", "iptables-nft"])
async def test_large_cluster_mode_without_comments(netns: Netns, mode: str) -> None:
    load(netns, mode, large_cluster=True)
    assert (await dump(netns))["services"] == EXPECTED


@pytest.mark.parametrize("mode", MODES)
async def test_endpoint_removal_and_affinity(netns: Netns, mode: str) -> None:
    load(netns, mode)
    apply(netns, mode, IPTABLES_DROP_SVC4_EP4, NFT_DROP_SVC4_EP4)
    apply(netns, mode, IPTABLES_DROP_SVC5, NFT_DROP_SVC5)
    services = {s["service"]: s for s in (await dump(netns))["services"]}
    if mode == "nftables":
        # The endpoint chain outlives the vmap entry: present, not selected.
        assert services["ns4/svc4:p80"]["paths"]["cluster"] == [ep("10.180.0.4", selected=False),
                                                               ep("10.180.0.5")]
    else:  # its SEP chain went in the same restore
        assert services["ns4/svc4:p80"]["paths"]["cluster"] == [ep("10.180.0.5")]
    # svc5's endpoint chain is still there (in both modes), jumped to by nothing.
    assert services["ns5/svc5:p80"]["paths"]["cluster"] == [ep("10.180.0.3", selected=False)]


@pytest.mark.parametrize("mode", MODES)
async def test_local_traffic_policy_path(netns: Netns, mode: str) -> None:
    load(netns, mode)
    apply(netns, mode, IPTABLES_SVC2_LOCAL, NFT_SVC2_LOCAL)
    services = {s["service"]: s for s in (await dump(netns))["services"]}
    assert services["ns2/svc2:p80"]["paths"] == {"cluster": [ep("10.180.0.2")],
                                                 "local": [ep("10.180.0.9")]}


class Recorder:
    def __init__(self) -> None:
        self.changes: list[DataplaneChange] = []
        self.arrived = asyncio.Event()

    def __call__(self, change: DataplaneChange) -> None:
        self.changes.append(change)
        self.arrived.set()


class Health:
    def __init__(self) -> None:
        self.scans: list[float] = []
        self.errors: list[str] = []
        self.drifts: list[int] = []

    def scan(self, seconds: float) -> None:
        self.scans.append(seconds)

    def error(self, reason: str) -> None:
        self.errors.append(reason)

    def drift(self, count: int) -> None:
        self.drifts.append(count)


@pytest.mark.parametrize("mode", MODES)
async def test_change_events(netns: Netns, mode: str) -> None:
    load(netns, mode)
    health, changes = Health(), Recorder()
    source = await open_source("auto", Wiring(
        runner=CommandRunner(netns=netns.name), options={}, clock=SystemClock(), metrics=health,
        poll_interval=0.05, poll_max_cpu=0.5))
    task = asyncio.create_task(source.run(changes))
    try:
        await until(lambda: source.selected(key(4, "10.180.0.4")) is True, "first read")
        assert source.selected(EndpointKey(ServicePort("x", "y", "", "TCP"), "1.2.3.4", 1)
                               ) is None
        apply(netns, mode, IPTABLES_DROP_SVC4_EP4, NFT_DROP_SVC4_EP4)
        await changes.arrived.wait()
        await asyncio.sleep(0.2)  # anything else it might (wrongly) report
        assert [(c.key, c.selected) for c in changes.changes] == [(key(4, "10.180.0.4"), False)]
        assert changes.changes[0].at.source == "dataplane"
        assert source.selected(key(4, "10.180.0.4")) is False
        assert source.selected(key(4, "10.180.0.5")) is True
        # A new endpoint, in a chain never seen before, is picked up too.
        changes.arrived.clear()
        apply(netns, mode, IPTABLES_ADD_SVC1_EP9, NFT_ADD_SVC1_EP9)
        await changes.arrived.wait()
        await asyncio.sleep(0.2)
        assert [(c.key, c.selected) for c in changes.changes[1:]] == [
            (key(1, "10.180.0.9"), True)]
        assert health.errors == []
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def monitoring(netns: Netns, mode: str, health: Health, changes: Recorder, *,
                     resync_interval: float) -> AsyncIterator[MonitorSource[Any]]:
    """kube-proxy's rules for ``mode`` loaded, and the event-driven source running on them
    (its task starts at the caller's first await: what the caller sets before runs first)."""
    load(netns, mode)
    source = await open_source("auto", Wiring(
        runner=CommandRunner(netns=netns.name), options={}, clock=SystemClock(), metrics=health,
        poll_interval=0.05, poll_max_cpu=0.5))
    assert isinstance(source, MonitorSource)
    source.schedule.resync_interval = resync_interval
    task = asyncio.create_task(source.run(changes))
    try:
        yield source
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class OneLie:
    """The source's own change events, with one burst that no rule change made put first in
    line (released by ``lie.set()``): what lost or garbled events would leave behind."""

    def __init__(self, events: Any, burst: Callable[[], list[Any]]) -> None:
        self.events, self.burst_of_lies, self.lie = events, burst, asyncio.Event()
        self.told = False

    async def burst(self) -> list[Any]:
        if not self.told:
            await self.lie.wait()
            self.told = True
            return self.burst_of_lies()
        return list(await self.events.burst())


def svc4_jump_to(source: MonitorSource[Any], ip: str) -> list[Any]:
    """An event burst saying svc4's rules stopped selecting ``ip`` (no rule did)."""
    if isinstance(source.tables, IptablesNftTables):
        jumps = source.tables.states["ip"]
        chain = f"KUBE-SVC-{service_hash('ns4/svc4:p80', 'tcp')}"
        (handle,) = [h for h, sep in jumps.jumps[chain].items() if jumps.endpoints[sep][1] == ip]
        return [JumpEvent("delete", "ip", chain, handle)]
    assert isinstance(source.tables, KubeProxyTables)
    rules = source.tables.states["ip"].policy_rules
    chain = next(c for c in rules if c.startswith("service-") and "ns4/svc4" in c)
    (handle,) = [h for h, targets in rules[chain].items() if any(ip in t for t in targets)]
    other = next(t for t in rules[chain][handle] if ip not in t)
    return [json.dumps({"delete": {"rule": {
                "family": "ip", "table": "kube-proxy", "chain": chain, "handle": handle}}}
            ).encode(),
            json.dumps({"add": {"rule": {
                "family": "ip", "table": "kube-proxy", "chain": chain, "handle": 99999,
                "expr": [{"goto": {"target": other}}]}}}).encode()]


@pytest.mark.parametrize("mode", ["iptables-nft", "nftables"])
async def test_a_resync_counts_and_corrects_drift(netns: Netns, mode: str) -> None:
    """State kept from events that went wrong (here: told a change no rule made) is found by
    the next full read, counted as drift, corrected, and the correction reported."""
    health, changes = Health(), Recorder()
    async with monitoring(netns, mode, health, changes, resync_interval=0.3) as source:
        real_events = source.tables.events
        lying: list[OneLie] = []

        @contextlib.asynccontextmanager
        async def events_with_a_lie(runner: CommandRunner) -> AsyncIterator[OneLie]:
            async with real_events(runner) as events:
                lying.append(OneLie(events, lambda: svc4_jump_to(source, "10.180.0.4")))
                yield lying[0]

        source.tables.events = events_with_a_lie  # type: ignore[method-assign]
        await until(lambda: source.selected(key(4, "10.180.0.4")) is True, "first read")
        lying[0].lie.set()
        await until(lambda: source.selected(key(4, "10.180.0.4")) is False, "the lie applied")
        assert source.selected(key(4, "10.180.0.5")) is True
        await until(lambda: bool(health.drifts), "resync")
        assert health.drifts == [1]
        assert source.selected(key(4, "10.180.0.4")) is True
        assert [(c.key, c.selected) for c in changes.changes] == [
            (key(4, "10.180.0.4"), False), (key(4, "10.180.0.4"), True)]
        assert health.errors == []


@pytest.mark.parametrize(("cost", "resyncs"), [(0.0, True), (10.0, False)])
async def test_resyncs_keep_to_the_cpu_budget(netns: Netns, cost: float, resyncs: bool) -> None:
    """A full read said to cost 10 CPU seconds, at 0.5 of a core: the next is 20 s away, not
    the 0.05 s resync interval; a free one comes at the interval."""
    spent = iter(range(1_000_000))
    health = Health()
    async with monitoring(netns, "nftables", health, Recorder(), resync_interval=0.05) as source:
        # Each read: its start and its end, `cost` apart.
        source.schedule.budget.cpu = lambda: next(spent) * cost
        await until(lambda: bool(health.scans), "first read")
        if resyncs:
            await until(lambda: len(health.scans) > 2, "resyncs at the interval")
        else:
            # The next read is 20 s away: a second shows none (a busy machine could only make
            # reads fewer, so it cannot change this verdict).
            await asyncio.sleep(1.0)
            assert len(health.scans) == 1, health.scans


async def test_a_full_read_gives_way_to_a_change(netns: Netns) -> None:
    """A change while a full read runs would make the dump start over: the read is abandoned
    at once, the change taken from its event (not delayed behind the read), and the read
    tried again later — twice as late each time in a row — and then taken, with no drift."""
    health, changes = Health(), Recorder()
    async with monitoring(netns, "nftables", health, changes, resync_interval=0.2) as source:
        await until(lambda: bool(health.scans), "first read")
        real_load, slow, finish = source.tables.load, asyncio.Event(), asyncio.Event()

        async def slow_load(runner: CommandRunner) -> None:  # a dump that ends when let
            slow.set()
            await finish.wait()
            await real_load(runner)

        source.tables.load = slow_load  # type: ignore[method-assign]
        await slow.wait()
        apply(netns, "nftables", IPTABLES_DROP_SVC4_EP4, NFT_DROP_SVC4_EP4)
        await changes.arrived.wait()  # while the read cannot end
        assert [(c.key, c.selected) for c in changes.changes] == [(key(4, "10.180.0.4"), False)]
        assert source.schedule.abandoned == 1
        assert len(health.scans) == 1
        finish.set()
        await until(lambda: len(health.scans) == 2, "the read tried again")
        # The scan is counted as the read ends, the schedule told a loop turn later: under
        # load the test could look in between (seen once in a full run).
        await until(lambda: source.schedule.abandoned == 0, "the read ran to its end")
        assert health.drifts == []
        assert health.errors == []


async def test_lost_events_are_counted_and_a_full_read_follows(
        netns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's queue for the agent overflows (here: made as small as the kernel allows,
    then a whole rule set rewritten at once): counted as ``events_lost``, a full read comes
    within a few seconds (not at the resync interval), and events go on."""
    monkeypatch.setattr(iptables_nft_events, "RECEIVE_BUFFER", 1)
    health, changes = Health(), Recorder()
    async with monitoring(netns, "iptables-nft", health, changes,
                          resync_interval=3600) as source:
        await until(lambda: source.selected(key(4, "10.180.0.4")) is True, "first read")
        # Every rule made again while the event loop is held (a blocking call, on purpose):
        # the agent reads nothing meanwhile, so the queue overflows however fast it could
        # have read (in a thread, a busy machine's slower restore let it keep up).
        load(netns, "iptables-nft")
        await until(lambda: "events_lost" in health.errors, "the overflow reported")
        reads = len(health.scans)
        await until(lambda: len(health.scans) > reads, "a full read")
        assert health.drifts == []  # the rules are as they were: nothing to report
        assert changes.changes == []
        await asyncio.to_thread(apply, netns, "iptables-nft", IPTABLES_DROP_SVC4_EP4,
                                NFT_DROP_SVC4_EP4)
        await changes.arrived.wait()
        assert [(c.key, c.selected) for c in changes.changes] == [(key(4, "10.180.0.4"), False)]
        assert set(health.errors) == {"events_lost"}


async def test_iptables_nft_applies_what_it_knows_of_a_sync(netns: Netns) -> None:
    """One sync removes 10.180.0.4 from svc4 and jumps to a SEP chain no full read has
    named (a new endpoint): the removal counts at once, the new endpoint waits for a read."""
    load(netns, "iptables-nft")
    tables = IptablesNftTables(lambda: ())
    await tables.load(CommandRunner(netns=netns.name))
    svc4 = f"KUBE-SVC-{service_hash('ns4/svc4:p80', 'tcp')}"
    jumps = tables.states["ip"].jumps[svc4]
    (gone,) = [h for h, sep in jumps.items()
               if tables.states["ip"].endpoints[sep][1] == "10.180.0.4"]
    tables.states["ip"].take_touched()
    tables.apply([JumpEvent("delete", "ip", svc4, gone),
                  JumpEvent("add", "ip", svc4, 9999, ("KUBE-SEP-NEWNEWNEWNEWNEWN",))])
    delta, complete = tables.delta()
    assert not complete
    assert delta == {key(4, "").service_port: {key(4, "10.180.0.5"): True}}
    selection, complete = tables.selection()
    assert not complete
    assert selection[key(4, "10.180.0.4")] is False
    assert selection[key(4, "10.180.0.5")] is True
    assert selection[key(1, "10.180.0.1")] is True  # the rest stays as it is
